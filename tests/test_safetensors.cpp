// The safetensors reader and the Checkpoint directory loader, on the fixture checkpoints
// and on deliberately broken files (each must be a typed exception, never a crash).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "instructblip/io/checkpoint.hpp"

using namespace instructblip;
using io::Checkpoint;
using io::SafeTensors;

namespace {
const std::string kData = IB_TEST_DATA_DIR;
const std::string kTmp = IB_TEST_TMP_DIR;

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}
std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[std::size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s;
}
// A file with the given header JSON text and `data_bytes` zero bytes of data.
std::string st_file(const std::string& header, std::size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\0');
}
std::string tmp(const std::string& name) { return kTmp + "/" + name; }

void expect_format_error(const std::string& name, const std::string& bytes, const std::string& needle) {
  const std::string p = tmp(name);
  write_all(p, bytes);
  try {
    SafeTensors::open(p);
    ADD_FAILURE() << name << ": no exception";
  } catch (const FormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << name << ": " << msg;
  }
}
}  // namespace

TEST(SafeTensors, ReadsT5TinyZeroCopy) {
  const std::string path = kData + "/t5-tiny/model/model.safetensors";
  SafeTensors st = SafeTensors::open(path);
  // The state dict has 199 entries; the two T5 embed_tokens alias language_model.shared.weight
  // and are not stored (197 tensors + __metadata__ in the header).
  auto ref = nlohmann::json::parse(read_all(kData + "/t5-tiny/reference.json"));
  EXPECT_EQ(st.size() + 2, ref["weights"]["n_tensors"].get<std::size_t>());
  EXPECT_TRUE(st.contains("language_model.shared.weight"));
  EXPECT_FALSE(st.contains("language_model.encoder.embed_tokens.weight"));
  Tensor q = st.get("query_tokens");
  EXPECT_EQ(q.dtype(), DType::F32);
  EXPECT_EQ(q.shape(), (Shape{1, 8, 32}));
  EXPECT_TRUE(q.is_borrowed());
  EXPECT_THROW(st.get("no.such.tensor"), TensorError);
}

TEST(SafeTensors, WriteReadRoundTrip) {
  Tensor a = Tensor::from_vector({2, 2}, std::vector<float>{1, -2, 3.5f, 4});
  Tensor b = Tensor::from_vector({3}, std::vector<std::int64_t>{7, -8, 1LL << 40});
  Tensor c = a.to(DType::BF16);
  Tensor d = a.to(DType::F16);
  const std::string p = tmp("roundtrip.safetensors");
  io::save_safetensors(p, {{"b", b}, {"a", a}, {"c", c}, {"d", d}}, {{"format", "pt"}});
  SafeTensors st = SafeTensors::open(p);
  EXPECT_EQ(st.names(), (std::vector<std::string>{"a", "b", "c", "d"}));
  EXPECT_EQ(st.metadata().at("format"), "pt");
  EXPECT_EQ(st.get("a").f(2), 3.5f);
  EXPECT_EQ(st.get("b").i(2), 1LL << 40);
  EXPECT_EQ(st.get("c").dtype(), DType::BF16);
  EXPECT_EQ(st.get("c").to(DType::F32).f(1), -2.0f);
  EXPECT_EQ(st.get("d").to(DType::F32).f(3), 4.0f);
}

TEST(SafeTensors, MisalignedDataIsCopiedNotMisread) {
  // A 3-byte-padded header leaves float data at an odd address.
  std::string h = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  h += std::string((8 - (h.size() + 8) % 8 + 3) % 8, ' ');
  std::string bytes = le64(h.size()) + h;
  float v[2] = {1.5f, -7.0f};
  bytes.append(reinterpret_cast<const char*>(v), 8);
  write_all(tmp("misaligned.safetensors"), bytes);
  SafeTensors st = SafeTensors::open(tmp("misaligned.safetensors"));
  Tensor x = st.get("x");
  EXPECT_EQ(x.f(0), 1.5f);
  EXPECT_EQ(x.f(1), -7.0f);
}

TEST(SafeTensors, CorruptedFilesAreCleanErrors) {
  const std::string good = R"({"x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  expect_format_error("empty", "", "shorter than the 8-byte header length");
  expect_format_error("five_bytes", "abcde", "shorter than the 8-byte header length");
  expect_format_error("huge_header_len", le64(1ull << 60) + "{}", "exceeds the file size");
  expect_format_error("header_past_end", le64(100) + "{}", "exceeds the file size");
  expect_format_error("bad_json", st_file(R"({"x": {"dtype": "F32", )", 0), "not well-formed JSON");
  expect_format_error("not_object", st_file("[1,2,3]", 0), "not a JSON object");
  expect_format_error("unknown_dtype",
                      st_file(R"({"x":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2),
                      "unsupported dtype 'F8_E4M3'");
  expect_format_error("size_mismatch", st_file(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                      "needs 12 bytes");
  expect_format_error("offsets_past_end", st_file(good, 8), "run past the data block");
  expect_format_error(
      "overlap",
      st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
              12),
      "overlap");
  expect_format_error("numel_overflow",
                      st_file(R"({"x":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})", 0),
                      "overflows");
  expect_format_error("negative_dim", st_file(R"({"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", 0),
                      "non-negative integer");
  expect_format_error("offsets_not_pair", st_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4),
                      "not a pair");
  expect_format_error("end_before_begin",
                      st_file(R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8), "end before begin");
  expect_format_error("missing_key", st_file(R"({"x":{"dtype":"F32","shape":[1]}})", 4), "lacks one of");
  expect_format_error("metadata_not_string", st_file(R"({"__metadata__":{"a":1}})", 0), "not a string");
  expect_format_error("float_offset", st_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4.5]}})", 4),
                      "non-negative integer");
  // the real checkpoint, cut in the middle of its data block
  std::string real = read_all(kData + "/t5-tiny/model/model.safetensors");
  expect_format_error("truncated_real", real.substr(0, real.size() / 2), "run past the data block");
  // the real checkpoint, cut inside its JSON header
  expect_format_error("truncated_header", real.substr(0, 100), "exceeds the file size");
}

TEST(SafeTensors, MissingFileIsIoError) {
  EXPECT_THROW(SafeTensors::open(tmp("does-not-exist.safetensors")), IoError);
  EXPECT_THROW(SafeTensors::open(kTmp), IoError);  // a directory
}

TEST(Checkpoint, SingleFileT5Tiny) {
  Checkpoint ck = Checkpoint::open(kData + "/t5-tiny/model");
  EXPECT_EQ(ck.num_files(), 1u);
  EXPECT_EQ(ck.size(), 197u);
  Tensor w = ck.get("language_projection.weight", {48, 32});
  EXPECT_TRUE(w.is_borrowed());
  EXPECT_NE(ck.file_of("query_tokens").find("model.safetensors"), std::string::npos);
  try {
    ck.get("language_projection.weight", {32, 48});
    ADD_FAILURE();
  } catch (const TensorError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("language_projection.weight"), std::string::npos);
    EXPECT_NE(m.find("model.safetensors"), std::string::npos);
    EXPECT_NE(m.find("[48, 32]"), std::string::npos);
  }
  try {
    ck.get("vision_model.nope");
    ADD_FAILURE();
  } catch (const TensorError& e) {
    EXPECT_NE(std::string(e.what()).find("vision_model.nope"), std::string::npos);
  }
}

TEST(Checkpoint, ShardedBf16LlamaTiny) {
  std::size_t calls = 0;
  Checkpoint ck = Checkpoint::open(kData + "/llama-tiny/model",
                                   [&](const std::string&, std::size_t bytes, std::size_t i, std::size_t n) {
                                     EXPECT_GT(bytes, 0u);
                                     EXPECT_EQ(i, calls);
                                     EXPECT_EQ(n, 3u);
                                     ++calls;
                                   });
  EXPECT_EQ(calls, 3u);
  EXPECT_EQ(ck.num_files(), 3u);
  auto index = nlohmann::json::parse(read_all(kData + "/llama-tiny/model/model.safetensors.index.json"));
  EXPECT_EQ(ck.size(), index["weight_map"].size());
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it)
    EXPECT_NE(ck.file_of(it.key()).find(it.value().get<std::string>()), std::string::npos) << it.key();
  Tensor bf = ck.get("language_projection.weight");
  EXPECT_EQ(bf.dtype(), DType::BF16);
  Tensor f = ck.get_f32("language_projection.weight", bf.shape());
  EXPECT_EQ(f.dtype(), DType::F32);
  const auto* raw = static_cast<const std::uint16_t*>(bf.raw());
  for (std::int64_t i = 0; i < f.numel(); ++i) ASSERT_EQ(f.f(i), bf16_to_f32(raw[i]));
}

namespace {
std::string make_dir(const std::string& name) {
  std::string d = tmp(name);
  ::mkdir(d.c_str(), 0755);
  return d;
}
}  // namespace

TEST(Checkpoint, BrokenDirectoriesAreCleanErrors) {
  EXPECT_THROW(Checkpoint::open(tmp("no-such-dir")), IoError);
  std::string empty = make_dir("ck_empty");
  std::remove((empty + "/model.safetensors").c_str());
  EXPECT_THROW(Checkpoint::open(empty), IoError);

  const std::string shard = read_all(kData + "/llama-tiny/model/model-00001-of-00003.safetensors");
  std::string missing = make_dir("ck_missing_shard");
  write_all(missing + "/model.safetensors.index.json",
            R"({"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  write_all(missing + "/model-00001-of-00002.safetensors", shard);
  std::remove((missing + "/model-00002-of-00002.safetensors").c_str());
  EXPECT_THROW(Checkpoint::open(missing), IoError);

  std::string wrong = make_dir("ck_wrong_name");
  write_all(wrong + "/model.safetensors.index.json", R"({"weight_map":{"not.in.shard":"s.safetensors"}})");
  write_all(wrong + "/s.safetensors", shard);
  try {
    Checkpoint::open(wrong);
    ADD_FAILURE();
  } catch (const TensorError& e) {
    EXPECT_NE(std::string(e.what()).find("not.in.shard"), std::string::npos);
  }

  std::string badjson = make_dir("ck_bad_index");
  write_all(badjson + "/model.safetensors.index.json", "{\"weight_map\": ");
  EXPECT_THROW(Checkpoint::open(badjson), FormatError);
  write_all(badjson + "/model.safetensors.index.json", R"({"weight_map":{"a":"../../etc/passwd"}})");
  EXPECT_THROW(Checkpoint::open(badjson), FormatError);
  write_all(badjson + "/model.safetensors.index.json", R"({"weight_map":{"a":3}})");
  EXPECT_THROW(Checkpoint::open(badjson), FormatError);

  std::string corrupt = make_dir("ck_corrupt");
  write_all(corrupt + "/model.safetensors", le64(1ull << 40));
  EXPECT_THROW(Checkpoint::open(corrupt), FormatError);
}

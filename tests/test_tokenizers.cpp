// The T5 / LLaMA / BERT tokenizers against transformers 4.36.2 (slow tokenizers):
//  * every string of every tests/data/tokenizers/*.json: ids (with and without special tokens),
//    tokens, attention masks, decodes with and without skip_special_tokens, padded batches;
//  * the processor outputs (input_ids / attention_mask / qformer_*) of the t5-tiny and llama-tiny
//    checkpoints, tokenized with the checkpoint's own tokenizer files;
//  * the decoded texts of the reference generations;
//  * typed errors: invalid UTF-8, missing / corrupted files, bad configuration values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "instructblip/core/error.hpp"
#include "instructblip/io/safetensors.hpp"
#include "instructblip/processing/processor.hpp"
#include "instructblip/processing/streamer.hpp"
#include "instructblip/processing/tokenizer.hpp"

namespace ib = instructblip;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string kData = IB_TEST_DATA_DIR;
const std::string kTokDir = kData + "/tokenizers";

json load_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  return json::parse(std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>()));
}

std::vector<std::int64_t> ids_of(const json& j) { return j.get<std::vector<std::int64_t>>(); }

std::string show(const std::vector<std::int64_t>& v) {
  std::ostringstream o;
  o << "[";
  for (std::size_t i = 0; i < v.size(); ++i) o << (i ? ", " : "") << v[i];
  o << "]";
  return o.str();
}

std::string show(const std::vector<std::string>& v) {
  std::ostringstream o;
  o << "[";
  for (std::size_t i = 0; i < v.size(); ++i) o << (i ? ", " : "") << '"' << v[i] << '"';
  o << "]";
  return o.str();
}

// The tokenizer each fixture file was produced with (see index.json "references").
std::unique_ptr<ib::Tokenizer> make_fixture_tokenizer(const std::string& name) {
  if (name == "bert_ours") return std::make_unique<ib::BertTokenizer>(kTokDir + "/bert_uncased_1000_vocab.txt");
  if (name == "qformer_ours") {
    ib::TokenizerConfig cfg = ib::BertTokenizer::default_config();
    cfg.truncation_side = ib::Side::Left;
    auto tok = std::make_unique<ib::BertTokenizer>(kTokDir + "/bert_uncased_1000_vocab.txt", cfg);
    tok->add_special_token(ib::SpecialToken::Bos, ib::AddedToken::special_token("[DEC]"));
    return tok;
  }
  if (name == "llama_hf_bytefallback")
    return std::make_unique<ib::LlamaTokenizer>(kTokDir + "/test_sentencepiece_with_bytefallback.model");
  if (name == "llama_ours") return std::make_unique<ib::LlamaTokenizer>(kTokDir + "/llama_bpe_1000.model");
  if (name == "t5_hf_spiece") return std::make_unique<ib::T5Tokenizer>(kTokDir + "/spiece.model");
  if (name == "t5_ours") return std::make_unique<ib::T5Tokenizer>(kTokDir + "/t5_unigram_1000.model");
  throw std::runtime_error("unknown fixture " + name);
}

std::optional<std::int64_t> role_id(const ib::Tokenizer& tok, const std::string& attr) {
  for (std::size_t r = 0; r < ib::kNumSpecialTokenRoles; ++r)
    if (attr == ib::special_token_attribute(ib::SpecialToken(r))) return tok.special_token_id(ib::SpecialToken(r));
  throw std::runtime_error("unknown special token attribute " + attr);
}

std::optional<std::string> role_token(const ib::Tokenizer& tok, const std::string& attr) {
  for (std::size_t r = 0; r < ib::kNumSpecialTokenRoles; ++r)
    if (attr == ib::special_token_attribute(ib::SpecialToken(r))) {
      const auto& t = tok.special_token(ib::SpecialToken(r));
      if (!t) return std::nullopt;
      return t->content;
    }
  throw std::runtime_error("unknown special token attribute " + attr);
}

// Checks the special-token block of a fixture / reference description.
void expect_special_tokens(const ib::Tokenizer& tok, const json& desc) {
  for (std::size_t r = 0; r < ib::kNumSpecialTokenRoles; ++r) {
    const std::string attr = ib::special_token_attribute(ib::SpecialToken(r));
    if (desc.contains("special_token_ids") && desc["special_token_ids"].contains(attr)) {
      EXPECT_EQ(role_id(tok, attr), desc["special_token_ids"][attr].get<std::int64_t>()) << attr;
      EXPECT_EQ(role_token(tok, attr), desc["special_tokens"][attr].get<std::string>()) << attr;
    } else if (desc.contains("special_token_ids")) {
      EXPECT_FALSE(role_id(tok, attr).has_value()) << attr << " should be unset";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// tests/data/tokenizers/*.json
// ---------------------------------------------------------------------------------------------

class FixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureTest, EveryStringMatchesTransformers) {
  const std::string name = GetParam();
  const json fx = load_json(kTokDir + "/" + name + ".json");
  auto tok = make_fixture_tokenizer(name);
  ASSERT_GE(fx["strings"].size(), 40u);
  int checked = 0;
  for (const auto& s : fx["strings"]) {
    const std::string text = s["text"].get<std::string>();
    SCOPED_TRACE(name + " text=" + json(text).dump());
    const auto ids = tok->encode(text, true);
    EXPECT_EQ(ids, ids_of(s["input_ids"])) << "got " << show(ids);
    const auto ids_ns = tok->encode(text, false);
    EXPECT_EQ(ids_ns, ids_of(s["input_ids_no_special"])) << "got " << show(ids_ns);
    if (s.contains("tokens")) {
      const auto toks = tok->convert_ids_to_tokens(ids_of(s["input_ids"]));
      EXPECT_EQ(toks, s["tokens"].get<std::vector<std::string>>()) << "got " << show(toks);
      // tokenize() gives the same pieces (whole added tokens) for the text without special tokens.
      const auto pieces = tok->tokenize(text);
      EXPECT_EQ(tok->convert_tokens_to_ids(pieces), ids_of(s["input_ids_no_special"])) << "pieces " << show(pieces);
    }
    if (s.contains("attention_mask")) {
      const auto batch = tok->encode_batch({text});
      ASSERT_EQ(batch.batch_size(), 1u);
      EXPECT_EQ(batch.input_ids[0], ids_of(s["input_ids"]));
      EXPECT_EQ(batch.attention_mask[0], ids_of(s["attention_mask"]));
    }
    if (s.contains("decode_keep_special"))
      EXPECT_EQ(tok->decode(ids_of(s["input_ids"]), false), s["decode_keep_special"].get<std::string>());
    if (s.contains("decode_skip_special"))
      EXPECT_EQ(tok->decode(ids_of(s["input_ids"]), true), s["decode_skip_special"].get<std::string>());
    ++checked;
  }
  EXPECT_EQ(checked, int(fx["strings"].size()));
}

TEST_P(FixtureTest, TokenizerDescription) {
  const std::string name = GetParam();
  const json fx = load_json(kTokDir + "/" + name + ".json");
  auto tok = make_fixture_tokenizer(name);
  const json& d = fx["tokenizer"];
  EXPECT_EQ(tok->class_name(), d["class"].get<std::string>());
  EXPECT_EQ(tok->size(), d["len"].get<std::int64_t>());
  EXPECT_EQ(tok->vocab_size(), d["vocab_size"].get<std::int64_t>());
  EXPECT_EQ(ib::side_name(tok->padding_side()), d["padding_side"].get<std::string>());
  EXPECT_EQ(tok->additional_special_tokens().size(), d["n_additional_special_tokens"].get<std::size_t>());
  expect_special_tokens(*tok, d);
}

TEST_P(FixtureTest, PaddedBatch) {
  const std::string name = GetParam();
  const json fx = load_json(kTokDir + "/" + name + ".json");
  auto tok = make_fixture_tokenizer(name);
  const json& pb = fx["padded_batch"];
  const auto texts = pb["texts"].get<std::vector<std::string>>();
  if (!pb.contains("input_ids")) {
    // "tokenizer has no pad token; padding=True would raise"
    EXPECT_THROW(tok->encode_batch(texts, /*padding=*/true), ib::InvalidArgument);
    const auto unpadded = tok->encode_batch(texts, /*padding=*/false);
    ASSERT_EQ(unpadded.batch_size(), texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(unpadded.input_ids[i], tok->encode(texts[i]));
    return;
  }
  const auto batch = tok->encode_batch(texts, /*padding=*/true);
  ASSERT_EQ(batch.batch_size(), texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(batch.input_ids[i], ids_of(pb["input_ids"][i])) << i;
    EXPECT_EQ(batch.attention_mask[i], ids_of(pb["attention_mask"][i])) << i;
  }
  const ib::Tensor t = batch.input_ids_tensor();
  EXPECT_EQ(t.shape(), (ib::Shape{std::int64_t(texts.size()), std::int64_t(batch.max_length())}));
}

INSTANTIATE_TEST_SUITE_P(Transformers4362, FixtureTest,
                         ::testing::Values("bert_ours", "qformer_ours", "llama_hf_bytefallback", "llama_ours",
                                           "t5_hf_spiece", "t5_ours"));

TEST(Fixtures, IndexListsEveryReference) {
  const json index = load_json(kTokDir + "/index.json");
  std::size_t n = 0;
  for (auto it = index["references"].begin(); it != index["references"].end(); ++it) {
    EXPECT_NO_THROW(make_fixture_tokenizer(it.key())) << it.key();
    const json fx = load_json(kTokDir + "/" + it.value()["file"].get<std::string>());
    EXPECT_EQ(fx["strings"].size(), index["strings"].size()) << it.key();
    EXPECT_EQ(make_fixture_tokenizer(it.key())->size(), it.value()["len"].get<std::int64_t>()) << it.key();
    ++n;
  }
  EXPECT_EQ(n, 6u);
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: tokenizer files -> processor outputs and generation decodes
// ---------------------------------------------------------------------------------------------

std::vector<std::vector<std::int64_t>> tensor_rows(const ib::Tensor& t) {
  EXPECT_EQ(t.dtype(), ib::DType::I64);
  EXPECT_EQ(t.ndim(), 2);
  std::vector<std::vector<std::int64_t>> rows;
  const std::int64_t r = t.dim(0), c = t.dim(1);
  for (std::int64_t i = 0; i < r; ++i) {
    std::vector<std::int64_t> row;
    for (std::int64_t j = 0; j < c; ++j) row.push_back(t.i(i * c + j));
    rows.push_back(row);
  }
  return rows;
}

class CheckpointTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string dir() const { return kData + "/" + GetParam(); }
  std::string model_dir() const { return dir() + "/model"; }
};

TEST_P(CheckpointTest, TokenizersFromPretrained) {
  const json ref = load_json(dir() + "/reference.json");
  auto tok = ib::AutoTokenizer::from_pretrained(model_dir());
  const json& d = ref["tokenizer"];
  EXPECT_EQ(tok->class_name(), d["class"].get<std::string>());
  EXPECT_EQ(tok->size(), d["len"].get<std::int64_t>());
  EXPECT_EQ(ib::side_name(tok->padding_side()), d["padding_side"].get<std::string>());
  expect_special_tokens(*tok, d);
  if (auto* sp = dynamic_cast<ib::SentencePieceTokenizer*>(tok.get())) EXPECT_EQ(sp->legacy(), d["legacy"].get<bool>());
  if (auto* llama = dynamic_cast<ib::LlamaTokenizer*>(tok.get())) {
    EXPECT_EQ(llama->add_bos_token(), d["add_bos_token"].get<bool>());
    EXPECT_EQ(llama->add_eos_token(), d["add_eos_token"].get<bool>());
  }
  auto q = ib::AutoTokenizer::from_pretrained(model_dir() + "/qformer_tokenizer");
  const json& qd = ref["qformer_tokenizer"];
  EXPECT_EQ(q->class_name(), qd["class"].get<std::string>());
  EXPECT_EQ(q->size(), qd["len"].get<std::int64_t>());
  EXPECT_EQ(q->bos_token(), qd["bos_token"].get<std::string>());
  EXPECT_EQ(q->bos_token_id(), qd["bos_token_id"].get<std::int64_t>());
  EXPECT_EQ(q->model_max_length(), 512);
  EXPECT_EQ(q->truncation_side(), ib::Side::Left);
}

TEST_P(CheckpointTest, ProcessorInputIds) {
  const json ref = load_json(dir() + "/reference.json");
  const auto st = ib::io::SafeTensors::open(dir() + "/reference.safetensors");
  auto tok = ib::AutoTokenizer::from_pretrained(model_dir());
  auto q = ib::AutoTokenizer::from_pretrained(model_dir() + "/qformer_tokenizer");
  for (const std::string key : {"a", "b"}) {
    SCOPED_TRACE(GetParam() + " input " + key);
    const json& text = ref["inputs"][key]["text"];
    std::vector<std::string> texts;
    if (text.is_string()) texts.push_back(text.get<std::string>());
    else texts = text.get<std::vector<std::string>>();
    const bool padding = key == "b";  // processor(..., padding=True) for the batch
    const auto enc = tok->encode_batch(texts, padding);
    const auto qenc = q->encode_batch(texts, padding);
    EXPECT_EQ(enc.input_ids, tensor_rows(st.get(key + ".input_ids")));
    EXPECT_EQ(enc.attention_mask, tensor_rows(st.get(key + ".attention_mask")));
    EXPECT_EQ(qenc.input_ids, tensor_rows(st.get(key + ".qformer_input_ids")));
    EXPECT_EQ(qenc.attention_mask, tensor_rows(st.get(key + ".qformer_attention_mask")));
    // The tensors have the reference shapes too.
    EXPECT_EQ(enc.input_ids_tensor().shape(), st.get(key + ".input_ids").shape());
    EXPECT_EQ(qenc.attention_mask_tensor().shape(), st.get(key + ".qformer_attention_mask").shape());
  }
}

TEST_P(CheckpointTest, GenerationDecodes) {
  const json ref = load_json(dir() + "/reference.json");
  const auto st = ib::io::SafeTensors::open(dir() + "/reference.safetensors");
  auto tok = ib::AutoTokenizer::from_pretrained(model_dir());
  int checked = 0;
  for (auto mode = ref["generation"].begin(); mode != ref["generation"].end(); ++mode) {
    if (!mode.value().is_object()) continue;
    for (const std::string key : {"a", "b"}) {
      if (!mode.value().contains(key)) continue;
      const json& g = mode.value()[key];
      SCOPED_TRACE(GetParam() + " generation." + mode.key() + "." + key);
      const ib::Tensor seq = st.get(g["tensor"].get<std::string>());
      EXPECT_EQ(tensor_rows(seq), g["sequences"].get<std::vector<std::vector<std::int64_t>>>());
      EXPECT_EQ(tok->batch_decode(seq, /*skip_special_tokens=*/true), g["text"].get<std::vector<std::string>>());
      EXPECT_EQ(tok->batch_decode(seq, /*skip_special_tokens=*/false),
                g["text_with_special"].get<std::vector<std::string>>());
      ++checked;
    }
  }
  EXPECT_GE(checked, 6);
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, CheckpointTest, ::testing::Values("t5-tiny", "llama-tiny"),
                         [](const auto& info) { return info.param == "t5-tiny" ? std::string("T5") : std::string("Llama"); });

// ---------------------------------------------------------------------------------------------
// Behaviour details
// ---------------------------------------------------------------------------------------------

TEST(Tokenizers, InvalidUtf8IsInvalidArgument) {
  std::vector<std::unique_ptr<ib::Tokenizer>> toks;
  for (const char* n : {"bert_ours", "llama_ours", "t5_ours"}) toks.push_back(make_fixture_tokenizer(n));
  const std::string bad[] = {std::string("abc\xff"), std::string("caf\xc3"), std::string("\xc0\xaf"),
                             std::string("x\xed\xa0\x80y"), std::string("\xf4\x90\x80\x80"),
                             std::string("ok \xe2\x82 bad")};
  for (const auto& tok : toks) {
    for (const auto& s : bad) {
      EXPECT_THROW(tok->encode(s), ib::InvalidArgument) << tok->class_name();
      EXPECT_THROW(tok->tokenize(s), ib::InvalidArgument) << tok->class_name();
      EXPECT_THROW(tok->encode_batch({"fine", s}), ib::InvalidArgument) << tok->class_name();
    }
  }
  try {
    toks[0]->encode(std::string("abc\xff"));
    FAIL() << "no exception";
  } catch (const ib::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("byte offset 3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("0xFF"), std::string::npos) << e.what();
  }
  // Valid UTF-8 with NUL bytes and 4-byte sequences is fine.
  EXPECT_NO_THROW(toks[0]->encode(std::string("a\0b \xf0\x9f\x98\x80", 8)));
}

TEST(Tokenizers, MissingFilesAreIoError) {
  EXPECT_THROW(ib::T5Tokenizer(kTokDir + "/does_not_exist.model"), ib::IoError);
  EXPECT_THROW(ib::LlamaTokenizer(kTokDir + "/does_not_exist.model"), ib::IoError);
  EXPECT_THROW(ib::BertTokenizer(kTokDir + "/does_not_exist.txt"), ib::IoError);
  EXPECT_THROW(ib::AutoTokenizer::from_pretrained(kData + "/no_such_dir"), ib::IoError);
  // A directory whose config names a class but lacks the model file.
  const fs::path tmp = fs::path(IB_TEST_TMP_DIR) / "tok_missing_model";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  fs::copy_file(kData + "/llama-tiny/model/tokenizer_config.json", tmp / "tokenizer_config.json");
  EXPECT_THROW(ib::AutoTokenizer::from_pretrained(tmp.string()), ib::IoError);
  fs::remove(tmp / "tokenizer_config.json");
  EXPECT_THROW(ib::AutoTokenizer::from_pretrained(tmp.string()), ib::IoError);  // nothing at all
  std::ofstream(tmp / "tokenizer_config.json") << R"({"tokenizer_class": "BertTokenizer"})";
  EXPECT_THROW(ib::AutoTokenizer::from_pretrained(tmp.string()), ib::IoError);
  fs::remove_all(tmp);
}

TEST(Tokenizers, CorruptedModelIsFormatError) {
  const fs::path tmp = fs::path(IB_TEST_TMP_DIR) / "tok_corrupt";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  // Not a protobuf at all.
  std::ofstream(tmp / "garbage.model", std::ios::binary) << "this is not a sentencepiece model\xff\xfe";
  EXPECT_THROW(ib::T5Tokenizer((tmp / "garbage.model").string()), ib::FormatError);
  EXPECT_THROW(ib::LlamaTokenizer((tmp / "garbage.model").string()), ib::FormatError);
  // Truncated in the middle.
  {
    std::ifstream in(kTokDir + "/t5_unigram_1000.model", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(tmp / "truncated.model", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  EXPECT_THROW(ib::T5Tokenizer((tmp / "truncated.model").string()), ib::FormatError);
  // Empty.
  std::ofstream(tmp / "empty.model", std::ios::binary).close();
  EXPECT_THROW(ib::LlamaTokenizer((tmp / "empty.model").string()), ib::FormatError);
  // A vocabulary that is not UTF-8, and an empty one.
  std::ofstream(tmp / "bad_vocab.txt", std::ios::binary) << "[PAD]\n[UNK]\n\xff\xfe\n";
  EXPECT_THROW(ib::BertTokenizer((tmp / "bad_vocab.txt").string()), ib::FormatError);
  std::ofstream(tmp / "empty_vocab.txt", std::ios::binary).close();
  EXPECT_THROW(ib::BertTokenizer((tmp / "empty_vocab.txt").string()), ib::FormatError);
  // A checkpoint directory whose tokenizer.model is broken.
  fs::create_directories(tmp / "ckpt");
  for (const char* f : {"tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"})
    fs::copy_file(kData + "/llama-tiny/model/" + f, tmp / "ckpt" / f);
  fs::copy_file(tmp / "truncated.model", tmp / "ckpt" / "tokenizer.model");
  EXPECT_THROW(ib::AutoTokenizer::from_pretrained((tmp / "ckpt").string()), ib::FormatError);
  // A tokenizer_config.json that is not JSON.
  std::ofstream(tmp / "ckpt" / "tokenizer_config.json") << "{\"tokenizer_class\": ";
  EXPECT_THROW(ib::AutoTokenizer::from_pretrained((tmp / "ckpt").string()), ib::FormatError);
  fs::remove_all(tmp);
}

void write_config_and_expect_config_error(const std::string& json_text) {
  const fs::path tmp = fs::path(IB_TEST_TMP_DIR) / "tok_badcfg";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  fs::copy_file(kData + "/t5-tiny/model/qformer_tokenizer/vocab.txt", tmp / "vocab.txt");
  std::ofstream(tmp / "tokenizer_config.json") << json_text;
  EXPECT_THROW(ib::AutoTokenizer::from_pretrained(tmp.string()), ib::ConfigError) << json_text;
  fs::remove_all(tmp);
}

TEST(Tokenizers, BadConfigValuesAreConfigError) {
  write_config_and_expect_config_error(R"({"tokenizer_class": "CLIPTokenizer"})");
  write_config_and_expect_config_error(R"({"tokenizer_class": 7})");
  write_config_and_expect_config_error(R"({"tokenizer_class": "BertTokenizer", "padding_side": "middle"})");
  write_config_and_expect_config_error(R"({"tokenizer_class": "BertTokenizer", "model_max_length": "long"})");
  write_config_and_expect_config_error(R"({"tokenizer_class": "BertTokenizer", "do_lower_case": "yes"})");
  write_config_and_expect_config_error(R"({"tokenizer_class": "BertTokenizer", "unk_token": 3})");
  write_config_and_expect_config_error(
      R"({"tokenizer_class": "BertTokenizer", "added_tokens_decoder": {"x": {"content": "[X]"}}})");
  write_config_and_expect_config_error(R"([1, 2, 3])");
}

TEST(Tokenizers, QformerFromFilesEqualsConstructedOne) {
  auto from_files = ib::AutoTokenizer::from_pretrained(kData + "/t5-tiny/model/qformer_tokenizer");
  auto built = make_fixture_tokenizer("qformer_ours");
  const json fx = load_json(kTokDir + "/qformer_ours.json");
  for (const auto& s : fx["strings"]) {
    const std::string text = s["text"].get<std::string>();
    EXPECT_EQ(from_files->encode(text), built->encode(text)) << text;
    EXPECT_EQ(from_files->encode(text), ids_of(s["input_ids"])) << text;
  }
  EXPECT_EQ(from_files->all_special_ids(), built->all_special_ids());
}

TEST(Tokenizers, T5CheckpointMatchesFixtureTokenizer) {
  // t5-tiny's spiece.model is t5_unigram_1000.model: the checkpoint files must give the fixture's ids.
  auto ckpt = ib::AutoTokenizer::from_pretrained(kData + "/t5-tiny/model");
  const json fx = load_json(kTokDir + "/t5_ours.json");
  for (const auto& s : fx["strings"]) {
    const std::string text = s["text"].get<std::string>();
    EXPECT_EQ(ckpt->encode(text), ids_of(s["input_ids"])) << text;
    EXPECT_EQ(ckpt->decode(ids_of(s["input_ids"]), true), s["decode_skip_special"].get<std::string>()) << text;
    EXPECT_EQ(ckpt->decode(ids_of(s["input_ids"]), false), s["decode_keep_special"].get<std::string>()) << text;
  }
}

TEST(Tokenizers, LlamaCheckpointMatchesFixtureTokenizer) {
  // llama-tiny's tokenizer.model is llama_bpe_1000.model plus the added [PAD] = 1000, which the
  // fixture tokenizer lacks: every string without "[PAD]" gets the fixture's ids.
  auto ckpt = ib::AutoTokenizer::from_pretrained(kData + "/llama-tiny/model");
  const json fx = load_json(kTokDir + "/llama_ours.json");
  for (const auto& s : fx["strings"]) {
    const std::string text = s["text"].get<std::string>();
    if (text.find("[PAD]") != std::string::npos) continue;
    EXPECT_EQ(ckpt->encode(text), ids_of(s["input_ids"])) << text;
    EXPECT_EQ(ckpt->decode(ids_of(s["input_ids"]), true), s["decode_skip_special"].get<std::string>()) << text;
  }
  EXPECT_EQ(ckpt->encode("[PAD]"), (std::vector<std::int64_t>{1, 1000}));
  EXPECT_EQ(ckpt->decode({1, 1000, 1000}, true), "");
}

TEST(Tokenizers, PaddingSideAndTruncation) {
  auto llama = ib::AutoTokenizer::from_pretrained(kData + "/llama-tiny/model");
  ASSERT_EQ(llama->padding_side(), ib::Side::Left);
  ASSERT_EQ(llama->truncation_side(), ib::Side::Left);
  const auto full = llama->encode("What is unusual about this image?");
  ASSERT_GT(full.size(), 6u);
  // Left truncation keeps the BOS and the last max_length - 1 tokens.
  const auto t = llama->encode_batch({"What is unusual about this image?"}, false, true, 6);
  std::vector<std::int64_t> expect{full[0]};
  expect.insert(expect.end(), full.end() - 5, full.end());
  EXPECT_EQ(t.input_ids[0], expect);
  // max_length alone truncates too (HF truncation=None + max_length).
  EXPECT_EQ(llama->encode_batch({"What is unusual about this image?"}, false, false, 6).input_ids[0], expect);
  // Right side.
  llama->set_truncation_side(ib::Side::Right);
  EXPECT_EQ(llama->encode_batch({"What is unusual about this image?"}, false, true, 4).input_ids[0],
            std::vector<std::int64_t>(full.begin(), full.begin() + 4));
  // Padding to the longest row, on the left, with [PAD] = 1000.
  const auto b = llama->encode_batch({"a", "What is unusual about this image?"}, true);
  ASSERT_EQ(b.input_ids[0].size(), full.size());
  EXPECT_EQ(b.input_ids[0].front(), 1000);
  EXPECT_EQ(b.attention_mask[0].front(), 0);
  EXPECT_EQ(b.attention_mask[0].back(), 1);
  EXPECT_EQ(b.input_ids[1], full);
  // Right padding when asked.
  llama->set_padding_side(ib::Side::Right);
  const auto r = llama->encode_batch({"a", "What is unusual about this image?"}, true);
  EXPECT_EQ(r.input_ids[0].back(), 1000);
  EXPECT_EQ(r.attention_mask[0].front(), 1);
  // The Q-Former tokenizer truncates on the left with [CLS] ... [SEP] kept.
  auto q = ib::AutoTokenizer::from_pretrained(kData + "/llama-tiny/model/qformer_tokenizer");
  const auto qfull = q->encode("What is unusual about this image?");
  const auto qt = q->encode_batch({"What is unusual about this image?"}, false, true, 5).input_ids[0];
  EXPECT_EQ(qt, (std::vector<std::int64_t>{101, qfull[qfull.size() - 4], qfull[qfull.size() - 3], qfull[qfull.size() - 2], 102}));
  // truncation=true without max_length uses model_max_length (512): nothing to cut here.
  EXPECT_EQ(q->encode_batch({"What is unusual about this image?"}, false, true).input_ids[0], qfull);
}

TEST(Tokenizers, T5EosNotDuplicatedAndExtraIds) {
  auto t5 = make_fixture_tokenizer("t5_ours");
  EXPECT_EQ(t5->encode("</s>"), (std::vector<std::int64_t>{1}));
  EXPECT_EQ(t5->convert_token_to_id("<extra_id_0>"), 1099);
  EXPECT_EQ(t5->convert_token_to_id("<extra_id_99>"), 1000);
  EXPECT_EQ(t5->convert_id_to_token(1050), "<extra_id_49>");
  EXPECT_TRUE(t5->is_special_id(1050));
  EXPECT_EQ(t5->num_special_tokens_to_add(), 1u);
  EXPECT_EQ(t5->decode({1099, 5, 1098}, false), "<extra_id_0> the <extra_id_1>");
  EXPECT_EQ(t5->decode({1099, 5, 1098}, false, std::nullopt, /*spaces_between_special_tokens=*/false),
            "<extra_id_0>the<extra_id_1>");
  EXPECT_THROW(t5->decode({5000}), ib::InvalidArgument);
  EXPECT_THROW(t5->decode({-1}), ib::InvalidArgument);
}

TEST(Tokenizers, CleanUpTokenization) {
  EXPECT_EQ(ib::Tokenizer::clean_up_tokenization("a . b , c ! d ? I 'm do n't we 're they 've it 's x ' y"),
            "a. b, c! d? I'm don't we're they've it's x'y");
  auto bert = make_fixture_tokenizer("bert_ours");
  const auto ids = bert->encode("don't stop, ok?");
  EXPECT_EQ(bert->decode(ids, true), "don't stop, ok?");
  EXPECT_EQ(bert->decode(ids, true, /*clean_up_tokenization_spaces=*/false), "don ' t stop , ok ?");
}

TEST(Tokenizers, LlamaNonLegacyDropsPrefixAfterSpecialTokens) {
  // legacy=False (transformers PR #24565): text after a special token gets no dummy prefix.
  ib::TokenizerConfig cfg = ib::LlamaTokenizer::default_config();
  const std::string model = kTokDir + "/llama_bpe_1000.model";
  auto legacy = std::make_unique<ib::LlamaTokenizer>(model, cfg);
  cfg.legacy = false;
  auto modern = std::make_unique<ib::LlamaTokenizer>(model, cfg);
  EXPECT_TRUE(legacy->legacy());
  EXPECT_FALSE(modern->legacy());
  // Plain text is unchanged.
  EXPECT_EQ(modern->encode("Hello world"), legacy->encode("Hello world"));
  EXPECT_EQ(modern->encode("What is unusual about this image?"), legacy->encode("What is unusual about this image?"));
  // After </s>: legacy re-adds "▁", non-legacy does not.
  const auto lt = legacy->tokenize("hi</s>world");
  const auto mt = modern->tokenize("hi</s>world");
  ASSERT_GE(lt.size(), 3u);
  ASSERT_GE(mt.size(), 3u);
  const std::size_t lpos = std::find(lt.begin(), lt.end(), "</s>") - lt.begin();
  const std::size_t mpos = std::find(mt.begin(), mt.end(), "</s>") - mt.begin();
  ASSERT_LT(lpos + 1, lt.size());
  ASSERT_LT(mpos + 1, mt.size());
  EXPECT_EQ(lt[lpos + 1].rfind("\xE2\x96\x81", 0), 0u) << show(lt);
  EXPECT_NE(mt[mpos + 1].rfind("\xE2\x96\x81", 0), 0u) << show(mt);
  EXPECT_EQ(modern->decode(modern->encode("hi</s>world"), true), "hiworld");
}

TEST(Tokenizers, BertDetails) {
  auto bert = make_fixture_tokenizer("bert_ours");
  auto* b = dynamic_cast<ib::BertTokenizer*>(bert.get());
  ASSERT_NE(b, nullptr);
  // Control characters go, whitespace splits, CJK characters stand alone, accents are stripped.
  EXPECT_EQ(b->basic_tokenize("a\x01" "b\tc\xe4\xb8\xad\xe6\x96\x87" "d"),
            (std::vector<std::string>{"ab", "c", "\xe4\xb8\xad", "\xe6\x96\x87", "d"}));
  EXPECT_EQ(b->basic_tokenize("Caf\xc3\xa9 NA\xc3\x8fVE!"), (std::vector<std::string>{"cafe", "naive", "!"}));
  // Python's str.lower() with its final-sigma rule.
  EXPECT_EQ(b->basic_tokenize("\xce\x9f\xce\x94\xce\x9f\xce\xa3 \xce\xa3\xce\x91"),
            (std::vector<std::string>{"\xce\xbf\xce\xb4\xce\xbf\xcf\x82", "\xcf\x83\xce\xb1"}));
  // A word longer than 100 characters is [UNK].
  EXPECT_EQ(b->wordpiece_tokenize(std::string(101, 'a')), (std::vector<std::string>{"[UNK]"}));
  EXPECT_NE(b->wordpiece_tokenize(std::string(100, 'a')), (std::vector<std::string>{"[UNK]"}));
  // Special tokens stay whole and upper-case; unknown ids decode as [UNK].
  EXPECT_EQ(bert->tokenize("x [MASK] y"), (std::vector<std::string>{"x", "[MASK]", "y"}));
  EXPECT_EQ(bert->convert_id_to_token(123456), "[UNK]");
}

TEST(Tokenizers, AddTokensAndLen) {
  auto t5 = make_fixture_tokenizer("t5_ours");
  const std::int64_t before = t5->size();
  EXPECT_EQ(t5->add_tokens({ib::AddedToken("<img>")}), 1);
  EXPECT_EQ(t5->size(), before + 1);
  EXPECT_EQ(t5->convert_token_to_id("<img>"), before);
  const auto ids = t5->encode("look <img> here");
  EXPECT_NE(std::find(ids.begin(), ids.end(), before), ids.end());
  // Not special: decode keeps it apart and skip_special_tokens keeps it.
  EXPECT_NE(t5->decode(ids, true).find("<img>"), std::string::npos);
  // Adding an existing vocabulary entry creates no new id.
  EXPECT_EQ(t5->add_tokens({ib::AddedToken("\xE2\x96\x81the")}), 0);
  EXPECT_EQ(t5->size(), before + 1);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Inputs found with the libFuzzer harnesses tests/fuzz/fuzz_tokenizer_config.cpp and
// tests/fuzz/fuzz_tokenizers.cpp.

namespace {

/// A scratch tokenizer directory holding t5-tiny's spiece.model and the given tokenizer_config.json.
std::string t5_dir_with_config(const std::string& name, const std::string& tokenizer_config) {
  const fs::path dir = fs::path(IB_TEST_TMP_DIR) / "tokenizer_fuzz" / name;
  fs::create_directories(dir);
  fs::copy_file(kData + "/t5-tiny/model/spiece.model", dir / "spiece.model", fs::copy_options::overwrite_existing);
  std::ofstream(dir / "tokenizer_config.json", std::ios::binary | std::ios::trunc) << tokenizer_config;
  return dir.string();
}

}  // namespace

TEST(TokenizerFuzzRegressions, HugeExtraIdsRejected) {
  // {"extra_ids": 1000000} (23 bytes) was accepted and made T5Tokenizer build a million added
  // tokens: over a minute and hundreds of MB per tokenizer. extra_ids is now capped.
  const std::string dir = t5_dir_with_config("huge_extra_ids", R"({"extra_ids": 1000000})");
  try {
    ib::T5Tokenizer::from_pretrained(dir);
    ADD_FAILURE() << "extra_ids 1000000 accepted";
  } catch (const ib::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("extra_ids"), std::string::npos) << e.what();
  }
  ib::TokenizerConfig cfg = ib::T5Tokenizer::default_config();
  cfg.extra_ids = ib::kMaxT5ExtraIds + 1;
  EXPECT_THROW(ib::T5Tokenizer(kData + "/t5-tiny/model/spiece.model", cfg), ib::ConfigError);
  // The cap itself is accepted: <extra_id_i> has id len(sp_model) - 1 + extra_ids - i.
  const auto t5 = ib::T5Tokenizer::from_pretrained(
      t5_dir_with_config("max_extra_ids", "{\"extra_ids\": " + std::to_string(ib::kMaxT5ExtraIds) + "}"));
  EXPECT_EQ(t5->extra_ids(), ib::kMaxT5ExtraIds);
  EXPECT_EQ(t5->convert_token_to_id("<extra_id_0>"), t5->vocab_size() - 1 + ib::kMaxT5ExtraIds);
  EXPECT_EQ(t5->convert_token_to_id("<extra_id_9999>"), t5->vocab_size());
}

TEST(TokenizerFuzzRegressions, DeeplyNestedJsonRejected) {
  // A tokenizer_config.json value nested a few hundred thousand levels deep overflowed the stack
  // when the error message dump()ed it (nlohmann::json recurses once per level).
  const std::size_t depth = 300000;
  const std::string deep = std::string(depth, '[') + std::string(depth, ']');
  const std::string dir = t5_dir_with_config("deep", R"({"padding_side": )" + deep + "}");
  try {
    ib::T5Tokenizer::from_pretrained(dir);
    ADD_FAILURE() << "deeply nested tokenizer_config.json accepted";
  } catch (const ib::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("levels deep"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// TextStreamer: incremental decoding of generated ids
// ---------------------------------------------------------------------------------------------

namespace {

// Feeds `ids` one at a time; returns the pieces the streamer produced (end() last).
std::vector<std::string> stream_pieces(const ib::Tokenizer& tok, const std::vector<std::int64_t>& ids,
                                       std::string* via_callback = nullptr) {
  ib::TextStreamer streamer(tok, [&](std::string_view piece) {
    if (via_callback) via_callback->append(piece);
  });
  std::vector<std::string> pieces;
  for (std::int64_t id : ids) pieces.push_back(streamer.put(id));
  pieces.push_back(streamer.end());
  return pieces;
}

std::string concat(const std::vector<std::string>& pieces) {
  std::string s;
  for (const auto& p : pieces) s += p;
  return s;
}

}  // namespace

TEST_P(FixtureTest, StreamedTextEqualsTheWholeDecode) {
  const std::string name = GetParam();
  const json fx = load_json(kTokDir + "/" + name + ".json");
  auto tok = make_fixture_tokenizer(name);
  int checked = 0;
  for (const auto& s : fx["strings"]) {
    if (!s.contains("decode_skip_special")) continue;
    SCOPED_TRACE(name + " text=" + json(s["text"]).dump());
    std::string via_callback;
    const auto pieces = stream_pieces(*tok, ids_of(s["input_ids"]), &via_callback);
    const std::string want = s["decode_skip_special"].get<std::string>();  // transformers' decode
    EXPECT_EQ(concat(pieces), want);
    EXPECT_EQ(via_callback, want);
    for (const auto& p : pieces) EXPECT_NO_THROW(ib::check_utf8(p, "a streamed piece")) << json(p).dump();
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

TEST(TextStreamer, HoldsBackACharacterSplitAcrossByteFallbackTokens) {
  // "Café": the LLaMA byte-fallback tokenizer spells "é" as <0xC3> <0xA9>.
  auto tok = make_fixture_tokenizer("llama_hf_bytefallback");
  const std::vector<std::int64_t> ids = tok->encode("Café naïve", false);
  const std::vector<std::string> tokens = tok->convert_ids_to_tokens(ids);
  const auto c3 = std::find(tokens.begin(), tokens.end(), "<0xC3>");
  ASSERT_NE(c3, tokens.end()) << show(tokens);
  ASSERT_EQ(*(c3 + 1), "<0xA9>");
  const std::size_t at = std::size_t(c3 - tokens.begin());
  ib::TextStreamer streamer(*tok);
  std::string got;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::string piece = streamer.put(ids[i]);
    // Never half a character, nor the U+FFFD that decode() shows for the half-received "é".
    EXPECT_NO_THROW(ib::check_utf8(piece));
    EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << "token " << i << ": " << json(piece).dump();
    if (i == at) {  // the split is real: the ids so far decode to a replacement character
      const std::vector<std::int64_t> head(ids.begin(), ids.begin() + std::ptrdiff_t(i) + 1);
      EXPECT_NE(tok->decode(head, true).find("\xEF\xBF\xBD"), std::string::npos);
    }
    got += piece;
  }
  got += streamer.end();
  EXPECT_EQ(got, tok->decode(ids, true));
  EXPECT_EQ(got, "Café naïve");
}

TEST(TextStreamer, SkipsIdsWithoutATokenizerEntryAndRestartsAfterEnd) {
  auto tok = make_fixture_tokenizer("t5_ours");
  const std::vector<std::int64_t> ids = tok->encode("hello world", false);
  ib::TextStreamer streamer(*tok);
  std::string got;
  for (std::int64_t id : ids) {
    got += streamer.put(id);
    got += streamer.put(tok->size() + 5);  // e.g. Flan-T5's padded embedding rows: no text
  }
  got += streamer.end();
  EXPECT_EQ(got, tok->decode(ids, true));
  EXPECT_TRUE(streamer.ids().empty());
  EXPECT_EQ(concat(stream_pieces(*tok, ids)), got);
}

TEST_P(CheckpointTest, StreamedGenerationEqualsBatchDecode) {
  // The generated sequences of the transformers references, streamed token by token.
  const json ref = load_json(dir() + "/reference.json");
  const auto st = ib::io::SafeTensors::open(dir() + "/reference.safetensors");
  auto tok = ib::AutoTokenizer::from_pretrained(model_dir());
  int checked = 0;
  for (auto mode = ref["generation"].begin(); mode != ref["generation"].end(); ++mode) {
    if (!mode.value().is_object()) continue;
    for (const std::string key : {"a", "b"}) {
      if (!mode.value().contains(key)) continue;
      const json& g = mode.value()[key];
      const auto rows = tensor_rows(st.get(g["tensor"].get<std::string>()));
      const auto texts = g["text"].get<std::vector<std::string>>();
      for (std::size_t r = 0; r < rows.size(); ++r) {
        EXPECT_EQ(concat(stream_pieces(*tok, rows[r])), texts[r]) << mode.key() << "." << key << " row " << r;
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 6);
}

// ---------------------------------------------------------------------------------------------
// InstructBlipProcessor::save_pretrained
// ---------------------------------------------------------------------------------------------

TEST_P(CheckpointTest, ProcessorSavePretrainedReloadsEqual) {
  const auto p = ib::InstructBlipProcessor::from_pretrained(model_dir());
  const fs::path out = fs::path(IB_TEST_TMP_DIR) / ("processor_saved_" + GetParam());
  fs::remove_all(out);
  p.save_pretrained(out.string());
  EXPECT_TRUE(fs::exists(out / "preprocessor_config.json"));
  EXPECT_TRUE(fs::exists(out / "tokenizer_config.json"));
  EXPECT_TRUE(fs::exists(out / "qformer_tokenizer" / "vocab.txt"));
  EXPECT_FALSE(fs::exists(out / "config.json"));  // the model's file, not the processor's
  const auto q = ib::InstructBlipProcessor::from_pretrained(out.string());
  const ib::Image image = ib::load_image(kData + "/images/merlion.png");
  const std::vector<std::string> prompts = {"What is unusual about this image? Café naïve 😀",
                                            "Describe the image in detail."};
  const std::vector<ib::Image> images{image, image};
  const ib::ProcessorOutput a = p(images, prompts), b = q(images, prompts);
  EXPECT_EQ(tensor_rows(a.input_ids), tensor_rows(b.input_ids));
  EXPECT_EQ(tensor_rows(a.attention_mask), tensor_rows(b.attention_mask));
  EXPECT_EQ(tensor_rows(a.qformer_input_ids), tensor_rows(b.qformer_input_ids));
  EXPECT_EQ(tensor_rows(a.qformer_attention_mask), tensor_rows(b.qformer_attention_mask));
  ASSERT_EQ(a.pixel_values.shape(), b.pixel_values.shape());
  EXPECT_EQ(std::memcmp(a.pixel_values.raw(), b.pixel_values.raw(), a.pixel_values.nbytes()), 0);
  EXPECT_EQ(q.tokenizer().size(), p.tokenizer().size());
  EXPECT_EQ(q.decode(tensor_rows(a.input_ids)[0], false), p.decode(tensor_rows(a.input_ids)[0], false));
  // Saving into the directory it was loaded from is a no-op, not a self-copy that truncates.
  q.save_pretrained(out.string());
  const std::vector<ib::Image> one{image};
  const std::vector<std::string> first{prompts[0]};
  EXPECT_EQ(tensor_rows(ib::InstructBlipProcessor::from_pretrained(out.string())(one, first).input_ids),
            tensor_rows(p(one, first).input_ids));
}

TEST(Processor, SavePretrainedNeedsALoadedProcessor) {
  ib::InstructBlipProcessor p(ib::ImageProcessor(), make_fixture_tokenizer("t5_ours"),
                              make_fixture_tokenizer("bert_ours"));
  EXPECT_THROW(p.save_pretrained((fs::path(IB_TEST_TMP_DIR) / "processor_unsaved").string()), ib::InvalidArgument);
}

TEST(Tokenizers, CheckUtf8NamesTheOffendingByte) {
  struct Case {
    std::string text;
    std::size_t offset;
    const char* byte;
    bool truncated;
  };
  const Case cases[] = {
      {std::string("caf\xc3"), 3, "0xC3", true},                   // cut off by the end
      {std::string("ok \xe2\x82"), 3, "0xE2", true},              // 2 of 3 bytes
      {std::string("ok \xe2\x82 bad"), 3, "0xE2", false},         // a space where a continuation belongs
      {std::string("/\xc0\xaf"), 1, "0xC0", false},               // overlong "/"
      {std::string("x\xed\xa0\x80y"), 1, "0xED", false},          // UTF-16 surrogate
      {std::string("ab\xf4\x90\x80\x80"), 2, "0xF4", false},      // above U+10FFFF
      {std::string("\xe0\x80\xaf"), 0, "0xE0", false},            // overlong 3-byte form
      {std::string("\xf0\x9f\x98\x80 \x80"), 5, "0x80", false},  // a lone continuation byte
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(json(std::vector<int>(c.text.begin(), c.text.end())).dump());
    try {
      ib::check_utf8(c.text, "the prompt");
      ADD_FAILURE() << "accepted";
    } catch (const ib::InvalidArgument& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("in the prompt at byte offset " + std::to_string(c.offset) + " (byte " + c.byte + ")"),
                std::string::npos)
          << msg;
      EXPECT_EQ(msg.find("truncated multi-byte sequence") != std::string::npos, c.truncated) << msg;
    }
  }
  EXPECT_NO_THROW(ib::check_utf8(std::string("a\0b \xf0\x9f\x98\x80 \xc3\xa9 \xef\xbf\xbd", 15)));
}

TEST(Tokenizers, IdsToTensor) {
  const ib::Tensor t = ib::ids_to_tensor({{1, 2, 3}, {4, 5, 6}});
  ASSERT_EQ(t.shape(), (ib::Shape{2, 3}));
  EXPECT_EQ(t.dtype(), ib::DType::I64);
  EXPECT_EQ(tensor_rows(t), (std::vector<std::vector<std::int64_t>>{{1, 2, 3}, {4, 5, 6}}));
  try {
    ib::ids_to_tensor({{1, 2}, {3}}, "sequences");
    ADD_FAILURE() << "ragged rows accepted";
  } catch (const ib::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("sequences"), std::string::npos) << e.what();
  }
}

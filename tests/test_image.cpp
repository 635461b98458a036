// Image decoding, Pillow-exact resize and BlipImageProcessor against the transformers 4.36.2 +
// Pillow 9.4 references in tests/data/image_processor/ (see reference.json there).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "instructblip/core/error.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/io/safetensors.hpp"
#include "instructblip/processing/image.hpp"
#include "instructblip/processing/image_processor.hpp"
#include "support/jpeg_encode.hpp"

namespace ib = instructblip;
using nlohmann::json;

namespace {

const std::string kData = IB_TEST_DATA_DIR;
const std::string kRefDir = kData + "/image_processor";
const std::string kTmp = IB_TEST_TMP_DIR;

json reference_json() {
  std::ifstream in(kRefDir + "/reference.json");
  EXPECT_TRUE(in.good());
  return json::parse(in);
}

const ib::io::SafeTensors& reference() {
  static const ib::io::SafeTensors st = ib::io::SafeTensors::open(kRefDir + "/reference.safetensors");
  return st;
}

std::string resolve(const std::string& file) {
  const std::string shared = "shared/data/";
  if (file.rfind(shared, 0) == 0) return kData + "/" + file.substr(shared.size());
  return kRefDir + "/" + file;
}

// "Confusing-Pictures.rgb_uint8 (HxWx3 uint8, ...)" -> "Confusing-Pictures.rgb_uint8"
std::string key_of(const json& v) {
  const std::string s = v.get<std::string>();
  return s.substr(0, s.find(' '));
}

ib::ImageProcessor reference_processor() {
  return ib::ImageProcessor::from_json(reference_json()["preprocessor_config"], "reference.json");
}

struct Diff {
  double max_abs = 0;
  std::int64_t differing = 0;  // elements whose bits differ
};

Diff compare(const ib::Tensor& got, const ib::Tensor& want) {
  EXPECT_EQ(got.shape(), want.shape());
  Diff d;
  if (got.shape() != want.shape()) {
    d.max_abs = INFINITY;
    return d;
  }
  const float* a = got.data<float>();
  const float* b = want.data<float>();
  for (std::int64_t i = 0; i < got.numel(); ++i) {
    const double e = std::fabs(double(a[i]) - double(b[i]));
    d.max_abs = std::max(d.max_abs, e);
    if (ib::f32_bits(a[i]) != ib::f32_bits(b[i])) ++d.differing;
  }
  return d;
}

/// The Pillow-resized uint8 image behind a reference pixel_values (reference.json: recoverable as
/// round((pixel_values * std + mean) * 255), computed in float64).
ib::Image recover_u8(const ib::Tensor& pv, const json& cfg) {
  const int h = int(pv.dim(2)), w = int(pv.dim(3));
  ib::Image out(w, h);
  const float* p = pv.data<float>();
  for (int c = 0; c < 3; ++c) {
    const double mean = cfg["image_mean"][c].get<double>(), sd = cfg["image_std"][c].get<double>();
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const double v = std::nearbyint((double(p[(std::size_t(c) * h + y) * w + x]) * sd + mean) * 255.0);
        out.rgb[(std::size_t(y) * w + x) * 3 + c] = std::uint8_t(std::clamp(v, 0.0, 255.0));
      }
  }
  return out;
}

std::vector<std::uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<std::uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string write_tmp(const std::string& name, const std::vector<std::uint8_t>& bytes) {
  const std::string path = kTmp + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  return path;
}

std::string pixel_key(const json& e) {
  // 1x1 / 40x3: the channels_last result (HF mis-infers channels-first for these)
  if (e.contains("pixel_values_channels_last")) return key_of(e["pixel_values_channels_last"]);
  return key_of(e["pixel_values"]);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Every reference image: decoding, resize, pixel_values.

TEST(ImageReference, DecodedPixelsMatchPillow) {
  const json ref = reference_json();
  int checked = 0;
  for (const auto& e : ref["images"]) {
    const std::string file = e["file"].get<std::string>();
    SCOPED_TRACE(file);
    const ib::Image img = ib::load_image(resolve(file));
    EXPECT_EQ(img.width, e["size_wh"][0].get<int>());
    EXPECT_EQ(img.height, e["size_wh"][1].get<int>());
    if (!e.contains("rgb_uint8")) continue;
    const ib::Tensor want = reference().get(key_of(e["rgb_uint8"]));
    ASSERT_EQ(want.shape(), (ib::Shape{img.height, img.width, 3}));
    const auto* w = static_cast<const std::uint8_t*>(want.raw());
    std::size_t mismatches = 0;
    int max_diff = 0;
    for (std::size_t i = 0; i < img.rgb.size(); ++i) {
      const int d = std::abs(int(img.rgb[i]) - int(w[i]));
      if (d) ++mismatches;
      max_diff = std::max(max_diff, d);
    }
    EXPECT_EQ(mismatches, 0u) << "max difference " << max_diff;
    ++checked;
  }
  EXPECT_EQ(checked, 9);
}

TEST(ImageReference, DecodeFromMemoryEqualsLoad) {
  for (const char* f : {"inputs/progressive_96x64.jpg", "inputs/palette_P_50x37.png", "inputs/cmyk_48x40.jpg"}) {
    const auto bytes = read_file(resolve(f));
    const ib::Image a = ib::decode_image(bytes.data(), bytes.size());
    const ib::Image b = ib::load_image(resolve(f));
    EXPECT_EQ(a.width, b.width);
    EXPECT_EQ(a.height, b.height);
    EXPECT_EQ(a.rgb, b.rgb) << f;
  }
}

TEST(ImageReference, ResizeMatchesPillowExactly) {
  // The uint8 image Pillow's resize produced, recovered from pixel_values, vs resize_image().
  const json ref = reference_json();
  const json& cfg = ref["preprocessor_config"];
  for (const auto& e : ref["images"]) {
    const std::string file = e["file"].get<std::string>();
    SCOPED_TRACE(file);
    const ib::Image img = ib::load_image(resolve(file));
    const ib::Image resized = ib::resize_image(img, 224, 224, ib::Resample::Bicubic);
    const ib::Image want = recover_u8(reference().get(pixel_key(e)), cfg);
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < want.rgb.size(); ++i) mismatches += resized.rgb[i] != want.rgb[i];
    EXPECT_EQ(mismatches, 0u);
  }
}

TEST(ImageReference, PixelValuesMatchTransformers) {
  const json ref = reference_json();
  const ib::ImageProcessor proc = reference_processor();
  double worst = 0;
  for (const auto& e : ref["images"]) {
    const std::string file = e["file"].get<std::string>();
    SCOPED_TRACE(file);
    const ib::Tensor got = proc.preprocess(ib::load_image(resolve(file)));
    const Diff d = compare(got, reference().get(pixel_key(e)));
    std::printf("  %-45s max |error| %.3g, %lld of %lld values not bit-identical\n", file.c_str(), d.max_abs,
                static_cast<long long>(d.differing), static_cast<long long>(got.numel()));
    EXPECT_LE(d.max_abs, 1e-6);
    worst = std::max(worst, d.max_abs);
  }
  std::printf("  worst max |error| over all images: %.3g\n", worst);
}

TEST(ImageReference, OddShapesUseChannelsLast) {
  // 1x1 and 40x3 RGB images: transformers infers channels-first from the (1,1,3) / (3,40,3) array
  // (an error / a wrong picture). We always use channels-last and match the reference made with
  // input_data_format="channels_last", and also our own decode + Pillow resize + normalise.
  const json ref = reference_json();
  const ib::ImageProcessor proc = reference_processor();
  for (const char* stem : {"one_px_1x1", "height3_40x3"}) {
    SCOPED_TRACE(stem);
    const ib::Image img = ib::load_image(kRefDir + "/inputs/" + stem + ".png");
    const ib::Tensor got = proc.preprocess(img);
    const Diff d = compare(got, reference().get(std::string(stem) + ".pixel_values_channels_last"));
    EXPECT_LE(d.max_abs, 1e-6);
    EXPECT_EQ(d.differing, 0);

    ib::Tensor own = ib::Tensor::empty({1, 3, 224, 224});
    proc.normalize_into(ib::resize_image(img, 224, 224, ib::Resample::Bicubic), own.data<float>());
    EXPECT_EQ(compare(got, own).differing, 0);
  }
  // 1x1: every output pixel is the input pixel (normalised).
  const ib::Image px = ib::load_image(kRefDir + "/inputs/one_px_1x1.png");
  const ib::Image big = ib::resize_image(px, 224, 224, ib::Resample::Bicubic);
  for (std::size_t i = 0; i < big.rgb.size(); ++i) ASSERT_EQ(big.rgb[i], px.rgb[i % 3]);
  // 40x3: HF's default (channels-first) output is a different picture.
  const ib::Tensor hw = proc.preprocess(ib::load_image(kRefDir + "/inputs/height3_40x3.png"));
  EXPECT_GT(compare(hw, reference().get("height3_40x3.pixel_values")).max_abs, 1e-3);
}

TEST(ImageReference, BatchEqualsSingles) {
  const json ref = reference_json();
  const ib::ImageProcessor proc = reference_processor();
  std::vector<ib::Image> images;
  std::vector<std::string> keys;
  for (const auto& f : ref["batch"]["files"]) {
    images.push_back(ib::load_image(resolve(f.get<std::string>())));
    for (const auto& e : ref["images"])
      if (e["file"] == f) keys.push_back(pixel_key(e));
  }
  ASSERT_EQ(keys.size(), 3u);
  const ib::Tensor batch = proc.preprocess(images);
  ASSERT_EQ(batch.shape(), (ib::Shape{3, 3, 224, 224}));
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const Diff d = compare(batch.slice0(std::int64_t(i), std::int64_t(i) + 1), reference().get(keys[i]));
    EXPECT_LE(d.max_abs, 1e-6) << keys[i];
    EXPECT_EQ(d.differing, 0) << keys[i];
  }
}

// ---------------------------------------------------------------------------------------------
// Processor config.

TEST(ImageProcessorConfig, FromPretrained) {
  const auto proc = ib::ImageProcessor::from_pretrained(kData + "/t5-tiny/model");
  const auto& c = proc.config();
  EXPECT_EQ(c.height, 224);
  EXPECT_EQ(c.width, 224);
  EXPECT_EQ(c.resample, ib::Resample::Bicubic);
  EXPECT_TRUE(c.do_resize && c.do_rescale && c.do_normalize && c.do_convert_rgb);
  EXPECT_EQ(c.rescale_factor, 0.00392156862745098);
  EXPECT_EQ(c.image_mean[1], 0.4578275);
  EXPECT_EQ(c.image_std[2], 0.27577711);
  // BlipImageProcessor defaults
  const ib::ImageProcessor dflt;
  EXPECT_EQ(dflt.height(), 384);
  EXPECT_EQ(dflt.config().rescale_factor, 1.0 / 255.0);
  // size as a plain integer: a square
  EXPECT_EQ(ib::ImageProcessor::from_json(json{{"size", 100}}).width(), 100);
}

TEST(ImageProcessorConfig, WrongTypesAreConfigErrors) {
  const json base = reference_json()["preprocessor_config"];
  const std::vector<std::pair<std::string, json>> bad = {
      {"size", "224"},
      {"size", json{{"shortest_edge", 224}}},
      {"size", json{{"height", 224.5}, {"width", 224}}},
      {"size", json{{"height", 0}, {"width", 224}}},
      {"do_resize", "yes"},
      {"do_normalize", 1},
      {"resample", "bicubic"},
      {"resample", 7},
      {"rescale_factor", "1/255"},
      {"image_mean", json::array({0.5, 0.5})},
      {"image_mean", json::array({0.5, "0.5", 0.5})},
      {"image_std", json::array({0.5, 0.0, 0.5})},
      {"image_std", json::object()},
      {"image_processor_type", "CLIPImageProcessor"},
  };
  for (const auto& [key, value] : bad) {
    json j = base;
    j[key] = value;
    EXPECT_THROW(ib::ImageProcessor::from_json(j), ib::ConfigError) << key << " = " << value.dump();
    // and through a file, as from_pretrained reads it
    const std::string dir = kTmp + "/bad_preprocessor";
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/preprocessor_config.json") << j.dump();
    EXPECT_THROW(ib::ImageProcessor::from_pretrained(dir), ib::ConfigError) << key;
  }
  EXPECT_THROW(ib::ImageProcessor::from_json(json::array()), ib::ConfigError);
  const std::string broken = write_tmp("broken_preprocessor_config.json", {'{', '"', 's'});
  EXPECT_THROW(ib::ImageProcessor::from_json_file(broken), ib::ConfigError);
  EXPECT_THROW(ib::ImageProcessor::from_pretrained(kTmp + "/no_such_dir"), ib::IoError);
  // null behaves as in HF: do_* false, defaults for the rest
  json j = base;
  j["do_normalize"] = nullptr;
  j["image_mean"] = nullptr;
  EXPECT_FALSE(ib::ImageProcessor::from_json(j).config().do_normalize);
}

TEST(ImageProcessor, FlagsAndArguments) {
  const json base = reference_json()["preprocessor_config"];
  const ib::Image img = ib::load_image(kRefDir + "/inputs/tiny_17x9.png");
  json j = base;
  j["do_resize"] = false;
  j["do_normalize"] = false;
  const ib::Tensor t = ib::ImageProcessor::from_json(j).preprocess(img);
  ASSERT_EQ(t.shape(), (ib::Shape{1, 3, 9, 17}));
  // rescale only: float32(u8 * 0.00392156862745098) computed in double
  EXPECT_EQ(t.f(9 * 17 + 2 * 17 + 5), float(double(img.rgb[(2 * 17 + 5) * 3 + 1]) * 0.00392156862745098));
  EXPECT_THROW(ib::ImageProcessor::from_json(j).preprocess(std::vector<ib::Image>{img, ib::Image(3, 3)}),
               ib::InvalidArgument);
  const ib::ImageProcessor proc = reference_processor();
  EXPECT_THROW(proc.preprocess(std::vector<ib::Image>{}), ib::InvalidArgument);
  EXPECT_THROW(proc.preprocess(ib::Image()), ib::InvalidArgument);
  ib::Image broken = img;
  broken.rgb.pop_back();
  EXPECT_THROW(proc.preprocess(broken), ib::InvalidArgument);
  EXPECT_THROW(ib::resize_image(img, 0, 10), ib::InvalidArgument);
  EXPECT_THROW(ib::Image::from_rgb(2, 2, std::vector<std::uint8_t>(11)), ib::InvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Resize details (Pillow semantics that the references do not cover).

TEST(Resize, SameSizeIsCopyAndOnePassPaths) {
  const ib::Image img = ib::load_image(kRefDir + "/inputs/progressive_96x64.jpg");
  EXPECT_EQ(ib::resize_image(img, 96, 64).rgb, img.rgb);
  // width-only / height-only resizes equal the two-pass result with one side unchanged
  const ib::Image w_only = ib::resize_image(img, 50, 64);
  const ib::Image h_only = ib::resize_image(img, 96, 30);
  EXPECT_EQ(w_only.width, 50);
  EXPECT_EQ(h_only.height, 30);
  // the separable result: height pass applied to the width-only image gives the full resize
  EXPECT_EQ(ib::resize_image(w_only, 50, 30).rgb, ib::resize_image(img, 50, 30).rgb);
  // a constant image stays constant under every filter
  ib::Image flat(37, 23);
  for (std::size_t i = 0; i < flat.rgb.size(); ++i) flat.rgb[i] = std::uint8_t(i % 3 == 0 ? 200 : i % 3 == 1 ? 17 : 255);
  for (int f = 0; f <= 5; ++f) {
    for (auto [w, h] : {std::pair{224, 224}, std::pair{5, 3}, std::pair{37, 100}}) {
      const ib::Image r = ib::resize_image(flat, w, h, ib::resample_from_int(f));
      for (std::size_t i = 0; i < r.rgb.size(); i += 3) {
        ASSERT_EQ(r.rgb[i], 200) << "filter " << f;
        ASSERT_EQ(r.rgb[i + 1], 17);
        ASSERT_EQ(r.rgb[i + 2], 255);
      }
    }
  }
  EXPECT_THROW(ib::resample_from_int(6), ib::InvalidArgument);
}

TEST(Resize, NearestPicksPillowsSourcePixels) {
  // Pillow's affine nearest scaler samples source x = int((x + 0.5) * in / out)
  // (accumulated in double: 0.3125, 0.9375, 1.5625, 2.1875, ... for 5 -> 8).
  ib::Image img(5, 1);
  for (int x = 0; x < 5; ++x) img.rgb[3 * x] = img.rgb[3 * x + 1] = img.rgb[3 * x + 2] = std::uint8_t(10 * x);
  const ib::Image up = ib::resize_image(img, 8, 1, ib::Resample::Nearest);
  const int expect[8] = {0, 0, 1, 2, 2, 3, 4, 4};
  for (int x = 0; x < 8; ++x) EXPECT_EQ(up.rgb[3 * x], 10 * expect[x]) << x;
  const ib::Image down = ib::resize_image(img, 2, 1, ib::Resample::Nearest);
  EXPECT_EQ(down.rgb[0], 10);  // int(0.5 * 2.5) = 1
  EXPECT_EQ(down.rgb[3], 30);  // int(1.5 * 2.5) = 3
}

// ---------------------------------------------------------------------------------------------
// Bad input files.

namespace {

void put_be32(std::vector<std::uint8_t>& v, std::uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v.push_back(std::uint8_t(x >> s));
}

std::uint32_t crc32(const std::uint8_t* p, std::size_t n) {
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
  }
  return ~c;
}

void png_chunk(std::vector<std::uint8_t>& v, const char* type, const std::vector<std::uint8_t>& body) {
  put_be32(v, std::uint32_t(body.size()));
  std::vector<std::uint8_t> tb(type, type + 4);
  tb.insert(tb.end(), body.begin(), body.end());
  v.insert(v.end(), tb.begin(), tb.end());
  put_be32(v, crc32(tb.data(), tb.size()));
}

/// A PNG of `w` x `h` (8-bit, colour type `color`) with the given zlib stream as IDAT.
std::vector<std::uint8_t> make_png(std::uint32_t w, std::uint32_t h, int color, const std::vector<std::uint8_t>& zlib,
                                   const std::vector<std::uint8_t>& plte = {}) {
  std::vector<std::uint8_t> v = {137, 80, 78, 71, 13, 10, 26, 10};
  std::vector<std::uint8_t> ihdr;
  put_be32(ihdr, w);
  put_be32(ihdr, h);
  ihdr.insert(ihdr.end(), {8, std::uint8_t(color), 0, 0, 0});
  png_chunk(v, "IHDR", ihdr);
  if (!plte.empty()) png_chunk(v, "PLTE", plte);
  png_chunk(v, "IDAT", zlib);
  png_chunk(v, "IEND", {});
  return v;
}

/// zlib stream of stored (uncompressed) blocks.
std::vector<std::uint8_t> zlib_stored(const std::vector<std::uint8_t>& raw) {
  std::vector<std::uint8_t> z = {0x78, 0x01};
  std::size_t pos = 0;
  do {
    const std::size_t n = std::min<std::size_t>(65535, raw.size() - pos);
    const bool final = pos + n == raw.size();
    z.push_back(final ? 1 : 0);
    z.push_back(std::uint8_t(n));
    z.push_back(std::uint8_t(n >> 8));
    z.push_back(std::uint8_t(~n));
    z.push_back(std::uint8_t(~n >> 8));
    z.insert(z.end(), raw.begin() + std::ptrdiff_t(pos), raw.begin() + std::ptrdiff_t(pos + n));
    pos += n;
  } while (pos < raw.size());
  std::uint32_t a = 1, b = 0;
  for (auto c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  put_be32(z, (b << 16) | a);
  return z;
}

}  // namespace

TEST(ImageErrors, TruncatedJpeg) {
  const auto bytes = read_file(kData + "/images/Confusing-Pictures.jpg");
  for (std::size_t keep : {bytes.size() / 2, std::size_t(600), std::size_t(100), std::size_t(3)}) {
    const std::string path = write_tmp("truncated.jpg", std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + std::ptrdiff_t(keep)));
    EXPECT_THROW(ib::load_image(path), ib::FormatError) << keep;
  }
  const auto prog = read_file(kRefDir + "/inputs/progressive_96x64.jpg");
  EXPECT_THROW(ib::decode_image(prog.data(), prog.size() - 200), ib::FormatError);
  try {
    ib::decode_image(bytes.data(), bytes.size() / 2, {}, "half.jpg");
    FAIL() << "no exception";
  } catch (const ib::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  // Only the final EOI marker missing: the entropy decoder still asks for more bytes while
  // decoding the last MCU (it reads ahead until it meets a marker), which is where Pillow's
  // suspending reader raises "image file is truncated"; libjpeg's grey padding is not accepted.
  ASSERT_EQ(bytes[bytes.size() - 2], 0xFF);
  ASSERT_EQ(bytes[bytes.size() - 1], 0xD9);
  EXPECT_THROW(ib::decode_image(bytes.data(), bytes.size() - 2), ib::FormatError);
  // Bytes after EOI are ignored.
  std::vector<std::uint8_t> trailing = bytes;
  trailing.insert(trailing.end(), {0, 1, 2, 3});
  EXPECT_EQ(ib::decode_image(trailing).rgb, ib::decode_image(bytes).rgb);
}

TEST(ImageErrors, TruncatedPng) {
  const auto bytes = read_file(kData + "/images/merlion.png");
  for (std::size_t keep : {bytes.size() / 2, bytes.size() - 20, std::size_t(40), std::size_t(8)}) {
    const std::string path = write_tmp("truncated.png", std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + std::ptrdiff_t(keep)));
    EXPECT_THROW(ib::load_image(path), ib::FormatError) << keep;
  }
  // IEND missing after complete image data: fine in Pillow, fine here.
  const auto small = read_file(kRefDir + "/inputs/tiny_17x9.png");
  EXPECT_EQ(ib::decode_image(small.data(), small.size() - 12).rgb, ib::decode_image(small).rgb);
  EXPECT_EQ(ib::decode_image(small.data(), small.size() - 4).rgb, ib::decode_image(small).rgb);
  // corrupt header checksum
  auto bad_crc = small;
  bad_crc[29] ^= 0x55;  // inside the IHDR CRC
  EXPECT_THROW(ib::decode_image(bad_crc), ib::FormatError);
  // corrupt deflate data
  std::vector<std::uint8_t> raw(1 + 4 * 3, 0);
  auto z = zlib_stored(raw);
  z[2] = 0x07;  // invalid block type
  EXPECT_THROW(ib::decode_image(make_png(4, 1, 2, z)), ib::FormatError);
}

TEST(ImageErrors, RandomBytesEmptyAndMissingFiles) {
  std::mt19937 rng(1234);
  std::vector<std::uint8_t> noise(4096);
  for (auto& b : noise) b = std::uint8_t(rng());
  EXPECT_THROW(ib::load_image(write_tmp("random.bin", noise)), ib::FormatError);
  EXPECT_THROW(ib::load_image(write_tmp("empty.png", {})), ib::FormatError);
  EXPECT_THROW(ib::load_image(kTmp + "/does_not_exist.jpg"), ib::IoError);
  EXPECT_THROW(ib::load_image(kTmp), ib::IoError);  // a directory
  EXPECT_THROW(ib::decode_image(nullptr, 0), ib::FormatError);
  // noise behind valid signatures
  for (std::vector<std::uint8_t> magic : {std::vector<std::uint8_t>{0xFF, 0xD8, 0xFF},
                                          std::vector<std::uint8_t>{137, 80, 78, 71, 13, 10, 26, 10},
                                          std::vector<std::uint8_t>{'G', 'I', 'F', '8', '9', 'a'},
                                          std::vector<std::uint8_t>{'B', 'M'}, std::vector<std::uint8_t>{'P', '6', ' '}}) {
    std::vector<std::uint8_t> v = magic;
    v.insert(v.end(), noise.begin(), noise.end());
    EXPECT_THROW(ib::decode_image(v), ib::FormatError) << int(magic[0]);
  }
}

TEST(ImageErrors, HugeDimensionsRejectedBeforeAllocation) {
  // A valid PNG header claiming 100000 x 100000 pixels (1e10 > MAX_IMAGE_PIXELS) with 12 bytes of data.
  const auto png = make_png(100000, 100000, 2, zlib_stored(std::vector<std::uint8_t>(13, 0)));
  const std::string path = write_tmp("huge.png", png);
  try {
    ib::load_image(path);
    FAIL() << "no exception";
  } catch (const ib::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the limit"), std::string::npos) << e.what();
  }
  // the limit is configurable
  std::vector<std::uint8_t> row(13, 7);
  row[0] = 0;  // filter type None
  const auto ok = make_png(4, 1, 2, zlib_stored(row));
  EXPECT_NO_THROW(ib::decode_image(ok));
  ib::ImageLoadOptions tight;
  tight.max_pixels = 3;
  EXPECT_THROW(ib::decode_image(ok, tight), ib::FormatError);
  const auto jpg = read_file(kRefDir + "/inputs/progressive_96x64.jpg");
  tight.max_pixels = 96 * 64 - 1;
  EXPECT_THROW(ib::decode_image(jpg, tight), ib::FormatError);
  tight.max_pixels = 96 * 64;
  EXPECT_NO_THROW(ib::decode_image(jpg, tight));
}

// ---------------------------------------------------------------------------------------------
// Other formats: PNG filters and interlacing on a random image, a JPEG round trip, error paths.
// (What each format decodes to is held to Pillow in ImagePillowReference below.)

namespace {

/// Applies PNG filter `type` to one row (bpp bytes per pixel), `prev` = previous raw row or empty.
std::vector<std::uint8_t> png_filter_row(int type, const std::vector<std::uint8_t>& row,
                                         const std::vector<std::uint8_t>& prev, std::size_t bpp) {
  std::vector<std::uint8_t> out = {std::uint8_t(type)};
  for (std::size_t i = 0; i < row.size(); ++i) {
    const int a = i >= bpp ? row[i - bpp] : 0, b = prev.empty() ? 0 : prev[i];
    const int c = (i >= bpp && !prev.empty()) ? prev[i - bpp] : 0;
    int pred = 0;
    if (type == 1) pred = a;
    if (type == 2) pred = b;
    if (type == 3) pred = (a + b) / 2;
    if (type == 4) {
      const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
      pred = (pa <= pb && pa <= pc) ? a : pb <= pc ? b : c;
    }
    out.push_back(std::uint8_t(row[i] - pred));
  }
  return out;
}

}  // namespace

TEST(ImageFormats, PngFiltersAndInterlace) {
  const int w = 13, h = 11;
  std::mt19937 rng(7);
  ib::Image src(w, h);
  for (auto& v : src.rgb) v = std::uint8_t(rng());
  auto encode = [&](bool interlace) {
    static const int passes[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                     {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
    std::vector<std::uint8_t> raw;
    int n = 0;
    for (int p = 0; p < (interlace ? 7 : 1); ++p) {
      const int x0 = interlace ? passes[p][0] : 0, y0 = interlace ? passes[p][1] : 0;
      const int dx = interlace ? passes[p][2] : 1, dy = interlace ? passes[p][3] : 1;
      std::vector<std::uint8_t> prev;
      for (int y = y0; y < h; y += dy) {
        std::vector<std::uint8_t> row;
        for (int x = x0; x < w; x += dx) row.insert(row.end(), src.pixel(x, y), src.pixel(x, y) + 3);
        if (row.empty()) continue;
        const auto f = png_filter_row(n++ % 5, row, prev, 3);
        raw.insert(raw.end(), f.begin(), f.end());
        prev = row;
      }
    }
    auto png = make_png(w, h, 2, zlib_stored(raw));
    if (interlace) {  // set the interlace byte and fix the IHDR CRC
      png[8 + 8 + 12] = 1;
      const std::uint32_t c = crc32(&png[12], 17);
      for (int i = 0; i < 4; ++i) png[29 + i] = std::uint8_t(c >> (24 - 8 * i));
    }
    return png;
  };
  EXPECT_EQ(ib::decode_image(encode(false)).rgb, src.rgb);
  EXPECT_EQ(ib::decode_image(encode(true)).rgb, src.rgb);
}

TEST(ImageFormats, JpegRoundTrip) {
  ib::Image src(64, 48);
  for (int y = 0; y < 48; ++y)
    for (int x = 0; x < 64; ++x) {
      std::uint8_t* p = src.row(y) + 3 * x;
      p[0] = std::uint8_t(4 * x);
      p[1] = std::uint8_t(5 * y);
      p[2] = 128;
    }
  for (bool progressive : {false, true}) {
    const auto bytes = ib::encode_jpeg(src, 95, progressive);
    const ib::Image back = ib::decode_image(bytes);
    ASSERT_EQ(back.width, 64);
    ASSERT_EQ(back.height, 48);
    int worst = 0;
    for (std::size_t i = 0; i < src.rgb.size(); ++i) worst = std::max(worst, std::abs(int(src.rgb[i]) - int(back.rgb[i])));
    EXPECT_LT(worst, 12) << progressive;
    EXPECT_THROW(ib::decode_image(bytes.data(), bytes.size() * 3 / 4), ib::FormatError) << progressive;
  }
  EXPECT_THROW(ib::encode_jpeg(ib::Image(), 90), ib::InvalidArgument);
  EXPECT_THROW(ib::encode_jpeg(src, 0), ib::InvalidArgument);
}

TEST(ImageFormats, PnmRejects) {
  auto pnm = [](const std::string& header, const std::vector<std::uint8_t>& data) {
    std::vector<std::uint8_t> v(header.begin(), header.end());
    v.insert(v.end(), data.begin(), data.end());
    return ib::decode_image(v);
  };
  EXPECT_THROW(pnm("P6 2 2 255\n", {1, 2, 3}), ib::FormatError);  // truncated
  EXPECT_THROW(pnm("P5 1 1 0\n", {1}), ib::FormatError);         // bad maxval
}

namespace {

/// A GIF with one frame, palette `pal`, pixels `idx` (literal 9-bit codes, clears to keep the width).
std::vector<std::uint8_t> make_gif(int cw, int ch, int x0, int y0, int fw, int fh, const std::vector<std::uint8_t>& pal,
                                   const std::vector<std::uint8_t>& idx, int transparency) {
  std::vector<std::uint8_t> v = {'G', 'I', 'F', '8', '9', 'a'};
  auto le16 = [&](int x) {
    v.push_back(std::uint8_t(x));
    v.push_back(std::uint8_t(x >> 8));
  };
  le16(cw);
  le16(ch);
  v.insert(v.end(), {0xF7, 0, 0});  // global table of 256 entries
  std::vector<std::uint8_t> table = pal;
  table.resize(768, 0);
  v.insert(v.end(), table.begin(), table.end());
  if (transparency >= 0) v.insert(v.end(), {0x21, 0xF9, 4, 1, 0, 0, std::uint8_t(transparency), 0});
  v.push_back(',');
  le16(x0);
  le16(y0);
  le16(fw);
  le16(fh);
  v.push_back(0);
  v.push_back(8);  // LZW minimum code size
  std::vector<int> codes = {256};
  int since_clear = 0;
  for (auto p : idx) {
    if (since_clear == 254) {
      codes.push_back(256);
      since_clear = 0;
    }
    codes.push_back(p);
    ++since_clear;
  }
  codes.push_back(257);
  std::vector<std::uint8_t> bytes;
  std::uint32_t buf = 0;
  int nb = 0;
  for (int c : codes) {
    buf |= std::uint32_t(c) << nb;
    nb += 9;
    while (nb >= 8) {
      bytes.push_back(std::uint8_t(buf));
      buf >>= 8;
      nb -= 8;
    }
  }
  if (nb) bytes.push_back(std::uint8_t(buf));
  for (std::size_t i = 0; i < bytes.size(); i += 255) {
    const std::size_t n = std::min<std::size_t>(255, bytes.size() - i);
    v.push_back(std::uint8_t(n));
    v.insert(v.end(), bytes.begin() + std::ptrdiff_t(i), bytes.begin() + std::ptrdiff_t(i + n));
  }
  v.push_back(0);
  v.push_back(';');
  return v;
}

}  // namespace

TEST(ImageFormats, GifTruncatedOrEmpty) {
  const std::vector<std::uint8_t> pal = {255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9};
  std::vector<std::uint8_t> idx(40 * 30);
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = std::uint8_t(i % 4);
  auto gif = make_gif(40, 30, 0, 0, 40, 30, pal, idx, -1);
  EXPECT_EQ(ib::decode_image(gif).width, 40);
  gif.resize(gif.size() / 2);
  EXPECT_THROW(ib::decode_image(gif), ib::FormatError);
  // a first frame of no pixels: Pillow raises "tile cannot extend outside image"
  for (const auto& [fw, fh] : {std::pair{0, 0}, std::pair{0, 2}, std::pair{2, 0}})
    EXPECT_THROW(ib::decode_image(make_gif(3, 2, 1, 0, fw, fh, pal, {}, -1)), ib::FormatError) << fw << "x" << fh;
}

TEST(ImageFormats, BmpRleTruncatedOrBadCompression) {
  // Pillow: "not enough image data" when the RLE stream ends before every pixel is set
  auto rle8 = read_file(kData + "/images/pillow/bmp_rle8.bmp");
  ASSERT_GT(rle8.size(), 1000u);
  EXPECT_EQ(ib::decode_image(rle8).width, 31);
  std::vector<std::uint8_t> cut(rle8.begin(), rle8.begin() + std::ptrdiff_t(rle8.size() / 2));
  EXPECT_THROW(ib::decode_image(cut), ib::FormatError);
  // compression 3 (bit fields) is for 16- and 32-bit pixels only
  rle8[30] = 3;
  EXPECT_THROW(ib::decode_image(rle8), ib::FormatError);
}

TEST(ImageFormats, TgaColourMapErrors) {
  auto tga = read_file(kData + "/images/pillow/tga_palette_short.tga");
  ASSERT_GT(tga.size(), 18u + 21u);
  EXPECT_EQ(ib::decode_image(tga).width, 23);
  // cut inside the colour map
  EXPECT_THROW(ib::decode_image(std::vector<std::uint8_t>(tga.begin(), tga.begin() + 18 + 10)), ib::FormatError);
  // 32-bit colour map entries: Pillow has no raw mode for such a palette and refuses the file
  tga[7] = 32;
  EXPECT_THROW(ib::decode_image(tga), ib::FormatError);
}

// ---------------------------------------------------------------------------------------------
// Pillow references: tests/data/images/pillow/ holds small files of every container and mode the
// decoders handle, and manifest.json what Pillow 9.4 decodes from each with
// Image.open(path).convert("RGB") (made by tools/make_image_references.py).

namespace {

const std::string kPillowDir = kData + "/images/pillow";

json pillow_manifest() {
  std::ifstream in(kPillowDir + "/manifest.json");
  EXPECT_TRUE(in.good()) << kPillowDir << "/manifest.json";
  return json::parse(in);
}

std::vector<std::uint8_t> from_hex(const std::string& hex) {
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  std::vector<std::uint8_t> out(hex.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = std::uint8_t(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  return out;
}

ib::ImageFormat format_from_pillow(const std::string& format) {
  if (format == "JPEG") return ib::ImageFormat::Jpeg;
  if (format == "PNG") return ib::ImageFormat::Png;
  if (format == "GIF") return ib::ImageFormat::Gif;
  if (format == "BMP") return ib::ImageFormat::Bmp;
  if (format == "TGA") return ib::ImageFormat::Tga;
  if (format == "PPM") return ib::ImageFormat::Pnm;
  if (format == "WEBP") return ib::ImageFormat::Webp;
  return ib::ImageFormat::Unknown;
}

}  // namespace

TEST(ImagePillowReference, EveryFileDecodesToPillowsPixels) {
  const json m = pillow_manifest();
  ASSERT_EQ(m["files"].size(), m["count"].get<std::size_t>());
  std::size_t checked = 0;
  for (const json& e : m["files"]) {
    const std::string file = e["file"].get<std::string>();
    SCOPED_TRACE(file + " (Pillow " + e["format"].get<std::string>() + ", mode " + e["mode"].get<std::string>() + ")");
    ib::Image img;
    try {
      img = ib::load_image(kPillowDir + "/" + file);
    } catch (const std::exception& ex) {
      ADD_FAILURE() << "Pillow reads it, the library refuses it: " << ex.what();
      continue;
    }
    const int w = e["width"].get<int>(), h = e["height"].get<int>();
    const std::vector<std::uint8_t> want = from_hex(e["rgb"].get<std::string>());
    ASSERT_EQ(want.size(), std::size_t(w) * std::size_t(h) * 3);
    EXPECT_EQ(img.width, w);
    EXPECT_EQ(img.height, h);
    if (img.width != w || img.height != h) continue;
    std::size_t differ = 0, first = want.size();
    for (std::size_t i = 0; i < want.size(); ++i)
      if (img.rgb[i] != want[i]) {
        if (differ++ == 0) first = i;
      }
    if (differ) {
      const std::size_t px = first / 3;
      ADD_FAILURE() << differ << " of " << want.size() << " bytes differ; first at pixel (" << px % std::size_t(w)
                    << ", " << px / std::size_t(w) << ") channel " << first % 3 << ": got " << int(img.rgb[first])
                    << ", Pillow " << int(want[first]);
      continue;
    }
    ++checked;
  }
  EXPECT_EQ(checked, m["count"].get<std::size_t>());
}

TEST(ImagePillowReference, FormatsDetectedAsPillowDoes) {
  const json m = pillow_manifest();
  std::map<ib::ImageFormat, int> seen;
  for (const json& e : m["files"]) {
    const std::string file = e["file"].get<std::string>();
    const auto bytes = read_file(kPillowDir + "/" + file);
    const ib::ImageFormat want = format_from_pillow(e["format"].get<std::string>());
    EXPECT_EQ(ib::detect_image_format(bytes.data(), bytes.size()), want) << file;
    ++seen[want];
  }
  // the set covers every container the library decodes
  for (ib::ImageFormat f : {ib::ImageFormat::Jpeg, ib::ImageFormat::Png, ib::ImageFormat::Gif, ib::ImageFormat::Bmp,
                            ib::ImageFormat::Tga, ib::ImageFormat::Pnm, ib::ImageFormat::Webp})
    EXPECT_GE(seen[f], 3) << ib::image_format_name(f);
}

// ---------------------------------------------------------------------------------------------
// WebP: what the webp_* files decode to is held to Pillow above; here what is refused. Pillow
// (the same libwebp underneath) raises on each of these inputs too.

namespace {

std::vector<std::string> pillow_webp_files() {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(kPillowDir))
    if (entry.path().extension() == ".webp") files.push_back(entry.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

/// Decodes from a heap buffer of exactly v.size() bytes (AddressSanitizer sees any over-read).
ib::Image decode_exact(const std::vector<std::uint8_t>& v, const ib::ImageLoadOptions& opt = {}) {
  const std::unique_ptr<std::uint8_t[]> exact(new std::uint8_t[v.size()]);
  std::copy(v.begin(), v.end(), exact.get());
  return ib::decode_image(exact.get(), v.size(), opt, "test.webp");
}

void put_le(std::vector<std::uint8_t>& v, std::uint32_t x, int bytes) {
  for (int i = 0; i < bytes; ++i) v.push_back(std::uint8_t(x >> (8 * i)));
}

std::vector<std::uint8_t> riff_chunk(const char* fourcc, const std::vector<std::uint8_t>& body) {
  std::vector<std::uint8_t> v(fourcc, fourcc + 4);
  put_le(v, std::uint32_t(body.size()), 4);
  v.insert(v.end(), body.begin(), body.end());
  if (body.size() % 2) v.push_back(0);
  return v;
}

std::vector<std::uint8_t> riff_webp(const std::vector<std::uint8_t>& chunks) {
  std::vector<std::uint8_t> v = {'R', 'I', 'F', 'F'};
  put_le(v, std::uint32_t(4 + chunks.size()), 4);
  v.insert(v.end(), {'W', 'E', 'B', 'P'});
  v.insert(v.end(), chunks.begin(), chunks.end());
  return v;
}

/// An animation on a cw x ch canvas whose one frame is the simple (VP8 / VP8L) WebP file `frame`
/// of fw x fh pixels, at the origin.
std::vector<std::uint8_t> webp_animation(std::uint32_t cw, std::uint32_t ch, const std::vector<std::uint8_t>& frame,
                                         std::uint32_t fw, std::uint32_t fh) {
  std::vector<std::uint8_t> vp8x = {0x02 | 0x10, 0, 0, 0};
  put_le(vp8x, cw - 1, 3);
  put_le(vp8x, ch - 1, 3);
  std::vector<std::uint8_t> anim = {0, 0, 0, 0, 0, 0};
  std::vector<std::uint8_t> anmf;
  put_le(anmf, 0, 3);
  put_le(anmf, 0, 3);
  put_le(anmf, fw - 1, 3);
  put_le(anmf, fh - 1, 3);
  put_le(anmf, 100, 3);
  anmf.push_back(0);
  anmf.insert(anmf.end(), frame.begin() + 12, frame.end());  // the frame's VP8 / VP8L chunk
  std::vector<std::uint8_t> chunks = riff_chunk("VP8X", vp8x);
  for (const auto& c : {riff_chunk("ANIM", anim), riff_chunk("ANMF", anmf)})
    chunks.insert(chunks.end(), c.begin(), c.end());
  return riff_webp(chunks);
}

}  // namespace

TEST(ImageFormats, WebpSignature) {
  EXPECT_STREQ(ib::image_format_name(ib::ImageFormat::Webp), "WebP");
  const std::vector<std::uint8_t> wave = {'R', 'I', 'F', 'F', 4, 0, 0, 0, 'W', 'A', 'V', 'E', 'f', 'm', 't', ' '};
  EXPECT_EQ(ib::detect_image_format(wave.data(), wave.size()), ib::ImageFormat::Unknown);
  EXPECT_THROW(decode_exact(wave), ib::FormatError);
  const std::vector<std::uint8_t> bare = {'R', 'I', 'F', 'F', 4, 0, 0, 0, 'W', 'E', 'B', 'P'};
  EXPECT_EQ(ib::detect_image_format(bare.data(), bare.size()), ib::ImageFormat::Webp);
  EXPECT_EQ(ib::detect_image_format(bare.data(), bare.size() - 1), ib::ImageFormat::Unknown);
  EXPECT_THROW(decode_exact(bare), ib::FormatError);
  // a first chunk other than VP8, VP8L or VP8X: not a WebP image for Pillow either
  auto odd = read_file(kPillowDir + "/webp_lossless.webp");
  ASSERT_EQ(odd[15], 'L');
  odd[15] = 'Q';
  EXPECT_EQ(ib::detect_image_format(odd.data(), odd.size()), ib::ImageFormat::Webp);
  EXPECT_THROW(decode_exact(odd), ib::FormatError);
}

TEST(ImageFormats, WebpTruncatedOrWithTrailingBytes) {
  const auto files = pillow_webp_files();
  ASSERT_GE(files.size(), 15u);
  for (const std::string& file : files) {
    const auto bytes = read_file(file);
    const ib::Image full = decode_exact(bytes);
    EXPECT_FALSE(full.empty()) << file;
    for (std::size_t keep : {bytes.size() - 1, bytes.size() - 2, bytes.size() / 2, std::size_t(30), std::size_t(20),
                             std::size_t(16), std::size_t(12), std::size_t(4)}) {
      if (keep >= bytes.size()) continue;
      EXPECT_THROW(decode_exact(std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + std::ptrdiff_t(keep))),
                   ib::FormatError)
          << file << " cut to " << keep << " bytes";
    }
    // bytes after the RIFF chunk are ignored, as in Pillow
    std::vector<std::uint8_t> trailing = bytes;
    trailing.insert(trailing.end(), {'j', 'u', 'n', 'k', 0, 1, 2, 3});
    EXPECT_EQ(decode_exact(trailing).rgb, full.rgb) << file;
  }
}

TEST(ImageFormats, WebpCorruptBitstreams) {
  // lossy: the VP8 key frame start code 9d 01 2a
  auto lossy = read_file(kPillowDir + "/webp_lossy_q50.webp");
  ASSERT_EQ(lossy[23], 0x9d);
  EXPECT_NO_THROW(decode_exact(lossy));
  lossy[23] = 0x9e;
  EXPECT_THROW(decode_exact(lossy), ib::FormatError);
  // lossless: the VP8L signature byte 0x2f
  auto lossless = read_file(kPillowDir + "/webp_lossless.webp");
  ASSERT_EQ(lossless[20], 0x2f);
  lossless[20] = 0x2e;
  EXPECT_THROW(decode_exact(lossless), ib::FormatError);
  // a RIFF size smaller than the first chunk
  auto small_riff = read_file(kPillowDir + "/webp_lossy_alpha.webp");
  small_riff[4] = 12;
  small_riff[5] = small_riff[6] = small_riff[7] = 0;
  EXPECT_THROW(decode_exact(small_riff), ib::FormatError);
  // noise behind each of the three first-chunk tags
  std::mt19937 rng(99);
  for (const char* tag : {"VP8 ", "VP8L", "VP8X"}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<std::uint8_t> body(64 + 16 * std::size_t(trial));
      for (auto& b : body) b = std::uint8_t(rng());
      EXPECT_THROW(decode_exact(riff_webp(riff_chunk(tag, body))), ib::FormatError) << tag << " " << trial;
    }
  }
}

TEST(ImageFormats, WebpSizeLimitFromTheHeader) {
  // A lossless bitstream header claiming 16384 x 16384 pixels (2.7e8 > MAX_IMAGE_PIXELS) in 13 bytes.
  const std::vector<std::uint8_t> vp8l = {0x2f, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0};
  // A 16384 x 16384 animation canvas around a 1 x 1 frame.
  const auto one = read_file(kPillowDir + "/webp_1x1_lossless.webp");
  for (const auto& huge : {riff_webp(riff_chunk("VP8L", vp8l)), webp_animation(16384, 16384, one, 1, 1)}) {
    try {
      decode_exact(huge);
      ADD_FAILURE() << "no exception";
    } catch (const ib::FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("exceeds the limit"), std::string::npos) << e.what();
    }
  }
  // the same animation on a small canvas decodes: the frame's pixel, the rest transparent black
  const ib::Image small = decode_exact(webp_animation(3, 2, one, 1, 1));
  ASSERT_EQ(small.width, 3);
  ASSERT_EQ(small.height, 2);
  const ib::Image pixel = decode_exact(one);
  EXPECT_EQ(std::vector<std::uint8_t>(small.rgb.begin(), small.rgb.begin() + 3), pixel.rgb);
  EXPECT_EQ(std::vector<std::uint8_t>(small.rgb.begin() + 3, small.rgb.end()), std::vector<std::uint8_t>(15, 0));
  // the limit is configurable and inclusive
  const auto big = read_file(kPillowDir + "/webp_333x211_q90.webp");
  ib::ImageLoadOptions tight;
  tight.max_pixels = 333 * 211 - 1;
  EXPECT_THROW(decode_exact(big, tight), ib::FormatError);
  tight.max_pixels = 333 * 211;
  EXPECT_EQ(decode_exact(big, tight).width, 333);
}

// ---------------------------------------------------------------------------------------------
// Inputs found by the libFuzzer harness tests/fuzz/fuzz_image.cpp (each decoded from a buffer of
// exactly its size, so that reading past the end is caught under AddressSanitizer).

TEST(ImageFuzzRegressions, PngChunkWithoutRoomForItsChecksum) {
  // IHDR, then a chunk header claiming 0 (or 2) body bytes with fewer than 4 bytes left for the
  // CRC: the size check computed n - pos - 12, which wrapped around, and the CRC was read past
  // the end of the buffer.
  std::vector<std::uint8_t> ihdr;
  put_be32(ihdr, 1);
  put_be32(ihdr, 1);
  ihdr.insert(ihdr.end(), {8, 0, 0, 0, 0});
  for (const std::vector<std::uint8_t>& tail :
       {std::vector<std::uint8_t>{0, 0, 0, 0, 't', 'E', 'X', 't'},
        std::vector<std::uint8_t>{0, 0, 0, 2, 't', 'E', 'X', 't', 'a', 'b'},
        std::vector<std::uint8_t>{0, 0, 0, 0, 't', 'E', 'X', 't', 0xAA, 0xBB, 0xCC}}) {
    std::vector<std::uint8_t> v = {137, 80, 78, 71, 13, 10, 26, 10};
    png_chunk(v, "IHDR", ihdr);
    v.insert(v.end(), tail.begin(), tail.end());
    const std::unique_ptr<std::uint8_t[]> exact(new std::uint8_t[v.size()]);
    std::copy(v.begin(), v.end(), exact.get());
    EXPECT_THROW(ib::decode_image(exact.get(), v.size()), ib::FormatError);
  }
}

TEST(ImageFuzzRegressions, TopDownTrueColourBmp) {
  // 24- and 32-bit BMPs with a negative height (rows stored top to bottom) were refused as
  // "empty size Wx0": stbi_info reports the raw negative height. Pillow reads them.
  auto le32 = [](std::vector<std::uint8_t>& v, std::uint32_t x) {
    for (int i = 0; i < 4; ++i) v.push_back(std::uint8_t(x >> (8 * i)));
  };
  auto le16 = [](std::vector<std::uint8_t>& v, std::uint32_t x) {
    v.push_back(std::uint8_t(x));
    v.push_back(std::uint8_t(x >> 8));
  };
  for (const int bits : {24, 32}) {
    const int stride = 8;  // 2 pixels: 6 bytes padded to 4-byte rows, or 2 x 4 bytes
    std::vector<std::uint8_t> bmp = {'B', 'M'};
    le32(bmp, std::uint32_t(54 + 2 * stride));
    le32(bmp, 0);
    le32(bmp, 54);
    le32(bmp, 40);
    le32(bmp, 2);
    le32(bmp, std::uint32_t(-2));  // height -2: top-down
    le16(bmp, 1);
    le16(bmp, std::uint32_t(bits));
    for (int i = 0; i < 6; ++i) le32(bmp, 0);
    // top row: (B,G,R) = (1,2,3) (4,5,6); bottom row: (7,8,9) (10,11,12)
    if (bits == 24) {
      bmp.insert(bmp.end(), {1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0});
    } else {
      bmp.insert(bmp.end(), {1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 10, 11, 12, 0});
    }
    const ib::Image img = ib::decode_image(bmp);
    EXPECT_EQ(img.width, 2) << bits;
    EXPECT_EQ(img.height, 2) << bits;
    EXPECT_EQ(img.rgb, (std::vector<std::uint8_t>{3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10})) << bits;
  }
}

// Found with tests/fuzz/fuzz_image_processor_config.cpp: {"size": 32768} (each side within the
// per-side limit) was accepted, and preprocess then allocated 3 x 32768 x 32768 floats (12.9 GB)
// per image. The output is now bounded to 4096 x 4096 pixels.
TEST(ImageFuzzRegressions, PreprocessorOutputSizeBounded) {
  for (const json& size : {json(32768), json{{"height", 32768}, {"width", 513}}, json{{"height", 4097}, {"width", 4096}}}) {
    EXPECT_THROW(ib::ImageProcessor::from_json(json{{"size", size}}), ib::ConfigError) << size.dump();
  }
  ib::ImageProcessorConfig cfg;
  cfg.height = 32768;
  cfg.width = 32768;
  EXPECT_THROW(ib::ImageProcessor{cfg}, ib::InvalidArgument);
  const ib::ImageProcessor largest = ib::ImageProcessor::from_json(json{{"size", {{"height", 4096}, {"width", 4096}}}});
  EXPECT_EQ(largest.height() * largest.width(), 4096 * 4096);
  const ib::ImageProcessor strip = ib::ImageProcessor::from_json(json{{"size", {{"height", 32768}, {"width", 512}}}});
  EXPECT_EQ(strip.height(), 32768);
}

// Found by fuzz_image (with the CRC-repairing pass): a PNG whose only IDAT chunk is empty passed a
// null pointer to stb_image's inflate, which computed null + 0 (undefined behaviour, UBSan).
TEST(ImageFuzzRegressions, PngWithEmptyImageData) {
  const std::vector<std::uint8_t> png = make_png(7, 5, 0, /*zlib=*/{});
  try {
    ib::decode_image(png);
    ADD_FAILURE() << "a PNG without image data decoded";
  } catch (const ib::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
}

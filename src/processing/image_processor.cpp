// BlipImageProcessor: config parsing and preprocess (resize -> rescale -> normalise -> CHW).
#include "instructblip/processing/image_processor.hpp"

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "instructblip/core/error.hpp"
#include "instructblip/core/thread_pool.hpp"

// numpy evaluates every step with its own rounding; never fuse a multiply with an add here.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace instructblip {

namespace {

using json = nlohmann::json;

constexpr int kMaxOutputSide = 1 << 15;
// pixel_values holds 3 floats per output pixel and image: without a bound on the product, a
// preprocessor_config.json of a few bytes ({"size": 32768}) asks for 12.9 GB per image.
constexpr std::int64_t kMaxOutputPixels = std::int64_t(1) << 24;  // 4096 x 4096

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "integer";
    case json::value_t::number_float: return "float";
    case json::value_t::string: return "string";
    case json::value_t::array: return "list";
    case json::value_t::object: return "object";
    default: return "value";
  }
}

struct Reader {
  const json& j;
  const std::string& source;

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw ConfigError(source + ": " + key + ": " + what);
  }
  const json* find(const char* key) const {
    auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  }
  // HF keeps None, and `if do_x:` treats it as false.
  void flag(const char* key, bool* out) const {
    const json* v = find(key);
    if (!v) return;
    if (v->is_null()) *out = false;
    else if (v->is_boolean()) *out = v->get<bool>();
    else fail(key, std::string("expected a boolean, got ") + type_name(*v));
  }
  long long integer(const std::string& key, const json& v) const {
    if (v.is_number_integer()) return v.get<long long>();
    if (v.is_number_unsigned()) {
      const auto u = v.get<unsigned long long>();
      if (u > (1ull << 62)) fail(key, "value out of range");
      return static_cast<long long>(u);
    }
    fail(key, std::string("expected an integer, got ") + type_name(v));
  }
  double number(const std::string& key, const json& v) const {
    if (v.is_number()) return v.get<double>();
    fail(key, std::string("expected a number, got ") + type_name(v));
  }
  int side(const std::string& key, const json& v) const {
    const long long s = integer(key, v);
    if (s <= 0 || s > kMaxOutputSide)
      fail(key, "expected a size between 1 and " + std::to_string(kMaxOutputSide) + ", got " + std::to_string(s));
    return int(s);
  }
  // image_mean / image_std: a number (every channel) or a list of 3 numbers.
  void triple(const char* key, std::array<double, 3>* out, const std::array<double, 3>& dflt) const {
    const json* v = find(key);
    if (!v) return;
    if (v->is_null()) {
      *out = dflt;
    } else if (v->is_number()) {
      const double x = v->get<double>();
      *out = {x, x, x};
    } else if (v->is_array()) {
      if (v->size() != 3)
        fail(key, "expected 3 values (one per RGB channel), got " + std::to_string(v->size()));
      for (std::size_t i = 0; i < 3; ++i) (*out)[i] = number(std::string(key) + "[" + std::to_string(i) + "]", (*v)[i]);
    } else {
      fail(key, std::string("expected a number or a list of 3 numbers, got ") + type_name(*v));
    }
  }
};

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw IoError(path + ": is a directory, expected a JSON file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open file (" + std::strerror(errno) + ")");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw IoError(path + ": error while reading file");
  return ss.str();
}

}  // namespace

ImageProcessorConfig ImageProcessorConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw ConfigError(source + ": expected a JSON object, got " + type_name(j));
  const Reader r{j, source};
  ImageProcessorConfig c;
  const ImageProcessorConfig defaults;

  if (const json* t = r.find("image_processor_type"); t && !t->is_null()) {
    if (!t->is_string()) r.fail("image_processor_type", std::string("expected a string, got ") + type_name(*t));
    const std::string type = t->get<std::string>();
    if (type != "BlipImageProcessor")
      r.fail("image_processor_type", "\"" + type + "\" is not supported (only BlipImageProcessor)");
  }
  r.flag("do_resize", &c.do_resize);
  r.flag("do_rescale", &c.do_rescale);
  r.flag("do_normalize", &c.do_normalize);
  r.flag("do_convert_rgb", &c.do_convert_rgb);

  if (const json* s = r.find("size"); s && !s->is_null()) {
    if (s->is_object()) {  // {"height": h, "width": w}
      const auto h = s->find("height"), w = s->find("width");
      if (h == s->end() || w == s->end()) {
        std::string keys;
        for (auto it = s->begin(); it != s->end(); ++it) keys += (keys.empty() ? "" : ", ") + it.key();
        r.fail("size", "must contain 'height' and 'width', got {" + keys + "}");
      }
      c.height = r.side("size.height", *h);
      c.width = r.side("size.width", *w);
    } else if (s->is_number_integer() || s->is_number_unsigned()) {  // get_size_dict(int): a square
      c.height = c.width = r.side("size", *s);
    } else {
      r.fail("size", std::string("expected {\"height\": int, \"width\": int} or an integer, got ") + type_name(*s));
    }
    if (std::int64_t(c.height) * c.width > kMaxOutputPixels)
      r.fail("size", std::to_string(c.height) + "x" + std::to_string(c.width) + " is more than " +
                         std::to_string(kMaxOutputPixels) + " output pixels");
  }
  if (const json* v = r.find("resample"); v && !v->is_null()) {
    const long long code = r.integer("resample", *v);
    if (code < 0 || code > 5)
      r.fail("resample", "unsupported PIL resampling filter " + std::to_string(code) +
                             " (0 NEAREST, 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING)");
    c.resample = static_cast<Resample>(code);
  }  // null: Pillow's resize(resample=None) picks BICUBIC for RGB
  if (const json* v = r.find("rescale_factor")) {
    if (v->is_null()) {
      if (c.do_rescale) r.fail("rescale_factor", "is null while do_rescale is true");
    } else {
      c.rescale_factor = r.number("rescale_factor", *v);
      if (!std::isfinite(c.rescale_factor)) r.fail("rescale_factor", "must be finite");
    }
  }
  r.triple("image_mean", &c.image_mean, defaults.image_mean);
  r.triple("image_std", &c.image_std, defaults.image_std);
  for (int i = 0; i < 3; ++i) {
    if (!std::isfinite(c.image_mean[i])) r.fail("image_mean", "values must be finite");
    if (!std::isfinite(c.image_std[i]) || c.image_std[i] == 0.0)
      r.fail("image_std", "values must be finite and non-zero");
  }
  return c;
}

ImageProcessor::ImageProcessor(const ImageProcessorConfig& config) : config_(config) {
  if (config_.height <= 0 || config_.width <= 0 || config_.height > kMaxOutputSide || config_.width > kMaxOutputSide ||
      std::int64_t(config_.height) * config_.width > kMaxOutputPixels)
    throw InvalidArgument("ImageProcessor: size " + std::to_string(config_.height) + "x" +
                          std::to_string(config_.width) + " out of range");
  const int r = static_cast<int>(config_.resample);
  if (r < 0 || r > 5) throw InvalidArgument("ImageProcessor: unknown resample filter " + std::to_string(r));
  for (int i = 0; i < 3; ++i)
    if (!(config_.image_std[i] != 0.0) || !std::isfinite(config_.image_std[i]) || !std::isfinite(config_.image_mean[i]))
      throw InvalidArgument("ImageProcessor: image_mean / image_std must be finite and std non-zero");
  if (!std::isfinite(config_.rescale_factor)) throw InvalidArgument("ImageProcessor: rescale_factor must be finite");
  build_lut();
}

void ImageProcessor::build_lut() {
  // transformers: rescale = (uint8_array * scale) in float64, then .astype(float32);
  // normalize = (x - mean.astype(float32)) / std.astype(float32) in float32 (uint8 input is
  // first cast to float32 when rescale is off). Every value depends only on (channel, byte).
  for (int c = 0; c < 3; ++c) {
    const float mean = static_cast<float>(config_.image_mean[c]);
    const float sd = static_cast<float>(config_.image_std[c]);
    for (int v = 0; v < 256; ++v) {
      float x = config_.do_rescale ? static_cast<float>(static_cast<double>(v) * config_.rescale_factor)
                                   : static_cast<float>(v);
      if (config_.do_normalize) x = (x - mean) / sd;  // float32 subtraction, then float32 division
      lut_[std::size_t(c) * 256 + std::size_t(v)] = x;
    }
  }
}

ImageProcessor ImageProcessor::from_json(const json& j, const std::string& source) {
  return ImageProcessor(ImageProcessorConfig::from_json(j, source));
}

ImageProcessor ImageProcessor::from_json_file(const std::string& path) {
  const std::string text = read_text_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw ConfigError(path + ": malformed JSON: " + e.what());
  }
  return from_json(j, path);
}

ImageProcessor ImageProcessor::from_pretrained(const std::string& dir) {
  return from_json_file((std::filesystem::path(dir) / "preprocessor_config.json").string());
}

Image ImageProcessor::resize(const Image& image) const {
  if (!config_.do_resize) return image;
  return resize_image(image, config_.width, config_.height, config_.resample);
}

void ImageProcessor::normalize_into(const Image& image, float* chw) const {
  if (image.empty() || image.rgb.size() != image.num_pixels() * 3)
    throw InvalidArgument("ImageProcessor: empty or inconsistent image");
  const std::size_t plane = image.num_pixels();
  const std::uint8_t* px = image.rgb.data();
  const float* l0 = &lut_[0];
  const float* l1 = &lut_[256];
  const float* l2 = &lut_[512];
  float* c0 = chw;
  float* c1 = chw + plane;
  float* c2 = chw + 2 * plane;
  for (std::size_t i = 0; i < plane; ++i) {
    c0[i] = l0[px[3 * i]];
    c1[i] = l1[px[3 * i + 1]];
    c2[i] = l2[px[3 * i + 2]];
  }
}

Tensor ImageProcessor::preprocess(const Image& image) const {
  const Image* one = &image;
  return preprocess_batch(&one, 1);
}

Tensor ImageProcessor::preprocess(const std::vector<Image>& images) const {
  std::vector<const Image*> ptrs;
  ptrs.reserve(images.size());
  for (const Image& im : images) ptrs.push_back(&im);
  return preprocess_batch(ptrs.data(), ptrs.size());
}

Tensor ImageProcessor::preprocess_batch(const Image* const* images, std::size_t count) const {
  if (count == 0) throw InvalidArgument("ImageProcessor::preprocess: no images");
  for (std::size_t i = 0; i < count; ++i) {
    const Image& im = *images[i];
    if (im.empty() || im.rgb.size() != im.num_pixels() * 3)
      throw InvalidArgument("ImageProcessor::preprocess: image " + std::to_string(i) + " is empty or its buffer (" +
                            std::to_string(im.rgb.size()) + " bytes) does not match " + std::to_string(im.width) +
                            "x" + std::to_string(im.height) + "x3");
  }
  int h = config_.height, w = config_.width;
  if (!config_.do_resize) {
    h = images[0]->height;
    w = images[0]->width;
    for (std::size_t i = 1; i < count; ++i)
      if (images[i]->height != h || images[i]->width != w)
        throw InvalidArgument("ImageProcessor::preprocess: with do_resize false all images must have the same size (" +
                              std::to_string(w) + "x" + std::to_string(h) + " vs " + std::to_string(images[i]->width) +
                              "x" + std::to_string(images[i]->height) + ")");
  }
  const std::int64_t n = static_cast<std::int64_t>(count);
  Tensor out = Tensor::empty({n, 3, h, w}, DType::F32);
  float* dst = out.data<float>();
  const std::size_t per_image = std::size_t(3) * std::size_t(h) * std::size_t(w);
  for (std::size_t b = 0; b < count; ++b) {
    const Image& src = *images[b];
    if (config_.do_resize && !(src.width == w && src.height == h)) {
      normalize_into(resize_image(src, w, h, config_.resample), dst + b * per_image);
    } else {  // Pillow's resize to the same size is a copy
      normalize_into(src, dst + b * per_image);
    }
  }
  return out;
}

}  // namespace instructblip

#pragma once
// BlipImageProcessor (transformers 4.36.2) on decoded RGB images:
//   convert("RGB")  (done by load_image / decode_image: an Image is always RGB)
//   -> PIL resize to size {height, width} with `resample` (bit-exact Pillow 9.4, see resize_image)
//   -> rescale: float32(uint8 * rescale_factor), the product computed in float64 as numpy does
//   -> normalize: (x - float32(mean)) / float32(std) in float32, per channel
//   -> CHW, stacked into pixel_values float32 [B, 3, H, W].
// Channels are always taken as last (HxWx3). transformers infers the layout from the first image
// and gets 1x1 (error) and 3-row images (treated as channels-first) wrong; this follows its
// input_data_format="channels_last" result for those.
#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "instructblip/core/tensor.hpp"
#include "instructblip/processing/image.hpp"

namespace instructblip {

/// preprocessor_config.json. Defaults are BlipImageProcessor's (384x384, BICUBIC, 1/255, CLIP mean/std).
struct ImageProcessorConfig {
  bool do_resize = true;
  int height = 384;  // size["height"]
  int width = 384;   // size["width"]
  Resample resample = Resample::Bicubic;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean = {0.48145466, 0.4578275, 0.40821073};   // OPENAI_CLIP_MEAN
  std::array<double, 3> image_std = {0.26862954, 0.26130258, 0.27577711};   // OPENAI_CLIP_STD
  /// Parsed and kept for completeness: decoded Images are always RGB already.
  bool do_convert_rgb = true;

  /// Parses a preprocessor_config.json object: defaults overwritten by the keys present, unknown
  /// keys ignored. ConfigError "<source>: <key>: <problem>" for a wrong type or a value
  /// BlipImageProcessor cannot use (size not {height, width} / int, resample not 0..5, a mean/std
  /// list not of 3 numbers, std 0, image_processor_type other than BlipImageProcessor), and for a
  /// size this library refuses: a side above 32768 or more than 4096 x 4096 output pixels.
  /// JSON null means what it means in HF: default size / mean / std / resample (BICUBIC), and
  /// false for the do_* flags.
  static ImageProcessorConfig from_json(const nlohmann::json& j, const std::string& source = "preprocessor_config.json");
};

class ImageProcessor {
 public:
  /// BlipImageProcessor() with its defaults.
  ImageProcessor() : ImageProcessor(ImageProcessorConfig{}) {}
  /// InvalidArgument for an unusable config (non-positive size or one beyond the limits of
  /// ImageProcessorConfig::from_json, zero std, ...).
  explicit ImageProcessor(const ImageProcessorConfig& config);

  /// Reads `<dir>/preprocessor_config.json`. IoError if unreadable, ConfigError if malformed.
  static ImageProcessor from_pretrained(const std::string& dir);
  /// Reads a preprocessor_config.json file. IoError if unreadable, ConfigError if malformed.
  static ImageProcessor from_json_file(const std::string& path);
  static ImageProcessor from_json(const nlohmann::json& j, const std::string& source = "preprocessor_config.json");

  const ImageProcessorConfig& config() const { return config_; }
  /// Output size (size["height"], size["width"]).
  int height() const { return config_.height; }
  int width() const { return config_.width; }

  /// pixel_values float32 [B, 3, H, W]. InvalidArgument for an empty batch or an empty image;
  /// with do_resize false every image must have the same size. Always float32: with do_rescale
  /// and do_normalize both false it holds the uint8 values (transformers would return uint8).
  Tensor preprocess(const std::vector<Image>& images) const;
  /// One image: [1, 3, H, W].
  Tensor preprocess(const Image& image) const;

  /// The same on `count` images given by pointer (no copies).
  Tensor preprocess_batch(const Image* const* images, std::size_t count) const;

  /// The resize step alone (a copy when do_resize is false).
  Image resize(const Image& image) const;
  /// Rescale + normalise + HWC->CHW of an (already resized) image into `chw` (3 * h * w floats).
  void normalize_into(const Image& image, float* chw) const;

 private:
  void build_lut();
  ImageProcessorConfig config_;
  std::array<float, 3 * 256> lut_{};  // [channel][uint8 value] -> output value
};

}  // namespace instructblip

#pragma once
// Image decoding and resizing that reproduce Pillow 9.4 bit for bit:
//   Image.open(path).convert("RGB")            -> load_image / decode_image
//   image.resize((w, h), resample)              -> resize_image
// JPEG goes through libjpeg-turbo with Pillow's settings (ISLOW IDCT, fancy upsampling;
// CMYK read as Adobe-inverted and converted with Pillow's cmyk2rgb). PNG, GIF (first frame), PNM
// and palette BMP (also RLE8 / RLE4) are parsed by the library (PNG inflated with stb_image's zlib
// into a fixed-size buffer); true-colour BMP and TGA go through stb_image; WebP (lossy, lossless,
// with alpha, animated: the first frame) through libwebp's WebPAnimDecoder, as Pillow decodes it.
// All follow Pillow's modes and convert("RGB") rules: alpha dropped, not composited; palettes
// looked up (Pillow's grey-ramp default beyond the file's entries, transparency ignored); 16-bit
// colour reduced to the high byte but 16-bit grey (Pillow mode "I") clipped to 255; PNM samples
// scaled by maxval as Pillow does. tests/data/images/pillow/ holds the decoders to Pillow's output
// for each format.
// Every failure is a typed exception: IoError (unreadable file), FormatError (not an image,
// truncated, hostile, or larger than ImageLoadOptions::max_pixels), InvalidArgument.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace instructblip {

/// An 8-bit RGB picture: rows top to bottom, pixels interleaved R, G, B (numpy's HxWx3 uint8).
struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> rgb;  // width * height * 3 bytes

  Image() = default;
  /// A black width x height image; InvalidArgument on a negative or oversized dimension.
  Image(int width, int height);
  /// Wraps interleaved RGB bytes; InvalidArgument unless rgb.size() == width * height * 3.
  static Image from_rgb(int width, int height, std::vector<std::uint8_t> rgb);

  bool empty() const { return width == 0 || height == 0; }
  std::size_t num_pixels() const { return std::size_t(width) * std::size_t(height); }
  const std::uint8_t* row(int y) const { return rgb.data() + std::size_t(y) * std::size_t(width) * 3; }
  std::uint8_t* row(int y) { return rgb.data() + std::size_t(y) * std::size_t(width) * 3; }
  const std::uint8_t* pixel(int x, int y) const { return row(y) + std::size_t(x) * 3; }
};

struct ImageLoadOptions {
  /// Largest width * height accepted, checked from the header before any pixel buffer is
  /// allocated (Pillow's Image.MAX_IMAGE_PIXELS; Pillow warns above it, we raise FormatError).
  /// 0 disables the check.
  std::uint64_t max_pixels = 89478485;
};

enum class ImageFormat { Unknown, Jpeg, Png, Bmp, Gif, Tga, Pnm, Webp };

/// The container format by its signature (TGA has none: Unknown unless stb_image's probe accepts it).
ImageFormat detect_image_format(const std::uint8_t* data, std::size_t size);
const char* image_format_name(ImageFormat format);

/// Reads and decodes a file: Image.open(path).convert("RGB"). IoError if the file cannot be
/// opened or read; FormatError for anything that does not decode.
Image load_image(const std::string& path, const ImageLoadOptions& options = {});

/// Decodes an encoded image held in memory; `name` is used in error messages.
Image decode_image(const std::uint8_t* data, std::size_t size, const ImageLoadOptions& options = {},
                   const std::string& name = "<memory>");
inline Image decode_image(const std::vector<std::uint8_t>& bytes, const ImageLoadOptions& options = {},
                          const std::string& name = "<memory>") {
  return decode_image(bytes.data(), bytes.size(), options, name);
}

/// PIL resampling filters, numbered as PIL.Image.Resampling (and as preprocessor_config.json's "resample").
enum class Resample : int { Nearest = 0, Lanczos = 1, Bilinear = 2, Bicubic = 3, Box = 4, Hamming = 5 };

const char* resample_name(Resample filter);
/// Maps PIL's integer code to a Resample; InvalidArgument for anything else.
Resample resample_from_int(int code);

/// Pillow 9.4's Image.resize((width, height), resample) of an RGB image (no box, reducing_gap=None):
/// separable fixed-point convolution (horizontal pass, then vertical; a pass is skipped when its
/// size is unchanged; support widened by the scale when downsampling), or Pillow's affine
/// nearest-neighbour scaler for Resample::Nearest. Same size -> copy.
/// InvalidArgument for an empty input or a non-positive target size.
Image resize_image(const Image& image, int width, int height, Resample filter = Resample::Bicubic);

}  // namespace instructblip

#pragma once
// What the image decoders in src/processing/image/ share (internal: not installed). One file per
// container: jpeg.cpp, png.cpp, gif.cpp, pnm.cpp, bmp_tga.cpp, webp.cpp; image.cpp sniffs the format and
// dispatches, resize.cpp holds Pillow's resampling.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "instructblip/processing/image.hpp"

namespace instructblip::image_detail {

/// Throws FormatError("<name>: <what>").
[[noreturn]] void fail(const std::string& name, const std::string& what);

inline std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | p[3];
}
inline std::uint16_t le16(const std::uint8_t* p) { return std::uint16_t(p[0] | (p[1] << 8)); }
inline std::uint32_t le32(const std::uint8_t* p) {
  return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) | (std::uint32_t(p[3]) << 24);
}

/// Rejects empty images and images above the pixel limit, before anything is allocated.
void check_dimensions(std::uint64_t w, std::uint64_t h, const ImageLoadOptions& opt, const std::string& name,
                      const char* format);

/// A black w x h image (the size already passed check_dimensions).
Image blank_image(std::uint32_t w, std::uint32_t h);

/// Pillow's default palette (ImagingPaletteNew): a grey ramp, overwritten by the file's entries.
std::array<std::uint8_t, 768> pillow_palette(const std::uint8_t* entries, std::size_t count);

// The decoders: each gets the whole file (its signature already checked by detect_image_format)
// and returns Image.open(f).convert("RGB"), or throws FormatError.
Image decode_jpeg(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name);
Image decode_png(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name);
Image decode_gif(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name);
Image decode_pnm(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name);
Image decode_bmp(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name);
Image decode_tga(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name);
Image decode_webp(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name);

/// Pillow's TgaImagePlugin header checks (TGA has no signature).
bool looks_like_tga(const std::uint8_t* d, std::size_t n);

}  // namespace instructblip::image_detail

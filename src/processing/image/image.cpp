// Image: format sniffing, dispatch to the decoder of each container (one file each in this
// directory) and file reading. Every decoder reproduces Pillow 9.4's Image.open(f).convert("RGB").
#include "instructblip/processing/image.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <sys/stat.h>

#include "image_internal.hpp"
#include "instructblip/core/error.hpp"

namespace instructblip {

// ---------------------------------------------------------------------------------------------
// Image
// ---------------------------------------------------------------------------------------------

namespace {

std::size_t checked_rgb_bytes(long long width, long long height, const char* what) {
  if (width < 0 || height < 0 || width > INT_MAX || height > INT_MAX)
    throw InvalidArgument(std::string(what) + ": invalid image size " + std::to_string(width) + "x" +
                          std::to_string(height));
  const unsigned long long px = static_cast<unsigned long long>(width) * static_cast<unsigned long long>(height);
  if (px > (std::size_t(-1) / 3))
    throw InvalidArgument(std::string(what) + ": image size " + std::to_string(width) + "x" +
                          std::to_string(height) + " overflows");
  return std::size_t(px) * 3;
}

}  // namespace

Image::Image(int w, int h) {
  const std::size_t bytes = checked_rgb_bytes(w, h, "Image");
  width = w;
  height = h;
  rgb.assign(bytes, 0);
}

Image Image::from_rgb(int w, int h, std::vector<std::uint8_t> data) {
  const std::size_t bytes = checked_rgb_bytes(w, h, "Image::from_rgb");
  if (data.size() != bytes)
    throw InvalidArgument("Image::from_rgb: " + std::to_string(w) + "x" + std::to_string(h) + " needs " +
                          std::to_string(bytes) + " bytes of RGB, got " + std::to_string(data.size()));
  Image img;
  img.width = w;
  img.height = h;
  img.rgb = std::move(data);
  return img;
}

const char* image_format_name(ImageFormat format) {
  switch (format) {
    case ImageFormat::Jpeg: return "JPEG";
    case ImageFormat::Png: return "PNG";
    case ImageFormat::Bmp: return "BMP";
    case ImageFormat::Gif: return "GIF";
    case ImageFormat::Tga: return "TGA";
    case ImageFormat::Pnm: return "PNM";
    case ImageFormat::Webp: return "WebP";
    case ImageFormat::Unknown: break;
  }
  return "unknown";
}

namespace image_detail {

void fail(const std::string& name, const std::string& what) { throw FormatError(name + ": " + what); }

void check_dimensions(std::uint64_t w, std::uint64_t h, const ImageLoadOptions& opt, const std::string& name,
                      const char* format) {
  if (w == 0 || h == 0)
    fail(name, std::string(format) + " image has an empty size " + std::to_string(w) + "x" + std::to_string(h));
  if (w > std::uint64_t(INT_MAX) || h > std::uint64_t(INT_MAX))
    fail(name, std::string(format) + " image size " + std::to_string(w) + "x" + std::to_string(h) + " is too large");
  if (opt.max_pixels != 0 && w * h > opt.max_pixels)
    fail(name, std::string(format) + " image size " + std::to_string(w) + "x" + std::to_string(h) + " (" +
                   std::to_string(w * h) + " pixels) exceeds the limit of " + std::to_string(opt.max_pixels) +
                   " pixels (possible decompression bomb)");
}

Image blank_image(std::uint32_t w, std::uint32_t h) { return Image(int(w), int(h)); }

std::array<std::uint8_t, 768> pillow_palette(const std::uint8_t* entries, std::size_t count) {
  std::array<std::uint8_t, 768> pal{};
  for (int i = 0; i < 256; ++i) pal[3 * i] = pal[3 * i + 1] = pal[3 * i + 2] = std::uint8_t(i);
  count = std::min<std::size_t>(count, 256);
  if (count) std::memcpy(pal.data(), entries, count * 3);
  return pal;
}

}  // namespace image_detail

// ---------------------------------------------------------------------------------------------
// Format sniffing, dispatch, files
// ---------------------------------------------------------------------------------------------

namespace {

constexpr std::uint8_t kPngSignature[8] = {137, 80, 78, 71, 13, 10, 26, 10};

}  // namespace

ImageFormat detect_image_format(const std::uint8_t* d, std::size_t n) {
  if (!d) return ImageFormat::Unknown;
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return ImageFormat::Jpeg;
  if (n >= 8 && std::memcmp(d, kPngSignature, 8) == 0) return ImageFormat::Png;
  if (n >= 6 && (std::memcmp(d, "GIF87a", 6) == 0 || std::memcmp(d, "GIF89a", 6) == 0)) return ImageFormat::Gif;
  if (n >= 2 && d[0] == 'B' && d[1] == 'M') return ImageFormat::Bmp;
  if (n >= 2 && d[0] == 'P' && d[1] >= '1' && d[1] <= '6') return ImageFormat::Pnm;
  if (n >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0) return ImageFormat::Webp;
  if (image_detail::looks_like_tga(d, n)) return ImageFormat::Tga;
  return ImageFormat::Unknown;
}

Image decode_image(const std::uint8_t* data, std::size_t size, const ImageLoadOptions& options,
                   const std::string& name) {
  using namespace image_detail;
  if (!data || size == 0) fail(name, "cannot identify image file (empty)");
  switch (detect_image_format(data, size)) {
    case ImageFormat::Jpeg: return decode_jpeg(data, size, options, name);
    case ImageFormat::Png: return decode_png(data, size, options, name);
    case ImageFormat::Gif: return decode_gif(data, size, options, name);
    case ImageFormat::Bmp: return decode_bmp(data, size, options, name);
    case ImageFormat::Pnm: return decode_pnm(data, size, options, name);
    case ImageFormat::Tga: return decode_tga(data, size, options, name);
    case ImageFormat::Webp: return decode_webp(data, size, options, name);
    case ImageFormat::Unknown: break;
  }
  fail(name, "cannot identify image file (not a JPEG, PNG, GIF, BMP, PNM, WebP or TGA image)");
}

Image load_image(const std::string& path, const ImageLoadOptions& options) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw IoError(path + ": cannot open image file: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fileno(f.get()), &st) != 0) throw IoError(path + ": cannot stat image file: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw IoError(path + ": not a regular file");
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(st.st_size));
  if (!bytes.empty() && std::fread(bytes.data(), 1, bytes.size(), f.get()) != bytes.size())
    throw IoError(path + ": cannot read image file");
  return decode_image(bytes.data(), bytes.size(), options, path);
}

}  // namespace instructblip

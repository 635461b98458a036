// Image decoding (JPEG via libjpeg-turbo, PNG / GIF / PNM decoded here on top of stb_image's
// inflate, BMP / TGA via stb_image) and Pillow's resize, reproducing Pillow 9.4 bit for bit.
#include "instructblip/processing/image.hpp"

#include <algorithm>
#include <array>
#include <climits>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <sys/stat.h>

#include <jpeglib.h>
#include <jerror.h>
#include <stb_image.h>

#include "instructblip/core/error.hpp"
#include "instructblip/core/thread_pool.hpp"

// Pillow is built for baseline x86-64 (no FMA): a * b + c is rounded twice. With -march=native
// GCC fuses such expressions in C++ (its ISO mode switches contraction off only for C), which can
// move a filter weight by an ulp and, at a rounding boundary, a fixed-point coefficient by one.
// Keep every floating-point expression below unfused.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

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
    case ImageFormat::Unknown: break;
  }
  return "unknown";
}

namespace {

constexpr std::uint8_t kPngSignature[8] = {137, 80, 78, 71, 13, 10, 26, 10};

[[noreturn]] void fail(const std::string& name, const std::string& what) { throw FormatError(name + ": " + what); }

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | p[3];
}
std::uint16_t le16(const std::uint8_t* p) { return std::uint16_t(p[0] | (p[1] << 8)); }
std::uint32_t le32(const std::uint8_t* p) {
  return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) | (std::uint32_t(p[3]) << 24);
}

/// Rejects empty images and images above the pixel limit, before anything is allocated.
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

/// Pillow's default palette (ImagingPaletteNew): a grey ramp, overwritten by the file's entries.
std::array<std::uint8_t, 768> pillow_palette(const std::uint8_t* entries, std::size_t count) {
  std::array<std::uint8_t, 768> pal{};
  for (int i = 0; i < 256; ++i) pal[3 * i] = pal[3 * i + 1] = pal[3 * i + 2] = std::uint8_t(i);
  count = std::min<std::size_t>(count, 256);
  if (count) std::memcpy(pal.data(), entries, count * 3);
  return pal;
}

// ---------------------------------------------------------------------------------------------
// JPEG (libjpeg-turbo, as Pillow's JpegDecode.c drives it)
// ---------------------------------------------------------------------------------------------

struct JpegErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  bool pixels_done;  // all scanlines read: a missing end of file is tolerated, as in Pillow
  char message[JMSG_LENGTH_MAX + 64];
};

void jpeg_on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

void jpeg_on_message(j_common_ptr cinfo, int msg_level) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  // Warnings are silenced as in Pillow, except libjpeg's "premature end of file" (it then pads the
  // image with grey): Pillow's reader raises "image file is truncated" when the decoder still
  // wants data, so do the same unless every scanline was already delivered.
  if (msg_level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF && !err->pixels_done) {
    std::snprintf(err->message, sizeof(err->message), "image file is truncated");
    std::longjmp(err->jump, 1);
  }
}

void jpeg_on_output(j_common_ptr) {}

// A progressive JPEG can hold any number of scans, each a pass over the whole image: a hostile
// file with thousands of tiny scans costs minutes of CPU. Real encoders write at most a few dozen.
constexpr int kMaxJpegScans = 1000;

void jpeg_on_progress(j_common_ptr cinfo) {
  if (!cinfo->is_decompressor) return;
  auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (d->input_scan_number > kMaxJpegScans) {
    auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
    std::snprintf(err->message, sizeof(err->message), "more than %d scans (hostile progressive JPEG?)",
                  kMaxJpegScans);
    std::longjmp(err->jump, 1);
  }
}

struct JpegGuard {
  jpeg_decompress_struct* cinfo;
  ~JpegGuard() { jpeg_destroy_decompress(cinfo); }
};

/// Pillow's MULDIV255: (a * b + 127) / 255, computed its way.
inline int muldiv255(int a, int b) {
  const int tmp = a * b + 128;
  return ((tmp >> 8) + tmp) >> 8;
}
inline std::uint8_t clip8i(int v) { return std::uint8_t(v <= 0 ? 0 : v >= 255 ? 255 : v); }

Image decode_jpeg(const std::uint8_t* data, std::size_t size, const ImageLoadOptions& opt, const std::string& name) {
  // Everything with a destructor lives outside the setjmp region (declared before setjmp).
  Image out;
  std::vector<std::uint8_t> rowbuf;
  jpeg_decompress_struct cinfo;
  JpegErrorManager jerr;
  jpeg_progress_mgr progress;
  std::memset(&cinfo, 0, sizeof(cinfo));
  std::memset(&jerr, 0, sizeof(jerr));
  std::memset(&progress, 0, sizeof(progress));
  cinfo.err = jpeg_std_error(&jerr.pub);
  jerr.pub.error_exit = jpeg_on_error;
  jerr.pub.emit_message = jpeg_on_message;
  progress.progress_monitor = jpeg_on_progress;
  jerr.pub.output_message = jpeg_on_output;
  jerr.pixels_done = false;
  JpegGuard guard{&cinfo};

  if (setjmp(jerr.jump)) {
    throw FormatError(name + ": cannot decode JPEG: " + jerr.message);
  }
  jpeg_create_decompress(&cinfo);
  cinfo.progress = &progress;
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);

  const int comps = cinfo.num_components;
  if (comps != 1 && comps != 3 && comps != 4)
    fail(name, "cannot handle " + std::to_string(comps) + "-layer JPEG images");
  check_dimensions(cinfo.image_width, cinfo.image_height, opt, name, "JPEG");

  // Pillow: mode L -> rawmode "L", RGB -> "RGB", CMYK -> "CMYK;I" (Adobe-inverted); it leaves
  // jpeg_color_space to libjpeg and keeps libjpeg's defaults (ISLOW IDCT, fancy upsampling).
  cinfo.out_color_space = comps == 1 ? JCS_GRAYSCALE : comps == 3 ? JCS_RGB : JCS_CMYK;
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = TRUE;
  cinfo.scale_num = 1;
  cinfo.scale_denom = 1;
  jpeg_start_decompress(&cinfo);

  if (int(cinfo.output_components) != comps) fail(name, "unexpected JPEG output layout");
  const std::uint32_t w = cinfo.output_width, h = cinfo.output_height;
  out = blank_image(w, h);
  if (comps != 3) rowbuf.resize(std::size_t(w) * std::size_t(comps));

  while (cinfo.output_scanline < cinfo.output_height) {
    const int y = int(cinfo.output_scanline);
    std::uint8_t* dst = out.row(y);
    JSAMPROW row = comps == 3 ? dst : rowbuf.data();
    if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) fail(name, "cannot decode JPEG: image file is truncated");
    if (comps == 1) {
      for (std::uint32_t x = 0; x < w; ++x) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = rowbuf[x];
    } else if (comps == 4) {
      // unpack "CMYK;I" (inverted), then Pillow's cmyk2rgb
      for (std::uint32_t x = 0; x < w; ++x) {
        const std::uint8_t* p = &rowbuf[4 * std::size_t(x)];
        const int c = 255 - p[0], m = 255 - p[1], yy = 255 - p[2], k = 255 - p[3];
        const int nk = 255 - k;
        dst[3 * x + 0] = clip8i(nk - muldiv255(c, nk));
        dst[3 * x + 1] = clip8i(nk - muldiv255(m, nk));
        dst[3 * x + 2] = clip8i(nk - muldiv255(yy, nk));
      }
    }
  }
  jerr.pixels_done = true;
  jpeg_finish_decompress(&cinfo);
  return out;
}

// ---------------------------------------------------------------------------------------------
// zlib via stb_image's inflate (fixed-size output: a decompression bomb cannot grow it)
// ---------------------------------------------------------------------------------------------

/// Inflates a zlib stream into exactly `want` bytes. Extra output beyond `want` is ignored (Pillow
/// stops once every row is decoded); a stream that ends early or is corrupt is a FormatError.
std::vector<std::uint8_t> inflate_exact(const std::vector<std::uint8_t>& z, std::size_t want, const std::string& name,
                                        const char* format) {
  // stb writes a stored block or a back-reference whole, or not at all: leave room for one.
  const std::size_t slack = 65536 + 258;
  if (want > std::size_t(INT_MAX) - slack || z.size() > std::size_t(INT_MAX))
    fail(name, std::string(format) + " image data too large");
  // Nothing to inflate (e.g. PNG IDAT chunks of length 0). Also keeps z.data(), null for an
  // empty vector, away from stb, whose `ibuffer + ilen` on a null pointer is undefined behaviour.
  if (z.empty()) fail(name, std::string(format) + " image file is truncated (empty image data stream)");
  std::vector<std::uint8_t> out(want + slack);
  const int n = stbi_zlib_decode_buffer(reinterpret_cast<char*>(out.data()), int(out.size()),
                                        reinterpret_cast<const char*>(z.data()), int(z.size()));
  if (n < 0) {
    const char* why = stbi_failure_reason();
    if (why && std::strcmp(why, "output buffer limit") == 0) {  // more data than needed: fine
      out.resize(want);
      return out;
    }
    fail(name, std::string("broken ") + format + " data stream (" + (why ? why : "inflate failed") +
                   "); the image file may be truncated");
  }
  if (std::size_t(n) < want) fail(name, std::string(format) + " image file is truncated (image data ends early)");
  out.resize(want);
  return out;
}

// ---------------------------------------------------------------------------------------------
// PNG: chunk walk with Pillow's checks (CRC of every chunk before the image data), unfiltering and
// conversion to RGB with Pillow's rules for each of its modes.
// ---------------------------------------------------------------------------------------------

std::uint32_t crc32_update(std::uint32_t crc, const std::uint8_t* p, std::size_t n) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

bool is_chunk_id(const std::uint8_t* t) {  // Pillow: re.match(rb"\w\w\w\w", cid)
  for (int i = 0; i < 4; ++i)
    if (!((t[i] >= 'a' && t[i] <= 'z') || (t[i] >= 'A' && t[i] <= 'Z') || (t[i] >= '0' && t[i] <= '9') ||
          t[i] == '_'))
      return false;
  return true;
}

struct PngHeader {
  std::uint32_t width = 0, height = 0;
  int depth = 0, color = 0, interlace = 0;
  int channels() const {
    switch (color) {
      case 0: return 1;
      case 2: return 3;
      case 3: return 1;
      case 4: return 2;
      case 6: return 4;
    }
    return 0;
  }
};

/// Converts `count` pixels of one unfiltered PNG row to RGB, writing pixel i at out + i * stride.
void png_row_to_rgb(const PngHeader& hd, const std::uint8_t* raw, std::uint32_t count, std::uint8_t* out,
                    std::size_t stride, const std::array<std::uint8_t, 768>& pal) {
  const int depth = hd.depth;
  auto put = [&](std::uint32_t i, std::uint8_t r, std::uint8_t g, std::uint8_t b) {
    std::uint8_t* o = out + std::size_t(i) * stride;
    o[0] = r;
    o[1] = g;
    o[2] = b;
  };
  auto sub_byte = [&](std::uint32_t i) -> unsigned {  // the i-th sample of a 1/2/4-bit row
    const unsigned per = 8 / depth;
    const unsigned byte = raw[i / per];
    const unsigned shift = 8 - depth * (i % per + 1);
    return (byte >> shift) & ((1u << depth) - 1);
  };
  switch (hd.color) {
    case 0:  // grey: "1" (0 / 255), "L;2" (* 0x55), "L;4" (* 0x11), "L", "I;16B" (mode I -> clipped to 255)
      for (std::uint32_t i = 0; i < count; ++i) {
        unsigned v;
        if (depth == 16) {
          v = (unsigned(raw[2 * i]) << 8) | raw[2 * i + 1];
          v = v > 255 ? 255 : v;
        } else if (depth == 8) {
          v = raw[i];
        } else {
          const unsigned s = sub_byte(i);
          v = depth == 1 ? s * 255 : depth == 2 ? s * 0x55 : s * 0x11;
        }
        put(i, std::uint8_t(v), std::uint8_t(v), std::uint8_t(v));
      }
      break;
    case 2:  // "RGB" / "RGB;16B" (high bytes)
      if (depth == 8) {
        for (std::uint32_t i = 0; i < count; ++i) put(i, raw[3 * i], raw[3 * i + 1], raw[3 * i + 2]);
      } else {
        for (std::uint32_t i = 0; i < count; ++i) put(i, raw[6 * i], raw[6 * i + 2], raw[6 * i + 4]);
      }
      break;
    case 3:  // "P;1/2/4" / "P": palette lookup (transparency ignored by convert("RGB"))
      for (std::uint32_t i = 0; i < count; ++i) {
        const unsigned idx = depth == 8 ? raw[i] : sub_byte(i);
        put(i, pal[3 * idx], pal[3 * idx + 1], pal[3 * idx + 2]);
      }
      break;
    case 4: {  // "LA" / "LA;16B": grey replicated, alpha dropped
      const int step = depth == 8 ? 2 : 4;
      for (std::uint32_t i = 0; i < count; ++i) {
        const std::uint8_t v = raw[std::size_t(step) * i];
        put(i, v, v, v);
      }
      break;
    }
    case 6: {  // "RGBA" / "RGBA;16B": alpha dropped, not composited
      const int step = depth == 8 ? 4 : 8, hop = depth == 8 ? 1 : 2;
      for (std::uint32_t i = 0; i < count; ++i) {
        const std::uint8_t* p = raw + std::size_t(step) * i;
        put(i, p[0], p[hop], p[2 * hop]);
      }
      break;
    }
  }
}

inline std::uint8_t paeth(int a, int b, int c) {
  const int p = a + b - c;
  const int pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  if (pa <= pb && pa <= pc) return std::uint8_t(a);
  if (pb <= pc) return std::uint8_t(b);
  return std::uint8_t(c);
}

/// Undoes one row's filter in place; `prev` is the previous unfiltered row of the pass (or null).
void png_unfilter(int type, std::uint8_t* row, const std::uint8_t* prev, std::size_t len, std::size_t bpp,
                  const std::string& name) {
  switch (type) {
    case 0: break;
    case 1:
      for (std::size_t i = bpp; i < len; ++i) row[i] = std::uint8_t(row[i] + row[i - bpp]);
      break;
    case 2:
      if (prev)
        for (std::size_t i = 0; i < len; ++i) row[i] = std::uint8_t(row[i] + prev[i]);
      break;
    case 3:
      for (std::size_t i = 0; i < len; ++i) {
        const int a = i >= bpp ? row[i - bpp] : 0;
        const int b = prev ? prev[i] : 0;
        row[i] = std::uint8_t(row[i] + ((a + b) >> 1));
      }
      break;
    case 4:
      for (std::size_t i = 0; i < len; ++i) {
        const int a = i >= bpp ? row[i - bpp] : 0;
        const int b = prev ? prev[i] : 0;
        const int c = (prev && i >= bpp) ? prev[i - bpp] : 0;
        row[i] = std::uint8_t(row[i] + paeth(a, b, c));
      }
      break;
    default: fail(name, "broken PNG data stream (unknown filter type " + std::to_string(type) + ")");
  }
}

Image decode_png(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name) {
  PngHeader hd;
  bool seen_ihdr = false, seen_plte = false;
  const std::uint8_t* plte = nullptr;
  std::size_t plte_len = 0;
  std::vector<std::uint8_t> idat;
  bool seen_idat = false;
  std::size_t pos = 8;
  // Chunks up to and including the first run of IDAT chunks (Pillow's reader stops the image
  // data at the first other chunk; what follows is read leniently and cannot change the pixels).
  while (true) {
    if (pos == n) {
      if (!seen_idat) fail(name, "PNG image file is truncated (no image data)");
      break;  // IEND missing after the image data: Pillow accepts that
    }
    if (seen_idat && (n - pos < 8 || std::memcmp(d + pos + 4, "IDAT", 4) != 0))
      break;  // end of the image data; what follows (even cut short) cannot change the pixels
    if (n - pos < 8) fail(name, "PNG image file is truncated (incomplete chunk)");
    const std::uint32_t len = be32(d + pos);
    const std::uint8_t* type = d + pos + 4;
    const std::string cid(reinterpret_cast<const char*>(type), 4);
    const bool is_idat = cid == "IDAT";
    if (len > 0x7fffffffu) fail(name, "broken PNG file (chunk length too large)");
    // IDAT checksums are never read (as in Pillow), so only an IDAT may lack its last 4 bytes.
    // (n - pos >= 8 here; written without n - pos - 12, which wraps when fewer than 12 bytes remain.)
    const std::size_t avail = n - pos - 8;
    if (avail < len || (!is_idat && avail - len < 4))
      fail(name, "PNG image file is truncated (chunk " + cid + ")");
    const std::uint8_t* body = d + pos + 8;
    if (!is_chunk_id(type)) fail(name, "broken PNG file (bad chunk id)");
    if (!seen_ihdr && cid != "IHDR") {
      if (cid == "CgBI") fail(name, "Apple CgBI PNG files are not supported");
      fail(name, "broken PNG file (first chunk is " + cid + ", not IHDR)");
    }
    if (!is_idat && crc32_update(crc32_update(0, type, 4), body, len) != be32(body + len))
      fail(name, "broken PNG file (bad header checksum in " + cid + ")");
    if (cid == "IHDR") {
      if (seen_ihdr) fail(name, "broken PNG file (second IHDR chunk)");
      if (len < 13) fail(name, "broken PNG file (IHDR too short)");
      hd.width = be32(body);
      hd.height = be32(body + 4);
      hd.depth = body[8];
      hd.color = body[9];
      if (body[11] != 0) fail(name, "unknown PNG filter category " + std::to_string(body[11]));
      hd.interlace = body[12] != 0 ? 1 : 0;  // Pillow treats any non-zero value as Adam7
      const int dp = hd.depth;
      bool ok = false;
      switch (hd.color) {
        case 0: ok = dp == 1 || dp == 2 || dp == 4 || dp == 8 || dp == 16; break;
        case 2: case 4: case 6: ok = dp == 8 || dp == 16; break;
        case 3: ok = dp == 1 || dp == 2 || dp == 4 || dp == 8; break;
      }
      if (!ok)
        fail(name, "unsupported PNG mode (bit depth " + std::to_string(dp) + ", colour type " +
                       std::to_string(hd.color) + ")");
      check_dimensions(hd.width, hd.height, opt, name, "PNG");
      seen_ihdr = true;
    } else if (cid == "PLTE") {
      plte = body;  // Pillow keeps the last one
      plte_len = len;
      seen_plte = true;
    } else if (is_idat) {
      idat.insert(idat.end(), body, body + len);
      seen_idat = true;
    } else if (cid == "IEND") {
      fail(name, "PNG image file is truncated (no image data before IEND)");
    }
    pos = std::min(n, pos + 12 + std::size_t(len));
  }

  const int channels = hd.channels();
  const std::size_t bits_pp = std::size_t(channels) * std::size_t(hd.depth);
  const std::size_t bpp = std::max<std::size_t>(1, bits_pp / 8);
  auto row_bytes = [&](std::uint64_t w) { return std::size_t((w * bits_pp + 7) / 8); };

  // Adam7 passes (x0, y0, dx, dy); a non-interlaced image is one pass.
  static const int adam7[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                  {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
  struct Pass { std::uint32_t x0, y0, dx, dy, w, h; };
  std::vector<Pass> passes;
  if (hd.interlace) {
    for (const auto& a : adam7) {
      Pass p{std::uint32_t(a[0]), std::uint32_t(a[1]), std::uint32_t(a[2]), std::uint32_t(a[3]), 0, 0};
      p.w = hd.width > p.x0 ? (hd.width - p.x0 + p.dx - 1) / p.dx : 0;
      p.h = hd.height > p.y0 ? (hd.height - p.y0 + p.dy - 1) / p.dy : 0;
      passes.push_back(p);
    }
  } else {
    passes.push_back(Pass{0, 0, 1, 1, hd.width, hd.height});
  }
  std::uint64_t raw_len = 0;
  for (const auto& p : passes)
    if (p.w && p.h) raw_len += std::uint64_t(p.h) * (1 + row_bytes(p.w));
  if (raw_len > std::uint64_t(INT_MAX)) fail(name, "PNG image data too large");
  // Deflate expands at most 1032:1; less data than that cannot fill the image (a truncated file,
  // or a header lying about the size): fail before allocating anything for it.
  if (raw_len > std::uint64_t(idat.size()) * 1032 + 1024) fail(name, "PNG image file is truncated (image data too short)");
  std::vector<std::uint8_t> raw = inflate_exact(idat, std::size_t(raw_len), name, "PNG");
  idat.clear();
  idat.shrink_to_fit();

  const auto pal = pillow_palette(plte, seen_plte ? plte_len / 3 : 0);
  Image out = blank_image(hd.width, hd.height);
  std::size_t off = 0;
  for (const auto& p : passes) {
    if (!p.w || !p.h) continue;
    const std::size_t rb = row_bytes(p.w);
    const std::uint8_t* prev = nullptr;
    for (std::uint32_t r = 0; r < p.h; ++r) {
      const int filter = raw[off];
      std::uint8_t* row = raw.data() + off + 1;
      png_unfilter(filter, row, prev, rb, bpp, name);
      const std::uint32_t y = p.y0 + r * p.dy;
      png_row_to_rgb(hd, row, p.w, out.row(int(y)) + std::size_t(p.x0) * 3, std::size_t(p.dx) * 3, pal);
      prev = row;
      off += rb + 1;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// GIF: the first frame as Pillow 9.4 builds it (mode P / L on a canvas filled with the
// transparency index or 0, palette lookup with Pillow's grey-ramp default palette).
// ---------------------------------------------------------------------------------------------

Image decode_gif(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name) {
  if (n < 13) fail(name, "GIF image file is truncated");
  std::uint32_t cw = le16(d + 6), ch = le16(d + 8);
  const std::uint8_t flags = d[10];
  std::size_t pos = 13;
  const std::uint8_t* gct = nullptr;
  std::size_t gct_n = 0;
  if (flags & 0x80) {
    gct_n = std::size_t(2) << (flags & 7);
    if (n - pos < gct_n * 3) fail(name, "GIF image file is truncated (global palette)");
    gct = d + pos;
    pos += gct_n * 3;
  }
  int transparency = -1;
  auto skip_sub_blocks = [&]() {
    while (true) {
      if (pos >= n) fail(name, "GIF image file is truncated");
      const std::size_t len = d[pos++];
      if (len == 0) return;
      if (n - pos < len) fail(name, "GIF image file is truncated");
      pos += len;
    }
  };
  // Blocks up to the first image descriptor.
  while (true) {
    if (pos >= n || d[pos] == ';') fail(name, "GIF file has no image");
    const std::uint8_t tag = d[pos++];
    if (tag == '!') {
      if (pos >= n) fail(name, "GIF image file is truncated");
      const std::uint8_t label = d[pos++];
      if (label == 0xF9) {  // graphic control extension: transparency from its first sub-block
        if (pos >= n) fail(name, "GIF image file is truncated");
        const std::size_t len = d[pos];
        if (len >= 4 && n - pos - 1 >= len) {
          const std::uint8_t* b = d + pos + 1;
          transparency = (b[0] & 1) ? b[3] : -1;
        }
      }
      skip_sub_blocks();
    } else if (tag == ',') {
      break;
    }  // any other byte is skipped, as Pillow does
  }
  if (n - pos < 9) fail(name, "GIF image file is truncated (image descriptor)");
  const std::uint32_t x0 = le16(d + pos), y0 = le16(d + pos + 2), fw = le16(d + pos + 4), fh = le16(d + pos + 6);
  const std::uint8_t iflags = d[pos + 8];
  pos += 9;
  const std::uint8_t* pal_entries = gct;
  std::size_t pal_n = gct_n;
  if (iflags & 0x80) {
    pal_n = std::size_t(2) << (iflags & 7);
    if (n - pos < pal_n * 3) fail(name, "GIF image file is truncated (local palette)");
    pal_entries = d + pos;
    pos += pal_n * 3;
  }
  const bool interlace = (iflags & 0x40) != 0;
  // Pillow grows the canvas when the first frame extends beyond the logical screen.
  cw = std::max(cw, x0 + fw);
  ch = std::max(ch, y0 + fh);
  check_dimensions(cw, ch, opt, name, "GIF");
  if (pos >= n) fail(name, "GIF image file is truncated");
  const int bits = d[pos++];
  if (bits < 1 || bits > 8) fail(name, "broken GIF data stream (LZW code size " + std::to_string(bits) + ")");

  std::vector<std::uint8_t> idx(std::size_t(cw) * ch, std::uint8_t(transparency >= 0 ? transparency : 0));

  // LZW decode into the frame rectangle.
  const int clear = 1 << bits, eoi = clear + 1;
  int codesize = bits + 1, next = clear + 2, prev = -1;
  std::vector<std::uint16_t> prefix(4096);
  std::vector<std::uint8_t> suffix(4096), first(4096);
  for (int i = 0; i < clear; ++i) {
    suffix[i] = first[i] = std::uint8_t(i);
  }
  std::vector<std::uint8_t> stack(4097);
  const std::uint64_t total = std::uint64_t(fw) * fh;
  std::uint64_t produced = 0;
  std::uint32_t fx = 0, fy = 0;
  int pass = 0;
  static const int istart[4] = {0, 4, 2, 1}, istep[4] = {8, 8, 4, 2};
  auto emit = [&](std::uint8_t v) {
    if (produced >= total) return;
    const std::uint32_t X = x0 + fx, Y = y0 + fy;
    idx[std::size_t(Y) * cw + X] = v;
    ++produced;
    if (++fx == fw) {
      fx = 0;
      if (interlace) {
        fy += istep[pass];
        while (fy >= fh && pass < 3) {
          ++pass;
          fy = istart[pass];
        }
      } else {
        ++fy;
      }
    }
  };
  std::uint32_t bitbuf = 0;
  int nbits = 0;
  bool done = false;
  while (!done && produced < total) {
    if (pos >= n) fail(name, "GIF image file is truncated");
    const std::size_t len = d[pos++];
    if (len == 0) break;  // end of the image data
    if (n - pos < len) fail(name, "GIF image file is truncated");
    const std::uint8_t* blk = d + pos;
    pos += len;
    for (std::size_t i = 0; i < len && !done; ++i) {
      bitbuf |= std::uint32_t(blk[i]) << nbits;
      nbits += 8;
      while (nbits >= codesize && !done) {
        const int code = int(bitbuf & ((1u << codesize) - 1));
        bitbuf >>= codesize;
        nbits -= codesize;
        if (code == clear) {
          codesize = bits + 1;
          next = clear + 2;
          prev = -1;
          continue;
        }
        if (code == eoi) {
          done = true;
          break;
        }
        if (prev < 0) {
          if (code >= clear) fail(name, "broken GIF data stream (bad first code)");
          emit(std::uint8_t(code));
          prev = code;
          continue;
        }
        int cur = code;
        std::uint8_t firstch;
        if (code < next) {
          firstch = first[code];
        } else if (code == next && next < 4096) {
          firstch = first[prev];
        } else {
          fail(name, "broken GIF data stream (bad code)");
        }
        if (next < 4096) {
          prefix[next] = std::uint16_t(prev);
          suffix[next] = firstch;
          first[next] = first[prev];
          ++next;
          if (next == (1 << codesize) && codesize < 12) ++codesize;
        }
        // expand `cur` (now in the table)
        int sp = 0;
        for (int c = cur; ; c = prefix[c]) {
          stack[sp++] = suffix[c];
          if (c < clear) break;
        }
        while (sp) emit(stack[--sp]);
        prev = code;
      }
    }
  }

  const auto pal = pillow_palette(pal_entries, pal_entries ? pal_n : 0);
  Image out = blank_image(cw, ch);
  for (std::size_t i = 0, np = idx.size(); i < np; ++i) std::memcpy(&out.rgb[3 * i], &pal[3 * std::size_t(idx[i])], 3);
  return out;
}

// ---------------------------------------------------------------------------------------------
// PNM (P1-P6) as Pillow 9.4's PpmImagePlugin reads it: header tokens with comments, maxval scaling
// round(value / maxval * out_max); 16-bit grey is mode I (clipped to 255 by convert("RGB")).
// ---------------------------------------------------------------------------------------------

bool pnm_space(std::uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

struct PnmReader {
  const std::uint8_t* d;
  std::size_t n, pos;
  const std::string& name;
  // Pillow's _read_token: skip leading whitespace and '#' comments, up to 10 characters.
  std::string token() {
    std::string t;
    while (t.size() <= 10) {
      if (pos >= n) break;
      const std::uint8_t c = d[pos++];
      if (pnm_space(c)) {
        if (t.empty()) continue;
        break;
      }
      if (c == '#') {
        while (pos < n && d[pos] != '\r' && d[pos] != '\n') ++pos;
        if (pos < n) ++pos;
        continue;
      }
      t.push_back(char(c));
    }
    if (t.empty()) fail(name, "PNM: reached end of file while reading header");
    if (t.size() > 10) fail(name, "PNM: token too long in header");
    return t;
  }
  long long number() {
    const std::string t = token();
    long long v = 0;
    for (char c : t) {
      if (c < '0' || c > '9') fail(name, "PNM: non-decimal value '" + t + "' in header");
      v = v * 10 + (c - '0');
    }
    return v;
  }
};

inline unsigned pnm_scale(unsigned long long value, unsigned long long maxval, unsigned out_max) {
  // Python: min(out_max, round(value / maxval * out_max)), round half to even
  const double r = std::nearbyint(double(value) / double(maxval) * double(out_max));
  return r >= out_max ? out_max : unsigned(r);
}

Image decode_pnm(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name) {
  const char kind = char(d[1]);
  const bool plain = kind >= '1' && kind <= '3';
  const int bands = (kind == '3' || kind == '6') ? 3 : 1;
  const bool bitmap = kind == '1' || kind == '4';
  PnmReader rd{d, n, 2, name};
  if (rd.pos < n && !pnm_space(d[rd.pos])) fail(name, "PNM: not a PPM file");
  const long long w = rd.number(), h = rd.number();
  if (w <= 0 || h <= 0) fail(name, "PNM: invalid size");
  long long maxval = 1;
  if (!bitmap) {
    maxval = rd.number();
    if (maxval <= 0 || maxval >= 65536) fail(name, "PNM: maxval must be greater than 0 and less than 65536");
  }
  check_dimensions(std::uint64_t(w), std::uint64_t(h), opt, name, "PNM");
  {  // enough bytes for the declared size? (checked before allocating the image)
    const std::uint64_t samples = std::uint64_t(w) * std::uint64_t(h) * std::uint64_t(bands);
    const std::uint64_t avail = n - rd.pos;
    std::uint64_t need = samples;  // plain formats: at least one character per sample
    if (bitmap && !plain) need = (std::uint64_t(w) + 7) / 8 * std::uint64_t(h);
    else if (!plain && maxval >= 256) need = samples * 2;
    if (avail < need) fail(name, "PNM image file is truncated");
  }
  Image out = blank_image(std::uint32_t(w), std::uint32_t(h));
  const std::size_t npx = out.num_pixels();
  // grey above 8 bits is Pillow mode I (0..65535) and then clipped to 255 by convert("RGB")
  const bool mode_i = bands == 1 && maxval > 255;
  auto store = [&](std::size_t sample, unsigned v) {
    if (bands == 3) {
      out.rgb[sample] = std::uint8_t(v);
    } else {
      if (mode_i) v = v > 255 ? 255 : v;
      out.rgb[3 * sample] = out.rgb[3 * sample + 1] = out.rgb[3 * sample + 2] = std::uint8_t(v);
    }
  };
  const std::size_t nsamples = npx * std::size_t(bands);
  std::size_t pos = rd.pos;
  if (bitmap && !plain) {  // P4: rows of bits, 1 = black
    const std::size_t rb = (std::size_t(w) + 7) / 8;
    if (n - pos < rb * std::size_t(h)) fail(name, "PNM image file is truncated");
    for (long long y = 0; y < h; ++y)
      for (long long x = 0; x < w; ++x) {
        const bool black = (d[pos + std::size_t(y) * rb + std::size_t(x) / 8] >> (7 - x % 8)) & 1;
        store(std::size_t(y) * std::size_t(w) + std::size_t(x), black ? 0 : 255);
      }
  } else if (bitmap) {  // P1: '0' / '1' characters, whitespace optional
    std::size_t i = 0;
    while (i < npx) {
      if (pos >= n) fail(name, "PNM image file is truncated");
      const std::uint8_t c = d[pos++];
      if (pnm_space(c)) continue;
      if (c == '#') {
        while (pos < n && d[pos] != '\r' && d[pos] != '\n') ++pos;
        continue;
      }
      if (c != '0' && c != '1') fail(name, "PNM: invalid token for this mode");
      store(i++, c == '1' ? 0 : 255);
    }
  } else if (!plain) {  // P5 / P6
    const int in_bytes = maxval < 256 ? 1 : 2;
    if ((n - pos) / std::size_t(in_bytes) < nsamples) fail(name, "PNM image file is truncated");
    const std::uint8_t* p = d + pos;
    for (std::size_t i = 0; i < nsamples; ++i) {
      const unsigned v = in_bytes == 1 ? p[i] : (unsigned(p[2 * i]) << 8) | p[2 * i + 1];
      unsigned o;
      if (maxval == 255) o = v;
      else if (mode_i && maxval == 65535) o = v;  // raw "I;16B"
      else o = pnm_scale(v, std::uint64_t(maxval), mode_i ? 65535u : 255u);
      store(i, o);
    }
  } else {  // P2 / P3: decimal samples
    for (std::size_t i = 0; i < nsamples; ++i) {
      std::string t;
      while (true) {
        if (pos >= n) break;
        const std::uint8_t c = d[pos];
        if (pnm_space(c)) {
          ++pos;
          if (t.empty()) continue;
          break;
        }
        if (c == '#') {
          while (pos < n && d[pos] != '\r' && d[pos] != '\n') ++pos;
          if (!t.empty()) break;
          continue;
        }
        if (c < '0' || c > '9') fail(name, "PNM: invalid token for this mode");
        t.push_back(char(c));
        ++pos;
        if (t.size() > 10) fail(name, "PNM: token too long");
      }
      if (t.empty()) fail(name, "PNM image file is truncated");
      const unsigned long long v = std::stoull(t);
      if (v > static_cast<unsigned long long>(maxval)) fail(name, "PNM: channel value too large for this mode");
      store(i, maxval == 255 ? unsigned(v) : pnm_scale(v, std::uint64_t(maxval), mode_i ? 65535u : 255u));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// BMP / TGA through stb_image
// ---------------------------------------------------------------------------------------------

struct StbFree {
  void operator()(void* p) const { stbi_image_free(p); }
};

Image decode_with_stb(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name,
                      const char* format) {
  if (n > std::size_t(INT_MAX)) fail(name, std::string(format) + " file too large");
  int w = 0, h = 0, c = 0;
  if (!stbi_info_from_memory(d, int(n), &w, &h, &c)) {
    const char* why = stbi_failure_reason();
    fail(name, std::string("cannot read ") + format + " header (" + (why ? why : "unknown error") + ")");
  }
  // stbi_info reports a top-down BMP's height as the raw (negative) header field; stbi_load
  // flips such images and returns the magnitude. Check the size the load will produce.
  const std::uint64_t info_h = h < 0 ? std::uint64_t(-std::int64_t(h)) : std::uint64_t(h);
  check_dimensions(std::uint64_t(std::max(w, 0)), info_h, opt, name, format);
  std::unique_ptr<std::uint8_t, StbFree> px(stbi_load_from_memory(d, int(n), &w, &h, &c, 3));
  if (!px) {
    const char* why = stbi_failure_reason();
    fail(name, std::string("cannot decode ") + format + " (" + (why ? why : "unknown error") + ")");
  }
  check_dimensions(std::uint64_t(std::max(w, 0)), std::uint64_t(std::max(h, 0)), opt, name, format);
  Image out;
  out.width = w;
  out.height = h;
  out.rgb.assign(px.get(), px.get() + std::size_t(w) * std::size_t(h) * 3);
  return out;
}

/// Palette BMPs (1, 4, 8 bits, uncompressed) as Pillow's BmpImagePlugin reads them: `colors`
/// (biClrUsed, or 1 << bits) BGRX entries right after the header, Pillow's grey ramp beyond them,
/// rows padded to 4 bytes, bottom-up unless the height is negative. (stb_image would take the
/// palette size from the pixel offset and leave entries past it uninitialised.)
Image decode_bmp_palette(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name) {
  const std::uint32_t hsz = le32(d + 14);
  std::int64_t w, h;
  int bits;
  std::uint32_t compression = 0, colors = 0;
  if (hsz == 12) {
    w = le16(d + 18);
    h = le16(d + 20);
    bits = le16(d + 24);
  } else {
    w = std::int32_t(le32(d + 18));
    h = std::int32_t(le32(d + 22));
    bits = le16(d + 28);
    compression = le32(d + 30);
    colors = le32(d + 46);
  }
  const bool top_down = h < 0;
  if (top_down) h = -h;
  if (compression != 0) fail(name, "unsupported BMP compression " + std::to_string(compression) + " (RLE)");
  if (w <= 0 || h <= 0) fail(name, "BMP image has an invalid size");
  check_dimensions(std::uint64_t(w), std::uint64_t(h), opt, name, "BMP");
  if (colors == 0) colors = 1u << bits;
  if (colors > 256) fail(name, "unsupported BMP palette size " + std::to_string(colors));
  const std::size_t entry = hsz == 12 ? 3 : 4;
  const std::size_t pal_at = 14 + std::size_t(hsz);
  if (n < pal_at + entry * colors) fail(name, "BMP image file is truncated (palette)");
  std::uint8_t rgb_entries[256 * 3];
  for (std::uint32_t i = 0; i < colors; ++i) {
    const std::uint8_t* e = d + pal_at + entry * i;
    rgb_entries[3 * i] = e[2];
    rgb_entries[3 * i + 1] = e[1];
    rgb_entries[3 * i + 2] = e[0];
  }
  const auto pal = pillow_palette(rgb_entries, colors);
  std::size_t offset = le32(d + 10);
  if (offset == 0) offset = pal_at + entry * colors;
  const std::uint64_t stride = ((std::uint64_t(w) * std::uint64_t(bits) + 31) >> 3) & ~std::uint64_t(3);
  if (offset > n || (n - offset) / stride < std::uint64_t(h)) fail(name, "BMP image file is truncated");
  Image out = blank_image(std::uint32_t(w), std::uint32_t(h));
  for (std::int64_t r = 0; r < h; ++r) {
    const std::uint8_t* row = d + offset + std::size_t(r) * stride;
    std::uint8_t* dst = out.row(int(top_down ? r : h - 1 - r));
    for (std::int64_t x = 0; x < w; ++x) {
      unsigned idx;
      if (bits == 8) idx = row[x];
      else if (bits == 4) idx = (row[x / 2] >> (x % 2 ? 0 : 4)) & 15;
      else idx = (row[x / 8] >> (7 - x % 8)) & 1;
      std::memcpy(dst + 3 * x, &pal[3 * idx], 3);
    }
  }
  return out;
}

Image decode_bmp(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name) {
  if (n < 30) fail(name, "BMP image file is truncated");
  const std::uint32_t hsz = le32(d + 14);
  if (hsz != 12 && hsz != 40 && hsz != 52 && hsz != 56 && hsz != 64 && hsz != 108 && hsz != 124)
    fail(name, "unsupported BMP header type (" + std::to_string(hsz) + " bytes)");
  if (n < 14 + std::size_t(hsz)) fail(name, "BMP image file is truncated (header)");
  const int bits = hsz == 12 ? le16(d + 24) : le16(d + 28);
  if (bits == 1 || bits == 4 || bits == 8) return decode_bmp_palette(d, n, opt, name);
  if (bits != 16 && bits != 24 && bits != 32) fail(name, "unsupported BMP pixel depth " + std::to_string(bits));
  Image img = decode_with_stb(d, n, opt, name, "BMP");
  // 16-bit BMPs: stb expands 5/6-bit channels as floor(v * 33 / 4) / floor(v * 65 / 16); Pillow's
  // "BGR;15" / "BGR;16" unpackers use v * 255 / 31 and v * 255 / 63. Recover v and redo it.
  if (n >= 34) {
    const std::uint32_t hsz = le32(d + 14);
    if (hsz >= 40 && le16(d + 28) == 16) {
      const std::uint32_t comp = le32(d + 30);
      int gbits = 5;
      if (comp == 3) {
        const std::size_t mo = (hsz == 40) ? 54 : 14 + 40;
        if (n < mo + 12) fail(name, "BMP image file is truncated");
        const std::uint32_t mr = le32(d + mo), mg = le32(d + mo + 4), mb = le32(d + mo + 8);
        if (mr == 0xF800 && mg == 0x7E0 && mb == 0x1F) gbits = 6;
        else if (mr == 0x7C00 && mg == 0x3E0 && mb == 0x1F) gbits = 5;
        else fail(name, "unsupported BMP bitfields layout");
      } else if (comp != 0) {
        fail(name, "unsupported BMP compression " + std::to_string(comp));
      }
      // s = floor(v * 33 / 4) lies within (v * 33 / 4 - 1, v * 33 / 4]: v = round(s * 4 / 33)
      auto fix5 = [](unsigned s) { return std::uint8_t(((8 * s + 33) / 66) * 255 / 31); };
      auto fix6 = [](unsigned s) { return std::uint8_t(((32 * s + 65) / 130) * 255 / 63); };
      for (std::size_t i = 0; i < img.rgb.size(); i += 3) {
        img.rgb[i] = fix5(img.rgb[i]);
        img.rgb[i + 1] = gbits == 6 ? fix6(img.rgb[i + 1]) : fix5(img.rgb[i + 1]);
        img.rgb[i + 2] = fix5(img.rgb[i + 2]);
      }
    }
  }
  return img;
}

/// Pillow's TgaImagePlugin header checks (it has no signature); stb_image then decodes.
bool looks_like_tga(const std::uint8_t* d, std::size_t n) {
  if (n < 18) return false;
  const int colormaptype = d[1], imagetype = d[2], depth = d[16];
  const int w = le16(d + 12), h = le16(d + 14);
  if (colormaptype > 1 || w <= 0 || h <= 0) return false;
  if (depth != 1 && depth != 8 && depth != 16 && depth != 24 && depth != 32) return false;
  return imagetype == 1 || imagetype == 2 || imagetype == 3 || imagetype == 9 || imagetype == 10 || imagetype == 11;
}

}  // namespace

ImageFormat detect_image_format(const std::uint8_t* d, std::size_t n) {
  if (!d) return ImageFormat::Unknown;
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return ImageFormat::Jpeg;
  if (n >= 8 && std::memcmp(d, kPngSignature, 8) == 0) return ImageFormat::Png;
  if (n >= 6 && (std::memcmp(d, "GIF87a", 6) == 0 || std::memcmp(d, "GIF89a", 6) == 0)) return ImageFormat::Gif;
  if (n >= 2 && d[0] == 'B' && d[1] == 'M') return ImageFormat::Bmp;
  if (n >= 2 && d[0] == 'P' && d[1] >= '1' && d[1] <= '6') return ImageFormat::Pnm;
  if (looks_like_tga(d, n)) return ImageFormat::Tga;
  return ImageFormat::Unknown;
}

Image decode_image(const std::uint8_t* data, std::size_t size, const ImageLoadOptions& options,
                   const std::string& name) {
  if (!data || size == 0) fail(name, "cannot identify image file (empty)");
  switch (detect_image_format(data, size)) {
    case ImageFormat::Jpeg: return decode_jpeg(data, size, options, name);
    case ImageFormat::Png: return decode_png(data, size, options, name);
    case ImageFormat::Gif: return decode_gif(data, size, options, name);
    case ImageFormat::Bmp: return decode_bmp(data, size, options, name);
    case ImageFormat::Pnm: return decode_pnm(data, size, options, name);
    case ImageFormat::Tga: return decode_with_stb(data, size, options, name, "TGA");
    case ImageFormat::Unknown: break;
  }
  fail(name, "cannot identify image file (not a JPEG, PNG, GIF, BMP, PNM or TGA image)");
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

// ---------------------------------------------------------------------------------------------
// JPEG encoding (tests, benchmarks)
// ---------------------------------------------------------------------------------------------

namespace {

struct JpegCompressGuard {
  jpeg_compress_struct* cinfo;
  unsigned char** buffer;
  ~JpegCompressGuard() {
    jpeg_destroy_compress(cinfo);
    std::free(*buffer);
  }
};

}  // namespace

std::vector<std::uint8_t> encode_jpeg(const Image& image, int quality, bool progressive) {
  if (image.empty() || image.rgb.size() != image.num_pixels() * 3)
    throw InvalidArgument("encode_jpeg: empty or inconsistent image");
  if (quality < 1 || quality > 100) throw InvalidArgument("encode_jpeg: quality must be in 1..100");
  if (image.width > 65500 || image.height > 65500) throw InvalidArgument("encode_jpeg: image too large for JPEG");
  std::vector<std::uint8_t> result;
  jpeg_compress_struct cinfo;
  JpegErrorManager jerr;
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  std::memset(&cinfo, 0, sizeof(cinfo));
  std::memset(&jerr, 0, sizeof(jerr));
  cinfo.err = jpeg_std_error(&jerr.pub);
  jerr.pub.error_exit = jpeg_on_error;
  jerr.pub.output_message = jpeg_on_output;
  JpegCompressGuard guard{&cinfo, &buffer};
  if (setjmp(jerr.jump)) throw InvalidArgument(std::string("encode_jpeg: ") + jerr.message);
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = JDIMENSION(image.width);
  cinfo.image_height = JDIMENSION(image.height);
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  if (progressive) jpeg_simple_progression(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(image.row(int(cinfo.next_scanline)));
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  result.assign(buffer, buffer + size);
  return result;
}

// ---------------------------------------------------------------------------------------------
// Resize (Pillow 9.4 libImaging/Resample.c and the nearest-neighbour affine scaler of Geometry.c)
// ---------------------------------------------------------------------------------------------

const char* resample_name(Resample filter) {
  switch (filter) {
    case Resample::Nearest: return "NEAREST";
    case Resample::Lanczos: return "LANCZOS";
    case Resample::Bilinear: return "BILINEAR";
    case Resample::Bicubic: return "BICUBIC";
    case Resample::Box: return "BOX";
    case Resample::Hamming: return "HAMMING";
  }
  return "?";
}

Resample resample_from_int(int code) {
  if (code < 0 || code > 5)
    throw InvalidArgument("unknown PIL resampling filter " + std::to_string(code) +
                          " (0 NEAREST, 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING)");
  return static_cast<Resample>(code);
}

namespace {

constexpr double kPi = 3.14159265358979323846;  // M_PI

double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

double hamming_filter(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * kPi;
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));  // float constants, as in Pillow
}

double bicubic_filter(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * kPi;
  return std::sin(x) / x;
}

double lanczos_filter(double x) {
  if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
  return 0.0;
}

struct Filter {
  double (*fn)(double);
  double support;
};

Filter filter_for(Resample r) {
  switch (r) {
    case Resample::Box: return {box_filter, 0.5};
    case Resample::Bilinear: return {bilinear_filter, 1.0};
    case Resample::Hamming: return {hamming_filter, 1.0};
    case Resample::Bicubic: return {bicubic_filter, 2.0};
    case Resample::Lanczos: return {lanczos_filter, 3.0};
    case Resample::Nearest: break;
  }
  throw InvalidArgument("resize: no convolution filter for NEAREST");
}

constexpr int kPrecisionBits = 32 - 8 - 2;

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;     // (xmin, count) per output sample
  std::vector<std::int32_t> k;  // fixed-point coefficients, ksize per output sample
};

/// precompute_coeffs + normalize_coeffs_8bpc. in0 / in1 are the box edges, floats as in Pillow.
Coeffs precompute_coeffs(int in_size, float in0, float in1, int out_size, const Filter& filter) {
  double scale, filterscale;
  filterscale = scale = double(in1 - in0) / out_size;
  if (filterscale < 1.0) filterscale = 1.0;
  const double support = filter.support * filterscale;
  const double ksize_d = std::ceil(support) * 2 + 1;
  if (ksize_d > double(INT_MAX) / 8 || double(out_size) * ksize_d > double(INT_MAX) / 8)
    throw InvalidArgument("resize: filter too large");
  const int ksize = int(std::ceil(support)) * 2 + 1;
  std::vector<double> kk(std::size_t(out_size) * std::size_t(ksize), 0.0);
  Coeffs c;
  c.ksize = ksize;
  c.bounds.resize(std::size_t(out_size) * 2);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    const double ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    if (xmax < 0) xmax = 0;
    if (xmax > ksize) xmax = ksize;  // cannot happen for boxes inside the image; keeps memory safe
    double* k = &kk[std::size_t(xx) * std::size_t(ksize)];
    for (int x = 0; x < xmax; ++x) {
      const double w = filter.fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    c.bounds[2 * std::size_t(xx)] = xmin;
    c.bounds[2 * std::size_t(xx) + 1] = xmax;
  }
  c.k.resize(kk.size());
  for (std::size_t i = 0; i < kk.size(); ++i) {
    if (kk[i] < 0)
      c.k[i] = std::int32_t(-0.5 + kk[i] * (1 << kPrecisionBits));
    else
      c.k[i] = std::int32_t(0.5 + kk[i] * (1 << kPrecisionBits));
  }
  return c;
}

inline std::uint8_t clip8(std::uint32_t acc) {
  const std::int32_t v = std::int32_t(acc) >> kPrecisionBits;  // Pillow: clip8_lookups[in >> 22]
  return std::uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

/// ImagingResampleHorizontal_8bpc for 3 bands: rows [row0, row0 + rows) of `in` -> `out`.
/// Each source row is first split into planes, so that every output sample is a contiguous
/// (vectorisable) dot product. Sums run in uint32: the same bits as Pillow's int sums, without
/// signed-overflow UB; integer addition being associative, any summation order is exact.
void resample_horizontal(const std::uint8_t* in, int in_w, int row0, int rows, std::uint8_t* out, int out_w,
                         const Coeffs& c) {
  const std::uint32_t half = 1u << (kPrecisionBits - 1);
  const std::size_t in_stride = std::size_t(in_w) * 3, out_stride = std::size_t(out_w) * 3;
  std::vector<std::uint8_t> planes(in_stride);
  std::uint8_t* plane[3] = {planes.data(), planes.data() + in_w, planes.data() + 2 * std::size_t(in_w)};
  for (int y = 0; y < rows; ++y) {
    const std::uint8_t* src = in + std::size_t(row0 + y) * in_stride;
    for (int x = 0; x < in_w; ++x) {
      plane[0][x] = src[3 * x];
      plane[1][x] = src[3 * x + 1];
      plane[2][x] = src[3 * x + 2];
    }
    std::uint8_t* dst = out + std::size_t(y) * out_stride;
    for (int xx = 0; xx < out_w; ++xx) {
      const int xmin = c.bounds[2 * std::size_t(xx)], xmax = c.bounds[2 * std::size_t(xx) + 1];
      const std::uint32_t* k = reinterpret_cast<const std::uint32_t*>(&c.k[std::size_t(xx) * std::size_t(c.ksize)]);
      for (int b = 0; b < 3; ++b) {
        const std::uint8_t* p = plane[b] + xmin;
        std::uint32_t s = half;
        for (int x = 0; x < xmax; ++x) s += std::uint32_t(p[x]) * k[x];
        dst[3 * xx + b] = clip8(s);
      }
    }
  }
}

/// ImagingResampleVertical_8bpc: every byte of a row is an independent sample.
void resample_vertical(const std::uint8_t* in, int width, std::uint8_t* out, int out_h, const Coeffs& c) {
  const std::size_t stride = std::size_t(width) * 3;
  const std::uint32_t half = 1u << (kPrecisionBits - 1);
  std::vector<std::uint32_t> acc(stride);
  for (int yy = 0; yy < out_h; ++yy) {
    const int ymin = c.bounds[2 * std::size_t(yy)], ymax = c.bounds[2 * std::size_t(yy) + 1];
    const std::int32_t* k = &c.k[std::size_t(yy) * std::size_t(c.ksize)];
    std::fill(acc.begin(), acc.end(), half);
    for (int y = 0; y < ymax; ++y) {
      const std::uint8_t* src = in + std::size_t(ymin + y) * stride;
      const std::uint32_t ky = std::uint32_t(k[y]);
      for (std::size_t i = 0; i < stride; ++i) acc[i] += src[i] * ky;
    }
    std::uint8_t* dst = out + std::size_t(yy) * stride;
    for (std::size_t i = 0; i < stride; ++i) dst[i] = clip8(acc[i]);
  }
}

/// _resize's NEAREST branch: ImagingTransform(AFFINE, a = [w_in / w, 0, 0, 0, h_in / h, 0], fill=1),
/// which is ImagingScaleAffine.
Image resize_nearest(const Image& im, int width, int height) {
  const double a0 = double(float(im.width) - 0.0f) / width;
  const double a4 = double(float(im.height) - 0.0f) / height;
  Image out(width, height);  // zero-filled, as fill=1 does
  std::vector<int> xintab(std::size_t(width), 0);
  int xmin = width, xmax = 0;
  double xo = 0.0 + a0 * 0.5;
  for (int x = 0; x < width; ++x) {
    const int xin = xo < 0.0 ? -1 : int(xo);
    if (xin >= 0 && xin < im.width) {
      xmax = x + 1;
      if (x < xmin) xmin = x;
      xintab[std::size_t(x)] = xin;
    }
    xo += a0;
  }
  double yo = 0.0 + a4 * 0.5;
  for (int y = 0; y < height; ++y) {
    const int yi = yo < 0.0 ? -1 : int(yo);
    if (yi >= 0 && yi < im.height) {
      const std::uint8_t* src = im.row(yi);
      std::uint8_t* dst = out.row(y);
      for (int x = xmin; x < xmax; ++x) std::memcpy(dst + 3 * std::size_t(x), src + 3 * std::size_t(xintab[std::size_t(x)]), 3);
    }
    yo += a4;
  }
  return out;
}

}  // namespace

Image resize_image(const Image& image, int width, int height, Resample filter) {
  if (image.empty()) throw InvalidArgument("resize: empty input image");
  if (image.rgb.size() != image.num_pixels() * 3)
    throw InvalidArgument("resize: image buffer holds " + std::to_string(image.rgb.size()) + " bytes, expected " +
                          std::to_string(image.num_pixels() * 3));
  if (width <= 0 || height <= 0)
    throw InvalidArgument("resize: target size " + std::to_string(width) + "x" + std::to_string(height) +
                          " must be positive");
  if (width == image.width && height == image.height) return image;  // Image.resize returns a copy
  if (filter == Resample::Nearest) return resize_nearest(image, width, height);

  const Filter f = filter_for(filter);
  const bool need_horizontal = width != image.width;
  const bool need_vertical = height != image.height;

  Coeffs vert = precompute_coeffs(image.height, 0.0f, float(image.height), height, f);
  const int ybox_first = vert.bounds[0];
  const int ybox_last = vert.bounds[2 * std::size_t(height) - 2] + vert.bounds[2 * std::size_t(height) - 1];

  Image tmp;
  const Image* src = &image;
  if (need_horizontal) {
    Coeffs horiz = precompute_coeffs(image.width, 0.0f, float(image.width), width, f);
    for (int i = 0; i < height; ++i) vert.bounds[2 * std::size_t(i)] -= ybox_first;
    tmp = Image(width, ybox_last - ybox_first);
    // rows are independent: split them over the thread pool (same arithmetic, same bits)
    const int rows = ybox_last - ybox_first;
    const std::int64_t work_per_row = std::int64_t(width) * horiz.ksize;
    const std::int64_t grain = std::max<std::int64_t>(1, 200000 / std::max<std::int64_t>(1, work_per_row));
    parallel_for(0, rows, grain, [&](std::int64_t r0, std::int64_t r1) {
      resample_horizontal(image.rgb.data(), image.width, ybox_first + int(r0), int(r1 - r0),
                          tmp.rgb.data() + std::size_t(r0) * std::size_t(width) * 3, width, horiz);
    });
    src = &tmp;
  }
  if (!need_vertical) return tmp;  // need_horizontal must hold here (the sizes differ)
  Image out(width, height);
  resample_vertical(src->rgb.data(), width, out.rgb.data(), height, vert);
  return out;
}

}  // namespace instructblip

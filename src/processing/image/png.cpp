// PNG decoding: chunk walk with Pillow 9.4's checks, inflate through stb_image's zlib into a
// fixed-size buffer, unfiltering (Adam7 too) and conversion to RGB with Pillow's rules per mode.
#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <stb_image.h>

#include "image_internal.hpp"

namespace instructblip::image_detail {

namespace {

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
// Chunk checks, unfiltering, conversion to RGB
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

}  // namespace

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

}  // namespace instructblip::image_detail

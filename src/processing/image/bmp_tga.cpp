// BMP and TGA decoding: stb_image unpacks true-colour and grey pixels; Pillow 9.4's rules are
// applied for palette BMPs (raw and RLE), 16-bit BMP channel expansion, colour-mapped TGA palettes
// and right-to-left TGA rows.
#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <stb_image.h>

#include "image_internal.hpp"

namespace instructblip::image_detail {

namespace {

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

/// Pillow 9.4's BmpRleDecoder: the palette indices of an RLE8 (or, if `rle4`, RLE4) bitmap in file
/// row order, from `pos` on. It stops once w * h indices are produced, at an end-of-bitmap code or
/// at the end of the file. Its quirks are kept: runs are clipped to the row only in encoded mode;
/// an end-of-line pads with index 0; a delta consumes four bytes after its escape (Pillow reads
/// two, then the (right, up) pair) and skips right + up * w pixels; an absolute run is followed
/// by a skip to an even file offset, and in RLE4 holds count / 2 bytes (an odd last pixel is lost).
/// Fewer than w * h indices is Pillow's "not enough image data".
std::vector<std::uint8_t> bmp_rle_indices(const std::uint8_t* d, std::size_t n, std::size_t pos, std::uint64_t w,
                                          std::uint64_t h, bool rle4, const std::string& name) {
  const std::uint64_t total = w * h;
  std::vector<std::uint8_t> data;
  data.reserve(std::size_t(total));
  std::uint64_t x = 0;
  while (data.size() < total) {
    if (pos >= n || n - pos < 2) break;
    const unsigned count = d[pos], code = d[pos + 1];
    pos += 2;
    if (count) {  // encoded mode: `count` pixels of one index (RLE4: two alternating indices)
      const std::uint64_t k = x + count > w ? (x < w ? w - x : 0) : count;
      for (std::uint64_t i = 0; i < k; ++i)
        data.push_back(std::uint8_t(!rle4 ? code : i % 2 == 0 ? code >> 4 : code & 15));
      x += k;
    } else if (code == 0) {  // end of line
      while (data.size() % w) data.push_back(0);
      x = 0;
    } else if (code == 1) {  // end of bitmap
      break;
    } else if (code == 2) {  // delta
      if (n - pos < 2) break;
      pos += 2;
      if (n - pos < 2) fail(name, "BMP image file is truncated (RLE delta)");
      const std::uint64_t right = d[pos], up = d[pos + 1];
      pos += 2;
      data.insert(data.end(), std::size_t(right + up * w), std::uint8_t(0));
      x = data.size() % w;
    } else {  // absolute mode: `code` literal pixels
      const std::size_t want = rle4 ? code / 2 : code;
      const std::size_t got = std::min(want, n - pos);
      for (std::size_t i = 0; i < got; ++i) {
        if (rle4) {
          data.push_back(std::uint8_t(d[pos + i] >> 4));
          data.push_back(std::uint8_t(d[pos + i] & 15));
        } else {
          data.push_back(d[pos + i]);
        }
      }
      pos += got;
      if (got < want) break;
      x += code;
      if (pos % 2) ++pos;
    }
  }
  if (data.size() < total) fail(name, "BMP image file is truncated (not enough RLE image data)");
  return data;
}

/// Palette BMPs (1, 4, 8 bits, uncompressed, RLE8 or RLE4) as Pillow's BmpImagePlugin reads them:
/// `colors` (biClrUsed, or 1 << bits) BGRX entries right after the header, Pillow's grey ramp
/// beyond them, rows padded to 4 bytes, bottom-up unless the height is negative. (stb_image would
/// take the palette size from the pixel offset and leave entries past it uninitialised, and
/// refuses RLE.)
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
  // Pillow decodes RLE8 / RLE4 whatever the pixel depth says; 1-bit RLE (Pillow's mode "1" with
  // a raw mode it cannot unpack, unless the palette has colour) is left out.
  const bool rle = (compression == 1 || compression == 2) && bits != 1;
  if (compression != 0 && !rle)
    fail(name, "unsupported BMP compression " + std::to_string(compression) + " for " + std::to_string(bits) +
                   "-bit pixels");
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
  // Pillow: an offset pointing at the palette means "after it" (counted as 4-byte entries)
  if (offset == pal_at) offset += 4 * std::size_t(colors);
  if (offset == 0) offset = pal_at + entry * colors;
  if (rle) {
    if (offset > n) fail(name, "BMP image file is truncated");
    const auto idx = bmp_rle_indices(d, n, offset, std::uint64_t(w), std::uint64_t(h), compression == 2, name);
    Image out = blank_image(std::uint32_t(w), std::uint32_t(h));
    for (std::int64_t r = 0; r < h; ++r) {
      const std::uint8_t* row = idx.data() + std::size_t(r) * std::size_t(w);
      std::uint8_t* dst = out.row(int(top_down ? r : h - 1 - r));
      for (std::int64_t x = 0; x < w; ++x) std::memcpy(dst + 3 * x, &pal[3 * std::size_t(row[x])], 3);
    }
    return out;
  }
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

}  // namespace

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

/// Pillow's TgaImagePlugin header checks (it has no signature).
bool looks_like_tga(const std::uint8_t* d, std::size_t n) {
  if (n < 18) return false;
  const int colormaptype = d[1], imagetype = d[2], depth = d[16];
  const int w = le16(d + 12), h = le16(d + 14);
  if (colormaptype > 1 || w <= 0 || h <= 0) return false;
  if (depth != 1 && depth != 8 && depth != 16 && depth != 24 && depth != 32) return false;
  return imagetype == 1 || imagetype == 2 || imagetype == 3 || imagetype == 9 || imagetype == 10 || imagetype == 11;
}

namespace {

/// Colour-mapped TGA as Pillow's TgaImagePlugin reads it: mode P with 8-bit indices and a palette
/// of `first entry` zeros followed by the file's entries (16-bit "BGR;15" or 24-bit "BGR"; Pillow
/// cannot use 32-bit entries), Pillow's grey ramp beyond them. stb_image would skip `first entry`
/// bytes instead and map indices past the map to entry 0, so it only unpacks the indices here: the
/// file is re-labelled as an 8-bit grey TGA (same pixel data, raw or RLE) and decoded as such.
Image decode_tga_colormapped(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt,
                             const std::string& name) {
  const std::size_t id_len = d[0];
  const unsigned first = le16(d + 3), count = le16(d + 5), entry_bits = d[7];
  if (d[1] != 1) fail(name, "colour-mapped TGA without a colour map");
  if (d[16] != 8) fail(name, "unsupported TGA colour-mapped pixel depth " + std::to_string(d[16]));
  if (entry_bits != 16 && entry_bits != 24)
    fail(name, "unsupported TGA colour map entry size " + std::to_string(entry_bits));
  const std::size_t entry = entry_bits / 8, map_at = 18 + id_len, data_at = map_at + entry * count;
  if (n < data_at) fail(name, "TGA image file is truncated (colour map)");

  std::array<std::uint8_t, 768> pal;
  for (int i = 0; i < 256; ++i) pal[3 * i] = pal[3 * i + 1] = pal[3 * i + 2] = std::uint8_t(i);
  for (unsigned i = 0; i < std::min(first, 256u); ++i) pal[3 * i] = pal[3 * i + 1] = pal[3 * i + 2] = 0;
  for (unsigned k = 0; k < count && first + k < 256; ++k) {
    const std::uint8_t* e = d + map_at + entry * k;
    std::uint8_t* o = &pal[3 * std::size_t(first + k)];
    if (entry == 3) {
      o[0] = e[2];
      o[1] = e[1];
      o[2] = e[0];
    } else {  // "BGR;15": 5 bits each, red highest, scaled by 255 / 31
      const unsigned v = le16(e);
      o[0] = std::uint8_t(((v >> 10) & 31) * 255 / 31);
      o[1] = std::uint8_t(((v >> 5) & 31) * 255 / 31);
      o[2] = std::uint8_t((v & 31) * 255 / 31);
    }
  }

  std::vector<std::uint8_t> grey(d, d + 18);
  grey.insert(grey.end(), d + data_at, d + n);
  grey[0] = 0;                   // no image id
  grey[1] = 0;                   // no colour map
  grey[2] = d[2] == 9 ? 11 : 3;  // grey, RLE or raw as the original
  std::fill(grey.begin() + 3, grey.begin() + 8, std::uint8_t(0));  // colour map specification
  Image img = decode_with_stb(grey.data(), grey.size(), opt, name, "TGA");
  for (std::size_t i = 0; i < img.rgb.size(); i += 3) std::memcpy(&img.rgb[i], &pal[3 * std::size_t(img.rgb[i])], 3);
  return img;
}

}  // namespace

Image decode_tga(const std::uint8_t* d, std::size_t n, const ImageLoadOptions& opt, const std::string& name) {
  const bool colormapped = d[2] == 1 || d[2] == 9;
  Image img = colormapped ? decode_tga_colormapped(d, n, opt, name) : decode_with_stb(d, n, opt, name, "TGA");
  // Descriptor bit 4: pixels stored right to left. stb_image ignores it; Pillow flips the image.
  if (d[17] & 0x10) {
    for (int y = 0; y < img.height; ++y) {
      std::uint8_t* row = img.row(y);
      for (int a = 0, b = img.width - 1; a < b; ++a, --b) std::swap_ranges(row + 3 * a, row + 3 * a + 3, row + 3 * b);
    }
  }
  return img;
}

}  // namespace instructblip::image_detail

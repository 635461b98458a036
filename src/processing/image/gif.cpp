// GIF decoding: the first frame as Pillow 9.4 builds it (mode P / L on a canvas filled with the
// transparency index or 0, palette lookup with Pillow's grey-ramp default palette).
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "image_internal.hpp"

namespace instructblip::image_detail {

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
  // Pillow's decoder refuses an empty tile ("tile cannot extend outside image")
  if (fw == 0 || fh == 0)
    fail(name, "GIF first frame is empty (" + std::to_string(fw) + "x" + std::to_string(fh) + ")");
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

}  // namespace instructblip::image_detail

// PNM (P1-P6) decoding as Pillow 9.4's PpmImagePlugin reads it.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "image_internal.hpp"

// Sample scaling repeats Python's float arithmetic (value / maxval * out_max, each step rounded):
// keep the compiler from fusing it under -march=native, as resize.cpp does.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace instructblip::image_detail {

namespace {

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
}  // namespace

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

}  // namespace instructblip::image_detail

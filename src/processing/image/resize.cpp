// Pillow 9.4's Image.resize for RGB images: libImaging/Resample.c (separable fixed-point
// convolution) and the nearest-neighbour affine scaler of Geometry.c.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "instructblip/core/error.hpp"
#include "instructblip/core/thread_pool.hpp"
#include "instructblip/processing/image.hpp"

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

#pragma once
// Row quantisation, dequantisation and the Panels index maps of WeightMatrix (weights.hpp gives
// the formats). Portable code, used at construction and by the reference kernels. Not installed.
#include <cstdint>

#include "instructblip/ops/weights.hpp"
#include "kernels.hpp"

namespace instructblip::ops::detail {

static inline std::int64_t round_up(std::int64_t a, std::int64_t b) { return (a + b - 1) / b * b; }

/// One row: K floats -> Kp int8 + Kp/32 f16 scales (zero padding after K). Throws TensorError for a
/// weight that is not finite.
void quantize_row_q8(const float* w, std::int64_t K, std::int64_t Kp, std::int8_t* qs, std::uint16_t* sc);
void quantize_row_q4(const float* w, std::int64_t K, std::int64_t Kp, std::uint8_t* qs, std::uint16_t* sc);

/// Code of weight k in a Q4 row.
static inline int q4_code(const std::uint8_t* qs, std::int64_t k) {
  const std::uint8_t byte = qs[(k / 64) * 32 + (k % 32)];
  return (k % 64) < 32 ? (byte & 0x0f) : (byte >> 4);
}

/// Element (n, k) of the Panels layouts (see weights.hpp).
static inline std::int64_t panel_index_f32(std::int64_t n, std::int64_t k, std::int64_t K) {
  return ((n / 32) * K + k) * 32 + n % 32;
}
static inline std::int64_t panel_index_bf16(std::int64_t n, std::int64_t k, std::int64_t K) {
  return (((n / 32) * ((K + 1) / 2) + k / 2) * 32 + n % 32) * 2 + (k & 1);
}

/// Q8_0 Panels (see weights.hpp): byte of element (n, k) and f16 scale of (row n, block b), for a
/// matrix of KB = Kp / 32 blocks per row.
static inline std::int64_t q8_panel_index(std::int64_t n, std::int64_t k, std::int64_t KB) {
  return (((n / 16) * KB + k / 32) * 8 + (k % 32) / 4) * 64 + (n % 16) * 4 + k % 4;
}
static inline std::int64_t q8_panel_scale_index(std::int64_t n, std::int64_t b, std::int64_t KB) {
  return ((n / 16) * KB + b) * 16 + n % 16;
}
/// Row-major Q8_0 codes / scales ([N, Kp], [N, Kp / 32]) to the Panels layout (ceil(N / 16) panels,
/// rows past N zero) and back. In parallel over panels.
void pack_q8_panels(const std::int8_t* qs, const std::uint16_t* sc, std::int64_t N, std::int64_t Kp, std::int8_t* pq,
                    std::uint16_t* ps);
void unpack_q8_panels(const std::int8_t* pq, const std::uint16_t* ps, std::int64_t N, std::int64_t Kp, std::int8_t* qs,
                      std::uint16_t* sc);

/// Row n of the matrix as float (exact).
void dequantize_row(const WeightMatrix& W, std::int64_t n, float* out);

}  // namespace instructblip::ops::detail

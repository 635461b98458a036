// Row quantisation and dequantisation (see quantize.hpp and weights.hpp).
#include "quantize.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "instructblip/core/thread_pool.hpp"

namespace instructblip::ops::detail {

namespace {

void check_finite(float amax) {
  if (!std::isfinite(amax)) throw TensorError("WeightMatrix: cannot quantise a weight that is not finite");
}

}  // namespace

// One row: K floats -> Kp int8 + Kp/32 f16 scales (zero padding after K).
void quantize_row_q8(const float* w, std::int64_t K, std::int64_t Kp, std::int8_t* qs, std::uint16_t* sc) {
  for (std::int64_t b = 0; b < Kp / QK; ++b) {
    const std::int64_t k0 = b * QK, k1 = std::min(K, k0 + QK);
    float amax = 0.f;
    for (std::int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(w[k]));
    check_finite(amax);
    const std::uint16_t d16 = f32_to_f16(amax / 127.f);
    const float d = f16_to_f32(d16);
    sc[b] = d16;
    for (std::int64_t k = k0; k < k0 + QK; ++k) {
      int q = 0;
      if (k < k1 && d != 0.f) q = int(std::nearbyint(w[k] / d));
      qs[k] = std::int8_t(std::clamp(q, -127, 127));
    }
  }
}

void quantize_row_q4(const float* w, std::int64_t K, std::int64_t Kp, std::uint8_t* qs, std::uint16_t* sc) {
  std::vector<std::uint8_t> codes(std::size_t(Kp), 8);
  for (std::int64_t b = 0; b < Kp / QK; ++b) {
    const std::int64_t k0 = b * QK, k1 = std::min(K, k0 + QK);
    float amax = 0.f, m = 0.f;
    for (std::int64_t k = k0; k < k1; ++k)
      if (std::fabs(w[k]) > amax) { amax = std::fabs(w[k]); m = w[k]; }
    check_finite(amax);
    const std::uint16_t d16 = f32_to_f16(m / -8.f);
    const float d = f16_to_f32(d16);
    sc[b] = d16;
    for (std::int64_t k = k0; k < k1; ++k) {
      int q = 0;
      if (d != 0.f) q = int(std::nearbyint(w[k] / d));
      codes[std::size_t(k)] = std::uint8_t(std::clamp(q, -8, 7) + 8);
    }
  }
  for (std::int64_t p = 0; p < Kp / 64; ++p)
    for (int j = 0; j < 32; ++j)
      qs[p * 32 + j] = std::uint8_t(codes[std::size_t(p * 64 + j)] | (codes[std::size_t(p * 64 + 32 + j)] << 4));
}

void pack_q8_panels(const std::int8_t* qs, const std::uint16_t* sc, std::int64_t N, std::int64_t Kp, std::int8_t* pq,
                    std::uint16_t* ps) {
  const std::int64_t KB = Kp / QK, P = (N + 15) / 16;
  parallel_for(0, P, 1, [&](std::int64_t p0, std::int64_t p1) {
    for (std::int64_t p = p0; p < p1; ++p)
      for (std::int64_t b = 0; b < KB; ++b) {
        std::int8_t* out = pq + (p * KB + b) * 512;
        std::uint16_t* so = ps + (p * KB + b) * 16;
        for (int r = 0; r < 16; ++r) {
          const std::int64_t n = p * 16 + r;
          so[r] = n < N ? sc[n * KB + b] : 0;
          for (int k = 0; k < 32; ++k) out[(k / 4) * 64 + r * 4 + k % 4] = n < N ? qs[n * Kp + b * QK + k] : 0;
        }
      }
  });
}

void unpack_q8_panels(const std::int8_t* pq, const std::uint16_t* ps, std::int64_t N, std::int64_t Kp, std::int8_t* qs,
                      std::uint16_t* sc) {
  const std::int64_t KB = Kp / QK;
  parallel_for(0, N, std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(1, Kp)), [&](std::int64_t n0, std::int64_t n1) {
    for (std::int64_t n = n0; n < n1; ++n) {
      for (std::int64_t b = 0; b < KB; ++b) sc[n * KB + b] = ps[q8_panel_scale_index(n, b, KB)];
      for (std::int64_t k = 0; k < Kp; ++k) qs[n * Kp + k] = pq[q8_panel_index(n, k, KB)];
    }
  });
}

// Row n of the matrix as float (exact).
void dequantize_row(const WeightMatrix& W, std::int64_t n, float* out) {
  const std::int64_t K = W.cols(), Kp = W.padded_cols();
  const bool panels = W.layout() == WeightLayout::Panels;
  switch (W.format()) {
    case WeightFormat::F32: {
      const auto* w = static_cast<const float*>(W.data());
      if (panels)
        for (std::int64_t k = 0; k < K; ++k) out[k] = w[panel_index_f32(n, k, K)];
      else
        std::memcpy(out, w + n * K, std::size_t(K) * 4);
      return;
    }
    case WeightFormat::BF16: {
      const auto* w = static_cast<const std::uint16_t*>(W.data());
      for (std::int64_t k = 0; k < K; ++k) out[k] = bf16_to_f32(panels ? w[panel_index_bf16(n, k, K)] : w[n * K + k]);
      return;
    }
    case WeightFormat::Q8_0: {
      const auto* q = static_cast<const std::int8_t*>(W.data());
      if (panels) {
        const std::int64_t KB = Kp / QK;
        for (std::int64_t k = 0; k < K; ++k)
          out[k] = f16_to_f32(W.scales()[q8_panel_scale_index(n, k / QK, KB)]) * float(q[q8_panel_index(n, k, KB)]);
        return;
      }
      const std::uint16_t* s = W.scales() + n * (Kp / QK);
      for (std::int64_t k = 0; k < K; ++k) out[k] = f16_to_f32(s[k / QK]) * float(q[n * Kp + k]);
      return;
    }
    case WeightFormat::Q4_0: {
      const auto* q = static_cast<const std::uint8_t*>(W.data()) + n * (Kp / 2);
      const std::uint16_t* s = W.scales() + n * (Kp / QK);
      for (std::int64_t k = 0; k < K; ++k) out[k] = f16_to_f32(s[k / QK]) * float(q4_code(q, k) - 8);
      return;
    }
  }
}

}  // namespace instructblip::ops::detail

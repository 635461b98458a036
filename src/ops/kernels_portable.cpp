// The portable kernel level (the build's baseline flags) and the out-of-line helpers every level
// uses (see kernels.hpp).
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsic headers (used by Eigen in a native build) build "undefined" vectors
// by self-initialisation, which -W(maybe-)uninitialized reports at every use; spurious.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "instructblip/core/thread_pool.hpp"
#include "kernels.hpp"
#include "quantize.hpp"

namespace instructblip::ops::detail {

Scratch::Scratch(std::size_t bytes) {
  const std::size_t n = (std::max<std::size_t>(bytes, 1) + 63) / 64 * 64;
  p_ = std::aligned_alloc(64, n);
  if (!p_) throw std::bad_alloc();
}
Scratch::~Scratch() { std::free(p_); }
Scratch::Scratch(Scratch&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
Scratch& Scratch::operator=(Scratch&& o) noexcept {
  if (this != &o) {
    std::free(p_);
    p_ = o.p_;
    o.p_ = nullptr;
  }
  return *this;
}

void parallel_ranges(std::int64_t begin, std::int64_t end, std::int64_t grain, RangeFn fn, const void* ctx) {
  parallel_for(begin, end, grain, [fn, ctx](std::int64_t b, std::int64_t e) { fn(ctx, b, e); });
}

void activate_portable(Activation a, float* p, std::int64_t n) {
  if (a == Activation::Relu) {
    for (std::int64_t i = 0; i < n; ++i) p[i] = p[i] > 0.f ? p[i] : (p[i] == p[i] ? 0.f : p[i]);
    return;
  }
  activate<float>(a, p, std::size_t(n));
}

void quantize_act(const float* x, std::int64_t ldx, std::int64_t M, std::int64_t K, std::int64_t Kp,
                  int offset, bool simd_extras, QuantAct& a) {
  a.M = M;
  a.Kp = Kp;
  // one buffer: q, d, negc (Q4_0) or qu (Q8_0), dxe (every part a multiple of 64 bytes)
  const bool q8 = offset == 128;
  const std::size_t nq = std::size_t(round_up(M * Kp, 64)), nd = std::size_t(round_up(M * (Kp / QK) * 4, 64));
  const std::size_t nc = simd_extras ? (q8 ? nq : std::size_t(round_up(M * (Kp / 4) * 4, 64))) : 0;
  const std::size_t ne = simd_extras ? std::size_t(M * (Kp / 64) * 16 * 4) : 0;
  const std::size_t nb = simd_extras && q8 ? std::size_t(round_up(M * (Kp / QK) * 4, 64)) : 0;
  a.mem = Scratch(nq + nd + nc + ne + nb);
  auto* base = a.mem.as<std::uint8_t>();
  a.q = reinterpret_cast<std::int8_t*>(base);
  a.d = reinterpret_cast<float*>(base + nq);
  a.negc = simd_extras && !q8 ? reinterpret_cast<std::int32_t*>(base + nq + nd) : nullptr;
  a.qu = simd_extras && q8 ? base + nq + nd : nullptr;
  a.dxe = simd_extras ? reinterpret_cast<float*>(base + nq + nd + nc) : nullptr;
  a.negb = nb ? reinterpret_cast<std::int32_t*>(base + nq + nd + nc + ne) : nullptr;
  for (std::int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    std::int8_t* q = a.q + m * Kp;
    float* d = a.d + m * (Kp / QK);
    for (std::int64_t b = 0; b < Kp / QK; ++b) {
      const std::int64_t k0 = b * QK, k1 = std::min(K, k0 + QK);
      float amax = 0.f;
      bool nan = false;
      for (std::int64_t k = k0; k < k1; ++k) {
        amax = std::max(amax, std::fabs(xr[k]));
        nan |= xr[k] != xr[k];
      }
      const float id = amax > 0.f ? 127.f / amax : 0.f;
      d[b] = nan ? std::numeric_limits<float>::quiet_NaN() : amax / 127.f;  // a NaN reaches the output
      for (std::int64_t k = k0; k < k0 + QK; ++k) {
        float v = k < k1 ? xr[k] * id : 0.f;
        if (!(std::fabs(v) <= 127.f)) v = v > 0.f ? 127.f : (v < 0.f ? -127.f : 0.f);  // inf / NaN guard
        q[k] = std::int8_t(std::nearbyint(v));
      }
    }
    if (simd_extras) {
      if (q8) {
        std::uint8_t* qu = a.qu + m * Kp;
        for (std::int64_t k = 0; k < Kp; ++k) qu[k] = std::uint8_t(int(q[k]) + 128);
        std::int32_t* nb_m = a.negb + m * (Kp / QK);
        for (std::int64_t b = 0; b < Kp / QK; ++b) {
          std::int32_t sum = 0;
          for (std::int64_t k = b * QK; k < (b + 1) * QK; ++k) sum += q[k];
          nb_m[b] = -128 * sum;
        }
      } else {
        std::int32_t* nc = a.negc + m * (Kp / 4);
        for (std::int64_t g = 0; g < Kp / 4; ++g)
          nc[g] = -offset * (int(q[4 * g]) + q[4 * g + 1] + q[4 * g + 2] + q[4 * g + 3]);
      }
      float* e = a.dxe + m * (Kp / 64) * 16;
      for (std::int64_t p = 0; p < Kp / 64; ++p)
        for (int l = 0; l < 16; ++l) e[p * 16 + l] = d[2 * p + l / 8];
    }
  }
}

}  // namespace instructblip::ops::detail

#define IB_LEVEL_NS portable
#include "kernels_generic.inc"

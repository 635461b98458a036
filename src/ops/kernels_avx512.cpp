// The AVX-512 kernel level: AVX-512 F / BW / VL / DQ + VNNI (x86-64-v4 + VNNI), and the
// AVX512-BF16 GEMM, whose instructions run only when the CPU has them (the dispatcher asks for
// GemmKind::Dpbf16 only then). This unit is compiled with its own flags (CMakeLists.txt), so a
// portable build carries it too; linear.cpp calls it only when the CPU reports the level.
// See kernels.hpp for the rules the per-level units follow.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsic headers build "undefined" vectors by self-initialisation, which
// -W(maybe-)uninitialized reports at every use; the warning is spurious.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "kernels.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__AVX512VNNI__) && defined(__AVX512BF16__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define IB_AVX512_LEVEL 1
#include <immintrin.h>
#define IB_AVX512_FN
#include "avx512_util.hpp"
#endif

namespace instructblip::ops::detail::avx512 {

#ifndef IB_AVX512_LEVEL

bool compiled() { return false; }
void gemv(const WeightMatrix&, const GemvArgs&, const QuantAct*, bool) {
  throw InvalidArgument("ops: this build has no AVX-512 kernels");
}
void gemm(const WeightMatrix&, const GemvArgs&, GemmKind) { throw InvalidArgument("ops: this build has no AVX-512 kernels"); }
void activate(Activation, float*, std::int64_t) { throw InvalidArgument("ops: this build has no AVX-512 kernels"); }
void softmax_row(float*, std::int64_t) { throw InvalidArgument("ops: this build has no AVX-512 kernels"); }
void pack_panel(const void*, std::int64_t, std::int64_t, bool, void*) {
  throw InvalidArgument("ops: this build has no AVX-512 kernels");
}

#else

namespace {

constexpr std::int64_t round_up(std::int64_t a, std::int64_t b) { return (a + b - 1) / b * b; }

template <typename F>
void par(std::int64_t begin, std::int64_t end, std::int64_t grain, const F& f) {
  parallel_ranges(begin, end, grain, [](const void* c, std::int64_t b, std::int64_t e) { (*static_cast<const F*>(c))(b, e); },
                  &f);
}

// ---- vectorised activations (the fused epilogue)
// e^x, ~1 ulp (Cephes expf polynomial on x - n ln2, |r| <= ln2 / 2; scalef handles under- /
// overflow).
inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) with erfc(t) = s P(s) e^{-t^2}, s = 1 / (1 + p t)
// (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7), t = |x| / sqrt 2: h = 0.5 x erfc(t) is
// x Phi(x) for x < 0 and x - x Phi(x) for x > 0, so both tails keep their relative accuracy.
// |x| is clamped to 12 inside h so that no intermediate is subnormal (subnormal results cost a
// microcode assist each - 30x slower on large activations); x * Phi(x) < 3e-32 beyond, so
// x < -12 gives 0 (and -inf 0), x > 12 gives x exactly (+inf inf); NaN propagates.
inline __m512 gelu_avx512(__m512 x) {
  // (max / min return their second operand when one is NaN: x's NaN propagates)
  const __m512 xc = _mm512_min_ps(_mm512_set1_ps(12.f), _mm512_max_ps(_mm512_set1_ps(-12.f), x));
  const __m512 t = _mm512_mul_ps(_mm512_abs_ps(xc), _mm512_set1_ps(0.70710678118654752f));
  const __m512 s = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_fmadd_ps(t, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.f)));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, s);
  const __m512 e = _mm512_mul_ps(p, exp_avx512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), t), t)));
  const __m512 h = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), xc), e);
  const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
  const __mmask16 far_neg = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-12.f), _CMP_LT_OQ);
  return _mm512_maskz_mov_ps(_knot_mask16(far_neg), _mm512_mask_sub_ps(h, pos, x, h));  // NaN: h is NaN
}

void gelu_n(float* x, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, gelu_avx512(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 k = mask16(n - i);
    _mm512_mask_storeu_ps(x + i, k, gelu_avx512(_mm512_maskz_loadu_ps(k, x + i)));
  }
}

void apply_activation(Activation a, float* p, std::int64_t n) {
  if (a == Activation::Gelu) gelu_n(p, n);
  else activate_portable(a, p, n);
}

// The fused epilogue on the block y[m0, m1) x [n0, n1) that a task has just finished.
inline void activate_block(const GemvArgs& g, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1) {
  if (!g.act || n1 <= n0) return;
  for (std::int64_t m = m0; m < m1; ++m) apply_activation(*g.act, g.y + m * g.ldy + n0, n1 - n0);
}

// The streaming kernels read each weight once; a software prefetch this far ahead of the read
// pointer (into the next rows for row-major data) keeps enough misses in flight to approach the
// read bandwidth from one stream per thread (+50-70% over the hardware prefetcher alone here).
#ifndef IB_GEMV_PREFETCH
#define IB_GEMV_PREFETCH 6144
#endif
inline void prefetch_ahead(const void* p) {
  _mm_prefetch(static_cast<const char*>(p) + IB_GEMV_PREFETCH, _MM_HINT_T0);
}

// ---- F32 streaming kernel: MB activation rows against weight rows [n0, n1).
template <int MB>
void gemv_f32_avx512(const float* Wd, const GemvArgs& g, std::int64_t m0, std::int64_t n0, std::int64_t n1) {
  const std::int64_t K = g.K;
  const float* xs[MB];
  for (int m = 0; m < MB; ++m) xs[m] = g.x + (m0 + m) * g.ldx;
  for (std::int64_t n = n0; n < n1; ++n) {
    const float* w = Wd + n * K;
    __m512 a0[MB], a1[MB];
    for (int m = 0; m < MB; ++m) a0[m] = a1[m] = _mm512_setzero_ps();
    std::int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      prefetch_ahead(w + k);
      prefetch_ahead(w + k + 16);
      const __m512 w0 = _mm512_loadu_ps(w + k), w1 = _mm512_loadu_ps(w + k + 16);
      for (int m = 0; m < MB; ++m) {
        a0[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xs[m] + k), a0[m]);
        a1[m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xs[m] + k + 16), a1[m]);
      }
    }
    for (; k < K; k += 16) {
      const __mmask16 mk = mask16(K - k);
      const __m512 w0 = _mm512_maskz_loadu_ps(mk, w + k);
      for (int m = 0; m < MB; ++m) a0[m] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mk, xs[m] + k), a0[m]);
    }
    const float b = g.bias ? g.bias[n] : 0.f;
    for (int m = 0; m < MB; ++m) g.y[(m0 + m) * g.ldy + n] = _mm512_reduce_add_ps(_mm512_add_ps(a0[m], a1[m])) + b;
  }
}

// ---- BF16 streaming kernel. Activations are pre-arranged per 32-chunk as [16 even | 16 odd]
// (xe[m][Kp32]) so that a 64-byte load of 32 bf16 weights widens to two f32 vectors with one
// shift (even elements) and one mask (odd elements).
void arrange_bf16_act(const float* x, std::int64_t ldx, std::int64_t M, std::int64_t K, std::int64_t K32, float* xe) {
  for (std::int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    float* o = xe + m * K32;
    for (std::int64_t c = 0; c < K32; c += 32)
      for (int j = 0; j < 16; ++j) {
        o[c + j] = c + 2 * j < K ? xr[c + 2 * j] : 0.f;
        o[c + 16 + j] = c + 2 * j + 1 < K ? xr[c + 2 * j + 1] : 0.f;
      }
  }
}

template <int MB>
void gemv_bf16_avx512(const std::uint16_t* Wd, const GemvArgs& g, const float* xe, std::int64_t K32, std::int64_t m0,
                      std::int64_t n0, std::int64_t n1) {
  const std::int64_t K = g.K;
  const __m512i hi = _mm512_set1_epi32(int(0xffff0000u));
  for (std::int64_t n = n0; n < n1; ++n) {
    const std::uint16_t* w = Wd + n * K;
    __m512 a0[MB], a1[MB];
    for (int m = 0; m < MB; ++m) a0[m] = a1[m] = _mm512_setzero_ps();
    auto step = [&](__m512i wv, std::int64_t k) {
      const __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(wv, 16));
      const __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(wv, hi));
      for (int m = 0; m < MB; ++m) {
        const float* xm = xe + (m0 + m) * K32 + k;
        a0[m] = _mm512_fmadd_ps(we, _mm512_load_ps(xm), a0[m]);
        a1[m] = _mm512_fmadd_ps(wo, _mm512_load_ps(xm + 16), a1[m]);
      }
    };
    std::int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      prefetch_ahead(w + k);
      step(_mm512_loadu_si512(w + k), k);
    }
    if (k < K) step(_mm512_maskz_loadu_epi16(mask32(K - k), w + k), k);
    const float b = g.bias ? g.bias[n] : 0.f;
    for (int m = 0; m < MB; ++m) g.y[(m0 + m) * g.ldy + n] = _mm512_reduce_add_ps(_mm512_add_ps(a0[m], a1[m])) + b;
  }
}

// ---- Q8_0 / Q4_0 streaming kernels. One 512-bit step covers a pair of blocks (64 weights).
// VNNI, Q8_0: the activations as unsigned bytes (x + 128, QuantAct::qu) times the signed weights
// with vpdpbusd, the accumulator initialised with -128 * sum(w) per 4 bytes, computed once per
// weight step (a vpdpbusd of 128s) and shared by every activation row: exactly sum(x * w).
// VNNI, Q4_0: the weights' codes c = q + 8 (unsigned) times signed activation bytes, the
// accumulator initialised with -8 * sum(x) per 4 bytes (negc). Without VNNI (AVX-512BW): signed weights, the sign
// of x moved onto w, |x| * (+-w) with vpmaddubsw (no saturation: 2 * 127 * 127 < 32767) and
// vpmaddwd with ones.
template <bool Q4, bool VNNI>
inline __m512i q_weights(const std::uint8_t* p) {
  if constexpr (Q4) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    __m512i c = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
    c = _mm512_and_si512(c, _mm512_set1_epi8(0x0f));
    if constexpr (!VNNI) c = _mm512_sub_epi8(c, _mm512_set1_epi8(8));
    return c;
  } else {
    return _mm512_loadu_si512(p);  // signed, with or without VNNI
  }
}

template <bool VNNI>
inline __m512i q_dot(__m512i negc, __m512i w, __m512i x) {
  if constexpr (VNNI) return _mm512_dpbusd_epi32(negc, w, x);
  (void)negc;
  const __m512i ax = _mm512_abs_epi8(x);
  const __m512i sw = _mm512_mask_sub_epi8(w, _mm512_movepi8_mask(x), _mm512_setzero_si512(), w);
  return _mm512_madd_epi16(_mm512_maddubs_epi16(ax, sw), _mm512_set1_epi16(1));
}

template <bool Q4, bool VNNI, int MB>
void gemv_q_avx512(const WeightMatrix& W, const GemvArgs& g, const QuantAct& qa, std::int64_t m0, std::int64_t n0,
                   std::int64_t n1) {
  const std::int64_t Kp = W.padded_cols(), P = Kp / 64;
  const std::int64_t row_bytes = Q4 ? Kp / 2 : Kp, step_bytes = Q4 ? 32 : 64;
  const auto* base = static_cast<const std::uint8_t*>(W.data());
  const __m512i idx[4] = {_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                          _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2),
                          _mm512_set_epi32(5, 5, 5, 5, 5, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4),
                          _mm512_set_epi32(7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6)};
  const std::int8_t* xq[MB];
  const std::int32_t* nc[MB];
  const float* dx[MB];
  // Q8_0 with VNNI: unsigned activations times signed weights (see above)
  constexpr bool kSwapped = VNNI && !Q4;
  for (int m = 0; m < MB; ++m) {
    xq[m] = kSwapped ? reinterpret_cast<const std::int8_t*>(qa.qu) + (m0 + m) * Kp : qa.q + (m0 + m) * Kp;
    nc[m] = VNNI && Q4 ? qa.negc + (m0 + m) * (Kp / 4) : nullptr;
    dx[m] = qa.dxe + (m0 + m) * P * 16;
  }
  // One activation row (decoding): two weight rows per pass share the activation loads.
  constexpr int NR = MB == 1 ? 2 : 1;
  std::int64_t n = n0;
  auto rows = [&](auto nr_c) {
    constexpr int R = decltype(nr_c)::value;
    const std::uint8_t* w[R];
    const std::uint16_t* s[R];
    __m512 a0[R][MB], a1[R][MB];
    for (int r = 0; r < R; ++r) {
      w[r] = base + (n + r) * row_bytes;
      s[r] = W.scales() + (n + r) * (Kp / QK);
      for (int m = 0; m < MB; ++m) a0[r][m] = a1[r][m] = _mm512_setzero_ps();
    }
    auto pair = [&](std::int64_t p, const __m512* sw, __m512 (*acc)[MB]) {
      __m512i wv[R], negw[R];
      for (int r = 0; r < R; ++r) {
        prefetch_ahead(w[r] + p * step_bytes);
        wv[r] = q_weights<Q4, VNNI>(w[r] + p * step_bytes);
        if constexpr (kSwapped)
          negw[r] = _mm512_sub_epi32(_mm512_setzero_si512(),
                                     _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(char(0x80)), wv[r]));
      }
      for (int m = 0; m < MB; ++m) {
        const __m512i negc = VNNI && Q4 ? _mm512_load_si512(nc[m] + p * 16) : _mm512_setzero_si512();
        const __m512i xv = _mm512_load_si512(xq[m] + p * 64);
        const __m512 dxv = _mm512_load_ps(dx[m] + p * 16);
        for (int r = 0; r < R; ++r) {
          const __m512i d = kSwapped ? _mm512_dpbusd_epi32(negw[r], xv, wv[r]) : q_dot<VNNI>(negc, wv[r], xv);
          acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sw[r], dxv), acc[r][m]);
        }
      }
    };
    std::int64_t p = 0;
    for (; p + 4 <= P; p += 4) {
      __m512 s8[R];
      for (int r = 0; r < R; ++r)
        s8[r] = _mm512_cvtph_ps(_mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s[r] + 2 * p))));
      for (int j = 0; j < 4; ++j) {
        __m512 sw[R];
        for (int r = 0; r < R; ++r) sw[r] = _mm512_permutexvar_ps(idx[j], s8[r]);
        pair(p + j, sw, j % 2 ? a1 : a0);
      }
    }
    for (; p < P; ++p) {
      __m512 sw[R];
      for (int r = 0; r < R; ++r) {
        std::uint32_t two;
        std::memcpy(&two, s[r] + 2 * p, 4);
        sw[r] = _mm512_permutexvar_ps(idx[0], _mm512_cvtph_ps(_mm256_zextsi128_si256(_mm_cvtsi32_si128(int(two)))));
      }
      pair(p, sw, a0);
    }
    for (int r = 0; r < R; ++r) {
      const float b = g.bias ? g.bias[n + r] : 0.f;
      for (int m = 0; m < MB; ++m)
        g.y[(m0 + m) * g.ldy + n + r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r][m], a1[r][m])) + b;
    }
  };
  for (; n + NR <= n1; n += NR) rows(std::integral_constant<int, NR>{});
  for (; n < n1; ++n) rows(std::integral_constant<int, 1>{});
}

// ---- Q8_0 Panels streaming kernel (weights.hpp): 16 outputs of a panel per 512-bit register.
// Per block of 32 weights and activation row: eight dot products of 4 weights x 4 activation
// bytes into 16 int32 lanes, each with the activation group broadcast (VNNI: vpdpbusd of the
// weights as unsigned bytes w + 128 times the signed activations, the accumulator started at
// -128 * sum of the block's activations (QuantAct::negb); AVX-512BW: |x| times w with the sign
// of x, vpmaddubsw + vpmaddwd) - exactly the block's sum(w * x) - then one conversion and one
// FMA with scale_w * scale_x per 16 outputs. Every output is computed the same way for any
// number of rows, panels per call or threads: acc = fma(float(dot_b), scale_w * scale_x, acc)
// block by block, plus the bias at the end. MB activation rows x NG panels per pass.
template <bool VNNI, int MB, int NG>
void gemv_q8_panels_avx512(const WeightMatrix& W, const GemvArgs& g, const QuantAct& qa, std::int64_t m0,
                           std::int64_t p) {
  const std::int64_t Kp = W.padded_cols(), KB = Kp / QK, N = W.rows();
  const auto* wbase = static_cast<const std::int8_t*>(W.data()) + p * KB * 512;
  const std::uint16_t* sbase = W.scales() + p * KB * 16;
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  __m512 acc[MB][NG];
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 16
    for (int n = 0; n < NG; ++n) acc[m][n] = _mm512_setzero_ps();
  for (std::int64_t b = 0; b < KB; ++b) {
    __m512i ia[MB][NG];
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m) {
      const __m512i c = VNNI ? _mm512_set1_epi32(qa.negb[(m0 + m) * KB + b]) : _mm512_setzero_si512();
#pragma GCC unroll 16
      for (int n = 0; n < NG; ++n) ia[m][n] = c;
    }
    const std::int8_t* xb = qa.q + m0 * Kp + b * QK;
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
#pragma GCC unroll 16
      for (int n = 0; n < NG; ++n) {
        const std::int8_t* wp = wbase + (n * KB + b) * 512 + j * 64;
        prefetch_ahead(wp);
        const __m512i w = _mm512_load_si512(wp);
        const __m512i wu = VNNI ? _mm512_xor_si512(w, flip) : w;
#pragma GCC unroll 16
        for (int m = 0; m < MB; ++m) {
          std::int32_t x4;
          std::memcpy(&x4, xb + m * Kp + 4 * j, 4);
          const __m512i xv = _mm512_set1_epi32(x4);
          if constexpr (VNNI) {
            ia[m][n] = _mm512_dpbusd_epi32(ia[m][n], wu, xv);
          } else {
            const __m512i sw = _mm512_mask_sub_epi8(w, _mm512_movepi8_mask(xv), _mm512_setzero_si512(), w);
            const __m512i d = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(xv), sw), _mm512_set1_epi16(1));
            ia[m][n] = _mm512_add_epi32(ia[m][n], d);
          }
        }
      }
    }
    __m512 ws[NG];
#pragma GCC unroll 16
    for (int n = 0; n < NG; ++n)
      ws[n] = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(sbase + (n * KB + b) * 16)));
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m) {
      const __m512 d = _mm512_set1_ps(qa.d[(m0 + m) * KB + b]);
#pragma GCC unroll 16
      for (int n = 0; n < NG; ++n)
        acc[m][n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[m][n]), _mm512_mul_ps(ws[n], d), acc[m][n]);
    }
  }
#pragma GCC unroll 16
  for (int n = 0; n < NG; ++n) {
    const std::int64_t n0 = (p + n) * 16;
    const __mmask16 k = mask16(N - n0);
    const __m512 bias = g.bias ? _mm512_maskz_loadu_ps(k, g.bias + n0) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m) _mm512_mask_storeu_ps(g.y + (m0 + m) * g.ldy + n0, k, _mm512_add_ps(acc[m][n], bias));
  }
}

// ---- Streaming kernels on the Panels layout: 32 outputs per panel, a broadcast activation
// times a 32-wide weight row per k (f32), or per k pair (bf16, widened by shift / mask).
template <int MB>
void gemv_panels_avx512(const WeightMatrix& W, const GemvArgs& g, std::int64_t m0, std::int64_t p0, std::int64_t p1) {
  const std::int64_t K = g.K, N = W.rows();
  const bool f32 = W.format() == WeightFormat::F32;
  const float* xs[MB];
  for (int m = 0; m < MB; ++m) xs[m] = g.x + (m0 + m) * g.ldx;
  for (std::int64_t p = p0; p < p1; ++p) {
    __m512 c0[MB], c1[MB];
    for (int m = 0; m < MB; ++m) c0[m] = c1[m] = _mm512_setzero_ps();
    if (f32) {
      const float* b = static_cast<const float*>(W.data()) + p * K * 32;
      for (std::int64_t k = 0; k < K; ++k) {
        prefetch_ahead(b + k * 32);
        prefetch_ahead(b + k * 32 + 16);
        const __m512 b0 = _mm512_load_ps(b + k * 32), b1 = _mm512_load_ps(b + k * 32 + 16);
        for (int m = 0; m < MB; ++m) {
          const __m512 a = _mm512_set1_ps(xs[m][k]);
          c0[m] = _mm512_fmadd_ps(a, b0, c0[m]);
          c1[m] = _mm512_fmadd_ps(a, b1, c1[m]);
        }
      }
    } else {
      const std::int64_t KW = (K + 1) / 2;
      const auto* b = static_cast<const std::uint32_t*>(W.data()) + p * KW * 32;
      for (std::int64_t j = 0; j < KW; ++j) {
        prefetch_ahead(b + j * 32);
        prefetch_ahead(b + j * 32 + 16);
        const __m512i v0 = _mm512_load_si512(b + j * 32), v1 = _mm512_load_si512(b + j * 32 + 16);
        const __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), e1 = _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16));
        const __m512 o0 = _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0xaaaaaaaau, v0));
        const __m512 o1 = _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0xaaaaaaaau, v1));
        const bool odd = 2 * j + 1 < K;
        for (int m = 0; m < MB; ++m) {
          const __m512 ae = _mm512_set1_ps(xs[m][2 * j]);
          const __m512 ao = _mm512_set1_ps(odd ? xs[m][2 * j + 1] : 0.f);
          c0[m] = _mm512_fmadd_ps(ae, e0, c0[m]);
          c1[m] = _mm512_fmadd_ps(ae, e1, c1[m]);
          c0[m] = _mm512_fmadd_ps(ao, o0, c0[m]);
          c1[m] = _mm512_fmadd_ps(ao, o1, c1[m]);
        }
      }
    }
    const std::int64_t n0 = p * 32, rows = std::min<std::int64_t>(32, N - n0);
    const __mmask16 k0 = mask16(rows), k1 = mask16(rows - 16);
    const __m512 bb0 = g.bias ? _mm512_maskz_loadu_ps(k0, g.bias + n0) : _mm512_setzero_ps();
    const __m512 bb1 = g.bias ? _mm512_maskz_loadu_ps(k1, g.bias + n0 + 16) : _mm512_setzero_ps();
    for (int m = 0; m < MB; ++m) {
      float* y = g.y + (m0 + m) * g.ldy + n0;
      _mm512_mask_storeu_ps(y, k0, _mm512_add_ps(c0[m], bb0));
      _mm512_mask_storeu_ps(y + 16, k1, _mm512_add_ps(c1[m], bb1));
    }
  }
}

// ---- GEMM (M large): C[M, N] = A[M, K] B[N, K]^T with an MR x 32 register-blocked micro-kernel.
// The weights are consumed as 32-column panels of 32-bit words Bp[kw][32] (the Panels layout, or
// packed per call into a 16 KiB L1-resident buffer per (32 columns x one K block)):
//   F32    word kw = w[n][kw]                         (f32 weights; Q weights dequantised to f32)
//   WIDEN  word kw = bf16 pair (w[n][2kw], w[n][2kw + 1]), widened to two f32 vectors in the
//          kernel by a shift (even k) and a 16-bit lane mask (odd k)
//   DPBF16 the same pairs, multiplied against bf16 activation pairs by vdpbf16ps
// Activations are packed per call in panels of MR rows: Ap[panel][k][r] (f32; K padded to even)
// or, for DPBF16, Ap[panel][kw][r] = bf16 pair (x[m][2kw], x[m][2kw + 1]).
// Per thread (a contiguous range of 32-column panels): N block of GEMM_NCP panels -> K block ->
// panel -> MR-row panels, so the A block and the C block stay in L2 and the B panel in L1.
enum UkernelKind { kGemmF32 = 0, kGemmWiden = 1, kGemmDpbf16 = 2 };
constexpr int gemm_mr(int kind) { return kind == kGemmWiden ? 12 : 14; }
constexpr std::int64_t GEMM_KCW = 128;  // B words per K block (16 KiB per 32-column panel)
constexpr std::int64_t GEMM_NCP = 8;  // 32-column panels per N block

template <int KIND, int MR>
void ukernel(std::int64_t kwn, const std::uint32_t* A, const std::uint32_t* B, float* C, std::int64_t ldc, bool load_c,
             const float* bias, __mmask16 m0, __mmask16 m1, const char* pf) {
  __m512 c0[MR], c1[MR];
  if (load_c) {
    for (int r = 0; r < MR; ++r) {
      c0[r] = _mm512_maskz_loadu_ps(m0, C + r * ldc);
      c1[r] = _mm512_maskz_loadu_ps(m1, C + r * ldc + 16);
    }
  } else {
    const __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    const __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
    for (int r = 0; r < MR; ++r) {
      c0[r] = b0;
      c1[r] = b1;
    }
  }
  for (std::int64_t kw = 0; kw < kwn; ++kw) {
    _mm_prefetch(pf + kw * 64, _MM_HINT_T0);  // the next A panel, one line per step
    if constexpr (KIND == kGemmF32) {
      const __m512 b0 = _mm512_load_ps(reinterpret_cast<const float*>(B + kw * 32));
      const __m512 b1 = _mm512_load_ps(reinterpret_cast<const float*>(B + kw * 32 + 16));
      const float* a = reinterpret_cast<const float*>(A) + kw * MR;
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(a[r]);
        c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
        c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
      }
    } else if constexpr (KIND == kGemmWiden) {
      const float* a = reinterpret_cast<const float*>(A) + kw * 2 * MR;
      {
        const __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_load_si512(B + kw * 32), 16));
        const __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_load_si512(B + kw * 32 + 16), 16));
        for (int r = 0; r < MR; ++r) {
          const __m512 av = _mm512_set1_ps(a[r]);
          c0[r] = _mm512_fmadd_ps(av, e0, c0[r]);
          c1[r] = _mm512_fmadd_ps(av, e1, c1[r]);
        }
      }
      {
        const __m512 o0 = _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0xaaaaaaaau, _mm512_load_si512(B + kw * 32)));
        const __m512 o1 = _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0xaaaaaaaau, _mm512_load_si512(B + kw * 32 + 16)));
        for (int r = 0; r < MR; ++r) {
          const __m512 av = _mm512_set1_ps(a[MR + r]);
          c0[r] = _mm512_fmadd_ps(av, o0, c0[r]);
          c1[r] = _mm512_fmadd_ps(av, o1, c1[r]);
        }
      }
    } else {
      const __m512bh b0 = (__m512bh)_mm512_load_si512(B + kw * 32);
      const __m512bh b1 = (__m512bh)_mm512_load_si512(B + kw * 32 + 16);
      const std::uint32_t* a = A + kw * MR;
      for (int r = 0; r < MR; ++r) {
        const __m512bh av = (__m512bh)_mm512_set1_epi32(int(a[r]));
        c0[r] = _mm512_dpbf16_ps(c0[r], av, b0);
        c1[r] = _mm512_dpbf16_ps(c1[r], av, b1);
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(C + r * ldc, m0, c0[r]);
    _mm512_mask_storeu_ps(C + r * ldc + 16, m1, c1[r]);
  }
}

using UkernelFn = void (*)(std::int64_t, const std::uint32_t*, const std::uint32_t*, float*, std::int64_t, bool,
                           const float*, __mmask16, __mmask16, const char*);
template <int KIND, int... R>
constexpr std::array<UkernelFn, sizeof...(R)> ukernel_table(std::integer_sequence<int, R...>) {
  return {&ukernel<KIND, R + 1>...};
}

// Packs `rows` (<= 32) rows of 32-bit words (row stride ld elements; `nvalid` valid bf16 (BF16)
// or f32 elements per row counted from src) into Bp[kw][32] for kw in [0, round_up(kwn, 16)).
// Everything outside the valid rows / columns is zero.
template <bool BF16>
void pack_b(const void* src, std::int64_t ld, std::int64_t rows, std::int64_t nvalid, std::int64_t kwn,
            std::uint32_t* Bp) {
  for (int h = 0; h < 2; ++h) {
    for (std::int64_t kc = 0; kc < kwn; kc += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        const std::int64_t row = 16 * h + i;
        if (row >= rows) {
          r[i] = _mm512_setzero_si512();
        } else if (BF16) {
          r[i] = _mm512_maskz_loadu_epi16(mask32(nvalid - 2 * kc), static_cast<const std::uint16_t*>(src) + row * ld + 2 * kc);
        } else {
          r[i] = _mm512_maskz_loadu_epi32(mask16(nvalid - kc), static_cast<const std::uint32_t*>(src) + row * ld + kc);
        }
      }
      transpose16x16(r);
      for (int j = 0; j < 16; ++j) _mm512_store_si512(Bp + (kc + j) * 32 + 16 * h, r[j]);
    }
  }
}

// Dequantises rows [n0, n0 + rows) of a Q matrix, columns [k0, k0 + klen) (k0 a multiple of 64;
// klen rounded up to 64 stays inside Kp), into rows of `tmp` (stride ld elements): f32 (exact)
// or bf16 (rounded to nearest even; needs AVX512-BF16).
template <bool BF16>
void dequant_q(const WeightMatrix& W, std::int64_t n0, std::int64_t rows, std::int64_t k0, std::int64_t klen, void* tmp,
               std::int64_t ld) {
  const std::int64_t Kp = W.padded_cols();
  const bool q4 = W.format() == WeightFormat::Q4_0;
  const auto* base = static_cast<const std::uint8_t*>(W.data());
  const std::int64_t kend = std::min(Kp, k0 + round_up(klen, 64));
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t n = n0 + i;
    const std::uint16_t* s = W.scales() + n * (Kp / QK);
    for (std::int64_t k = k0; k < kend; k += 64) {
      __m512i codes;  // 64 signed values
      if (q4) {
        const std::uint8_t* p = base + n * (Kp / 2) + k / 2;
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        codes = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
        codes = _mm512_sub_epi8(_mm512_and_si512(codes, _mm512_set1_epi8(0x0f)), _mm512_set1_epi8(8));
      } else {
        codes = _mm512_loadu_si512(base + n * Kp + k);
      }
      const __m512 d0 = _mm512_set1_ps(_cvtsh_ss(s[k / QK])), d1 = _mm512_set1_ps(_cvtsh_ss(s[k / QK + 1]));
      const __m512 f0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, 0))), d0);
      const __m512 f1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, 1))), d0);
      const __m512 f2 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, 2))), d1);
      const __m512 f3 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, 3))), d1);
      if constexpr (BF16) {
        std::uint16_t* o = static_cast<std::uint16_t*>(tmp) + i * ld + (k - k0);
        _mm512_storeu_si512(o, (__m512i)_mm512_cvtne2ps_pbh(f1, f0));
        _mm512_storeu_si512(o + 32, (__m512i)_mm512_cvtne2ps_pbh(f3, f2));
      } else {
        float* o = static_cast<float*>(tmp) + i * ld + (k - k0);
        _mm512_storeu_ps(o, f0);
        _mm512_storeu_ps(o + 16, f1);
        _mm512_storeu_ps(o + 32, f2);
        _mm512_storeu_ps(o + 48, f3);
      }
    }
  }
}

// A Q8_0 Panels matrix straight into Bp[kw][32] (the layout pack_b writes) for the 32 output rows
// [n0, n0 + 32) (two 16-row panels; n0 a multiple of 32) and the words [kb, kb + round_up(kwn, 16))
// (kb a multiple of GEMM_KCW): one 64-byte line holds 4 consecutive k of 16 rows, so each k is
// a shift pair + conversion + scale per 16 outputs, no transpose. Values past N / K are zero
// (the panels are zero padded), exactly as the row-major dequantisation + pack_b give them.
template <bool BF16>
void dequant_q8_panels_b(const WeightMatrix& W, std::int64_t n0, std::int64_t kb, std::int64_t kwn, std::uint32_t* Bp) {
  const std::int64_t KB = W.padded_cols() / QK, P = (W.rows() + 15) / 16;
  const std::int64_t k0 = BF16 ? 2 * kb : kb, klen = (BF16 ? 2 : 1) * round_up(kwn, 16);
  const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                                         5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int h = 0; h < 2; ++h) {
    const std::int64_t p = n0 / 16 + h;
    if (p >= P) {
      for (std::int64_t kw = 0; kw < round_up(kwn, 16); ++kw) _mm512_store_si512(Bp + kw * 32 + 16 * h, _mm512_setzero_si512());
      continue;
    }
    const auto* q = static_cast<const std::int8_t*>(W.data()) + p * KB * 512;
    const std::uint16_t* sc = W.scales() + p * KB * 16;
    for (std::int64_t k = k0; k < k0 + klen; k += 4) {
      const std::int64_t b = k / QK;
      const __m512i v = _mm512_load_si512(q + b * 512 + ((k % QK) / 4) * 64);
      const __m512 d = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(sc + b * 16)));
      __m512 f[4];
      f[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 24), 24)), d);
      f[1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 16), 24)), d);
      f[2] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 8), 24)), d);
      f[3] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(v, 24)), d);
      if constexpr (BF16) {
        const std::int64_t kw = (k - k0) / 2;
        for (int e = 0; e < 2; ++e)
          _mm512_store_si512(Bp + (kw + e) * 32 + 16 * h,
                             _mm512_permutexvar_epi16(pairs, (__m512i)_mm512_cvtne2ps_pbh(f[2 * e + 1], f[2 * e])));
      } else {
        for (int e = 0; e < 4; ++e) _mm512_store_ps(Bp + (k - k0 + e) * 32 + 16 * h, f[e]);
      }
    }
  }
}

// Row-major / Q sources are read 32 rows x one K block at a time (a strided pattern the hardware
// prefetchers do not follow); prefetching the next panel's rows while this one is packed and
// multiplied hides the memory latency (otherwise the packing dominates at small M).
void prefetch_source_rows(const WeightMatrix& W, std::int64_t n0, std::int64_t k0, std::int64_t nvalid) {
  const std::int64_t rows = std::min<std::int64_t>(32, W.rows() - n0);
  const auto* base = static_cast<const char*>(W.data());
  std::int64_t row_bytes, off, len;
  switch (W.format()) {
    case WeightFormat::F32: row_bytes = W.cols() * 4; off = k0 * 4; len = nvalid * 4; break;
    case WeightFormat::BF16: row_bytes = W.cols() * 2; off = k0 * 2; len = nvalid * 2; break;
    case WeightFormat::Q8_0:
      if (W.layout() == WeightLayout::Panels) {  // two panels, contiguous along K
        const std::int64_t KB = W.padded_cols() / QK, P = (W.rows() + 15) / 16;
        for (std::int64_t p = n0 / 16; p < std::min(P, n0 / 16 + 2); ++p) {
          const char* q = base + (p * KB + k0 / QK) * 512;
          for (std::int64_t b = 0; b < (nvalid + QK - 1) / QK * 512; b += 64) _mm_prefetch(q + b, _MM_HINT_T0);
        }
        return;
      }
      row_bytes = W.padded_cols(); off = k0; len = nvalid; break;
    default: row_bytes = W.padded_cols() / 2; off = k0 / 2; len = (nvalid + 1) / 2; break;
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    const char* p = base + (n0 + r) * row_bytes + off;
    for (std::int64_t b = 0; b < len; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
  }
}

template <int KIND>
void gemm_avx512(const WeightMatrix& W, const GemvArgs& g) {
  constexpr int MR = gemm_mr(KIND);
  const std::int64_t M = g.M, N = W.rows(), K = g.K;
  const std::int64_t KW = KIND == kGemmF32 ? K : (K + 1) / 2;    // B words per row
  const std::int64_t AW = KIND == kGemmWiden ? 2 * KW : KW;         // A words per row
  const std::int64_t mpanels = (M + MR - 1) / MR, npanels = (N + 31) / 32;
  Scratch Ap_mem(std::size_t(mpanels * MR * AW) * 4);
  std::uint32_t* const Ap_p = Ap_mem.as<std::uint32_t>();
  par(0, mpanels, 1, [&](std::int64_t p0, std::int64_t p1) {
    Scratch row_mem(std::size_t(round_up(AW, 16)) * 4);
    std::uint32_t* const row_p = row_mem.as<std::uint32_t>();
    for (std::int64_t p = p0; p < p1; ++p) {
      const std::int64_t mr = std::min<std::int64_t>(MR, M - p * MR);
      std::uint32_t* dst = Ap_p + p * MR * AW;
      for (std::int64_t r = 0; r < mr; ++r) {
        const float* x = g.x + (p * MR + r) * g.ldx;
        const std::uint32_t* words = reinterpret_cast<const std::uint32_t*>(x);
        if constexpr (KIND == kGemmDpbf16) {
          for (std::int64_t k = 0; k < K; k += 32) {
            const __m512 lo = _mm512_maskz_loadu_ps(mask16(K - k), x + k);
            const __m512 hi = _mm512_maskz_loadu_ps(mask16(K - k - 16), x + k + 16);
            _mm512_store_si512(row_p + k / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
          }
          words = row_p;
        } else if (AW != K) {  // odd K: zero pad
          std::memcpy(row_p, x, std::size_t(K) * 4);
          row_p[K] = 0;
          words = row_p;
        }
        for (std::int64_t kw = 0; kw < AW; ++kw) dst[kw * mr + r] = words[kw];
      }
    }
  });
  static constexpr auto table = ukernel_table<KIND>(std::make_integer_sequence<int, MR>{});
  const bool q = W.format() == WeightFormat::Q8_0 || W.format() == WeightFormat::Q4_0;
  const bool panels = W.layout() == WeightLayout::Panels && !q;  // f32 / bf16 panels: B in place
  const bool q8_panels = W.layout() == WeightLayout::Panels && q;
  par(0, npanels, 1, [&](std::int64_t j0, std::int64_t j1) {
    Scratch Bp_mem(panels ? 0 : std::size_t(GEMM_KCW * 32) * 4);
    std::uint32_t* const Bp_p = Bp_mem.as<std::uint32_t>();
    Scratch tmp_mem(q ? std::size_t(32 * GEMM_KCW) * (KIND == kGemmF32 ? 1 : 2) * 4 : 0);
    std::uint32_t* const tmp_p = tmp_mem.as<std::uint32_t>();
    // One (32-column panel jp, K block kb) step: pack / dequantise B, then all MR-row panels.
    // nj, nk: the step that follows (its source is prefetched).
    auto step = [&](std::int64_t jp, std::int64_t kb, std::int64_t nj, std::int64_t nk) {
      const std::int64_t kwn = std::min(GEMM_KCW, KW - kb);
      const std::int64_t k0 = KIND == kGemmF32 ? kb : 2 * kb;
      const std::int64_t nvalid = std::min<std::int64_t>(KIND == kGemmF32 ? GEMM_KCW : 2 * GEMM_KCW, K - k0);
      const std::int64_t n0 = jp * 32, rows = std::min<std::int64_t>(32, N - n0);
      const std::uint32_t* B = Bp_p;
      if (!panels && nj >= 0)
        prefetch_source_rows(W, nj * 32, KIND == kGemmF32 ? nk : 2 * nk,
                             std::min<std::int64_t>(KIND == kGemmF32 ? GEMM_KCW : 2 * GEMM_KCW, K - (KIND == kGemmF32 ? nk : 2 * nk)));
      if (panels) {
        B = static_cast<const std::uint32_t*>(W.data()) + (jp * KW + kb) * 32;
      } else if (q8_panels) {
        dequant_q8_panels_b<KIND != kGemmF32>(W, n0, kb, kwn, Bp_p);
      } else if (q) {
        if constexpr (KIND == kGemmF32) {
          dequant_q<false>(W, n0, rows, k0, nvalid, tmp_p, GEMM_KCW);
          pack_b<false>(tmp_p, GEMM_KCW, rows, nvalid, kwn, Bp_p);
        } else {
          dequant_q<true>(W, n0, rows, k0, nvalid, tmp_p, 2 * GEMM_KCW);
          pack_b<true>(tmp_p, 2 * GEMM_KCW, rows, nvalid, kwn, Bp_p);
        }
      } else if constexpr (KIND == kGemmF32) {
        pack_b<false>(static_cast<const float*>(W.data()) + n0 * K + k0, K, rows, nvalid, kwn, Bp_p);
      } else {
        pack_b<true>(static_cast<const std::uint16_t*>(W.data()) + n0 * K + k0, K, rows, nvalid, kwn, Bp_p);
      }
      const __mmask16 m0 = mask16(rows), m1 = mask16(rows - 16);
      const std::int64_t aoff = KIND == kGemmWiden ? 2 * kb : kb;
      // Panels: the next step's B block (contiguous) is prefetched a few lines per micro-kernel
      // call so that its first use does not stall on memory.
      const char* nxt = nullptr;
      std::int64_t lines = 0, per_call = 0;
      if (panels && nj >= 0) {
        nxt = reinterpret_cast<const char*>(static_cast<const std::uint32_t*>(W.data()) + (nj * KW + nk) * 32);
        lines = std::min(GEMM_KCW, KW - nk) * 2;  // 128 bytes per word row
        per_call = (lines + mpanels - 1) / mpanels;
      }
      for (std::int64_t ip = 0; ip < mpanels; ++ip) {
        const std::int64_t mr = std::min<std::int64_t>(MR, M - ip * MR);
        if (nxt)
          for (std::int64_t l = ip * per_call; l < std::min(lines, (ip + 1) * per_call); ++l)
            _mm_prefetch(nxt + l * 64, _MM_HINT_T0);
        const std::uint32_t* a = Ap_p + ip * MR * AW + aoff * mr;
        const std::uint32_t* a_next = ip + 1 < mpanels ? Ap_p + (ip + 1) * MR * AW + aoff * MR : Ap_p + aoff * MR;
        table[std::size_t(mr - 1)](kwn, a, B, g.y + ip * MR * g.ldy + n0, g.ldy, kb > 0,
                                   g.bias ? g.bias + n0 : nullptr, m0, m1, reinterpret_cast<const char*>(a_next));
        if (kb + GEMM_KCW >= KW) activate_block(g, ip * MR, ip * MR + mr, n0, n0 + rows);
      }
    };
    if (mpanels <= 2) {
      // Few rows: the activations stay in L1 / L2, so walk each panel's rows along K
      // (sequential reads of the source rows).
      for (std::int64_t jp = j0; jp < j1; ++jp)
        for (std::int64_t kb = 0; kb < KW; kb += GEMM_KCW) {
          const bool last = kb + GEMM_KCW >= KW;
          step(jp, kb, last ? (jp + 1 < j1 ? jp + 1 : -1) : jp, last ? 0 : kb + GEMM_KCW);
        }
    } else {
      // Many rows: N block -> K block -> panel, so the A block and the C block stay in L2.
      for (std::int64_t jb = j0; jb < j1; jb += GEMM_NCP) {
        const std::int64_t je = std::min(j1, jb + GEMM_NCP);
        for (std::int64_t kb = 0; kb < KW; kb += GEMM_KCW)
          for (std::int64_t jp = jb; jp < je; ++jp) {
            std::int64_t nj = jp + 1, nk = kb;
            if (nj == je) {
              nj = kb + GEMM_KCW < KW ? jb : (je < j1 ? je : -1);
              nk = kb + GEMM_KCW < KW ? kb + GEMM_KCW : 0;
            }
            step(jp, kb, nj, nk);
          }
      }
    }
  });
}

// Calls f(integral_constant<MB>, m0) for groups of <= MaxRows rows. A row's arithmetic is the same
// whatever group it is in, so the grouping changes speed only.
template <int MaxRows = 8, typename F>
void for_row_groups(std::int64_t M, F&& f) {
  for (std::int64_t m0 = 0; m0 < M; m0 += MaxRows) {
    switch (std::min<std::int64_t>(MaxRows, M - m0)) {
      case 1: f(std::integral_constant<int, 1>{}, m0); break;
      case 2: f(std::integral_constant<int, 2>{}, m0); break;
      case 3: f(std::integral_constant<int, 3>{}, m0); break;
      case 4: f(std::integral_constant<int, 4>{}, m0); break;
      case 5: if constexpr (MaxRows >= 5) f(std::integral_constant<int, 5>{}, m0); break;
      case 6: if constexpr (MaxRows >= 6) f(std::integral_constant<int, 6>{}, m0); break;
      case 7: if constexpr (MaxRows >= 7) f(std::integral_constant<int, 7>{}, m0); break;
      default: if constexpr (MaxRows >= 8) f(std::integral_constant<int, 8>{}, m0); break;
    }
  }
}

// f(b0, b1) over [n0, n1) in blocks of `block`: every row group runs over one block of weights
// before the next, so the weights stream from memory once whatever the number of row groups.
template <typename F>
void in_blocks(std::int64_t n0, std::int64_t n1, std::int64_t block, F&& f) {
  for (std::int64_t b0 = n0; b0 < n1; b0 += block) f(b0, std::min(n1, b0 + block));
}

void gemv_impl(const WeightMatrix& W, const GemvArgs& g, const QuantAct* qap, bool vnni) {
  const std::int64_t N = W.rows(), K = g.K;
  const std::int64_t grain = std::max<std::int64_t>(1, (1 << 15) / std::max<std::int64_t>(1, K * g.M));
  if (W.format() == WeightFormat::Q8_0 && W.layout() == WeightLayout::Panels) {
    const QuantAct& qa = *qap;
    const std::int64_t P = (N + 15) / 16;
    par(0, P, (grain + 15) / 16, [&](std::int64_t p0, std::int64_t p1) {
      // row groups of <= 4 rows against 2 panels at a time (4 for a single row): the panels'
      // weights are read from memory by the first group, from cache by the others
      auto run = [&](auto ng_c, std::int64_t p) {
        constexpr int NG = decltype(ng_c)::value;
        for_row_groups<4>(g.M, [&](auto mb, std::int64_t m0) {
          constexpr int MB = decltype(mb)::value;
          if (vnni) gemv_q8_panels_avx512<true, MB, NG>(W, g, qa, m0, p);
          else gemv_q8_panels_avx512<false, MB, NG>(W, g, qa, m0, p);
        });
      };
      std::int64_t p = p0;
      if (g.M == 1)
        for (; p + 4 <= p1; p += 4) run(std::integral_constant<int, 4>{}, p);
      else
        for (; p + 2 <= p1; p += 2) run(std::integral_constant<int, 2>{}, p);
      for (; p < p1; ++p) run(std::integral_constant<int, 1>{}, p);
      activate_block(g, 0, g.M, p0 * 16, std::min(N, p1 * 16));
    });
    return;
  }
  if (W.layout() == WeightLayout::Panels) {
    par(0, (N + 31) / 32, (grain + 31) / 32, [&](std::int64_t p0, std::int64_t p1) {
      in_blocks(p0, p1, 2, [&](std::int64_t b0, std::int64_t b1) {
        for_row_groups(g.M, [&](auto mb, std::int64_t m0) { gemv_panels_avx512<decltype(mb)::value>(W, g, m0, b0, b1); });
      });
      activate_block(g, 0, g.M, p0 * 32, std::min(N, p1 * 32));
    });
    return;
  }
  switch (W.format()) {
    case WeightFormat::F32: {
      const auto* Wd = static_cast<const float*>(W.data());
      par(0, N, grain, [&](std::int64_t n0, std::int64_t n1) {
        in_blocks(n0, n1, 32, [&](std::int64_t b0, std::int64_t b1) {
          for_row_groups(g.M, [&](auto mb, std::int64_t m0) { gemv_f32_avx512<decltype(mb)::value>(Wd, g, m0, b0, b1); });
        });
        activate_block(g, 0, g.M, n0, n1);
      });
      return;
    }
    case WeightFormat::BF16: {
      const std::int64_t K32 = round_up(K, 32);
      Scratch xe_mem(std::size_t(g.M * K32) * 4);
      float* const xe_p = xe_mem.as<float>();
      arrange_bf16_act(g.x, g.ldx, g.M, K, K32, xe_p);
      const auto* Wd = static_cast<const std::uint16_t*>(W.data());
      par(0, N, grain, [&](std::int64_t n0, std::int64_t n1) {
        in_blocks(n0, n1, 32, [&](std::int64_t b0, std::int64_t b1) {
          for_row_groups(g.M, [&](auto mb, std::int64_t m0) {
            gemv_bf16_avx512<decltype(mb)::value>(Wd, g, xe_p, K32, m0, b0, b1);
          });
        });
        activate_block(g, 0, g.M, n0, n1);
      });
      return;
    }
    case WeightFormat::Q8_0:
    case WeightFormat::Q4_0: {
      const bool q4 = W.format() == WeightFormat::Q4_0;
      const QuantAct& qa = *qap;
      par(0, N, grain, [&](std::int64_t n0, std::int64_t n1) {
        // groups of at most 4 activation rows (beyond, the accumulators no longer fit the registers)
        in_blocks(n0, n1, 32, [&](std::int64_t b0, std::int64_t b1) {
          for_row_groups<4>(g.M, [&](auto mb, std::int64_t m0) {
            constexpr int MB = decltype(mb)::value;
            if (vnni) {
              if (q4) gemv_q_avx512<true, true, MB>(W, g, qa, m0, b0, b1);
              else gemv_q_avx512<false, true, MB>(W, g, qa, m0, b0, b1);
              return;
            }
            if (q4) gemv_q_avx512<true, false, MB>(W, g, qa, m0, b0, b1);
            else gemv_q_avx512<false, false, MB>(W, g, qa, m0, b0, b1);
          });
        });
        activate_block(g, 0, g.M, n0, n1);
      });
      return;
    }
  }
}

}  // namespace

bool compiled() { return true; }

void gemv(const WeightMatrix& W, const GemvArgs& g, const QuantAct* qa, bool vnni) { gemv_impl(W, g, qa, vnni); }

void gemm(const WeightMatrix& W, const GemvArgs& g, GemmKind kind) {
  switch (kind) {
    case GemmKind::F32: gemm_avx512<kGemmF32>(W, g); return;
    case GemmKind::Widen: gemm_avx512<kGemmWiden>(W, g); return;
    case GemmKind::Dpbf16: gemm_avx512<kGemmDpbf16>(W, g); return;
  }
}

void activate(Activation a, float* p, std::int64_t n) { apply_activation(a, p, n); }

void softmax_row(float* x, std::int64_t n) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 vm = ninf;
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) vm = _mm512_max_ps(_mm512_loadu_ps(x + i), vm);  // (drops NaN)
  if (i < n) vm = _mm512_max_ps(_mm512_mask_loadu_ps(ninf, mask16(n - i), x + i), vm);
  const float m = _mm512_reduce_max_ps(vm);
  if (m == -std::numeric_limits<float>::infinity()) {  // all -inf: zeros; -inf and NaN only: NaN
    const bool nan = std::any_of(x, x + n, [](float v) { return v != v; });
    std::fill(x, x + n, nan ? std::numeric_limits<float>::quiet_NaN() : 0.f);
    return;
  }
  const __m512 vmax = _mm512_set1_ps(m);
  // e^(x - m) for x - m <= 0: exactly 0 below -87.3 (no subnormal results), NaN kept (exp_avx512
  // clamps to [-104, 88.7] with max / min, which would drop it)
  auto expd = [](__m512 d) {
    const __mmask16 keep = _mm512_cmp_ps_mask(d, _mm512_set1_ps(-87.3f), _CMP_NLT_UQ);  // >= or NaN
    const __mmask16 nan = _mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q);
    return _mm512_mask_mov_ps(_mm512_maskz_mov_ps(keep, exp_avx512(d)), nan, d);
  };
  __m512 vs = _mm512_setzero_ps();
  for (i = 0; i + 16 <= n; i += 16) {
    const __m512 e = expd(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmax));
    _mm512_storeu_ps(x + i, e);
    vs = _mm512_add_ps(vs, e);
  }
  if (i < n) {
    const __mmask16 k = mask16(n - i);
    const __m512 e = _mm512_maskz_mov_ps(k, expd(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vmax)));
    _mm512_mask_storeu_ps(x + i, k, e);
    vs = _mm512_add_ps(vs, e);
  }
  const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(vs));
  for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
  if (i < n) {
    const __mmask16 k = mask16(n - i);
    _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), inv));
  }
}

void pack_panel(const void* src, std::int64_t K, std::int64_t rows, bool bf16, void* dst) {
  const std::int64_t KW = bf16 ? (K + 1) / 2 : K;
  auto* out = static_cast<std::uint32_t*>(dst);
  alignas(64) std::uint32_t tail[GEMM_KCW * 32];
  for (std::int64_t kb = 0; kb < KW; kb += GEMM_KCW) {
    const std::int64_t kwn = std::min(GEMM_KCW, KW - kb);
    // pack_b writes whole groups of 16 words: a partial last group goes through `tail`
    std::uint32_t* d = kwn % 16 == 0 ? out + kb * 32 : tail;
    if (bf16)
      pack_b<true>(static_cast<const std::uint16_t*>(src) + 2 * kb, K, rows, K - 2 * kb, kwn, d);
    else
      pack_b<false>(static_cast<const float*>(src) + kb, K, rows, K - kb, kwn, d);
    if (d == tail) std::memcpy(out + kb * 32, tail, std::size_t(kwn) * 32 * 4);
  }
}

#endif  // IB_AVX512_LEVEL

}  // namespace instructblip::ops::detail::avx512

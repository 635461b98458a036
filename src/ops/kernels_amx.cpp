// AMX-BF16 GEMM for ops::linear (see kernels_amx.hpp and weights.hpp, "linear() numerics").
//
// Compiled with -mamx-tile -mamx-bf16 when the compiler has them (CMakeLists.txt); the AVX-512
// helpers carry function target attributes, so this file builds and is safe to link also
// without -march=native - nothing here runs unless amx_bf16_usable() said yes at run time.
//
// Scheme (per call):
//   A: the activations rounded to bf16 (nearest even) into Ap[mt][g][16][32] - 16-row tiles mt
//      (rows past M are zero) by 32-k groups g (k past K is zero); one 1 KiB tile each.
//   B: 32-column weight panels in the BF16 Panels layout [kw][32][2]: read in place for Panels
//      weights (a tile = 16 k pairs x 16 columns: 64-byte rows at a 128-byte stride, columns
//      16..31 at +64 bytes; a partial last k group is copied to a zero-padded buffer), packed per
//      (panel, K block) into a per-task buffer for row-major BF16 and dequantised Q8_0 / Q4_0.
//   C: 2 x 2 tile blocking - two A tiles (32 rows) x two B tiles (32 columns) into four 16 x 16
//      f32 accumulators; K blocks of <= 2048 (A block stays in L2); partial sums between K
//      blocks go through a per-task f32 buffer. The epilogue (bias, then the caller's activation)
//      runs on each 32 x 32 block right after its last K block.
//   Tasks: whole 32-column panels (parallel_for), each loading its own tile configuration.
//   The K blocking depends only on K, so every element is computed identically for any number
//   of threads.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "kernels_amx.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "instructblip/core/thread_pool.hpp"

#if defined(__x86_64__) && defined(__linux__) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && \
    (defined(__GNUC__) || defined(__clang__))
#define IB_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define IB_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))
#define IB_AVX512_FN IB_AVX512_TARGET
#include "avx512_util.hpp"
#endif

namespace instructblip::ops::detail {

#ifndef IB_AMX

bool amx_compiled() { return false; }
bool amx_bf16_usable() { return false; }
void gemm_amx_bf16(const WeightMatrix&, const AmxGemmArgs&) {
  throw InvalidArgument("gemm_amx_bf16: this build has no AMX kernel");
}

#else

namespace {

// The GCC tile intrinsics are asm statements without a memory clobber: order them against the
// ordinary loads / stores of the same buffers explicitly.
#define IB_MEM_BARRIER() __asm__ __volatile__("" ::: "memory")

bool detect() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_tile = (d >> 24) & 1u, amx_bf16 = (d >> 22) & 1u;
  const unsigned max_sub = a;
  if (!amx_tile || !amx_bf16 || max_sub < 1) return false;
  unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
  const bool avx512bf16 = (a1 >> 5) & 1u;
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the AVX-512 state (XCR0).
  if (!avx512bf16 || !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq"))
    return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

struct alignas(64) TileConfig {
  std::uint8_t palette_id = 0, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
std::unique_ptr<T, FreeDeleter> aligned_buffer(std::size_t n) {
  const std::size_t bytes = (std::max<std::size_t>(1, n) * sizeof(T) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return std::unique_ptr<T, FreeDeleter>(static_cast<T*>(p));
}

constexpr std::int64_t kMaxGroupsPerBlock = 64;  // 32-k groups per K block (2048 k)

// `rows` (<= 32) rows of bf16 (row stride ld elements, `nvalid` valid elements from src) into
// the panel layout Bp[kw][32] (32-bit bf16 pairs) for kw in [0, kwn), kwn a multiple of 16.
IB_AVX512_TARGET void pack_b_bf16(const std::uint16_t* src, std::int64_t ld, std::int64_t rows, std::int64_t nvalid,
                                  std::int64_t kwn, std::uint32_t* Bp) {
  for (int h = 0; h < 2; ++h) {
    for (std::int64_t kc = 0; kc < kwn; kc += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        const std::int64_t row = 16 * h + i;
        r[i] = row >= rows ? _mm512_setzero_si512() : _mm512_maskz_loadu_epi16(mask32(nvalid - 2 * kc), src + row * ld + 2 * kc);
      }
      transpose16x16(r);
      for (int j = 0; j < 16; ++j) _mm512_store_si512(Bp + (kc + j) * 32 + 16 * h, r[j]);
    }
  }
}

// Rows [n0, n0 + rows) of a Q8_0 / Q4_0 matrix, columns [k0, k0 + klen) (k0 a multiple of 64),
// dequantised and rounded to bf16 (nearest even) into rows of tmp (stride ld elements).
IB_AVX512_TARGET void dequant_q_bf16(const WeightMatrix& W, std::int64_t n0, std::int64_t rows, std::int64_t k0,
                                     std::int64_t klen, std::uint16_t* tmp, std::int64_t ld) {
  const std::int64_t Kp = W.padded_cols();
  const bool q4 = W.format() == WeightFormat::Q4_0;
  const bool panels = W.layout() == WeightLayout::Panels;  // Q8_0 only
  const auto* base = static_cast<const std::uint8_t*>(W.data());
  const std::int64_t kend = std::min(Kp, k0 + (klen + 63) / 64 * 64);
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t n = n0 + i;
    const std::uint16_t* s = panels ? nullptr : W.scales() + n * (Kp / 32);
    for (std::int64_t k = k0; k < kend; k += 64) {
      __m512i codes;
      if (q4) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + n * (Kp / 2) + k / 2));
        codes = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
        codes = _mm512_sub_epi8(_mm512_and_si512(codes, _mm512_set1_epi8(0x0f)), _mm512_set1_epi8(8));
      } else if (panels) {
        // Q8_0 Panels: row n's 4-byte groups of the two blocks sit 64 bytes apart (weights.hpp)
        const std::int64_t KB = Kp / 32, off = ((n / 16) * KB + k / 32) * 512 + (n % 16) * 4;
        const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                               _mm512_set1_epi32(64));
        codes = _mm512_i32gather_epi32(idx, base + off, 1);
      } else {
        codes = _mm512_loadu_si512(base + n * Kp + k);
      }
      std::uint32_t two;
      if (panels) {
        const std::int64_t KB = Kp / 32;
        const std::uint16_t sc[2] = {W.scales()[((n / 16) * KB + k / 32) * 16 + n % 16],
                                     W.scales()[((n / 16) * KB + k / 32 + 1) * 16 + n % 16]};
        std::memcpy(&two, sc, 4);
      } else {
        std::memcpy(&two, s + k / 32, 4);
      }
      const __m128 d2 = _mm_cvtph_ps(_mm_cvtsi32_si128(int(two)));
      const __m512 d0 = _mm512_broadcastss_ps(d2), d1 = _mm512_broadcastss_ps(_mm_shuffle_ps(d2, d2, 1));
      const __m512 f0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, 0))), d0);
      const __m512 f1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, 1))), d0);
      const __m512 f2 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, 2))), d1);
      const __m512 f3 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, 3))), d1);
      std::uint16_t* o = tmp + i * ld + (k - k0);
      _mm512_storeu_si512(o, (__m512i)_mm512_cvtne2ps_pbh(f1, f0));
      _mm512_storeu_si512(o + 32, (__m512i)_mm512_cvtne2ps_pbh(f3, f2));
    }
  }
}

// Activation tiles mt in [mt0, mt1): Ap[mt][g][16][32] bf16.
IB_AVX512_TARGET void convert_a(const AmxGemmArgs& a, std::int64_t Kg, std::int64_t mt0, std::int64_t mt1,
                                std::uint16_t* Ap) {
  for (std::int64_t mt = mt0; mt < mt1; ++mt)
    for (int r = 0; r < 16; ++r) {
      const std::int64_t m = mt * 16 + r;
      const float* x = m < a.M ? a.x + m * a.ldx : a.x;
      for (std::int64_t g = 0; g < Kg; ++g) {
        std::uint16_t* dst = Ap + ((mt * Kg + g) * 16 + r) * 32;
        if (m >= a.M) {
          _mm512_store_si512(dst, _mm512_setzero_si512());
          continue;
        }
        const std::int64_t k = g * 32;
        const __m512 lo = _mm512_maskz_loadu_ps(mask16(a.K - k), x + k);
        const __m512 hi = _mm512_maskz_loadu_ps(mask16(a.K - k - 16), x + k + 16);
        _mm512_store_si512(dst, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
    }
}

// One 32-row (TWO) or 16-row block of one panel over ng k groups. C: 32 x 32 f32, stride 32.
// Tiles: 0-3 accumulators (0: rows 0-15 x cols 0-15, 1: rows 0-15 x cols 16-31, 2 / 3: rows
// 16-31), 4 / 5 A, 6 / 7 B.
// Software prefetch of the weights of the next (panel, K block) step, spread over the tile steps
// of the current one (the hardware prefetchers do not follow 32 strided rows, and a cold B
// panel would otherwise stall the first 32-row block on memory).
struct Prefetch {
  const char* base = nullptr;
  std::int64_t stride = 0, lines_per_row = 0, lines = 0;  // lines = rows * lines_per_row
  void line(std::int64_t l) const {
    if (l < lines) _mm_prefetch(base + (l / lines_per_row) * stride + (l % lines_per_row) * 64, _MM_HINT_T1);
  }
};

template <bool TWO>
inline void tile_block(const std::uint16_t* A0, const std::uint16_t* A1, const std::uint32_t* B, std::int64_t ng,
                       const std::uint32_t* Btail, float* C, bool load_c, const Prefetch& pf, std::int64_t pf0,
                       std::int64_t pf_per_g) {
  IB_MEM_BARRIER();
  if (load_c) {
    _tile_loadd(0, C, 128);
    _tile_loadd(1, C + 16, 128);
    if (TWO) {
      _tile_loadd(2, C + 512, 128);
      _tile_loadd(3, C + 528, 128);
    }
  } else {
    _tile_zero(0);
    _tile_zero(1);
    if (TWO) {
      _tile_zero(2);
      _tile_zero(3);
    }
  }
  for (std::int64_t g = 0; g < ng; ++g) {
    const std::uint32_t* b = (Btail && g == ng - 1) ? Btail : B + g * 512;
    for (std::int64_t i = 0; i < pf_per_g; ++i) pf.line(pf0 + g * pf_per_g + i);
    _tile_loadd(4, A0 + g * 512, 64);
    _tile_loadd(6, b, 128);
    _tile_loadd(7, b + 16, 128);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if (TWO) {
      _tile_loadd(5, A1 + g * 512, 64);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, C, 128);
  _tile_stored(1, C + 16, 128);
  if (TWO) {
    _tile_stored(2, C + 512, 128);
    _tile_stored(3, C + 528, 128);
  }
  IB_MEM_BARRIER();
}

// y rows [0, rows) x columns [0, ncols) = C + bias, then the epilogue per row.
IB_AVX512_TARGET void store_block(const float* C, std::int64_t rows, std::int64_t ncols, float* y, std::int64_t ldy,
                                  const float* bias, EpilogueFn fn, const void* ctx) {
  const __mmask16 k0 = mask16(ncols), k1 = mask16(ncols - 16);
  const __m512 b0 = bias ? _mm512_maskz_loadu_ps(k0, bias) : _mm512_setzero_ps();
  const __m512 b1 = bias ? _mm512_maskz_loadu_ps(k1, bias + 16) : _mm512_setzero_ps();
  for (std::int64_t r = 0; r < rows; ++r) {
    float* yr = y + r * ldy;
    _mm512_mask_storeu_ps(yr, k0, _mm512_add_ps(_mm512_load_ps(C + r * 32), b0));
    _mm512_mask_storeu_ps(yr + 16, k1, _mm512_add_ps(_mm512_load_ps(C + r * 32 + 16), b1));
    if (fn) fn(yr, ncols, ctx);
  }
}

struct Plan {
  std::int64_t M, N, K, Kg, mtiles, Mp, nkb, kcg;
  bool panels, q;
};

void run_panels(const WeightMatrix& W, const AmxGemmArgs& a, const Plan& pl, const std::uint16_t* Ap, std::int64_t p0,
                std::int64_t p1) {
  TileConfig cfg;
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
  const std::int64_t K = pl.K, Kg = pl.Kg, N = pl.N, kcg = pl.kcg, np = p1 - p0;
  const bool multi = pl.nkb > 1;
  const std::int64_t KW = (K + 1) / 2;
  const bool ptail = pl.panels && KW % 16 != 0;
  auto Bbuf = aligned_buffer<std::uint32_t>(pl.panels ? 0 : std::size_t(kcg * 512));
  auto tmp = aligned_buffer<std::uint16_t>(pl.q ? std::size_t(32 * kcg * 32) : 0);
  auto tail = aligned_buffer<std::uint32_t>(ptail ? 512 : 0);
  auto Cacc = aligned_buffer<float>(std::size_t(multi ? np * pl.Mp * 32 : 1024));
  const std::int64_t mblocks = (pl.mtiles + 1) / 2;
  // The source of step (panel p, K block kb) as a prefetch plan.
  auto plan = [&](std::int64_t p, std::int64_t kb) {
    Prefetch f;
    const std::int64_t g0 = kb * kcg, g1 = std::min(Kg, g0 + kcg);
    const std::int64_t k0 = g0 * 32, klen = std::min(K, g1 * 32) - k0, n0 = p * 32;
    const auto* base = static_cast<const char*>(W.data());
    std::int64_t rows = std::min<std::int64_t>(32, N - n0), bytes;
    if (pl.panels) {
      f.base = base + (p * KW + g0 * 16) * 128;
      bytes = std::min(KW - g0 * 16, (g1 - g0) * 16) * 128;
      f.stride = bytes;
      rows = 1;
    } else if (W.format() == WeightFormat::BF16) {
      f.base = base + (n0 * K + k0) * 2;
      f.stride = K * 2;
      bytes = klen * 2;
    } else if (W.format() == WeightFormat::Q8_0 && W.layout() == WeightLayout::Panels) {
      // the two 16-row panels, each contiguous along K
      const std::int64_t KB = W.padded_cols() / 32;
      f.base = base + ((n0 / 16) * KB + k0 / 32) * 512;
      f.stride = KB * 512;
      bytes = (klen + 31) / 32 * 512;
      rows = std::min<std::int64_t>(2, (N - n0 + 15) / 16);
    } else if (W.format() == WeightFormat::Q8_0) {
      f.base = base + n0 * W.padded_cols() + k0;
      f.stride = W.padded_cols();
      bytes = klen;
    } else {
      f.base = base + n0 * (W.padded_cols() / 2) + k0 / 2;
      f.stride = W.padded_cols() / 2;
      bytes = (klen + 1) / 2;
    }
    f.lines_per_row = std::max<std::int64_t>(1, (bytes + 63) / 64);
    f.lines = rows * f.lines_per_row;
    return f;
  };
  for (std::int64_t kb = 0; kb < pl.nkb; ++kb) {
    const std::int64_t g0 = kb * kcg, g1 = std::min(Kg, g0 + kcg), ng = g1 - g0;
    const std::int64_t k0 = g0 * 32, klen = std::min(K, g1 * 32) - k0;
    const bool last = kb + 1 == pl.nkb;
    for (std::int64_t p = p0; p < p1; ++p) {
      Prefetch pf;
      if (p + 1 < p1) pf = plan(p + 1, kb);
      else if (!last) pf = plan(p0, kb + 1);
      const std::int64_t pf_per_block = (pf.lines + mblocks - 1) / mblocks, pf_per_g = (pf_per_block + ng - 1) / ng;
      const std::int64_t n0 = p * 32, ncols = std::min<std::int64_t>(32, N - n0);
      const std::uint32_t* B = Bbuf.get();
      const std::uint32_t* Bt = nullptr;
      if (pl.panels) {
        const auto* panel = static_cast<const std::uint32_t*>(W.data()) + p * KW * 32;
        B = panel + g0 * 512;
        if (ptail && g1 == Kg) {
          const std::int64_t w0 = (Kg - 1) * 16;
          std::memset(tail.get(), 0, 512 * 4);
          std::memcpy(tail.get(), panel + w0 * 32, std::size_t(KW - w0) * 32 * 4);
          Bt = tail.get();
        }
      } else if (pl.q) {
        dequant_q_bf16(W, n0, ncols, k0, klen, tmp.get(), kcg * 32);
        pack_b_bf16(tmp.get(), kcg * 32, ncols, klen, ng * 16, Bbuf.get());
      } else {
        pack_b_bf16(static_cast<const std::uint16_t*>(W.data()) + n0 * K + k0, K, ncols, klen, ng * 16, Bbuf.get());
      }
      float* C = multi ? Cacc.get() + (p - p0) * pl.Mp * 32 : Cacc.get();
      for (std::int64_t mt = 0; mt < pl.mtiles; mt += 2) {
        float* Cb = multi ? C + mt * 512 : C;
        const std::uint16_t* A0 = Ap + (mt * Kg + g0) * 512;
        const std::int64_t pf0 = (mt / 2) * pf_per_block;
        if (mt + 1 < pl.mtiles)
          tile_block<true>(A0, A0 + Kg * 512, B, ng, Bt, Cb, kb > 0, pf, pf0, pf_per_g);
        else
          tile_block<false>(A0, nullptr, B, ng, Bt, Cb, kb > 0, pf, pf0, pf_per_g);
        if (last) {
          const std::int64_t rows = std::min<std::int64_t>(32, pl.M - mt * 16);
          store_block(Cb, rows, ncols, a.y + mt * 16 * a.ldy + n0, a.ldy, a.bias ? a.bias + n0 : nullptr, a.epilogue,
                      a.epilogue_ctx);
        }
      }
    }
  }
  _tile_release();
}

}  // namespace

bool amx_compiled() { return true; }

bool amx_bf16_usable() {
  static const bool ok = detect();
  return ok;
}

void gemm_amx_bf16(const WeightMatrix& W, const AmxGemmArgs& a) {
  Plan pl;
  pl.M = a.M;
  pl.N = W.rows();
  pl.K = a.K;
  pl.Kg = (a.K + 31) / 32;
  pl.mtiles = (a.M + 15) / 16;
  pl.Mp = pl.mtiles * 16;
  pl.nkb = (pl.Kg + kMaxGroupsPerBlock - 1) / kMaxGroupsPerBlock;
  pl.kcg = (pl.Kg + pl.nkb - 1) / pl.nkb;
  pl.kcg += pl.kcg & 1;  // even: Q K blocks start on a 64-weight pair of blocks
  pl.nkb = (pl.Kg + pl.kcg - 1) / pl.kcg;
  pl.q = W.format() == WeightFormat::Q8_0 || W.format() == WeightFormat::Q4_0;
  pl.panels = W.layout() == WeightLayout::Panels && !pl.q;  // bf16 panels used in place (Q8_0 ones dequantised)
  auto Ap = aligned_buffer<std::uint16_t>(std::size_t(pl.Mp * pl.Kg * 32));
  std::uint16_t* ap = Ap.get();
  parallel_for(0, pl.mtiles, 2, [&](std::int64_t t0, std::int64_t t1) { convert_a(a, pl.Kg, t0, t1, ap); });
  const std::int64_t npanels = (pl.N + 31) / 32;
  parallel_for(0, npanels, 1, [&](std::int64_t p0, std::int64_t p1) { run_panels(W, a, pl, ap, p0, p1); });
}

#endif  // IB_AMX

}  // namespace instructblip::ops::detail

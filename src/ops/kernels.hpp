#pragma once
// Private interface between the linear() dispatcher (linear.cpp) and the kernels, which are
// compiled once per instruction-set level in their own translation units:
//
//   kernels_portable.cpp   the build's baseline flags (x86-64 / SSE2 in a portable build)
//   kernels_avx2.cpp       x86-64-v3: AVX2 + FMA + F16C (the same plain-C++ kernels and Eigen
//                          GEMM as the portable level, vectorised by the compiler)
//   kernels_avx512.cpp     x86-64-v4 + VNNI (+ AVX512-BF16 instructions, executed only when the
//                          CPU has them): the hand-written AVX-512 kernels
//   kernels_amx.cpp        AMX-BF16 tiles (kernels_amx.hpp)
//
// linear.cpp picks the highest level the CPU supports (cpu.hpp) at run time. The per-level units
// keep everything they compile either internal (anonymous namespaces, templates instantiated on
// local types) or under a level-specific name, so that no inline function compiled with wider
// instructions can be chosen by the linker for code that runs on a smaller CPU; the test
// `ops.isa_objects_export_no_inline_code` checks that on the object files. Memory and threads
// come through the out-of-line helpers below for the same reason. Not installed.
#include <cstddef>
#include <cstdint>

#include "instructblip/ops/activations.hpp"
#include "instructblip/ops/weights.hpp"

namespace instructblip::ops::detail {

constexpr std::int64_t QK = 32;    // weights per quantisation block
constexpr std::int64_t QPAD = 64;  // Q rows are padded to a multiple of two blocks

/// 64-byte aligned scratch memory (allocation and release out of line, in kernels_portable.cpp).
class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(std::size_t bytes);
  ~Scratch();
  Scratch(Scratch&& o) noexcept;
  Scratch& operator=(Scratch&& o) noexcept;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

/// parallel_for through a plain function pointer (so the per-level units instantiate no
/// std::function code of their own).
using RangeFn = void (*)(const void* ctx, std::int64_t begin, std::int64_t end);
void parallel_ranges(std::int64_t begin, std::int64_t end, std::int64_t grain, RangeFn fn, const void* ctx);

/// What the matrix-vector (M small) and GEMM kernels of every level receive.
struct GemvArgs {
  const float* x;
  std::int64_t ldx, M, K;
  float* y;
  std::int64_t ldy;
  const float* bias;
  const Activation* act;  // fused epilogue (after the bias), or null
};

/// Quantised activations for the Q8_0 / Q4_0 streaming kernels: int8 q[M][Kp], f32 scales
/// d[M][Kp/32], and for the SIMD kernels the VNNI offset correction negc[M][Kp/4] =
/// -offset * (sum of 4 consecutive q) (Q4_0) or the unsigned bytes qu[M][Kp] and the block
/// corrections negb[M][Kp/32] (Q8_0), and the scales per pair of blocks dxe[M][Kp/64][16]
/// (lanes 0-7: block 2p, 8-15: block 2p+1).
struct QuantAct {
  std::int64_t M = 0, Kp = 0;
  std::int8_t* q = nullptr;
  float* d = nullptr;
  std::int32_t* negc = nullptr;  // Q4_0 (AVX-512 kernels): -8 * sum of each 4 activation bytes
  std::uint8_t* qu = nullptr;    // Q8_0 (AVX-512 kernels): q + 128, the activations as unsigned bytes
  std::int32_t* negb = nullptr;  // Q8_0 (AVX-512 kernels): -128 * sum of each block of 32 q
  float* dxe = nullptr;
  Scratch mem;
};
/// offset: 128 for Q8_0, 8 for Q4_0 (the unsigned bias of the weights in the VNNI kernels).
void quantize_act(const float* x, std::int64_t ldx, std::int64_t M, std::int64_t K, std::int64_t Kp, int offset,
                  bool simd_extras, QuantAct& a);

/// The activation function in place, portable code (std::erf GELU).
void activate_portable(Activation a, float* p, std::int64_t n);

/// Kinds of the M-large GEMM.
enum class GemmKind : std::uint8_t {
  F32,     // f32 activations x exact (dequantised) weights, f32 FMA
  Widen,   // bf16 weights widened to f32 in the kernel (exact), f32 FMA
  Dpbf16,  // activations and weights rounded to bf16, vdpbf16ps (f32 accumulation)
};

// ---- the portable level (baseline flags) and x86-64-v3 (AVX2 + FMA + F16C): the same source.
namespace portable {
void gemv(const WeightMatrix& W, const GemvArgs& g, const QuantAct* qa);
/// bf16: round activations and weights to bf16 first (the BF16-compute numerics).
void gemm(const WeightMatrix& W, const GemvArgs& g, bool bf16);
}  // namespace portable
namespace avx2 {
bool compiled();
void gemv(const WeightMatrix& W, const GemvArgs& g, const QuantAct* qa);
void gemm(const WeightMatrix& W, const GemvArgs& g, bool bf16);
}  // namespace avx2

// ---- AVX-512 (F / BW / VL / DQ + VNNI; BF16 instructions only when `bf16` kernels are asked for).
namespace avx512 {
bool compiled();
/// vnni: use vpdpbusd for Q8_0 / Q4_0 (else AVX-512BW vpmaddubsw).
void gemv(const WeightMatrix& W, const GemvArgs& g, const QuantAct* qa, bool vnni);
void gemm(const WeightMatrix& W, const GemvArgs& g, GemmKind kind);
void activate(Activation a, float* p, std::int64_t n);
/// Softmax of one row in place (see activations.hpp, softmax_row<float>).
void softmax_row(float* x, std::int64_t n);
/// Panels [kw][32] words of one 32-row panel (rows <= 32 valid rows of `src`, row stride K
/// elements; bf16: word = element pair, KW = (K + 1) / 2 words; f32: KW = K), the layout of
/// WeightMatrix's Panels (weights.hpp). Writes exactly KW * 32 words.
void pack_panel(const void* src, std::int64_t K, std::int64_t rows, bool bf16, void* dst);
}  // namespace avx512

}  // namespace instructblip::ops::detail

#pragma once
// Private interface between weights.cpp and kernels_amx.cpp (the AMX-BF16 GEMM, compiled with
// -mamx-tile -mamx-bf16 and AVX-512 function attributes so that the rest of the library does not
// need those flags). Not installed.
#include <cstdint>

#include "instructblip/ops/weights.hpp"

namespace instructblip::ops::detail {

/// True when the build has the AMX kernel, the CPU has AMX-TILE, AMX-BF16, AVX512-F/BW/VL and
/// AVX512-BF16, and the OS granted this process the tile data state (Linux: arch_prctl
/// ARCH_REQ_XCOMP_PERM, requested once per process on the first call; thread-safe).
bool amx_bf16_usable();
/// True when this build carries the AMX kernel (the compiler had the AMX flags).
bool amx_compiled();

/// Applied to each finished output row segment y[0, n) (bias already added); ctx is passed through.
using EpilogueFn = void (*)(float* y, std::int64_t n, const void* ctx);

struct AmxGemmArgs {
  const float* x;
  std::int64_t ldx, M, K;
  float* y;
  std::int64_t ldy;
  const float* bias;          // may be null
  EpilogueFn epilogue;        // may be null
  const void* epilogue_ctx;
};

/// y = bf16(x) * bf16(W)^T (+ bias), f32 accumulation, on AMX tiles; W is BF16 (either layout),
/// Q8_0 or Q4_0. Call only when amx_bf16_usable(). Work is split by whole 32-column panels and
/// every element is computed the same way for any thread count.
void gemm_amx_bf16(const WeightMatrix& W, const AmxGemmArgs& a);

}  // namespace instructblip::ops::detail

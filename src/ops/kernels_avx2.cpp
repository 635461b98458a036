// The x86-64-v3 kernel level (AVX2 + FMA + F16C): the portable level's source (plain loops the
// compiler vectorises, Eigen's GEMM) compiled with this unit's own flags (CMakeLists.txt), so a
// portable build carries it; linear.cpp calls it only when the CPU reports AVX2 and FMA.
//
// Eigen is renamed in this unit: its templates, instantiated here with AVX2 code, get names of
// their own instead of sharing (and at link time possibly replacing) the baseline instantiations
// the rest of the library uses. See kernels.hpp.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsic headers (used by Eigen in a native build) build "undefined" vectors
// by self-initialisation, which -W(maybe-)uninitialized reports at every use; spurious.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define IB_AVX2_LEVEL 1
#define Eigen IbEigenX86V3
#endif
#include <Eigen/Core>
#include <algorithm>
#include <cstring>

#include "kernels.hpp"
#include "quantize.hpp"

#ifdef IB_AVX2_LEVEL

#define IB_LEVEL_NS avx2
#include "kernels_generic.inc"

namespace instructblip::ops::detail::avx2 {
bool compiled() { return true; }
}  // namespace instructblip::ops::detail::avx2

#else

namespace instructblip::ops::detail::avx2 {
bool compiled() { return false; }
void gemv(const WeightMatrix&, const GemvArgs&, const QuantAct*) {
  throw InvalidArgument("ops: this build has no AVX2 kernels");
}
void gemm(const WeightMatrix&, const GemvArgs&, bool) { throw InvalidArgument("ops: this build has no AVX2 kernels"); }
}  // namespace instructblip::ops::detail::avx2

#endif

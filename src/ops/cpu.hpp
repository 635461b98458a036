#pragma once
// CPU detection and the process-wide kernel switches (private; tests and benchmarks include it
// from src/). The public face is ops::cpu_features() / ops::cpu_model() in weights.hpp.
//
// Levels, each implying the ones before it:
//   portable  the build's baseline code (plain C++ loops, Eigen GEMM)
//   avx2      x86-64-v3: AVX2 + FMA + F16C
//   avx512    AVX-512 F / BW / VL / DQ + VNNI (x86-64-v4 + VNNI: Ice Lake, Zen 4 and later)
//   avx512-bf16  + AVX512-BF16 (vdpbf16ps for the BF16-compute GEMM)
//   amx       + AMX-BF16 tiles granted by the OS
// The environment variable INSTRUCTBLIP_ISA=<level> caps the level for the whole process (read
// once, at the first use of a kernel); set_disabled_isa() turns levels off at run time.
#include <cstdint>
#include <string>

namespace instructblip::ops {

/// Turns off individual SIMD levels (bit-or of the flags) even when the build and the CPU have
/// them. kIsaAmx turns off the AMX GEMM only (BF16-compute then uses vdpbf16ps); kIsaAvx512Bf16
/// turns off vdpbf16ps and AMX; kIsaAvx512Vnni the VNNI integer kernels (AVX-512BW ones instead);
/// kIsaAvx512 every AVX-512 kernel and AMX; kIsaAvx2 the x86-64-v3 level.
enum : unsigned { kIsaAvx512 = 1u, kIsaAvx512Vnni = 2u, kIsaAvx512Bf16 = 4u, kIsaAmx = 8u, kIsaAvx2 = 16u };
void set_disabled_isa(unsigned mask);
unsigned disabled_isa();
/// set_force_scalar(true): the portable level only (same as disabling every SIMD level).
void set_force_scalar(bool on);
bool force_scalar();
/// Largest M that uses the streaming (matrix-vector) kernels; larger M uses the GEMM kernels.
void set_gemv_max_rows(int m);
int gemv_max_rows();
/// The mask INSTRUCTBLIP_ISA implies ("portable", "avx2", "avx512", "avx512-bf16", "amx";
/// unset or empty: 0). Throws InvalidArgument naming the variable for any other value.
unsigned isa_mask_from_env(const char* value);

namespace detail {

struct CpuInfo {
  bool avx2 = false;    // AVX2 + FMA + F16C, OS-enabled
  bool avx512 = false;  // F + BW + VL + DQ + VNNI, OS-enabled
  bool bf16 = false;    // AVX512-BF16
};
const CpuInfo& cpu();

/// The level the kernels use now: CPU support, minus INSTRUCTBLIP_ISA, set_disabled_isa() and
/// set_force_scalar().
bool use_avx2();
bool use_avx512();
bool use_vnni();
bool use_bf16();
bool use_amx();

}  // namespace detail
}  // namespace instructblip::ops

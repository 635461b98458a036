// CPU detection and kernel switches (see cpu.hpp).
#include "cpu.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cctype>
#include <cstring>
#include <fstream>

#include "instructblip/core/error.hpp"
#include "instructblip/ops/weights.hpp"
#include "kernels.hpp"
#include "kernels_amx.hpp"

namespace instructblip::ops {

namespace {

std::atomic<bool> g_force_scalar{false};
std::atomic<unsigned> g_disabled{0};
std::atomic<int> g_gemv_max_rows{8};

detail::CpuInfo detect() {
  detail::CpuInfo s;
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports also checks that the OS saves the wider register state (XCR0).
  __builtin_cpu_init();
  s.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  s.avx512 = s.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vnni");
  s.bf16 = s.avx512 && __builtin_cpu_supports("avx512bf16");
#endif
  s.avx2 = s.avx2 && detail::avx2::compiled();
  s.avx512 = s.avx512 && detail::avx512::compiled();
  s.bf16 = s.bf16 && s.avx512;
  return s;
}

// INSTRUCTBLIP_ISA, read once.
unsigned env_mask() {
  static const unsigned m = isa_mask_from_env(std::getenv("INSTRUCTBLIP_ISA"));
  return m;
}

unsigned off() { return g_disabled.load() | env_mask(); }

}  // namespace

unsigned isa_mask_from_env(const char* value) {
  if (!value || !*value) return 0;
  std::string v(value);
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (v == "amx") return 0;
  if (v == "avx512-bf16" || v == "avx512bf16") return kIsaAmx;
  if (v == "avx512") return kIsaAmx | kIsaAvx512Bf16;
  if (v == "avx2") return kIsaAmx | kIsaAvx512Bf16 | kIsaAvx512Vnni | kIsaAvx512;
  if (v == "portable" || v == "scalar") return kIsaAmx | kIsaAvx512Bf16 | kIsaAvx512Vnni | kIsaAvx512 | kIsaAvx2;
  throw InvalidArgument("INSTRUCTBLIP_ISA='" + v + "': expected portable, avx2, avx512, avx512-bf16 or amx");
}

void set_force_scalar(bool on) { g_force_scalar.store(on); }
bool force_scalar() { return g_force_scalar.load(); }
void set_disabled_isa(unsigned mask) { g_disabled.store(mask); }
unsigned disabled_isa() { return g_disabled.load(); }
void set_gemv_max_rows(int m) { g_gemv_max_rows.store(std::max(0, m)); }
int gemv_max_rows() { return g_gemv_max_rows.load(); }

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const auto c = line.find(':');
      if (c != std::string::npos) return line.substr(line.find_first_not_of(" \t", c + 1));
    }
#if defined(__x86_64__) || defined(__i386__)
  // No /proc: the CPUID brand string.
  unsigned regs[12] = {};
  if (__builtin_cpu_supports("sse2")) {
    for (unsigned i = 0; i < 3; ++i) {
      unsigned a, b, c, d;
      __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0x80000002u + i), "c"(0));
      regs[4 * i] = a, regs[4 * i + 1] = b, regs[4 * i + 2] = c, regs[4 * i + 3] = d;
    }
    char s[49] = {};
    std::memcpy(s, regs, 48);
    std::string r(s);
    const auto b = r.find_first_not_of(' ');
    if (b != std::string::npos) return r.substr(b);
  }
#endif
  return "unknown CPU";
}

namespace detail {

const CpuInfo& cpu() {
  static const CpuInfo s = detect();
  return s;
}

bool use_avx2() { return !g_force_scalar.load() && !(off() & kIsaAvx2) && cpu().avx2; }
bool use_avx512() { return !g_force_scalar.load() && !(off() & (kIsaAvx512 | kIsaAvx2)) && cpu().avx512; }
bool use_vnni() { return use_avx512() && !(off() & kIsaAvx512Vnni); }
bool use_bf16() { return use_avx512() && !(off() & kIsaAvx512Bf16) && cpu().bf16; }
// The AMX GEMM converts with AVX512-BF16, so turning that (or AVX-512) off turns it off too.
bool use_amx() { return use_bf16() && !(off() & kIsaAmx) && amx_bf16_usable(); }

}  // namespace detail
}  // namespace instructblip::ops

// Linked into every benchmark program: the CPU model and the kernel levels in use head every
// table (Google Benchmark's context block, also in --benchmark_format=json), so a table is never
// quoted without the machine it ran on.
#include <benchmark/benchmark.h>

#include "instructblip/ops/weights.hpp"

namespace {
const bool registered = [] {
  benchmark::AddCustomContext("cpu_model", instructblip::ops::cpu_model());
  benchmark::AddCustomContext("kernels", instructblip::ops::cpu_features());
  return true;
}();
}  // namespace

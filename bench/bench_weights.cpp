// ops::linear on WeightMatrix formats (f32 / bf16 / q8_0 / q4_0) at the shapes that dominate
// InstructBLIP: a decode step (M = 1) of Flan-T5-XL (2048 -> 5120) and Vicuna-7B (4096 -> 11008)
// sized layers, reported as weight bytes streamed per second, and the ViT-g/14 MLP (M = 257,
// 1408 <-> 6144), reported as GFLOPS; on 1 and 2 threads. Prints ops::cpu_features() first.
// variant: 0 row-major, 1 Panels layout (f32 / bf16), 2 bf16-activation vdpbf16ps GEMM (M = 257;
// bf16 in Panels layout). The label names the kernel linear() dispatched to.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <thread>
#include <tuple>

#include "instructblip/core/thread_pool.hpp"
#include "instructblip/ops/weights.hpp"

using namespace instructblip;

namespace {

MatrixF random_matrix(Eigen::Index r, Eigen::Index c, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  MatrixF m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = u(g);
  return m;
}

// One prepared weight at a time (the 4096 x 11008 f32 source alone is 180 MB).
const ops::WeightMatrix& weight(ops::WeightFormat f, ops::WeightLayout l, std::int64_t N, std::int64_t K) {
  static std::tuple<int, int, std::int64_t, std::int64_t> key{-1, -1, 0, 0};
  static std::unique_ptr<ops::WeightMatrix> w;
  if (key != std::make_tuple(int(f), int(l), N, K)) {
    w.reset();
    MatrixF src = random_matrix(N, K, 42);
    Tensor t = Tensor::borrow(src.data(), {N, K}, DType::F32).clone();  // owned: F32 row-major shares it
    w = std::make_unique<ops::WeightMatrix>(t, f, l);
    key = std::make_tuple(int(f), int(l), N, K);
  }
  return *w;
}

void BM_weights(benchmark::State& state) {
  const auto f = ops::WeightFormat(state.range(0));
  const auto M = state.range(1), K = state.range(2), N = state.range(3);
  const int threads = int(state.range(4)), variant = int(state.range(5));
  set_num_threads(threads);
  const bool panels = variant == 1 || (variant == 2 && f == ops::WeightFormat::BF16);
  ops::set_gemm_bf16_activations(variant == 2);
  const ops::WeightMatrix& W = weight(f, panels ? ops::WeightLayout::Panels : ops::WeightLayout::RowMajor, N, K);
  MatrixF x = random_matrix(M, K, 7), y(M, N);
  std::vector<float> b(std::size_t(N), 0.5f);
  for (auto _ : state) {
    ops::linear(x, W, b.data(), y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(ops::kernel_name(W, M));
  ops::set_gemm_bf16_activations(false);
  const double flops = 2.0 * double(M) * double(K) * double(N);
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weight_GB/s"] =
      benchmark::Counter(double(W.bytes()) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

void shapes(benchmark::internal::Benchmark* b) {
  const int all = int(std::max(1u, std::thread::hardware_concurrency()));
  for (int fmt = 0; fmt < 4; ++fmt)
    for (auto mkn : {std::array<int, 3>{1, 2048, 5120}, std::array<int, 3>{1, 4096, 11008},
                     std::array<int, 3>{257, 1408, 6144}, std::array<int, 3>{257, 6144, 1408}})
      for (int variant = 0; variant < 3; ++variant) {
        if (variant == 1 && fmt > 1) continue;                // Panels: f32 / bf16 only
        if (variant == 2 && (fmt == 0 || mkn[0] == 1)) continue;  // bf16 activations: GEMM of bf16 / q
        for (int t : {1, all}) {
          b->Args({fmt, mkn[0], mkn[1], mkn[2], t, variant});
          if (all == 1) break;
        }
      }
}

// Reference point for the GB/s figures: a plain AVX-512-free streaming read (sum) of a buffer of
// the given size, split over the pool like the kernels. On a shared machine this moves with the
// load, so compare each kernel with the probe run next to it.
void BM_read_bandwidth(benchmark::State& state) {
  const std::int64_t bytes = state.range(0) << 20;
  const int threads = int(state.range(1));
  set_num_threads(threads);
  std::vector<float> buf(std::size_t(bytes / 4), 1.f);
  const std::int64_t n = std::int64_t(buf.size());
  for (auto _ : state) {
    float sums[64] = {};
    parallel_for(0, threads, 1, [&](std::int64_t t0, std::int64_t t1) {
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t b = n / threads * t, e = t + 1 == threads ? n : n / threads * (t + 1);
        float acc[16] = {};
        for (std::int64_t i = b; i + 16 <= e; i += 16)
          for (int j = 0; j < 16; ++j) acc[j] += buf[std::size_t(i + j)];
        for (int j = 0; j < 16; ++j) sums[t] += acc[j];
      }
    });
    benchmark::DoNotOptimize(sums);
  }
  state.counters["GB/s"] = benchmark::Counter(double(bytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

const bool printed = [] {
  std::printf("ops::cpu_features(): %s\n", ops::cpu_features().c_str());
  return true;
}();

}  // namespace

BENCHMARK(BM_weights)
    ->ArgNames({"fmt", "M", "K", "N", "threads", "variant"})
    ->Apply(shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_read_bandwidth)
    ->ArgNames({"MiB", "threads"})
    ->Args({24, 1})
    ->Args({24, 2})
    ->Args({96, 1})
    ->Args({96, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

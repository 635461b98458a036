// ops::linear on WeightMatrix formats (f32 / bf16 / q8_0 / q4_0) at the shapes that dominate
// InstructBLIP: a decode step of 1 and of 8 rows (a batch) of Flan-T5-XL (2048 -> 5120) and
// Vicuna-7B (4096 -> 11008) sized layers, reported as weight bytes streamed per second, a Flan-T5-XL
// prompt (M = 48) and the ViT-g/14 MLP (M = 257, 1408 <-> 6144), reported as GFLOPS; on 1 and 2
// threads (context.cpp heads the table with the CPU).
// variant: 0 row-major, 1 Panels layout (f32 / bf16 / q8_0), 2 bf16-activation GEMM through the
// process-wide set_gemm_bf16_activations (M > 8; the layout of ops::preferred_layout; AMX when available).
// BM_bf16_compute: the per-call GemmCompute::BF16 regime (AMX vs vdpbf16ps) at the ViT-g/14 and
// Q-Former shapes; BM_f32_gemm: F32 weights, own GEMM vs Eigen. The label names the kernel.
#include <benchmark/benchmark.h>

#include <array>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <thread>
#include <tuple>

#include "instructblip/core/thread_pool.hpp"
#include "ops/cpu.hpp"
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
  // variant 2 takes the layout the loaders give the format on this CPU (ops::preferred_layout)
  const auto layout = variant == 1   ? ops::WeightLayout::Panels
                      : variant == 2 ? ops::preferred_layout(f)
                                     : ops::WeightLayout::RowMajor;
  ops::set_gemm_bf16_activations(variant == 2);
  const ops::WeightMatrix& W = weight(f, layout, N, K);
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
                     std::array<int, 3>{8, 2048, 5120}, std::array<int, 3>{8, 4096, 11008},
                     std::array<int, 3>{48, 2048, 2048}, std::array<int, 3>{48, 2048, 5120},
                     std::array<int, 3>{257, 1408, 6144}, std::array<int, 3>{257, 6144, 1408}})
      for (int variant = 0; variant < 3; ++variant) {
        if (variant == 1 && fmt > 2) continue;                // Panels: f32 / bf16 / q8_0
        if (variant == 2 && (fmt == 0 || mkn[0] <= 8)) continue;  // bf16 activations: GEMM of bf16 / q
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

// The BF16-compute GEMM regime (GemmCompute::BF16 per call) at the ViT-g/14 (1408 <-> 6144) and
// Q-Former (768 <-> 3072) shapes, M = 257: kernel 0 = the default (AMX tiles when the CPU / OS
// allow them), 1 = vdpbf16ps (AMX turned off through set_disabled_isa(kIsaAmx)).
// layout 1 = Panels (bf16 only).
void BM_bf16_compute(benchmark::State& state) {
  const auto f = ops::WeightFormat(state.range(0));
  const auto layout = state.range(1) ? ops::WeightLayout::Panels : ops::WeightLayout::RowMajor;
  const auto M = state.range(2), K = state.range(3), N = state.range(4);
  const int threads = int(state.range(5)), kernel = int(state.range(6));
  set_num_threads(threads);
  ops::set_disabled_isa(kernel == 1 ? ops::kIsaAmx : 0u);
  const ops::WeightMatrix& W = weight(f, layout, N, K);
  MatrixF x = random_matrix(M, K, 7), y(M, N);
  std::vector<float> b(static_cast<std::size_t>(N), 0.5f);
  ops::LinearOptions o;
  o.compute = ops::GemmCompute::BF16;
  o.activate = state.range(7) != 0;
  for (auto _ : state) {
    ops::linear(x, W, b.data(), y, o);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(ops::kernel_name(W, M, ops::GemmCompute::BF16) + (o.activate ? "+gelu" : ""));
  ops::set_disabled_isa(0);
  state.counters["GFLOPS"] =
      benchmark::Counter(2.0 * double(M) * double(K) * double(N) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

const std::array<std::array<int, 2>, 6> kGemmShapes = {{{1408, 1408}, {1408, 6144}, {6144, 1408},
                                                        {768, 768}, {768, 3072}, {3072, 768}}};  // {K, N}

void bf16_shapes(benchmark::internal::Benchmark* b) {
  const int all = int(std::max(1u, std::thread::hardware_concurrency()));
  for (auto kn : kGemmShapes) {
    // bf16 Panels: default (AMX) and vdpbf16ps, on all threads (+ 1 thread for the default)
    for (int kernel : {0, 1}) b->Args({1, 1, 257, kn[0], kn[1], all, kernel, 0});
    if (all > 1) b->Args({1, 1, 257, kn[0], kn[1], 1, 0, 0});
    b->Args({1, 1, 257, kn[0], kn[1], all, 0, 1});  // fused GELU epilogue
    for (int fmt : {1, 2, 3}) b->Args({fmt, 0, 257, kn[0], kn[1], all, 0, 0});  // row-major bf16, q8_0, q4_0
  }
}

// F32 weights at M = 257: the own AVX-512 GEMM on the row-major WeightMatrix (impl 0) vs Eigen
// (ops::linear<float> on a Map of the same row-major data, impl 1) - linear() dispatches to the
// own kernel, which measured faster (see the report in weights.hpp).
void BM_f32_gemm(benchmark::State& state) {
  const auto M = state.range(0), K = state.range(1), N = state.range(2);
  const int threads = int(state.range(3)), impl = int(state.range(4));
  set_num_threads(threads);
  const ops::WeightMatrix& W = weight(ops::WeightFormat::F32, ops::WeightLayout::RowMajor, N, K);
  Eigen::Map<const RowMatrix<float>> Wm(static_cast<const float*>(W.data()), N, K);
  MatrixF x = random_matrix(M, K, 7), y(M, N);
  std::vector<float> b(static_cast<std::size_t>(N), 0.5f);
  for (auto _ : state) {
    if (impl == 0)
      ops::linear(x, W, b.data(), y);
    else
      ops::linear<float>(x, Wm, b.data(), y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(impl == 0 ? ops::kernel_name(W, M) : std::string("eigen(ops::linear<float>)"));
  state.counters["GFLOPS"] =
      benchmark::Counter(2.0 * double(M) * double(K) * double(N) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void f32_shapes(benchmark::internal::Benchmark* b) {
  const int all = int(std::max(1u, std::thread::hardware_concurrency()));
  for (auto kn : kGemmShapes)
    for (int impl : {0, 1}) b->Args({257, kn[0], kn[1], all, impl});
}

}  // namespace

BENCHMARK(BM_weights)
    ->ArgNames({"fmt", "M", "K", "N", "threads", "variant"})
    ->Apply(shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_bf16_compute)
    ->ArgNames({"fmt", "panels", "M", "K", "N", "threads", "kernel", "gelu"})
    ->Apply(bf16_shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_f32_gemm)
    ->ArgNames({"M", "K", "N", "threads", "impl"})
    ->Apply(f32_shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
// 24 / 96 MiB are cache-resident on CPUs with large L3s (this one has 480 MiB); 2 GiB is DRAM,
// the regime of a decode step (GBs of weights per token).
BENCHMARK(BM_read_bandwidth)
    ->ArgNames({"MiB", "threads"})
    ->Args({24, 1})
    ->Args({24, 2})
    ->Args({96, 1})
    ->Args({96, 2})
    ->Args({2048, 1})
    ->Args({2048, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

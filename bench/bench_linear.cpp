// linear() at the shapes that dominate InstructBLIP: the ViT-g/14 encoder (M = 257 tokens)
// and a decode step (M = 1) of Flan-T5-XL / Vicuna-7B sized layers. Reports GFLOPS and the
// bandwidth of weights streamed, on one thread and on all threads.
#include <benchmark/benchmark.h>

#include <random>
#include <thread>

#include "instructblip/core/thread_pool.hpp"
#include "instructblip/ops/linear.hpp"

using namespace instructblip;

namespace {
MatrixF random_matrix(Eigen::Index r, Eigen::Index c) {
  std::mt19937 g(42);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  MatrixF m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = u(g);
  return m;
}

void BM_linear(benchmark::State& state) {
  const auto M = state.range(0), K = state.range(1), N = state.range(2);
  const int threads = int(state.range(3));
  set_num_threads(threads);
  MatrixF x = random_matrix(M, K), W = random_matrix(N, K), y(M, N);
  std::vector<float> b(std::size_t(N), 0.5f);
  for (auto _ : state) {
    ops::linear<float>(x, W, b.data(), y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * double(M) * double(K) * double(N);
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weight_GB/s"] =
      benchmark::Counter(double(N * K) * 4e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

void shapes(benchmark::internal::Benchmark* b) {
  const int all = int(std::max(1u, std::thread::hardware_concurrency()));
  for (int t : {1, all}) {
    b->Args({257, 1408, 1408, t});   // ViT-g attention projection
    b->Args({257, 1408, 6144, t});   // ViT-g fc1
    b->Args({257, 6144, 1408, t});   // ViT-g fc2
    b->Args({1, 2048, 5120, t});     // Flan-T5-XL FFN (decode)
    b->Args({1, 4096, 11008, t});    // Vicuna-7B MLP (decode)
    if (all == 1) break;
  }
}
}  // namespace

BENCHMARK(BM_linear)->ArgNames({"M", "K", "N", "threads"})->Apply(shapes)->UseRealTime()->Unit(benchmark::kMillisecond);

// One T5 decoder step (batch 1) at Flan-T5-XL shape: d_model 2048, 24 decoder blocks, 32 heads x 64,
// d_ff 5120 gated-gelu, vocab 32128, untied lm_head; after a 40-token encoder input and a few cached
// tokens. Weights are random float32 built in memory (no checkpoint file) and bound through
// T5Model's WeightFn constructor, i.e. the same binding code a checkpoint goes through.
//
// Memory (~6.2 GB): everything one step streams is distinct memory (self-attention q/k/v/o,
// cross-attention q/o, FFN, norms, lm_head: 5.7 GB). Not streamed by a step, and therefore shrunk:
// the encoder has 1 block instead of 24 (it only runs in start()), and the cross-attention k/v
// weights (read only by start() to build the cross K/V cache) share one buffer across blocks.
//
// Reports real time per step (= ms per token at batch 1) and the bandwidth of weights streamed, for
// each weight format (f32 / bf16 / q8_0 / q4_0, converted from the random float32 weights at load).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "instructblip/core/thread_pool.hpp"
#include "instructblip/models/t5.hpp"

using namespace instructblip;
using models::T5Model;

namespace {

T5Config flan_t5_xl_decoder() {
  T5Config c;
  c.vocab_size = 32128;
  c.d_model = 2048;
  c.d_kv = 64;
  c.num_heads = 32;
  c.d_ff = 5120;
  c.num_layers = 1;  // encoder blocks (Flan-T5-XL: 24); a decoder step does not touch them
  c.num_decoder_layers = 24;
  c.feed_forward_proj = "gated-gelu";
  c.dense_act_fn = "gelu";  // as in Salesforce/instructblip-flan-t5-xl's config.json
  c.is_gated_act = true;
  c.tie_word_embeddings = false;
  c.decoder_start_token_id = 0;
  return c;
}

// Uniform in [-a, a] (variance a^2 / 3), a fast counter-based generator, filled in parallel.
void fill_uniform(float* p, std::int64_t n, float a, float mean, std::uint64_t seed) {
  parallel_for(0, n, 1 << 20, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      std::uint64_t z = seed + std::uint64_t(i) * 0x9E3779B97F4A7C15ull;  // splitmix64
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      const float u = float(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
      p[i] = mean + a * (2.0f * u - 1.0f);
    }
  });
}

Tensor random_weight(const std::string& name, const Shape& shape, std::uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::F32);
  const std::int64_t fan_in = shape.back();
  float a = std::sqrt(3.0f / float(fan_in)), mean = 0.0f;  // variance 1 / fan_in
  if (shape.size() == 1) {                                  // RMSNorm weights: 1 +- 0.1
    a = 0.1f;
    mean = 1.0f;
  } else if (name.find("relative_attention_bias") != std::string::npos || name == "shared.weight") {
    a = 1.0f;
  }
  fill_uniform(t.data<float>(), t.numel(), a, mean, seed * 0x632BE59BD9B4E019ull + 1);
  return t;
}

// One model at a time (format = ops::WeightFormat), to stay within the memory budget.
const T5Model& model(ops::WeightFormat format) {
  static std::unique_ptr<T5Model> m;
  static int built = -1;
  if (built == int(format)) return *m;
  m.reset();
  built = int(format);
  m = [format] {
    std::map<Shape, Tensor> shared_cross_kv;  // one buffer for every block's EncDecAttention.k / .v
    std::uint64_t seed = 1;
    T5Model::WeightFn weights = [&](const std::string& name, const Shape& shape) {
      const bool cross_kv = name.find("EncDecAttention.k.") != std::string::npos ||
                            name.find("EncDecAttention.v.") != std::string::npos;
      if (cross_kv) {
        auto it = shared_cross_kv.find(shape);
        if (it == shared_cross_kv.end()) it = shared_cross_kv.emplace(shape, random_weight(name, shape, seed++)).first;
        return it->second;
      }
      return random_weight(name, shape, seed++);
    };
    models::WeightPolicy policy;
    policy.format = format;
    return std::make_unique<T5Model>(flan_t5_xl_decoder(), weights, policy);
  }();
  return *m;
}

void BM_t5_xl_decode_step(benchmark::State& state) {
  const auto format = static_cast<ops::WeightFormat>(state.range(0));
  const T5Model& m = model(format);
  const std::int64_t L = 40, cached = 4, D = m.hidden_size();
  Tensor embeds = Tensor::empty({1, L, D});
  fill_uniform(embeds.data<float>(), embeds.numel(), 1.0f, 0.0f, 99);
  Tensor mask = Tensor::from_vector({1, L}, std::vector<std::int64_t>(std::size_t(L), 1));
  auto st = m.start(embeds, mask, 256);
  std::int64_t token = 0;  // decoder start
  for (std::int64_t i = 0; i < cached; ++i) {
    Tensor l = m.step(*st, {token});
    token = 100 + i;
  }
  const double bytes = double(m.decoder_step_weight_bytes());
  double seconds = 0.0;
  std::int64_t steps = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    Tensor l = m.step(*st, {token});
    benchmark::DoNotOptimize(l.raw());
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++steps;
    token = 200 + (steps % 1000);
  }
  state.counters["ms/token"] = seconds / double(steps) * 1e3;
  state.counters["weight_GB/s"] = bytes * double(steps) / seconds * 1e-9;
  state.counters["weight_GB/step"] = bytes * 1e-9;
  state.counters["threads"] = num_threads();
  state.SetLabel(std::string(ops::weight_format_name(format)) + " weights (wo: " +
                 ops::weight_format_name(m.weight_policy().format_for(models::MatrixRole::T5FfnOut)) + ")");
}
// format: 0 f32, 1 bf16, 2 q8_0, 3 q4_0 (ops::WeightFormat; models::WeightPolicy per matrix)
BENCHMARK(BM_t5_xl_decode_step)
    ->ArgName("format")
    ->DenseRange(0, 3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(2.0);

}  // namespace

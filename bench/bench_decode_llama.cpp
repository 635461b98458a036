// One LLaMA decode step (batch 1, ~40 cached positions) at Vicuna-7B layer shapes: hidden 4096,
// 32 heads, intermediate 11008, vocab 32000.
//
// The full 32-layer model does not fit the memory budget (f32: 27 GB; bf16: 13.5 GB), so the
// benchmark builds REDUCED-DEPTH models with random weights (the layer count is the `layers`
// argument) and reports:
//   * real time per iteration = ms per generated token at that depth;
//   * weight_GB/s  = bytes of weight matrices streamed per step (every layer + lm_head) / time;
//   * weights_GB   = those bytes;
//   * est_ms_32L   = the time per token extrapolated to Vicuna-7B's 32 layers at the measured
//                    bandwidth (a decode step is bound by streaming the weights).
// `bf16` = 1 keeps the matrices in bfloat16 (LlamaOptions::weight_dtype) and widens them on the fly.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>

#include "instructblip/core/thread_pool.hpp"
#include "instructblip/models/llama.hpp"

using namespace instructblip;

namespace {

LlamaConfig vicuna7b_config(int layers) {
  LlamaConfig c;  // LlamaConfig defaults are LLaMA-7B: 4096 / 11008 / 32 heads / vocab 32000
  c.num_hidden_layers = layers;
  c.num_key_value_heads = c.num_attention_heads;
  return c;
}

// Deterministic, cheap pseudo-random values in [-scale, scale) (splitmix64 of the index).
inline float hash_uniform(std::uint64_t i, float scale) {
  std::uint64_t z = i + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (float(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * scale;
}

Tensor random_tensor(const Shape& s, DType dt, float scale, float offset, std::uint64_t seed) {
  Tensor t = Tensor::empty(s, dt);
  const std::int64_t n = t.numel();
  void* p = t.raw_mut();
  parallel_for(0, n, 1 << 20, [&](std::int64_t a, std::int64_t b) {
    for (std::int64_t i = a; i < b; ++i) {
      const float v = offset + hash_uniform(seed * 0x100000000ull + std::uint64_t(i), scale);
      if (dt == DType::F32)
        static_cast<float*>(p)[i] = v;
      else
        static_cast<std::uint16_t*>(p)[i] = f32_to_bf16(v);
    }
  });
  return t;
}

struct Built {
  int layers = -1;
  bool bf16 = false;
  std::unique_ptr<models::LlamaModel> model;
};
Built g_built;  // one model at a time, to stay within the memory budget

const models::LlamaModel& model_for(int layers, bool bf16) {
  if (g_built.model && g_built.layers == layers && g_built.bf16 == bf16) return *g_built.model;
  g_built.model.reset();
  const LlamaConfig c = vicuna7b_config(layers);
  const DType dt = bf16 ? DType::BF16 : DType::F32;
  const std::int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const float sh = 1.7f / std::sqrt(float(H)), si = 1.7f / std::sqrt(float(I));  // ~unit-variance outputs
  std::map<std::string, Tensor> w;
  std::uint64_t seed = 1;
  w["model.embed_tokens.weight"] = random_tensor({V, H}, dt, 1.0f, 0.0f, seed++);
  w["lm_head.weight"] = random_tensor({V, H}, dt, sh, 0.0f, seed++);
  w["model.norm.weight"] = random_tensor({H}, DType::F32, 0.1f, 1.0f, seed++);
  for (int l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w[p + "input_layernorm.weight"] = random_tensor({H}, DType::F32, 0.1f, 1.0f, seed++);
    w[p + "post_attention_layernorm.weight"] = random_tensor({H}, DType::F32, 0.1f, 1.0f, seed++);
    for (const char* n : {"q_proj", "k_proj", "v_proj", "o_proj"})
      w[p + "self_attn." + n + ".weight"] = random_tensor({H, H}, dt, sh, 0.0f, seed++);
    w[p + "mlp.gate_proj.weight"] = random_tensor({I, H}, dt, sh, 0.0f, seed++);
    w[p + "mlp.up_proj.weight"] = random_tensor({I, H}, dt, sh, 0.0f, seed++);
    w[p + "mlp.down_proj.weight"] = random_tensor({H, I}, dt, si, 0.0f, seed++);
  }
  models::LlamaOptions opt;
  opt.weight_dtype = dt;
  g_built.model = std::make_unique<models::LlamaModel>(c, w, "", opt);  // shares the tensors (no copy)
  g_built.layers = layers;
  g_built.bf16 = bf16;
  return *g_built.model;
}

void BM_llama_decode_step(benchmark::State& state) {
  const int layers = int(state.range(0));
  const bool bf16 = state.range(1) != 0;
  const models::LlamaModel& m = model_for(layers, bf16);
  const std::int64_t H = m.hidden_size();
  constexpr std::int64_t kPrompt = 39;  // + the first decoded token -> 40 cached positions
  Tensor prompt = random_tensor({1, kPrompt, H}, DType::F32, 1.0f, 0.0f, 999);
  Tensor mask = Tensor::from_vector({1, kPrompt}, std::vector<std::int64_t>(kPrompt, 1));
  auto st = m.start(prompt, mask, 64);
  m.step(*st, {});         // prefill (39 positions)
  m.step(*st, {1234});     // 40 cached positions
  std::int64_t tok = 29871;
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    Tensor logits = m.step(*st, {tok});
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(logits.raw());
    tok = (tok * 7 + 13) % m.vocab_size();
  }
  const double bytes = double(m.decode_weight_bytes());
  const double per_token = seconds / double(state.iterations());
  const double head_bytes = double(m.vocab_size() * H * (bf16 ? 2 : 4));
  const double full_bytes = (bytes - head_bytes) / layers * 32 + head_bytes;
  state.counters["weights_GB"] = bytes * 1e-9;
  state.counters["weight_GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["est_ms_32L"] = per_token * 1e3 * full_bytes / bytes;
  state.counters["threads"] = num_threads();
  state.SetLabel(std::string(bf16 ? "bf16" : "f32") + " weights, " + std::to_string(layers) +
                 " of 32 layers (reduced depth), ~40 cached positions");
}

}  // namespace

// 8 layers in f32 (7.5 GB), 8 and 16 layers in bf16 (3.8 / 7.0 GB).
BENCHMARK(BM_llama_decode_step)
    ->ArgNames({"layers", "bf16"})
    ->Args({8, 0})
    ->Args({8, 1})
    ->Args({16, 1})
    ->Iterations(10)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

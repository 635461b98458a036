// One LLaMA decode step (batch 1, ~40 cached positions) at Vicuna-7B layer shapes: hidden 4096,
// 32 heads, intermediate 11008, vocab 32000.
//
// The full 32-layer f32 model does not fit the memory budget (27 GB), so f32 is measured on a
// REDUCED-DEPTH model with random weights (the layer count is the `layers`
// argument) and reports:
//   * real time per iteration = ms per generated token at that depth;
//   * weight_GB/s  = bytes of weight matrices streamed per step (every layer + lm_head) / time;
//   * weights_GB   = those bytes;
//   * est_ms_32L   = the time per token extrapolated to Vicuna-7B's 32 layers at the measured
//                    bandwidth (a decode step is bound by streaming the weights).
// `format` is the ops::WeightFormat the projection matrices and lm_head are kept in
// (0 f32, 1 bf16, 2 q8_0, 3 q4_0; see models::WeightPolicy).
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>

#include "instructblip/core/thread_pool.hpp"
#include "random_weights.hpp"
#include "instructblip/models/llama.hpp"

using namespace instructblip;

namespace {

LlamaConfig vicuna7b_config(int layers) {
  LlamaConfig c;  // LlamaConfig defaults are LLaMA-7B: 4096 / 11008 / 32 heads / vocab 32000
  c.num_hidden_layers = layers;
  c.num_key_value_heads = c.num_attention_heads;
  return c;
}

using ibbench::random_tensor;

struct Built {
  int layers = -1;
  ops::WeightFormat format = ops::WeightFormat::F32;
  std::unique_ptr<models::LlamaModel> model;
};
Built g_built;  // one model at a time, to stay within the memory budget

// Random weights made on demand, one tensor at a time, so that a quantised model never holds the
// float weights of more than one matrix besides its own storage.
const models::LlamaModel& model_for(int layers, ops::WeightFormat format) {
  if (g_built.model && g_built.layers == layers && g_built.format == format) return *g_built.model;
  g_built.model.reset();
  const LlamaConfig c = vicuna7b_config(layers);
  const DType dt = format == ops::WeightFormat::F32 ? DType::F32 : DType::BF16;
  const std::int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const float sh = 1.7f / std::sqrt(float(H)), si = 1.7f / std::sqrt(float(I));  // ~unit-variance outputs
  auto ends_with = [](const std::string& s, const char* suffix) {
    const std::size_t n = std::strlen(suffix);
    return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
  };
  auto make = [&](const std::string& name) -> Tensor {
    const std::uint64_t seed = std::hash<std::string>()(name) & 0xffffffu;
    if (name == "model.embed_tokens.weight") return random_tensor({V, H}, dt, 1.0f, 0.0f, seed);
    if (name == "lm_head.weight") return random_tensor({V, H}, dt, sh, 0.0f, seed);
    if (ends_with(name, "norm.weight")) return random_tensor({H}, DType::F32, 0.1f, 1.0f, seed);
    if (ends_with(name, "_proj.weight") && name.find("self_attn") != std::string::npos)
      return random_tensor({H, H}, dt, sh, 0.0f, seed);
    if (ends_with(name, "gate_proj.weight") || ends_with(name, "up_proj.weight"))
      return random_tensor({I, H}, dt, sh, 0.0f, seed);
    if (ends_with(name, "down_proj.weight")) return random_tensor({H, I}, dt, si, 0.0f, seed);
    return Tensor();  // e.g. "<name>.q8_0": not stored quantised
  };
  models::LlamaOptions opt;
  opt.weights.format = format;
  g_built.model = std::make_unique<models::LlamaModel>(c, models::WeightSource(make, "random weights"), "", opt);
  g_built.layers = layers;
  g_built.format = format;
  return *g_built.model;
}

void BM_llama_decode_step(benchmark::State& state) {
  const int layers = int(state.range(0));
  const auto format = static_cast<ops::WeightFormat>(state.range(1));
  const models::LlamaModel& m = model_for(layers, format);
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
  const double head_bytes = double(m.lm_head_weight_bytes());
  const double full_bytes = (bytes - head_bytes) / layers * 32 + head_bytes;
  state.counters["weights_GB"] = bytes * 1e-9;
  state.counters["weight_GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["est_ms_32L"] = per_token * 1e3 * full_bytes / bytes;
  state.counters["threads"] = num_threads();
  state.SetLabel(std::string(ops::weight_format_name(format)) + " weights, " + std::to_string(layers) +
                 " of 32 layers" + (layers < 32 ? " (reduced depth)" : "") + ", ~40 cached positions");
}

}  // namespace

// f32: 8 layers (7.5 GB; 32 would not fit in memory); bf16 / q8_0 / q4_0: the full 32 layers
// (13.5 / 7.2 / 3.8 GB).
BENCHMARK(BM_llama_decode_step)
    ->ArgNames({"layers", "format"})
    ->Args({8, int(ops::WeightFormat::F32)})
    ->Args({32, int(ops::WeightFormat::BF16)})
    ->Args({32, int(ops::WeightFormat::Q8_0)})
    ->Args({32, int(ops::WeightFormat::Q4_0)})
    ->Iterations(10)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

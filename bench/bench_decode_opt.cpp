// One OPT decode step (batch 1) at the language-model shapes of BLIP-2 OPT-2.7b (hidden 2560,
// 32 layers, 32 heads, ffn 10240) and OPT-6.7b (hidden 4096, ffn 16384), vocab 50272, head tied to
// the token embeddings. The prompt is what BLIP-2 feeds OPT: 32 query embeddings and a few prompt
// tokens (40 positions), then one decoded token, so the timed steps see ~41 cached positions.
//
// Random weights made in memory tensor by tensor (no checkpoint). Reports:
//   * real time per iteration = ms per generated token;
//   * weight_GB/s  = bytes of weight matrices streamed per step (every layer + the tied head,
//                    OPTModel::decode_weight_bytes()) / time;
//   * weights_GB   = those bytes;
//   * est_ms_32L   = with fewer layers than 32 (smoke runs), the time per token extrapolated to 32
//                    layers at the measured bandwidth (a decode step is bound by streaming weights).
// `format` is the ops::WeightFormat of the matrices and the head (1 bf16, 2 q8_0, 3 q4_0; see
// models::WeightPolicy). Arguments: size (2560 = OPT-2.7b, 4096 = OPT-6.7b), layers, format.
// Measure: build/bench/bench_decode_opt --benchmark_filter='BM_opt_decode_step/'
// Smoke run (2 layers, 1 iteration): build/bench/bench_decode_opt --benchmark_filter=smoke
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>

#include "instructblip/core/thread_pool.hpp"
#include "random_weights.hpp"
#include "instructblip/layers/weights.hpp"
#include "instructblip/models/opt.hpp"

using namespace instructblip;

namespace {

OPTConfig opt_config(std::int64_t hidden, int layers) {
  OPTConfig c;  // facebook/opt-2.7b and opt-6.7b: 32 heads, 32 layers, ffn = 4 * hidden
  c.vocab_size = 50272;
  c.hidden_size = hidden;
  c.word_embed_proj_dim = hidden;
  c.ffn_dim = 4 * hidden;
  c.num_attention_heads = 32;
  c.num_hidden_layers = layers;
  c.max_position_embeddings = 2048;
  c.eos_token_id = {50118};
  return c;
}

using ibbench::random_tensor;

// Bytes per weight of a stored matrix (q8_0: 32 int8 + an f16 scale; q4_0: 32 nibbles + an f16 scale).
double bytes_per_weight(ops::WeightFormat f) {
  switch (f) {
    case ops::WeightFormat::F32: return 4.0;
    case ops::WeightFormat::BF16: return 2.0;
    case ops::WeightFormat::Q8_0: return 34.0 / 32.0;
    case ops::WeightFormat::Q4_0: return 18.0 / 32.0;
  }
  return 2.0;
}

struct Built {
  std::int64_t hidden = -1;
  int layers = -1;
  ops::WeightFormat format = ops::WeightFormat::F32;
  std::unique_ptr<models::OPTModel> model;
};
Built g_built;  // one model at a time, to stay within the memory budget

// Random weights made on demand, one tensor at a time (the shapes from OPTModel::tensor_specs), so
// that a quantised model never holds the float weights of more than one matrix besides its own
// storage. Matrices ~U(+-1.7/sqrt(fan_in)) (about unit-variance outputs), biases small, LayerNorm
// scales near 1: activations stay in range over 32 layers.
const models::OPTModel& model_for(std::int64_t hidden, int layers, ops::WeightFormat format) {
  if (g_built.model && g_built.hidden == hidden && g_built.layers == layers && g_built.format == format)
    return *g_built.model;
  g_built.model.reset();
  const OPTConfig c = opt_config(hidden, layers);
  const DType dt = format == ops::WeightFormat::F32 ? DType::F32 : DType::BF16;
  std::map<std::string, Shape> shapes;
  for (const auto& [name, shape] : models::OPTModel::tensor_specs(c, "")) shapes[name] = shape;
  auto ends_with = [](const std::string& s, const char* suffix) {
    const std::size_t n = std::strlen(suffix);
    return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
  };
  auto make = [&](const std::string& name) -> Tensor {
    const auto it = shapes.find(name);
    if (it == shapes.end()) return Tensor();  // e.g. "<name>.q8_0": not stored quantised
    const Shape& s = it->second;
    const std::uint64_t seed = std::hash<std::string>()(name) & 0xffffffu;
    if (s.size() == 1) {
      const bool ln_scale = ends_with(name, "layer_norm.weight");
      return random_tensor(s, DType::F32, ln_scale ? 0.1f : 0.02f, ln_scale ? 1.0f : 0.0f, seed);
    }
    return random_tensor(s, dt, 1.7f / std::sqrt(float(s.back())), 0.0f, seed);
  };
  models::WeightPolicy policy;
  policy.format = format;
  g_built.model = std::make_unique<models::OPTModel>(c, models::WeightSource(make, "random weights"), "", policy);
  g_built.hidden = hidden;
  g_built.layers = layers;
  g_built.format = format;
  return *g_built.model;
}

void BM_opt_decode_step(benchmark::State& state) {
  const std::int64_t hidden = state.range(0);
  const int layers = int(state.range(1));
  const auto format = static_cast<ops::WeightFormat>(state.range(2));
  const models::OPTModel& m = model_for(hidden, layers, format);
  constexpr std::int64_t kQueries = 32, kTokens = 8;  // 32 query embeddings + "</s>Question: ... Answer:"
  constexpr std::int64_t kPrompt = kQueries + kTokens;
  Tensor queries = random_tensor({1, kQueries, hidden}, DType::F32, 1.0f, 0.0f, 999);
  Tensor tokens = m.embed(Tensor::from_vector({1, kTokens}, std::vector<std::int64_t>{2, 45641, 35, 653, 16, 11, 5, 2}));
  std::vector<float> prompt(std::size_t(kPrompt * hidden));
  std::memcpy(prompt.data(), queries.data<float>(), sizeof(float) * std::size_t(kQueries * hidden));
  std::memcpy(prompt.data() + kQueries * hidden, tokens.to(DType::F32).data<float>(),
              sizeof(float) * std::size_t(kTokens * hidden));
  Tensor embeds = Tensor::from_vector({1, kPrompt, hidden}, prompt);
  Tensor mask = Tensor::from_vector({1, kPrompt}, std::vector<std::int64_t>(kPrompt, 1));
  auto st = m.start(embeds, mask, 64);
  m.step(*st, {});       // prefill (40 positions)
  m.step(*st, {1234});   // 41 cached positions
  std::int64_t tok = 4783;
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
  models::WeightPolicy policy;  // the head's format: q4_0 models keep it in q8_0
  policy.format = format;
  const double head_bytes =
      double(m.vocab_size()) * double(hidden) * bytes_per_weight(policy.format_for(models::MatrixRole::OutputHead));
  const double full_bytes = (bytes - head_bytes) / layers * 32 + head_bytes;
  state.counters["weights_GB"] = bytes * 1e-9;
  state.counters["weight_GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["est_ms_32L"] = per_token * 1e3 * full_bytes / bytes;
  state.counters["threads"] = num_threads();
  state.SetLabel(std::string(hidden == 2560 ? "OPT-2.7b" : hidden == 4096 ? "OPT-6.7b" : "OPT") + ", " +
                 ops::weight_format_name(format) + " weights, " + std::to_string(layers) + " of 32 layers" +
                 (layers < 32 ? " (reduced depth)" : "") + ", ~41 cached positions");
}

// Two layers, one iteration: proves the program works without a measurement's time and memory.
void BM_opt_decode_step_smoke(benchmark::State& state) { BM_opt_decode_step(state); }

}  // namespace

// The full 32 layers: OPT-2.7b 5.3 / 2.8 / 1.5 GB of weights in bf16 / q8_0 / q4_0, OPT-6.7b
// 13.3 / 7.1 / 3.8 GB. The 2-layer rows are for smoke runs (--benchmark_filter=layers:2/).
BENCHMARK(BM_opt_decode_step)
    ->ArgNames({"size", "layers", "format"})
    ->ArgsProduct({{2560, 4096}, {32}, {int(ops::WeightFormat::BF16), int(ops::WeightFormat::Q8_0),
                                         int(ops::WeightFormat::Q4_0)}})
    ->Iterations(10)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_opt_decode_step_smoke)
    ->ArgNames({"size", "layers", "format"})
    ->ArgsProduct({{2560}, {2}, {int(ops::WeightFormat::BF16), int(ops::WeightFormat::Q8_0),
                                 int(ops::WeightFormat::Q4_0)}})
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

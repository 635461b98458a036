// Full-size image side of InstructBLIP with random weights: the ViT-g/14 vision encoder
// (1408 wide, 39 layers, 257 tokens per image; batch 1 and 4) and the Q-Former (768 x 12 layers,
// 32 queries + 10 instruction tokens, cross-attending to 257 image tokens) followed by the
// language projection. Reports wall time per forward and achieved GFLOPS (2 FLOPs per MAC, GEMMs
// and attention).
//
// The random checkpoint (~4.7 GB of float32 in HF names) is streamed to a temporary file once,
// memory-mapped through io::Checkpoint exactly as a real checkpoint is, and unlinked right away
// (the mapping keeps it alive).
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/core/thread_pool.hpp"
#include "instructblip/io/checkpoint.hpp"
#include "instructblip/models/qformer.hpp"
#include "instructblip/models/vision.hpp"

using namespace instructblip;

namespace {

struct Xorshift {
  std::uint64_t s = 0x9e3779b97f4a7c15ull;
  float uniform() {  // [-1, 1)
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return float(s >> 40) * (1.0f / float(1 << 24)) * 2.0f - 1.0f;
  }
};

/// Streams a float32 safetensors file with every tensor filled with uniform noise scaled like a
/// trained network (matrices ~ U(+-sqrt(3 / fan_in)), norm weights 1 + noise, other vectors small).
void write_random_checkpoint(const std::string& path, const std::vector<std::pair<std::string, Shape>>& specs) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::uint64_t off = 0;
  for (const auto& s : specs) {
    const std::uint64_t bytes = std::uint64_t(shape_numel(s.second)) * 4;
    header[s.first] = {{"dtype", "F32"}, {"shape", s.second}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw IoError(path + ": cannot open for writing");
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = (unsigned char)((std::uint64_t(h.size()) >> (8 * i)) & 0xff);
  std::fwrite(len, 1, 8, f);
  std::fwrite(h.data(), 1, h.size(), f);
  Xorshift rng;
  std::vector<float> buf(1 << 20);
  for (const auto& s : specs) {
    const std::int64_t numel = shape_numel(s.second);
    const bool matrix = s.second.size() >= 2;
    const bool embedding = s.first.find("embedding") != std::string::npos || s.first.find("query_tokens") != std::string::npos;
    const bool norm_weight = !matrix && s.first.find("orm") != std::string::npos &&
                             s.first.find(".weight") != std::string::npos;
    const float amp = matrix && !embedding ? float(std::sqrt(3.0 / double(numel / s.second[0]))) : 0.1f;
    const float base = norm_weight ? 1.0f : 0.0f;
    for (std::int64_t done = 0; done < numel;) {
      const std::int64_t n = std::min<std::int64_t>(numel - done, std::int64_t(buf.size()));
      for (std::int64_t i = 0; i < n; ++i) buf[std::size_t(i)] = base + amp * rng.uniform();
      std::fwrite(buf.data(), 4, std::size_t(n), f);
      done += n;
    }
  }
  if (std::fclose(f) != 0) throw IoError(path + ": write failed");
}

struct FullModel {
  InstructBlipConfig config;
  io::Checkpoint checkpoint;
  std::unique_ptr<models::VisionModel> vision;
  std::unique_ptr<models::QFormer> qformer;
  std::unique_ptr<models::QueryProjector> projector;
  // The same weights kept as bf16 panels with bf16 arithmetic (WeightPolicy under --weights bf16).
  std::unique_ptr<models::VisionModel> vision_bf16;
  std::unique_ptr<models::QFormer> qformer_bf16;

  const models::VisionModel& vision_for(ops::WeightFormat f) const {
    return f == ops::WeightFormat::F32 ? *vision : *vision_bf16;
  }
  const models::QFormer& qformer_for(ops::WeightFormat f) const {
    return f == ops::WeightFormat::F32 ? *qformer : *qformer_bf16;
  }

  static FullModel& get() {
    static FullModel m = [] {
      FullModel fm;
      fm.config.finalize();  // defaults: ViT-g/14, Q-Former 768 x 12, 32 queries
      std::vector<std::pair<std::string, Shape>> specs = models::VisionModel::tensor_specs(fm.config.vision_config);
      for (const auto& s : models::QFormer::tensor_specs(fm.config.qformer_config)) specs.push_back(s);
      for (const auto& s : models::QueryProjector::tensor_specs(fm.config)) specs.push_back(s);
      const std::string path = (std::filesystem::temp_directory_path() /
                                ("ib_bench_vision_" + std::to_string(::getpid()) + ".safetensors"))
                                   .string();
      write_random_checkpoint(path, specs);
      fm.checkpoint = io::Checkpoint::open(path);
      std::filesystem::remove(path);  // the mapping keeps the data alive
      fm.vision = std::make_unique<models::VisionModel>(fm.config.vision_config, fm.checkpoint);
      fm.qformer = std::make_unique<models::QFormer>(fm.config.qformer_config, fm.checkpoint);
      fm.projector = std::make_unique<models::QueryProjector>(fm.config, fm.checkpoint);
      models::WeightPolicy bf16;
      bf16.format = ops::WeightFormat::BF16;
      fm.vision_bf16 = std::make_unique<models::VisionModel>(fm.config.vision_config, fm.checkpoint, "vision_model.", bf16);
      fm.qformer_bf16 = std::make_unique<models::QFormer>(fm.config.qformer_config, fm.checkpoint, "qformer.", bf16);
      return fm;
    }();
    return m;
  }
};

Tensor random_tensor(const Shape& shape, std::uint64_t seed) {
  Xorshift rng{seed};
  std::vector<float> v(std::size_t(shape_numel(shape)));
  for (auto& x : v) x = rng.uniform();
  return Tensor::from_vector(shape, v);
}

void BM_VisionForward(benchmark::State& state) {
  FullModel& m = FullModel::get();
  const std::int64_t B = state.range(0);
  const auto format = static_cast<ops::WeightFormat>(state.range(1));
  const models::VisionModel& vision = m.vision_for(format);
  const Tensor pixels = random_tensor({B, 3, 224, 224}, 7);
  vision.forward(pixels);  // warm-up: faults the mapped weights in
  for (auto _ : state) {
    models::VisionOutput out = vision.forward(pixels);
    benchmark::DoNotOptimize(out.last_hidden_state.raw());
  }
  state.counters["GFLOPS"] =
      benchmark::Counter(vision.flops(B) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["images/s"] = benchmark::Counter(double(B), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = num_threads();
  state.SetLabel(format == ops::WeightFormat::F32 ? "f32" : "bf16 weights + bf16 arithmetic");
}
// format: 0 float32, 1 bf16 (ops::WeightFormat)
BENCHMARK(BM_VisionForward)
    ->ArgNames({"batch", "format"})
    ->Args({1, 0})
    ->Args({4, 0})
    ->Args({1, 1})
    ->Args({4, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_QFormerForward(benchmark::State& state) {
  FullModel& m = FullModel::get();
  const std::int64_t B = state.range(0), T = 10, N = 257, Q = m.config.num_query_tokens;
  const Tensor image = random_tensor({B, N, m.config.vision_config.hidden_size}, 11);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(B * T));
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = std::int64_t(101 + (i * 7919) % 29000);
  const Tensor input_ids = Tensor::from_vector({B, T}, ids);
  const Tensor mask = Tensor::from_vector({B, T}, std::vector<std::int64_t>(ids.size(), 1));
  const auto format = static_cast<ops::WeightFormat>(state.range(1));
  auto run = [&] {
    models::QFormerOutput q = m.qformer_for(format).forward(m.projector->query_tokens(), input_ids, mask, image);
    return m.projector->project(q.last_hidden_state);
  };
  run();  // warm-up
  for (auto _ : state) {
    Tensor lm = run();
    benchmark::DoNotOptimize(lm.raw());
  }
  const double flops = m.qformer->flops(B, Q, T, N) +
                       2.0 * double(B * Q) * double(m.config.qformer_config.hidden_size) *
                           double(m.config.text_hidden_size());
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = num_threads();
  state.SetLabel(format == ops::WeightFormat::F32 ? "f32" : "bf16 weights + bf16 arithmetic (projection f32)");
}
BENCHMARK(BM_QFormerForward)
    ->ArgNames({"batch", "format"})
    ->Args({1, 0})
    ->Args({1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

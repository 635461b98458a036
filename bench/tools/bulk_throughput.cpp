// instructblip-bench-bulk: bulk captioning throughput through the BatchEngine.
//
//   instructblip-bench-bulk --model DIR [--weights bf16|q8_0|f32] [--images 16] [--batches 1,4,8,16]
//                           [--tokens 20,100,natural] [--step-rows 1,4,8,16] [--image FILE]... [--json FILE]
//
// 1. Decode step time by rows in flight: R requests of one row each (a prompt of num_query_tokens + 8
//    positions), one LanguageModel::step_batch over all of them, median of 10 steps after 2 warm-up
//    steps. Decoding is bound by streaming the weights, so R rows should cost little more than one.
// 2. Images per minute: `--images` requests (the given images, cycled) through a BatchEngine with
//    max_rows = B, for fixed answer lengths (min_new_tokens = max_new_tokens = N) and for varied
//    lengths ("natural": max_new_tokens 10..100 spread over the requests, as real captions vary);
//    with the time each stage took per image (vision encoder and Q-Former: the image's share of
//    its batch; prefill: its T5 encoder and first step; decode: its share of every step).
// The CPU model and the kernels head the output; --json appends one JSON object per measurement.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "instructblip/core/thread_pool.hpp"
#include "instructblip/engine/batch_engine.hpp"
#include "instructblip/instructblip.hpp"
#include "instructblip/ops/weights.hpp"

using namespace instructblip;
using Clock = std::chrono::steady_clock;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ','))
    if (!x.empty()) out.push_back(x);
  return out;
}

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr, "instructblip-bench-bulk: %s\n", msg);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) try {
  std::string model_dir, weights = "bf16", json_path;
  std::int64_t images = 16;
  std::vector<std::string> batches = {"1", "4", "8", "16"}, tokens = {"20", "100", "natural"},
                           step_rows = {"1", "4", "8", "16"}, image_files;
  int threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--model") model_dir = next();
    else if (a == "--weights") weights = next();
    else if (a == "--images") images = std::stoll(next());
    else if (a == "--batches") batches = split(next());
    else if (a == "--tokens") tokens = split(next());
    else if (a == "--step-rows") step_rows = split(next());
    else if (a == "--image") image_files.push_back(next());
    else if (a == "--json") json_path = next();
    else if (a == "--threads") threads = std::stoi(next());
    else usage(("unknown option " + a).c_str());
  }
  if (model_dir.empty() || image_files.empty()) usage("--model DIR and at least one --image FILE are required");
  if (threads > 0) set_num_threads(threads);
  LoadOptions lo;
  ops::WeightFormat wf;
  if (!ops::parse_weight_format(weights, &wf)) usage(("unknown --weights " + weights).c_str());
  lo.weights = wf;
  const auto t_load = Clock::now();
  const auto model = VisionLanguageModel::from_pretrained(model_dir, lo);
  const auto processor = VisionLanguageProcessor::from_pretrained(model_dir);
  std::printf("cpu: %s\nkernels: %s\nthreads: %d | weights: %s | loaded in %.1f s\n", ops::cpu_model().c_str(),
              ops::cpu_features().c_str(), num_threads(), weights.c_str(), ms_since(t_load) / 1000);
  std::ofstream json_out;
  if (!json_path.empty()) json_out.open(json_path, std::ios::app);
  auto emit = [&](nlohmann::json j) {
    j["cpu"] = ops::cpu_model();
    j["weights"] = weights;
    j["threads"] = num_threads();
    if (json_out) json_out << j.dump() << "\n" << std::flush;
  };

  // ---- 1. decode step by rows ---------------------------------------------------------------
  const models::LanguageModel& lm = model.language_model();
  const std::int64_t L = model.config().num_query_tokens + 8, H = lm.hidden_size();
  double step1 = 0;
  std::printf("\ndecode step (one step_batch over R one-row requests, prompt %lld positions; median of 10)\n",
              (long long)L);
  std::printf("%6s %12s %14s %12s\n", "rows", "ms/step", "ms/row-token", "vs 1 row");
  for (const std::string& rs : step_rows) {
    const std::int64_t R = std::stoll(rs);
    std::vector<std::unique_ptr<models::LMState>> states;
    Tensor embeds = Tensor::empty({1, L, H});
    for (std::int64_t i = 0; i < L * H; ++i) embeds.data<float>()[i] = float((i * 2654435761u) % 1000) / 1000.f - 0.5f;
    Tensor mask = Tensor::from_vector({1, L}, std::vector<std::int64_t>(std::size_t(L), 1));
    for (std::int64_t r = 0; r < R; ++r) states.push_back(lm.start(embeds, mask, 64));
    std::vector<models::LMState*> ptrs;
    for (auto& s : states) ptrs.push_back(s.get());
    std::vector<std::vector<std::int64_t>> toks(std::size_t(R), std::vector<std::int64_t>{0});
    std::vector<double> ms;
    for (int s = 0; s < 12; ++s) {
      const auto t0 = Clock::now();
      lm.step_batch(ptrs, toks);
      if (s >= 2) ms.push_back(ms_since(t0));
      for (auto& t : toks) t[0] = 100 + s;
    }
    const double m = median(ms);
    if (R == 1) step1 = m;
    std::printf("%6lld %12.1f %14.2f %11.2fx\n", (long long)R, m, m / double(R), step1 > 0 ? m / step1 : 0.0);
    emit({{"kind", "decode_step"}, {"rows", R}, {"ms_per_step", m}});
  }

  // ---- 2. images per minute -----------------------------------------------------------------
  std::printf("\nbulk captioning: %lld images, images/minute and ms per image by stage\n", (long long)images);
  std::printf("%-8s %6s %10s %9s %9s %9s %9s %9s %10s\n", "answer", "batch", "images/min", "wall s", "vision",
              "qformer", "prefill", "decode", "tokens");
  for (const std::string& ts : tokens) {
    double base = 0;
    for (const std::string& bs : batches) {
      const std::int64_t B = std::stoll(bs);
      EngineOptions eo;
      eo.max_rows = B;
      eo.max_image_batch = B;
      eo.prefetch = std::max<std::int64_t>(16, 2 * B);
      BatchEngine engine(model, processor, eo);
      std::vector<BatchEngine::Handle> hs;
      const auto t0 = Clock::now();
      for (std::int64_t i = 0; i < images; ++i) {
        EngineRequest rq;
        rq.image_path = image_files[std::size_t(i) % image_files.size()];
        rq.prompt = "A short image description:";
        GenerationConfig g = model.generation_config();
        g.num_beams = 1;
        g.do_sample = false;
        if (ts == "natural") {
          g.max_new_tokens = 10 + (i * 37) % 91;  // 10..100, spread over the requests
        } else {
          g.max_new_tokens = std::stoll(ts);
          g.min_new_tokens = *g.max_new_tokens;
        }
        rq.generation = g;
        hs.push_back(engine.submit(std::move(rq)));
      }
      StageTimings sum;
      std::int64_t toks = 0;
      for (auto& h : hs) {
        const EngineResult r = h.result.get();
        if (!r.ok()) throw std::runtime_error("request failed: " + r.error);
        sum.vision_ms += r.timings.vision_ms;
        sum.qformer_ms += r.timings.qformer_ms;
        sum.prefill_ms += r.timings.prefill_ms;
        sum.decode_ms += r.timings.decode_ms;
        toks += r.completion_tokens;
      }
      const double wall = ms_since(t0) / 1000;
      const double ipm = double(images) / wall * 60;
      if (B == 1) base = ipm;
      const double n = double(images);
      std::printf("%-8s %6lld %10.1f %9.1f %9.0f %9.0f %9.0f %9.0f %10lld%s\n", ts.c_str(), (long long)B, ipm, wall,
                  sum.vision_ms / n, sum.qformer_ms / n, sum.prefill_ms / n, sum.decode_ms / n, (long long)toks,
                  base > 0 && B != 1 ? (" (" + std::to_string(ipm / base).substr(0, 4) + "x batch 1)").c_str() : "");
      std::fflush(stdout);
      emit({{"kind", "bulk"},
            {"answer", ts},
            {"batch", B},
            {"images", images},
            {"images_per_minute", ipm},
            {"wall_s", wall},
            {"vision_ms_per_image", sum.vision_ms / n},
            {"qformer_ms_per_image", sum.qformer_ms / n},
            {"prefill_ms_per_image", sum.prefill_ms / n},
            {"decode_ms_per_image", sum.decode_ms / n},
            {"completion_tokens", toks}});
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "instructblip-bench-bulk: %s\n", e.what());
  return 1;
}

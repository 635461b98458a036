// instructblip-generate: answer an instruction about one or more images with an InstructBLIP
// checkpoint in HuggingFace layout. Thin: parse the arguments, call the library, print.
#include <instructblip/instructblip.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli_args.hpp"

namespace {

/// Peak resident set size of this process so far, in MB (Linux reports ru_maxrss in KiB).
double peak_rss_mb() {
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) * 1024.0 / 1e6;
}

using namespace instructblip;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// batch_decode(skip_special_tokens=True). A model's embedding matrix may have more rows than its
// tokenizer has ids (Flan-T5: 32128 vs 32100); such ids have no text, so they are left out of the
// printed answer with a warning instead of failing the whole run. `sequences` stay exact.
std::vector<std::string> decode_texts(const VisionLanguageProcessor& processor,
                                      std::vector<std::vector<std::int64_t>> rows, bool warn) {
  const std::int64_t n = processor.tokenizer().size();
  std::size_t dropped = 0;
  for (auto& r : rows) {
    const std::size_t before = r.size();
    r.erase(std::remove_if(r.begin(), r.end(), [&](std::int64_t id) { return id < 0 || id >= n; }), r.end());
    dropped += before - r.size();
  }
  if (dropped && warn)
    std::fprintf(stderr, "instructblip-generate: warning: %zu generated ids have no entry in the tokenizer (%lld ids); left out of the text\n",
                 dropped, static_cast<long long>(n));
  return processor.batch_decode(rows, /*skip_special_tokens=*/true);
}

int run(const cli::Options& o) {
  if (o.threads > 0) set_num_threads(o.threads);
  auto log = [&](const char* fmt, auto... args) {
    if (!o.quiet) std::fprintf(stderr, fmt, args...);
  };
  const auto t0 = Clock::now();

  // Inputs first: a bad image or prompt fails before the (slow) model load.
  auto tp = Clock::now();
  VisionLanguageProcessor processor = VisionLanguageProcessor::from_pretrained(o.model_dir);
  if (o.prompts.empty() && processor.has_qformer_tokenizer())
    throw cli::UsageError("at least one --prompt TEXT is required (an InstructBLIP checkpoint; only BLIP-2 ones "
                          "caption without a prompt)");
  std::vector<Image> images;
  for (const auto& path : o.images) images.push_back(load_image(path));
  ProcessorOutput inputs = processor(images, o.prompts);
  const double preprocess_ms = ms_since(tp);

  auto tl = Clock::now();
  LoadOptions lo;
  lo.progress = [&](const std::string& file, std::size_t bytes, std::size_t i, std::size_t n) {
    log("instructblip-generate: mapped %s (%.1f MB) [%zu/%zu]\n", file.c_str(), double(bytes) / 1e6, i + 1, n);
  };
  if (!o.weights.empty()) {
    ops::WeightFormat f;
    ops::parse_weight_format(o.weights, &f);
    lo.weights = f;
  }
  auto model = VisionLanguageModel::from_pretrained(o.model_dir, lo);
  const double load_ms = ms_since(tl);
  log("instructblip-generate: loaded %s (%s language model, %s weights) in %.0f ms\n", o.model_dir.c_str(),
      model.config().text_model_type().c_str(), ops::weight_format_name(model.weight_format()), load_ms);

  const GenerationConfig gen = cli::generation_config(model.generation_config(), o);
  const bool stream = !o.json && images.size() == 1 && gen.num_beams == 1 && gen.num_return_sequences == 1;
  // The answer is printed while it is generated: the streamer returns only text that is final.
  TextStreamer streamer(processor.tokenizer(), [](std::string_view piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  generation::GenerateHooks hooks;
  if (stream) hooks.on_tokens = [&](const std::vector<std::int64_t>& next) { streamer.put(next[0]); };
  GenerateTrace trace;
  auto out = model.generate(inputs, gen, hooks, &trace);
  const std::vector<std::string> texts = decode_texts(processor, out.sequences, !o.quiet);
  const double total_ms = ms_since(t0);
  const auto& tm = trace.timings;

  if (!o.dump_path.empty()) {
    // The processor's outputs the model had (BLIP-2: no qformer_*, and no input_ids without a prompt).
    std::vector<std::pair<std::string, Tensor>> dump{{"pixel_values", inputs.pixel_values},
                                                     {"qformer_input_ids", inputs.qformer_input_ids},
                                                     {"qformer_attention_mask", inputs.qformer_attention_mask},
                                                     {"input_ids", inputs.input_ids},
                                                     {"attention_mask", inputs.attention_mask},
                                                     {"vision.last_hidden_state", trace.vision.last_hidden_state},
                                                     {"vision.pooler_output", trace.vision.pooler_output},
                                                     {"qformer.last_hidden_state", trace.qformer_last_hidden_state},
                                                     {"language_model_inputs", trace.language_model_inputs},
                                                     {"first_step_logits", trace.first_step_logits},
                                                     {"sequences", ids_to_tensor(out.sequences, "sequences")}};
    dump.erase(std::remove_if(dump.begin(), dump.end(), [](const auto& t) { return !t.second.defined(); }), dump.end());
    io::save_safetensors(o.dump_path, dump);
    log("instructblip-generate: wrote %s\n", o.dump_path.c_str());
  }

  if (o.json) {
    nlohmann::json j;
    j["sequences"] = out.sequences;
    j["texts"] = texts;
    j["weights"] = ops::weight_format_name(model.weight_format());
    j["peak_rss_mb"] = peak_rss_mb();
    j["timings_ms"] = {{"load", load_ms},
                       {"preprocess", preprocess_ms},
                       {"vision", tm.vision_ms},
                       {"qformer", tm.qformer_ms},
                       {"prefill", tm.prefill_ms},
                       {"decode", tm.decode_ms},
                       {"decode_steps", tm.decode_steps},
                       {"decode_per_token", tm.decode_ms_per_token()},
                       {"total", total_ms}};
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else if (stream) {
    streamer.end();
    std::fputs("\n", stdout);
  } else {
    for (const auto& t : texts) std::printf("%s\n", t.c_str());
  }
  std::fflush(stdout);
  log("instructblip-generate: load %.0f ms | preprocess %.0f ms | vision %.0f ms | qformer %.0f ms | prefill %.0f ms"
      " | decode %lld tokens, %.1f ms/token | total %.0f ms | peak RSS %.0f MB\n",
      load_ms, preprocess_ms, tm.vision_ms, tm.qformer_ms, tm.prefill_ms, static_cast<long long>(tm.decode_steps),
      tm.decode_ms_per_token(), total_ms, peak_rss_mb());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const char* prog = "instructblip-generate";
  cli::Options o;
  try {
    o = cli::parse_args(argc, argv);
  } catch (const cli::UsageError& e) {
    std::fprintf(stderr, "%s: %s\n", prog, e.what());
    return 2;
  }
  if (o.help) {
    std::fputs(cli::usage(prog).c_str(), stdout);
    return 0;
  }
  if (o.version) {
    std::printf("%s %s\n", prog, INSTRUCTBLIP_VERSION_STRING);
    return 0;
  }
  try {
    return run(o);
  } catch (const cli::UsageError& e) {  // e.g. no --prompt for an InstructBLIP checkpoint
    std::fprintf(stderr, "%s: %s\n", prog, e.what());
    return 2;
  } catch (const InvalidArgument& e) {
    std::fprintf(stderr, "%s: error: %s\n", prog, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", prog, e.what());
    return 1;
  }
}

#include "cli_args.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>

namespace instructblip::cli {

std::int64_t parse_int(const std::string& flag, const std::string& v, std::int64_t lo, std::int64_t hi) {
  if (v.empty()) throw UsageError(flag + ": expected an integer, got an empty value");
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (errno != 0 || end == v.c_str() || *end != '\0')
    throw UsageError(flag + ": expected an integer, got '" + v + "'");
  if (x < lo || x > hi)
    throw UsageError(flag + ": " + v + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return x;
}

double parse_float(const std::string& flag, const std::string& v, double lo, double hi, bool lo_open,
                   bool hi_open) {
  if (v.empty()) throw UsageError(flag + ": expected a number, got an empty value");
  char* end = nullptr;
  errno = 0;
  double x = std::strtod(v.c_str(), &end);
  if (errno != 0 || end == v.c_str() || *end != '\0' || !std::isfinite(x))
    throw UsageError(flag + ": expected a number, got '" + v + "'");
  if (x < lo || x > hi || (lo_open && x == lo) || (hi_open && x == hi))
    throw UsageError(flag + ": " + v + " is out of range " + (lo_open ? "(" : "[") + std::to_string(lo) + ", " +
                     std::to_string(hi) + (hi_open ? ")" : "]"));
  return x;
}

bool parse_generation_flag(const std::string& a, const std::function<std::string()>& value, Options& o) {
  constexpr std::int64_t kMaxTokens = 1 << 16;
  if (a == "--max-new-tokens") o.max_new_tokens = parse_int(a, value(), 1, kMaxTokens);
  else if (a == "--max-length") o.max_length = parse_int(a, value(), 1, kMaxTokens);
  else if (a == "--min-length") o.min_length = parse_int(a, value(), 0, kMaxTokens);
  else if (a == "--min-new-tokens") o.min_new_tokens = parse_int(a, value(), 0, kMaxTokens);
  else if (a == "--num-beams") o.num_beams = parse_int(a, value(), 1, 64);
  else if (a == "--length-penalty") o.length_penalty = parse_float(a, value(), -100.0, 100.0);
  else if (a == "--repetition-penalty") o.repetition_penalty = parse_float(a, value(), 0.0, 100.0, true);
  else if (a == "--num-return-sequences") o.num_return_sequences = parse_int(a, value(), 1, 64);
  else if (a == "--do-sample") o.do_sample = true;
  else if (a == "--temperature") o.temperature = parse_float(a, value(), 0.0, 100.0, true);
  else if (a == "--top-k") o.top_k = parse_int(a, value(), 0, std::numeric_limits<std::int32_t>::max());
  else if (a == "--top-p") o.top_p = parse_float(a, value(), 0.0, 1.0);
  else if (a == "--typical-p") o.typical_p = parse_float(a, value(), 0.0, 1.0, true);
  else if (a == "--epsilon-cutoff") o.epsilon_cutoff = parse_float(a, value(), 0.0, 1.0, false, true);
  else if (a == "--eta-cutoff") o.eta_cutoff = parse_float(a, value(), 0.0, 1.0, false, true);
  else if (a == "--forced-bos-token-id")
    o.forced_bos_token_id = parse_int(a, value(), 0, std::numeric_limits<std::int32_t>::max());
  else if (a == "--forced-eos-token-id")
    o.forced_eos_token_id = parse_int(a, value(), 0, std::numeric_limits<std::int32_t>::max());
  else if (a == "--renormalize-logits") o.renormalize_logits = true;
  else if (a == "--remove-invalid-values") o.remove_invalid_values = true;
  else if (a == "--max-time") o.max_time = parse_float(a, value(), 0.0, 1e9);
  else if (a == "--seed") o.seed = std::uint64_t(parse_int(a, value(), 0, std::numeric_limits<std::int64_t>::max()));
  else if (a == "--threads") o.threads = int(parse_int(a, value(), 1, 1024));
  else if (a == "--weights") {
    o.weights = value();
    if (o.weights != "f32" && o.weights != "bf16" && o.weights != "q8_0" && o.weights != "q4_0")
      throw UsageError("--weights must be f32, bf16, q8_0 or q4_0, got '" + o.weights + "'");
  }
  else return false;
  return true;
}

GenerationConfig generation_config(const GenerationConfig& base, const Options& o) {
  GenerationConfig g = base;
  if (o.max_length) {
    g.max_length = *o.max_length;
    g.max_new_tokens.reset();
  }
  if (o.max_new_tokens) g.max_new_tokens = *o.max_new_tokens;
  if (o.min_length) g.min_length = *o.min_length;
  if (o.min_new_tokens) g.min_new_tokens = *o.min_new_tokens;
  if (o.num_beams) g.num_beams = *o.num_beams;
  if (o.length_penalty) g.length_penalty = *o.length_penalty;
  if (o.repetition_penalty) g.repetition_penalty = *o.repetition_penalty;
  if (o.num_return_sequences) g.num_return_sequences = *o.num_return_sequences;
  if (o.do_sample) g.do_sample = true;
  if (o.temperature) g.temperature = *o.temperature;
  if (o.top_k) g.top_k = *o.top_k;
  if (o.top_p) g.top_p = *o.top_p;
  if (o.seed) g.seed = *o.seed;
  if (o.typical_p) g.typical_p = *o.typical_p;
  if (o.epsilon_cutoff) g.epsilon_cutoff = *o.epsilon_cutoff;
  if (o.eta_cutoff) g.eta_cutoff = *o.eta_cutoff;
  if (o.forced_bos_token_id) g.forced_bos_token_id = *o.forced_bos_token_id;
  if (o.forced_eos_token_id) g.forced_eos_token_id = {*o.forced_eos_token_id};
  if (o.renormalize_logits) g.renormalize_logits = true;
  if (o.remove_invalid_values) g.remove_invalid_values = true;
  if (o.max_time) g.max_time = *o.max_time;
  return g;
}

Options parse_args(int argc, const char* const* argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i] ? argv[i] : "";
    const std::function<std::string()> value = [&]() -> std::string {
      if (i + 1 >= argc || !argv[i + 1]) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") o.help = true;
    else if (a == "--version") o.version = true;
    else if (a == "--model" || a == "-m") o.model_dir = value();
    else if (a == "--image" || a == "-i") o.images.push_back(value());
    else if (a == "--prompt" || a == "-p") o.prompts.push_back(value());
    else if (a == "--json") o.json = true;
    else if (a == "--dump") o.dump_path = value();
    else if (a == "--quiet" || a == "-q") o.quiet = true;
    else if (!parse_generation_flag(a, value, o)) throw UsageError("unknown option '" + a + "' (see --help)");
  }
  if (o.help || o.version) return o;
  if (o.model_dir.empty()) throw UsageError("--model DIR is required");
  if (o.images.empty()) throw UsageError("at least one --image FILE is required");
  // --prompt may be left out for a BLIP-2 checkpoint (plain captioning); run() tells once it
  // knows the checkpoint.
  if (o.prompts.size() > o.images.size())
    throw UsageError(std::to_string(o.prompts.size()) + " prompts for " + std::to_string(o.images.size()) +
                     " images: give one prompt per image, or one for all");
  if (!o.prompts.empty() && o.prompts.size() != 1 && o.prompts.size() != o.images.size())
    throw UsageError(std::to_string(o.prompts.size()) + " prompts for " + std::to_string(o.images.size()) +
                     " images: give one prompt per image, or one for all");
  if (o.num_return_sequences && o.num_beams && *o.num_return_sequences > *o.num_beams && !o.do_sample)
    throw UsageError("--num-return-sequences must not exceed --num-beams");
  return o;
}

std::string usage(const std::string& program) {
  return "usage: " + program +
         " --model DIR --image FILE --prompt TEXT [--image FILE [--prompt TEXT]] ... [options]\n"
         "\n"
         "Answers an instruction about an image with an InstructBLIP or BLIP-2 checkpoint in HuggingFace\n"
         "layout. Image/prompt pairs form one batch; a single --prompt applies to every --image. BLIP-2\n"
         "checkpoints take --prompt as an optional prefix; without one they caption the image.\n"
         "\n"
         "generation (defaults: the checkpoint's generation config):\n"
         "  --max-new-tokens N        tokens to generate at most\n"
         "  --max-length N            total length at most (start token included)\n"
         "  --min-length N            --min-new-tokens N\n"
         "  --num-beams N             beam search with N beams\n"
         "  --length-penalty F        beam score = sum_logprobs / length^F\n"
         "  --repetition-penalty F    > 1 discourages repeats\n"
         "  --num-return-sequences N  answers per image (beam search or sampling)\n"
         "  --do-sample               multinomial sampling, with --temperature F --top-k N --top-p F --seed N\n"
         "                            and --typical-p F (0, 1], --epsilon-cutoff F, --eta-cutoff F [0, 1)\n"
         "  --forced-bos-token-id N   force the first generated token\n"
         "  --forced-eos-token-id N   force the last token (at the maximum length)\n"
         "  --renormalize-logits      log-softmax the scores after the processors\n"
         "  --remove-invalid-values   replace NaN / +-inf scores by 0 / +-float max\n"
         "  --max-time S              stop after the step that exceeds S seconds of generation\n"
         "output:\n"
         "  --json                    one JSON object: sequences, texts, timings_ms\n"
         "  --dump FILE               write inputs and stage outputs as safetensors (compare with transformers)\n"
         "  --quiet                   no progress or timings on stderr\n"
         "  --threads N               worker threads (default: all cores)\n"
         "  --weights FMT             keep the weight matrices as f32 (transformers' numerics), bf16, q8_0\n"
         "                            or q4_0 (8 / 4-bit blocks); default: as the checkpoint records, else f32\n"
         "  --help, --version\n"
         "\n"
         "exit status: 0 success, 1 runtime error (files, model, image), 2 usage error\n";
}

}  // namespace instructblip::cli

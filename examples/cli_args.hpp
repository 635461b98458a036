#pragma once
// Command-line options of instructblip-generate, parsed without touching the model, so that the
// parser can be tested (and fuzzed) on its own.
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "instructblip/config.hpp"

namespace instructblip::cli {

/// A usage error: the message is printed on one line and the program exits with status 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string model_dir;
  std::vector<std::string> images;
  std::vector<std::string> prompts;
  // generation overrides (unset: the checkpoint's defaults)
  std::optional<std::int64_t> max_new_tokens, max_length, min_length, min_new_tokens, num_beams, top_k,
      num_return_sequences;
  std::optional<double> length_penalty, repetition_penalty, temperature, top_p, typical_p, epsilon_cutoff,
      eta_cutoff, max_time;
  std::optional<std::int64_t> forced_bos_token_id, forced_eos_token_id;
  std::optional<std::uint64_t> seed;
  bool do_sample = false;
  bool renormalize_logits = false;
  bool remove_invalid_values = false;
  int threads = 0;  // 0: all cores
  std::string weights;  // "", "f32", "bf16", "q8_0" or "q4_0" ("": the checkpoint's format)
  bool json = false;
  std::string dump_path;
  bool quiet = false;
  bool help = false;
  bool version = false;
};

/// Parses argv[1..argc). Throws UsageError for unknown flags, missing or malformed values, values
/// out of range, and inconsistent image / prompt counts.
Options parse_args(int argc, const char* const* argv);

/// `v` as an integer in [lo, hi] / a finite number in [lo, hi] (bounds excluded when open), else
/// UsageError naming `flag`.
std::int64_t parse_int(const std::string& flag, const std::string& v, std::int64_t lo, std::int64_t hi);
double parse_float(const std::string& flag, const std::string& v, double lo, double hi, bool lo_open = false,
                   bool hi_open = false);

/// Parses one generation or model flag (--max-new-tokens ... --max-time, --seed, --threads, --weights) into
/// `o`, taking its value, if it has one, from `value()` (which throws UsageError when there is none).
/// Returns false, leaving `o` alone, when `flag` is not one of them. Shared by the tools that generate.
bool parse_generation_flag(const std::string& flag, const std::function<std::string()>& value, Options& o);

/// `base` (the checkpoint's generation config) with the flags of `o` that were given applied on top.
GenerationConfig generation_config(const GenerationConfig& base, const Options& o);

/// The --help text.
std::string usage(const std::string& program);

}  // namespace instructblip::cli

#pragma once
// Logits processors and warpers with transformers' semantics (generation/logits_process.py).
// Each acts on one row of scores given that row's running sequence (which, as in transformers,
// starts with the decoder start token or the placeholder BOS).
#include <cstdint>
#include <memory>
#include <vector>

#include "instructblip/config.hpp"

namespace instructblip::generation {

class LogitsProcessor {
 public:
  virtual ~LogitsProcessor() = default;
  virtual void apply(const std::vector<std::int64_t>& sequence, float* scores, std::int64_t vocab) const = 0;
};

/// Scores of tokens already in the sequence: s < 0 -> s * penalty, else s / penalty.
class RepetitionPenaltyProcessor : public LogitsProcessor {
 public:
  explicit RepetitionPenaltyProcessor(float penalty);
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;

 private:
  float penalty_;
};

/// Bans every token that would repeat an n-gram already present in the sequence.
class NoRepeatNGramProcessor : public LogitsProcessor {
 public:
  explicit NoRepeatNGramProcessor(std::int64_t n) : n_(n) {}
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;

 private:
  std::int64_t n_;
};

/// EOS scores -> -inf while the sequence (start token included) is shorter than min_length.
class MinLengthProcessor : public LogitsProcessor {
 public:
  MinLengthProcessor(std::int64_t min_length, std::vector<std::int64_t> eos) : min_(min_length), eos_(std::move(eos)) {}
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;

 private:
  std::int64_t min_;
  std::vector<std::int64_t> eos_;
};

/// EOS scores -> -inf while fewer than min_new_tokens tokens follow the prompt.
class MinNewTokensProcessor : public LogitsProcessor {
 public:
  MinNewTokensProcessor(std::int64_t prompt_length, std::int64_t min_new, std::vector<std::int64_t> eos)
      : prompt_(prompt_length), min_new_(min_new), eos_(std::move(eos)) {}
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;

 private:
  std::int64_t prompt_, min_new_;
  std::vector<std::int64_t> eos_;
};

/// scores / temperature.
class TemperatureWarper : public LogitsProcessor {
 public:
  explicit TemperatureWarper(float t) : t_(t) {}
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;

 private:
  float t_;
};

/// Keeps the k highest scores (and everything tied with the k-th); the rest -> -inf.
class TopKWarper : public LogitsProcessor {
 public:
  TopKWarper(std::int64_t k, std::int64_t min_keep) : k_(k), min_keep_(min_keep) {}
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;

 private:
  std::int64_t k_, min_keep_;
};

/// Nucleus filtering: sorted ascending, tokens whose cumulative probability is <= 1 - top_p are
/// removed, keeping at least min_keep of the most likely.
class TopPWarper : public LogitsProcessor {
 public:
  TopPWarper(float p, std::int64_t min_keep) : p_(p), min_keep_(min_keep) {}
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;

 private:
  float p_;
  std::int64_t min_keep_;
};

/// An ordered list, applied in turn.
class LogitsProcessorList {
 public:
  void add(std::unique_ptr<LogitsProcessor> p) { list_.push_back(std::move(p)); }
  bool empty() const { return list_.empty(); }
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const {
    for (const auto& p : list_) p->apply(seq, scores, vocab);
  }

 private:
  std::vector<std::unique_ptr<LogitsProcessor>> list_;
};

/// The processors transformers' `_get_logits_processor` builds for these settings, in its order
/// (repetition penalty, no-repeat n-gram, min length, min new tokens). `prompt_length` is the
/// length of the running sequence before generation (1: the start token).
LogitsProcessorList make_logits_processors(const GenerationConfig& cfg, std::int64_t prompt_length);
/// The warpers of `_get_logits_warper` (temperature, top-k, top-p) for sampling.
LogitsProcessorList make_logits_warpers(const GenerationConfig& cfg);

}  // namespace instructblip::generation

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

/// Locally typical sampling (TypicalLogitsWarper): tokens are ranked by |-log p - H| (H the
/// entropy of the row); the smallest set in that order whose probability reaches `mass` is kept
/// (ties with its last score included), at least min_keep; the rest -> -inf. 0 < mass < 1.
class TypicalWarper : public LogitsProcessor {
 public:
  TypicalWarper(float mass, std::int64_t min_keep);
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;

 private:
  float mass_;
  std::int64_t min_keep_;
};

/// Epsilon sampling (EpsilonLogitsWarper): tokens with probability < epsilon -> -inf, except those
/// scoring at least the min_keep-th highest score. 0 < epsilon < 1.
class EpsilonWarper : public LogitsProcessor {
 public:
  EpsilonWarper(float epsilon, std::int64_t min_keep);
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;

 private:
  float epsilon_;
  std::int64_t min_keep_;
};

/// Eta sampling (EtaLogitsWarper): as EpsilonWarper with the cutoff
/// eta = min(epsilon, sqrt(epsilon) * exp(-H)), H the entropy of the row. 0 < epsilon < 1.
class EtaWarper : public LogitsProcessor {
 public:
  EtaWarper(float epsilon, std::int64_t min_keep);
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;

 private:
  float epsilon_;
  std::int64_t min_keep_;
};

/// While the sequence is one token long (the first generated token): every score -> -inf except
/// `bos` -> 0 (ForcedBOSTokenLogitsProcessor).
class ForcedBOSProcessor : public LogitsProcessor {
 public:
  explicit ForcedBOSProcessor(std::int64_t bos) : bos_(bos) {}
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;

 private:
  std::int64_t bos_;
};

/// When the sequence is max_length - 1 tokens long (the last token generate() will add): every
/// score -> -inf except the `eos` ids -> 0 (ForcedEOSTokenLogitsProcessor).
class ForcedEOSProcessor : public LogitsProcessor {
 public:
  ForcedEOSProcessor(std::int64_t max_length, std::vector<std::int64_t> eos)
      : max_length_(max_length), eos_(std::move(eos)) {}
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;

 private:
  std::int64_t max_length_;
  std::vector<std::int64_t> eos_;
};

/// NaN -> 0, +inf -> FLT_MAX, -inf -> -FLT_MAX (InfNanRemoveLogitsProcessor, remove_invalid_values).
class InfNanRemoveProcessor : public LogitsProcessor {
 public:
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;
};

/// scores -> log_softmax(scores) (LogitNormalization, renormalize_logits).
class LogitNormalization : public LogitsProcessor {
 public:
  void apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const override;
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

/// The processors transformers 4.36.2's `_get_logits_processor` builds for these settings, in its
/// order: repetition penalty, no-repeat n-gram, min length, min new tokens, forced BOS, forced EOS
/// (at cfg.max_length), remove invalid values, and LogitNormalization last (renormalize_logits).
/// `prompt_length` is the length of the running sequence before generation (1: the start token).
/// The settings resolve_generation_config() refuses (diversity_penalty, encoder_* ) are not built.
LogitsProcessorList make_logits_processors(const GenerationConfig& cfg, std::int64_t prompt_length);
/// The warpers of `_get_logits_warper` for sampling, in its order: temperature, top-k, top-p,
/// typical-p, epsilon cutoff, eta cutoff, and LogitNormalization last (renormalize_logits). With
/// beams they keep at least max(2, 1 + number of EOS ids) tokens, else 1.
LogitsProcessorList make_logits_warpers(const GenerationConfig& cfg);

}  // namespace instructblip::generation

#include "instructblip/generation/logits_process.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

namespace instructblip::generation {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void ban_eos(const std::vector<std::int64_t>& eos, float* scores, std::int64_t vocab) {
  for (std::int64_t e : eos)
    if (e >= 0 && e < vocab) scores[e] = kNegInf;
}
}  // namespace

RepetitionPenaltyProcessor::RepetitionPenaltyProcessor(float penalty) : penalty_(penalty) {
  if (!(penalty > 0)) throw InvalidArgument("repetition_penalty must be a strictly positive float");
}

void RepetitionPenaltyProcessor::apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const {
  // gather -> transform -> scatter: a token present several times is penalised once.
  std::vector<std::int64_t> ids;
  ids.reserve(seq.size());
  for (std::int64_t t : seq)
    if (t >= 0 && t < vocab) ids.push_back(t);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (std::int64_t t : ids) {
    float s = scores[t];
    scores[t] = s < 0 ? s * penalty_ : s / penalty_;
  }
}

void NoRepeatNGramProcessor::apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const {
  const std::int64_t len = std::int64_t(seq.size());
  if (n_ <= 0 || len + 1 < n_) return;
  // the last n-1 tokens form the prefix; every earlier n-gram with that prefix bans its last token
  const std::int64_t start = len - (n_ - 1);
  for (std::int64_t i = 0; i + n_ <= len; ++i) {
    bool match = true;
    for (std::int64_t j = 0; j < n_ - 1 && match; ++j) match = seq[std::size_t(i + j)] == seq[std::size_t(start + j)];
    if (match) {
      std::int64_t banned = seq[std::size_t(i + n_ - 1)];
      if (banned >= 0 && banned < vocab) scores[banned] = kNegInf;
    }
  }
}

void MinLengthProcessor::apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const {
  if (std::int64_t(seq.size()) < min_) ban_eos(eos_, scores, vocab);
}

void MinNewTokensProcessor::apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const {
  if (std::int64_t(seq.size()) - prompt_ < min_new_) ban_eos(eos_, scores, vocab);
}

void TemperatureWarper::apply(const std::vector<std::int64_t>&, float* scores, std::int64_t vocab) const {
  for (std::int64_t i = 0; i < vocab; ++i) scores[i] /= t_;
}

void TopKWarper::apply(const std::vector<std::int64_t>&, float* scores, std::int64_t vocab) const {
  const std::int64_t k = std::min(std::max(k_, min_keep_), vocab);
  if (k <= 0) return;
  std::vector<float> v(scores, scores + vocab);
  std::nth_element(v.begin(), v.begin() + (k - 1), v.end(), std::greater<float>());
  const float kth = v[std::size_t(k - 1)];
  for (std::int64_t i = 0; i < vocab; ++i)
    if (scores[i] < kth) scores[i] = kNegInf;
}

void TopPWarper::apply(const std::vector<std::int64_t>&, float* scores, std::int64_t vocab) const {
  std::vector<std::int64_t> order(static_cast<std::size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return scores[a] < scores[b]; });
  // softmax over the sorted scores, then the running sum from the least likely up
  float mx = scores[order.back()];
  std::vector<float> p(static_cast<std::size_t>(vocab));
  float z = 0;
  for (std::size_t i = 0; i < order.size(); ++i) z += (p[i] = std::exp(scores[order[i]] - mx));
  float cum = 0;
  const float threshold = 1.0f - p_;
  std::vector<char> remove(std::size_t(vocab), 0);
  for (std::size_t i = 0; i < order.size(); ++i) {
    cum += p[i] / z;
    remove[i] = cum <= threshold;
  }
  for (std::int64_t i = std::max<std::int64_t>(0, vocab - min_keep_); i < vocab; ++i) remove[std::size_t(i)] = 0;
  for (std::size_t i = 0; i < order.size(); ++i)
    if (remove[i]) scores[order[i]] = kNegInf;
}

LogitsProcessorList make_logits_processors(const GenerationConfig& cfg, std::int64_t prompt_length) {
  LogitsProcessorList l;
  if (cfg.repetition_penalty != 1.0)
    l.add(std::make_unique<RepetitionPenaltyProcessor>(float(cfg.repetition_penalty)));
  if (cfg.no_repeat_ngram_size > 0) l.add(std::make_unique<NoRepeatNGramProcessor>(cfg.no_repeat_ngram_size));
  if (cfg.min_length > 0 && !cfg.eos_token_id.empty())
    l.add(std::make_unique<MinLengthProcessor>(cfg.min_length, cfg.eos_token_id));
  if (cfg.min_new_tokens && *cfg.min_new_tokens > 0 && !cfg.eos_token_id.empty())
    l.add(std::make_unique<MinNewTokensProcessor>(prompt_length, *cfg.min_new_tokens, cfg.eos_token_id));
  return l;
}

LogitsProcessorList make_logits_warpers(const GenerationConfig& cfg) {
  LogitsProcessorList l;
  if (cfg.temperature != 1.0) l.add(std::make_unique<TemperatureWarper>(float(cfg.temperature)));
  const std::int64_t min_keep = cfg.num_beams > 1 ? 2 : 1;
  if (cfg.top_k != 0) l.add(std::make_unique<TopKWarper>(cfg.top_k, min_keep));
  if (cfg.top_p < 1.0) l.add(std::make_unique<TopPWarper>(float(cfg.top_p), min_keep));
  return l;
}

}  // namespace instructblip::generation

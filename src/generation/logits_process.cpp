#include "instructblip/generation/logits_process.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <string>

namespace instructblip::generation {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void ban_eos(const std::vector<std::int64_t>& eos, float* scores, std::int64_t vocab) {
  for (std::int64_t e : eos)
    if (e >= 0 && e < vocab) scores[e] = kNegInf;
}

// log(sum(exp(scores))) as torch computes it: max + log(sum(exp(s - max))). -inf for a row of -inf.
float log_sum_exp(const float* scores, std::int64_t vocab) {
  float mx = kNegInf;
  for (std::int64_t i = 0; i < vocab; ++i) mx = std::max(mx, scores[i]);
  if (mx == kNegInf) return kNegInf;
  double z = 0;
  for (std::int64_t i = 0; i < vocab; ++i) z += std::exp(double(scores[i] - mx));
  return mx + float(std::log(z));
}

// softmax(scores) in float (probabilities of the -inf scores are 0).
std::vector<float> softmax(const float* scores, std::int64_t vocab) {
  const float lse = log_sum_exp(scores, vocab);
  std::vector<float> p(static_cast<std::size_t>(vocab));
  for (std::int64_t i = 0; i < vocab; ++i) p[std::size_t(i)] = std::exp(scores[i] - lse);
  return p;
}

// The min_keep-th highest score (torch.topk(scores, min_keep)[0][..., -1]); min_keep >= 1.
float kth_highest(const float* scores, std::int64_t vocab, std::int64_t min_keep) {
  const std::int64_t k = std::min(min_keep, vocab);
  std::vector<float> v(scores, scores + vocab);
  std::nth_element(v.begin(), v.begin() + (k - 1), v.end(), std::greater<float>());
  return v[std::size_t(k - 1)];
}

void check_min_keep(std::int64_t min_keep) {
  if (min_keep < 1)
    throw InvalidArgument("min_tokens_to_keep must be a positive integer, got " + std::to_string(min_keep));
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

TypicalWarper::TypicalWarper(float mass, std::int64_t min_keep) : mass_(mass), min_keep_(min_keep) {
  if (!(mass > 0 && mass < 1))
    throw InvalidArgument("typical_p must be a float > 0 and < 1, got " + std::to_string(mass));
  check_min_keep(min_keep);
}

void TypicalWarper::apply(const std::vector<std::int64_t>&, float* scores, std::int64_t vocab) const {
  if (vocab <= 0) return;
  // normalized = log_softmax(scores); entropy = -nansum(normalized * exp(normalized)) (a -inf score
  // contributes -inf * 0 = NaN, which nansum skips)
  const float lse = log_sum_exp(scores, vocab);
  if (lse == kNegInf || std::isnan(lse)) return;
  std::vector<float> normalized(static_cast<std::size_t>(vocab)), p(static_cast<std::size_t>(vocab));
  float ent = 0;
  for (std::int64_t i = 0; i < vocab; ++i) {
    normalized[std::size_t(i)] = scores[i] - lse;
    p[std::size_t(i)] = std::exp(normalized[std::size_t(i)]);
    const float term = normalized[std::size_t(i)] * p[std::size_t(i)];
    if (!std::isnan(term)) ent -= term;
  }
  // shifted = |-normalized - entropy|, sorted ascending (torch.sort; ties in index order)
  std::vector<float> shifted(static_cast<std::size_t>(vocab));
  for (std::int64_t i = 0; i < vocab; ++i) shifted[std::size_t(i)] = std::fabs(-normalized[std::size_t(i)] - ent);
  std::vector<std::int64_t> order(static_cast<std::size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int64_t a, std::int64_t b) { return shifted[std::size_t(a)] < shifted[std::size_t(b)]; });
  // last_ind = #(cumulative probability in that order < mass), clamped to vocab - 1; everything
  // whose shifted score exceeds the one at last_ind is removed, except the first min_keep.
  std::int64_t last_ind = 0;
  float cum = 0;
  for (std::int64_t i = 0; i < vocab; ++i) {
    cum += p[std::size_t(order[std::size_t(i)])];
    if (cum < mass_) ++last_ind;
  }
  last_ind = std::min(last_ind, vocab - 1);
  const float threshold = shifted[std::size_t(order[std::size_t(last_ind)])];
  for (std::int64_t i = min_keep_; i < vocab; ++i) {
    const std::int64_t t = order[std::size_t(i)];
    if (shifted[std::size_t(t)] > threshold) scores[t] = kNegInf;
  }
}

EpsilonWarper::EpsilonWarper(float epsilon, std::int64_t min_keep) : epsilon_(epsilon), min_keep_(min_keep) {
  if (!(epsilon > 0 && epsilon < 1))
    throw InvalidArgument("epsilon_cutoff must be a float > 0 and < 1, got " + std::to_string(epsilon));
  check_min_keep(min_keep);
}

void EpsilonWarper::apply(const std::vector<std::int64_t>&, float* scores, std::int64_t vocab) const {
  if (vocab <= 0) return;
  const std::vector<float> p = softmax(scores, vocab);
  const float keep = kth_highest(scores, vocab, min_keep_);
  for (std::int64_t i = 0; i < vocab; ++i)
    if (p[std::size_t(i)] < epsilon_ && scores[i] < keep) scores[i] = kNegInf;
}

EtaWarper::EtaWarper(float epsilon, std::int64_t min_keep) : epsilon_(epsilon), min_keep_(min_keep) {
  if (!(epsilon > 0 && epsilon < 1))
    throw InvalidArgument("eta_cutoff must be a float > 0 and < 1, got " + std::to_string(epsilon));
  check_min_keep(min_keep);
}

void EtaWarper::apply(const std::vector<std::int64_t>&, float* scores, std::int64_t vocab) const {
  if (vocab <= 0) return;
  // entropy of Categorical(logits=scores): -sum(p * max(log p, finfo.min))
  const float lse = log_sum_exp(scores, vocab);
  const std::vector<float> p = softmax(scores, vocab);
  float entropy = 0;
  for (std::int64_t i = 0; i < vocab; ++i)
    entropy -= p[std::size_t(i)] * std::max(scores[i] - lse, std::numeric_limits<float>::lowest());
  const float eta = std::min(epsilon_, std::sqrt(epsilon_) * std::exp(-entropy));
  const float keep = kth_highest(scores, vocab, min_keep_);
  for (std::int64_t i = 0; i < vocab; ++i)
    if (p[std::size_t(i)] < eta && scores[i] < keep) scores[i] = kNegInf;
}

void ForcedBOSProcessor::apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const {
  if (seq.size() != 1) return;
  for (std::int64_t i = 0; i < vocab; ++i) scores[i] = i == bos_ ? 0.0f : kNegInf;
}

void ForcedEOSProcessor::apply(const std::vector<std::int64_t>& seq, float* scores, std::int64_t vocab) const {
  if (std::int64_t(seq.size()) != max_length_ - 1) return;
  for (std::int64_t i = 0; i < vocab; ++i)
    scores[i] = std::find(eos_.begin(), eos_.end(), i) != eos_.end() ? 0.0f : kNegInf;
}

void InfNanRemoveProcessor::apply(const std::vector<std::int64_t>&, float* scores, std::int64_t vocab) const {
  for (std::int64_t i = 0; i < vocab; ++i) {
    if (std::isnan(scores[i])) scores[i] = 0.0f;
    else if (scores[i] == std::numeric_limits<float>::infinity()) scores[i] = std::numeric_limits<float>::max();
    else if (scores[i] == kNegInf) scores[i] = std::numeric_limits<float>::lowest();
  }
}

void LogitNormalization::apply(const std::vector<std::int64_t>&, float* scores, std::int64_t vocab) const {
  const float lse = log_sum_exp(scores, vocab);
  for (std::int64_t i = 0; i < vocab; ++i) scores[i] -= lse;
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
  if (cfg.forced_bos_token_id) l.add(std::make_unique<ForcedBOSProcessor>(*cfg.forced_bos_token_id));
  if (!cfg.forced_eos_token_id.empty())
    l.add(std::make_unique<ForcedEOSProcessor>(cfg.max_length, cfg.forced_eos_token_id));
  if (cfg.remove_invalid_values) l.add(std::make_unique<InfNanRemoveProcessor>());
  // transformers appends LogitNormalization after every other processor
  if (cfg.renormalize_logits) l.add(std::make_unique<LogitNormalization>());
  return l;
}

LogitsProcessorList make_logits_warpers(const GenerationConfig& cfg) {
  LogitsProcessorList l;
  if (cfg.temperature != 1.0) l.add(std::make_unique<TemperatureWarper>(float(cfg.temperature)));
  // Beams keep one token more than there are EOS ids, so that a non-EOS continuation survives
  // (transformers: len(eos_token_id) + 1 for a list, else 2).
  const std::int64_t min_keep =
      cfg.num_beams > 1 ? std::max<std::int64_t>(2, std::int64_t(cfg.eos_token_id.size()) + 1) : 1;
  if (cfg.top_k != 0) l.add(std::make_unique<TopKWarper>(cfg.top_k, min_keep));
  if (cfg.top_p < 1.0) l.add(std::make_unique<TopPWarper>(float(cfg.top_p), min_keep));
  if (cfg.typical_p < 1.0) l.add(std::make_unique<TypicalWarper>(float(cfg.typical_p), min_keep));
  if (cfg.epsilon_cutoff > 0.0 && cfg.epsilon_cutoff < 1.0)
    l.add(std::make_unique<EpsilonWarper>(float(cfg.epsilon_cutoff), min_keep));
  if (cfg.eta_cutoff > 0.0 && cfg.eta_cutoff < 1.0)
    l.add(std::make_unique<EtaWarper>(float(cfg.eta_cutoff), min_keep));
  if (cfg.renormalize_logits) l.add(std::make_unique<LogitNormalization>());
  return l;
}

}  // namespace instructblip::generation

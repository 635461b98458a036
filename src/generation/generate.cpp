#include "instructblip/generation/generate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>

#include "instructblip/generation/logits_process.hpp"
#include "instructblip/ops/activations.hpp"
#include "../internal/util.hpp"

namespace instructblip::generation {

namespace {

using Seq = std::vector<std::int64_t>;

bool is_eos(const GenerationConfig& c, std::int64_t t) {
  return std::find(c.eos_token_id.begin(), c.eos_token_id.end(), t) != c.eos_token_id.end();
}

// First index of the maximum, as torch.argmax.
std::int64_t argmax(const float* s, std::int64_t n) {
  std::int64_t best = 0;
  for (std::int64_t i = 1; i < n; ++i)
    if (s[i] > s[best]) best = i;
  return best;
}

std::int64_t sample_from(const float* scores, std::int64_t n, std::mt19937_64& rng) {
  float mx = -std::numeric_limits<float>::infinity();
  for (std::int64_t i = 0; i < n; ++i) mx = std::max(mx, scores[i]);
  if (mx == -std::numeric_limits<float>::infinity())
    throw InvalidArgument("sampling: every token was filtered out");
  std::vector<double> p(static_cast<std::size_t>(n));
  double z = 0;
  for (std::int64_t i = 0; i < n; ++i) z += (p[std::size_t(i)] = std::exp(double(scores[i]) - double(mx)));
  double u = std::uniform_real_distribution<double>(0.0, z)(rng);
  for (std::int64_t i = 0; i < n; ++i) {
    u -= p[std::size_t(i)];
    if (u < 0 && p[std::size_t(i)] > 0) return i;
  }
  for (std::int64_t i = n - 1; i >= 0; --i)
    if (p[std::size_t(i)] > 0) return i;
  return 0;
}

Tensor copy_rows(const Tensor& logits) { return logits.clone(); }

// ---- beam hypotheses (beam_search.py BeamHypotheses) ----------------------------------------
struct Hyp {
  float score;
  Seq tokens;
};

class BeamHypotheses {
 public:
  BeamHypotheses(std::int64_t num_beams, double length_penalty, EarlyStopping es, std::int64_t max_length)
      : num_beams_(num_beams), lp_(length_penalty), es_(es), max_length_(max_length) {}

  std::size_t size() const { return beams_.size(); }
  const std::vector<Hyp>& beams() const { return beams_; }

  void add(const Seq& tokens, float sum_logprobs, std::int64_t generated_len) {
    const float score = float(double(sum_logprobs) / std::pow(double(generated_len), lp_));
    if (std::int64_t(beams_.size()) < num_beams_ || score > worst_) {
      beams_.push_back({score, tokens});
      if (std::int64_t(beams_.size()) > num_beams_) {
        // sorted((s, idx)) -> delete the lowest, worst = the second lowest
        std::vector<std::size_t> idx(beams_.size());
        std::iota(idx.begin(), idx.end(), 0);
        std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) {
          return beams_[a].score < beams_[b].score || (beams_[a].score == beams_[b].score && a < b);
        });
        worst_ = beams_[idx[1]].score;
        beams_.erase(beams_.begin() + std::ptrdiff_t(idx[0]));
      } else {
        worst_ = std::min(score, worst_);
      }
    }
  }

  bool is_done(float best_sum_logprobs, std::int64_t cur_len, std::int64_t prompt_len) const {
    if (std::int64_t(beams_.size()) < num_beams_) return false;
    if (es_ == EarlyStopping::True) return true;
    double denom_len;
    if (es_ == EarlyStopping::False || lp_ <= 0.0) denom_len = double(cur_len - prompt_len);
    else denom_len = double(max_length_ - prompt_len);
    const float highest = float(double(best_sum_logprobs) / std::pow(denom_len, lp_));
    return worst_ >= highest;
  }

 private:
  std::int64_t num_beams_;
  double lp_;
  EarlyStopping es_;
  std::int64_t max_length_;
  std::vector<Hyp> beams_;
  float worst_ = 1e9f;
};

struct Candidate {
  float score;
  std::int64_t flat;  // index into num_beams * vocab
};

// a * b for non-negative operands, saturating at INT64_MAX (limits may be raised arbitrarily).
std::int64_t mul_sat(std::int64_t a, std::int64_t b) {
  if (a <= 0 || b <= 0) return 0;
  if (a > std::numeric_limits<std::int64_t>::max() / b) return std::numeric_limits<std::int64_t>::max();
  return a * b;
}
std::int64_t add_sat(std::int64_t a, std::int64_t b) {
  if (a > std::numeric_limits<std::int64_t>::max() - b) return std::numeric_limits<std::int64_t>::max();
  return a + b;
}

using instructblip::detail::over_limit;

// The KV caches are sized for at most this many new tokens up front and grow (doubling) beyond,
// so a large max_new_tokens costs memory only when the tokens are actually generated.
constexpr std::int64_t kInitialCacheTokens = 512;

}  // namespace


GenerationConfig resolve_generation_config(const GenerationConfig& in, bool is_encoder_decoder,
                                           const GenerationLimits& limits) {
  limits.validate();
  GenerationConfig c = in;
  c.validate();
  if (c.num_beam_groups != 1) throw InvalidArgument("num_beam_groups > 1 (group beam search) is not supported");
  // Refused settings: each needs something this library's generation does not have, so it fails
  // here (for generate() arguments and generation_config.json alike) instead of being ignored.
  if (c.diversity_penalty != 0.0)
    throw InvalidArgument("diversity_penalty (" + std::to_string(c.diversity_penalty) +
                          ") is not supported: it only applies to group beam search (num_beam_groups > 1), "
                          "which is not implemented");
  if (c.encoder_repetition_penalty != 1.0)
    throw InvalidArgument("encoder_repetition_penalty (" + std::to_string(c.encoder_repetition_penalty) +
                          ") is not supported: it penalises the encoder's input ids, and InstructBLIP's language "
                          "model generates from inputs_embeds (query tokens + prompt), which have no ids "
                          "(transformers 4.36.2 cannot apply it either)");
  if (c.encoder_no_repeat_ngram_size != 0)
    throw InvalidArgument("encoder_no_repeat_ngram_size (" + std::to_string(c.encoder_no_repeat_ngram_size) +
                          ") is not supported: it bans n-grams of the encoder's input ids, and InstructBLIP's "
                          "language model generates from inputs_embeds (query tokens + prompt), which have no ids "
                          "(transformers 4.36.2 cannot apply it either)");
  if (c.penalty_alpha && *c.penalty_alpha > 0 && c.top_k > 1)
    throw InvalidArgument("contrastive search (penalty_alpha) is not supported");
  if (c.num_beams < 1) throw InvalidArgument("num_beams must be >= 1");
  if (c.num_return_sequences < 1) throw InvalidArgument("num_return_sequences must be >= 1");
  if (c.num_beams > limits.max_num_beams)
    throw InvalidArgument(over_limit("num_beams", c.num_beams, "max_num_beams", limits.max_num_beams));
  if (c.num_return_sequences > limits.max_num_return_sequences)
    throw InvalidArgument(over_limit("num_return_sequences", c.num_return_sequences, "max_num_return_sequences",
                                     limits.max_num_return_sequences));
  if (!c.do_sample && c.num_beams == 1 && c.num_return_sequences > 1)
    throw InvalidArgument("greedy search returns one sequence per input: num_return_sequences must be 1 (use beams or sampling)");
  if (c.num_beams > 1 && c.num_return_sequences > c.num_beams)
    throw InvalidArgument("num_return_sequences (" + std::to_string(c.num_return_sequences) +
                          ") must not exceed num_beams (" + std::to_string(c.num_beams) + ")");
  if (c.do_sample && !(c.temperature > 0)) throw InvalidArgument("temperature must be a strictly positive float");
  if (c.do_sample && (c.top_p < 0 || c.top_p > 1)) throw InvalidArgument("top_p must be in [0, 1]");
  // The sampling warpers are built only with do_sample (as in transformers); out-of-range values
  // that transformers would skip silently are refused instead.
  if (c.do_sample && !(c.typical_p > 0 && c.typical_p <= 1)) throw InvalidArgument("typical_p must be in (0, 1]");
  if (c.do_sample && !(c.epsilon_cutoff >= 0 && c.epsilon_cutoff < 1))
    throw InvalidArgument("epsilon_cutoff must be in [0, 1)");
  if (c.do_sample && !(c.eta_cutoff >= 0 && c.eta_cutoff < 1)) throw InvalidArgument("eta_cutoff must be in [0, 1)");
  if (c.max_time && std::isnan(*c.max_time)) throw InvalidArgument("max_time must be a number of seconds, got NaN");
  if (c.forced_bos_token_id && *c.forced_bos_token_id < 0)
    throw InvalidArgument("forced_bos_token_id must be >= 0, got " + std::to_string(*c.forced_bos_token_id));
  for (std::int64_t id : c.forced_eos_token_id)
    if (id < 0) throw InvalidArgument("forced_eos_token_id must be >= 0, got " + std::to_string(id));
  if (c.top_k < 0) throw InvalidArgument("top_k must be >= 0");
  if (!(c.repetition_penalty > 0)) throw InvalidArgument("repetition_penalty must be strictly positive");
  if (c.max_new_tokens) {
    if (*c.max_new_tokens < 1) throw InvalidArgument("max_new_tokens must be >= 1");
    if (*c.max_new_tokens > limits.max_length - 1)
      throw InvalidArgument(over_limit("max_new_tokens", *c.max_new_tokens, "max_length - 1", limits.max_length - 1));
    c.max_length = *c.max_new_tokens + 1;  // + the start token
  }
  if (c.max_length < 1) throw InvalidArgument("max_length must be >= 1");
  if (c.max_length > limits.max_length)
    throw InvalidArgument(over_limit("max_length", c.max_length, "max_length", limits.max_length));
  if (!c.pad_token_id && !c.eos_token_id.empty()) c.pad_token_id = c.eos_token_id.front();
  if (is_encoder_decoder) {
    if (!c.decoder_start_token_id) c.decoder_start_token_id = c.bos_token_id;
    if (!c.decoder_start_token_id)
      throw InvalidArgument("decoder_start_token_id or bos_token_id must be set for an encoder-decoder model");
  } else if (!c.bos_token_id) {
    throw InvalidArgument("bos_token_id must be set to generate from inputs_embeds with a decoder-only model");
  }
  if (c.num_beams > 1 && (c.eos_token_id.empty() || !c.pad_token_id))
    throw InvalidArgument("beam search needs eos_token_id and pad_token_id");
  return c;
}

void check_generation_size(const GenerationConfig& cfg, std::int64_t B, std::int64_t L, std::int64_t V,
                           const GenerationLimits& limits) {
  const bool beam = cfg.num_beams > 1;
  const std::int64_t expand = beam ? cfg.num_beams : cfg.num_return_sequences;
  const std::int64_t rows = mul_sat(B, expand);
  if (L > limits.max_prompt_tokens)
    throw InvalidArgument(over_limit("generate: the prompt length in positions", L, "max_prompt_tokens",
                                     limits.max_prompt_tokens));
  if (rows > limits.max_rows)
    throw InvalidArgument(over_limit("generate: batch " + std::to_string(B) + " x " +
                                         (beam ? "num_beams " : "num_return_sequences ") + std::to_string(expand) +
                                         " rows",
                                     rows, "max_rows", limits.max_rows));
  const std::int64_t positions = mul_sat(rows, add_sat(L, cfg.max_length));
  if (positions > limits.max_total_positions)
    throw InvalidArgument(over_limit("generate: rows x (prompt length + max_length) = " + std::to_string(rows) +
                                         " x (" + std::to_string(L) + " + " + std::to_string(cfg.max_length) + ")",
                                     positions, "max_total_positions", limits.max_total_positions));
  if (cfg.forced_bos_token_id && *cfg.forced_bos_token_id >= V)
    throw InvalidArgument("forced_bos_token_id (" + std::to_string(*cfg.forced_bos_token_id) +
                          ") is not below the vocabulary size (" + std::to_string(V) + ")");
  for (std::int64_t id : cfg.forced_eos_token_id)
    if (id >= V)
      throw InvalidArgument("forced_eos_token_id (" + std::to_string(id) + ") is not below the vocabulary size (" +
                            std::to_string(V) + ")");
  if (cfg.output_scores) {
    const std::int64_t bytes = mul_sat(mul_sat(mul_sat(rows, cfg.max_length - 1), V), 4);
    if (bytes > limits.max_output_scores_bytes)
      throw InvalidArgument(over_limit("generate: output_scores could keep rows x (max_length - 1) x vocab x 4 bytes",
                                       bytes, "max_output_scores_bytes", limits.max_output_scores_bytes));
  }
}

// ---- Search: one generate() call, advanced one step at a time ---------------------------------

struct Search::Impl {
  const models::LanguageModel& lm;
  std::unique_ptr<models::LMState> state;
  GenerationConfig cfg;
  GenerateHooks hooks;
  std::int64_t B = 0, V = 0, rows = 0, K = 1;
  bool beam = false;
  static constexpr std::int64_t prompt_len = 1;
  std::int64_t pad = 0;
  std::chrono::steady_clock::time_point started;
  std::vector<Seq> seqs;
  std::vector<std::int64_t> last;
  LogitsProcessorList processors, warpers;
  std::mt19937_64 rng;
  GenerateOutput out;
  bool finished = false;
  // greedy / sampling
  std::vector<char> unfinished;
  // beam search
  std::vector<BeamHypotheses> hyps;
  std::vector<char> done;
  std::vector<float> beam_scores;
  std::int64_t n_cand = 0;

  Impl(const models::LanguageModel& lm_, std::unique_ptr<models::LMState> st, std::int64_t batch,
       const GenerationConfig& resolved, const GenerateHooks& h)
      : lm(lm_), state(std::move(st)), cfg(resolved), hooks(h), B(batch), V(lm_.vocab_size()) {
    const std::int64_t start_token = lm.is_encoder_decoder() ? *cfg.decoder_start_token_id : *cfg.bos_token_id;
    beam = cfg.num_beams > 1;
    const std::int64_t expand = beam ? cfg.num_beams : cfg.num_return_sequences;
    rows = mul_sat(B, expand);
    pad = cfg.pad_token_id.value_or(0);
    if (!state || state->batch() != B)
      throw InvalidArgument("Search: the language-model state must hold the " + std::to_string(B) + " prompt rows");
    if (expand > 1) {
      std::vector<std::int64_t> idx;
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t e = 0; e < expand; ++e) idx.push_back(b);
      lm.select_rows(*state, idx);
    }
    // MaxTimeCriteria's clock: transformers creates it after the encoder outputs exist and before
    // the first decoding step, so it excludes the T5 encoder (run by start()) and includes the LLaMA
    // prefill (run by the first step()).
    started = std::chrono::steady_clock::now();
    seqs.assign(std::size_t(rows), Seq{start_token});
    last.assign(std::size_t(rows), start_token);
    processors = make_logits_processors(cfg, prompt_len);
    if (cfg.do_sample) warpers = make_logits_warpers(cfg);
    rng.seed(cfg.seed.value_or(0x1b2c3d4e5f60718ull));
    if (!beam) {
      unfinished.assign(std::size_t(rows), 1);
    } else {
      K = cfg.num_beams;
      for (std::int64_t b = 0; b < B; ++b) hyps.emplace_back(K, cfg.length_penalty, cfg.early_stopping, cfg.max_length);
      done.assign(std::size_t(B), 0);
      beam_scores.assign(std::size_t(rows), 0.0f);
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t k = 1; k < K; ++k) beam_scores[std::size_t(b * K + k)] = -1e9f;
      const std::int64_t n_eos = std::int64_t(cfg.eos_token_id.size());
      // transformers keeps max(2, 1 + #eos) * num_beams candidates; never more than there are.
      n_cand = std::min<std::int64_t>(mul_sat(std::max<std::int64_t>(2, 1 + n_eos), K), K * V);
    }
  }

  // MaxTimeCriteria: checked after every step, true once more than max_time seconds have passed.
  bool out_of_time() const {
    return cfg.max_time &&
           std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() > *cfg.max_time;
  }

  void check_logits(const Tensor& logits) const {
    if (!logits.defined() || logits.dtype() != DType::F32 || logits.shape() != Shape{rows, V})
      throw InvalidArgument("Search: a step's logits must be F32 " + shape_str({rows, V}) + ", got " +
                            (logits.defined() ? shape_str(logits.shape()) : std::string("undefined")));
  }

  // ---- greedy search / multinomial sampling --------------------------------------------
  bool advance_greedy(const Tensor& logits) {
    Tensor scores = copy_rows(logits);
    float* S = scores.data<float>();
    std::vector<std::int64_t> next(static_cast<std::size_t>(rows));
    for (std::int64_t r = 0; r < rows; ++r) {
      float* s = S + r * V;
      processors.apply(seqs[std::size_t(r)], s, V);
      if (cfg.do_sample) {
        warpers.apply(seqs[std::size_t(r)], s, V);
        next[std::size_t(r)] = sample_from(s, V, rng);
      } else {
        next[std::size_t(r)] = argmax(s, V);
      }
    }
    if (cfg.output_scores) out.scores.push_back(scores);
    bool any = false;
    for (std::int64_t r = 0; r < rows; ++r) {
      std::int64_t t = next[std::size_t(r)];
      if (!cfg.eos_token_id.empty() && !unfinished[std::size_t(r)]) t = pad;
      next[std::size_t(r)] = t;
      seqs[std::size_t(r)].push_back(t);
      if (is_eos(cfg, t)) unfinished[std::size_t(r)] = 0;
      any = any || unfinished[std::size_t(r)];
    }
    if (hooks.on_tokens) hooks.on_tokens(next);
    last = next;
    return !any || std::int64_t(seqs[0].size()) >= cfg.max_length || out_of_time();
  }

  // ---- beam search / beam sampling (BeamSearchScorer) --------------------------------------
  bool advance_beam(const Tensor& logits) {
    Tensor scores = Tensor::empty({rows, V});
    float* S = scores.data<float>();
    const float* L = logits.data<float>();
    for (std::int64_t r = 0; r < rows; ++r) {
      float* s = S + r * V;
      ops::log_softmax_row(L + r * V, s, std::size_t(V));
      processors.apply(seqs[std::size_t(r)], s, V);
    }
    if (cfg.output_scores) out.scores.push_back(scores.clone());
    for (std::int64_t r = 0; r < rows; ++r) {
      float* s = S + r * V;
      for (std::int64_t v = 0; v < V; ++v) s[v] += beam_scores[std::size_t(r)];
      if (cfg.do_sample) warpers.apply(seqs[std::size_t(r)], s, V);
    }
    // BeamSearchScorer.process's cur_len: the running length including this step's token, so a
    // hypothesis closed by EOS counts the EOS in its generated length.
    const std::int64_t cur_len = std::int64_t(seqs[0].size()) + 1;
    std::vector<float> next_scores(static_cast<std::size_t>(rows));
    std::vector<std::int64_t> next_tokens(static_cast<std::size_t>(rows)), next_rows(static_cast<std::size_t>(rows));
    for (std::int64_t b = 0; b < B; ++b) {
      if (done[std::size_t(b)]) {
        for (std::int64_t k = 0; k < K; ++k) {
          next_scores[std::size_t(b * K + k)] = 0;
          next_tokens[std::size_t(b * K + k)] = pad;
          next_rows[std::size_t(b * K + k)] = b * K;  // a finished batch only carries pads (its output comes from its hypotheses)
        }
        continue;
      }
      const float* block = S + b * K * V;
      std::vector<Candidate> cand;
      if (!cfg.do_sample) {
        // top n_cand over num_beams * vocab, sorted descending, ties by index (torch.topk)
        std::vector<std::int64_t> idx(std::size_t(K * V));
        std::iota(idx.begin(), idx.end(), 0);
        auto better = [&](std::int64_t a, std::int64_t c) { return block[a] > block[c] || (block[a] == block[c] && a < c); };
        std::partial_sort(idx.begin(), idx.begin() + n_cand, idx.end(), better);
        for (std::int64_t i = 0; i < n_cand; ++i) cand.push_back({block[idx[std::size_t(i)]], idx[std::size_t(i)]});
      } else {
        // multinomial without replacement from softmax over num_beams * vocab, then sorted
        std::vector<float> w(block, block + K * V);
        for (std::int64_t i = 0; i < n_cand; ++i) {
          std::int64_t pick = sample_from(w.data(), K * V, rng);
          cand.push_back({block[pick], pick});
          w[std::size_t(pick)] = -std::numeric_limits<float>::infinity();
        }
        std::stable_sort(cand.begin(), cand.end(), [](const Candidate& a, const Candidate& c) { return a.score > c.score; });
      }
      std::int64_t beam_idx = 0;
      for (std::int64_t rank = 0; rank < std::int64_t(cand.size()); ++rank) {
        const std::int64_t token = cand[std::size_t(rank)].flat % V;
        const std::int64_t src = b * K + cand[std::size_t(rank)].flat / V;
        if (is_eos(cfg, token)) {
          if (rank >= K) continue;
          hyps[std::size_t(b)].add(seqs[std::size_t(src)], cand[std::size_t(rank)].score, cur_len - prompt_len);
        } else {
          next_scores[std::size_t(b * K + beam_idx)] = cand[std::size_t(rank)].score;
          next_tokens[std::size_t(b * K + beam_idx)] = token;
          next_rows[std::size_t(b * K + beam_idx)] = src;
          ++beam_idx;
        }
        if (beam_idx == K) break;
      }
      if (beam_idx < K) throw InvalidArgument("beam search: too many candidates ended in eos_token_id");
      float best = -std::numeric_limits<float>::infinity();
      for (const auto& c : cand) best = std::max(best, c.score);
      done[std::size_t(b)] = done[std::size_t(b)] || hyps[std::size_t(b)].is_done(best, cur_len, prompt_len);
    }
    std::vector<Seq> reordered(static_cast<std::size_t>(rows));
    for (std::int64_t r = 0; r < rows; ++r) {
      reordered[std::size_t(r)] = seqs[std::size_t(next_rows[std::size_t(r)])];
      reordered[std::size_t(r)].push_back(next_tokens[std::size_t(r)]);
    }
    seqs.swap(reordered);
    beam_scores = next_scores;
    last = next_tokens;
    const bool all_done = std::all_of(done.begin(), done.end(), [](char d) { return d != 0; });
    if (all_done || std::int64_t(seqs[0].size()) >= cfg.max_length || out_of_time()) return true;
    lm.select_rows(*state, next_rows);
    return false;
  }

  // finalize: open beams join the hypotheses, the best num_return_sequences are returned
  void finish_beam() {
    for (std::int64_t b = 0; b < B; ++b) {
      if (done[std::size_t(b)]) continue;
      for (std::int64_t k = 0; k < K; ++k) {
        const Seq& s = seqs[std::size_t(b * K + k)];
        hyps[std::size_t(b)].add(s, beam_scores[std::size_t(b * K + k)], std::int64_t(s.size()) - prompt_len);
      }
    }
    std::vector<Seq> best;
    for (std::int64_t b = 0; b < B; ++b) {
      std::vector<Hyp> sorted = hyps[std::size_t(b)].beams();
      std::stable_sort(sorted.begin(), sorted.end(), [](const Hyp& a, const Hyp& c) { return a.score < c.score; });
      for (std::int64_t j = 0; j < cfg.num_return_sequences; ++j) {
        best.push_back(sorted.back().tokens);
        out.sequences_scores.push_back(sorted.back().score);
        sorted.pop_back();
      }
    }
    std::size_t max_len = 0, min_len = std::numeric_limits<std::size_t>::max();
    for (const auto& s : best) {
      max_len = std::max(max_len, s.size());
      min_len = std::min(min_len, s.size());
    }
    const std::size_t width = std::min<std::size_t>(max_len + 1, std::size_t(cfg.max_length));
    for (auto& s : best) {
      if (s.size() < width) s.push_back(cfg.eos_token_id.front());
      if (min_len != max_len) s.resize(width, pad);
      else s.resize(std::min(width, s.size()));
    }
    out.sequences = std::move(best);
  }
};

Search::Search(const models::LanguageModel& lm, std::unique_ptr<models::LMState> state, std::int64_t batch,
               const GenerationConfig& resolved, const GenerateHooks& hooks)
    : impl_(std::make_unique<Impl>(lm, std::move(state), batch, resolved, hooks)) {}
Search::Search(Search&&) noexcept = default;
Search& Search::operator=(Search&&) noexcept = default;
Search::~Search() = default;

models::LMState& Search::state() { return *impl_->state; }
const std::vector<std::int64_t>& Search::next_inputs() const { return impl_->last; }
std::int64_t Search::rows() const { return impl_->rows; }
std::int64_t Search::steps() const { return impl_->out.steps; }
bool Search::done() const { return impl_->finished; }
const std::vector<std::vector<std::int64_t>>& Search::running_sequences() const { return impl_->seqs; }
const std::vector<char>& Search::unfinished_rows() const { return impl_->unfinished; }

bool Search::advance(const Tensor& logits) {
  Impl& s = *impl_;
  if (s.finished) throw InvalidArgument("Search::advance: generation is over");
  s.check_logits(logits);
  ++s.out.steps;
  s.finished = s.beam ? s.advance_beam(logits) : s.advance_greedy(logits);
  return s.finished;
}

GenerateOutput Search::finish(bool aborted) {
  Impl& s = *impl_;
  s.finished = true;
  s.out.aborted = aborted;
  if (s.beam) s.finish_beam();
  else s.out.sequences = s.seqs;
  return std::move(s.out);
}

GenerateOutput generate(const models::LanguageModel& lm, const Tensor& inputs_embeds, const Tensor& attention_mask,
                        const GenerationConfig& user_cfg, const GenerateHooks& hooks,
                        const GenerationLimits& limits) {
  const GenerationConfig cfg = resolve_generation_config(user_cfg, lm.is_encoder_decoder(), limits);
  if (!inputs_embeds.defined() || !attention_mask.defined() || inputs_embeds.ndim() != 3 ||
      attention_mask.ndim() != 2 || attention_mask.dim(0) != inputs_embeds.dim(0) ||
      attention_mask.dim(1) != inputs_embeds.dim(1))
    throw InvalidArgument("generate: inputs_embeds must be [B, L, H] and attention_mask [B, L], got " +
                          shape_str(inputs_embeds.shape()) + " and " + shape_str(attention_mask.shape()));
  const std::int64_t B = inputs_embeds.dim(0);
  // Resource limits, before anything is allocated.
  check_generation_size(cfg, B, inputs_embeds.dim(1), lm.vocab_size(), limits);
  check_model_positions(lm, cfg, inputs_embeds.dim(1));
  Search search(lm, lm.start(inputs_embeds, attention_mask, initial_cache_tokens(cfg)), B, cfg, hooks);
  for (;;) {
    if (hooks.abort && hooks.abort->load()) return search.finish(/*aborted=*/true);
    if (search.advance(lm.step(search.state(), search.next_inputs()))) break;
  }
  return search.finish();
}

void check_model_positions(const models::LanguageModel& lm, const GenerationConfig& resolved,
                           std::int64_t prompt_length) {
  const auto max = lm.max_positions();
  if (!max || lm.is_encoder_decoder()) return;
  const std::int64_t needed = add_sat(prompt_length, resolved.max_length - 1);
  if (needed > *max)
    throw InvalidArgument("generate: the prompt's " + std::to_string(prompt_length) + " positions + max_length " +
                          std::to_string(resolved.max_length) + " - 1 need " + std::to_string(needed) +
                          " positions, more than the language model has (max_position_embeddings " +
                          std::to_string(*max) + "); lower max_new_tokens / max_length");
}

std::int64_t initial_cache_tokens(const GenerationConfig& resolved) {
  return std::min<std::int64_t>(resolved.max_length - 1, kInitialCacheTokens);
}

}  // namespace instructblip::generation

void instructblip::GenerationLimits::validate() const {
  const std::pair<const char*, std::int64_t> all[] = {
      {"max_prompt_tokens", max_prompt_tokens}, {"max_length", max_length},
      {"max_num_beams", max_num_beams},         {"max_num_return_sequences", max_num_return_sequences},
      {"max_rows", max_rows},                   {"max_total_positions", max_total_positions},
      {"max_output_scores_bytes", max_output_scores_bytes}};
  for (const auto& kv : all)
    if (kv.second < 1)
      throw InvalidArgument(std::string("GenerationLimits::") + kv.first + " must be positive, got " +
                            std::to_string(kv.second));
}

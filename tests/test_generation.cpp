// Decoding strategies on a small deterministic stand-in language model whose logits depend on
// the previous token and the position, so that expected results can be worked out by brute force.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <thread>

#include "instructblip/generation/generate.hpp"
#include "instructblip/generation/logits_process.hpp"

using namespace instructblip;
using namespace instructblip::generation;

namespace {

class FakeState : public models::LMState {
 public:
  std::vector<std::int64_t> pos;  // steps taken per row
  std::vector<std::int64_t> row_id;  // which prompt row this is (batch index)
  std::int64_t batch() const override { return std::int64_t(pos.size()); }
};

// logits(prompt_row, prev_token, position)[v]: fixed pseudo-random values in [-3, 3].
class FakeLM : public models::LanguageModel {
 public:
  FakeLM(std::int64_t vocab, bool enc_dec) : V_(vocab), enc_dec_(enc_dec) {}
  std::int64_t vocab_size() const override { return V_; }
  std::int64_t hidden_size() const override { return 2; }
  bool is_encoder_decoder() const override { return enc_dec_; }
  Tensor embed(const Tensor& ids) const override { return Tensor::zeros({ids.dim(0), ids.dim(1), 2}); }
  models::LMOutput forward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool) const override {
    return {};
  }
  std::unique_ptr<models::LMState> start(const Tensor& embeds, const Tensor&, std::int64_t) const override {
    auto s = std::make_unique<FakeState>();
    for (std::int64_t b = 0; b < embeds.dim(0); ++b) {
      s->pos.push_back(0);
      s->row_id.push_back(b);
    }
    return s;
  }
  Tensor step(models::LMState& st, const std::vector<std::int64_t>& tokens) const override {
    auto& s = static_cast<FakeState&>(st);
    ++calls;
    Tensor out = Tensor::empty({s.batch(), V_});
    for (std::int64_t r = 0; r < s.batch(); ++r) {
      const std::int64_t prev = (!enc_dec_ && s.pos[std::size_t(r)] == 0) ? -1 : tokens[std::size_t(r)];
      for (std::int64_t v = 0; v < V_; ++v)
        out.data<float>()[r * V_ + v] = value(s.row_id[std::size_t(r)], prev, s.pos[std::size_t(r)], v);
      ++s.pos[std::size_t(r)];
    }
    return out;
  }
  void select_rows(models::LMState& st, const std::vector<std::int64_t>& idx) const override {
    auto& s = static_cast<FakeState&>(st);
    FakeState n;
    for (auto i : idx) {
      n.pos.push_back(s.pos[std::size_t(i)]);
      n.row_id.push_back(s.row_id[std::size_t(i)]);
    }
    s.pos = n.pos;
    s.row_id = n.row_id;
  }
  static float value(std::int64_t row, std::int64_t prev, std::int64_t pos, std::int64_t v) {
    std::uint64_t h = std::uint64_t(row * 1000003 + (prev + 7) * 7919 + pos * 104729 + v * 15485863) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return float(double(h % 60001) / 10000.0 - 3.0);
  }
  std::int64_t V_;
  bool enc_dec_;
  mutable int calls = 0;
};

GenerationConfig base_config() {
  GenerationConfig c;
  c.bos_token_id = 1;
  c.decoder_start_token_id = 0;
  c.pad_token_id = 0;
  c.eos_token_id = {1};
  return c;
}

Tensor embeds(std::int64_t B) { return Tensor::zeros({B, 3, 2}); }
Tensor mask(std::int64_t B) {
  Tensor m = Tensor::zeros({B, 3}, DType::I64);
  for (std::int64_t i = 0; i < m.numel(); ++i) m.data<std::int64_t>()[i] = 1;
  return m;
}

// Log-softmax of the fake model's logits in double.
std::vector<double> logprobs(std::int64_t row, std::int64_t prev, std::int64_t pos, std::int64_t V) {
  std::vector<double> l(static_cast<std::size_t>(V));
  double mx = -1e9;
  for (std::int64_t v = 0; v < V; ++v) mx = std::max(mx, double(l[std::size_t(v)] = FakeLM::value(row, prev, pos, v)));
  double z = 0;
  for (auto x : l) z += std::exp(x - mx);
  for (auto& x : l) x = x - mx - std::log(z);
  return l;
}

}  // namespace

TEST(Greedy, PicksArgmaxAndCountsLikeTransformers) {
  FakeLM lm(50, true);
  GenerationConfig c = base_config();
  c.eos_token_id = {};  // never stops early
  c.max_new_tokens = 5;
  auto out = generate(lm, embeds(2), mask(2), c);
  ASSERT_EQ(out.sequences.size(), 2u);
  for (std::int64_t b = 0; b < 2; ++b) {
    const auto& s = out.sequences[std::size_t(b)];
    ASSERT_EQ(s.size(), 6u);  // start token + max_new_tokens
    EXPECT_EQ(s[0], 0);
    for (std::size_t t = 1; t < s.size(); ++t) {
      std::int64_t best = 0;
      for (std::int64_t v = 1; v < 50; ++v)
        if (FakeLM::value(b, s[t - 1], std::int64_t(t - 1), v) > FakeLM::value(b, s[t - 1], std::int64_t(t - 1), best)) best = v;
      EXPECT_EQ(s[t], best) << "row " << b << " position " << t;
    }
  }
  // max_length counts the start token: max_length = 4 -> three new tokens
  c.max_new_tokens.reset();
  c.max_length = 4;
  EXPECT_EQ(generate(lm, embeds(1), mask(1), c).sequences[0].size(), 4u);
}

TEST(Greedy, StopsAtEosAndPadsFinishedRows) {
  FakeLM lm(50, true);
  GenerationConfig c = base_config();
  c.max_new_tokens = 30;
  // make a row's greedy choice the EOS: pick as EOS the first greedy token of row 0
  c.eos_token_id = {};
  c.max_new_tokens = 1;
  const std::int64_t first0 = generate(lm, embeds(2), mask(2), c).sequences[0][1];
  c.eos_token_id = {first0};
  c.pad_token_id = 49;
  c.max_new_tokens = 30;
  auto out = generate(lm, embeds(2), mask(2), c);
  EXPECT_EQ(out.sequences[0][1], first0);
  EXPECT_EQ(out.sequences[0].size(), out.sequences[1].size());
  for (std::size_t t = 2; t < out.sequences[0].size(); ++t) EXPECT_EQ(out.sequences[0][t], 49);
  // pad defaults to the first EOS when unset
  c.pad_token_id.reset();
  EXPECT_EQ(resolve_generation_config(c, true).pad_token_id, first0);
}

TEST(Greedy, DecoderOnlyStartsWithPlaceholderBos) {
  FakeLM lm(20, false);
  GenerationConfig c = base_config();
  c.eos_token_id = {};
  c.bos_token_id = 7;
  c.max_new_tokens = 3;
  auto out = generate(lm, embeds(1), mask(1), c);
  EXPECT_EQ(out.sequences[0][0], 7);
  EXPECT_EQ(out.sequences[0].size(), 4u);
  EXPECT_EQ(lm.calls, 3);
}

TEST(LogitsProcessors, RepetitionPenaltyAndMinLength) {
  float s[5] = {2.0f, -2.0f, 1.0f, -1.0f, 0.5f};
  RepetitionPenaltyProcessor(2.0f).apply({0, 1, 1, 4}, s, 5);
  EXPECT_FLOAT_EQ(s[0], 1.0f);   // positive: divided
  EXPECT_FLOAT_EQ(s[1], -4.0f);  // negative: multiplied, once despite the repeat
  EXPECT_FLOAT_EQ(s[2], 1.0f);
  EXPECT_FLOAT_EQ(s[4], 0.25f);
  float m[3] = {1, 2, 3};
  MinLengthProcessor(3, {2}).apply({0, 5}, m, 3);
  EXPECT_TRUE(std::isinf(m[2]));
  float m2[3] = {1, 2, 3};
  MinLengthProcessor(3, {2}).apply({0, 5, 6}, m2, 3);
  EXPECT_EQ(m2[2], 3.0f);
  float n[3] = {1, 2, 3};
  MinNewTokensProcessor(1, 2, {0}).apply({9, 5}, n, 3);
  EXPECT_TRUE(std::isinf(n[0]));
  float g[4] = {0, 0, 0, 0};
  NoRepeatNGramProcessor(2).apply({3, 1, 2, 3}, g, 4);  // "3 1" seen -> after 3, 1 is banned
  EXPECT_TRUE(std::isinf(g[1]));
  EXPECT_EQ(g[2], 0.0f);
}

TEST(LogitsWarpers, TopKKeepsTiesAndTopPKeepsNucleus) {
  float s[5] = {1, 3, 3, 2, 0};
  TopKWarper(2, 1).apply({}, s, 5);
  EXPECT_EQ(s[1], 3.0f);
  EXPECT_EQ(s[2], 3.0f);
  EXPECT_TRUE(std::isinf(s[3]) && std::isinf(s[0]));
  // probabilities 0.5, 0.3, 0.2 (log-space): top_p 0.75 keeps {0.5, 0.3}
  float p[3] = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  TopPWarper(0.75f, 1).apply({}, p, 3);
  EXPECT_FALSE(std::isinf(p[0]));
  EXPECT_FALSE(std::isinf(p[1]));
  EXPECT_TRUE(std::isinf(p[2]));
  float q[3] = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  TopPWarper(0.01f, 1).apply({}, q, 3);  // min_tokens_to_keep = 1 keeps the best
  EXPECT_FALSE(std::isinf(q[0]));
  EXPECT_TRUE(std::isinf(q[1]));
}

TEST(Sampling, SeedReproducibleAndTopK1IsGreedy) {
  FakeLM lm(40, true);
  GenerationConfig c = base_config();
  c.eos_token_id = {};
  c.max_new_tokens = 8;
  auto greedy = generate(lm, embeds(2), mask(2), c);
  c.do_sample = true;
  c.top_k = 1;
  c.seed = 5;
  EXPECT_EQ(generate(lm, embeds(2), mask(2), c).sequences, greedy.sequences);
  c.top_k = 0;
  c.temperature = 3.0;
  auto a = generate(lm, embeds(2), mask(2), c);
  auto b = generate(lm, embeds(2), mask(2), c);
  EXPECT_EQ(a.sequences, b.sequences);
  c.seed = 6;
  auto d = generate(lm, embeds(2), mask(2), c);
  EXPECT_NE(a.sequences, d.sequences);
  c.num_return_sequences = 3;
  EXPECT_EQ(generate(lm, embeds(2), mask(2), c).sequences.size(), 6u);
}

TEST(Sampling, EmpiricalDistributionMatchesFilteredSoftmax) {
  const std::int64_t V = 12;
  FakeLM lm(V, true);
  GenerationConfig c = base_config();
  c.eos_token_id = {};
  c.max_new_tokens = 1;
  c.do_sample = true;
  c.top_k = 0;
  c.temperature = 0.7;
  c.top_p = 0.8;
  // expected: softmax(logits / T), then drop the tail whose cumulative mass (ascending) <= 0.2
  std::vector<double> l(static_cast<std::size_t>(V));
  for (std::int64_t v = 0; v < V; ++v) l[std::size_t(v)] = FakeLM::value(0, 0, 0, v) / 0.7;
  double mx = *std::max_element(l.begin(), l.end()), z = 0;
  for (auto x : l) z += std::exp(x - mx);
  std::vector<std::int64_t> order(static_cast<std::size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](auto a, auto b) { return l[std::size_t(a)] < l[std::size_t(b)]; });
  std::vector<double> p(V, 0.0);
  double cum = 0, kept = 0;
  for (std::int64_t i = 0; i < V; ++i) {
    double pi = std::exp(l[std::size_t(order[std::size_t(i)])] - mx) / z;
    cum += pi;
    if (cum > 0.2 + 1e-6 || i == V - 1) {
      p[std::size_t(order[std::size_t(i)])] = pi;
      kept += pi;
    }
  }
  for (auto& x : p) x /= kept;
  const int N = 20000;
  std::vector<int> count(V, 0);
  for (int n = 0; n < N; ++n) {
    c.seed = std::uint64_t(1000 + n);
    ++count[std::size_t(generate(lm, embeds(1), mask(1), c).sequences[0][1])];
  }
  for (std::int64_t v = 0; v < V; ++v) {
    const double e = p[std::size_t(v)];
    const double sd = std::sqrt(N * e * (1 - e)) + 1e-9;
    if (e == 0) EXPECT_EQ(count[std::size_t(v)], 0) << v;
    else EXPECT_LT(std::fabs(count[std::size_t(v)] - N * e), 5 * sd) << "token " << v << " p=" << e;
  }
}

TEST(BeamSearch, ExhaustiveBeamFindsTheBestSequence) {
  // With num_beams >= V^(steps-1) beam search is exhaustive: it must return the sequence with
  // the highest total log-probability (all have the same length, so length_penalty is moot).
  const std::int64_t V = 4, steps = 3;
  FakeLM lm(V, true);
  GenerationConfig c = base_config();
  c.eos_token_id = {V + 10};  // never produced
  c.pad_token_id = 0;
  c.num_beams = 16;
  c.num_return_sequences = 3;
  c.max_new_tokens = steps;
  auto out = generate(lm, embeds(1), mask(1), c);
  std::vector<std::pair<double, std::vector<std::int64_t>>> all;
  for (std::int64_t a = 0; a < V; ++a)
    for (std::int64_t b = 0; b < V; ++b)
      for (std::int64_t d = 0; d < V; ++d) {
        double s = logprobs(0, 0, 0, V)[std::size_t(a)] + logprobs(0, a, 1, V)[std::size_t(b)] +
                   logprobs(0, b, 2, V)[std::size_t(d)];
        all.push_back({s, {0, a, b, d}});
      }
  std::sort(all.begin(), all.end(), [](auto& x, auto& y) { return x.first > y.first; });
  ASSERT_EQ(out.sequences.size(), 3u);
  for (int j = 0; j < 3; ++j) {
    EXPECT_EQ(out.sequences[std::size_t(j)], all[std::size_t(j)].second) << j;
    EXPECT_NEAR(out.sequences_scores[std::size_t(j)], all[std::size_t(j)].first / steps, 1e-4);
  }
}

TEST(BeamSearch, FinishedHypothesesAreScoredByLengthAndPadded) {
  const std::int64_t V = 30;
  FakeLM lm(V, true);
  GenerationConfig c = base_config();
  c.num_beams = 3;
  c.max_new_tokens = 6;
  c.pad_token_id = 29;
  // choose as EOS the best first token of row 1 so that a hypothesis finishes at step one
  auto lp = logprobs(1, 0, 0, V);
  c.eos_token_id = {std::int64_t(std::max_element(lp.begin(), lp.end()) - lp.begin())};
  c.length_penalty = 1.0;
  auto out = generate(lm, embeds(2), mask(2), c);
  ASSERT_EQ(out.sequences.size(), 2u);
  EXPECT_EQ(out.sequences[0].size(), out.sequences[1].size());
  for (const auto& s : out.sequences) EXPECT_EQ(s[0], 0);
  // every returned row is a start token, tokens, then optionally EOS followed by pads only
  for (const auto& s : out.sequences) {
    auto it = std::find(s.begin() + 1, s.end(), c.eos_token_id[0]);
    for (auto j = (it == s.end() ? s.end() : it + 1); j != s.end(); ++j) EXPECT_EQ(*j, 29);
  }
}

TEST(Generate, CallbackAbortAndValidation) {
  FakeLM lm(30, true);
  GenerationConfig c = base_config();
  c.eos_token_id = {};
  c.max_new_tokens = 10;
  int calls = 0;
  std::atomic<bool> stop{false};
  GenerateHooks hooks;
  hooks.on_tokens = [&](const std::vector<std::int64_t>& t) {
    EXPECT_EQ(t.size(), 1u);
    if (++calls == 3) stop = true;
  };
  hooks.abort = &stop;
  auto out = generate(lm, embeds(1), mask(1), c, hooks);
  EXPECT_TRUE(out.aborted);
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(out.sequences[0].size(), 4u);

  GenerationConfig bad = base_config();
  bad.num_beams = 0;
  EXPECT_THROW(generate(lm, embeds(1), mask(1), bad), InvalidArgument);
  bad = base_config();
  bad.num_return_sequences = 2;  // greedy
  EXPECT_THROW(generate(lm, embeds(1), mask(1), bad), InvalidArgument);
  bad = base_config();
  bad.num_beams = 2;
  bad.num_return_sequences = 3;
  EXPECT_THROW(generate(lm, embeds(1), mask(1), bad), InvalidArgument);
  bad = base_config();
  bad.do_sample = true;
  bad.top_p = 2.0;
  EXPECT_THROW(generate(lm, embeds(1), mask(1), bad), InvalidArgument);
  EXPECT_THROW(generate(lm, Tensor::zeros({1, 3}), mask(1), base_config()), InvalidArgument);
}

// ---- the remaining GenerationConfig fields: honoured (one processor each, or max_time) or refused ----

namespace {
bool neg_inf(float x) { return std::isinf(x) && x < 0; }
// The scores row [2, 1, 0.5, -1, 0] used by the warper tests; float32 facts derived from it:
//   log_softmax = [-0.574438, -1.574438, -2.074438, -3.574438, -2.574438]
//   p           = [0.563021, 0.207124, 0.125627, 0.028031, 0.076197]
//   entropy H   = -sum p log p = 1.206489
std::vector<float> row5() { return {2.0f, 1.0f, 0.5f, -1.0f, 0.0f}; }
}  // namespace

TEST(LogitsWarpers, TypicalKeepsTheLocallyTypicalSet) {
  // TypicalLogitsWarper: shifted = |-log p - H| = [0.632, 0.368, 0.868, 2.368, 1.368]; ascending
  // order 1, 0, 2, 4, 3 with cumulative p 0.207, 0.770, 0.896, 0.972, 1.0.
  // mass 0.5: one cumulative value < 0.5 -> last_ind 1 -> threshold shifted[0] = 0.632: keep {1, 0}.
  auto s = row5();
  TypicalWarper(0.5f, 1).apply({}, s.data(), 5);
  EXPECT_EQ(s[0], 2.0f);
  EXPECT_EQ(s[1], 1.0f);
  EXPECT_TRUE(neg_inf(s[2]) && neg_inf(s[3]) && neg_inf(s[4]));
  // mass 0.9: three values < 0.9 -> last_ind 3 -> threshold shifted[4] = 1.368: keep {1, 0, 2, 4}.
  s = row5();
  TypicalWarper(0.9f, 1).apply({}, s.data(), 5);
  EXPECT_EQ(s[2], 0.5f);
  EXPECT_EQ(s[4], 0.0f);
  EXPECT_TRUE(neg_inf(s[3]));
  // min_tokens_to_keep 3 keeps the first three of the order (1, 0, 2) whatever the mass.
  s = row5();
  TypicalWarper(0.5f, 3).apply({}, s.data(), 5);
  EXPECT_EQ(s[2], 0.5f);
  EXPECT_TRUE(neg_inf(s[3]) && neg_inf(s[4]));
  EXPECT_THROW(TypicalWarper(0.0f, 1), InvalidArgument);
  EXPECT_THROW(TypicalWarper(1.0f, 1), InvalidArgument);
}

TEST(LogitsWarpers, EpsilonAndEtaCutoffs) {
  // EpsilonLogitsWarper: remove p < epsilon unless score >= the min_keep-th highest score.
  // 0.1: p[3] = 0.028 and p[4] = 0.076 go.
  auto s = row5();
  EpsilonWarper(0.1f, 1).apply({}, s.data(), 5);
  EXPECT_EQ(s[2], 0.5f);
  EXPECT_TRUE(neg_inf(s[3]) && neg_inf(s[4]));
  // 0.5 would keep only token 0; min_keep 2 also keeps token 1 (score >= the 2nd highest, 1.0).
  s = row5();
  EpsilonWarper(0.5f, 2).apply({}, s.data(), 5);
  EXPECT_EQ(s[0], 2.0f);
  EXPECT_EQ(s[1], 1.0f);
  EXPECT_TRUE(neg_inf(s[2]) && neg_inf(s[3]) && neg_inf(s[4]));
  // EtaLogitsWarper: eta = min(epsilon, sqrt(epsilon) * exp(-H)).
  // 0.5: min(0.5, 0.70711 * 0.29925 = 0.21160) -> only p[0] = 0.563 >= eta.
  s = row5();
  EtaWarper(0.5f, 1).apply({}, s.data(), 5);
  EXPECT_EQ(s[0], 2.0f);
  EXPECT_TRUE(neg_inf(s[1]) && neg_inf(s[2]) && neg_inf(s[3]) && neg_inf(s[4]));
  // ... min_keep 2 keeps token 1 as well (where epsilon 0.5 also keeps two, eta's cutoff 0.2116
  // would have kept p[1] = 0.207 out: it is the min_keep rule that keeps it).
  s = row5();
  EtaWarper(0.5f, 2).apply({}, s.data(), 5);
  EXPECT_EQ(s[1], 1.0f);
  EXPECT_TRUE(neg_inf(s[2]));
  // 0.1: min(0.1, 0.31623 * 0.29925 = 0.094630) -> p[4] = 0.076 and p[3] go, p[2] = 0.126 stays.
  s = row5();
  EtaWarper(0.1f, 1).apply({}, s.data(), 5);
  EXPECT_EQ(s[2], 0.5f);
  EXPECT_TRUE(neg_inf(s[3]) && neg_inf(s[4]));
  // 0.13: epsilon would cut p[2] = 0.1256, eta's cutoff min(0.13, 0.36056 * 0.29925 = 0.10790) keeps it.
  s = row5();
  EtaWarper(0.13f, 1).apply({}, s.data(), 5);
  EXPECT_EQ(s[2], 0.5f);
  s = row5();
  EpsilonWarper(0.13f, 1).apply({}, s.data(), 5);
  EXPECT_TRUE(neg_inf(s[2]));
  EXPECT_THROW(EpsilonWarper(0.0f, 1), InvalidArgument);
  EXPECT_THROW(EtaWarper(1.0f, 1), InvalidArgument);
}

TEST(LogitsProcessors, ForcedTokensInvalidValuesAndNormalization) {
  // ForcedBOSTokenLogitsProcessor acts while the sequence is the start token alone.
  auto s = row5();
  ForcedBOSProcessor(3).apply({0}, s.data(), 5);
  EXPECT_EQ(s[3], 0.0f);
  EXPECT_TRUE(neg_inf(s[0]) && neg_inf(s[1]) && neg_inf(s[2]) && neg_inf(s[4]));
  s = row5();
  ForcedBOSProcessor(3).apply({0, 2}, s.data(), 5);
  EXPECT_EQ(s, row5());
  // ForcedEOSTokenLogitsProcessor acts when the sequence is max_length - 1 long.
  s = row5();
  ForcedEOSProcessor(4, {2, 4}).apply({0, 1, 1}, s.data(), 5);
  EXPECT_EQ(s[2], 0.0f);
  EXPECT_EQ(s[4], 0.0f);
  EXPECT_TRUE(neg_inf(s[0]) && neg_inf(s[1]) && neg_inf(s[3]));
  s = row5();
  ForcedEOSProcessor(4, {2}).apply({0, 1}, s.data(), 5);
  EXPECT_EQ(s, row5());
  // InfNanRemoveLogitsProcessor: NaN -> 0, +inf -> finfo.max, -inf -> finfo.min.
  float bad[4] = {std::nanf(""), std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), 1.5f};
  InfNanRemoveProcessor().apply({}, bad, 4);
  EXPECT_EQ(bad[0], 0.0f);
  EXPECT_EQ(bad[1], std::numeric_limits<float>::max());
  EXPECT_EQ(bad[2], std::numeric_limits<float>::lowest());
  EXPECT_EQ(bad[3], 1.5f);
  // LogitNormalization: log_softmax([2, 1, 0.5, -1, 0]) = s - 2.574438.
  s = row5();
  LogitNormalization().apply({}, s.data(), 5);
  const float expect[5] = {-0.5744379f, -1.5744379f, -2.0744379f, -3.5744379f, -2.5744379f};
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(s[std::size_t(i)], expect[i], 1e-6f) << i;
}

TEST(LogitsProcessors, ListsFollowTransformersOrder) {
  // _get_logits_processor: ... min_length, forced BOS, remove_invalid_values, LogitNormalization last.
  GenerationConfig c = base_config();
  c.min_length = 5;
  c.eos_token_id = {4};
  c.remove_invalid_values = true;
  c.renormalize_logits = true;
  auto s = row5();
  make_logits_processors(c, 1).apply({0, 1}, s.data(), 5);
  // EOS banned by min_length, then -inf -> finfo.min (so it is finite), then log_softmax over the
  // four others: [2, 1, 0.5, -1] - log(e^2 + e + e^0.5 + e^-1) = [-0.495182, ..., -3.495182].
  EXPECT_EQ(s[4], std::numeric_limits<float>::lowest());
  EXPECT_NEAR(s[0], -0.495182f, 1e-5f);
  EXPECT_NEAR(s[3], -3.495182f, 1e-5f);
  // forced BOS then LogitNormalization: the forced token has log-probability 0.
  c = base_config();
  c.forced_bos_token_id = 2;
  c.renormalize_logits = true;
  s = row5();
  make_logits_processors(c, 1).apply({0}, s.data(), 5);
  EXPECT_EQ(s[2], 0.0f);
  EXPECT_TRUE(neg_inf(s[0]));
  // _get_logits_warper with beams keeps len(eos_token_id) + 1 tokens: top_k 1 keeps 4 of 5 here.
  c = base_config();
  c.num_beams = 2;
  c.top_k = 1;
  c.eos_token_id = {1, 2, 3};
  s = row5();
  make_logits_warpers(c).apply({0}, s.data(), 5);
  EXPECT_TRUE(neg_inf(s[3]));
  EXPECT_EQ(s[4], 0.0f);
  c.eos_token_id = {1};
  s = row5();
  make_logits_warpers(c).apply({0}, s.data(), 5);  // a single id: 2
  EXPECT_EQ(s[1], 1.0f);
  EXPECT_TRUE(neg_inf(s[2]));
}

TEST(Generate, ForcedBosAndEosTokens) {
  const std::int64_t V = 30;
  FakeLM lm(V, false);
  GenerationConfig c = base_config();
  c.eos_token_id = {};
  c.max_new_tokens = 5;
  auto free = generate(lm, embeds(2), mask(2), c);
  const std::int64_t forced = free.sequences[0][1] == 17 ? 18 : 17;  // not what greedy picks
  c.forced_bos_token_id = forced;
  c.forced_eos_token_id = {23};
  auto out = generate(lm, embeds(2), mask(2), c);
  for (std::int64_t b = 0; b < 2; ++b) {
    const auto& s = out.sequences[std::size_t(b)];
    ASSERT_EQ(s.size(), 6u);
    EXPECT_EQ(s[0], 1);       // the placeholder BOS
    EXPECT_EQ(s[1], forced);  // first generated token forced
    EXPECT_EQ(s[5], 23);      // length max_length - 1 -> the last token forced
    for (std::size_t t = 2; t < 5; ++t) {  // greedy in between
      std::int64_t best = 0;
      for (std::int64_t v = 1; v < V; ++v)
        if (FakeLM::value(b, s[t - 1], std::int64_t(t - 1), v) > FakeLM::value(b, s[t - 1], std::int64_t(t - 1), best))
          best = v;
      EXPECT_EQ(s[t], best) << b << " " << t;
    }
  }
  // beam search too: every returned hypothesis starts with the forced token
  c.num_beams = 3;
  c.eos_token_id = {V + 5};
  c.forced_eos_token_id.clear();
  for (const auto& s : generate(lm, embeds(1), mask(1), c).sequences) EXPECT_EQ(s[1], forced);
  GenerationConfig bad = base_config();
  bad.forced_bos_token_id = V;
  EXPECT_THROW(generate(lm, embeds(1), mask(1), bad), InvalidArgument);
  bad.forced_bos_token_id = -1;
  EXPECT_THROW(generate(lm, embeds(1), mask(1), bad), InvalidArgument);
}

TEST(Generate, MaxTimeStopsAfterTheStepThatExceedsIt) {
  FakeLM lm(30, true);
  GenerationConfig c = base_config();
  c.eos_token_id = {};
  c.max_new_tokens = 8;
  c.max_time = 0.0;  // MaxTimeCriteria is checked after a step: one token is always generated
  auto out = generate(lm, embeds(2), mask(2), c);
  EXPECT_EQ(out.steps, 1);
  for (const auto& s : out.sequences) EXPECT_EQ(s.size(), 2u);
  c.num_beams = 2;
  c.eos_token_id = {40};
  out = generate(lm, embeds(1), mask(1), c);
  EXPECT_EQ(out.steps, 1);
  // BeamSearchScorer.finalize appends EOS to hypotheses shorter than max_length
  EXPECT_EQ(out.sequences[0], (std::vector<std::int64_t>{0, out.sequences[0][1], 40}));
  c.num_beams = 1;
  c.max_time = 3600.0;  // not reached: max_new_tokens ends generation
  out = generate(lm, embeds(2), mask(2), c);
  EXPECT_EQ(out.steps, 8);
  c.max_time = std::nan("");
  EXPECT_THROW(generate(lm, embeds(1), mask(1), c), InvalidArgument);
}

namespace {
// FakeLM that spends `start_s` seconds in start() (as T5 runs its encoder there) and `first_step_s`
// in its first step() (as LLaMA runs the prompt there).
class SlowLM : public FakeLM {
 public:
  SlowLM(double start_s, double first_step_s) : FakeLM(30, true), start_s_(start_s), first_step_s_(first_step_s) {}
  std::unique_ptr<models::LMState> start(const Tensor& e, const Tensor& m, std::int64_t n) const override {
    std::this_thread::sleep_for(std::chrono::duration<double>(start_s_));
    return FakeLM::start(e, m, n);
  }
  Tensor step(models::LMState& st, const std::vector<std::int64_t>& tokens) const override {
    if (calls == 0) std::this_thread::sleep_for(std::chrono::duration<double>(first_step_s_));
    return FakeLM::step(st, tokens);
  }

 private:
  double start_s_, first_step_s_;
};
}  // namespace

TEST(Generate, MaxTimeClockStartsAfterTheEncoderAndBeforeTheFirstStep) {
  // transformers creates MaxTimeCriteria after the encoder outputs exist and before the first
  // decoding step: time spent in start() does not count, time in the first step() does.
  GenerationConfig c = base_config();
  c.eos_token_id = {};
  c.max_new_tokens = 5;
  c.max_time = 0.1;
  EXPECT_EQ(generate(SlowLM(0.2, 0.0), embeds(1), mask(1), c).steps, 5);
  EXPECT_EQ(generate(SlowLM(0.0, 0.2), embeds(1), mask(1), c).steps, 1);
}

TEST(Generate, RenormalizedAndCleanedScores) {
  const std::int64_t V = 20;
  FakeLM lm(V, true);
  GenerationConfig c = base_config();
  c.eos_token_id = {3};
  c.min_length = 10;  // EOS banned at every step
  c.max_new_tokens = 3;
  c.output_scores = true;
  c.renormalize_logits = true;
  c.remove_invalid_values = true;
  auto out = generate(lm, embeds(1), mask(1), c);
  ASSERT_EQ(out.scores.size(), 3u);
  const auto lp = logprobs(0, 0, 0, V);
  double z_rest = 0;  // the model's probabilities without EOS, renormalised
  for (std::int64_t v = 0; v < V; ++v)
    if (v != 3) z_rest += std::exp(lp[std::size_t(v)]);
  const float* s = out.scores[0].data<float>();
  EXPECT_EQ(s[3], std::numeric_limits<float>::lowest());  // -inf made finite, then normalised
  for (std::int64_t v = 0; v < V; ++v)
    if (v != 3) EXPECT_NEAR(s[v], lp[std::size_t(v)] - std::log(z_rest), 1e-5) << v;
}

namespace {
// First tokens drawn over `n` seeds with `c` (max_new_tokens 1).
std::set<std::int64_t> first_tokens(const FakeLM& lm, GenerationConfig c, int n) {
  std::set<std::int64_t> seen;
  c.max_new_tokens = 1;
  for (int i = 0; i < n; ++i) {
    c.seed = std::uint64_t(500 + i);
    seen.insert(generate(lm, embeds(1), mask(1), c).sequences[0][1]);
  }
  return seen;
}
// Tokens of the first step's logits that `w` leaves finite.
std::set<std::int64_t> kept_by(const LogitsProcessor& w, std::int64_t V) {
  std::vector<float> s(static_cast<std::size_t>(V));
  for (std::int64_t v = 0; v < V; ++v) s[std::size_t(v)] = FakeLM::value(0, 0, 0, v);
  w.apply({0}, s.data(), V);
  std::set<std::int64_t> kept;
  for (std::int64_t v = 0; v < V; ++v)
    if (!neg_inf(s[std::size_t(v)])) kept.insert(v);
  return kept;
}
}  // namespace

TEST(Sampling, TypicalEpsilonAndEtaRestrictWhatIsSampled) {
  const std::int64_t V = 12;
  FakeLM lm(V, true);
  GenerationConfig c = base_config();
  c.eos_token_id = {};
  c.do_sample = true;
  c.top_k = 0;
  const auto all = first_tokens(lm, c, 400);
  struct Case {
    const char* name;
    GenerationConfig cfg;
    std::set<std::int64_t> allowed;
  };
  GenerationConfig typical = c, epsilon = c, eta = c;
  typical.typical_p = 0.3;
  epsilon.epsilon_cutoff = 0.08;
  eta.eta_cutoff = 0.2;
  const std::vector<Case> cases = {{"typical_p", typical, kept_by(TypicalWarper(0.3f, 1), V)},
                                   {"epsilon_cutoff", epsilon, kept_by(EpsilonWarper(0.08f, 1), V)},
                                   {"eta_cutoff", eta, kept_by(EtaWarper(0.2f, 1), V)}};
  for (const auto& k : cases) {
    // without the setting some token outside the allowed set is drawn, so the check below bites
    ASSERT_TRUE(std::any_of(all.begin(), all.end(), [&](std::int64_t t) { return !k.allowed.count(t); })) << k.name;
    const auto seen = first_tokens(lm, k.cfg, 400);
    for (std::int64_t t : seen) EXPECT_TRUE(k.allowed.count(t)) << k.name << " sampled " << t;
    GenerationConfig again = k.cfg;
    again.max_new_tokens = 6;
    again.seed = 9;
    EXPECT_EQ(generate(lm, embeds(2), mask(2), again).sequences, generate(lm, embeds(2), mask(2), again).sequences)
        << k.name;
  }
  // out of range with do_sample: refused, naming the setting
  GenerationConfig bad = c;
  bad.typical_p = 0.0;
  EXPECT_THROW(generate(lm, embeds(1), mask(1), bad), InvalidArgument);
  bad = c;
  bad.epsilon_cutoff = 1.0;
  EXPECT_THROW(generate(lm, embeds(1), mask(1), bad), InvalidArgument);
  bad = c;
  bad.eta_cutoff = -0.1;
  EXPECT_THROW(generate(lm, embeds(1), mask(1), bad), InvalidArgument);
}

TEST(Generate, RefusedSettingsNameTheField) {
  FakeLM lm(30, false);
  struct Case {
    const char* field;
    void (*set)(GenerationConfig&);
  };
  const Case cases[] = {
      {"diversity_penalty", [](GenerationConfig& g) { g.diversity_penalty = 0.5; }},
      {"encoder_repetition_penalty", [](GenerationConfig& g) { g.encoder_repetition_penalty = 1.2; }},
      {"encoder_no_repeat_ngram_size", [](GenerationConfig& g) { g.encoder_no_repeat_ngram_size = 2; }},
  };
  for (const auto& k : cases) {
    GenerationConfig c = base_config();
    k.set(c);
    try {
      generate(lm, embeds(1), mask(1), c);
      ADD_FAILURE() << k.field << " was not refused";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(k.field), std::string::npos) << e.what();
    }
    EXPECT_EQ(lm.calls, 0) << "refused before the model ran";
  }
}

// Decoding strategies on a small deterministic stand-in language model whose logits depend on
// the previous token and the position, so that expected results can be worked out by brute force.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <numeric>

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

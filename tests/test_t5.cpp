// T5 language model against transformers 4.36.2 references (tests/data/t5-tiny), plus
// consistency checks: incremental decoding == teacher forcing, select_rows, a tied-embedding
// checkpoint (inner_dim != d_model) and a non-gated relu variant.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/io/checkpoint.hpp"
#include "instructblip/io/safetensors.hpp"
#include "instructblip/models/t5.hpp"
#include "instructblip/ops/ops.hpp"

using namespace instructblip;
using models::T5Model;
using models::T5State;

namespace {

constexpr float kTol = 1e-4f;
const std::string kDir = std::string(IB_TEST_DATA_DIR) + "/t5-tiny";

struct Fixture {
  T5Config config;
  std::unique_ptr<T5Model> model;
  io::SafeTensors ref;
};

const Fixture& fixture() {
  static const Fixture* f = [] {
    auto cfg = InstructBlipConfig::from_json_file(kDir + "/model/config.json").t5();
    auto ckpt = io::Checkpoint::open(kDir + "/model");
    auto* fx = new Fixture{cfg, std::make_unique<T5Model>(cfg, ckpt, "language_model."),
                           io::SafeTensors::open(kDir + "/reference.safetensors")};
    return fx;
  }();
  return *f;
}

Tensor reft(const std::string& name) { return fixture().ref.get(name); }

// Max |a - b| after checking the shapes agree; prints the value so the report can quote it.
float max_err(const Tensor& a, const Tensor& b, const std::string& what) {
  EXPECT_EQ(a.shape(), b.shape()) << what;
  if (a.shape() != b.shape()) return INFINITY;
  float m = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    float d = std::fabs(a.f(i) - b.f(i));
    if (!(d <= m)) m = d;  // NaN propagates
  }
  std::printf("[ max err  ] %-40s %.3g\n", what.c_str(), double(m));
  return m;
}

// Row r (of `rows` rows) of a [.., V] tensor as a [V] tensor (copy).
Tensor row_of(const Tensor& t, std::int64_t r) {
  const std::int64_t V = t.dim(-1);
  std::vector<float> v(t.data<float>() + r * V, t.data<float>() + (r + 1) * V);
  return Tensor::from_vector({V}, v);
}

// InstructBLIP's LM input: cat(language_model_inputs, embed(input_ids)), mask cat(ones, mask).
struct Prompt {
  Tensor embeds, mask;
};
Prompt prompt(const T5Model& m, const std::string& key) {
  const Tensor q = reft(key + ".language_model_inputs");
  const Tensor ids = reft(key + ".input_ids");
  const Tensor am = reft(key + ".attention_mask");
  Tensor e = m.embed(ids);
  const std::int64_t B = q.dim(0), Q = q.dim(1), P = ids.dim(1), D = q.dim(2);
  Prompt p{Tensor::empty({B, Q + P, D}), Tensor::empty({B, Q + P}, DType::I64)};
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t t = 0; t < Q + P; ++t) {
      const float* src = t < Q ? q.data<float>() + (b * Q + t) * D : e.data<float>() + (b * P + t - Q) * D;
      std::copy(src, src + D, p.embeds.data<float>() + (b * (Q + P) + t) * D);
      p.mask.data<std::int64_t>()[b * (Q + P) + t] = t < Q ? 1 : am.i(b * P + t - Q);
    }
  }
  return p;
}

// Decodes `ids` [B, T] one column at a time; returns logits [B, T, V].
Tensor incremental(const T5Model& m, models::LMState& st, const Tensor& ids) {
  const std::int64_t B = ids.dim(0), T = ids.dim(1), V = m.vocab_size();
  Tensor out = Tensor::empty({B, T, V});
  for (std::int64_t t = 0; t < T; ++t) {
    std::vector<std::int64_t> tok(static_cast<std::size_t>(B));
    for (std::int64_t b = 0; b < B; ++b) tok[std::size_t(b)] = ids.i(b * T + t);
    Tensor l = m.step(st, tok);
    for (std::int64_t b = 0; b < B; ++b)
      std::copy(l.data<float>() + b * V, l.data<float>() + (b + 1) * V, out.data<float>() + (b * T + t) * V);
  }
  return out;
}

// ---- random checkpoints --------------------------------------------------------------------

Tensor randn(const Shape& s, std::mt19937& g, float scale, float mean = 0.f) {
  Tensor t = Tensor::empty(s);
  std::normal_distribution<float> n(0.f, 1.f);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = mean + scale * n(g);
  return t;
}

// Writes every tensor a T5ForConditionalGeneration checkpoint holds (no embed_tokens; lm_head only
// when untied) under `prefix`, and returns the file path.
std::string write_random_t5(const T5Config& c, const std::string& file, const std::string& prefix, unsigned seed) {
  std::mt19937 g(seed);
  const std::int64_t D = c.d_model, I = c.inner_dim(), F = c.d_ff, V = c.vocab_size;
  std::vector<std::pair<std::string, Tensor>> ts;
  auto lin = [&](const std::string& n, std::int64_t out, std::int64_t in) {
    ts.emplace_back(prefix + n, randn({out, in}, g, 1.0f / std::sqrt(float(in))));
  };
  auto norm = [&](const std::string& n) { ts.emplace_back(prefix + n, randn({D}, g, 0.1f, 1.0f)); };
  ts.emplace_back(prefix + "shared.weight", randn({V, D}, g, 1.0f));
  if (!c.tie_word_embeddings) ts.emplace_back(prefix + "lm_head.weight", randn({V, D}, g, 2.0f / std::sqrt(float(D))));
  for (int dec = 0; dec < 2; ++dec) {
    const std::string stack = dec ? "decoder" : "encoder";
    const std::int64_t layers = dec ? c.num_decoder_layers : c.num_layers;
    for (std::int64_t i = 0; i < layers; ++i) {
      const std::string p = stack + ".block." + std::to_string(i) + ".layer.";
      std::vector<std::string> attn = {"0.SelfAttention"};
      if (dec) attn.push_back("1.EncDecAttention");
      for (const auto& a : attn) {
        ts.emplace_back(prefix + p + a + ".q.weight", randn({I, D}, g, 1.0f / std::sqrt(float(D) * float(c.d_kv))));
        lin(p + a + ".k.weight", I, D);
        lin(p + a + ".v.weight", I, D);
        lin(p + a + ".o.weight", D, I);
        norm(p + a.substr(0, 2) + "layer_norm.weight");
      }
      if (i == 0)
        ts.emplace_back(prefix + p + "0.SelfAttention.relative_attention_bias.weight",
                        randn({c.relative_attention_num_buckets, c.num_heads}, g, 0.5f));
      const std::string ff = p + (dec ? "2." : "1.");
      if (c.is_gated_act) {
        lin(ff + "DenseReluDense.wi_0.weight", F, D);
        lin(ff + "DenseReluDense.wi_1.weight", F, D);
      } else {
        lin(ff + "DenseReluDense.wi.weight", F, D);
      }
      lin(ff + "DenseReluDense.wo.weight", D, F);
      norm(ff + "layer_norm.weight");
    }
    norm(stack + ".final_layer_norm.weight");
  }
  const std::string path = std::string(IB_TEST_TMP_DIR) + "/" + file;
  io::save_safetensors(path, ts);
  return path;
}

T5Config small_config(bool gated, bool tied) {
  T5Config c;
  c.vocab_size = 57;
  c.d_model = 16;
  c.d_kv = 6;
  c.num_heads = 3;  // inner_dim 18 != d_model
  c.d_ff = 24;
  c.num_layers = 2;
  c.num_decoder_layers = 3;
  c.relative_attention_num_buckets = 8;
  c.relative_attention_max_distance = 20;
  c.feed_forward_proj = gated ? "gated-gelu" : "relu";
  c.dense_act_fn = gated ? "gelu_new" : "relu";
  c.is_gated_act = gated;
  c.tie_word_embeddings = tied;
  c.decoder_start_token_id = 0;
  return c;
}

Prompt random_prompt(std::int64_t B, std::int64_t L, std::int64_t D, unsigned seed) {
  std::mt19937 g(seed);
  Prompt p{randn({B, L, D}, g, 1.0f), Tensor::empty({B, L}, DType::I64)};
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < L; ++t) p.mask.data<std::int64_t>()[b * L + t] = t < L - 2 * b ? 1 : 0;
  return p;
}

Tensor random_ids(std::int64_t B, std::int64_t T, std::int64_t V, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<std::int64_t> u(0, V - 1);
  std::vector<std::int64_t> v(std::size_t(B * T));
  for (auto& x : v) x = u(g);
  for (std::int64_t b = 0; b < B; ++b) v[std::size_t(b * T)] = 0;  // decoder start
  return Tensor::from_vector({B, T}, v);
}

}  // namespace

// ---- unit pieces ---------------------------------------------------------------------------

TEST(T5, RelativePositionBucket) {
  auto bi = [](std::int64_t r) { return T5Model::relative_position_bucket(r, true, 32, 128); };
  auto uni = [](std::int64_t r) { return T5Model::relative_position_bucket(r, false, 32, 128); };
  // bidirectional: 16 buckets per direction, 8 exact, then log-spaced up to 128
  EXPECT_EQ(bi(0), 0);
  EXPECT_EQ(bi(-1), 1);
  EXPECT_EQ(bi(1), 17);
  EXPECT_EQ(bi(-7), 7);
  EXPECT_EQ(bi(-8), 8);
  EXPECT_EQ(bi(-16), 10);   // 8 + trunc(log(2) / log(16) * 8) = 8 + 2 (exact in float32)
  EXPECT_EQ(bi(16), 26);
  EXPECT_EQ(bi(-32), 12);   // 8 + 4
  EXPECT_EQ(bi(-100), 15);  // 8 + trunc(7.29)
  EXPECT_EQ(bi(-1000), 15);
  EXPECT_EQ(bi(1000), 31);
  // causal: only non-positive relative positions, 16 exact buckets, then log-spaced
  EXPECT_EQ(uni(5), 0);
  EXPECT_EQ(uni(-15), 15);
  EXPECT_EQ(uni(-16), 16);
  EXPECT_EQ(uni(-32), 21);   // 16 + trunc(16/3)
  EXPECT_EQ(uni(-127), 31);  // 16 + trunc(15.94)
  EXPECT_EQ(uni(-128), 31);
  EXPECT_EQ(uni(-100000), 31);
}

TEST(T5, ShiftRight) {
  const auto& m = *fixture().model;
  Tensor labels = Tensor::from_vector({2, 4}, std::vector<std::int64_t>{5, 6, 7, 1, 8, 1, -100, -100});
  Tensor s = m.shift_right(labels);
  std::vector<std::int64_t> want = {0, 5, 6, 7, 0, 8, 1, 0};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(s.i(i), want[std::size_t(i)]) << i;
}

TEST(T5, EmbedRejectsOutOfRange) {
  const auto& m = *fixture().model;
  EXPECT_THROW(m.embed(Tensor::from_vector({1, 2}, std::vector<std::int64_t>{3, 1100})), InvalidArgument);
  EXPECT_THROW(m.embed(Tensor::from_vector({1, 1}, std::vector<std::int64_t>{-1})), InvalidArgument);
  Tensor e = m.embed(Tensor::from_vector({1, 2}, std::vector<std::int64_t>{3, 1099}));
  EXPECT_EQ(e.shape(), (Shape{1, 2, 48}));
}

// ---- references ----------------------------------------------------------------------------

class T5Reference : public ::testing::TestWithParam<std::string> {};

TEST_P(T5Reference, EncoderDecoderLogitsLoss) {
  const std::string k = GetParam();
  const auto& m = *fixture().model;
  Prompt p = prompt(m, k);
  const bool hs = k == "a";  // the reference stored hidden states for input a only
  auto out = m.forward(p.embeds, p.mask, reft(k + ".decoder_input_ids"), Tensor(), hs);
  EXPECT_LT(max_err(out.encoder_last_hidden_state, reft(k + ".t5.encoder_last_hidden_state"),
                    k + ".t5.encoder_last_hidden_state"), kTol);
  EXPECT_LT(max_err(out.logits, reft(k + ".logits"), k + ".logits"), kTol);
  EXPECT_FALSE(out.loss.has_value());
  if (hs) {
    ASSERT_EQ(out.encoder_hidden_states.size(), 3u);
    ASSERT_EQ(out.hidden_states.size(), 3u);
    for (int i = 0; i < 3; ++i) {
      const std::string e = k + ".t5.encoder_hidden_states." + std::to_string(i);
      EXPECT_LT(max_err(out.encoder_hidden_states[std::size_t(i)], reft(e), e), kTol);
      const std::string d = k + ".lm.hidden_states." + std::to_string(i);
      EXPECT_LT(max_err(out.hidden_states[std::size_t(i)], reft(d), d), kTol);
    }
  } else {
    EXPECT_TRUE(out.hidden_states.empty());
    EXPECT_TRUE(out.encoder_hidden_states.empty());
  }

  // labels: decoder_input_ids = shift_right(labels), loss = mean CE over labels != -100
  const Tensor labels = reft(k + ".labels");
  auto lo = m.forward(p.embeds, p.mask, Tensor(), labels);
  ASSERT_TRUE(lo.loss.has_value());
  const float want = reft(k + ".loss").f(0);
  std::printf("[ max err  ] %-40s %.3g (loss %.7f vs %.7f)\n", (k + ".loss").c_str(), std::fabs(*lo.loss - want),
              double(*lo.loss), double(want));
  EXPECT_NEAR(*lo.loss, want, kTol);
  EXPECT_EQ(lo.logits.shape(), (Shape{labels.dim(0), labels.dim(1), 1100}));
  // explicit decoder_input_ids = shift_right(labels) gives the same loss
  auto lo2 = m.forward(p.embeds, p.mask, m.shift_right(labels), labels);
  EXPECT_FLOAT_EQ(*lo2.loss, *lo.loss);
}

TEST_P(T5Reference, IncrementalEqualsTeacherForcing) {
  const std::string k = GetParam();
  const auto& m = *fixture().model;
  Prompt p = prompt(m, k);
  const Tensor ids = reft(k + ".decoder_input_ids");
  auto tf = m.forward(p.embeds, p.mask, ids);
  auto st = m.start(p.embeds, p.mask, 4);  // capacity hint below the length: the cache grows
  Tensor inc = incremental(m, *st, ids);
  EXPECT_EQ(static_cast<T5State&>(*st).decoded_length(), ids.dim(1));
  EXPECT_LT(max_err(inc, tf.logits, k + ".incremental_vs_forward"), kTol);
  EXPECT_LT(max_err(inc, reft(k + ".logits"), k + ".incremental_vs_reference"), kTol);
  EXPECT_LT(max_err(static_cast<T5State&>(*st).encoder_last_hidden_state(),
                    reft(k + ".t5.encoder_last_hidden_state"), k + ".state.encoder_last_hidden_state"),
            kTol);
}

TEST_P(T5Reference, GreedyScores) {
  // generate(do_sample=False, num_beams=1, max_new_tokens=20): no logits processor is active
  // (no min_length / repetition penalty), so the stored scores are the raw next-token logits.
  const std::string k = GetParam();
  const auto& m = *fixture().model;
  Prompt p = prompt(m, k);
  const Tensor seq = reft(k + ".gen.greedy.sequences");  // [B, 21], starts with decoder_start (0)
  const Tensor scores = reft(k + ".gen.greedy.scores");  // [B, 20, V]
  auto st = m.start(p.embeds, p.mask, 20);
  const std::int64_t B = seq.dim(0), V = m.vocab_size();
  // first step: decoder_start_token_id for every row
  Tensor first = m.step(*st, std::vector<std::int64_t>(std::size_t(B), *fixture().config.decoder_start_id()));
  float e0 = 0, e_all = 0;
  for (std::int64_t b = 0; b < B; ++b) {
    Tensor want = Tensor::empty({V});
    std::copy(scores.data<float>() + b * 20 * V, scores.data<float>() + (b * 20 + 1) * V, want.data<float>());
    e0 = std::max(e0, max_err(row_of(first, b), want, k + ".gen.greedy.scores[row " + std::to_string(b) + ", 0]"));
  }
  EXPECT_LT(e0, kTol);
  // the remaining steps: feed the generated tokens (finished rows keep being fed pad, as HF does)
  for (std::int64_t t = 1; t < 20; ++t) {
    std::vector<std::int64_t> tok(static_cast<std::size_t>(B));
    for (std::int64_t b = 0; b < B; ++b) tok[std::size_t(b)] = seq.i(b * 21 + t);
    Tensor l = m.step(*st, tok);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t j = 0; j < V; ++j)
        e_all = std::max(e_all, std::fabs(l.f(b * V + j) - scores.f((b * 20 + t) * V + j)));
    // greedy picks the argmax
    for (std::int64_t b = 0; b < B; ++b) {
      const float* r = l.data<float>() + b * V;
      const std::int64_t am = std::max_element(r, r + V) - r;
      const std::int64_t next = seq.i(b * 21 + t + 1);
      bool finished = false;
      for (std::int64_t s = 1; s <= t; ++s) finished |= seq.i(b * 21 + s) == 1;
      if (!finished) EXPECT_EQ(am, next) << "row " << b << " step " << t;
    }
  }
  std::printf("[ max err  ] %-40s %.3g\n", (k + ".gen.greedy.scores[all 20 steps]").c_str(), double(e_all));
  EXPECT_LT(e_all, kTol);
}

INSTANTIATE_TEST_SUITE_P(Inputs, T5Reference, ::testing::Values("a", "b"));

TEST(T5, SelectRowsExpandsAndReorders) {
  const auto& m = *fixture().model;
  Prompt p = prompt(m, "b");
  const Tensor ids = reft("b.decoder_input_ids");  // [2, 10]
  const std::int64_t T = ids.dim(1), V = m.vocab_size();
  auto base = m.start(p.embeds, p.mask, T);
  Tensor want = incremental(m, *base, ids);  // [2, T, V]
  auto expect_rows = [&](const Tensor& logits, const std::vector<std::int64_t>& from, std::int64_t t,
                         const std::string& what) {
    float e = 0;
    for (std::size_t r = 0; r < from.size(); ++r)
      for (std::int64_t j = 0; j < V; ++j)
        e = std::max(e, std::fabs(logits.f(std::int64_t(r) * V + j) - want.f((from[r] * T + t) * V + j)));
    EXPECT_LT(e, kTol) << what << " step " << t;
    return e;
  };
  auto tokens = [&](const std::vector<std::int64_t>& from, std::int64_t t) {
    std::vector<std::int64_t> tok;
    for (auto r : from) tok.push_back(ids.i(r * T + t));
    return tok;
  };
  // expansion right after start(): {0, 0, 1}
  {
    auto st = m.start(p.embeds, p.mask, T);
    std::vector<std::int64_t> rows = {0, 0, 1};
    m.select_rows(*st, rows);
    EXPECT_EQ(st->batch(), 3);
    float e = 0;
    for (std::int64_t t = 0; t < T; ++t) e = std::max(e, expect_rows(m.step(*st, tokens(rows, t)), rows, t, "expand"));
    std::printf("[ max err  ] %-40s %.3g\n", "select_rows {0,0,1} vs unexpanded", double(e));
    Tensor mask = static_cast<T5State&>(*st).encoder_attention_mask();
    for (std::int64_t j = 0; j < mask.dim(1); ++j) {
      EXPECT_EQ(mask.i(j), p.mask.i(j));
      EXPECT_EQ(mask.i(mask.dim(1) + j), p.mask.i(j));
      EXPECT_EQ(mask.i(2 * mask.dim(1) + j), p.mask.i(mask.dim(1) + j));
    }
  }
  // reordering / expanding mid-sequence (beam search): the self-attention caches follow the rows
  {
    auto st = m.start(p.embeds, p.mask, 2);
    std::vector<std::int64_t> rows = {0, 1};
    for (std::int64_t t = 0; t < T; ++t) {
      if (t == 3) {  // swap
        m.select_rows(*st, {1, 0});
        rows = {rows[1], rows[0]};
      } else if (t == 5) {  // expand to 4 beams
        m.select_rows(*st, {1, 1, 0, 1});
        rows = {rows[1], rows[1], rows[0], rows[1]};
      } else if (t == 7) {  // drop back to 2 rows
        m.select_rows(*st, {2, 3});
        rows = {rows[2], rows[3]};
      }
      expect_rows(m.step(*st, tokens(rows, t)), rows, t, "reorder");
    }
  }
  auto st = m.start(p.embeds, p.mask, 2);
  EXPECT_THROW(m.select_rows(*st, {0, 2}), InvalidArgument);
  EXPECT_THROW(m.select_rows(*st, {}), InvalidArgument);
  EXPECT_THROW(m.step(*st, {0}), InvalidArgument);
}

TEST(T5, ConcurrentCallsShareTheModel) {
  const auto& m = *fixture().model;
  Prompt p = prompt(m, "b");
  const Tensor ids = reft("b.decoder_input_ids");
  Tensor want = m.forward(p.embeds, p.mask, ids).logits;
  std::vector<Tensor> got(3);
  std::vector<std::thread> th;
  for (int i = 0; i < 3; ++i)
    th.emplace_back([&, i] {
      if (i == 0) {
        got[0] = m.forward(p.embeds, p.mask, ids).logits;
      } else {
        auto st = m.start(p.embeds, p.mask, 10);
        got[std::size_t(i)] = incremental(m, *st, ids);
      }
    });
  for (auto& t : th) t.join();
  for (int i = 0; i < 3; ++i) EXPECT_LT(max_err(got[std::size_t(i)], want, "concurrent " + std::to_string(i)), kTol);
}

// ---- variants ------------------------------------------------------------------------------

TEST(T5, TiedEmbeddingsScaleTheDecoderOutput) {
  T5Config c = small_config(/*gated=*/true, /*tied=*/true);
  const std::string path = write_random_t5(c, "t5_tied.safetensors", "", 7);
  auto ckpt = io::Checkpoint::open(path);
  EXPECT_FALSE(ckpt.contains("lm_head.weight"));
  T5Model m(c, ckpt, "");
  Prompt p = random_prompt(2, 7, c.d_model, 11);
  Tensor ids = random_ids(2, 5, c.vocab_size, 12);
  auto out = m.forward(p.embeds, p.mask, ids, Tensor(), true);
  ASSERT_EQ(out.hidden_states.size(), std::size_t(c.num_decoder_layers + 1));
  ASSERT_EQ(out.encoder_hidden_states.size(), std::size_t(c.num_layers + 1));
  // explicit: logits = (dec_out * d_model**-0.5) @ shared^T
  const Tensor& dec = out.hidden_states.back();
  MatrixF h = dec.matrix<float>(2 * 5, c.d_model);
  h *= float(std::pow(double(c.d_model), -0.5));
  const Tensor shared = ckpt.get_f32("shared.weight", {c.vocab_size, c.d_model});
  MatrixF want = ops::linear<float>(h, shared.matrix<float>());
  Tensor wt = Tensor::empty({2, 5, c.vocab_size});
  std::copy(want.data(), want.data() + want.size(), wt.data<float>());
  EXPECT_LT(max_err(out.logits, wt, "tied.logits vs explicit"), 1e-5f);
  // the first encoder hidden state is the input; incremental decoding matches
  EXPECT_EQ(max_err(out.encoder_hidden_states.front(), p.embeds, "tied.encoder_hidden_states.0"), 0.f);
  auto st = m.start(p.embeds, p.mask, 5);
  EXPECT_LT(max_err(incremental(m, *st, ids), out.logits, "tied.incremental_vs_forward"), kTol);
}

TEST(T5, NonGatedReluVariantRuns) {
  T5Config c = small_config(/*gated=*/false, /*tied=*/false);
  const std::string path = write_random_t5(c, "t5_relu.safetensors", "language_model.", 21);
  T5Model m(c, io::Checkpoint::open(path), "language_model.");
  Prompt p = random_prompt(3, 6, c.d_model, 22);
  Tensor ids = random_ids(3, 4, c.vocab_size, 23);
  std::vector<std::int64_t> lab(12);
  for (int i = 0; i < 12; ++i) lab[std::size_t(i)] = i % 5 == 4 ? -100 : (i * 7) % c.vocab_size;
  auto out = m.forward(p.embeds, p.mask, ids, Tensor::from_vector({3, 4}, lab));
  ASSERT_TRUE(out.loss.has_value());
  EXPECT_TRUE(std::isfinite(*out.loss));
  for (std::int64_t i = 0; i < out.logits.numel(); ++i) ASSERT_TRUE(std::isfinite(out.logits.f(i)));
  auto st = m.start(p.embeds, p.mask, 1);
  EXPECT_LT(max_err(incremental(m, *st, ids), out.logits, "relu.incremental_vs_forward"), kTol);
  // all labels ignored: NaN like torch's mean over zero elements
  auto nan = m.forward(p.embeds, p.mask, ids, Tensor::from_vector({3, 4}, std::vector<std::int64_t>(12, -100)));
  EXPECT_TRUE(std::isnan(*nan.loss));
}

TEST(T5, BindingErrors) {
  T5Config c = small_config(true, false);
  const std::string path = write_random_t5(c, "t5_untied.safetensors", "", 31);
  // a gated config against a checkpoint without wi_0 / wi_1, and a wrong prefix
  T5Config relu = c;
  relu.feed_forward_proj = "relu";
  relu.dense_act_fn = "relu";
  relu.is_gated_act = false;
  EXPECT_THROW({ T5Model m(relu, io::Checkpoint::open(path), ""); }, TensorError);
  EXPECT_THROW({ T5Model m(c, io::Checkpoint::open(path), "language_model."); }, TensorError);
  T5Config wrong = c;
  wrong.d_ff = 25;
  EXPECT_THROW({ T5Model m(wrong, io::Checkpoint::open(path), ""); }, TensorError);
  T5Config act = c;
  act.dense_act_fn = "tanh";
  EXPECT_THROW({ T5Model m(act, io::Checkpoint::open(path), ""); }, InvalidArgument);
  T5Model ok(c, io::Checkpoint::open(path), "");
  Prompt p = random_prompt(1, 3, c.d_model, 1);
  EXPECT_THROW(ok.forward(p.embeds, p.mask), InvalidArgument);  // neither decoder ids nor labels
  Tensor bad_mask = Tensor::from_vector({1, 2}, std::vector<std::int64_t>{1, 1});
  EXPECT_THROW(ok.start(p.embeds, bad_mask, 4), InvalidArgument);
  auto st = ok.start(p.embeds, p.mask, 4);
  EXPECT_THROW(ok.step(*st, {c.vocab_size}), InvalidArgument);
}

// The layers tier: the KV cache both language models decode with, the cross-entropy loss, and the
// tensor tables (one description per architecture drives binding, listing, saving and aliases).
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/core/error.hpp"
#include "instructblip/io/checkpoint.hpp"
#include "instructblip/layers/kv_cache.hpp"
#include "instructblip/layers/loss.hpp"
#include "instructblip/layers/weights.hpp"
#include "instructblip/models/instructblip.hpp"
#include "instructblip/models/llama.hpp"
#include "instructblip/models/t5.hpp"

using namespace instructblip;
using layers::KVCache;

namespace {

const std::string kData = IB_TEST_DATA_DIR;

// Writes one position per row whose every value is `base + row`.
void write_step(KVCache& c, float base) {
  for (std::int64_t l = 0; l < c.layers(); ++l)
    for (std::int64_t b = 0; b < c.rows(); ++b) {
      std::vector<float> k(std::size_t(c.dim()), base + float(b)), v(std::size_t(c.dim()), -(base + float(b)));
      c.write(l, b, k.data(), v.data(), 1);
    }
  c.advance(1);
}

}  // namespace

// ---- KVCache -----------------------------------------------------------------------------------

TEST(KVCache, AppendsAndGrowsByDoublingKeepingTheValidPositions) {
  KVCache c(/*layers=*/2, /*rows=*/2, /*dim=*/3, /*capacity=*/2);
  EXPECT_EQ(c.capacity(), 2);
  EXPECT_EQ(c.length(), 0);
  for (int t = 0; t < 2; ++t) {
    c.reserve(c.length() + 1);
    write_step(c, float(10 * t));
  }
  EXPECT_EQ(c.capacity(), 2);
  c.reserve(3);  // past the capacity: max(3, 2 * 2)
  EXPECT_EQ(c.capacity(), 4);
  write_step(c, 20.f);
  c.reserve(10);  // a larger request than doubling gives
  EXPECT_EQ(c.capacity(), 10);
  EXPECT_EQ(c.length(), 3);
  for (std::int64_t l = 0; l < 2; ++l)
    for (std::int64_t b = 0; b < 2; ++b)
      for (std::int64_t t = 0; t < 3; ++t)
        for (std::int64_t d = 0; d < 3; ++d) {
          EXPECT_EQ(c.keys(l, b)(t, d), float(10 * t + b));
          EXPECT_EQ(c.values(l, b)(t, d), -float(10 * t + b));
        }
}

TEST(KVCache, ZeroCapacityHintStillHoldsOnePosition) {
  KVCache c(1, 1, 4, 0);
  EXPECT_EQ(c.capacity(), 1);
  write_step(c, 1.f);
  EXPECT_EQ(c.length(), 1);
}

TEST(KVCache, WritesPastTheCapacityAreRejected) {
  KVCache c(1, 1, 2, 1);
  std::vector<float> kv(4, 0.f);
  EXPECT_THROW(c.write(0, 0, kv.data(), kv.data(), 2), InvalidArgument);
  EXPECT_THROW(c.write(1, 0, kv.data(), kv.data(), 1), InvalidArgument);
  EXPECT_THROW(c.write(0, 1, kv.data(), kv.data(), 1), InvalidArgument);
  EXPECT_THROW(c.advance(2), InvalidArgument);
}

TEST(KVCache, SelectRowsReordersExpandsAndShrinks) {
  KVCache c(2, 3, 2, 4);
  write_step(c, 0.f);
  write_step(c, 100.f);
  c.select_rows({2, 0, 0, 1});  // reorder + expand
  ASSERT_EQ(c.rows(), 4);
  const float want[] = {2, 0, 0, 1};
  for (std::int64_t l = 0; l < 2; ++l)
    for (std::int64_t b = 0; b < 4; ++b) {
      EXPECT_EQ(c.keys(l, b)(0, 0), want[b]);
      EXPECT_EQ(c.keys(l, b)(1, 1), 100.f + want[b]);
      EXPECT_EQ(c.values(l, b)(1, 0), -(100.f + want[b]));
    }
  // The copies are independent: writing to one row leaves its twin alone.
  write_step(c, 200.f);
  EXPECT_EQ(c.keys(0, 1)(2, 0), 201.f);
  EXPECT_EQ(c.keys(0, 2)(2, 0), 202.f);
  EXPECT_EQ(c.keys(0, 1)(0, 0), 0.f);
  EXPECT_EQ(c.keys(0, 2)(0, 0), 0.f);
  c.select_rows({3});  // shrink
  ASSERT_EQ(c.rows(), 1);
  EXPECT_EQ(c.keys(1, 0)(1, 0), 101.f);
  EXPECT_EQ(c.length(), 3);
  EXPECT_THROW(c.select_rows({}), InvalidArgument);
  EXPECT_THROW(c.select_rows({1}), InvalidArgument);
  EXPECT_THROW(c.select_rows({-1}), InvalidArgument);
}

// ---- cross-entropy -----------------------------------------------------------------------------

TEST(CrossEntropy, UniformLogitsGiveLogVocab) {
  const std::int64_t V = 7;
  Tensor logits = Tensor::from_vector({1, 2, V}, std::vector<float>(std::size_t(2 * V), 0.5f));
  Tensor labels = Tensor::from_vector({1, 2}, std::vector<std::int64_t>{3, 6});
  EXPECT_NEAR(layers::cross_entropy(logits, labels), std::log(7.0), 1e-6);
}

TEST(CrossEntropy, MeanOverNonIgnoredPositionsAndShift) {
  // Row 0 puts all its mass on id 1 (loss ~0), row 1 is uniform over 4 ids (loss log 4).
  std::vector<float> v = {-1e4f, 0.f, -1e4f, -1e4f, 0.f, 0.f, 0.f, 0.f};
  Tensor logits = Tensor::from_vector({1, 2, 4}, v);
  Tensor labels = Tensor::from_vector({1, 2}, std::vector<std::int64_t>{1, 2});
  EXPECT_NEAR(layers::cross_entropy(logits, labels), 0.5 * std::log(4.0), 1e-6);
  // -100 drops a position from the mean.
  Tensor ignore_first = Tensor::from_vector({1, 2}, std::vector<std::int64_t>{-100, 2});
  EXPECT_NEAR(layers::cross_entropy(logits, ignore_first), std::log(4.0), 1e-6);
  // Shifted: logits[t] predicts labels[t + 1]; only t = 0 counts, its label is labels[1] = 1.
  Tensor shifted = Tensor::from_vector({1, 2}, std::vector<std::int64_t>{-100, 1});
  EXPECT_NEAR(layers::cross_entropy(logits, shifted, /*shift_labels=*/true), 0.0, 1e-6);
  // Everything ignored: NaN, as torch gives.
  Tensor none = Tensor::from_vector({1, 2}, std::vector<std::int64_t>{-100, -100});
  EXPECT_TRUE(std::isnan(layers::cross_entropy(logits, none)));
}

TEST(CrossEntropy, BadLabelsAreInvalidArgument) {
  Tensor logits = Tensor::from_vector({1, 1, 3}, std::vector<float>{0, 0, 0});
  EXPECT_THROW(layers::cross_entropy(logits, Tensor::from_vector({1, 1}, std::vector<std::int64_t>{3})),
               InvalidArgument);
  EXPECT_THROW(layers::cross_entropy(logits, Tensor::from_vector({1, 1}, std::vector<std::int64_t>{-2})),
               InvalidArgument);
  EXPECT_THROW(layers::cross_entropy(logits, Tensor::from_vector({1, 2}, std::vector<std::int64_t>{0, 0})),
               InvalidArgument);
}

// ---- tensor tables -----------------------------------------------------------------------------

namespace {

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Tensor>>& v) {
  std::vector<std::string> out;
  for (const auto& p : v) out.push_back(p.first);
  return out;
}

}  // namespace

TEST(TensorTable, LlamaSavesExactlyWhatItBinds) {
  const std::string dir = kData + "/llama-tiny/model";
  const LlamaConfig cfg = InstructBlipConfig::from_json_file(dir + "/config.json").llama();
  const models::LlamaModel m(cfg, io::Checkpoint::open(dir), "language_model.");
  const models::LanguageModel& lm = m;  // through the interface, as InstructBLIP uses it
  EXPECT_EQ(names_of(lm.named_weights("language_model.")), lm.bound_tensor_names());
  std::vector<std::string> specs;
  for (const auto& s : models::LlamaModel::tensor_specs(cfg, "language_model.")) specs.push_back(s.first);
  EXPECT_EQ(specs, lm.bound_tensor_names());
  EXPECT_EQ(lm.bound_tensor_names().size(), std::size_t(2 + (cfg.tie_word_embeddings ? 0 : 1) +
                                                          cfg.num_hidden_layers * (2 + 7) +
                                                          (cfg.attention_bias ? cfg.num_hidden_layers * 4 : 0)));
  const auto aliases = lm.tied_aliases("language_model.");
  if (cfg.tie_word_embeddings) {
    ASSERT_EQ(aliases.size(), 1u);
    EXPECT_EQ(aliases[0].first, "language_model.lm_head.weight");
    EXPECT_EQ(aliases[0].second, "language_model.model.embed_tokens.weight");
  } else {
    EXPECT_TRUE(aliases.empty());
  }
  // Every saved tensor is the one the checkpoint holds under that name.
  const io::Checkpoint ck = io::Checkpoint::open(dir);
  for (const auto& [name, t] : lm.named_weights("language_model.")) {
    ASSERT_TRUE(ck.contains(name)) << name;
    EXPECT_EQ(ck.get(name).shape(), t.shape()) << name;
  }
}

TEST(TensorTable, T5ListsSavesAndAliasesFromOneTable) {
  const std::string dir = kData + "/t5-tiny/model";
  const T5Config cfg = InstructBlipConfig::from_json_file(dir + "/config.json").t5();
  const models::T5Model m(cfg, io::Checkpoint::open(dir), "language_model.");
  const models::LanguageModel& lm = m;
  std::vector<std::string> specs;
  for (const auto& s : models::T5Model::tensor_specs(cfg, "language_model.")) specs.push_back(s.first);
  EXPECT_EQ(specs, lm.bound_tensor_names());
  EXPECT_EQ(names_of(lm.named_weights("language_model.")), lm.bound_tensor_names());
  std::set<std::pair<std::string, std::string>> aliases;
  for (const auto& a : lm.tied_aliases("x.")) aliases.insert(a);
  std::set<std::pair<std::string, std::string>> want = {{"x.encoder.embed_tokens.weight", "x.shared.weight"},
                                                        {"x.decoder.embed_tokens.weight", "x.shared.weight"}};
  if (cfg.tie_word_embeddings) want.insert({"x.lm_head.weight", "x.shared.weight"});
  EXPECT_EQ(aliases, want);
}

TEST(TensorTable, RecordingLoaderNamesWhatTheListerLists) {
  // A visitor that records bound names and then forwards (here to a lister) sees the same table.
  std::vector<std::pair<std::string, Shape>> listed;
  std::vector<std::string> recorded;
  const layers::WeightVisitor v = layers::WeightVisitor::recording(layers::WeightVisitor::lister(listed), recorded);
  layers::Linear l;
  Tensor t;
  v.tensor("a.weight", {4}, t);
  v.linear("b", 3, 4, /*bias=*/true, l, layers::MatrixRole::Text);
  v.tied("c.weight", "a.weight");  // no alias callback: ignored
  ASSERT_EQ(recorded, (std::vector<std::string>{"a.weight", "b.weight", "b.bias"}));
  ASSERT_EQ(listed.size(), 3u);
  EXPECT_EQ(listed[1].second, (Shape{3, 4}));
  std::vector<std::pair<std::string, std::string>> aliases;
  const layers::WeightVisitor a = layers::WeightVisitor::alias_lister(aliases);
  a.tensor("a.weight", {4}, t);
  a.tied("c.weight", "a.weight");
  EXPECT_EQ(aliases, (std::vector<std::pair<std::string, std::string>>{{"c.weight", "a.weight"}}));
}

// The vision encoder, the Q-Former and the query projection against the transformers 4.36.2
// reference activations of the tiny fixtures (t5-tiny: float32 weights, llama-tiny: bfloat16
// weights upcast at load), batching equivalence, error reporting, thread safety, and a forward at
// the real ViT-g/14 + Q-Former sizes with random weights.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/io/checkpoint.hpp"
#include "instructblip/io/safetensors.hpp"
#include "instructblip/models/qformer.hpp"
#include "instructblip/models/vision.hpp"
#include "ops/cpu.hpp"
#include "reference_util.hpp"

using namespace instructblip;
using models::QFormer;
using models::QFormerOutput;
using models::QueryProjector;
using models::VisionModel;
using models::VisionOutput;

namespace {
const std::string kData = IB_TEST_DATA_DIR;
const std::string kTmp = IB_TEST_TMP_DIR;
constexpr float kTol = 1e-4f;

/// Max |a - b| over all elements; the shapes must agree.
float max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  if (a.shape() != b.shape()) return INFINITY;
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float m = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    const float d = std::fabs(pa[i] - pb[i]);
    if (!(d <= m)) m = d;  // NaN propagates as a failure
  }
  return m;
}

/// Rows [r0, r0 + n) of the middle dimension of a [B, S, H] tensor, for batch item b, as a copy [1, n, H].
Tensor rows_of(const Tensor& t, std::int64_t b, std::int64_t r0, std::int64_t n) {
  const std::int64_t S = t.dim(1), H = t.dim(2);
  Tensor out = Tensor::empty({1, n, H});
  out.matrix<float>(n, H) = t.matrix<float>(t.dim(0) * S, H).middleRows(b * S + r0, n);
  return out;
}

struct TinyCase {
  std::string name;
  InstructBlipConfig config;
  io::Checkpoint checkpoint;
  io::SafeTensors ref;
};

TinyCase load_case(const std::string& name) {
  const std::string dir = kData + "/" + name;
  return TinyCase{name, InstructBlipConfig::from_json_file(dir + "/model/config.json"),
                  io::Checkpoint::open(dir + "/model"), io::SafeTensors::open(dir + "/reference.safetensors")};
}

/// Reports and checks one comparison.
void check(const std::string& what, const Tensor& got, const Tensor& want, float tol = kTol) {
  const float err = max_abs_diff(got, want);
  std::printf("  %-44s max abs err %.3g\n", what.c_str(), double(err));
  EXPECT_LE(err, tol) << what;
}

class Reference : public ::testing::TestWithParam<std::string> {};

TEST_P(Reference, MatchesTransformers) {
  TinyCase c = load_case(GetParam());
  VisionModel vision(c.config.vision_config, c.checkpoint);
  QFormer qformer(c.config.qformer_config, c.checkpoint);
  QueryProjector projector(c.config, c.checkpoint);
  ASSERT_EQ(projector.num_query_tokens(), c.config.num_query_tokens);

  for (const std::string key : {"a", "b"}) {
    std::printf("[%s / %s]\n", c.name.c_str(), key.c_str());
    const Tensor pixels = c.ref.get(key + ".pixel_values");
    const Tensor ids = c.ref.get(key + ".qformer_input_ids");
    const Tensor mask = c.ref.get(key + ".qformer_attention_mask");

    VisionOutput v = vision.forward(pixels, /*output_hidden_states=*/true, /*output_attentions=*/true);
    check(key + ".vision.last_hidden_state", v.last_hidden_state, c.ref.get(key + ".vision.last_hidden_state"));
    check(key + ".vision.pooler_output", v.pooler_output, c.ref.get(key + ".vision.pooler_output"));
    ASSERT_EQ(v.hidden_states.size(), std::size_t(c.config.vision_config.num_hidden_layers + 1));
    ASSERT_EQ(v.attentions.size(), std::size_t(c.config.vision_config.num_hidden_layers));
    for (std::size_t i = 0; i < v.hidden_states.size(); ++i) {
      const std::string n = key + ".vision.hidden_states." + std::to_string(i);
      if (c.ref.contains(n)) check(n, v.hidden_states[i], c.ref.get(n));
    }
    // Attention maps are probability rows.
    const Tensor& att = v.attentions[0];
    EXPECT_EQ(att.shape(), (Shape{pixels.dim(0), c.config.vision_config.num_attention_heads, 257, 257}));
    double row_sum = 0;
    for (int j = 0; j < 257; ++j) row_sum += att.f(j);
    EXPECT_NEAR(row_sum, 1.0, 1e-5);

    QFormerOutput q = qformer.forward(projector.query_tokens(), ids, mask, v.last_hidden_state,
                                      /*output_hidden_states=*/true, /*output_attentions=*/true);
    check(key + ".qformer.last_hidden_state", q.last_hidden_state, c.ref.get(key + ".qformer.last_hidden_state"));
    ASSERT_EQ(q.hidden_states.size(), std::size_t(c.config.qformer_config.num_hidden_layers + 1));
    EXPECT_EQ(q.attentions.size(), std::size_t(c.config.qformer_config.num_hidden_layers));
    EXPECT_EQ(q.cross_attentions.size(), c.config.qformer_config.cross_attention_layers().size());
    for (std::size_t i = 0; i < q.hidden_states.size(); ++i) {
      const std::string n = key + ".qformer.hidden_states." + std::to_string(i);
      if (c.ref.contains(n)) check(n, q.hidden_states[i], c.ref.get(n));
    }
    EXPECT_EQ(max_abs_diff(q.hidden_states.back(), q.last_hidden_state), 0.0f);

    const Tensor lm_inputs = projector.project(q.last_hidden_state);
    check(key + ".language_model_inputs", lm_inputs, c.ref.get(key + ".language_model_inputs"));
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, Reference, ::testing::Values("t5-tiny", "llama-tiny"),
                         [](const auto& info) { return info.param == "t5-tiny" ? "T5Tiny" : "LlamaTiny"; });

// A batch of two images with right-padded instructions gives, row for row, what two separate
// calls (each with its unpadded instruction) give.
class Batching : public ::testing::TestWithParam<std::string> {};

TEST_P(Batching, RowsMatchSeparateCalls) {
  TinyCase c = load_case(GetParam());
  VisionModel vision(c.config.vision_config, c.checkpoint);
  QFormer qformer(c.config.qformer_config, c.checkpoint);
  QueryProjector projector(c.config, c.checkpoint);
  const Tensor pixels = c.ref.get("b.pixel_values");
  const Tensor ids = c.ref.get("b.qformer_input_ids");
  const Tensor mask = c.ref.get("b.qformer_attention_mask");
  const std::int64_t B = ids.dim(0), T = ids.dim(1), Q = projector.num_query_tokens();

  const VisionOutput vb = vision.forward(pixels);
  const QFormerOutput qb = qformer.forward(projector.query_tokens(), ids, mask, vb.last_hidden_state);
  const Tensor lb = projector.project(qb.last_hidden_state);

  float err_v = 0, err_p = 0, err_q = 0, err_l = 0;
  bool saw_padding = false;
  for (std::int64_t b = 0; b < B; ++b) {
    std::int64_t len = 0;
    while (len < T && mask.i(b * T + len) == 1) ++len;
    for (std::int64_t t = len; t < T; ++t) ASSERT_EQ(mask.i(b * T + t), 0) << "expected right padding";
    saw_padding = saw_padding || len < T;
    std::vector<std::int64_t> row_ids(static_cast<std::size_t>(len));
    for (std::int64_t t = 0; t < len; ++t) row_ids[std::size_t(t)] = ids.i(b * T + t);
    const Tensor ids1 = Tensor::from_vector({1, len}, row_ids);
    const Tensor mask1 = Tensor::from_vector({1, len}, std::vector<std::int64_t>(std::size_t(len), 1));

    const VisionOutput v1 = vision.forward(pixels.slice0(b, b + 1));
    const QFormerOutput q1 = qformer.forward(projector.query_tokens(), ids1, mask1, v1.last_hidden_state);
    const Tensor l1 = projector.project(q1.last_hidden_state);

    err_v = std::max(err_v, max_abs_diff(v1.last_hidden_state, vb.last_hidden_state.slice0(b, b + 1)));
    err_p = std::max(err_p, max_abs_diff(v1.pooler_output, vb.pooler_output.slice0(b, b + 1)));
    err_q = std::max(err_q, max_abs_diff(q1.last_hidden_state, rows_of(qb.last_hidden_state, b, 0, Q + len)));
    err_l = std::max(err_l, max_abs_diff(l1, lb.slice0(b, b + 1)));
  }
  EXPECT_TRUE(saw_padding) << "the b inputs should exercise padding";
  std::printf("[%s] batch vs separate: vision %.3g, pooler %.3g, qformer (unpadded rows) %.3g, lm inputs %.3g\n",
              GetParam().c_str(), double(err_v), double(err_p), double(err_q), double(err_l));
  EXPECT_LE(err_v, 1e-5f);
  EXPECT_LE(err_p, 1e-5f);
  EXPECT_LE(err_q, 1e-5f);
  EXPECT_LE(err_l, 1e-5f);
}

INSTANTIATE_TEST_SUITE_P(Tiny, Batching, ::testing::Values("t5-tiny", "llama-tiny"),
                         [](const auto& info) { return info.param == "t5-tiny" ? "T5Tiny" : "LlamaTiny"; });

TEST(VisionQFormer, ZeroCopyForFloat32Weights) {
  // Binding keeps views of the mapped checkpoint; llama-tiny (bf16) is converted (tested above
  // against references computed with upcast weights).
  TinyCase c = load_case("t5-tiny");
  const auto specs = VisionModel::tensor_specs(c.config.vision_config);
  for (const auto& s : specs) EXPECT_TRUE(c.checkpoint.get_f32(s.first, s.second).is_borrowed()) << s.first;
}

TEST(VisionQFormer, TensorSpecsCoverTheCheckpoint) {
  // Every non-language-model tensor of the fixtures is bound, and nothing else is asked for.
  for (const std::string name : {"t5-tiny", "llama-tiny"}) {
    TinyCase c = load_case(name);
    std::vector<std::string> want;
    for (const auto& n : c.checkpoint.names())
      if (n.rfind("language_model.", 0) != 0) want.push_back(n);
    std::vector<std::string> got;
    for (const auto& s : VisionModel::tensor_specs(c.config.vision_config)) got.push_back(s.first);
    for (const auto& s : QFormer::tensor_specs(c.config.qformer_config)) got.push_back(s.first);
    for (const auto& s : QueryProjector::tensor_specs(c.config)) got.push_back(s.first);
    std::sort(want.begin(), want.end());
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, want) << name;
    EXPECT_EQ(std::adjacent_find(got.begin(), got.end()), got.end()) << "a tensor is bound twice";
  }
}

TEST(VisionQFormer, RejectsBadInputs) {
  TinyCase c = load_case("t5-tiny");
  VisionModel vision(c.config.vision_config, c.checkpoint);
  QFormer qformer(c.config.qformer_config, c.checkpoint);
  QueryProjector projector(c.config, c.checkpoint);

  auto expect_invalid = [](const std::function<void()>& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no exception (expected one mentioning '" << needle << "')";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_invalid([&] { vision.forward(Tensor::zeros({1, 3, 112, 112})); }, "[B, 3, 224, 224]");
  expect_invalid([&] { vision.forward(Tensor::zeros({1, 3, 224, 112})); }, "got [1, 3, 224, 112]");
  expect_invalid([&] { vision.forward(Tensor::zeros({1, 4, 224, 224})); }, "[B, 3, 224, 224]");
  expect_invalid([&] { vision.forward(Tensor::zeros({3, 224, 224})); }, "[B, 3, 224, 224]");
  expect_invalid([&] { vision.forward(Tensor::zeros({0, 3, 224, 224})); }, "B >= 1");
  expect_invalid([&] { vision.forward(Tensor::zeros({1, 3, 224, 224}, DType::I64)); }, "float32");
  expect_invalid([&] { vision.forward(Tensor()); }, "undefined");

  const Tensor image = Tensor::zeros({1, 257, 48});
  const Tensor& qt = projector.query_tokens();
  // More instruction tokens than position embeddings: rejected, never read out of bounds.
  const std::int64_t too_long = c.config.qformer_config.max_position_embeddings + 1;
  const Tensor long_ids = Tensor::from_vector({1, too_long}, std::vector<std::int64_t>(std::size_t(too_long), 5));
  expect_invalid([&] { qformer.forward(qt, long_ids, Tensor(), image); }, "max_position_embeddings");
  // Ids outside the vocabulary.
  expect_invalid([&] { qformer.forward(qt, Tensor::from_vector({1, 2}, std::vector<std::int64_t>{5, 1001}), Tensor(), image); },
                 "1001");
  expect_invalid([&] { qformer.forward(qt, Tensor::from_vector({1, 1}, std::vector<std::int64_t>{-1}), Tensor(), image); },
                 "-1");
  const Tensor ids = Tensor::from_vector({1, 3}, std::vector<std::int64_t>{101, 7, 102});
  expect_invalid([&] { qformer.forward(qt, ids, Tensor::zeros({1, 4}, DType::I64), image); }, "attention_mask");
  expect_invalid([&] { qformer.forward(qt, ids, Tensor(), Tensor::zeros({1, 257, 32})); }, "encoder_hidden_states");
  expect_invalid([&] { qformer.forward(qt, ids, Tensor(), Tensor::zeros({2, 257, 48})); }, "batch");
  expect_invalid([&] { qformer.forward(qt, ids, Tensor(), Tensor()); }, "encoder_hidden_states");
  expect_invalid([&] { qformer.forward(Tensor::zeros({1, 8, 16}), ids, Tensor(), image); }, "query_embeds");
  expect_invalid([&] { projector.project(Tensor::zeros({1, 4, 32})); }, "QueryProjector");
  // Valid edge cases: no mask (= ones), no instruction (queries only).
  EXPECT_EQ(qformer.forward(qt, ids, Tensor(), image).last_hidden_state.shape(), (Shape{1, 11, 32}));
  EXPECT_EQ(qformer.forward(qt, Tensor(), Tensor(), image).last_hidden_state.shape(), (Shape{1, 8, 32}));
  // An explicit all-ones mask equals no mask.
  const Tensor ones = Tensor::from_vector({1, 3}, std::vector<std::int64_t>{1, 1, 1});
  EXPECT_EQ(max_abs_diff(qformer.forward(qt, ids, ones, image).last_hidden_state,
                         qformer.forward(qt, ids, Tensor(), image).last_hidden_state),
            0.0f);
}

void write_checkpoint_with(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors) {
  io::save_safetensors(path, tensors);
}

TEST(VisionQFormer, MissingOrMisshapedTensorIsTensorError) {
  TinyCase c = load_case("t5-tiny");
  const auto specs = VisionModel::tensor_specs(c.config.vision_config);
  // Copy the real vision weights, drop one, reshape another.
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& s : specs)
    if (s.first != "vision_model.encoder.layers.1.mlp.fc2.bias")
      tensors.emplace_back(s.first, c.checkpoint.get(s.first));
  const std::string p1 = kTmp + "/vision_missing.safetensors";
  write_checkpoint_with(p1, tensors);
  try {
    VisionModel v(c.config.vision_config, io::Checkpoint::open(p1));
    ADD_FAILURE() << "no exception";
  } catch (const TensorError& e) {
    EXPECT_NE(std::string(e.what()).find("vision_model.encoder.layers.1.mlp.fc2.bias"), std::string::npos)
        << e.what();
  }
  tensors.emplace_back("vision_model.encoder.layers.1.mlp.fc2.bias", Tensor::zeros({47}));
  const std::string p2 = kTmp + "/vision_misshaped.safetensors";
  write_checkpoint_with(p2, tensors);
  try {
    VisionModel v(c.config.vision_config, io::Checkpoint::open(p2));
    ADD_FAILURE() << "no exception";
  } catch (const TensorError& e) {
    EXPECT_NE(std::string(e.what()).find("vision_model.encoder.layers.1.mlp.fc2.bias"), std::string::npos)
        << e.what();
  }
  std::remove(p1.c_str());
  std::remove(p2.c_str());
  // A Q-Former whose config asks for a cross-attention layer the checkpoint does not have.
  QFormerConfig qc = c.config.qformer_config;
  qc.cross_attention_frequency = 1;
  try {
    QFormer q(qc, c.checkpoint);
    ADD_FAILURE() << "no exception";
  } catch (const TensorError& e) {
    EXPECT_NE(std::string(e.what()).find("qformer.encoder.layer.1.crossattention"), std::string::npos) << e.what();
  }
}

TEST(VisionQFormer, ConcurrentForwardsAgree) {
  TinyCase c = load_case("llama-tiny");
  const VisionModel vision(c.config.vision_config, c.checkpoint);
  const QFormer qformer(c.config.qformer_config, c.checkpoint);
  const QueryProjector projector(c.config, c.checkpoint);
  auto run = [&](const std::string& key) {
    const VisionOutput v = vision.forward(c.ref.get(key + ".pixel_values"));
    const QFormerOutput q = qformer.forward(projector.query_tokens(), c.ref.get(key + ".qformer_input_ids"),
                                            c.ref.get(key + ".qformer_attention_mask"), v.last_hidden_state);
    return projector.project(q.last_hidden_state);
  };
  const Tensor want_a = run("a"), want_b = run("b");
  std::vector<Tensor> got(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back([&, i] { got[std::size_t(i)] = run(i % 2 ? "b" : "a"); });
  for (auto& t : threads) t.join();
  // Concurrent callers run their kernels inline (the pool is busy), which may round differently
  // from the pooled split; a data race would show as O(1) differences.
  for (int i = 0; i < 4; ++i) EXPECT_LE(max_abs_diff(got[std::size_t(i)], i % 2 ? want_b : want_a), 1e-5f);
}

/// Small random float32 tensors for every spec (uniform, fixed seed), norm weights around 1.
std::vector<std::pair<std::string, Tensor>> random_tensors(const std::vector<std::pair<std::string, Shape>>& specs,
                                                           std::uint64_t seed) {
  std::vector<std::pair<std::string, Tensor>> out;
  std::uint64_t s = seed;
  for (const auto& spec : specs) {
    std::vector<float> v(static_cast<std::size_t>(shape_numel(spec.second)));
    const bool norm_w = spec.first.find("norm") != std::string::npos && spec.first.find(".weight") != std::string::npos;
    for (auto& x : v) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      x = (norm_w ? 1.0f : 0.0f) + (float(s >> 40) / float(1 << 24) - 0.5f) * 0.5f;
    }
    out.emplace_back(spec.first, Tensor::from_vector(spec.second, v));
  }
  return out;
}

TEST(VisionQFormer, OtherGeometriesAndPartialPatches) {
  // Any image / patch size, width and depth from the config. A 30x30 image with 7-pixel patches
  // has a 4x4 grid: like HF's Conv2d the last 2 rows / columns are ignored, so it must equal
  // the 28x28 crop run through a 28x28 config with the same weights.
  VisionConfig c30;
  c30.hidden_size = 16;
  c30.intermediate_size = 24;
  c30.num_hidden_layers = 3;
  c30.num_attention_heads = 2;
  c30.image_size = 30;
  c30.patch_size = 7;
  VisionConfig c28 = c30;
  c28.image_size = 28;
  ASSERT_EQ(c30.num_positions(), 17);
  const std::string path = kTmp + "/vision_small_random.safetensors";
  io::save_safetensors(path, random_tensors(VisionModel::tensor_specs(c30), 3));
  const io::Checkpoint ckpt = io::Checkpoint::open(path);
  const VisionModel v30(c30, ckpt), v28(c28, ckpt);

  const std::int64_t B = 2;
  std::vector<float> px30(static_cast<std::size_t>(B * 3 * 30 * 30)), px28(static_cast<std::size_t>(B * 3 * 28 * 28));
  for (std::size_t i = 0; i < px30.size(); ++i) px30[i] = float(int(i * 2654435761u % 2001) - 1000) / 1000.0f;
  for (std::int64_t b = 0; b < B * 3; ++b)
    for (int y = 0; y < 28; ++y)
      for (int x = 0; x < 28; ++x)
        px28[std::size_t((b * 28 + y) * 28 + x)] = px30[std::size_t((b * 30 + y) * 30 + x)];
  const VisionOutput o30 = v30.forward(Tensor::from_vector({B, 3, 30, 30}, px30), true, true);
  const VisionOutput o28 = v28.forward(Tensor::from_vector({B, 3, 28, 28}, px28), true, true);
  EXPECT_EQ(o30.last_hidden_state.shape(), (Shape{B, 17, 16}));
  EXPECT_EQ(o30.pooler_output.shape(), (Shape{B, 16}));
  EXPECT_EQ(o30.hidden_states.size(), 4u);
  EXPECT_EQ(o30.attentions.size(), 3u);
  EXPECT_EQ(o30.attentions[2].shape(), (Shape{B, 2, 17, 17}));
  EXPECT_EQ(max_abs_diff(o30.last_hidden_state, o28.last_hidden_state), 0.0f);
  EXPECT_EQ(max_abs_diff(o30.pooler_output, o28.pooler_output), 0.0f);
  EXPECT_THROW(v30.forward(Tensor::from_vector({B, 3, 28, 28}, px28)), InvalidArgument);

  // A Q-Former without cross-attention in odd layers and with a different width / depth /
  // frequency, fed with those image embeddings.
  QFormerConfig qc;
  qc.vocab_size = 50;
  qc.hidden_size = 12;
  qc.num_hidden_layers = 3;
  qc.num_attention_heads = 3;
  qc.intermediate_size = 20;
  qc.max_position_embeddings = 6;
  qc.cross_attention_frequency = 3;  // layer 0 only
  qc.encoder_hidden_size = 16;
  const std::string qpath = kTmp + "/qformer_small_random.safetensors";
  io::save_safetensors(qpath, random_tensors(QFormer::tensor_specs(qc), 5));
  const QFormer qf(qc, io::Checkpoint::open(qpath));
  const Tensor queries = Tensor::from_vector({1, 4, 12}, std::vector<float>(48, 0.25f));
  const Tensor ids = Tensor::from_vector({2, 6}, std::vector<std::int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0});
  const Tensor mask = Tensor::from_vector({2, 6}, std::vector<std::int64_t>{1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0});
  const QFormerOutput q = qf.forward(queries, ids, mask, o30.last_hidden_state, true, true);
  EXPECT_EQ(q.last_hidden_state.shape(), (Shape{2, 10, 12}));
  EXPECT_EQ(q.hidden_states.size(), 4u);
  EXPECT_EQ(q.attentions.size(), 3u);
  ASSERT_EQ(q.cross_attentions.size(), 1u);
  EXPECT_EQ(q.cross_attentions[0].shape(), (Shape{2, 3, 4, 17}));
  // Padded keys get (1 - 0) * -10000: probability exactly 0.
  const Tensor& att = q.attentions[0];  // [2, 3, 10, 10], batch row 1, head 0, query row 0
  for (int j = 7; j < 10; ++j) EXPECT_EQ(att.f(1 * 3 * 100 + j), 0.0f);
  // Six positions fit; seven do not.
  const Tensor seven = Tensor::from_vector({1, 7}, std::vector<std::int64_t>(7, 1));
  EXPECT_THROW(qf.forward(queries, seven, Tensor(), o30.last_hidden_state.slice0(0, 1)), InvalidArgument);
  std::remove(path.c_str());
  std::remove(qpath.c_str());
}

// ---- real sizes -------------------------------------------------------------------------------

/// Streams a safetensors file with the given (name, shape) float32 tensors. To keep a multi-GB
/// checkpoint cheap to create, only vectors (biases, norms, embeddings rows) and the first
/// `dense_prefix` values of every larger tensor are written with pseudo-random data; the rest of
/// each tensor is left as a hole in a sparse file (reads back as zeros).
void write_sparse_random_checkpoint(const std::string& path,
                                    const std::vector<std::pair<std::string, Shape>>& specs,
                                    std::int64_t dense_prefix) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::uint64_t off = 0;
  for (const auto& s : specs) {
    const std::uint64_t bytes = std::uint64_t(shape_numel(s.second)) * 4;
    header[s.first] = {{"dtype", "F32"}, {"shape", s.second}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  std::uint64_t n = h.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = (unsigned char)((n >> (8 * i)) & 0xff);
  std::fwrite(len, 1, 8, f);
  std::fwrite(h.data(), 1, h.size(), f);
  const long data_start = long(8 + h.size());
  std::uint64_t state = 0x9e3779b97f4a7c15ull;
  std::vector<float> buf;
  off = 0;
  for (const auto& s : specs) {
    const std::int64_t numel = shape_numel(s.second);
    const bool is_vector = s.second.size() == 1;
    const bool is_norm = s.first.find("norm") != std::string::npos && is_vector;
    const std::int64_t fan_in = s.second.size() >= 2 ? numel / s.second[0] : 1;
    const float amp = s.second.size() >= 2 && s.first.find("embedding") == std::string::npos &&
                              s.first.find("query_tokens") == std::string::npos
                          ? float(std::sqrt(3.0 / double(fan_in)))
                          : 0.1f;
    const std::int64_t count = is_vector ? numel : std::min(numel, dense_prefix);
    buf.resize(std::size_t(count));
    for (auto& x : buf) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      const float u = float(state >> 40) * (1.0f / float(1 << 24)) * 2.0f - 1.0f;
      x = (is_norm && s.first.find(".weight") != std::string::npos ? 1.0f : 0.0f) + amp * u;
    }
    std::fseek(f, data_start + long(off), SEEK_SET);
    std::fwrite(buf.data(), 4, buf.size(), f);
    off += std::uint64_t(numel) * 4;
  }
  std::fflush(f);
  ASSERT_EQ(ftruncate(fileno(f), off_t(data_start + long(off))), 0);
  std::fclose(f);
}

// The published widths (ViT-g/14: 1408 wide, 16 heads, 6144 MLP, 257 tokens; Q-Former 768 x 12
// heads with 1408-wide cross-attention, 32 queries; projection to the T5 width) at two layers
// each, random weights: the kernels the CPU gets agree with the portable kernels (plain loops and
// Eigen, an independent implementation of every product) at every stage.
TEST(VisionQFormer, RealWidthsAgreeWithThePortableKernels) {
  InstructBlipConfig cfg;  // defaults: ViT-g/14, Q-Former 768, 32 queries, T5 text
  cfg.vision_config.num_hidden_layers = 2;
  cfg.qformer_config.num_hidden_layers = 2;
  cfg.finalize();
  ASSERT_EQ(cfg.vision_config.hidden_size, 1408);
  ASSERT_EQ(cfg.vision_config.intermediate_size, 6144);
  ASSERT_EQ(cfg.qformer_config.encoder_hidden_size, 1408);
  std::vector<std::pair<std::string, Shape>> specs = VisionModel::tensor_specs(cfg.vision_config);
  for (const auto& s : QFormer::tensor_specs(cfg.qformer_config)) specs.push_back(s);
  for (const auto& s : QueryProjector::tensor_specs(cfg)) specs.push_back(s);
  const std::string path = kTmp + "/vision_qformer_real_width.safetensors";
  write_sparse_random_checkpoint(path, specs, std::int64_t(1) << 30);  // every weight random
  const io::Checkpoint ckpt = io::Checkpoint::open(path);
  std::remove(path.c_str());  // the mapping keeps the data alive
  const VisionModel vision(cfg.vision_config, ckpt);
  const QFormer qformer(cfg.qformer_config, ckpt);
  const QueryProjector projector(cfg, ckpt);

  std::vector<float> px(3 * 224 * 224);
  for (std::size_t i = 0; i < px.size(); ++i) px[i] = float((i * 7919) % 1000) / 500.0f - 1.0f;
  const Tensor pixels = Tensor::from_vector({1, 3, 224, 224}, px);
  const std::int64_t T = 10;
  std::vector<std::int64_t> ids(static_cast<std::size_t>(T));
  for (std::int64_t i = 0; i < T; ++i) ids[std::size_t(i)] = 101 + 997 * i;
  const Tensor input_ids = Tensor::from_vector({1, T}, ids);
  auto run = [&] {
    const VisionOutput v = vision.forward(pixels);
    const QFormerOutput q = qformer.forward(projector.query_tokens(), input_ids, Tensor(), v.last_hidden_state);
    return std::vector<Tensor>{v.last_hidden_state, q.last_hidden_state, projector.project(q.last_hidden_state)};
  };
  const std::vector<Tensor> fast = run();
  ops::set_force_scalar(true);
  const std::vector<Tensor> portable = run();
  ops::set_force_scalar(false);
  const Shape shapes[] = {{1, 257, 1408}, {1, 32 + T, 768}, {1, 32, cfg.text_hidden_size()}};
  const char* names[] = {"vision", "qformer", "projection"};
  for (int s = 0; s < 3; ++s) {
    ASSERT_EQ(fast[s].shape(), shapes[s]) << names[s];
    ASSERT_EQ(portable[s].shape(), shapes[s]) << names[s];
    double mag = 0;
    for (std::int64_t i = 0; i < portable[s].numel(); ++i) {
      ASSERT_TRUE(std::isfinite(fast[s].f(i))) << names[s];
      mag = std::max(mag, double(std::fabs(portable[s].f(i))));
    }
    ASSERT_GT(mag, 0.1) << names[s];  // not a vanishing signal
    EXPECT_LE(ibtest::max_abs_diff(fast[s], portable[s]) / mag, 1e-5) << names[s];
  }
}

}  // namespace

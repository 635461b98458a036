// shapes-demo: a tiny *trained* InstructBLIP (Flan-T5 style) with transformers 4.36.2's greedy and
// beam-search answers for 16 images x 4 questions (tests/data/shapes-demo/expected.json).
//  * float32 weights: every greedy and beam-3 sequence equals transformers' exactly;
//  * bf16 and q8_0 weights: every greedy answer equals the float32 one (reduced precision changes
//    no answer); q4_0 answers are counted and reported;
//  * a checkpoint saved quantised loads back without converting (the same bytes) and gives the same answers.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "instructblip/instructblip.hpp"
#include "instructblip/models/t5.hpp"

using namespace instructblip;

namespace {

const std::string kDir = std::string(IB_TEST_DATA_DIR) + "/shapes-demo";

struct Item {
  std::string image, question;
  std::vector<std::int64_t> greedy, beam3;
};

const std::vector<Item>& items() {
  static const std::vector<Item> all = [] {
    std::ifstream f(kDir + "/expected.json");
    const auto j = nlohmann::json::parse(f);
    std::vector<Item> out;
    for (const auto& it : j["items"])
      for (const auto& qa : it["qa"])
        out.push_back({it["image"].get<std::string>(), qa["question"].get<std::string>(),
                       qa["greedy"]["ids"].get<std::vector<std::int64_t>>(),
                       qa["beam3"]["ids"].get<std::vector<std::int64_t>>()});
    return out;
  }();
  return all;
}

const InstructBlipProcessor& processor() {
  static const InstructBlipProcessor p = InstructBlipProcessor::from_pretrained(kDir + "/model");
  return p;
}

const InstructBlipForConditionalGeneration& model(ops::WeightFormat f) {
  static std::map<ops::WeightFormat, InstructBlipForConditionalGeneration> cache;
  auto it = cache.find(f);
  if (it == cache.end()) {
    LoadOptions lo;
    lo.weights = f;
    it = cache.emplace(f, InstructBlipForConditionalGeneration::from_pretrained(kDir + "/model", lo)).first;
  }
  return it->second;
}

std::vector<std::int64_t> answer(const InstructBlipForConditionalGeneration& m, const Item& item, int beams,
                                 Tensor* first_logits = nullptr) {
  static std::map<std::string, ProcessorOutput> inputs;
  const std::string key = item.image + "|" + item.question;
  auto it = inputs.find(key);
  if (it == inputs.end())
    it = inputs.emplace(key, processor()({load_image(kDir + "/" + item.image)}, {item.question})).first;
  const ProcessorOutput& in = it->second;
  GenerationConfig g = m.generation_config();
  g.do_sample = false;
  g.num_beams = beams;
  g.max_new_tokens = 32;
  GenerateTrace trace;
  auto out = m.generate(in.pixel_values, in.qformer_input_ids, in.qformer_attention_mask, in.input_ids,
                        in.attention_mask, g, {}, &trace);
  if (first_logits) *first_logits = trace.first_step_logits;
  return out.sequences.at(0);
}

std::string text(const std::vector<std::int64_t>& ids) { return processor().batch_decode({ids}, true).at(0); }

TEST(ShapesDemo, Float32MatchesTransformersGreedyAndBeam) {
  ASSERT_EQ(items().size(), 64u);
  const auto& m = model(ops::WeightFormat::F32);
  for (const Item& item : items()) {
    EXPECT_EQ(answer(m, item, 1), item.greedy) << item.image << " / " << item.question;
    EXPECT_EQ(answer(m, item, 3), item.beam3) << item.image << " / " << item.question << " (beam 3)";
  }
}

// Reduced precision: the greedy answer to every question on every eval image is the float32 one.
class ShapesDemoReduced : public ::testing::TestWithParam<ops::WeightFormat> {};

TEST_P(ShapesDemoReduced, GreedyAnswersEqualFloat32) {
  const auto& m = model(GetParam());
  ASSERT_EQ(m.weight_format(), GetParam());
  for (const Item& item : items())
    EXPECT_EQ(text(answer(m, item, 1)), text(item.greedy)) << item.image << " / " << item.question;
}

INSTANTIATE_TEST_SUITE_P(Formats, ShapesDemoReduced, ::testing::Values(ops::WeightFormat::BF16, ops::WeightFormat::Q8_0),
                         [](const auto& info) { return std::string(ops::weight_format_name(info.param)); });

// 4-bit weights keep at least 62 of the 64 greedy answers of float32 (the README's claim; the
// count is printed with the largest first-step logit deviation).
TEST(ShapesDemo, Q4AgreementReported) {
  const auto& m4 = model(ops::WeightFormat::Q4_0);
  const auto& m32 = model(ops::WeightFormat::F32);
  int same = 0;
  float max_dev = 0;
  for (const Item& item : items()) {
    Tensor l4, l32;
    const auto a4 = answer(m4, item, 1, &l4);
    answer(m32, item, 1, &l32);
    same += text(a4) == text(item.greedy);
    for (std::int64_t i = 0; i < l32.numel(); ++i) max_dev = std::max(max_dev, std::abs(l4.f(i) - l32.f(i)));
  }
  std::printf("[ q4_0     ] %d of %zu greedy answers equal float32; max first-step logit deviation %.4f\n", same,
              items().size(), double(max_dev));
  EXPECT_GE(same, 62);
}

TEST(ShapesDemo, QuantisedCheckpointLoadsAsStored) {
  const std::string out = std::string(IB_TEST_TMP_DIR) + "/shapes-demo-q8_0";
  const auto& m8 = model(ops::WeightFormat::Q8_0);
  m8.save_pretrained(out);
  struct stat st {};
  ASSERT_EQ(::stat((out + "/model.safetensors").c_str(), &st), 0);
  ASSERT_EQ(::stat((out + "/config.json").c_str(), &st), 0);
  const io::Checkpoint ck = io::Checkpoint::open(out);
  EXPECT_TRUE(ck.contains("language_model.decoder.block.0.layer.0.SelfAttention.q.weight.q8_0"));
  EXPECT_TRUE(ck.contains("language_model.decoder.block.0.layer.0.SelfAttention.q.weight.q8_0_scale"));
  EXPECT_FALSE(ck.contains("language_model.decoder.block.0.layer.0.SelfAttention.q.weight"));
  EXPECT_EQ(ck.get("language_model.decoder.block.0.layer.2.DenseReluDense.wo.weight").dtype(), DType::BF16);
  EXPECT_EQ(ck.get("vision_model.encoder.layers.0.mlp.fc1.weight").dtype(), DType::BF16);
  // The float32 model.safetensors is 5,080,760 bytes; embeddings, norms and biases stay float32.
  EXPECT_LT(ck.mapped_bytes(), std::size_t(0.6 * 5080760));

  auto reloaded = InstructBlipForConditionalGeneration::from_pretrained(out);  // format from the metadata
  EXPECT_EQ(reloaded.weight_format(), ops::WeightFormat::Q8_0);
  // The language model's matrices are the saved bytes, not quantised again.
  const auto lm_weights = [](const InstructBlipForConditionalGeneration& m) {
    return m.language_model().named_weights();
  };
  const auto before = lm_weights(m8), after = lm_weights(reloaded);
  ASSERT_GT(before.size(), 0u);
  ASSERT_EQ(before.size(), after.size());
  for (std::size_t i = 0; i < before.size(); ++i) {
    ASSERT_EQ(before[i].first, after[i].first);
    ASSERT_EQ(before[i].second.nbytes(), after[i].second.nbytes()) << before[i].first;
    EXPECT_EQ(0, std::memcmp(before[i].second.raw(), after[i].second.raw(), before[i].second.nbytes()))
        << before[i].first;
  }
  // The vision encoder and Q-Former now read their bf16 matrices in place (row-major) instead of
  // the panels the in-memory model packed: the same bf16 products, blocked differently (and the
  // bf16-rounded activations downstream may round the other way).
  for (std::size_t i = 0; i < items().size(); i += 7) {
    Tensor a, b;
    EXPECT_EQ(answer(reloaded, items()[i], 1, &a), answer(m8, items()[i], 1, &b));
    ASSERT_EQ(a.numel(), b.numel());
    double dev = 0, ref = 0;
    for (std::int64_t k = 0; k < a.numel(); ++k) {
      dev = std::max(dev, double(std::abs(a.f(k) - b.f(k))));
      ref = std::max(ref, double(std::abs(b.f(k))));
    }
    EXPECT_LE(dev, 1e-2 * ref) << "first-step logits after the round trip";  // bf16 rounding of activations
  }
}

// A damaged quantised checkpoint is a clear error naming the tensor or the setting.
TEST(ShapesDemo, DamagedQuantisedCheckpointsAreClearErrors) {
  const std::string good = std::string(IB_TEST_TMP_DIR) + "/shapes-demo-q8_0-src";
  model(ops::WeightFormat::Q8_0).save_pretrained(good);
  const io::Checkpoint ck = io::Checkpoint::open(good);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& n : ck.names()) tensors.emplace_back(n, ck.get(n).clone());
  const std::string victim = "language_model.decoder.block.0.layer.0.SelfAttention.q.weight";
  auto write = [&](const std::string& dir, std::vector<std::pair<std::string, Tensor>> ts,
                   std::map<std::string, std::string> meta) {
    io::save_checkpoint(dir, ts, meta, std::size_t(1) << 40);
    std::ifstream in(good + "/config.json");
    std::ofstream(dir + "/config.json") << in.rdbuf();
  };
  const std::map<std::string, std::string> meta{{"format", "pt"}, {"instructblip.weights", "q8_0"}};
  {  // scales of the wrong shape
    auto ts = tensors;
    for (auto& t : ts)
      if (t.first == victim + ".q8_0_scale") t.second = Tensor::zeros({1, 1}, DType::F16);
    const std::string dir = std::string(IB_TEST_TMP_DIR) + "/shapes-demo-bad-scale";
    write(dir, ts, meta);
    try {
      InstructBlipForConditionalGeneration::from_pretrained(dir);
      ADD_FAILURE() << "expected TensorError";
    } catch (const TensorError& e) {
      EXPECT_NE(std::string(e.what()).find(victim), std::string::npos) << e.what();
    }
  }
  {  // quantised data without its scales
    auto ts = tensors;
    ts.erase(std::remove_if(ts.begin(), ts.end(), [&](const auto& t) { return t.first == victim + ".q8_0_scale"; }),
             ts.end());
    const std::string dir = std::string(IB_TEST_TMP_DIR) + "/shapes-demo-no-scale";
    write(dir, ts, meta);
    EXPECT_THROW(InstructBlipForConditionalGeneration::from_pretrained(dir), TensorError);
  }
  {  // an unknown recorded format
    const std::string dir = std::string(IB_TEST_TMP_DIR) + "/shapes-demo-bad-meta";
    write(dir, tensors, {{"format", "pt"}, {"instructblip.weights", "q3_k"}});
    EXPECT_THROW(InstructBlipForConditionalGeneration::from_pretrained(dir), FormatError);
  }
  // an unwritable destination
  EXPECT_THROW(model(ops::WeightFormat::Q8_0).save_pretrained("/proc/no-such-dir/out"), IoError);
}

}  // namespace

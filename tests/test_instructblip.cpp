// The whole model against transformers 4.36.2 on both fixture checkpoints: processor outputs,
// forward logits and loss, and every reference generation (sequences exactly, scores 1e-4), from
// the images and prompts exactly as the reference run was fed.
#include <gtest/gtest.h>

#include "instructblip/instructblip.hpp"
#include "reference_util.hpp"

using namespace instructblip;
using ibtest::Reference;

namespace {

struct Case {
  std::string name;
  std::string input;  // "a" or "b"
};

std::vector<Image> images_of(const Reference& ref, const std::string& input) {
  std::vector<Image> out;
  for (const auto& path : ref.image_paths(input)) out.push_back(load_image(path));
  return out;
}

std::vector<std::string> texts_of(const Reference& ref, const std::string& input) { return ref.texts(input); }

class InstructBlipReference : public ::testing::TestWithParam<Case> {
 protected:
  static const InstructBlipForConditionalGeneration& model(const std::string& name) {
    static std::map<std::string, InstructBlipForConditionalGeneration> cache;
    auto it = cache.find(name);
    if (it == cache.end())
      it = cache.emplace(name, InstructBlipForConditionalGeneration::from_pretrained(Reference(name).model_dir())).first;
    return it->second;
  }
  static const InstructBlipProcessor& processor(const std::string& name) {
    static std::map<std::string, InstructBlipProcessor> cache;
    auto it = cache.find(name);
    if (it == cache.end())
      it = cache.emplace(name, InstructBlipProcessor::from_pretrained(Reference(name).model_dir())).first;
    return it->second;
  }
};

TEST_P(InstructBlipReference, ProcessorOutputsAreIdentical) {
  const auto& c = GetParam();
  Reference ref(c.name);
  auto in = processor(c.name)(images_of(ref, c.input), texts_of(ref, c.input));
  EXPECT_LE(ibtest::max_abs_diff(in.pixel_values, ref.get(c.input + ".pixel_values")), 1e-6);
  EXPECT_TRUE(ibtest::same_ids(in.input_ids, ref.get(c.input + ".input_ids")));
  EXPECT_TRUE(ibtest::same_ids(in.attention_mask, ref.get(c.input + ".attention_mask")));
  EXPECT_TRUE(ibtest::same_ids(in.qformer_input_ids, ref.get(c.input + ".qformer_input_ids")));
  EXPECT_TRUE(ibtest::same_ids(in.qformer_attention_mask, ref.get(c.input + ".qformer_attention_mask")));
}

TEST_P(InstructBlipReference, ForwardLogitsAndLoss) {
  const auto& c = GetParam();
  Reference ref(c.name);
  const auto& m = model(c.name);
  const std::string k = c.input + ".";
  Tensor decoder_ids = ref.tensors.contains(k + "decoder_input_ids") ? ref.get(k + "decoder_input_ids") : Tensor();
  // logits as the reference forward computed them (T5: with decoder_input_ids; LLaMA: no labels)
  auto out = m.forward(ref.get(k + "pixel_values"), ref.get(k + "qformer_input_ids"), ref.get(k + "qformer_attention_mask"),
                       ref.get(k + "input_ids"), ref.get(k + "attention_mask"), decoder_ids);
  const double logits_err = ibtest::max_abs_diff(out.logits, ref.get(k + "logits"));
  EXPECT_LE(logits_err, 1e-4);
  EXPECT_LE(ibtest::max_abs_diff(out.language_model_inputs, ref.get(k + "language_model_inputs")), 1e-4);
  EXPECT_LE(ibtest::max_abs_diff(out.vision_outputs.last_hidden_state, ref.get(k + "vision.last_hidden_state")), 1e-4);
  EXPECT_LE(ibtest::max_abs_diff(out.qformer_outputs.last_hidden_state, ref.get(k + "qformer.last_hidden_state")), 1e-4);
  // loss with labels
  auto with_labels = m.forward(ref.get(k + "pixel_values"), ref.get(k + "qformer_input_ids"),
                               ref.get(k + "qformer_attention_mask"), ref.get(k + "input_ids"),
                               ref.get(k + "attention_mask"), Tensor(), ref.get(k + "labels"));
  ASSERT_TRUE(with_labels.loss.has_value());
  EXPECT_NEAR(*with_labels.loss, ref.get(k + "loss").f(0), 1e-4);
  RecordProperty("logits_max_abs_err", std::to_string(logits_err));
}

TEST_P(InstructBlipReference, GenerationsMatchExactly) {
  const auto& c = GetParam();
  Reference ref(c.name);
  const auto& m = model(c.name);
  const std::string k = c.input + ".";
  for (auto it = ref.json["generation"].begin(); it != ref.json["generation"].end(); ++it) {
    const std::string setting = it.key();
    GenerationConfig g = m.generation_config().merged_with(it.value()["kwargs"], "reference kwargs");
    g.output_scores = true;
    auto out = m.generate(ref.get(k + "pixel_values"), ref.get(k + "qformer_input_ids"),
                          ref.get(k + "qformer_attention_mask"), ref.get(k + "input_ids"), ref.get(k + "attention_mask"), g);
    const auto expected = ibtest::rows_of(ref.get(k + "gen." + setting + ".sequences"));
    EXPECT_EQ(out.sequences, expected) << c.name << " " << c.input << " " << setting;
    if (ref.tensors.contains(k + "gen." + setting + ".scores")) {
      EXPECT_LE(ibtest::max_scores_diff(ref.get(k + "gen." + setting + ".scores"), out.scores), 1e-4) << setting;
    }
    if (ref.tensors.contains(k + "gen." + setting + ".sequences_scores")) {
      Tensor s = ref.get(k + "gen." + setting + ".sequences_scores");
      ASSERT_EQ(std::int64_t(out.sequences_scores.size()), s.numel());
      for (std::int64_t i = 0; i < s.numel(); ++i) EXPECT_NEAR(out.sequences_scores[std::size_t(i)], s.f(i), 1e-4);
    }
    // texts as processor.batch_decode(skip_special_tokens=True) gives them
    const auto texts = processor(c.name).batch_decode(out.sequences, true);
    const auto expected_texts = it.value()[c.input]["text"].get<std::vector<std::string>>();
    EXPECT_EQ(texts, expected_texts) << setting;
  }
}

TEST_P(InstructBlipReference, EndToEndFromFilesMatchesGreedyReference) {
  const auto& c = GetParam();
  Reference ref(c.name);
  auto in = processor(c.name)(images_of(ref, c.input), texts_of(ref, c.input));
  GenerationConfig g = model(c.name).generation_config();
  g.max_new_tokens = 20;
  auto out = model(c.name).generate(in.pixel_values, in.qformer_input_ids, in.qformer_attention_mask, in.input_ids,
                                    in.attention_mask, g);
  EXPECT_EQ(out.sequences, ibtest::rows_of(ref.get(c.input + ".gen.greedy.sequences")));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, InstructBlipReference,
                         ::testing::Values(Case{"t5-tiny", "a"}, Case{"t5-tiny", "b"}, Case{"llama-tiny", "a"},
                                           Case{"llama-tiny", "b"}),
                         [](const auto& info) {
                           std::string n = info.param.name + "_" + info.param.input;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(InstructBlip, DefaultInputIdsAreBosAndBadInputsAreErrors) {
  Reference ref("t5-tiny");
  auto m = InstructBlipForConditionalGeneration::from_pretrained(ref.model_dir());
  GenerationConfig g = m.generation_config();
  g.max_new_tokens = 3;
  // input_ids absent -> [[bos_token_id]]
  auto a = m.generate(ref.get("a.pixel_values"), ref.get("a.qformer_input_ids"), ref.get("a.qformer_attention_mask"),
                      Tensor(), Tensor(), g);
  Tensor bos = Tensor::from_vector({1, 1}, std::vector<std::int64_t>{*m.config().text_bos_token_id()});
  auto b = m.generate(ref.get("a.pixel_values"), ref.get("a.qformer_input_ids"), ref.get("a.qformer_attention_mask"), bos,
                      Tensor(), g);
  EXPECT_EQ(a.sequences, b.sequences);
  Tensor wrong_size = Tensor::zeros({1, 3, 32, 32});
  EXPECT_THROW(m.generate(wrong_size, ref.get("a.qformer_input_ids"), Tensor(), Tensor(), Tensor(), g), InvalidArgument);
  EXPECT_THROW(m.generate(ref.get("a.pixel_values"), ref.get("b.qformer_input_ids"), Tensor(), Tensor(), Tensor(), g),
               InvalidArgument);
  EXPECT_THROW(InstructBlipForConditionalGeneration::from_pretrained(ibtest::tmp_dir() + "/nowhere"), IoError);
}

}  // namespace

// BLIP-2 (OPT and Flan-T5) against transformers 4.36.2 on the two fixture checkpoints: the
// processor's ids, every stage's activations (vision, Q-Former hidden states, projection, language
// model hidden states, logits, loss) within 1e-4, and every reference generation (ids exactly,
// scores within 1e-4) for inputs a (one image), b (two images, padded prompts) and c (no prompt).
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "instructblip/instructblip.hpp"
#include "instructblip/models/opt.hpp"
#include "reference_util.hpp"

using namespace instructblip;
using ibtest::Reference;

namespace {

struct Case {
  std::string name;
  std::string input;  // "a", "b" or "c"
};

std::vector<Image> images_of(const Reference& ref, const std::string& input) {
  std::vector<Image> out;
  for (const auto& path : ref.image_paths(input)) out.push_back(load_image(path));
  return out;
}

std::vector<std::string> texts_of(const Reference& ref, const std::string& input) { return ref.texts(input); }

const Blip2ForConditionalGeneration& model(const std::string& name) {
  static std::map<std::string, Blip2ForConditionalGeneration> cache;
  auto it = cache.find(name);
  if (it == cache.end())
    it = cache.emplace(name, Blip2ForConditionalGeneration::from_pretrained(Reference(name).model_dir())).first;
  return it->second;
}

const Blip2Processor& processor(const std::string& name) {
  static std::map<std::string, Blip2Processor> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, Blip2Processor::from_pretrained(Reference(name).model_dir())).first;
  return it->second;
}

Tensor get_or_none(const Reference& ref, const std::string& key) {
  return ref.tensors.contains(key) ? ref.get(key) : Tensor();
}

class Blip2Reference : public ::testing::TestWithParam<Case> {};
class Blip2Stages : public ::testing::TestWithParam<Case> {};  // inputs a and b (c is generation only)

TEST_P(Blip2Reference, ProcessorOutputsAreIdentical) {
  const auto& c = GetParam();
  Reference ref(c.name);
  auto in = processor(c.name)(images_of(ref, c.input), texts_of(ref, c.input));
  EXPECT_LE(ibtest::max_abs_diff(in.pixel_values, ref.get(c.input + ".pixel_values")), 1e-6);
  EXPECT_FALSE(in.qformer_input_ids.defined());
  if (c.input == "c") {
    EXPECT_FALSE(in.input_ids.defined());
    return;
  }
  EXPECT_TRUE(ibtest::same_ids(in.input_ids, ref.get(c.input + ".input_ids")));
  EXPECT_TRUE(ibtest::same_ids(in.attention_mask, ref.get(c.input + ".attention_mask")));
}

TEST_P(Blip2Stages, EveryStageAndTheLoss) {
  const auto& c = GetParam();
  Reference ref(c.name);
  const auto& m = model(c.name);
  const std::string k = c.input + ".";
  const bool hidden = ref.tensors.contains(k + "vision.hidden_states.0");
  auto out = m.forward(ref.get(k + "pixel_values"), ref.get(k + "input_ids"), ref.get(k + "attention_mask"),
                       get_or_none(ref, k + "decoder_input_ids"), Tensor(), hidden);
  EXPECT_LE(ibtest::max_abs_diff(out.vision_outputs.last_hidden_state, ref.get(k + "vision.last_hidden_state")), 1e-4);
  EXPECT_LE(ibtest::max_abs_diff(out.vision_outputs.pooler_output, ref.get(k + "vision.pooler_output")), 1e-4);
  EXPECT_LE(ibtest::max_abs_diff(out.qformer_outputs.last_hidden_state, ref.get(k + "qformer.last_hidden_state")), 1e-4);
  EXPECT_LE(ibtest::max_abs_diff(out.language_model_inputs, ref.get(k + "language_model_inputs")), 1e-4);
  const double logits_err = ibtest::max_abs_diff(out.logits, ref.get(k + "logits"));
  EXPECT_LE(logits_err, 1e-4);
  int checked = 0;
  if (hidden) {
    for (std::size_t i = 0; ref.tensors.contains(k + "vision.hidden_states." + std::to_string(i)); ++i, ++checked) {
      ASSERT_LT(i, out.vision_outputs.hidden_states.size());
      EXPECT_LE(ibtest::max_abs_diff(out.vision_outputs.hidden_states[i],
                                     ref.get(k + "vision.hidden_states." + std::to_string(i))), 1e-4) << i;
    }
    for (std::size_t i = 0; ref.tensors.contains(k + "qformer.hidden_states." + std::to_string(i)); ++i, ++checked) {
      ASSERT_LT(i, out.qformer_outputs.hidden_states.size());
      EXPECT_LE(ibtest::max_abs_diff(out.qformer_outputs.hidden_states[i],
                                     ref.get(k + "qformer.hidden_states." + std::to_string(i))), 1e-4) << i;
    }
    for (std::size_t i = 0; ref.tensors.contains(k + "lm.hidden_states." + std::to_string(i)); ++i, ++checked) {
      ASSERT_LT(i, out.language_model_outputs.hidden_states.size());
      EXPECT_LE(ibtest::max_abs_diff(out.language_model_outputs.hidden_states[i],
                                     ref.get(k + "lm.hidden_states." + std::to_string(i))), 1e-4) << i;
    }
    for (std::size_t i = 0; ref.tensors.contains(k + "t5.encoder_hidden_states." + std::to_string(i)); ++i, ++checked) {
      ASSERT_LT(i, out.language_model_outputs.encoder_hidden_states.size());
      EXPECT_LE(ibtest::max_abs_diff(out.language_model_outputs.encoder_hidden_states[i],
                                     ref.get(k + "t5.encoder_hidden_states." + std::to_string(i))), 1e-4) << i;
    }
    // vision 3 + Q-Former 5 + language model 3 (+ T5 encoder 3)
    EXPECT_EQ(checked, c.name == "blip2-t5-tiny" ? 14 : 11);
  }
  if (ref.tensors.contains(k + "t5.encoder_last_hidden_state"))
    EXPECT_LE(ibtest::max_abs_diff(out.language_model_outputs.encoder_last_hidden_state,
                                   ref.get(k + "t5.encoder_last_hidden_state")), 1e-4);
  // loss with labels (OPT: the prompt ids with pads ignored; T5: the label texts)
  auto with_labels = m.forward(ref.get(k + "pixel_values"), ref.get(k + "input_ids"), ref.get(k + "attention_mask"),
                               Tensor(), ref.get(k + "labels"));
  ASSERT_TRUE(with_labels.loss.has_value());
  EXPECT_NEAR(*with_labels.loss, ref.get(k + "loss").f(0), 1e-4);
  const auto& shape = ref.json["forward"]["results"][c.input]["logits_with_labels_shape"];
  if (shape.is_array()) EXPECT_EQ(with_labels.logits.shape(), shape.get<Shape>());
  RecordProperty("logits_max_abs_err", std::to_string(logits_err));
}

TEST_P(Blip2Reference, GenerationsMatchExactly) {
  const auto& c = GetParam();
  Reference ref(c.name);
  const auto& m = model(c.name);
  const std::string k = c.input + ".";
  int compared = 0;
  for (auto it = ref.json["generation"].begin(); it != ref.json["generation"].end(); ++it) {
    const std::string setting = it.key();
    if (!ref.tensors.contains(k + "gen." + setting + ".sequences")) continue;
    GenerationConfig g = m.generation_config().merged_with(it.value()["kwargs"], "reference kwargs");
    if (c.input == "c") {  // the reference call for c: greedy, max_new_tokens 20
      g = m.generation_config();
      g.max_new_tokens = 20;
    }
    g.output_scores = true;
    auto out = m.generate(ref.get(k + "pixel_values"), get_or_none(ref, k + "input_ids"),
                          get_or_none(ref, k + "attention_mask"), g);
    ++compared;
    EXPECT_EQ(out.sequences, ibtest::rows_of(ref.get(k + "gen." + setting + ".sequences")))
        << c.name << " " << c.input << " " << setting;
    if (ref.tensors.contains(k + "gen." + setting + ".scores")) {
      EXPECT_LE(ibtest::max_scores_diff(ref.get(k + "gen." + setting + ".scores"), out.scores), 1e-4) << setting;
    }
    if (ref.tensors.contains(k + "gen." + setting + ".sequences_scores")) {
      Tensor s = ref.get(k + "gen." + setting + ".sequences_scores");
      ASSERT_EQ(std::int64_t(out.sequences_scores.size()), s.numel());
      for (std::int64_t i = 0; i < s.numel(); ++i) EXPECT_NEAR(out.sequences_scores[std::size_t(i)], s.f(i), 1e-4);
    }
    const auto texts = processor(c.name).batch_decode(out.sequences, true);
    EXPECT_EQ(texts, it.value()[c.input]["text"].get<std::vector<std::string>>()) << setting;
  }
  EXPECT_EQ(compared, c.input == "c" ? 1 : 4);
}

TEST_P(Blip2Reference, EndToEndFromFilesMatchesGreedyReference) {
  const auto& c = GetParam();
  Reference ref(c.name);
  const auto& m = model(c.name);
  auto in = processor(c.name)(images_of(ref, c.input), texts_of(ref, c.input));
  GenerationConfig g = m.generation_config();
  g.max_new_tokens = 20;
  auto out = m.generate(in, g);
  EXPECT_EQ(out.sequences, ibtest::rows_of(ref.get(c.input + ".gen.greedy.sequences")));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Blip2Reference,
                         ::testing::Values(Case{"blip2-opt-tiny", "a"}, Case{"blip2-opt-tiny", "b"},
                                           Case{"blip2-opt-tiny", "c"}, Case{"blip2-t5-tiny", "a"},
                                           Case{"blip2-t5-tiny", "b"}, Case{"blip2-t5-tiny", "c"}),
                         [](const auto& info) {
                           std::string n = info.param.name + "_" + info.param.input;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

INSTANTIATE_TEST_SUITE_P(Fixtures, Blip2Stages,
                         ::testing::Values(Case{"blip2-opt-tiny", "a"}, Case{"blip2-opt-tiny", "b"},
                                           Case{"blip2-t5-tiny", "a"}, Case{"blip2-t5-tiny", "b"}),
                         [](const auto& info) {
                           std::string n = info.param.name + "_" + info.param.input;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(Blip2, ConfigAsTransformersResolvesIt) {
  Reference ref("blip2-opt-tiny");
  const auto cfg = InstructBlipConfig::from_json_file(ref.model_dir() + "/config.json");
  ASSERT_TRUE(cfg.is_blip2());
  ASSERT_TRUE(cfg.is_opt());
  const auto& want = ref.json["config_summary"]["text"];
  const OPTConfig& t = cfg.opt();
  EXPECT_EQ(t.word_embed_proj_dim, want["word_embed_proj_dim"].get<std::int64_t>());
  EXPECT_EQ(t.eos_token_id, std::vector<std::int64_t>{want["eos_token_id"].get<std::int64_t>()});
  EXPECT_EQ(t.bos_token_id, want["bos_token_id"].get<std::int64_t>());
  EXPECT_EQ(t.pad_token_id, want["pad_token_id"].get<std::int64_t>());
  EXPECT_EQ(t.activation_function, want["activation_function"].get<std::string>());
  EXPECT_EQ(t.do_layer_norm_before, want["do_layer_norm_before"].get<bool>());
  EXPECT_EQ(t.enable_bias, want["enable_bias"].get<bool>());
  EXPECT_TRUE(cfg.use_decoder_only_language_model);
  EXPECT_EQ(cfg.qformer_config.model_type, "blip_2_qformer");
  EXPECT_EQ(cfg.qformer_config.cross_attention_layers(),
            ref.json["config_summary"]["qformer"]["cross_attention_layers"].get<std::vector<std::int64_t>>());
  // round trip
  EXPECT_EQ(InstructBlipConfig::from_json(cfg.to_json(), "round trip"), cfg);
  // generation defaults: the language model's (eos = '\n' = 202)
  EXPECT_EQ(model("blip2-opt-tiny").generation_config().eos_token_id, std::vector<std::int64_t>{202});
}

TEST(Blip2, FamiliesAreTold) {
  const std::string opt = Reference("blip2-opt-tiny").model_dir(), t5 = Reference("t5-tiny").model_dir();
  EXPECT_THROW(InstructBlipForConditionalGeneration::from_pretrained(opt), ConfigError);
  EXPECT_THROW(Blip2ForConditionalGeneration::from_pretrained(t5), ConfigError);
  EXPECT_THROW(InstructBlipProcessor::from_pretrained(opt), ConfigError);
  EXPECT_THROW(Blip2Processor::from_pretrained(t5), ConfigError);
  const auto any = VisionLanguageModel::from_pretrained(opt);
  EXPECT_TRUE(any.is_blip2());
  EXPECT_FALSE(VisionLanguageProcessor::from_pretrained(opt).has_qformer_tokenizer());
  EXPECT_TRUE(VisionLanguageProcessor::from_pretrained(t5).has_qformer_tokenizer());
  // a BLIP-2 Q-Former takes no instruction
  Reference ref("blip2-opt-tiny");
  Tensor ids = Tensor::from_vector({1, 2}, std::vector<std::int64_t>{1, 2});
  GenerationConfig g = any.generation_config();
  g.max_new_tokens = 2;
  EXPECT_THROW(any.generate(ref.get("a.pixel_values"), ids, Tensor(), Tensor(), Tensor(), g), InvalidArgument);
}

// OPT's learned positions end at max_position_embeddings (128 in the fixture): settings that could
// run past them are refused before anything runs; those that fit run to the last position.
TEST(Blip2, OptGenerationMustFitThePositionTable) {
  Reference ref("blip2-opt-tiny");
  const auto& m = model("blip2-opt-tiny");
  const Tensor ids = ref.get("a.input_ids");  // 12 tokens after 8 queries: 20 positions
  GenerationConfig g = m.generation_config();
  g.max_new_tokens = 109;  // 20 + 110 - 1 = 129 positions
  try {
    m.generate(ref.get("a.pixel_values"), ids, Tensor(), g);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("max_position_embeddings 128"), std::string::npos) << e.what();
  }
  g.max_new_tokens = 108;  // 128 positions: the whole table
  g.min_new_tokens = 108;
  const auto out = m.generate(ref.get("a.pixel_values"), ids, Tensor(), g);
  EXPECT_EQ(out.sequences[0].size(), 109u);
  // through the batching engine: an error result (the prompt's length is known once it is encoded)
  const auto p = VisionLanguageProcessor::from_pretrained(ref.model_dir());
  BatchEngine engine(m, p);
  EngineRequest r;
  r.image_path = ref.image_paths("a")[0];
  r.prompt = ref.texts("a")[0];
  GenerationConfig too_long = g;
  too_long.max_new_tokens = 109;
  r.generation = too_long;
  const EngineResult res = engine.submit(std::move(r)).result.get();
  EXPECT_FALSE(res.ok());
  EXPECT_NE(res.error.find("max_position_embeddings 128"), std::string::npos) << res.error;
}

TEST(Blip2, OptWithProjectInOutIsRefused) {
  OPTConfig c;
  c.hidden_size = 32;
  c.word_embed_proj_dim = 24;
  c.num_attention_heads = 4;
  c.num_hidden_layers = 1;
  c.ffn_dim = 16;
  c.vocab_size = 10;
  try {
    models::OPTModel::tensor_specs(c);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("word_embed_proj_dim"), std::string::npos) << e.what();
  }
}

}  // namespace

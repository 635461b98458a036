// Tests for include/instructblip/config.hpp: HF defaults, fixture configs, derivation rules,
// round-trips and error reporting.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "instructblip/config.hpp"
#include "instructblip/generation/generate.hpp"
#include "instructblip/models/instructblip.hpp"
#include "instructblip/core/error.hpp"

namespace ib = instructblip;
using nlohmann::json;

namespace {

const std::string kData = IB_TEST_DATA_DIR;

std::string tmp_dir() {
  const std::string dir = std::string(IB_TEST_TMP_DIR) + "/config";
  std::filesystem::create_directories(dir);
  return dir;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return json::parse(in);
}

std::string write_file(const std::string& name, const std::string& content) {
  const std::string path = tmp_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  return path;
}

std::string t5_config_path() { return kData + "/t5-tiny/model/config.json"; }
std::string llama_config_path() { return kData + "/llama-tiny/model/config.json"; }

// Runs `fn`, expects exception type E, and checks what() contains every needle.
template <typename E>
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no exception thrown; expected one mentioning " << needles.front();
  } catch (const E& e) {
    const std::string what = e.what();
    for (const auto& n : needles) EXPECT_NE(what.find(n), std::string::npos) << "'" << n << "' not in: " << what;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

// Writes `j` to <tmp>/<name> and expects InstructBlipConfig::from_json_file to raise a ConfigError
// naming the file and every needle.
void expect_config_file_error(const std::string& name, const json& j,
                              const std::vector<std::string>& needles) {
  const std::string path = write_file(name, j.dump(2));
  std::vector<std::string> all = needles;
  all.push_back(name);
  expect_error<ib::ConfigError>([&] { ib::InstructBlipConfig::from_json_file(path); }, all);
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Defaults

TEST(ConfigDefaults, Vision) {
  const ib::VisionConfig c;
  EXPECT_EQ(c.hidden_size, 1408);
  EXPECT_EQ(c.intermediate_size, 6144);
  EXPECT_EQ(c.num_hidden_layers, 39);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.image_size, 224);
  EXPECT_EQ(c.patch_size, 14);
  EXPECT_EQ(c.hidden_act, "gelu");
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.attention_dropout, 0.0);
  EXPECT_DOUBLE_EQ(c.initializer_range, 1e-10);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_EQ(c.num_patches(), 256);
  EXPECT_EQ(c.num_positions(), 257);
  EXPECT_EQ(c.head_dim(), 88);
  EXPECT_EQ(ib::VisionConfig::from_json(json::object(), "t"), c);
}

TEST(ConfigDefaults, QFormer) {
  const ib::QFormerConfig c;
  EXPECT_EQ(c.vocab_size, 30522);
  EXPECT_EQ(c.hidden_size, 768);
  EXPECT_EQ(c.num_hidden_layers, 12);
  EXPECT_EQ(c.num_attention_heads, 12);
  EXPECT_EQ(c.intermediate_size, 3072);
  EXPECT_EQ(c.hidden_act, "gelu");
  EXPECT_DOUBLE_EQ(c.hidden_dropout_prob, 0.1);
  EXPECT_DOUBLE_EQ(c.attention_probs_dropout_prob, 0.1);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(c.initializer_range, 0.02);
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-12);
  EXPECT_EQ(c.pad_token_id, std::optional<std::int64_t>(0));
  EXPECT_EQ(c.position_embedding_type, "absolute");
  EXPECT_EQ(c.cross_attention_frequency, 2);
  EXPECT_EQ(c.encoder_hidden_size, 1408);
  EXPECT_EQ(c.head_dim(), 64);
  EXPECT_EQ(c.cross_attention_layers(), (std::vector<std::int64_t>{0, 2, 4, 6, 8, 10}));
  EXPECT_TRUE(c.has_cross_attention(4));
  EXPECT_FALSE(c.has_cross_attention(5));
  EXPECT_EQ(ib::QFormerConfig::from_json(json::object(), "t"), c);
}

TEST(ConfigDefaults, T5) {
  const ib::T5Config c;
  EXPECT_EQ(c.vocab_size, 32128);
  EXPECT_EQ(c.d_model, 512);
  EXPECT_EQ(c.d_kv, 64);
  EXPECT_EQ(c.d_ff, 2048);
  EXPECT_EQ(c.num_layers, 6);
  EXPECT_EQ(c.num_decoder_layers, 6);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.relative_attention_num_buckets, 32);
  EXPECT_EQ(c.relative_attention_max_distance, 128);
  EXPECT_DOUBLE_EQ(c.dropout_rate, 0.1);
  EXPECT_DOUBLE_EQ(c.classifier_dropout, 0.0);
  EXPECT_DOUBLE_EQ(c.layer_norm_epsilon, 1e-6);
  EXPECT_DOUBLE_EQ(c.initializer_factor, 1.0);
  EXPECT_EQ(c.feed_forward_proj, "relu");
  EXPECT_EQ(c.dense_act_fn, "relu");
  EXPECT_FALSE(c.is_gated_act);
  EXPECT_TRUE(c.is_encoder_decoder);
  EXPECT_TRUE(c.use_cache);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.pad_token_id, std::optional<std::int64_t>(0));
  EXPECT_EQ(c.bos_token_id, std::nullopt);
  EXPECT_EQ(c.eos_token_id, (std::vector<std::int64_t>{1}));
  EXPECT_EQ(c.decoder_start_token_id, std::nullopt);  // HF T5Config leaves it None
  EXPECT_EQ(c.decoder_start_id(), std::optional<std::int64_t>(0));  // ... and T5 starts with pad
  EXPECT_TRUE(c.architectures.empty());
  EXPECT_EQ(c.inner_dim(), 512);
  EXPECT_EQ(ib::T5Config::from_json(json::object(), "t"), c);
  // num_decoder_layers: None -> num_layers.
  EXPECT_EQ(ib::T5Config::from_json({{"num_layers", 3}}, "t").num_decoder_layers, 3);
  EXPECT_EQ(ib::T5Config::from_json({{"num_layers", 3}, {"num_decoder_layers", nullptr}}, "t")
                .num_decoder_layers,
            3);
  EXPECT_EQ(ib::T5Config::from_json({{"num_layers", 3}, {"num_decoder_layers", 5}}, "t")
                .num_decoder_layers,
            5);
}

TEST(ConfigDefaults, Llama) {
  const ib::LlamaConfig c;
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.initializer_range, 0.02);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_TRUE(c.use_cache);
  EXPECT_EQ(c.pad_token_id, std::nullopt);
  EXPECT_EQ(c.bos_token_id, std::optional<std::int64_t>(1));
  EXPECT_EQ(c.eos_token_id, (std::vector<std::int64_t>{2}));
  EXPECT_EQ(c.decoder_start_token_id, std::nullopt);
  EXPECT_EQ(c.pretraining_tp, 1);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.rope_scaling.has_value());
  EXPECT_FALSE(c.attention_bias);
  EXPECT_DOUBLE_EQ(c.attention_dropout, 0.0);
  EXPECT_FALSE(c.is_encoder_decoder);
  EXPECT_TRUE(c.architectures.empty());
  EXPECT_EQ(c.head_dim(), 128);
  EXPECT_EQ(c.num_key_value_groups(), 1);
  EXPECT_EQ(ib::LlamaConfig::from_json(json::object(), "t"), c);
  // num_key_value_heads: None -> num_attention_heads.
  const auto gqa = ib::LlamaConfig::from_json({{"hidden_size", 512}, {"num_attention_heads", 8}}, "t");
  EXPECT_EQ(gqa.num_key_value_heads, 8);
  const auto gqa2 = ib::LlamaConfig::from_json(
      {{"hidden_size", 512}, {"num_attention_heads", 8}, {"num_key_value_heads", 2}}, "t");
  EXPECT_EQ(gqa2.num_key_value_heads, 2);
  EXPECT_EQ(gqa2.num_key_value_groups(), 4);
}

TEST(ConfigDefaults, Generation) {
  const ib::GenerationConfig g;
  EXPECT_EQ(g.max_length, 20);
  EXPECT_EQ(g.max_new_tokens, std::nullopt);
  EXPECT_EQ(g.min_length, 0);
  EXPECT_EQ(g.min_new_tokens, std::nullopt);
  EXPECT_EQ(g.early_stopping, ib::EarlyStopping::False);
  EXPECT_FALSE(g.do_sample);
  EXPECT_EQ(g.num_beams, 1);
  EXPECT_EQ(g.num_beam_groups, 1);
  EXPECT_DOUBLE_EQ(g.temperature, 1.0);
  EXPECT_EQ(g.top_k, 50);
  EXPECT_DOUBLE_EQ(g.top_p, 1.0);
  EXPECT_DOUBLE_EQ(g.typical_p, 1.0);
  EXPECT_DOUBLE_EQ(g.repetition_penalty, 1.0);
  EXPECT_DOUBLE_EQ(g.length_penalty, 1.0);
  EXPECT_EQ(g.no_repeat_ngram_size, 0);
  EXPECT_EQ(g.num_return_sequences, 1);
  EXPECT_EQ(g.pad_token_id, std::nullopt);
  EXPECT_EQ(g.bos_token_id, std::nullopt);
  EXPECT_TRUE(g.eos_token_id.empty());
  EXPECT_EQ(g.decoder_start_token_id, std::nullopt);
  EXPECT_TRUE(g.use_cache);
  EXPECT_EQ(g.seed, std::nullopt);
  EXPECT_EQ(ib::GenerationConfig::from_json(json::object(), "t"), g);
  EXPECT_NO_THROW(g.validate());
}

TEST(ConfigDefaults, InstructBlip) {
  const ib::InstructBlipConfig c;
  EXPECT_EQ(c.vision_config, ib::VisionConfig{});
  EXPECT_EQ(c.qformer_config, ib::QFormerConfig{});
  EXPECT_TRUE(c.is_t5());
  EXPECT_FALSE(c.is_llama());
  EXPECT_EQ(c.text_model_type(), "t5");
  EXPECT_EQ(c.t5(), ib::T5Config{});
  EXPECT_EQ(c.num_query_tokens, 32);
  EXPECT_FALSE(c.use_decoder_only_language_model);
  EXPECT_DOUBLE_EQ(c.initializer_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.initializer_range, 0.02);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.is_encoder_decoder);
  EXPECT_TRUE(c.architectures.empty());
  // HF InstructBlipConfig(text_config={"model_type": "t5"}) == all defaults.
  EXPECT_EQ(ib::InstructBlipConfig::from_json({{"text_config", {{"model_type", "t5"}}}}, "t"), c);

  const auto llama =
      ib::InstructBlipConfig::from_json({{"text_config", {{"model_type", "llama"}}}}, "t");
  EXPECT_TRUE(llama.is_llama());
  EXPECT_EQ(llama.llama(), ib::LlamaConfig{});
  EXPECT_TRUE(llama.use_decoder_only_language_model);
  EXPECT_FALSE(llama.tie_word_embeddings);
  EXPECT_FALSE(llama.is_encoder_decoder);
  EXPECT_THROW(llama.t5(), ib::ConfigError);
  EXPECT_THROW(c.llama(), ib::ConfigError);
}

// ------------------------------------------------------------------------------------------
// Fixture configs vs reference.json config_summary

namespace {

// Compares every key of summary[section] with the resolved values of the parsed config.
void expect_matches_summary(const json& resolved, const json& summary, const std::string& section) {
  ASSERT_TRUE(summary.contains(section)) << section;
  for (const auto& item : summary.at(section).items()) {
    ASSERT_TRUE(resolved.contains(item.key())) << section << "." << item.key() << " not resolved";
    EXPECT_EQ(resolved.at(item.key()), item.value()) << section << "." << item.key();
  }
}

void check_fixture(const std::string& case_name) {
  const std::string dir = kData + "/" + case_name;
  const json ref = read_json(dir + "/reference.json");
  const json summary = ref.at("config_summary");
  const auto cfg = ib::InstructBlipConfig::from_json_file(dir + "/model/config.json");

  EXPECT_EQ(cfg.num_query_tokens, summary.at("num_query_tokens").get<std::int64_t>());

  json vision = cfg.vision_config.to_json();
  vision["num_positions"] = cfg.vision_config.num_positions();
  expect_matches_summary(vision, summary, "vision");

  json qformer = cfg.qformer_config.to_json();
  qformer["cross_attention_layers"] = cfg.qformer_config.cross_attention_layers();
  expect_matches_summary(qformer, summary, "qformer");

  json text;
  if (cfg.is_t5()) {
    text = cfg.t5().to_json();
    text["inner_dim"] = cfg.t5().inner_dim();
  } else {
    text = cfg.llama().to_json();
    text["head_dim"] = cfg.llama().head_dim();
  }
  expect_matches_summary(text, summary, "text");

  // HF GenerationConfig.from_model_config(language_model.config).
  const auto lm_gen = ib::GenerationConfig::from_model_config(cfg);
  EXPECT_EQ(lm_gen, ib::GenerationConfig::from_json(ref.at("language_model_generation_config"),
                                                    "reference.json"));
}

}  // namespace

TEST(ConfigFixtures, T5TinyMatchesReference) {
  check_fixture("t5-tiny");
  const auto cfg = ib::InstructBlipConfig::from_json_file(t5_config_path());
  ASSERT_TRUE(cfg.is_t5());
  const auto& t = cfg.t5();
  EXPECT_EQ(t.feed_forward_proj, "gated-gelu");
  EXPECT_EQ(t.dense_act_fn, "gelu");  // the explicit JSON value wins over "gelu_new"
  EXPECT_TRUE(t.is_gated_act);
  EXPECT_EQ(t.decoder_start_token_id, std::optional<std::int64_t>(0));
  EXPECT_EQ(t.bos_token_id, std::optional<std::int64_t>(1));
  EXPECT_EQ(t.architectures, (std::vector<std::string>{"T5ForConditionalGeneration"}));
  EXPECT_FALSE(cfg.use_decoder_only_language_model);
  EXPECT_FALSE(cfg.tie_word_embeddings);
  EXPECT_TRUE(cfg.is_encoder_decoder);
  EXPECT_EQ(cfg.qformer_config.encoder_hidden_size, cfg.vision_config.hidden_size);
  EXPECT_EQ(cfg.text_hidden_size(), 48);
  EXPECT_EQ(cfg.text_vocab_size(), 1100);
  EXPECT_EQ(cfg.architectures, (std::vector<std::string>{"InstructBlipForConditionalGeneration"}));
  // Values omitted from config.json keep the defaults.
  EXPECT_EQ(cfg.vision_config.image_size, 224);
  EXPECT_EQ(cfg.qformer_config.max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(cfg.vision_config.initializer_range, 1e-10);
}

TEST(ConfigFixtures, LlamaTinyMatchesReference) {
  check_fixture("llama-tiny");
  const auto cfg = ib::InstructBlipConfig::from_json_file(llama_config_path());
  ASSERT_TRUE(cfg.is_llama());
  const auto& t = cfg.llama();
  EXPECT_EQ(t.pad_token_id, std::optional<std::int64_t>(1000));
  EXPECT_EQ(t.eos_token_id, (std::vector<std::int64_t>{2}));
  EXPECT_EQ(t.num_key_value_heads, 4);
  EXPECT_EQ(t.max_position_embeddings, 256);
  EXPECT_FALSE(t.rope_scaling.has_value());
  EXPECT_EQ(t.architectures, (std::vector<std::string>{"LlamaForCausalLM"}));
  EXPECT_TRUE(cfg.use_decoder_only_language_model);
  EXPECT_FALSE(cfg.tie_word_embeddings);
  EXPECT_FALSE(cfg.is_encoder_decoder);
  EXPECT_EQ(cfg.text_pad_token_id(), std::optional<std::int64_t>(1000));
  EXPECT_EQ(cfg.text_bos_token_id(), std::optional<std::int64_t>(1));
  EXPECT_EQ(cfg.text_hidden_size(), 48);
}

TEST(ConfigFixtures, GenerationConfigFilesParse) {
  const auto t5 = ib::GenerationConfig::from_json_file(kData + "/t5-tiny/model/generation_config.json");
  EXPECT_EQ(t5.pad_token_id, std::optional<std::int64_t>(0));
  EXPECT_EQ(t5.bos_token_id, std::optional<std::int64_t>(1));
  EXPECT_EQ(t5.eos_token_id, (std::vector<std::int64_t>{1}));
  EXPECT_EQ(t5.decoder_start_token_id, std::optional<std::int64_t>(0));
  EXPECT_EQ(t5.max_length, 20);
  EXPECT_EQ(t5.num_beams, 1);

  const auto ll =
      ib::GenerationConfig::from_json_file(kData + "/llama-tiny/model/generation_config.json");
  EXPECT_EQ(ll.pad_token_id, std::optional<std::int64_t>(1000));
  EXPECT_EQ(ll.bos_token_id, std::optional<std::int64_t>(1));
  EXPECT_EQ(ll.eos_token_id, (std::vector<std::int64_t>{2}));
  EXPECT_EQ(ll.decoder_start_token_id, std::nullopt);
  ib::GenerationConfig expected;
  expected.pad_token_id = 1000;
  expected.bos_token_id = 1;
  expected.eos_token_id = {2};
  EXPECT_EQ(ll, expected);
}

// ------------------------------------------------------------------------------------------
// T5 feed_forward_proj -> dense_act_fn / is_gated_act

TEST(ConfigT5, FeedForwardProjRule) {
  struct Case {
    json extra;
    std::string dense_act_fn;
    bool gated;
  };
  const std::vector<Case> cases = {
      {{{"feed_forward_proj", "relu"}}, "relu", false},
      {{{"feed_forward_proj", "gelu"}}, "gelu", false},
      {{{"feed_forward_proj", "gelu_new"}}, "gelu_new", false},
      {{{"feed_forward_proj", "gated-gelu"}}, "gelu_new", true},  // backwards-compat mapping
      {{{"feed_forward_proj", "gated-silu"}}, "silu", true},
      {{{"feed_forward_proj", "gated-relu"}}, "relu", true},
      {{{"feed_forward_proj", "gated-gelu_new"}}, "gelu_new", true},
      // Explicit keys win (HF setattr()s kwargs after deriving).
      {{{"feed_forward_proj", "gated-gelu"}, {"dense_act_fn", "gelu"}}, "gelu", true},
      {{{"feed_forward_proj", "relu"}, {"dense_act_fn", "silu"}}, "silu", false},
      {{{"feed_forward_proj", "relu"}, {"is_gated_act", true}}, "relu", true},
      {{{"feed_forward_proj", "gated-gelu"}, {"is_gated_act", false}}, "gelu_new", false},
  };
  for (const auto& c : cases) {
    const auto t5 = ib::T5Config::from_json(c.extra, "t5.json");
    EXPECT_EQ(t5.dense_act_fn, c.dense_act_fn) << c.extra.dump();
    EXPECT_EQ(t5.is_gated_act, c.gated) << c.extra.dump();
  }
  EXPECT_EQ(ib::T5Config::derive_act("gated-gelu").dense_act_fn, "gelu_new");
  EXPECT_TRUE(ib::T5Config::derive_act("gated-gelu").is_gated_act);
  EXPECT_EQ(ib::T5Config::derive_act("relu").dense_act_fn, "relu");

  for (const std::string bad : {"foo-gelu", "gated-gelu-new", "relu-gated", "", "gated-", "a-b-c"}) {
    expect_error<ib::ConfigError>(
        [&] { ib::T5Config::from_json({{"feed_forward_proj", bad}}, "t5.json", "text_config."); },
        {"t5.json", "text_config.feed_forward_proj"});
  }
}

TEST(ConfigT5, AttributeMapAliases) {
  const auto t5 = ib::T5Config::from_json(
      {{"hidden_size", 64}, {"num_attention_heads", 2}, {"num_hidden_layers", 3}}, "t");
  EXPECT_EQ(t5.d_model, 64);
  EXPECT_EQ(t5.num_heads, 2);
  EXPECT_EQ(t5.num_layers, 3);
}

// ------------------------------------------------------------------------------------------
// Round trips

namespace {

template <typename T>
void expect_round_trip(const T& x) {
  const json j = x.to_json();
  EXPECT_EQ(T::from_json(j, "rt"), x) << j.dump();
  // Also through text.
  EXPECT_EQ(T::from_json(json::parse(j.dump()), "rt"), x) << j.dump();
}

}  // namespace

TEST(ConfigRoundTrip, Defaults) {
  expect_round_trip(ib::VisionConfig{});
  expect_round_trip(ib::QFormerConfig{});
  expect_round_trip(ib::T5Config{});
  expect_round_trip(ib::LlamaConfig{});
  expect_round_trip(ib::GenerationConfig{});
  expect_round_trip(ib::InstructBlipConfig{});
}

TEST(ConfigRoundTrip, Fixtures) {
  expect_round_trip(ib::InstructBlipConfig::from_json_file(t5_config_path()));
  expect_round_trip(ib::InstructBlipConfig::from_json_file(llama_config_path()));
}

TEST(ConfigRoundTrip, NonDefaultValues) {
  ib::VisionConfig v;
  v.hidden_size = 64;
  v.num_attention_heads = 8;
  v.layer_norm_eps = 1.5e-5;
  v.qkv_bias = false;
  v.hidden_act = "gelu_new";
  expect_round_trip(v);

  ib::QFormerConfig q;
  q.pad_token_id.reset();
  q.cross_attention_frequency = 3;
  q.position_embedding_type = "relative_key";
  expect_round_trip(q);

  ib::T5Config t = ib::T5Config::from_json({{"feed_forward_proj", "gated-silu"}}, "t");
  t.eos_token_id = {1, 5};
  t.bos_token_id = 7;
  t.pad_token_id.reset();
  t.decoder_start_token_id = 0;
  t.architectures = {"T5ForConditionalGeneration"};
  t.num_decoder_layers = 2;
  expect_round_trip(t);

  ib::LlamaConfig l;
  l.num_key_value_heads = 8;
  l.rope_scaling = ib::LlamaRopeScaling{"linear", 2.0};
  l.eos_token_id = {2, 32000};
  l.pad_token_id = 0;
  l.architectures = {"LLaMAForCausalLM"};
  expect_round_trip(l);
  l.eos_token_id.clear();
  expect_round_trip(l);

  ib::GenerationConfig g;
  g.early_stopping = ib::EarlyStopping::Never;
  g.max_new_tokens = 30;
  g.min_new_tokens = 2;
  g.num_beams = 5;
  g.eos_token_id = {2, 3};
  g.seed = 18446744073709551615ull;
  g.temperature = 0.7;
  g.top_p = 0.9;
  g.forced_eos_token_id = {4};
  g.max_time = 1.25;
  expect_round_trip(g);
  g.early_stopping = ib::EarlyStopping::True;
  expect_round_trip(g);

  auto cfg = ib::InstructBlipConfig::from_json_file(llama_config_path());
  cfg.llama().rope_scaling = ib::LlamaRopeScaling{"dynamic", 4.0};
  cfg.num_query_tokens = 4;
  expect_round_trip(cfg);
}

// ------------------------------------------------------------------------------------------
// InstructBlipConfig behaviour

TEST(ConfigInstructBlip, DerivedKeysFollowHf) {
  json j = read_json(t5_config_path());
  j["use_decoder_only_language_model"] = true;  // HF recomputes from the text config
  j["initializer_range"] = 0.5;                 // HF hard-codes 0.02
  j["initializer_factor"] = 3.0;                // HF hard-codes 1.0
  j["tie_word_embeddings"] = true;              // HF copies text_config.tie_word_embeddings
  j["qformer_config"]["encoder_hidden_size"] = 999;  // HF sets vision hidden_size
  const auto cfg = ib::InstructBlipConfig::from_json(j, "config.json");
  EXPECT_FALSE(cfg.use_decoder_only_language_model);
  EXPECT_DOUBLE_EQ(cfg.initializer_range, 0.02);
  EXPECT_DOUBLE_EQ(cfg.initializer_factor, 1.0);
  EXPECT_FALSE(cfg.tie_word_embeddings);
  EXPECT_EQ(cfg.qformer_config.encoder_hidden_size, 48);
}

TEST(ConfigInstructBlip, FromVisionQformerTextConfigs) {
  ib::VisionConfig v;
  v.hidden_size = 64;
  v.num_attention_heads = 4;
  ib::QFormerConfig q;  // encoder_hidden_size 1408 gets replaced
  ib::LlamaConfig l;
  l.hidden_size = 128;
  l.num_attention_heads = 4;
  l.num_key_value_heads = 2;
  l.tie_word_embeddings = true;
  const auto cfg = ib::InstructBlipConfig::from_vision_qformer_text_configs(v, q, l, 8);
  EXPECT_EQ(cfg.qformer_config.encoder_hidden_size, 64);
  EXPECT_TRUE(cfg.use_decoder_only_language_model);
  EXPECT_TRUE(cfg.tie_word_embeddings);
  EXPECT_FALSE(cfg.is_encoder_decoder);
  EXPECT_EQ(cfg.num_query_tokens, 8);
  EXPECT_EQ(cfg.llama(), l);
  expect_round_trip(cfg);

  ib::T5Config t;
  const auto cfg5 = ib::InstructBlipConfig::from_vision_qformer_text_configs(v, q, t);
  EXPECT_TRUE(cfg5.is_t5());
  EXPECT_FALSE(cfg5.use_decoder_only_language_model);
  EXPECT_TRUE(cfg5.tie_word_embeddings);
  EXPECT_EQ(cfg5.num_query_tokens, 32);

  v.num_attention_heads = 5;
  expect_error<ib::ConfigError>(
      [&] { ib::InstructBlipConfig::from_vision_qformer_text_configs(v, q, t); },
      {"vision_config.num_attention_heads"});
}

TEST(ConfigInstructBlip, TextGenerationAttributes) {
  json j = read_json(t5_config_path());
  j["text_config"]["num_beams"] = 3;
  j["text_config"]["max_length"] = 30;
  j["text_config"]["early_stopping"] = "never";
  auto cfg = ib::InstructBlipConfig::from_json(j, "config.json");
  const auto g = ib::GenerationConfig::from_model_config(cfg);
  EXPECT_EQ(g.num_beams, 3);
  EXPECT_EQ(g.max_length, 30);
  EXPECT_EQ(g.early_stopping, ib::EarlyStopping::Never);
  EXPECT_EQ(g.pad_token_id, std::optional<std::int64_t>(0));
  EXPECT_EQ(g.eos_token_id, (std::vector<std::int64_t>{1}));
  EXPECT_EQ(g.decoder_start_token_id, std::optional<std::int64_t>(0));
  expect_round_trip(cfg);
  EXPECT_EQ(ib::GenerationConfig::from_model_config(
                ib::InstructBlipConfig::from_json(cfg.to_json(), "rt")),
            g);

  j["text_config"]["num_beams"] = "3";
  expect_config_file_error("bad_text_num_beams.json", j, {"text_config.num_beams", "expected an integer"});
}

// ------------------------------------------------------------------------------------------
// GenerationConfig parsing details

TEST(ConfigGeneration, ParsingRules) {
  const auto g = ib::GenerationConfig::from_json(
      {{"early_stopping", "never"},
       {"eos_token_id", {2, 7}},
       {"temperature", nullptr},
       {"top_k", nullptr},
       {"top_p", nullptr},
       {"seed", 42},
       {"num_beams", 4},
       {"_from_model_config", true},
       {"transformers_version", "4.36.2"}},
      "generation_config.json");
  EXPECT_EQ(g.early_stopping, ib::EarlyStopping::Never);
  EXPECT_EQ(g.eos_token_id, (std::vector<std::int64_t>{2, 7}));
  EXPECT_DOUBLE_EQ(g.temperature, 1.0);
  EXPECT_EQ(g.top_k, 0);  // None disables top-k in HF
  EXPECT_DOUBLE_EQ(g.top_p, 1.0);
  EXPECT_EQ(g.seed, std::optional<std::uint64_t>(42));
  EXPECT_EQ(g.num_beams, 4);
  EXPECT_EQ(ib::GenerationConfig::from_json({{"early_stopping", true}}, "g").early_stopping,
            ib::EarlyStopping::True);
  EXPECT_EQ(ib::GenerationConfig::from_json({{"temperature", 1}}, "g").temperature, 1.0);

  expect_error<ib::ConfigError>(
      [] { ib::GenerationConfig::from_json({{"early_stopping", "sometimes"}}, "gen.json"); },
      {"gen.json", "early_stopping", "sometimes"});
  expect_error<ib::ConfigError>(
      [] { ib::GenerationConfig::from_json({{"max_new_tokens", 0}}, "gen.json"); },
      {"gen.json", "max_new_tokens"});
  expect_error<ib::ConfigError>(
      [] { ib::GenerationConfig::from_json({{"num_beams", 1.5}}, "gen.json"); },
      {"gen.json", "num_beams", "expected an integer, got float"});
  expect_error<ib::ConfigError>(
      [] { ib::GenerationConfig::from_json({{"do_sample", "yes"}}, "gen.json"); },
      {"gen.json", "do_sample", "expected a boolean, got string"});
  expect_error<ib::ConfigError>(
      [] { ib::GenerationConfig::from_json({{"eos_token_id", {2, "x"}}}, "gen.json"); },
      {"gen.json", "eos_token_id[1]"});
  expect_error<ib::ConfigError>(
      [] { ib::GenerationConfig::from_json({{"seed", -1}}, "gen.json"); }, {"gen.json", "seed"});
  expect_error<ib::ConfigError>(
      [] { ib::GenerationConfig::from_json(json::array(), "gen.json"); }, {"gen.json", "object"});
}

TEST(ConfigGeneration, MergedWithAndValidate) {
  const auto base =
      ib::GenerationConfig::from_json_file(kData + "/llama-tiny/model/generation_config.json");
  const auto merged = base.merged_with(
      {{"num_beams", 5}, {"max_new_tokens", 20}, {"min_length", 1}, {"repetition_penalty", 1.5}});
  EXPECT_EQ(merged.num_beams, 5);
  EXPECT_EQ(merged.max_new_tokens, std::optional<std::int64_t>(20));
  EXPECT_EQ(merged.min_length, 1);
  EXPECT_DOUBLE_EQ(merged.repetition_penalty, 1.5);
  EXPECT_EQ(merged.pad_token_id, std::optional<std::int64_t>(1000));  // untouched keys kept
  EXPECT_EQ(merged.eos_token_id, (std::vector<std::int64_t>{2}));
  expect_error<ib::ConfigError>([&] { base.merged_with({{"max_new_tokens", -3}}, "cli"); },
                                {"cli", "max_new_tokens"});

  ib::GenerationConfig g;
  g.num_beams = 0;
  expect_error<ib::InvalidArgument>([&] { g.validate(); }, {"num_beams"});
  g.num_beams = 2;
  g.max_new_tokens = 0;
  expect_error<ib::InvalidArgument>([&] { g.validate(); }, {"max_new_tokens"});
}

TEST(ConfigGeneration, FileErrors) {
  expect_error<ib::IoError>(
      [] { ib::GenerationConfig::from_json_file(tmp_dir() + "/no_such_generation_config.json"); },
      {"no_such_generation_config.json"});
  const std::string bad = write_file("bad_generation_config.json", "{\"max_length\": 20,");
  expect_error<ib::ConfigError>([&] { ib::GenerationConfig::from_json_file(bad); },
                                {"bad_generation_config.json"});
  const std::string typed = write_file("typed_generation_config.json", "{\"top_k\": \"50\"}");
  expect_error<ib::ConfigError>([&] { ib::GenerationConfig::from_json_file(typed); },
                                {"typed_generation_config.json", "top_k", "expected an integer, got string"});
}

// A checkpoint's generation_config.json overrides only the keys it contains; what it sets is
// honoured or refused exactly as the same setting passed to generate() (refused at generate(), so
// a caller may still reset it per call).
TEST(ConfigGeneration, CheckpointFileOverridesOnlyItsKeys) {
  namespace fs = std::filesystem;
  const std::string dir = tmp_dir() + "/gen-checkpoint";
  fs::remove_all(dir);
  fs::copy(kData + "/t5-tiny/model", dir, fs::copy_options::recursive);
  json cfg = read_json(dir + "/config.json");
  cfg["text_config"]["num_beams"] = 3;  // legacy generation attributes: from_model_config reads them
  cfg["text_config"]["max_length"] = 30;
  write_file("gen-checkpoint/config.json", cfg.dump(2));
  const auto model_defaults =
      ib::GenerationConfig::from_model_config(ib::InstructBlipConfig::from_json(cfg, "config.json"));
  ASSERT_EQ(model_defaults.num_beams, 3);

  auto load = [&](const json& gen) {
    write_file("gen-checkpoint/generation_config.json", gen.dump(2));
    return ib::InstructBlipForConditionalGeneration::from_pretrained(dir);
  };
  {
    const auto model = load({{"max_length", 12}, {"transformers_version", "4.36.2"}});
    auto expect = model_defaults;
    expect.max_length = 12;
    EXPECT_EQ(model.generation_config(), expect);  // num_beams 3 and the token ids kept
    EXPECT_EQ(model.generation_config().num_beams, 3);
  }
  {
    const auto model = load({{"typical_p", 0.5}, {"do_sample", true}});
    EXPECT_DOUBLE_EQ(model.generation_config().typical_p, 0.5);
    EXPECT_EQ(model.generation_config().max_length, 30);
    EXPECT_NO_THROW(ib::generation::resolve_generation_config(model.generation_config(), true));
  }
  const std::pair<const char*, json> refused[] = {{"diversity_penalty", 0.5},
                                                  {"encoder_repetition_penalty", 1.3},
                                                  {"encoder_no_repeat_ngram_size", 2}};
  for (const auto& r : refused) {
    const auto model = load({{r.first, r.second}});  // loads: the caller may still override it
    ib::Tensor none;
    expect_error<ib::InvalidArgument>(
        [&] { model.generate(none, none, none, none, none, model.generation_config()); }, {r.first});
    auto reset = model.generation_config().merged_with({{r.first, nullptr}});  // null: the neutral value
    EXPECT_EQ(reset, model_defaults);
    EXPECT_NO_THROW(ib::generation::resolve_generation_config(reset, true));
  }
  // the file's values are checked as the rest of it is
  expect_error<ib::ConfigError>([&] { load({{"num_beams", "2"}}); }, {"generation_config.json", "num_beams"});
  fs::remove_all(dir);
}

// ------------------------------------------------------------------------------------------
// Broken config.json files

TEST(ConfigErrors, WrongType) {
  json j = read_json(t5_config_path());
  j["vision_config"]["hidden_size"] = "48";
  expect_config_file_error("wrong_type.json", j,
                           {"vision_config.hidden_size: expected an integer, got string"});

  j = read_json(t5_config_path());
  j["qformer_config"]["layer_norm_eps"] = "1e-12";
  expect_config_file_error("wrong_type_float.json", j,
                           {"qformer_config.layer_norm_eps", "expected a number, got string"});

  j = read_json(llama_config_path());
  j["text_config"]["attention_bias"] = 0;
  expect_config_file_error("wrong_type_bool.json", j,
                           {"text_config.attention_bias", "expected a boolean, got integer"});

  j = read_json(llama_config_path());
  j["text_config"]["hidden_size"] = 48.0;
  expect_config_file_error("wrong_type_int_float.json", j,
                           {"text_config.hidden_size", "expected an integer, got float"});

  j = read_json(t5_config_path());
  j["text_config"]["eos_token_id"] = "1";
  expect_config_file_error("wrong_type_eos.json", j, {"text_config.eos_token_id"});

  j = read_json(t5_config_path());
  j["vision_config"] = json::array();
  expect_config_file_error("wrong_type_section.json", j, {"vision_config", "expected an object"});

  j = read_json(t5_config_path());
  j["text_config"] = "t5";
  expect_config_file_error("wrong_type_text_section.json", j, {"text_config", "expected an object"});

  j = read_json(t5_config_path());
  j["architectures"] = "InstructBlipForConditionalGeneration";
  expect_config_file_error("wrong_type_arch.json", j, {"architectures"});

  j = read_json(t5_config_path());
  j["num_query_tokens"] = nullptr;
  expect_config_file_error("wrong_type_null.json", j, {"num_query_tokens", "got null"});

  j = read_json(t5_config_path());
  j["use_decoder_only_language_model"] = "no";  // ignored by HF but still type-checked
  expect_config_file_error("wrong_type_derived.json", j, {"use_decoder_only_language_model"});
}

TEST(ConfigErrors, UnsupportedModelType) {
  json j = read_json(t5_config_path());
  j["text_config"]["model_type"] = "gpt2";
  expect_config_file_error("gpt2_model_type.json", j, {"text_config.model_type", "\"gpt2\"", "\"opt\""});

  j["text_config"]["model_type"] = 5;
  expect_config_file_error("int_model_type.json", j,
                           {"text_config.model_type", "expected a string, got integer"});

  j = read_json(t5_config_path());
  j["model_type"] = "llava";
  expect_config_file_error("llava_model_type.json", j, {"model_type", "llava", "blip-2"});
}

TEST(Config, MissingTextConfigModelTypeIsOpt) {
  // text_config.get("model_type", "opt"), as transformers reads it
  json j = read_json(llama_config_path());
  j["text_config"].erase("model_type");
  j["text_config"].erase("rope_scaling");
  auto c = ib::InstructBlipConfig::from_json(j, "no model_type");
  EXPECT_EQ(c.text_model_type(), "opt");
  EXPECT_EQ(c.opt().hidden_size, j["text_config"]["hidden_size"].get<std::int64_t>());
  EXPECT_TRUE(c.use_decoder_only_language_model);

  j.erase("text_config");
  c = ib::InstructBlipConfig::from_json(j, "no text_config");
  EXPECT_EQ(c.opt(), ib::OPTConfig());  // OPTConfig() defaults
  EXPECT_EQ(c.model_type, "instructblip");

  j["model_type"] = "blip-2";
  c = ib::InstructBlipConfig::from_json(j, "blip-2");
  EXPECT_TRUE(c.is_blip2());
  EXPECT_EQ(c.qformer_config.model_type, "blip_2_qformer");
  EXPECT_EQ(ib::InstructBlipConfig::from_json(c.to_json(), "round trip"), c);
}

TEST(ConfigErrors, HeadsNotDividingHiddenSize) {
  json j = read_json(t5_config_path());
  j["vision_config"]["num_attention_heads"] = 5;
  expect_config_file_error("vision_heads.json", j,
                           {"vision_config.num_attention_heads", "hidden_size"});

  j = read_json(t5_config_path());
  j["qformer_config"]["num_attention_heads"] = 3;
  expect_config_file_error("qformer_heads.json", j,
                           {"qformer_config.num_attention_heads", "hidden_size"});

  j = read_json(llama_config_path());
  j["text_config"]["num_attention_heads"] = 5;
  j["text_config"]["num_key_value_heads"] = 5;
  expect_config_file_error("llama_heads.json", j,
                           {"text_config.num_attention_heads", "text_config.hidden_size"});
}

TEST(ConfigErrors, GqaHeadsNotDividingHeads) {
  json j = read_json(llama_config_path());
  j["text_config"]["num_key_value_heads"] = 3;
  expect_config_file_error("gqa_heads.json", j,
                           {"text_config.num_key_value_heads", "num_attention_heads"});
}

TEST(ConfigErrors, NonPositiveSizes) {
  json j = read_json(t5_config_path());
  j["qformer_config"]["hidden_size"] = 0;
  expect_config_file_error("zero_hidden.json", j, {"qformer_config.hidden_size", "positive"});

  j = read_json(t5_config_path());
  j["text_config"]["d_kv"] = -12;
  expect_config_file_error("negative_dkv.json", j, {"text_config.d_kv", "positive"});

  j = read_json(t5_config_path());
  j["num_query_tokens"] = 0;
  expect_config_file_error("zero_queries.json", j, {"num_query_tokens"});

  j = read_json(t5_config_path());
  j["qformer_config"]["cross_attention_frequency"] = 0;
  expect_config_file_error("zero_freq.json", j, {"qformer_config.cross_attention_frequency"});

  j = read_json(t5_config_path());
  j["vision_config"]["patch_size"] = 500;
  expect_config_file_error("big_patch.json", j, {"vision_config.patch_size"});
}

TEST(ConfigErrors, RopeScaling) {
  json j = read_json(llama_config_path());
  j["text_config"]["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const auto ok = ib::InstructBlipConfig::from_json(j, "config.json");
  ASSERT_TRUE(ok.llama().rope_scaling.has_value());
  EXPECT_EQ(ok.llama().rope_scaling->type, "linear");
  EXPECT_DOUBLE_EQ(ok.llama().rope_scaling->factor, 2.0);

  j["text_config"]["rope_scaling"] = {{"type", "yarn"}, {"factor", 2.0}};
  expect_config_file_error("rope_type.json", j, {"text_config.rope_scaling.type", "yarn"});
  j["text_config"]["rope_scaling"] = {{"type", "linear"}, {"factor", 2}};  // HF requires a float
  expect_config_file_error("rope_int_factor.json", j, {"text_config.rope_scaling.factor"});
  j["text_config"]["rope_scaling"] = {{"type", "linear"}, {"factor", 0.5}};
  expect_config_file_error("rope_small_factor.json", j, {"text_config.rope_scaling.factor"});
  j["text_config"]["rope_scaling"] = {{"type", "linear"}};
  expect_config_file_error("rope_fields.json", j, {"text_config.rope_scaling"});
}

TEST(ConfigErrors, MalformedJson) {
  const std::string path = write_file("malformed_config.json", "{\"vision_config\": {\"hidden_size\": 48,,}");
  expect_error<ib::ConfigError>([&] { ib::InstructBlipConfig::from_json_file(path); },
                                {"malformed_config.json", "malformed JSON"});
  const std::string empty = write_file("empty_config.json", "");
  expect_error<ib::ConfigError>([&] { ib::InstructBlipConfig::from_json_file(empty); },
                                {"empty_config.json"});
  const std::string top = write_file("array_config.json", "[1, 2]");
  expect_error<ib::ConfigError>([&] { ib::InstructBlipConfig::from_json_file(top); },
                                {"array_config.json", "expected an object"});
}

TEST(ConfigErrors, MissingFile) {
  const std::string path = tmp_dir() + "/does_not_exist/config.json";
  expect_error<ib::IoError>([&] { ib::InstructBlipConfig::from_json_file(path); },
                            {"does_not_exist/config.json"});
  expect_error<ib::IoError>([&] { ib::InstructBlipConfig::from_json_file(tmp_dir()); }, {"config"});
}

TEST(ConfigErrors, UnknownKeysIgnored) {
  json j = read_json(t5_config_path());
  j["some_future_key"] = {{"nested", 1}};
  j["vision_config"]["num_channels"] = 3;
  j["text_config"]["task_specific_params"] = {{"summarization", {{"num_beams", 4}}}};
  const auto cfg = ib::InstructBlipConfig::from_json(j, "config.json");
  EXPECT_EQ(cfg, ib::InstructBlipConfig::from_json_file(t5_config_path()));
}

// ------------------------------------------------------------------------------------------
// Inputs found with the libFuzzer harness tests/fuzz/fuzz_config.cpp

TEST(ConfigFuzzRegressions, SizesWhoseProductsOverflowAreRejected) {
  // vision_config.image_size = INT64_MAX with patch_size 1 was accepted, and num_patches()
  // ((image_size / patch_size)^2) then overflowed int64 (undefined behaviour, caught by UBSan);
  // likewise text_config.inner_dim() = num_heads * d_kv. Sizes are now bounded by 2^31 - 1.
  json j = read_json(t5_config_path());
  j["vision_config"]["image_size"] = std::int64_t(9223372036854775807);
  j["vision_config"]["patch_size"] = 1;
  expect_config_file_error("huge_image_size.json", j, {"vision_config.image_size", "at most 2147483647"});

  j = read_json(t5_config_path());
  j["text_config"]["num_heads"] = std::int64_t(1) << 62;
  j["text_config"]["d_kv"] = 4;
  expect_config_file_error("huge_heads.json", j, {"text_config.num_heads", "at most"});

  j = read_json(llama_config_path());
  j["text_config"]["num_hidden_layers"] = std::int64_t(1) << 40;
  expect_config_file_error("huge_layers.json", j, {"text_config.num_hidden_layers", "at most"});

  expect_error<ib::ConfigError>(
      [] { ib::QFormerConfig::from_json(json{{"vocab_size", std::int64_t(1) << 31}}, "qformer"); },
      {"vocab_size", "at most"});

  // The largest accepted values still give overflow-free derived sizes.
  j = read_json(t5_config_path());
  j["vision_config"]["image_size"] = 2147483647;
  j["vision_config"]["patch_size"] = 1;
  j["text_config"]["num_heads"] = 2147483647;
  j["text_config"]["d_kv"] = 2147483647;
  const auto c = ib::InstructBlipConfig::from_json(j, "config.json");
  EXPECT_EQ(c.vision_config.num_patches(), std::int64_t(2147483647) * 2147483647);
  EXPECT_EQ(c.t5().inner_dim(), std::int64_t(2147483647) * 2147483647);
}

TEST(ConfigFuzzRegressions, DeeplyNestedJsonRejectedWithoutRecursion) {
  // A value nested a few hundred thousand levels deep ("[[[[...]]]]") overflowed the stack: the
  // rope_scaling error message dump()ed it, and text_config's generation attributes were copied
  // before being type-checked (both recurse once per level in nlohmann::json).
  const std::size_t depth = 300000;
  const std::string deep = std::string(depth, '[') + std::string(depth, ']');
  const std::string llama = R"({"text_config": {"model_type": "llama", "rope_scaling": )" + deep + "}}";
  const std::string t5 = R"({"text_config": {"model_type": "t5", "max_length": )" + deep + "}}";
  expect_error<ib::ConfigError>([&] { ib::InstructBlipConfig::from_json_file(write_file("deep_llama.json", llama)); },
                                {"deep_llama.json", "nested more than 64 levels"});
  expect_error<ib::ConfigError>([&] { ib::InstructBlipConfig::from_json_file(write_file("deep_t5.json", t5)); },
                                {"deep_t5.json", "nested more than 64 levels"});
  expect_error<ib::ConfigError>(
      [&] { ib::GenerationConfig::from_json(json::parse(R"({"max_length": )" + deep + "}"), "generation_config.json"); },
      {"generation_config.json", "nested"});
  expect_error<ib::ConfigError>([&] { ib::GenerationConfig{}.merged_with(json::parse(R"({"x": )" + deep + "}")); },
                                {"nested"});
  // Ordinary nesting is fine.
  const std::string shallow = std::string(8, '[') + std::string(8, ']');
  EXPECT_NO_THROW(ib::GenerationConfig::from_json(json::parse(R"({"_unused": )" + shallow + "}"), "g"));
}

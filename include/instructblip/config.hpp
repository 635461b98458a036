#pragma once
// Configuration structs mirroring HuggingFace transformers 4.36.2:
//   VisionConfig      <- InstructBlipVisionConfig / Blip2VisionConfig
//   QFormerConfig     <- InstructBlipQFormerConfig / Blip2QFormerConfig
//   T5Config          <- T5Config
//   LlamaConfig       <- LlamaConfig
//   OPTConfig         <- OPTConfig
//   InstructBlipConfig<- InstructBlipConfig / Blip2Config (config.json; model_type tells which)
//   GenerationConfig  <- GenerationConfig (generation_config.json)
//
// Field names are the HF attribute names; default member values are the HF class defaults.
//
// Conventions shared by every struct:
//  * `from_json(j, source, key_prefix)` starts from the defaults and overwrites every key present in
//    `j` (config.json stores only non-default values). Unknown keys are ignored. A key of the wrong
//    JSON type, or a value HF would reject, throws ConfigError with a message of the form
//    "<source>: <key_prefix><key>: <what is wrong>", e.g.
//    "config.json: vision_config.hidden_size: expected an integer, got string".
//  * `to_json()` writes every field (including derived ones), so that
//    `X::from_json(x.to_json(), "...") == x`.
//  * Token ids HF allows to be None are `std::optional<std::int64_t>` (nullopt <-> JSON null).
//  * `eos_token_id` (and `forced_eos_token_id`) may be an int or a list of ints in HF. They are
//    stored as `std::vector<std::int64_t>`: empty = None, one element = a single id, more = a list.
//    `to_json` writes null / a plain integer / an array accordingly (a one-element list is written
//    back as a plain integer, which HF treats identically).
//  * Integer-valued fields reject JSON floats (48.0); float-valued fields accept JSON integers.
//  * validate() bounds every size and count (hidden sizes, layers, heads, vocab_size, image_size,
//    num_query_tokens, ...) to at most 2^31 - 1 (ConfigError beyond), so that derived values such
//    as num_patches() or inner_dim() and weight element counts cannot overflow int64.
//  * A JSON value nesting arrays / objects more than 64 levels deep is rejected (ConfigError)
//    before anything is read from it (copying or printing it would recurse once per level).
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "instructblip/core/error.hpp"

namespace instructblip {

struct InstructBlipConfig;

// ---------------------------------------------------------------------------------------------
// Vision encoder (EVA ViT-g in the released checkpoints).
struct VisionConfig {
  std::int64_t hidden_size = 1408;
  std::int64_t intermediate_size = 6144;
  std::int64_t num_hidden_layers = 39;
  std::int64_t num_attention_heads = 16;
  std::int64_t image_size = 224;
  std::int64_t patch_size = 14;
  // (InstructBlipVisionConfig 4.36.2 has no num_channels: the patch Conv2d hard-codes 3 inputs.)
  std::string hidden_act = "gelu";
  double layer_norm_eps = 1e-6;
  double attention_dropout = 0.0;
  double initializer_range = 1e-10;
  bool qkv_bias = true;

  /// (image_size / patch_size)^2, integer division as in HF.
  std::int64_t num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
  /// num_patches() + 1 (the class token).
  std::int64_t num_positions() const { return num_patches() + 1; }
  std::int64_t head_dim() const { return hidden_size / num_attention_heads; }

  static VisionConfig from_json(const nlohmann::json& j, const std::string& source,
                                const std::string& key_prefix = "");
  nlohmann::json to_json() const;
  /// Throws ConfigError for non-positive sizes or heads not dividing hidden_size.
  void validate(const std::string& source, const std::string& key_prefix = "") const;

  bool operator==(const VisionConfig& o) const;
  bool operator!=(const VisionConfig& o) const { return !(*this == o); }
};

// ---------------------------------------------------------------------------------------------
// Q-Former (BERT-like, with cross-attention to the image every `cross_attention_frequency` layers).
struct QFormerConfig {
  std::int64_t vocab_size = 30522;
  std::int64_t hidden_size = 768;
  std::int64_t num_hidden_layers = 12;
  std::int64_t num_attention_heads = 12;
  std::int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  std::int64_t max_position_embeddings = 512;
  double initializer_range = 0.02;
  double layer_norm_eps = 1e-12;
  std::optional<std::int64_t> pad_token_id = 0;
  std::string position_embedding_type = "absolute";
  std::int64_t cross_attention_frequency = 2;
  /// Overwritten with vision_config.hidden_size by InstructBlipConfig (as HF does).
  std::int64_t encoder_hidden_size = 1408;
  /// "instructblip_qformer" (the instruction is an input: word / position embeddings, text FFN) or
  /// "blip_2_qformer" (queries only: LayerNorm(query_tokens) is the input, no embeddings, no text
  /// FFN; vocab_size / max_position_embeddings / pad_token_id unused). Set by the composite
  /// config from its own model_type, as Blip2Config / InstructBlipConfig build their Q-Former config.
  std::string model_type = "instructblip_qformer";
  bool takes_instruction() const { return model_type != "blip_2_qformer"; }

  std::int64_t head_dim() const { return hidden_size / num_attention_heads; }
  /// True for layers that cross-attend to the image: layer_idx % cross_attention_frequency == 0.
  bool has_cross_attention(std::int64_t layer_idx) const {
    return layer_idx % cross_attention_frequency == 0;
  }
  /// The indices of the layers with cross-attention, ascending.
  std::vector<std::int64_t> cross_attention_layers() const;

  static QFormerConfig from_json(const nlohmann::json& j, const std::string& source,
                                 const std::string& key_prefix = "");
  nlohmann::json to_json() const;
  void validate(const std::string& source, const std::string& key_prefix = "") const;

  bool operator==(const QFormerConfig& o) const;
  bool operator!=(const QFormerConfig& o) const { return !(*this == o); }
};

// ---------------------------------------------------------------------------------------------
// T5 / Flan-T5 language model.
struct T5Config {
  std::int64_t vocab_size = 32128;
  std::int64_t d_model = 512;
  std::int64_t d_kv = 64;
  std::int64_t d_ff = 2048;
  std::int64_t num_layers = 6;
  /// JSON null / absent -> num_layers (HF "default = symmetry").
  std::int64_t num_decoder_layers = 6;
  std::int64_t num_heads = 8;
  std::int64_t relative_attention_num_buckets = 32;
  std::int64_t relative_attention_max_distance = 128;
  double dropout_rate = 0.1;
  double classifier_dropout = 0.0;
  double layer_norm_epsilon = 1e-6;
  double initializer_factor = 1.0;
  std::string feed_forward_proj = "relu";
  /// Derived from feed_forward_proj (see derive_act()), unless the JSON names it explicitly.
  std::string dense_act_fn = "relu";
  /// Derived from feed_forward_proj, unless the JSON names it explicitly.
  bool is_gated_act = false;
  bool is_encoder_decoder = true;
  bool use_cache = true;
  bool tie_word_embeddings = true;
  std::optional<std::int64_t> pad_token_id = 0;
  std::optional<std::int64_t> bos_token_id;  // PretrainedConfig default: None
  std::vector<std::int64_t> eos_token_id = {1};
  /// HF T5Config leaves this None (PretrainedConfig default); T5 checkpoints store 0 (= pad).
  /// Use decoder_start_id() to get the id T5 starts decoding with.
  std::optional<std::int64_t> decoder_start_token_id;
  std::vector<std::string> architectures;

  /// num_heads * d_kv (the width of the q/k/v/o projections; need not equal d_model).
  std::int64_t inner_dim() const { return num_heads * d_kv; }
  /// decoder_start_token_id, else pad_token_id (T5 "uses pad as the decoder start"); nullopt if
  /// neither is set.
  std::optional<std::int64_t> decoder_start_id() const {
    return decoder_start_token_id ? decoder_start_token_id : pad_token_id;
  }

  /// The configuration_t5.py rule: feed_forward_proj is "ACT" or "gated-ACT";
  /// dense_act_fn = ACT, is_gated_act = (prefix == "gated"), and "gated-gelu" maps to "gelu_new"
  /// (backwards compatibility). Anything else (e.g. "foo-gelu", "gated-a-b") -> ConfigError.
  struct Act {
    std::string dense_act_fn;
    bool is_gated_act;
  };
  static Act derive_act(const std::string& feed_forward_proj, const std::string& source = "T5Config",
                        const std::string& key_prefix = "");

  /// Also accepts HF's attribute_map aliases hidden_size / num_attention_heads /
  /// num_hidden_layers (for d_model / num_heads / num_layers; they win, as in HF).
  /// An explicit "dense_act_fn" / "is_gated_act" in the JSON wins over the derived value (HF sets
  /// them from **kwargs after deriving them).
  static T5Config from_json(const nlohmann::json& j, const std::string& source,
                            const std::string& key_prefix = "");
  nlohmann::json to_json() const;  // includes "model_type": "t5"
  void validate(const std::string& source, const std::string& key_prefix = "") const;

  bool operator==(const T5Config& o) const;
  bool operator!=(const T5Config& o) const { return !(*this == o); }
};

// ---------------------------------------------------------------------------------------------
// LLaMA / Vicuna language model.
struct LlamaRopeScaling {
  std::string type;  // "linear" or "dynamic"
  double factor = 1.0;  // > 1
  bool operator==(const LlamaRopeScaling& o) const { return type == o.type && factor == o.factor; }
  bool operator!=(const LlamaRopeScaling& o) const { return !(*this == o); }
};

struct LlamaConfig {
  std::int64_t vocab_size = 32000;
  std::int64_t hidden_size = 4096;
  std::int64_t intermediate_size = 11008;
  std::int64_t num_hidden_layers = 32;
  std::int64_t num_attention_heads = 32;
  /// JSON null / absent -> num_attention_heads (HF "for backward compatibility").
  std::int64_t num_key_value_heads = 32;
  std::string hidden_act = "silu";
  std::int64_t max_position_embeddings = 2048;
  double initializer_range = 0.02;
  double rms_norm_eps = 1e-6;
  bool use_cache = true;
  std::optional<std::int64_t> pad_token_id;  // None
  std::optional<std::int64_t> bos_token_id = 1;
  std::vector<std::int64_t> eos_token_id = {2};
  std::optional<std::int64_t> decoder_start_token_id;  // PretrainedConfig default: None
  std::int64_t pretraining_tp = 1;
  bool tie_word_embeddings = false;
  double rope_theta = 10000.0;
  /// nullopt = null (plain RoPE). Validated as HF's _rope_scaling_validation does: an object with
  /// exactly "type" ("linear"/"dynamic") and "factor" (a JSON float > 1); anything else ->
  /// ConfigError. Whether the model code supports a non-null value is up to the model code.
  std::optional<LlamaRopeScaling> rope_scaling;
  bool attention_bias = false;
  double attention_dropout = 0.0;
  bool is_encoder_decoder = false;
  /// Kept verbatim: the InstructBLIP generate() remaps id 0 -> 2 when architectures[0] is the old
  /// "LLaMAForCausalLM" spelling.
  std::vector<std::string> architectures;

  std::int64_t head_dim() const { return hidden_size / num_attention_heads; }
  std::int64_t num_key_value_groups() const { return num_attention_heads / num_key_value_heads; }

  static LlamaConfig from_json(const nlohmann::json& j, const std::string& source,
                               const std::string& key_prefix = "");
  nlohmann::json to_json() const;  // includes "model_type": "llama"
  /// Non-positive sizes, hidden_size % num_attention_heads, num_attention_heads %
  /// num_key_value_heads, pretraining_tp < 1 -> ConfigError.
  void validate(const std::string& source, const std::string& key_prefix = "") const;

  bool operator==(const LlamaConfig& o) const;
  bool operator!=(const LlamaConfig& o) const { return !(*this == o); }
};

// ---------------------------------------------------------------------------------------------
// OPT language model (BLIP-2-OPT).
struct OPTConfig {
  std::int64_t vocab_size = 50272;
  std::int64_t hidden_size = 768;
  std::int64_t num_hidden_layers = 12;
  std::int64_t ffn_dim = 3072;
  std::int64_t max_position_embeddings = 2048;
  bool do_layer_norm_before = true;
  bool _remove_final_layer_norm = false;
  /// JSON null / absent -> hidden_size (HF). A different value means project_in / project_out
  /// layers (OPT-350m), which BLIP-2 cannot use (transformers 4.36.2 fails in torch.cat): the
  /// model refuses it with ConfigError.
  std::int64_t word_embed_proj_dim = 768;
  double dropout = 0.1;
  double attention_dropout = 0.0;
  std::int64_t num_attention_heads = 12;
  std::string activation_function = "relu";
  double layerdrop = 0.0;
  double init_std = 0.02;
  bool use_cache = true;
  bool enable_bias = true;
  bool layer_norm_elementwise_affine = true;
  bool tie_word_embeddings = true;
  std::optional<std::int64_t> pad_token_id = 1;
  std::optional<std::int64_t> bos_token_id = 2;
  std::vector<std::int64_t> eos_token_id = {2};
  std::optional<std::int64_t> decoder_start_token_id;  // PretrainedConfig default: None
  bool is_encoder_decoder = false;
  std::vector<std::string> architectures;

  std::int64_t head_dim() const { return hidden_size / num_attention_heads; }

  static OPTConfig from_json(const nlohmann::json& j, const std::string& source, const std::string& key_prefix = "");
  nlohmann::json to_json() const;  // includes "model_type": "opt"
  /// Non-positive sizes, hidden_size % num_attention_heads -> ConfigError.
  void validate(const std::string& source, const std::string& key_prefix = "") const;

  bool operator==(const OPTConfig& o) const;
  bool operator!=(const OPTConfig& o) const { return !(*this == o); }
};

// ---------------------------------------------------------------------------------------------
// Generation settings (HF generation/configuration_utils.py names and defaults).
enum class EarlyStopping {
  False,  // JSON false: heuristic stop (HF default)
  True,   // JSON true: stop once num_beams hypotheses are finished
  Never,  // JSON "never": canonical beam search
};

struct GenerationConfig {
  // length
  std::int64_t max_length = 20;
  std::optional<std::int64_t> max_new_tokens;
  std::int64_t min_length = 0;
  std::optional<std::int64_t> min_new_tokens;
  EarlyStopping early_stopping = EarlyStopping::False;
  std::optional<double> max_time;
  // strategy
  bool do_sample = false;
  std::int64_t num_beams = 1;
  std::int64_t num_beam_groups = 1;
  std::optional<double> penalty_alpha;
  bool use_cache = true;
  // logits manipulation. For these, JSON null means "disabled" in HF and is read as the neutral
  // value: temperature/top_p/typical_p/repetition penalties -> 1.0, top_k -> 0,
  // epsilon/eta cutoff, diversity_penalty -> 0.0, min_length / ngram sizes -> 0.
  double temperature = 1.0;
  std::int64_t top_k = 50;
  double top_p = 1.0;
  double typical_p = 1.0;
  double epsilon_cutoff = 0.0;
  double eta_cutoff = 0.0;
  double diversity_penalty = 0.0;
  double repetition_penalty = 1.0;
  double encoder_repetition_penalty = 1.0;
  double length_penalty = 1.0;
  std::int64_t no_repeat_ngram_size = 0;
  std::int64_t encoder_no_repeat_ngram_size = 0;
  bool renormalize_logits = false;
  std::optional<std::int64_t> forced_bos_token_id;
  std::vector<std::int64_t> forced_eos_token_id;  // empty = None
  bool remove_invalid_values = false;
  // outputs
  std::int64_t num_return_sequences = 1;
  bool output_scores = false;
  bool return_dict_in_generate = false;
  // special tokens
  std::optional<std::int64_t> pad_token_id;
  std::optional<std::int64_t> bos_token_id;
  std::vector<std::int64_t> eos_token_id;  // empty = None; may hold several ids
  std::optional<std::int64_t> decoder_start_token_id;
  // library extension (not an HF field): RNG seed for sampling; nullopt = library default.
  std::optional<std::uint64_t> seed;

  /// Reads a generation JSON object (unknown keys such as "_from_model_config" ignored).
  /// Type errors and values HF rejects at init (max_new_tokens <= 0, early_stopping other than
  /// true/false/"never"), and negative counts -> ConfigError.
  static GenerationConfig from_json(const nlohmann::json& j, const std::string& source,
                                    const std::string& key_prefix = "");
  /// Missing/unreadable file -> IoError; malformed JSON or bad values -> ConfigError naming it.
  static GenerationConfig from_json_file(const std::string& path);
  /// HF GenerationConfig.from_model_config(language_model.config): the generation attributes
  /// stored in text_config (legacy PretrainedConfig keys such as max_length, num_beams, ...) plus
  /// pad/bos/eos/decoder_start from the text config. This is what the *language model* (which
  /// InstructBLIP's generate() delegates to) uses by default.
  static GenerationConfig from_model_config(const InstructBlipConfig& config);

  /// A copy with every key present in `overrides` applied (same parsing rules as from_json); the
  /// keys absent from `overrides` keep this config's values.
  GenerationConfig merged_with(const nlohmann::json& overrides,
                               const std::string& source = "generation overrides") const;
  /// merged_with() the JSON object in the file at `path` (a checkpoint's generation_config.json):
  /// only the keys the file contains override. Missing/unreadable file -> IoError; malformed JSON
  /// or bad values -> ConfigError naming the file.
  GenerationConfig merged_with_file(const std::string& path) const;

  /// For settings assigned in code: throws InvalidArgument on the same problems from_json
  /// reports as ConfigError.
  void validate() const;

  /// Full JSON (early_stopping as false/true/"never", seed included when set).
  nlohmann::json to_json() const;

  bool operator==(const GenerationConfig& o) const;
  bool operator!=(const GenerationConfig& o) const { return !(*this == o); }
};

// ---------------------------------------------------------------------------------------------
// The composite model config (config.json) of both families: InstructBLIP (model_type
// "instructblip": the instruction also feeds the Q-Former) and BLIP-2 (model_type "blip-2": the
// Q-Former sees only its queries). Blip2Config is the same struct.
struct InstructBlipConfig {
  /// "instructblip" or "blip-2".
  std::string model_type = "instructblip";
  VisionConfig vision_config;
  QFormerConfig qformer_config;
  /// The language model config. from_json reads text_config.model_type "t5", "llama" or "opt"; a
  /// text_config without model_type (or none at all) is OPT, as HF reads it. A default-constructed
  /// config holds T5Config defaults (the documented flan-t5 flavour).
  std::variant<T5Config, LlamaConfig, OPTConfig> text_config;
  std::int64_t num_query_tokens = 32;

  // Derived exactly as InstructBlipConfig.__init__ does (values in the JSON are type-checked but
  // otherwise ignored, since HF overwrites them):
  /// text model type is in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES: llama, opt -> true, t5 -> false.
  bool use_decoder_only_language_model = false;
  /// Hard-coded to 1.0 by HF.
  double initializer_factor = 1.0;
  /// Hard-coded to 0.02 by HF.
  double initializer_range = 0.02;
  /// = text_config.tie_word_embeddings.
  bool tie_word_embeddings = true;
  /// = text_config.is_encoder_decoder.
  bool is_encoder_decoder = true;

  std::vector<std::string> architectures;
  /// The generation attributes found inside text_config (max_length, num_beams, ... — any
  /// GenerationConfig key except the token ids), verbatim; used by
  /// GenerationConfig::from_model_config and written back into text_config by to_json.
  nlohmann::json text_generation_attributes = nlohmann::json::object();

  bool is_blip2() const { return model_type == "blip-2"; }
  bool is_t5() const { return std::holds_alternative<T5Config>(text_config); }
  bool is_llama() const { return std::holds_alternative<LlamaConfig>(text_config); }
  bool is_opt() const { return std::holds_alternative<OPTConfig>(text_config); }
  /// "t5", "llama" or "opt".
  std::string text_model_type() const { return is_t5() ? "t5" : is_llama() ? "llama" : "opt"; }
  /// The held text config; throws ConfigError if another kind is held.
  const T5Config& t5() const;
  T5Config& t5();
  const LlamaConfig& llama() const;
  LlamaConfig& llama();
  const OPTConfig& opt() const;
  OPTConfig& opt();
  /// d_model (T5) or hidden_size (LLaMA, OPT): the output width of language_projection.
  std::int64_t text_hidden_size() const;
  std::int64_t text_vocab_size() const;
  /// Token ids of the language model (from the text config).
  std::optional<std::int64_t> text_pad_token_id() const;
  std::optional<std::int64_t> text_bos_token_id() const;
  std::vector<std::int64_t> text_eos_token_id() const;

  /// Recomputes the derived fields from the sub-configs (qformer_config.encoder_hidden_size =
  /// vision_config.hidden_size, use_decoder_only_language_model, tie_word_embeddings,
  /// is_encoder_decoder, initializer_*). Call after editing sub-configs in code.
  void finalize();
  /// Validates every sub-config and num_query_tokens (ConfigError).
  void validate(const std::string& source) const;

  static InstructBlipConfig from_json(const nlohmann::json& j, const std::string& source);
  /// Missing/unreadable file -> IoError; malformed JSON or bad values -> ConfigError naming it.
  static InstructBlipConfig from_json_file(const std::string& path);
  /// HF InstructBlipConfig.from_vision_qformer_text_configs: derived fields recomputed (including
  /// qformer encoder_hidden_size), then validated.
  static InstructBlipConfig from_vision_qformer_text_configs(const VisionConfig& vision,
                                                             const QFormerConfig& qformer,
                                                             const T5Config& text,
                                                             std::int64_t num_query_tokens = 32);
  static InstructBlipConfig from_vision_qformer_text_configs(const VisionConfig& vision,
                                                             const QFormerConfig& qformer,
                                                             const LlamaConfig& text,
                                                             std::int64_t num_query_tokens = 32);
  static InstructBlipConfig from_vision_qformer_text_configs(const VisionConfig& vision,
                                                             const QFormerConfig& qformer,
                                                             const OPTConfig& text,
                                                             std::int64_t num_query_tokens = 32);
  /// The same config as a BLIP-2 one (model_type "blip-2", Q-Former "blip_2_qformer").
  InstructBlipConfig as_blip2() const;

  /// Full JSON, "model_type" "instructblip" / "blip-2", sub-configs under vision_config / qformer_config /
  /// text_config (text_generation_attributes merged into text_config).
  nlohmann::json to_json() const;

  bool operator==(const InstructBlipConfig& o) const;
  bool operator!=(const InstructBlipConfig& o) const { return !(*this == o); }
};

/// Blip2Config: config.json of a BLIP-2 checkpoint (model_type "blip-2").
using Blip2Config = InstructBlipConfig;

}  // namespace instructblip

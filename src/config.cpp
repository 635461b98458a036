// Configuration structs: JSON parsing, validation, serialisation. See config.hpp for the rules.
#include "instructblip/config.hpp"

#include "internal/json_depth.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <tuple>
#include <utility>
#include <variant>

namespace instructblip {
namespace {

using json = nlohmann::json;

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "integer";
    case json::value_t::number_float: return "float";
    case json::value_t::string: return "string";
    case json::value_t::array: return "array";
    case json::value_t::object: return "object";
    case json::value_t::binary: return "binary";
    case json::value_t::discarded: return "discarded";
  }
  return "unknown";
}

std::string strip_dot(const std::string& prefix) {
  if (!prefix.empty() && prefix.back() == '.') return prefix.substr(0, prefix.size() - 1);
  return prefix;
}

std::string quoted(const std::string& s) { return "\"" + s + "\""; }

[[noreturn]] void fail_key(const std::string& source, const std::string& prefix, const std::string& key,
                           const std::string& msg) {
  throw ConfigError(source + ": " + prefix + key + ": " + msg);
}

using detail::kMaxJsonDepth;
using detail::nested_deeper_than;

// Typed access to the keys of one JSON object; every error names "<source>: <prefix><key>".
class Reader {
 public:
  Reader(const json& j, const std::string& source, const std::string& prefix)
      : j_(j), source_(source), prefix_(prefix) {
    const std::string what = prefix.empty() ? std::string("top level") : strip_dot(prefix);
    if (!j.is_object()) throw ConfigError(source + ": " + what + ": expected an object, got " + type_name(j));
    if (nested_deeper_than(j, kMaxJsonDepth))
      throw ConfigError(source + ": " + what + ": nested more than " + std::to_string(kMaxJsonDepth) +
                        " levels deep");
  }

  [[noreturn]] void fail(const std::string& key, const std::string& msg) const {
    fail_key(source_, prefix_, key, msg);
  }

  const json* find(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }

  std::int64_t as_int(const std::string& key, const json& v) const {
    if (v.is_number_unsigned()) {
      const auto u = v.get<std::uint64_t>();
      if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail(key, "integer " + std::to_string(u) + " is out of range");
      return static_cast<std::int64_t>(u);
    }
    if (v.is_number_integer()) return v.get<std::int64_t>();
    fail(key, std::string("expected an integer, got ") + type_name(v));
  }
  double as_double(const std::string& key, const json& v) const {
    if (v.is_number()) return v.get<double>();
    fail(key, std::string("expected a number, got ") + type_name(v));
  }
  bool as_bool(const std::string& key, const json& v) const {
    if (v.is_boolean()) return v.get<bool>();
    fail(key, std::string("expected a boolean, got ") + type_name(v));
  }
  std::string as_string(const std::string& key, const json& v) const {
    if (v.is_string()) return v.get<std::string>();
    fail(key, std::string("expected a string, got ") + type_name(v));
  }

  // Absent keys leave `out` unchanged.
  void get(const char* key, std::int64_t& out) const {
    if (const json* v = find(key)) out = as_int(key, *v);
  }
  void get(const char* key, double& out) const {
    if (const json* v = find(key)) out = as_double(key, *v);
  }
  void get(const char* key, bool& out) const {
    if (const json* v = find(key)) out = as_bool(key, *v);
  }
  void get(const char* key, std::string& out) const {
    if (const json* v = find(key)) out = as_string(key, *v);
  }
  // Optional values: JSON null -> nullopt.
  void get(const char* key, std::optional<std::int64_t>& out) const {
    if (const json* v = find(key)) {
      if (v->is_null()) out.reset();
      else out = as_int(key, *v);
    }
  }
  void get(const char* key, std::optional<double>& out) const {
    if (const json* v = find(key)) {
      if (v->is_null()) out.reset();
      else out = as_double(key, *v);
    }
  }
  void get(const char* key, std::optional<std::uint64_t>& out) const {
    if (const json* v = find(key)) {
      if (v->is_null()) {
        out.reset();
      } else if (v->is_number_unsigned()) {
        out = v->get<std::uint64_t>();
      } else if (v->is_number_integer()) {
        const auto i = v->get<std::int64_t>();
        if (i < 0) fail(key, "expected a non-negative integer, got " + std::to_string(i));
        out = static_cast<std::uint64_t>(i);
      } else {
        fail(key, std::string("expected a non-negative integer, got ") + type_name(*v));
      }
    }
  }
  // JSON null means "disabled" in HF: read it as the neutral value.
  void get_or_neutral(const char* key, double& out, double neutral) const {
    if (const json* v = find(key)) out = v->is_null() ? neutral : as_double(key, *v);
  }
  void get_or_neutral(const char* key, std::int64_t& out, std::int64_t neutral) const {
    if (const json* v = find(key)) out = v->is_null() ? neutral : as_int(key, *v);
  }
  // int | [int, ...] | null  ->  {id} | {ids...} | {}
  void get_ids(const char* key, std::vector<std::int64_t>& out) const {
    const json* v = find(key);
    if (!v) return;
    if (v->is_null()) {
      out.clear();
    } else if (v->is_number_integer()) {
      out = {as_int(key, *v)};
    } else if (v->is_array()) {
      std::vector<std::int64_t> ids;
      for (std::size_t i = 0; i < v->size(); ++i) {
        const json& e = (*v)[i];
        if (!e.is_number_integer())
          fail(std::string(key) + "[" + std::to_string(i) + "]",
               std::string("expected an integer, got ") + type_name(e));
        ids.push_back(as_int(std::string(key) + "[" + std::to_string(i) + "]", e));
      }
      out = std::move(ids);
    } else {
      fail(key, std::string("expected an integer, a list of integers or null, got ") + type_name(*v));
    }
  }
  // [str, ...] | null
  void get_strings(const char* key, std::vector<std::string>& out) const {
    const json* v = find(key);
    if (!v) return;
    if (v->is_null()) {
      out.clear();
      return;
    }
    if (!v->is_array()) fail(key, std::string("expected a list of strings or null, got ") + type_name(*v));
    std::vector<std::string> items;
    for (std::size_t i = 0; i < v->size(); ++i)
      items.push_back(as_string(std::string(key) + "[" + std::to_string(i) + "]", (*v)[i]));
    out = std::move(items);
  }

 private:
  const json& j_;
  std::string source_;  // copies: callers may pass temporaries
  std::string prefix_;
};

json opt_to_json(const std::optional<std::int64_t>& v) { return v ? json(*v) : json(nullptr); }
json opt_to_json(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }
json ids_to_json(const std::vector<std::int64_t>& ids) {
  if (ids.empty()) return json(nullptr);
  if (ids.size() == 1) return json(ids[0]);
  return json(ids);
}
json strings_to_json(const std::vector<std::string>& v) { return json(v); }

// Every size and count a config validates is at most 2^31 - 1, so that the product of any two
// (num_patches(), inner_dim(), a weight's element count) fits in int64.
constexpr std::int64_t kMaxSize = std::numeric_limits<std::int32_t>::max();

void require_at_most_max(const std::string& source, const std::string& prefix, const char* key,
                         std::int64_t v) {
  if (v > kMaxSize)
    fail_key(source, prefix, key,
             "must be at most " + std::to_string(kMaxSize) + ", got " + std::to_string(v));
}
void require_positive(const std::string& source, const std::string& prefix, const char* key,
                      std::int64_t v) {
  if (v <= 0) fail_key(source, prefix, key, "must be positive, got " + std::to_string(v));
  require_at_most_max(source, prefix, key, v);
}
void require_non_negative(const std::string& source, const std::string& prefix, const char* key,
                          std::int64_t v) {
  if (v < 0) fail_key(source, prefix, key, "must not be negative, got " + std::to_string(v));
  require_at_most_max(source, prefix, key, v);
}
// `divisor_key` must divide `dividend_key` (both already known to be positive).
void require_divides(const std::string& source, const std::string& prefix, const char* divisor_key,
                     std::int64_t divisor, const char* dividend_key, std::int64_t dividend) {
  if (dividend % divisor != 0)
    fail_key(source, prefix, divisor_key,
             std::to_string(divisor) + " does not divide " + prefix + dividend_key + " (" +
                 std::to_string(dividend) + ")");
}

// GenerationConfig keys that may also appear in a model config (the legacy PretrainedConfig
// generation attributes, or any GenerationConfig field). The token ids and use_cache are excluded:
// from_model_config takes them from the resolved text config.
const char* const kGenerationAttributeKeys[] = {
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "early_stopping", "max_time",
    "do_sample", "num_beams", "num_beam_groups", "penalty_alpha", "temperature", "top_k", "top_p",
    "typical_p", "epsilon_cutoff", "eta_cutoff", "diversity_penalty", "repetition_penalty",
    "encoder_repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "renormalize_logits", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "num_return_sequences", "output_scores",
    "return_dict_in_generate"};

void apply_generation_json(GenerationConfig& g, const Reader& r) {
  r.get("max_length", g.max_length);
  r.get("max_new_tokens", g.max_new_tokens);
  r.get_or_neutral("min_length", g.min_length, 0);
  r.get("min_new_tokens", g.min_new_tokens);
  if (const json* v = r.find("early_stopping")) {
    if (v->is_boolean()) {
      g.early_stopping = v->get<bool>() ? EarlyStopping::True : EarlyStopping::False;
    } else if (v->is_string() && v->get<std::string>() == "never") {
      g.early_stopping = EarlyStopping::Never;
    } else {
      r.fail("early_stopping", std::string("must be true, false or \"never\", got ") +
                                   (v->is_string() ? quoted(v->get<std::string>()) : type_name(*v)));
    }
  }
  r.get("max_time", g.max_time);
  r.get("do_sample", g.do_sample);
  r.get("num_beams", g.num_beams);
  r.get("num_beam_groups", g.num_beam_groups);
  r.get("penalty_alpha", g.penalty_alpha);
  r.get("use_cache", g.use_cache);
  r.get_or_neutral("temperature", g.temperature, 1.0);
  r.get_or_neutral("top_k", g.top_k, 0);
  r.get_or_neutral("top_p", g.top_p, 1.0);
  r.get_or_neutral("typical_p", g.typical_p, 1.0);
  r.get_or_neutral("epsilon_cutoff", g.epsilon_cutoff, 0.0);
  r.get_or_neutral("eta_cutoff", g.eta_cutoff, 0.0);
  r.get_or_neutral("diversity_penalty", g.diversity_penalty, 0.0);
  r.get_or_neutral("repetition_penalty", g.repetition_penalty, 1.0);
  r.get_or_neutral("encoder_repetition_penalty", g.encoder_repetition_penalty, 1.0);
  r.get("length_penalty", g.length_penalty);
  r.get_or_neutral("no_repeat_ngram_size", g.no_repeat_ngram_size, 0);
  r.get_or_neutral("encoder_no_repeat_ngram_size", g.encoder_no_repeat_ngram_size, 0);
  r.get("renormalize_logits", g.renormalize_logits);
  r.get("forced_bos_token_id", g.forced_bos_token_id);
  r.get_ids("forced_eos_token_id", g.forced_eos_token_id);
  r.get("remove_invalid_values", g.remove_invalid_values);
  r.get("num_return_sequences", g.num_return_sequences);
  r.get("output_scores", g.output_scores);
  r.get("return_dict_in_generate", g.return_dict_in_generate);
  r.get("pad_token_id", g.pad_token_id);
  r.get("bos_token_id", g.bos_token_id);
  r.get_ids("eos_token_id", g.eos_token_id);
  r.get("decoder_start_token_id", g.decoder_start_token_id);
  r.get("seed", g.seed);
}

// First problem HF (or common sense) rejects, as {key, message}; empty key when fine.
std::pair<std::string, std::string> generation_problem(const GenerationConfig& g) {
  auto n = [](std::int64_t v) { return std::to_string(v); };
  if (g.max_new_tokens && *g.max_new_tokens <= 0)
    return {"max_new_tokens", "must be greater than 0, got " + n(*g.max_new_tokens)};
  if (g.max_length < 0) return {"max_length", "must not be negative, got " + n(g.max_length)};
  if (g.min_length < 0) return {"min_length", "must not be negative, got " + n(g.min_length)};
  if (g.min_new_tokens && *g.min_new_tokens < 0)
    return {"min_new_tokens", "must not be negative, got " + n(*g.min_new_tokens)};
  if (g.num_beams < 1) return {"num_beams", "must be at least 1, got " + n(g.num_beams)};
  if (g.num_beam_groups < 1)
    return {"num_beam_groups", "must be at least 1, got " + n(g.num_beam_groups)};
  if (g.num_return_sequences < 1)
    return {"num_return_sequences", "must be at least 1, got " + n(g.num_return_sequences)};
  if (g.top_k < 0) return {"top_k", "must not be negative, got " + n(g.top_k)};
  if (g.no_repeat_ngram_size < 0)
    return {"no_repeat_ngram_size", "must not be negative, got " + n(g.no_repeat_ngram_size)};
  if (g.encoder_no_repeat_ngram_size < 0)
    return {"encoder_no_repeat_ngram_size",
            "must not be negative, got " + n(g.encoder_no_repeat_ngram_size)};
  return {};
}

json read_json_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw IoError(path + ": is a directory, expected a JSON file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open file (" + std::strerror(errno) + ")");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw IoError(path + ": error while reading file");
  try {
    return json::parse(ss.str());
  } catch (const json::parse_error& e) {
    throw ConfigError(path + ": malformed JSON: " + e.what());
  }
}

}  // namespace

// =============================================================================================
// VisionConfig

VisionConfig VisionConfig::from_json(const json& j, const std::string& source,
                                     const std::string& key_prefix) {
  Reader r(j, source, key_prefix);
  VisionConfig c;
  r.get("hidden_size", c.hidden_size);
  r.get("intermediate_size", c.intermediate_size);
  r.get("num_hidden_layers", c.num_hidden_layers);
  r.get("num_attention_heads", c.num_attention_heads);
  r.get("image_size", c.image_size);
  r.get("patch_size", c.patch_size);
  r.get("hidden_act", c.hidden_act);
  r.get("layer_norm_eps", c.layer_norm_eps);
  r.get("attention_dropout", c.attention_dropout);
  r.get("initializer_range", c.initializer_range);
  r.get("qkv_bias", c.qkv_bias);
  c.validate(source, key_prefix);
  return c;
}

void VisionConfig::validate(const std::string& source, const std::string& p) const {
  require_positive(source, p, "hidden_size", hidden_size);
  require_positive(source, p, "intermediate_size", intermediate_size);
  require_non_negative(source, p, "num_hidden_layers", num_hidden_layers);
  require_positive(source, p, "num_attention_heads", num_attention_heads);
  require_positive(source, p, "image_size", image_size);
  require_positive(source, p, "patch_size", patch_size);
  if (patch_size > image_size)
    fail_key(source, p, "patch_size",
             std::to_string(patch_size) + " is larger than " + p + "image_size (" +
                 std::to_string(image_size) + ")");
  require_divides(source, p, "num_attention_heads", num_attention_heads, "hidden_size", hidden_size);
}

json VisionConfig::to_json() const {
  return json{{"model_type", "instructblip_vision_model"},
              {"hidden_size", hidden_size},
              {"intermediate_size", intermediate_size},
              {"num_hidden_layers", num_hidden_layers},
              {"num_attention_heads", num_attention_heads},
              {"image_size", image_size},
              {"patch_size", patch_size},
              {"hidden_act", hidden_act},
              {"layer_norm_eps", layer_norm_eps},
              {"attention_dropout", attention_dropout},
              {"initializer_range", initializer_range},
              {"qkv_bias", qkv_bias}};
}

bool VisionConfig::operator==(const VisionConfig& o) const {
  auto t = [](const VisionConfig& c) {
    return std::tie(c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
                    c.image_size, c.patch_size, c.hidden_act, c.layer_norm_eps, c.attention_dropout,
                    c.initializer_range, c.qkv_bias);
  };
  return t(*this) == t(o);
}

// =============================================================================================
// QFormerConfig

std::vector<std::int64_t> QFormerConfig::cross_attention_layers() const {
  std::vector<std::int64_t> layers;
  for (std::int64_t i = 0; i < num_hidden_layers; ++i)
    if (has_cross_attention(i)) layers.push_back(i);
  return layers;
}

QFormerConfig QFormerConfig::from_json(const json& j, const std::string& source,
                                       const std::string& key_prefix) {
  Reader r(j, source, key_prefix);
  QFormerConfig c;
  r.get("vocab_size", c.vocab_size);
  r.get("hidden_size", c.hidden_size);
  r.get("num_hidden_layers", c.num_hidden_layers);
  r.get("num_attention_heads", c.num_attention_heads);
  r.get("intermediate_size", c.intermediate_size);
  r.get("hidden_act", c.hidden_act);
  r.get("hidden_dropout_prob", c.hidden_dropout_prob);
  r.get("attention_probs_dropout_prob", c.attention_probs_dropout_prob);
  r.get("max_position_embeddings", c.max_position_embeddings);
  r.get("initializer_range", c.initializer_range);
  r.get("layer_norm_eps", c.layer_norm_eps);
  r.get("pad_token_id", c.pad_token_id);
  r.get("position_embedding_type", c.position_embedding_type);
  r.get("cross_attention_frequency", c.cross_attention_frequency);
  r.get("encoder_hidden_size", c.encoder_hidden_size);
  if (const json* v = r.find("model_type")) {
    const std::string mt = r.as_string("model_type", *v);
    if (mt == "instructblip_qformer" || mt == "blip_2_qformer") c.model_type = mt;  // the composite decides
  }
  c.validate(source, key_prefix);
  return c;
}

void QFormerConfig::validate(const std::string& source, const std::string& p) const {
  require_positive(source, p, "vocab_size", vocab_size);
  require_positive(source, p, "hidden_size", hidden_size);
  require_non_negative(source, p, "num_hidden_layers", num_hidden_layers);
  require_positive(source, p, "num_attention_heads", num_attention_heads);
  require_positive(source, p, "intermediate_size", intermediate_size);
  require_positive(source, p, "max_position_embeddings", max_position_embeddings);
  require_positive(source, p, "cross_attention_frequency", cross_attention_frequency);
  require_positive(source, p, "encoder_hidden_size", encoder_hidden_size);
  require_divides(source, p, "num_attention_heads", num_attention_heads, "hidden_size", hidden_size);
}

json QFormerConfig::to_json() const {
  return json{{"model_type", model_type},
              {"vocab_size", vocab_size},
              {"hidden_size", hidden_size},
              {"num_hidden_layers", num_hidden_layers},
              {"num_attention_heads", num_attention_heads},
              {"intermediate_size", intermediate_size},
              {"hidden_act", hidden_act},
              {"hidden_dropout_prob", hidden_dropout_prob},
              {"attention_probs_dropout_prob", attention_probs_dropout_prob},
              {"max_position_embeddings", max_position_embeddings},
              {"initializer_range", initializer_range},
              {"layer_norm_eps", layer_norm_eps},
              {"pad_token_id", opt_to_json(pad_token_id)},
              {"position_embedding_type", position_embedding_type},
              {"cross_attention_frequency", cross_attention_frequency},
              {"encoder_hidden_size", encoder_hidden_size}};
}

bool QFormerConfig::operator==(const QFormerConfig& o) const {
  auto t = [](const QFormerConfig& c) {
    return std::tie(c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                    c.intermediate_size, c.hidden_act, c.hidden_dropout_prob,
                    c.attention_probs_dropout_prob, c.max_position_embeddings, c.initializer_range,
                    c.layer_norm_eps, c.pad_token_id, c.position_embedding_type,
                    c.cross_attention_frequency, c.encoder_hidden_size, c.model_type);
  };
  return t(*this) == t(o);
}

// =============================================================================================
// T5Config

T5Config::Act T5Config::derive_act(const std::string& feed_forward_proj, const std::string& source,
                                   const std::string& key_prefix) {
  // Python: feed_forward_proj.split("-")
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t dash = feed_forward_proj.find('-', start);
    parts.push_back(feed_forward_proj.substr(start, dash == std::string::npos ? dash : dash - start));
    if (dash == std::string::npos) break;
    start = dash + 1;
  }
  if ((parts.size() > 1 && parts[0] != "gated") || parts.size() > 2 || parts.back().empty())
    fail_key(source, key_prefix, "feed_forward_proj",
             quoted(feed_forward_proj) +
                 " is not a valid activation of the dense layer; expected \"gated-{ACT_FN}\" or "
                 "\"{ACT_FN}\", e.g. \"gated-gelu\" or \"relu\"");
  Act act{parts.back(), parts[0] == "gated"};
  if (feed_forward_proj == "gated-gelu") act.dense_act_fn = "gelu_new";  // backwards compatibility
  return act;
}

T5Config T5Config::from_json(const json& j, const std::string& source, const std::string& key_prefix) {
  Reader r(j, source, key_prefix);
  T5Config c;
  r.get("vocab_size", c.vocab_size);
  r.get("d_model", c.d_model);
  r.get("d_kv", c.d_kv);
  r.get("d_ff", c.d_ff);
  r.get("num_layers", c.num_layers);
  c.num_decoder_layers = c.num_layers;  // default = symmetry (None -> num_layers)
  if (const json* v = r.find("num_decoder_layers"); v && !v->is_null())
    c.num_decoder_layers = r.as_int("num_decoder_layers", *v);
  r.get("num_heads", c.num_heads);
  r.get("relative_attention_num_buckets", c.relative_attention_num_buckets);
  r.get("relative_attention_max_distance", c.relative_attention_max_distance);
  r.get("dropout_rate", c.dropout_rate);
  r.get("classifier_dropout", c.classifier_dropout);
  r.get("layer_norm_epsilon", c.layer_norm_epsilon);
  r.get("initializer_factor", c.initializer_factor);
  r.get("feed_forward_proj", c.feed_forward_proj);
  r.get("is_encoder_decoder", c.is_encoder_decoder);
  r.get("use_cache", c.use_cache);
  r.get("tie_word_embeddings", c.tie_word_embeddings);
  r.get("pad_token_id", c.pad_token_id);
  r.get("bos_token_id", c.bos_token_id);
  r.get_ids("eos_token_id", c.eos_token_id);
  r.get("decoder_start_token_id", c.decoder_start_token_id);
  r.get_strings("architectures", c.architectures);

  const Act act = derive_act(c.feed_forward_proj, source, key_prefix);
  c.dense_act_fn = act.dense_act_fn;
  c.is_gated_act = act.is_gated_act;
  // HF: PretrainedConfig.__init__(**kwargs) runs after the derivation and setattr()s every extra
  // key, so explicit values in the JSON win.
  r.get("dense_act_fn", c.dense_act_fn);
  r.get("is_gated_act", c.is_gated_act);
  // attribute_map aliases, also applied by PretrainedConfig.__init__ after the T5 fields are set.
  r.get("hidden_size", c.d_model);
  r.get("num_attention_heads", c.num_heads);
  r.get("num_hidden_layers", c.num_layers);

  c.validate(source, key_prefix);
  return c;
}

void T5Config::validate(const std::string& source, const std::string& p) const {
  require_positive(source, p, "vocab_size", vocab_size);
  require_positive(source, p, "d_model", d_model);
  require_positive(source, p, "d_kv", d_kv);
  require_positive(source, p, "d_ff", d_ff);
  require_non_negative(source, p, "num_layers", num_layers);
  require_non_negative(source, p, "num_decoder_layers", num_decoder_layers);
  require_positive(source, p, "num_heads", num_heads);
  require_positive(source, p, "relative_attention_num_buckets", relative_attention_num_buckets);
  require_positive(source, p, "relative_attention_max_distance", relative_attention_max_distance);
  derive_act(feed_forward_proj, source, p);  // throws on an invalid value
  if (dense_act_fn.empty()) fail_key(source, p, "dense_act_fn", "must not be empty");
}

json T5Config::to_json() const {
  return json{{"model_type", "t5"},
              {"vocab_size", vocab_size},
              {"d_model", d_model},
              {"d_kv", d_kv},
              {"d_ff", d_ff},
              {"num_layers", num_layers},
              {"num_decoder_layers", num_decoder_layers},
              {"num_heads", num_heads},
              {"relative_attention_num_buckets", relative_attention_num_buckets},
              {"relative_attention_max_distance", relative_attention_max_distance},
              {"dropout_rate", dropout_rate},
              {"classifier_dropout", classifier_dropout},
              {"layer_norm_epsilon", layer_norm_epsilon},
              {"initializer_factor", initializer_factor},
              {"feed_forward_proj", feed_forward_proj},
              {"dense_act_fn", dense_act_fn},
              {"is_gated_act", is_gated_act},
              {"is_encoder_decoder", is_encoder_decoder},
              {"use_cache", use_cache},
              {"tie_word_embeddings", tie_word_embeddings},
              {"pad_token_id", opt_to_json(pad_token_id)},
              {"bos_token_id", opt_to_json(bos_token_id)},
              {"eos_token_id", ids_to_json(eos_token_id)},
              {"decoder_start_token_id", opt_to_json(decoder_start_token_id)},
              {"architectures", strings_to_json(architectures)}};
}

bool T5Config::operator==(const T5Config& o) const {
  auto t = [](const T5Config& c) {
    return std::tie(c.vocab_size, c.d_model, c.d_kv, c.d_ff, c.num_layers, c.num_decoder_layers,
                    c.num_heads, c.relative_attention_num_buckets, c.relative_attention_max_distance,
                    c.dropout_rate, c.classifier_dropout, c.layer_norm_epsilon, c.initializer_factor,
                    c.feed_forward_proj, c.dense_act_fn, c.is_gated_act, c.is_encoder_decoder,
                    c.use_cache, c.tie_word_embeddings, c.pad_token_id, c.bos_token_id,
                    c.eos_token_id, c.decoder_start_token_id, c.architectures);
  };
  return t(*this) == t(o);
}

// =============================================================================================
// LlamaConfig

LlamaConfig LlamaConfig::from_json(const json& j, const std::string& source,
                                   const std::string& key_prefix) {
  Reader r(j, source, key_prefix);
  LlamaConfig c;
  r.get("vocab_size", c.vocab_size);
  r.get("hidden_size", c.hidden_size);
  r.get("intermediate_size", c.intermediate_size);
  r.get("num_hidden_layers", c.num_hidden_layers);
  r.get("num_attention_heads", c.num_attention_heads);
  c.num_key_value_heads = c.num_attention_heads;  // None -> num_attention_heads
  if (const json* v = r.find("num_key_value_heads"); v && !v->is_null())
    c.num_key_value_heads = r.as_int("num_key_value_heads", *v);
  r.get("hidden_act", c.hidden_act);
  r.get("max_position_embeddings", c.max_position_embeddings);
  r.get("initializer_range", c.initializer_range);
  r.get("rms_norm_eps", c.rms_norm_eps);
  r.get("use_cache", c.use_cache);
  r.get("pad_token_id", c.pad_token_id);
  r.get("bos_token_id", c.bos_token_id);
  r.get_ids("eos_token_id", c.eos_token_id);
  r.get("decoder_start_token_id", c.decoder_start_token_id);
  r.get("pretraining_tp", c.pretraining_tp);
  r.get("tie_word_embeddings", c.tie_word_embeddings);
  r.get("rope_theta", c.rope_theta);
  if (const json* v = r.find("rope_scaling")) {
    if (v->is_null()) {
      c.rope_scaling.reset();
    } else {
      // HF _rope_scaling_validation: a dict with exactly `type` and `factor`.
      if (!v->is_object() || v->size() != 2 || !v->contains("type") || !v->contains("factor"))
        r.fail("rope_scaling", std::string("must be null or an object with exactly the two fields "
                                           "\"type\" and \"factor\", got ") +
                                   v->dump());
      const json& type = (*v)["type"];
      if (!type.is_string() || (type != "linear" && type != "dynamic"))
        r.fail("rope_scaling.type", "must be \"linear\" or \"dynamic\", got " + type.dump());
      const json& factor = (*v)["factor"];
      if (!factor.is_number_float() || !(factor.get<double>() > 1.0))
        r.fail("rope_scaling.factor", "must be a float > 1, got " + factor.dump());
      c.rope_scaling = LlamaRopeScaling{type.get<std::string>(), factor.get<double>()};
    }
  }
  r.get("attention_bias", c.attention_bias);
  r.get("attention_dropout", c.attention_dropout);
  r.get("is_encoder_decoder", c.is_encoder_decoder);
  r.get_strings("architectures", c.architectures);
  c.validate(source, key_prefix);
  return c;
}

void LlamaConfig::validate(const std::string& source, const std::string& p) const {
  require_positive(source, p, "vocab_size", vocab_size);
  require_positive(source, p, "hidden_size", hidden_size);
  require_positive(source, p, "intermediate_size", intermediate_size);
  require_non_negative(source, p, "num_hidden_layers", num_hidden_layers);
  require_positive(source, p, "num_attention_heads", num_attention_heads);
  require_positive(source, p, "num_key_value_heads", num_key_value_heads);
  require_positive(source, p, "max_position_embeddings", max_position_embeddings);
  require_positive(source, p, "pretraining_tp", pretraining_tp);
  require_divides(source, p, "num_attention_heads", num_attention_heads, "hidden_size", hidden_size);
  require_divides(source, p, "num_key_value_heads", num_key_value_heads, "num_attention_heads",
                  num_attention_heads);
  if (!(rope_theta > 0.0))
    fail_key(source, p, "rope_theta", "must be positive, got " + json(rope_theta).dump());
  if (rope_scaling) {
    if (rope_scaling->type != "linear" && rope_scaling->type != "dynamic")
      fail_key(source, p, "rope_scaling.type",
               "must be \"linear\" or \"dynamic\", got " + (quoted)(rope_scaling->type));
    if (!(rope_scaling->factor > 1.0))
      fail_key(source, p, "rope_scaling.factor",
               "must be a float > 1, got " + json(rope_scaling->factor).dump());
  }
}

json LlamaConfig::to_json() const {
  json rs = nullptr;
  if (rope_scaling) rs = json{{"type", rope_scaling->type}, {"factor", rope_scaling->factor}};
  return json{{"model_type", "llama"},
              {"vocab_size", vocab_size},
              {"hidden_size", hidden_size},
              {"intermediate_size", intermediate_size},
              {"num_hidden_layers", num_hidden_layers},
              {"num_attention_heads", num_attention_heads},
              {"num_key_value_heads", num_key_value_heads},
              {"hidden_act", hidden_act},
              {"max_position_embeddings", max_position_embeddings},
              {"initializer_range", initializer_range},
              {"rms_norm_eps", rms_norm_eps},
              {"use_cache", use_cache},
              {"pad_token_id", opt_to_json(pad_token_id)},
              {"bos_token_id", opt_to_json(bos_token_id)},
              {"eos_token_id", ids_to_json(eos_token_id)},
              {"decoder_start_token_id", opt_to_json(decoder_start_token_id)},
              {"pretraining_tp", pretraining_tp},
              {"tie_word_embeddings", tie_word_embeddings},
              {"rope_theta", rope_theta},
              {"rope_scaling", rs},
              {"attention_bias", attention_bias},
              {"attention_dropout", attention_dropout},
              {"is_encoder_decoder", is_encoder_decoder},
              {"architectures", strings_to_json(architectures)}};
}

bool LlamaConfig::operator==(const LlamaConfig& o) const {
  auto t = [](const LlamaConfig& c) {
    return std::tie(c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers,
                    c.num_attention_heads, c.num_key_value_heads, c.hidden_act,
                    c.max_position_embeddings, c.initializer_range, c.rms_norm_eps, c.use_cache,
                    c.pad_token_id, c.bos_token_id, c.eos_token_id, c.decoder_start_token_id,
                    c.pretraining_tp, c.tie_word_embeddings, c.rope_theta, c.rope_scaling,
                    c.attention_bias, c.attention_dropout, c.is_encoder_decoder, c.architectures);
  };
  return t(*this) == t(o);
}

// =============================================================================================
// OPTConfig

OPTConfig OPTConfig::from_json(const json& j, const std::string& source, const std::string& key_prefix) {
  Reader r(j, source, key_prefix);
  OPTConfig c;
  r.get("vocab_size", c.vocab_size);
  r.get("hidden_size", c.hidden_size);
  r.get("num_hidden_layers", c.num_hidden_layers);
  r.get("ffn_dim", c.ffn_dim);
  r.get("max_position_embeddings", c.max_position_embeddings);
  r.get("do_layer_norm_before", c.do_layer_norm_before);
  r.get("_remove_final_layer_norm", c._remove_final_layer_norm);
  c.word_embed_proj_dim = c.hidden_size;  // None -> hidden_size
  if (const json* v = r.find("word_embed_proj_dim"); v && !v->is_null())
    c.word_embed_proj_dim = r.as_int("word_embed_proj_dim", *v);
  r.get("dropout", c.dropout);
  r.get("attention_dropout", c.attention_dropout);
  r.get("num_attention_heads", c.num_attention_heads);
  r.get("activation_function", c.activation_function);
  r.get("layerdrop", c.layerdrop);
  r.get("init_std", c.init_std);
  r.get("use_cache", c.use_cache);
  r.get("enable_bias", c.enable_bias);
  r.get("layer_norm_elementwise_affine", c.layer_norm_elementwise_affine);
  r.get("tie_word_embeddings", c.tie_word_embeddings);
  r.get("pad_token_id", c.pad_token_id);
  r.get("bos_token_id", c.bos_token_id);
  r.get_ids("eos_token_id", c.eos_token_id);
  r.get("decoder_start_token_id", c.decoder_start_token_id);
  r.get("is_encoder_decoder", c.is_encoder_decoder);
  r.get_strings("architectures", c.architectures);
  c.validate(source, key_prefix);
  return c;
}

void OPTConfig::validate(const std::string& source, const std::string& p) const {
  require_positive(source, p, "vocab_size", vocab_size);
  require_positive(source, p, "hidden_size", hidden_size);
  require_non_negative(source, p, "num_hidden_layers", num_hidden_layers);
  require_positive(source, p, "ffn_dim", ffn_dim);
  require_positive(source, p, "max_position_embeddings", max_position_embeddings);
  require_positive(source, p, "word_embed_proj_dim", word_embed_proj_dim);
  require_positive(source, p, "num_attention_heads", num_attention_heads);
  require_divides(source, p, "num_attention_heads", num_attention_heads, "hidden_size", hidden_size);
}

json OPTConfig::to_json() const {
  return json{{"model_type", "opt"},
              {"vocab_size", vocab_size},
              {"hidden_size", hidden_size},
              {"num_hidden_layers", num_hidden_layers},
              {"ffn_dim", ffn_dim},
              {"max_position_embeddings", max_position_embeddings},
              {"do_layer_norm_before", do_layer_norm_before},
              {"_remove_final_layer_norm", _remove_final_layer_norm},
              {"word_embed_proj_dim", word_embed_proj_dim},
              {"dropout", dropout},
              {"attention_dropout", attention_dropout},
              {"num_attention_heads", num_attention_heads},
              {"activation_function", activation_function},
              {"layerdrop", layerdrop},
              {"init_std", init_std},
              {"use_cache", use_cache},
              {"enable_bias", enable_bias},
              {"layer_norm_elementwise_affine", layer_norm_elementwise_affine},
              {"tie_word_embeddings", tie_word_embeddings},
              {"pad_token_id", opt_to_json(pad_token_id)},
              {"bos_token_id", opt_to_json(bos_token_id)},
              {"eos_token_id", ids_to_json(eos_token_id)},
              {"decoder_start_token_id", opt_to_json(decoder_start_token_id)},
              {"is_encoder_decoder", is_encoder_decoder},
              {"architectures", strings_to_json(architectures)}};
}

bool OPTConfig::operator==(const OPTConfig& o) const {
  auto t = [](const OPTConfig& c) {
    return std::tie(c.vocab_size, c.hidden_size, c.num_hidden_layers, c.ffn_dim, c.max_position_embeddings,
                    c.do_layer_norm_before, c._remove_final_layer_norm, c.word_embed_proj_dim, c.dropout,
                    c.attention_dropout, c.num_attention_heads, c.activation_function, c.layerdrop, c.init_std,
                    c.use_cache, c.enable_bias, c.layer_norm_elementwise_affine, c.tie_word_embeddings,
                    c.pad_token_id, c.bos_token_id, c.eos_token_id, c.decoder_start_token_id, c.is_encoder_decoder,
                    c.architectures);
  };
  return t(*this) == t(o);
}

// =============================================================================================
// GenerationConfig

GenerationConfig GenerationConfig::from_json(const json& j, const std::string& source,
                                             const std::string& key_prefix) {
  GenerationConfig g;
  apply_generation_json(g, Reader(j, source, key_prefix));
  const auto problem = generation_problem(g);
  if (!problem.first.empty()) fail_key(source, key_prefix, problem.first, problem.second);
  return g;
}

GenerationConfig GenerationConfig::from_json_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

GenerationConfig GenerationConfig::merged_with(const json& overrides, const std::string& source) const {
  GenerationConfig g = *this;
  apply_generation_json(g, Reader(overrides, source, ""));
  const auto problem = generation_problem(g);
  if (!problem.first.empty()) fail_key(source, "", problem.first, problem.second);
  return g;
}

GenerationConfig GenerationConfig::merged_with_file(const std::string& path) const {
  return merged_with(read_json_file(path), path);
}

GenerationConfig GenerationConfig::from_model_config(const InstructBlipConfig& config) {
  GenerationConfig g = from_json(config.text_generation_attributes, "text_config");
  std::visit(
      [&g](const auto& t) {
        g.pad_token_id = t.pad_token_id;
        g.bos_token_id = t.bos_token_id;
        g.eos_token_id = t.eos_token_id;
        g.decoder_start_token_id = t.decoder_start_token_id;
        g.use_cache = t.use_cache;
      },
      config.text_config);
  return g;
}

void GenerationConfig::validate() const {
  const auto problem = generation_problem(*this);
  if (!problem.first.empty())
    throw InvalidArgument("generation config: " + problem.first + ": " + problem.second);
}

json GenerationConfig::to_json() const {
  json es = early_stopping == EarlyStopping::Never ? json("never")
                                                    : json(early_stopping == EarlyStopping::True);
  return json{{"max_length", max_length},
              {"max_new_tokens", opt_to_json(max_new_tokens)},
              {"min_length", min_length},
              {"min_new_tokens", opt_to_json(min_new_tokens)},
              {"early_stopping", es},
              {"max_time", opt_to_json(max_time)},
              {"do_sample", do_sample},
              {"num_beams", num_beams},
              {"num_beam_groups", num_beam_groups},
              {"penalty_alpha", opt_to_json(penalty_alpha)},
              {"use_cache", use_cache},
              {"temperature", temperature},
              {"top_k", top_k},
              {"top_p", top_p},
              {"typical_p", typical_p},
              {"epsilon_cutoff", epsilon_cutoff},
              {"eta_cutoff", eta_cutoff},
              {"diversity_penalty", diversity_penalty},
              {"repetition_penalty", repetition_penalty},
              {"encoder_repetition_penalty", encoder_repetition_penalty},
              {"length_penalty", length_penalty},
              {"no_repeat_ngram_size", no_repeat_ngram_size},
              {"encoder_no_repeat_ngram_size", encoder_no_repeat_ngram_size},
              {"renormalize_logits", renormalize_logits},
              {"forced_bos_token_id", opt_to_json(forced_bos_token_id)},
              {"forced_eos_token_id", ids_to_json(forced_eos_token_id)},
              {"remove_invalid_values", remove_invalid_values},
              {"num_return_sequences", num_return_sequences},
              {"output_scores", output_scores},
              {"return_dict_in_generate", return_dict_in_generate},
              {"pad_token_id", opt_to_json(pad_token_id)},
              {"bos_token_id", opt_to_json(bos_token_id)},
              {"eos_token_id", ids_to_json(eos_token_id)},
              {"decoder_start_token_id", opt_to_json(decoder_start_token_id)},
              {"seed", seed ? json(*seed) : json(nullptr)}};
}

bool GenerationConfig::operator==(const GenerationConfig& o) const {
  auto t = [](const GenerationConfig& c) {
    return std::tie(c.max_length, c.max_new_tokens, c.min_length, c.min_new_tokens,
                    c.early_stopping, c.max_time, c.do_sample, c.num_beams, c.num_beam_groups,
                    c.penalty_alpha, c.use_cache, c.temperature, c.top_k, c.top_p, c.typical_p,
                    c.epsilon_cutoff, c.eta_cutoff, c.diversity_penalty, c.repetition_penalty,
                    c.encoder_repetition_penalty, c.length_penalty, c.no_repeat_ngram_size,
                    c.encoder_no_repeat_ngram_size, c.renormalize_logits, c.forced_bos_token_id,
                    c.forced_eos_token_id, c.remove_invalid_values, c.num_return_sequences,
                    c.output_scores, c.return_dict_in_generate, c.pad_token_id, c.bos_token_id,
                    c.eos_token_id, c.decoder_start_token_id, c.seed);
  };
  return t(*this) == t(o);
}

// =============================================================================================
// InstructBlipConfig

const T5Config& InstructBlipConfig::t5() const {
  if (const auto* t = std::get_if<T5Config>(&text_config)) return *t;
  throw ConfigError("InstructBlipConfig: text_config holds a \"" + text_model_type() + "\" config, not \"t5\"");
}
T5Config& InstructBlipConfig::t5() {
  return const_cast<T5Config&>(static_cast<const InstructBlipConfig&>(*this).t5());
}
const LlamaConfig& InstructBlipConfig::llama() const {
  if (const auto* t = std::get_if<LlamaConfig>(&text_config)) return *t;
  throw ConfigError("InstructBlipConfig: text_config holds a \"" + text_model_type() + "\" config, not \"llama\"");
}
LlamaConfig& InstructBlipConfig::llama() {
  return const_cast<LlamaConfig&>(static_cast<const InstructBlipConfig&>(*this).llama());
}
const OPTConfig& InstructBlipConfig::opt() const {
  if (const auto* t = std::get_if<OPTConfig>(&text_config)) return *t;
  throw ConfigError("InstructBlipConfig: text_config holds a \"" + text_model_type() + "\" config, not \"opt\"");
}
OPTConfig& InstructBlipConfig::opt() {
  return const_cast<OPTConfig&>(static_cast<const InstructBlipConfig&>(*this).opt());
}

std::int64_t InstructBlipConfig::text_hidden_size() const {
  return is_t5() ? t5().d_model : is_llama() ? llama().hidden_size : opt().hidden_size;
}
std::int64_t InstructBlipConfig::text_vocab_size() const {
  return std::visit([](const auto& t) { return t.vocab_size; }, text_config);
}
std::optional<std::int64_t> InstructBlipConfig::text_pad_token_id() const {
  return std::visit([](const auto& t) { return t.pad_token_id; }, text_config);
}
std::optional<std::int64_t> InstructBlipConfig::text_bos_token_id() const {
  return std::visit([](const auto& t) { return t.bos_token_id; }, text_config);
}
std::vector<std::int64_t> InstructBlipConfig::text_eos_token_id() const {
  return std::visit([](const auto& t) { return t.eos_token_id; }, text_config);
}

void InstructBlipConfig::finalize() {
  qformer_config.encoder_hidden_size = vision_config.hidden_size;
  qformer_config.model_type = is_blip2() ? "blip_2_qformer" : "instructblip_qformer";
  // llama and opt are in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, t5 is not
  use_decoder_only_language_model = !is_t5();
  initializer_factor = 1.0;
  initializer_range = 0.02;
  std::visit(
      [this](const auto& t) {
        tie_word_embeddings = t.tie_word_embeddings;
        is_encoder_decoder = t.is_encoder_decoder;
      },
      text_config);
}

void InstructBlipConfig::validate(const std::string& source) const {
  if (model_type != "instructblip" && model_type != "blip-2")
    throw ConfigError(source + ": model_type: expected \"instructblip\" or \"blip-2\", got " + (quoted)(model_type));
  vision_config.validate(source, "vision_config.");
  qformer_config.validate(source, "qformer_config.");
  std::visit([&source](const auto& t) { t.validate(source, "text_config."); }, text_config);
  require_positive(source, "", "num_query_tokens", num_query_tokens);
  if (!text_generation_attributes.is_object())
    throw ConfigError(source + ": text_generation_attributes: expected an object");
}

InstructBlipConfig InstructBlipConfig::from_json(const json& j, const std::string& source) {
  Reader r(j, source, "");
  InstructBlipConfig c;
  if (const json* v = r.find("model_type")) {
    c.model_type = r.as_string("model_type", *v);
    if (c.model_type != "instructblip" && c.model_type != "blip-2")
      r.fail("model_type", "expected \"instructblip\" or \"blip-2\", got " + (quoted)(c.model_type));
  }

  if (const json* v = r.find("vision_config"); v && !v->is_null())
    c.vision_config = VisionConfig::from_json(*v, source, "vision_config.");
  if (const json* v = r.find("qformer_config"); v && !v->is_null())
    c.qformer_config = QFormerConfig::from_json(*v, source, "qformer_config.");

  // No text_config, or one without model_type, is OPT (configuration_blip_2.py:323 and the
  // InstructBLIP equivalent: text_config.get("model_type", "opt")).
  static const json kEmpty = json::object();
  const json* t = r.find("text_config");
  if (t && !t->is_null() && !t->is_object())
    r.fail("text_config", std::string("expected an object, got ") + type_name(*t));
  if (!t || t->is_null()) t = &kEmpty;
  std::string text_type = "opt";
  if (const auto mt_it = t->find("model_type"); mt_it != t->end()) {
    if (!mt_it->is_string())
      throw ConfigError(source + ": text_config.model_type: expected a string, got " + type_name(*mt_it));
    text_type = mt_it->get<std::string>();
  }
  if (text_type == "t5") {
    c.text_config = T5Config::from_json(*t, source, "text_config.");
  } else if (text_type == "llama") {
    c.text_config = LlamaConfig::from_json(*t, source, "text_config.");
  } else if (text_type == "opt") {
    c.text_config = OPTConfig::from_json(*t, source, "text_config.");
  } else {
    throw ConfigError(source + ": text_config.model_type: unsupported language model type " +
                      (quoted)(text_type) + ", only \"t5\", \"llama\" and \"opt\" are supported");
  }
  c.text_generation_attributes = json::object();
  for (const char* key : kGenerationAttributeKeys)
    if (auto it = t->find(key); it != t->end()) c.text_generation_attributes[key] = *it;
  GenerationConfig::from_json(c.text_generation_attributes, source, "text_config.");  // type check

  r.get("num_query_tokens", c.num_query_tokens);
  r.get_strings("architectures", c.architectures);
  // Keys HF recomputes in __init__: type-checked, then overwritten by finalize().
  {
    bool b = false;
    double d = 0.0;
    r.get("use_decoder_only_language_model", b);
    r.get("tie_word_embeddings", b);
    r.get("is_encoder_decoder", b);
    r.get("initializer_factor", d);
    r.get("initializer_range", d);
  }
  c.finalize();
  c.validate(source);
  return c;
}

InstructBlipConfig InstructBlipConfig::from_json_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

InstructBlipConfig InstructBlipConfig::from_vision_qformer_text_configs(const VisionConfig& vision,
                                                                        const QFormerConfig& qformer,
                                                                        const T5Config& text,
                                                                        std::int64_t num_query_tokens) {
  InstructBlipConfig c;
  c.vision_config = vision;
  c.qformer_config = qformer;
  c.text_config = text;
  c.num_query_tokens = num_query_tokens;
  c.finalize();
  c.validate("from_vision_qformer_text_configs");
  return c;
}

InstructBlipConfig InstructBlipConfig::from_vision_qformer_text_configs(const VisionConfig& vision,
                                                                        const QFormerConfig& qformer,
                                                                        const LlamaConfig& text,
                                                                        std::int64_t num_query_tokens) {
  InstructBlipConfig c;
  c.vision_config = vision;
  c.qformer_config = qformer;
  c.text_config = text;
  c.num_query_tokens = num_query_tokens;
  c.finalize();
  c.validate("from_vision_qformer_text_configs");
  return c;
}

InstructBlipConfig InstructBlipConfig::from_vision_qformer_text_configs(const VisionConfig& vision,
                                                                        const QFormerConfig& qformer,
                                                                        const OPTConfig& text,
                                                                        std::int64_t num_query_tokens) {
  InstructBlipConfig c;
  c.vision_config = vision;
  c.qformer_config = qformer;
  c.text_config = text;
  c.num_query_tokens = num_query_tokens;
  c.finalize();
  c.validate("from_vision_qformer_text_configs");
  return c;
}

InstructBlipConfig InstructBlipConfig::as_blip2() const {
  InstructBlipConfig c = *this;
  c.model_type = "blip-2";
  c.finalize();
  return c;
}

json InstructBlipConfig::to_json() const {
  json text = std::visit([](const auto& t) { return t.to_json(); }, text_config);
  for (const auto& item : text_generation_attributes.items()) text[item.key()] = item.value();
  return json{{"model_type", model_type},
              {"vision_config", vision_config.to_json()},
              {"qformer_config", qformer_config.to_json()},
              {"text_config", std::move(text)},
              {"num_query_tokens", num_query_tokens},
              {"use_decoder_only_language_model", use_decoder_only_language_model},
              {"initializer_factor", initializer_factor},
              {"initializer_range", initializer_range},
              {"tie_word_embeddings", tie_word_embeddings},
              {"is_encoder_decoder", is_encoder_decoder},
              {"architectures", strings_to_json(architectures)}};
}

bool InstructBlipConfig::operator==(const InstructBlipConfig& o) const {
  auto t = [](const InstructBlipConfig& c) {
    return std::tie(c.model_type, c.vision_config, c.qformer_config, c.text_config, c.num_query_tokens,
                    c.use_decoder_only_language_model, c.initializer_factor, c.initializer_range,
                    c.tie_word_embeddings, c.is_encoder_decoder, c.architectures,
                    c.text_generation_attributes);
  };
  return t(*this) == t(o);
}

}  // namespace instructblip

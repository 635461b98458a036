// Reading a checkpoint's tokenizer files the way transformers 4.36.2's from_pretrained does
// (tokenizer_config.json; special_tokens_map.json and added_tokens.json when the config has no
// "added_tokens_decoder"), and the AutoTokenizer-like factory.
#include <filesystem>

#include "../internal/json_depth.hpp"
#include <fstream>
#include <iterator>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "instructblip/core/error.hpp"
#include "instructblip/processing/tokenizer.hpp"

namespace instructblip {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using detail::kMaxJsonDepth;
using detail::nested_deeper_than;

// nullopt when the file does not exist; IoError if it exists but cannot be read, FormatError if
// it is not JSON, ConfigError if it is not a JSON object.
std::optional<json> read_json_object(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError("cannot open '" + path.string() + "'");
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw IoError("cannot read '" + path.string() + "'");
  json j;
  try {
    j = json::parse(bytes);
  } catch (const json::exception& e) {
    throw FormatError("cannot parse '" + path.string() + "' as JSON: " + e.what());
  }
  if (!j.is_object()) throw ConfigError("'" + path.string() + "' must hold a JSON object");
  // The values are copied and dump()ed into error messages, both recursive in nlohmann::json: a
  // file of "[[[[...]]]]" a few hundred thousand levels deep would overflow the stack.
  if (nested_deeper_than(j, kMaxJsonDepth))
    throw FormatError("'" + path.string() + "' nests arrays / objects more than " + std::to_string(kMaxJsonDepth) +
                      " levels deep");
  return j;
}

std::string where(const fs::path& file, const std::string& key) { return "'" + key + "' in '" + file.string() + "'"; }

bool get_bool(const json& v, const fs::path& file, const std::string& key) {
  if (!v.is_boolean()) throw ConfigError(where(file, key) + " must be true or false, got " + v.dump());
  return v.get<bool>();
}

std::optional<bool> get_opt_bool(const json& v, const fs::path& file, const std::string& key) {
  if (v.is_null()) return std::nullopt;
  return get_bool(v, file, key);
}

Side get_side(const json& v, const fs::path& file, const std::string& key) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "left") return Side::Left;
    if (s == "right") return Side::Right;
  }
  throw ConfigError(where(file, key) + " must be \"left\" or \"right\", got " + v.dump());
}

// An AddedToken from a JSON string or {"content": ..., "lstrip": ..., ...} object.
AddedToken parse_token(const json& v, const fs::path& file, const std::string& key, bool force_special) {
  if (v.is_string()) {
    AddedToken t = AddedToken::special_token(v.get<std::string>());
    check_utf8(t.content, "token");
    return t;
  }
  if (!v.is_object()) throw ConfigError(where(file, key) + " must be a string or a token object, got " + v.dump());
  auto c = v.find("content");
  if (c == v.end() || !c->is_string()) throw ConfigError(where(file, key) + " has no string \"content\"");
  AddedToken t;
  t.content = c->get<std::string>();
  bool special = false;
  if (auto s = v.find("special"); s != v.end()) special = get_bool(*s, file, key + ".special");
  if (force_special) special = true;
  t.special = special;
  t.normalized = !special;
  if (auto x = v.find("normalized"); x != v.end()) t.normalized = get_bool(*x, file, key + ".normalized");
  if (auto x = v.find("lstrip"); x != v.end()) t.lstrip = get_bool(*x, file, key + ".lstrip");
  if (auto x = v.find("rstrip"); x != v.end()) t.rstrip = get_bool(*x, file, key + ".rstrip");
  if (auto x = v.find("single_word"); x != v.end()) t.single_word = get_bool(*x, file, key + ".single_word");
  return t;
}

std::vector<AddedToken> parse_token_list(const json& v, const fs::path& file, const std::string& key, bool force_special) {
  std::vector<AddedToken> out;
  if (v.is_null()) return out;
  if (!v.is_array()) throw ConfigError(where(file, key) + " must be a list of tokens, got " + v.dump());
  for (std::size_t i = 0; i < v.size(); ++i)
    out.push_back(parse_token(v[i], file, key + "[" + std::to_string(i) + "]", force_special));
  return out;
}

const std::string kClasses[] = {"T5Tokenizer", "LlamaTokenizer", "BertTokenizer", "GPT2Tokenizer"};

std::string canonical_class(const std::string& name, const fs::path& file) {
  std::string base = name;
  const std::string fast = "Fast";
  if (base.size() > fast.size() && base.compare(base.size() - fast.size(), fast.size(), fast) == 0)
    base.resize(base.size() - fast.size());
  for (const auto& c : kClasses)
    if (base == c) return c;
  throw ConfigError("unsupported tokenizer_class \"" + name + "\" in '" + file.string() +
                    "' (supported: T5Tokenizer, LlamaTokenizer, BertTokenizer, GPT2Tokenizer)");
}

void check_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) throw IoError("tokenizer directory not found: '" + dir + "'");
  if (!fs::is_directory(dir, ec)) throw IoError("not a directory: '" + dir + "'");
}

}  // namespace

std::string detect_tokenizer_class(const std::string& dir) {
  check_dir(dir);
  const fs::path cfg_path = fs::path(dir) / "tokenizer_config.json";
  if (auto cfg = read_json_object(cfg_path)) {
    auto it = cfg->find("tokenizer_class");
    if (it != cfg->end() && !it->is_null()) {
      if (!it->is_string()) throw ConfigError(where(cfg_path, "tokenizer_class") + " must be a string");
      return canonical_class(it->get<std::string>(), cfg_path);
    }
  }
  std::error_code ec;
  if (fs::exists(fs::path(dir) / "spiece.model", ec)) return "T5Tokenizer";
  if (fs::exists(fs::path(dir) / "tokenizer.model", ec)) return "LlamaTokenizer";
  if (fs::exists(fs::path(dir) / "vocab.json", ec) && fs::exists(fs::path(dir) / "merges.txt", ec))
    return "GPT2Tokenizer";
  if (fs::exists(fs::path(dir) / "vocab.txt", ec)) return "BertTokenizer";
  throw IoError("no tokenizer in '" + dir +
                "': no tokenizer_class in tokenizer_config.json and none of spiece.model, tokenizer.model, "
                "vocab.json + merges.txt, vocab.txt");
}

TokenizerConfig load_tokenizer_config(const std::string& dir, const std::string& tokenizer_class) {
  check_dir(dir);
  const fs::path cfg_path = fs::path(dir) / "tokenizer_config.json";
  const std::string cls = canonical_class(tokenizer_class, cfg_path);
  TokenizerConfig cfg = cls == "T5Tokenizer"      ? T5Tokenizer::default_config()
                        : cls == "LlamaTokenizer" ? LlamaTokenizer::default_config()
                        : cls == "GPT2Tokenizer"  ? GPT2Tokenizer::default_config()
                                                  : BertTokenizer::default_config();
  const json conf = read_json_object(cfg_path).value_or(json::object());

  // Special tokens given in tokenizer_config.json.
  for (std::size_t r = 0; r < kNumSpecialTokenRoles; ++r) {
    const std::string key = special_token_attribute(SpecialToken(r));
    auto it = conf.find(key);
    if (it == conf.end()) continue;
    if (it->is_null()) cfg.special(SpecialToken(r)).reset();
    else cfg.special(SpecialToken(r)) = parse_token(*it, cfg_path, key, false);
  }
  if (auto it = conf.find("additional_special_tokens"); it != conf.end())
    cfg.additional_special_tokens = parse_token_list(*it, cfg_path, "additional_special_tokens", false);

  std::map<std::string, AddedToken> by_content;
  if (auto it = conf.find("added_tokens_decoder"); it != conf.end() && !it->is_null()) {
    if (!it->is_object()) throw ConfigError(where(cfg_path, "added_tokens_decoder") + " must be an object");
    for (auto e = it->begin(); e != it->end(); ++e) {
      std::int64_t id = 0;
      std::size_t used = 0;
      try {
        id = std::stoll(e.key(), &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != e.key().size() || id < 0)
        throw ConfigError(where(cfg_path, "added_tokens_decoder") + " has a key that is not a token id: \"" + e.key() + "\"");
      AddedToken t = parse_token(e.value(), cfg_path, "added_tokens_decoder." + e.key(), false);
      if (e.value().is_string()) t = AddedToken(e.value().get<std::string>());
      cfg.added_tokens_decoder[id] = t;
      by_content[t.content] = t;
    }
  } else {
    // Legacy checkpoints: special_tokens_map.json, then added_tokens.json.
    const fs::path map_path = fs::path(dir) / "special_tokens_map.json";
    if (auto m = read_json_object(map_path)) {
      for (auto e = m->begin(); e != m->end(); ++e) {
        if (e.key() == "additional_special_tokens") {
          for (auto& t : parse_token_list(e.value(), map_path, e.key(), true)) {
            bool present = false;
            for (const auto& a : cfg.additional_special_tokens) present = present || a.content == t.content;
            if (!present) cfg.additional_special_tokens.push_back(t);
          }
          continue;
        }
        for (std::size_t r = 0; r < kNumSpecialTokenRoles; ++r) {
          if (e.key() != special_token_attribute(SpecialToken(r))) continue;
          if (e.value().is_null()) cfg.special(SpecialToken(r)).reset();
          else cfg.special(SpecialToken(r)) = parse_token(e.value(), map_path, e.key(), true);
        }
      }
    }
    const fs::path added_path = fs::path(dir) / "added_tokens.json";
    if (auto a = read_json_object(added_path)) {
      std::unordered_set<std::string> specials;
      for (std::size_t r = 0; r < kNumSpecialTokenRoles; ++r)
        if (const auto& t = cfg.special(SpecialToken(r))) specials.insert(t->content);
      for (const auto& t : cfg.additional_special_tokens) specials.insert(t.content);
      for (auto e = a->begin(); e != a->end(); ++e) {
        if (!e.value().is_number_integer() || e.value().get<std::int64_t>() < 0)
          throw ConfigError(where(added_path, e.key()) + " must be a non-negative token id, got " + e.value().dump());
        check_utf8(e.key(), "added token");
        const bool special = specials.count(e.key()) != 0;
        AddedToken t(e.key(), special);
        cfg.added_tokens_decoder[e.value().get<std::int64_t>()] = t;
        by_content[t.content] = t;
      }
    }
  }
  // Special tokens take the flags of the added token with the same content.
  for (std::size_t r = 0; r < kNumSpecialTokenRoles; ++r) {
    auto& t = cfg.special(SpecialToken(r));
    if (!t) continue;
    auto it = by_content.find(t->content);
    if (it != by_content.end()) t = it->second;
  }

  // Settings.
  for (auto e = conf.begin(); e != conf.end(); ++e) {
    const std::string& key = e.key();
    const json& v = e.value();
    if (key == "padding_side") {
      cfg.padding_side = get_side(v, cfg_path, key);
    } else if (key == "truncation_side") {
      cfg.truncation_side = get_side(v, cfg_path, key);
    } else if (key == "model_max_length") {
      if (v.is_null()) continue;
      if (v.is_number_integer() || v.is_number_unsigned()) {
        if (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t(kUnboundedLength))
          cfg.model_max_length = kUnboundedLength;
        else if (v.get<std::int64_t>() < 0)
          throw ConfigError(where(cfg_path, key) + " must be >= 0, got " + v.dump());
        else
          cfg.model_max_length = v.get<std::int64_t>();
      } else if (v.is_number_float()) {
        const double d = v.get<double>();
        if (!(d >= 0)) throw ConfigError(where(cfg_path, key) + " must be >= 0, got " + v.dump());
        cfg.model_max_length = d >= 9.2e18 ? kUnboundedLength : std::int64_t(d);
      } else {
        throw ConfigError(where(cfg_path, key) + " must be a number, got " + v.dump());
      }
    } else if (key == "clean_up_tokenization_spaces") {
      cfg.clean_up_tokenization_spaces = get_opt_bool(v, cfg_path, key);
    } else if (key == "legacy" && (cls == "T5Tokenizer" || cls == "LlamaTokenizer")) {
      cfg.legacy = get_opt_bool(v, cfg_path, key);
    } else if (key == "extra_ids" && cls == "T5Tokenizer") {
      if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() > kMaxT5ExtraIds)
        throw ConfigError(where(cfg_path, key) + " must be an integer between 0 and " +
                          std::to_string(kMaxT5ExtraIds) + ", got " + v.dump());
      cfg.extra_ids = int(v.get<std::int64_t>());
    } else if (key == "add_bos_token" && (cls == "LlamaTokenizer" || cls == "GPT2Tokenizer")) {
      cfg.add_bos_token = get_bool(v, cfg_path, key);
    } else if (key == "add_eos_token" && cls == "LlamaTokenizer") {
      cfg.add_eos_token = get_bool(v, cfg_path, key);
    } else if (key == "add_prefix_space" && cls == "GPT2Tokenizer") {
      cfg.add_prefix_space = get_bool(v, cfg_path, key);
    } else if (key == "errors" && cls == "GPT2Tokenizer") {
      if (!v.is_string()) throw ConfigError(where(cfg_path, key) + " must be a string, got " + v.dump());
      cfg.errors = v.get<std::string>();
      if (cfg.errors != "replace" && cfg.errors != "ignore" && cfg.errors != "strict")
        throw ConfigError(where(cfg_path, key) + " must be \"replace\", \"ignore\" or \"strict\", got " + v.dump());
    } else if (cls == "BertTokenizer") {
      if (key == "do_lower_case") cfg.do_lower_case = get_bool(v, cfg_path, key);
      else if (key == "do_basic_tokenize") cfg.do_basic_tokenize = get_bool(v, cfg_path, key);
      else if (key == "tokenize_chinese_chars") cfg.tokenize_chinese_chars = get_bool(v, cfg_path, key);
      else if (key == "strip_accents") cfg.strip_accents = get_opt_bool(v, cfg_path, key);
      else if (key == "never_split") {
        cfg.never_split.clear();
        if (v.is_null()) continue;
        if (!v.is_array()) throw ConfigError(where(cfg_path, key) + " must be a list of strings");
        for (const auto& s : v) {
          if (!s.is_string()) throw ConfigError(where(cfg_path, key) + " must be a list of strings");
          cfg.never_split.push_back(s.get<std::string>());
        }
      }
    }
  }
  return cfg;
}

std::unique_ptr<Tokenizer> Tokenizer::from_pretrained(const std::string& dir) {
  const std::string cls = detect_tokenizer_class(dir);
  if (cls == "T5Tokenizer") return T5Tokenizer::from_pretrained(dir);
  if (cls == "LlamaTokenizer") return LlamaTokenizer::from_pretrained(dir);
  if (cls == "GPT2Tokenizer") return GPT2Tokenizer::from_pretrained(dir);
  return BertTokenizer::from_pretrained(dir);
}

}  // namespace instructblip

// Tokenizer: the parts of transformers' PreTrainedTokenizer shared by every tokenizer (added
// tokens, the added-token split, special tokens, decode grouping, padding, truncation), the
// Python-str Unicode helpers, and BatchEncoding.
#include <algorithm>
#include <cstring>
#include <sstream>

#include <utf8proc.h>

#include "instructblip/core/error.hpp"
#include "instructblip/processing/tokenizer.hpp"
#include "../internal/text.hpp"

namespace instructblip {

// ---------------------------------------------------------------------------------------------
// UTF-8 and Python str helpers
// ---------------------------------------------------------------------------------------------

namespace text {

std::size_t next_code_point(std::string_view s, std::size_t i, char32_t* cp) {
  if (i >= s.size()) return 0;
  utf8proc_int32_t c = 0;
  // utf8proc_iterate rejects truncated and overlong forms, surrogates and values above U+10FFFF.
  const utf8proc_ssize_t k = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data()) + i,
                                              utf8proc_ssize_t(s.size() - i), &c);
  if (k <= 0) return 0;
  *cp = char32_t(c);
  return std::size_t(k);
}

std::size_t valid_utf8_prefix(std::string_view s) {
  std::size_t i = 0;
  char32_t cp;
  while (i < s.size()) {
    const std::size_t k = next_code_point(s, i, &cp);
    if (k == 0) break;
    i += k;
  }
  return i;
}

}  // namespace text

void check_utf8(std::string_view text, const char* what) {
  const std::size_t i = text::valid_utf8_prefix(text);
  if (i == text.size()) return;
  const auto c = static_cast<unsigned char>(text[i]);
  // A lead byte whose sequence the end of the text cuts off.
  const std::size_t len = c >= 0xC2 && c <= 0xF4 ? std::size_t(utf8proc_utf8class[c]) : 0;
  const bool truncated = len != 0 && i + len > text.size();
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02X", unsigned(c));
  std::ostringstream msg;
  msg << "invalid UTF-8 in " << what << " at byte offset " << i << " (byte " << hex << ")";
  if (truncated) msg << ": truncated multi-byte sequence";
  throw InvalidArgument(msg.str());
}

namespace text {

std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    char32_t cp = 0;
    const std::size_t k = next_code_point(s, i, &cp);
    if (k == 0) throw InvalidArgument("invalid UTF-8 in text at byte offset " + std::to_string(i));
    out.push_back(cp);
    i += k;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  utf8proc_uint8_t buf[4];
  const utf8proc_ssize_t n = utf8proc_encode_char(utf8proc_int32_t(cp), buf);
  out.append(reinterpret_cast<const char*>(buf), std::size_t(n));
}

std::string encode_utf8(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : s) append_utf8(out, cp);
  return out;
}

bool is_python_space(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F);
  const utf8proc_property_t* p = utf8proc_get_property(utf8proc_int32_t(cp));
  return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
         p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

namespace {
// Decodes the code point starting at s[i] (valid UTF-8: checked where the text came in), returning
// its byte length (an invalid byte counts as one character U+FFFD, so loops always advance).
std::size_t next_cp(std::string_view s, std::size_t i, char32_t* cp) {
  const std::size_t k = next_code_point(s, i, cp);
  if (k != 0) return k;
  *cp = 0xFFFD;
  return 1;
}
// Start of the code point that ends at byte `end` (exclusive).
std::size_t prev_cp_start(std::string_view s, std::size_t end) {
  std::size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}
}  // namespace

std::string_view lstrip(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    char32_t cp;
    std::size_t k = next_cp(s, i, &cp);
    if (!is_python_space(cp)) break;
    i += k;
  }
  return s.substr(i);
}

std::string_view rstrip(std::string_view s) {
  std::size_t end = s.size();
  while (end > 0) {
    std::size_t b = prev_cp_start(s, end);
    char32_t cp;
    next_cp(s, b, &cp);
    if (!is_python_space(cp)) break;
    end = b;
  }
  return s.substr(0, end);
}

std::string_view strip(std::string_view s) { return rstrip(lstrip(s)); }

std::vector<std::string> split_whitespace(std::string_view s) {
  std::vector<std::string> out;
  std::size_t i = 0, start = 0;
  bool in_word = false;
  while (i < s.size()) {
    char32_t cp;
    std::size_t k = next_cp(s, i, &cp);
    if (is_python_space(cp)) {
      if (in_word) out.emplace_back(s.substr(start, i - start));
      in_word = false;
    } else if (!in_word) {
      in_word = true;
      start = i;
    }
    i += k;
  }
  if (in_word) out.emplace_back(s.substr(start));
  return out;
}

void append_lower(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp));
  } else if (cp == 0x130) {  // the one unconditional multi-character lower-case mapping
    out.push_back('i');
    append_utf8(out, 0x307);
  } else {
    append_utf8(out, char32_t(utf8proc_tolower(utf8proc_int32_t(cp))));
  }
}

namespace {
bool is_cased(char32_t cp) {
  const auto c = utf8proc_category(utf8proc_int32_t(cp));
  return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT ||
         utf8proc_islower(utf8proc_int32_t(cp)) || utf8proc_isupper(utf8proc_int32_t(cp));
}
bool is_case_ignorable(char32_t cp) {
  switch (utf8proc_category(utf8proc_int32_t(cp))) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
      return true;
    default:
      break;
  }
  // Word_Break MidLetter / MidNumLet / Single_Quote.
  switch (cp) {
    case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x55F: case 0x5F4: case 0x2018:
    case 0x2019: case 0x2024: case 0x2027: case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07:
    case 0xFF0E: case 0xFF1A:
      return true;
    default:
      return false;
  }
}
}  // namespace

std::string lower(std::string_view s) {
  const std::u32string cps = decode_utf8(s);
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < cps.size(); ++i) {
    if (cps[i] == 0x3A3) {
      // Final_Sigma: a cased letter before (case-ignorables skipped) and none after.
      std::size_t j = i;
      while (j > 0 && is_case_ignorable(cps[j - 1])) --j;
      const bool before = j > 0 && is_cased(cps[j - 1]);
      std::size_t k = i + 1;
      while (k < cps.size() && is_case_ignorable(cps[k])) ++k;
      const bool after = k < cps.size() && is_cased(cps[k]);
      append_utf8(out, before && !after ? 0x3C2 : 0x3C3);
      continue;
    }
    append_lower(out, cps[i]);
  }
  return out;
}

}  // namespace text

// ---------------------------------------------------------------------------------------------
// Small public helpers
// ---------------------------------------------------------------------------------------------

const char* side_name(Side side) { return side == Side::Left ? "left" : "right"; }

const char* special_token_attribute(SpecialToken role) {
  static const char* names[kNumSpecialTokenRoles] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                                     "pad_token", "cls_token", "mask_token"};
  return names[std::size_t(role)];
}

std::optional<AddedToken>& TokenizerConfig::special(SpecialToken role) {
  switch (role) {
    case SpecialToken::Bos: return bos_token;
    case SpecialToken::Eos: return eos_token;
    case SpecialToken::Unk: return unk_token;
    case SpecialToken::Sep: return sep_token;
    case SpecialToken::Pad: return pad_token;
    case SpecialToken::Cls: return cls_token;
    case SpecialToken::Mask: return mask_token;
  }
  return bos_token;
}

const std::optional<AddedToken>& TokenizerConfig::special(SpecialToken role) const {
  return const_cast<TokenizerConfig*>(this)->special(role);
}

std::size_t BatchEncoding::max_length() const {
  std::size_t m = 0;
  for (const auto& r : input_ids) m = std::max(m, r.size());
  return m;
}

bool BatchEncoding::is_rectangular() const {
  for (const auto& r : input_ids)
    if (r.size() != input_ids.front().size()) return false;
  return true;
}

Tensor ids_to_tensor(const std::vector<std::vector<std::int64_t>>& rows, const std::string& what) {
  std::size_t cols = rows.empty() ? 0 : rows.front().size();
  std::vector<std::int64_t> flat;
  flat.reserve(rows.size() * cols);
  for (const auto& r : rows) {
    if (r.size() != cols) throw InvalidArgument("rows of " + what + " differ in length");
    flat.insert(flat.end(), r.begin(), r.end());
  }
  return Tensor::from_vector({std::int64_t(rows.size()), std::int64_t(cols)}, flat);
}

namespace {
Tensor encoding_tensor(const std::vector<std::vector<std::int64_t>>& rows, const char* what) {
  try {
    return ids_to_tensor(rows, what);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string("BatchEncoding: ") + e.what() + "; encode with padding=true to get a tensor");
  }
}
}  // namespace

Tensor BatchEncoding::input_ids_tensor() const { return encoding_tensor(input_ids, "input_ids"); }
Tensor BatchEncoding::attention_mask_tensor() const { return encoding_tensor(attention_mask, "attention_mask"); }

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

Tokenizer::~Tokenizer() = default;

Tokenizer::Tokenizer(const TokenizerConfig& config, bool default_clean_up)
    : padding_side_(config.padding_side),
      truncation_side_(config.truncation_side),
      model_max_length_(config.model_max_length),
      clean_up_tokenization_spaces_(config.clean_up_tokenization_spaces.value_or(default_clean_up)) {
  for (std::size_t r = 0; r < kNumSpecialTokenRoles; ++r) special_[r] = config.special(SpecialToken(r));
  additional_special_ = config.additional_special_tokens;
}

void Tokenizer::finish_init(const TokenizerConfig& config) {
  for (const auto& [id, tok] : config.added_tokens_decoder) {
    if (id < 0) throw ConfigError("added token '" + tok.content + "' has a negative id " + std::to_string(id));
    check_utf8(tok.content, "added token");
    added_decoder_[id] = tok;
  }
  added_encoder_.clear();
  for (const auto& [id, tok] : added_decoder_) added_encoder_[tok.content] = id;
  refresh_special_cache();

  // The special tokens missing from the added tokens, role order then additional ones.
  std::vector<AddedToken> missing;
  std::unordered_set<std::string> seen;
  auto consider = [&](const AddedToken& t) {
    if (!seen.insert(t.content).second) return;
    if (!added_encoder_.count(t.content)) missing.push_back(t);
  };
  for (const auto& s : special_)
    if (s) consider(*s);
  for (const auto& t : additional_special_) consider(t);
  add_tokens(missing, /*special_tokens=*/true);
}

std::int64_t Tokenizer::vocab_lookup(std::string_view token, bool* found) const {
  auto it = added_encoder_.find(std::string(token));
  if (it != added_encoder_.end()) {
    *found = true;
    return it->second;
  }
  if (base_vocab_contains(token)) {
    *found = true;
    return base_token_to_id(token);
  }
  *found = false;
  return -1;
}

int Tokenizer::add_tokens(const std::vector<AddedToken>& tokens, bool special_tokens) {
  const std::int64_t new_idx = size();
  int added = 0;
  for (AddedToken tok : tokens) {
    if (tok.content.empty()) continue;
    check_utf8(tok.content, "added token");
    if (special_tokens) tok.special = true;
    if (!tok.special && tok.normalized && lowercases_input()) {
      std::string lowered;
      for (char32_t cp : text::decode_utf8(tok.content)) text::append_lower(lowered, cp);
      tok.content = lowered;
    }
    bool found = false;
    std::int64_t index = vocab_lookup(tok.content, &found);
    if (!found) index = new_idx + added++;
    if (tok.special && !all_special_token_set_.count(tok.content)) {
      additional_special_.push_back(tok);
      all_special_tokens_.push_back(tok.content);
      all_special_token_set_.insert(tok.content);
    }
    added_decoder_[index] = tok;
    added_encoder_[tok.content] = index;
  }
  refresh_special_cache();
  return added;
}

int Tokenizer::add_special_token(SpecialToken role, const AddedToken& token) {
  AddedToken t = token;
  t.special = true;
  special_[std::size_t(role)] = t;
  refresh_special_cache();
  return add_tokens({t}, /*special_tokens=*/true);
}

std::optional<std::string> Tokenizer::token_str(SpecialToken role) const {
  const auto& t = special_[std::size_t(role)];
  if (!t) return std::nullopt;
  return t->content;
}

std::optional<std::int64_t> Tokenizer::special_token_id(SpecialToken role) const {
  const auto& t = special_[std::size_t(role)];
  if (!t) return std::nullopt;
  return convert_token_to_id(t->content);
}

bool Tokenizer::is_special_token(std::string_view token) const {
  return all_special_token_set_.count(std::string(token)) != 0;
}

void Tokenizer::refresh_special_cache() {
  all_special_tokens_.clear();
  all_special_token_set_.clear();
  auto push = [&](const std::string& s) {
    if (all_special_token_set_.insert(s).second) all_special_tokens_.push_back(s);
  };
  for (const auto& s : special_)
    if (s) push(s->content);
  for (const auto& t : additional_special_) push(t.content);

  all_special_ids_.clear();
  all_special_id_set_.clear();
  for (const auto& s : all_special_tokens_) {
    bool found = false;
    std::int64_t id = vocab_lookup(s, &found);
    if (!found) {
      try {
        id = base_token_to_id(s);
      } catch (const Error&) {
        continue;
      }
    }
    all_special_ids_.push_back(id);
    all_special_id_set_.insert(id);
  }

  for (auto& v : added_by_first_byte_) v.clear();
  for (const auto& [content, id] : added_encoder_) {
    (void)id;
    if (!content.empty()) added_by_first_byte_[static_cast<unsigned char>(content[0])].push_back(content);
  }
  for (auto& v : added_by_first_byte_)
    std::sort(v.begin(), v.end(), [](const std::string& a, const std::string& b) {
      return a.size() != b.size() ? a.size() > b.size() : a < b;
    });

  legacy_added_.clear();
  for (const auto& [content, id] : added_encoder_) {
    (void)id;
    if (!all_special_token_set_.count(content)) legacy_added_.insert(content);
  }
  const std::int64_t base_size = vocab_size();
  for (const auto& t : additional_special_) {
    try {
      if (convert_token_to_id(t.content) >= base_size) legacy_added_.insert(t.content);
    } catch (const Error&) {
    }
  }

  lowercase_keep_.clear();
  for (const auto& s : all_special_tokens_)
    if (!s.empty()) lowercase_keep_.push_back(s);
  for (const auto& [id, tok] : added_decoder_) {
    (void)id;
    if (!tok.special && tok.normalized && !tok.content.empty()) lowercase_keep_.push_back(tok.content);
  }
  lowercase_keep_first_.fill(false);
  for (const auto& s : lowercase_keep_) lowercase_keep_first_[static_cast<unsigned char>(s[0])] = true;
}

std::int64_t Tokenizer::size() const {
  std::int64_t n = base_vocab_distinct_size();
  for (const auto& [content, id] : added_encoder_) {
    (void)id;
    if (!base_vocab_contains(content)) ++n;
  }
  return n;
}

// ---- encoding -------------------------------------------------------------------------------

std::string Tokenizer::lowercase_outside_special(std::string_view s) const {
  // re.sub(r"(special|...)|(.+?)", lambda m: m.groups()[0] or m.groups()[1].lower(), text)
  std::string out;
  out.reserve(s.size() + 8);
  std::size_t i = 0;
  while (i < s.size()) {
    bool kept = false;
    if (lowercase_keep_first_[static_cast<unsigned char>(s[i])]) {
      for (const auto& tok : lowercase_keep_) {  // regex alternation order: the first match wins
        if (s.compare(i, tok.size(), tok) == 0) {
          out.append(tok);
          i += tok.size();
          kept = true;
          break;
        }
      }
    }
    if (kept) continue;
    char32_t cp = 0;
    std::size_t len = text::next_code_point(s, i, &cp);
    if (len == 0) {  // checked on input; kept byte for byte should it ever happen
      out.push_back(s[i++]);
      continue;
    }
    if (cp == '\n') out.push_back('\n');  // "." does not match a newline; it stays as it is
    else text::append_lower(out, cp);
    i += len;
  }
  return out;
}

std::vector<std::string> Tokenizer::split_on_added_tokens(std::string_view s) const {
  // Leftmost-longest matching of the added tokens (tokenization_utils.Trie.split); the text
  // between matches is kept, empty pieces are dropped.
  std::vector<std::string> parts;
  std::size_t start = 0, i = 0;
  while (i < s.size()) {
    const auto& cands = added_by_first_byte_[static_cast<unsigned char>(s[i])];
    const std::string* match = nullptr;
    for (const auto& c : cands) {
      if (s.compare(i, c.size(), c) == 0) {
        match = &c;
        break;
      }
    }
    if (match) {
      if (i > start) parts.emplace_back(s.substr(start, i - start));
      parts.push_back(*match);
      i += match->size();
      start = i;
    } else {
      ++i;
    }
  }
  if (start < s.size()) parts.emplace_back(s.substr(start));
  return parts;
}

std::vector<std::string> Tokenizer::base_tokenize(std::string_view input) const {
  std::string lowered;
  std::string_view s = input;
  if (lowercases_input()) {
    lowered = lowercase_outside_special(input);
    s = lowered;
  }
  std::vector<std::string> parts = split_on_added_tokens(s);
  for (std::size_t i = 0; i < parts.size(); ++i) {
    auto it = added_encoder_.find(parts[i]);
    if (it == added_encoder_.end()) continue;
    auto dit = added_decoder_.find(it->second);
    if (dit == added_decoder_.end()) continue;
    const AddedToken& tok = dit->second;
    // As transformers: `left` / `right` are the neighbours before any stripping.
    const std::optional<std::string> left = i > 0 ? std::optional<std::string>(parts[i - 1]) : std::nullopt;
    const std::optional<std::string> right =
        i + 1 < parts.size() ? std::optional<std::string>(parts[i + 1]) : std::nullopt;
    if (tok.rstrip && right && !right->empty()) parts[i + 1] = std::string(text::lstrip(*right));
    if (tok.lstrip && left && !left->empty()) parts[i - 1] = std::string(text::rstrip(*left));
    if (tok.single_word && left && !left->empty() && left->back() != ' ') {
      parts[i - 1] += parts[i];
      parts[i].clear();
    } else if (tok.single_word && right && !right->empty() && right->front() != ' ') {
      parts[i] += *right;
      parts[i + 1].clear();
    }
  }
  std::vector<std::string> out;
  for (const auto& p : parts) {
    if (p.empty()) continue;
    if (added_encoder_.count(p)) {
      out.push_back(p);
    } else {
      std::vector<std::string> pieces = tokenize_chunk(p);
      out.insert(out.end(), std::make_move_iterator(pieces.begin()), std::make_move_iterator(pieces.end()));
    }
  }
  return out;
}

std::vector<std::string> Tokenizer::tokenize(std::string_view text) const {
  check_utf8(text);
  return tokenize_checked(text);
}

std::int64_t Tokenizer::convert_token_to_id(std::string_view token) const {
  auto it = added_encoder_.find(std::string(token));
  if (it != added_encoder_.end()) return it->second;
  return base_token_to_id(token);
}

std::vector<std::int64_t> Tokenizer::convert_tokens_to_ids(const std::vector<std::string>& tokens) const {
  std::vector<std::int64_t> ids;
  ids.reserve(tokens.size());
  for (const auto& t : tokens) ids.push_back(convert_token_to_id(t));
  return ids;
}

std::vector<std::int64_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<std::int64_t> ids = convert_tokens_to_ids(tokenize(text));
  if (add_special_tokens) ids = build_inputs_with_special_tokens(std::move(ids));
  return ids;
}

std::size_t Tokenizer::num_special_tokens_to_add() const { return build_inputs_with_special_tokens({}).size(); }

std::vector<std::int64_t> Tokenizer::truncate(std::vector<std::int64_t> ids, std::int64_t max_length) const {
  if (max_length < 0) throw InvalidArgument("truncation max_length must be >= 0, got " + std::to_string(max_length));
  const std::int64_t total = std::int64_t(ids.size()) + std::int64_t(num_special_tokens_to_add());
  if (total <= max_length) return ids;
  const std::int64_t remove = total - max_length;
  // Like transformers, a sequence too short to lose `remove` tokens is left as it is.
  if (std::int64_t(ids.size()) <= remove) return ids;
  if (truncation_side_ == Side::Left) ids.erase(ids.begin(), ids.begin() + remove);
  else ids.resize(ids.size() - std::size_t(remove));
  return ids;
}

BatchEncoding Tokenizer::pad(std::vector<std::vector<std::int64_t>> rows) const {
  auto pad_id = pad_token_id();
  if (!pad_id || *pad_id < 0)
    throw InvalidArgument(class_name() + " has no padding token: padding is impossible (set pad_token)");
  BatchEncoding out;
  std::size_t longest = 0;
  for (const auto& r : rows) longest = std::max(longest, r.size());
  out.input_ids.reserve(rows.size());
  out.attention_mask.reserve(rows.size());
  for (auto& r : rows) {
    const std::size_t n = r.size(), missing = longest - n;
    std::vector<std::int64_t> mask(longest, 1);
    if (padding_side_ == Side::Right) {
      r.insert(r.end(), missing, *pad_id);
      std::fill(mask.begin() + std::ptrdiff_t(n), mask.end(), 0);
    } else {
      r.insert(r.begin(), missing, *pad_id);
      std::fill(mask.begin(), mask.begin() + std::ptrdiff_t(missing), 0);
    }
    out.input_ids.push_back(std::move(r));
    out.attention_mask.push_back(std::move(mask));
  }
  return out;
}

BatchEncoding Tokenizer::encode_batch(const std::vector<std::string>& texts, bool padding, bool truncation,
                                      std::optional<std::int64_t> max_length, bool add_special_tokens) const {
  if (padding && (!pad_token_id() || *pad_token_id() < 0))
    throw InvalidArgument(class_name() + " has no padding token: padding=true is impossible (set pad_token)");
  bool limited = false;
  std::int64_t limit = 0;
  if (truncation || max_length) {
    limit = max_length ? *max_length : model_max_length_;
    limited = limit != kUnboundedLength;
    if (limited && limit < 0) throw InvalidArgument("truncation max_length must be >= 0, got " + std::to_string(limit));
  }
  std::vector<std::vector<std::int64_t>> rows;
  rows.reserve(texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    std::vector<std::int64_t> ids;
    try {
      ids = convert_tokens_to_ids(tokenize(texts[i]));
    } catch (const InvalidArgument& e) {
      throw InvalidArgument("text " + std::to_string(i) + " of the batch: " + e.what());
    }
    if (limited) {
      if (add_special_tokens) {
        ids = truncate(std::move(ids), limit);
      } else if (std::int64_t(ids.size()) > limit) {
        if (truncation_side_ == Side::Left) ids.erase(ids.begin(), ids.end() - limit);
        else ids.resize(std::size_t(limit));
      }
    }
    if (add_special_tokens) ids = build_inputs_with_special_tokens(std::move(ids));
    rows.push_back(std::move(ids));
  }
  if (padding) return pad(std::move(rows));
  BatchEncoding out;
  for (auto& r : rows) {
    out.attention_mask.emplace_back(r.size(), 1);
    out.input_ids.push_back(std::move(r));
  }
  return out;
}

// ---- decoding -------------------------------------------------------------------------------

std::string Tokenizer::convert_id_to_token(std::int64_t id) const {
  auto it = added_decoder_.find(id);
  if (it != added_decoder_.end()) return it->second.content;
  return base_id_to_token(id);
}

std::vector<std::string> Tokenizer::convert_ids_to_tokens(const std::vector<std::int64_t>& ids,
                                                          bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (std::int64_t id : ids) {
    if (skip_special_tokens && is_special_id(id)) continue;
    tokens.push_back(convert_id_to_token(id));
  }
  return tokens;
}

std::string Tokenizer::clean_up_tokenization(std::string s) {
  static const std::pair<const char*, const char*> rules[] = {
      {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : rules) {
    const std::size_t flen = std::strlen(from);
    std::string out;
    out.reserve(s.size());
    std::size_t pos = 0;
    while (true) {
      std::size_t hit = s.find(from, pos);
      if (hit == std::string::npos) break;
      out.append(s, pos, hit - pos);
      out.append(to);
      pos = hit + flen;
    }
    out.append(s, pos, std::string::npos);
    s.swap(out);
  }
  return s;
}

std::string Tokenizer::decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens,
                              std::optional<bool> clean_up_tokenization_spaces,
                              bool spaces_between_special_tokens) const {
  std::vector<std::string> tokens = convert_ids_to_tokens(ids, skip_special_tokens);
  // Tokens decoded on their own: added tokens that are not special, and additional special
  // tokens outside the base vocabulary (e.g. T5's <extra_id_N>).
  auto is_legacy_added = [&](const std::string& t) { return legacy_added_.count(t) != 0; };
  std::vector<std::string> sub_texts;
  std::vector<std::string> current;
  for (auto& t : tokens) {
    if (is_legacy_added(t)) {
      if (!current.empty()) {
        std::string s = convert_tokens_to_string(std::move(current));
        if (!s.empty()) sub_texts.push_back(std::move(s));
        current.clear();
      }
      sub_texts.push_back(std::move(t));
    } else {
      current.push_back(std::move(t));
    }
  }
  if (!current.empty()) sub_texts.push_back(convert_tokens_to_string(std::move(current)));
  std::string text;
  for (std::size_t i = 0; i < sub_texts.size(); ++i) {
    if (i > 0 && spaces_between_special_tokens) text.push_back(' ');
    text += sub_texts[i];
  }
  if (clean_up_tokenization_spaces.value_or(clean_up_tokenization_spaces_)) text = clean_up_tokenization(std::move(text));
  return text;
}

std::vector<std::string> Tokenizer::batch_decode(const std::vector<std::vector<std::int64_t>>& sequences,
                                                 bool skip_special_tokens,
                                                 std::optional<bool> clean_up_tokenization_spaces,
                                                 bool spaces_between_special_tokens) const {
  std::vector<std::string> out;
  out.reserve(sequences.size());
  for (const auto& s : sequences)
    out.push_back(decode(s, skip_special_tokens, clean_up_tokenization_spaces, spaces_between_special_tokens));
  return out;
}

std::vector<std::string> Tokenizer::batch_decode(const Tensor& sequences, bool skip_special_tokens,
                                                 std::optional<bool> clean_up_tokenization_spaces,
                                                 bool spaces_between_special_tokens) const {
  if (sequences.dtype() != DType::I64)
    throw InvalidArgument(std::string("batch_decode: sequences must be int64, got ") + dtype_name(sequences.dtype()));
  if (sequences.ndim() != 1 && sequences.ndim() != 2)
    throw InvalidArgument("batch_decode: sequences must be [batch, seq] or [seq], got " +
                          shape_str(sequences.shape()));
  const std::int64_t rows = sequences.ndim() == 2 ? sequences.dim(0) : 1;
  const std::int64_t cols = sequences.ndim() == 2 ? sequences.dim(1) : sequences.dim(0);
  const std::int64_t* data = sequences.data<std::int64_t>();
  std::vector<std::vector<std::int64_t>> seqs;
  for (std::int64_t r = 0; r < rows; ++r) seqs.emplace_back(data + r * cols, data + (r + 1) * cols);
  return batch_decode(seqs, skip_special_tokens, clean_up_tokenization_spaces, spaces_between_special_tokens);
}

}  // namespace instructblip

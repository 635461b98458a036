// BertTokenizer (transformers 4.36.2 slow tokenizer): BasicTokenizer + WordpieceTokenizer.
// Character classes, case mapping and normalisation come from utf8proc.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <utf8proc.h>

#include "instructblip/core/error.hpp"
#include "instructblip/processing/tokenizer.hpp"
#include "../internal/text.hpp"

namespace instructblip {

namespace {

utf8proc_category_t category(char32_t cp) { return utf8proc_category(utf8proc_int32_t(cp)); }

// tokenization_bert._is_whitespace
bool is_whitespace(char32_t cp) {
  if (cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r') return true;
  return category(cp) == UTF8PROC_CATEGORY_ZS;
}

// tokenization_bert._is_control: categories C* except \t \n \r.
bool is_control(char32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
      return true;
    default:
      return false;
  }
}

// tokenization_bert._is_punctuation: every non-alphanumeric ASCII character and categories P*.
bool is_punctuation(char32_t cp) {
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126))
    return true;
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_PC:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
      return true;
    default:
      return false;
  }
}

// The CJK Unified Ideographs blocks BasicTokenizer._is_chinese_char lists.
bool is_chinese_char(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// utf8proc_map on an explicit length (no NUL termination), returning a std::string.
std::string utf8proc_transform(std::string_view s, int options) {
  if (s.empty()) return {};
  utf8proc_uint8_t* out = nullptr;
  utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), utf8proc_ssize_t(s.size()),
                                    &out, utf8proc_option_t(options));
  if (n < 0) throw InvalidArgument(std::string("unicode normalisation failed: ") + utf8proc_errmsg(n));
  std::string r(reinterpret_cast<const char*>(out), std::size_t(n));
  std::free(out);
  return r;
}

std::string nfc(std::string_view s) { return utf8proc_transform(s, UTF8PROC_STABLE | UTF8PROC_COMPOSE); }

// BasicTokenizer._run_strip_accents: NFD, then drop the nonspacing marks (Mn).
std::string strip_accents(std::string_view s) {
  std::string d = utf8proc_transform(s, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
  std::string out;
  out.reserve(d.size());
  for (char32_t cp : text::decode_utf8(d))
    if (category(cp) != UTF8PROC_CATEGORY_MN) text::append_utf8(out, cp);
  return out;
}

std::vector<std::string> load_vocab_lines(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw IoError("WordPiece vocabulary not found: '" + path + "'");
  if (!std::filesystem::is_regular_file(path, ec))
    throw IoError("WordPiece vocabulary is not a regular file: '" + path + "'");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError("cannot open WordPiece vocabulary '" + path + "'");
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw IoError("cannot read WordPiece vocabulary '" + path + "'");
  try {
    check_utf8(bytes, "WordPiece vocabulary");
  } catch (const InvalidArgument& e) {
    throw FormatError(std::string(e.what()) + " ('" + path + "')");
  }
  // Python's universal newlines: \n, \r\n and \r all end a line; each line minus its end is a token.
  std::vector<std::string> lines;
  std::size_t start = 0, i = 0;
  while (i < bytes.size()) {
    if (bytes[i] == '\n' || bytes[i] == '\r') {
      lines.emplace_back(bytes, start, i - start);
      if (bytes[i] == '\r' && i + 1 < bytes.size() && bytes[i + 1] == '\n') ++i;
      start = ++i;
    } else {
      ++i;
    }
  }
  if (start < bytes.size()) lines.emplace_back(bytes, start, std::string::npos);
  if (lines.empty()) throw FormatError("WordPiece vocabulary '" + path + "' has no tokens");
  return lines;
}

}  // namespace

TokenizerConfig BertTokenizer::default_config() {
  TokenizerConfig c;
  c.unk_token = AddedToken::special_token("[UNK]");
  c.sep_token = AddedToken::special_token("[SEP]");
  c.pad_token = AddedToken::special_token("[PAD]");
  c.cls_token = AddedToken::special_token("[CLS]");
  c.mask_token = AddedToken::special_token("[MASK]");
  c.do_lower_case = true;
  return c;
}

BertTokenizer::BertTokenizer(const std::string& vocab_file, const TokenizerConfig& config)
    : Tokenizer(config, /*default_clean_up=*/true),
      do_lower_case_(config.do_lower_case),
      do_basic_tokenize_(config.do_basic_tokenize),
      tokenize_chinese_chars_(config.tokenize_chinese_chars),
      strip_accents_(config.strip_accents) {
  std::vector<std::string> lines = load_vocab_lines(vocab_file);
  for (std::size_t i = 0; i < lines.size(); ++i) vocab_[lines[i]] = std::int64_t(i);  // a repeated line keeps its last index
  for (const auto& [tok, id] : vocab_) ids_to_tokens_[id] = tok;
  for (const auto& s : config.never_split) never_split_.insert(s);
  finish_init(config);
}

BertTokenizer::~BertTokenizer() = default;

std::unique_ptr<BertTokenizer> BertTokenizer::from_pretrained(const std::string& dir) {
  TokenizerConfig cfg = load_tokenizer_config(dir, "BertTokenizer");
  return std::make_unique<BertTokenizer>((std::filesystem::path(dir) / "vocab.txt").string(), cfg);
}

std::int64_t BertTokenizer::vocab_size() const { return std::int64_t(vocab_.size()); }

std::vector<std::string> BertTokenizer::basic_tokenize(std::string_view input) const {
  // _clean_text (+ _tokenize_chinese_chars): drop NUL / U+FFFD / control characters, whitespace
  // becomes a space, CJK ideographs get spaces around them.
  std::string cleaned;
  cleaned.reserve(input.size() + 8);
  for (char32_t cp : text::decode_utf8(input)) {
    if (cp == 0 || cp == 0xFFFD || is_control(cp)) continue;
    if (is_whitespace(cp)) {
      cleaned.push_back(' ');
    } else if (tokenize_chinese_chars_ && is_chinese_char(cp)) {
      cleaned.push_back(' ');
      text::append_utf8(cleaned, cp);
      cleaned.push_back(' ');
    } else {
      text::append_utf8(cleaned, cp);
    }
  }
  const std::string normalized = nfc(cleaned);

  auto never = [&](const std::string& tok) { return never_split_.count(tok) != 0 || is_special_token(tok); };
  std::vector<std::string> output;
  for (std::string token : text::split_whitespace(normalized)) {
    const bool ascii = std::all_of(token.begin(), token.end(), [](char c) { return (unsigned char)c < 0x80; });
    if (!never(token) && ascii) {
      // ASCII fast path: NFD changes nothing, lower-casing is A-Z only.
      if (do_lower_case_)
        for (char& c : token)
          if (c >= 'A' && c <= 'Z') c = char(c + 32);
    } else if (!never(token)) {
      if (do_lower_case_) {
        token = text::lower(token);
        if (strip_accents_.value_or(true)) token = strip_accents(token);
      } else if (strip_accents_.value_or(false)) {
        token = strip_accents(token);
      }
    }
    // _run_split_on_punc (a never-split token stays whole), then the
    // whitespace_tokenize(" ".join(...)) that follows.
    if (never(token)) {
      output.push_back(std::move(token));
      continue;
    }
    std::string word;
    if (ascii) {
      for (char c : token) {
        if (is_punctuation(char32_t(c))) {
          if (!word.empty()) output.push_back(std::move(word));
          word.clear();
          output.emplace_back(1, c);
        } else {
          word.push_back(c);  // no Python whitespace is left inside a whitespace-split token
        }
      }
      if (!word.empty()) output.push_back(std::move(word));
      continue;
    }
    for (char32_t cp : text::decode_utf8(token)) {
      if (is_punctuation(cp)) {
        if (!word.empty()) output.push_back(std::move(word));
        word.clear();
        std::string p;
        text::append_utf8(p, cp);
        output.push_back(std::move(p));
      } else if (text::is_python_space(cp)) {
        // Accent stripping / lower-casing can expose whitespace; the final split removes it.
        if (!word.empty()) output.push_back(std::move(word));
        word.clear();
      } else {
        text::append_utf8(word, cp);
      }
    }
    if (!word.empty()) output.push_back(std::move(word));
  }
  return output;
}

std::vector<std::string> BertTokenizer::wordpiece_tokenize(std::string_view input) const {
  const std::string unk = unk_token().value_or("[UNK]");
  std::vector<std::string> output;
  std::string candidate;
  for (const std::string& token : text::split_whitespace(input)) {
    // Byte offsets of the code points.
    std::vector<std::size_t> offs;
    for (std::size_t i = 0; i < token.size();) {
      offs.push_back(i);
      char32_t cp;
      const std::size_t k = text::next_code_point(token, i, &cp);
      i += k ? k : 1;  // the text was checked on input; never stall
    }
    const std::size_t n = offs.size();
    offs.push_back(token.size());
    if (n > max_input_chars_per_word_) {
      output.push_back(unk);
      continue;
    }
    std::vector<std::string> sub;
    bool bad = false;
    std::size_t start = 0;
    while (start < n) {
      std::size_t end = n;
      bool found = false;
      while (start < end) {
        candidate.clear();
        if (start > 0) candidate = "##";
        candidate.append(token, offs[start], offs[end] - offs[start]);
        if (vocab_.count(candidate)) {
          found = true;
          break;
        }
        --end;
      }
      if (!found) {
        bad = true;
        break;
      }
      sub.push_back(candidate);
      start = end;
    }
    if (bad) output.push_back(unk);
    else output.insert(output.end(), std::make_move_iterator(sub.begin()), std::make_move_iterator(sub.end()));
  }
  return output;
}

std::vector<std::string> BertTokenizer::tokenize_chunk(std::string_view text) const {
  if (!do_basic_tokenize_) return wordpiece_tokenize(text);
  std::vector<std::string> out;
  for (const std::string& token : basic_tokenize(text)) {
    if (never_split_.count(token)) {
      out.push_back(token);
    } else {
      std::vector<std::string> pieces = wordpiece_tokenize(token);
      out.insert(out.end(), std::make_move_iterator(pieces.begin()), std::make_move_iterator(pieces.end()));
    }
  }
  return out;
}

std::int64_t BertTokenizer::base_token_to_id(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  if (it != vocab_.end()) return it->second;
  if (auto unk = unk_token()) {
    auto u = vocab_.find(*unk);
    if (u != vocab_.end()) return u->second;
  }
  throw InvalidArgument("token '" + std::string(token) + "' is not in the WordPiece vocabulary, which has no unk token");
}

std::string BertTokenizer::base_id_to_token(std::int64_t id) const {
  auto it = ids_to_tokens_.find(id);
  if (it != ids_to_tokens_.end()) return it->second;
  if (auto unk = unk_token()) return *unk;  // ids_to_tokens.get(index, unk_token)
  throw InvalidArgument("token id " + std::to_string(id) + " is outside the WordPiece vocabulary");
}

bool BertTokenizer::base_vocab_contains(std::string_view token) const { return vocab_.count(std::string(token)) != 0; }

std::int64_t BertTokenizer::base_vocab_distinct_size() const { return std::int64_t(vocab_.size()); }

std::string BertTokenizer::convert_tokens_to_string(std::vector<std::string> tokens) const {
  // " ".join(tokens).replace(" ##", "").strip()
  std::string joined;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) joined.push_back(' ');
    joined += tokens[i];
  }
  std::string out;
  out.reserve(joined.size());
  std::size_t pos = 0;
  while (true) {
    std::size_t hit = joined.find(" ##", pos);
    if (hit == std::string::npos) break;
    out.append(joined, pos, hit - pos);
    pos = hit + 3;
  }
  out.append(joined, pos, std::string::npos);
  return std::string(text::strip(out));
}

std::vector<std::int64_t> BertTokenizer::build_inputs_with_special_tokens(std::vector<std::int64_t> ids) const {
  std::vector<std::int64_t> out;
  out.reserve(ids.size() + 2);
  if (auto cls = cls_token_id()) out.push_back(*cls);
  out.insert(out.end(), ids.begin(), ids.end());
  if (auto sep = sep_token_id()) out.push_back(*sep);
  return out;
}

}  // namespace instructblip

// GPT2Tokenizer (transformers 4.36.2 slow tokenizer, models/gpt2/tokenization_gpt2.py): byte-level
// BPE from vocab.json + merges.txt, as OPT / BLIP-2-OPT use it. The pre-tokenisation regex is
// matched by hand with utf8proc's Unicode categories; no regex library.
#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <queue>
#include <tuple>
#include <utility>

#include <nlohmann/json.hpp>
#include <utf8proc.h>

#include "instructblip/core/error.hpp"
#include "instructblip/processing/tokenizer.hpp"
#include "../internal/json_depth.hpp"
#include "../internal/text.hpp"

namespace instructblip {

namespace {

namespace fs = std::filesystem;

// ---- bytes_to_unicode -------------------------------------------------------------------------

struct ByteTables {
  std::array<std::string, 256> symbol;       // byte -> its symbol, UTF-8 encoded
  std::array<char32_t, 256> code_point{};    // byte -> its symbol's code point
  std::unordered_map<char32_t, unsigned char> byte_of;  // the inverse (byte_decoder)
};

// The printable Latin-1 bytes stand for themselves; the others (controls, space, soft hyphen, ...)
// take the code points 256, 257, ... in byte order.
const ByteTables& byte_tables() {
  static const ByteTables tables = [] {
    ByteTables t;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? char32_t(b) : char32_t(256 + n++);
      t.code_point[std::size_t(b)] = cp;
      text::append_utf8(t.symbol[std::size_t(b)], cp);
      t.byte_of[cp] = static_cast<unsigned char>(b);
    }
    return t;
  }();
  return tables;
}

// ---- pre-tokenisation -------------------------------------------------------------------------

enum class CharClass { Space, Letter, Number, Other };

// Python regex's \s: the White_Space property (not str.isspace(), which also takes U+001C..U+001F).
bool is_white_space(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

CharClass classify(char32_t cp) {
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::Letter;
    if (cp >= '0' && cp <= '9') return CharClass::Number;
    return is_white_space(cp) ? CharClass::Space : CharClass::Other;
  }
  if (is_white_space(cp)) return CharClass::Space;
  switch (utf8proc_category(utf8proc_int32_t(cp))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return CharClass::Letter;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return CharClass::Number;
    default:
      return CharClass::Other;
  }
}

// ---- files ------------------------------------------------------------------------------------

std::string read_file(const std::string& path, const char* what) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw IoError(std::string(what) + " not found: '" + path + "'");
  if (!fs::is_regular_file(path, ec)) throw IoError(std::string(what) + " is not a regular file: '" + path + "'");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError(std::string("cannot open ") + what + " '" + path + "'");
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw IoError(std::string("cannot read ") + what + " '" + path + "'");
  // Both files are opened with encoding="utf-8": bytes that are not UTF-8 fail to load.
  try {
    check_utf8(bytes, what);
  } catch (const InvalidArgument& e) {
    throw FormatError(std::string(e.what()) + " ('" + path + "')");
  }
  return bytes;
}

// Decodes `bytes` as bytes.decode("utf-8", errors=mode) does. CPython replaces each maximal
// subpart of an ill-formed sequence (a lead byte and the continuation bytes that may still follow
// it) by one U+FFFD, so "\xE2\x82" is one replacement and "\xE0\x80" two.
std::string decode_bytes(const std::string& bytes, const std::string& mode) {
  std::string out;
  out.reserve(bytes.size());
  const std::size_t n = bytes.size();
  std::size_t i = 0;
  auto at = [&](std::size_t k) { return static_cast<unsigned char>(bytes[k]); };
  while (i < n) {
    const unsigned char b = at(i);
    if (b < 0x80) {
      out.push_back(char(b));
      ++i;
      continue;
    }
    std::size_t need = 0;                // continuation bytes after the lead byte
    unsigned char lo = 0x80, hi = 0xBF;  // range of the first continuation byte
    if (b >= 0xC2 && b <= 0xDF) {
      need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
      need = 2;
      if (b == 0xE0) lo = 0xA0;  // no overlong forms
      if (b == 0xED) hi = 0x9F;  // no surrogates
    } else if (b >= 0xF0 && b <= 0xF4) {
      need = 3;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    }
    std::size_t len = 1;  // bytes of the sequence that are well-formed so far
    if (need > 0 && i + 1 < n && at(i + 1) >= lo && at(i + 1) <= hi) {
      len = 2;
      while (len <= need && i + len < n && (at(i + len) & 0xC0) == 0x80) ++len;
    }
    if (need > 0 && len == need + 1) {
      out.append(bytes, i, len);
    } else if (mode == "strict") {
      throw InvalidArgument("decoded bytes are not valid UTF-8 at byte offset " + std::to_string(i) +
                            " (errors=\"strict\")");
    } else if (mode == "replace") {
      out.append("\xEF\xBF\xBD");
    }  // "ignore": dropped
    i += len;
  }
  return out;
}

}  // namespace

// ---- merges -----------------------------------------------------------------------------------

// The merge ranks over interned symbols: every string of merges.txt (both halves and their
// concatenation) and every byte symbol has an index, so bpe() works on integers.
struct GPT2Tokenizer::Merges {
  struct Merge {
    std::int32_t rank;
    std::int32_t result;
  };
  std::unordered_map<std::string, std::int32_t> index;
  std::vector<std::string> symbols;
  std::unordered_map<std::uint64_t, Merge> pairs;

  std::int32_t intern(const std::string& s) {
    auto it = index.find(s);
    if (it != index.end()) return it->second;
    const auto id = std::int32_t(symbols.size());
    symbols.push_back(s);
    index.emplace(s, id);
    return id;
  }
  static std::uint64_t key(std::int32_t a, std::int32_t b) {
    return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
  }
  const Merge* find(std::int32_t a, std::int32_t b) const {
    auto it = pairs.find(key(a, b));
    return it == pairs.end() ? nullptr : &it->second;
  }
};

const std::string& GPT2Tokenizer::byte_symbol(unsigned char byte) { return byte_tables().symbol[byte]; }

TokenizerConfig GPT2Tokenizer::default_config() {
  TokenizerConfig c;
  c.unk_token = AddedToken::special_token("<|endoftext|>");
  c.bos_token = AddedToken::special_token("<|endoftext|>");
  c.eos_token = AddedToken::special_token("<|endoftext|>");
  c.add_bos_token = false;
  c.add_prefix_space = false;
  c.errors = "replace";
  return c;
}

GPT2Tokenizer::GPT2Tokenizer(const std::string& vocab_file, const std::string& merges_file,
                             const TokenizerConfig& config)
    : Tokenizer(config, /*default_clean_up=*/true),
      merges_(std::make_unique<Merges>()),
      add_bos_token_(config.add_bos_token),
      add_prefix_space_(config.add_prefix_space),
      errors_(config.errors) {
  if (errors_ != "replace" && errors_ != "ignore" && errors_ != "strict")
    throw ConfigError("unsupported errors=\"" + errors_ + "\" for GPT2Tokenizer (supported: replace, ignore, strict)");

  // vocab.json: json.load keeps the file order, a repeated key its last value; decoder = {v: k}
  // then maps a repeated id to the last token that has it.
  {
    const std::string bytes = read_file(vocab_file, "BPE vocabulary");
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(bytes);
    } catch (const nlohmann::ordered_json::exception& e) {
      throw FormatError("cannot parse BPE vocabulary '" + vocab_file + "' as JSON: " + e.what());
    }
    if (detail::nested_deeper_than(j, detail::kMaxJsonDepth))
      throw FormatError("BPE vocabulary '" + vocab_file + "' nests arrays / objects more than " +
                        std::to_string(detail::kMaxJsonDepth) + " levels deep");
    if (!j.is_object())
      throw FormatError("BPE vocabulary '" + vocab_file + "' must be a JSON object of token -> id, got " +
                        j.type_name());
    if (j.empty()) throw FormatError("BPE vocabulary '" + vocab_file + "' has no tokens");
    for (auto it = j.begin(); it != j.end(); ++it) {
      const auto& v = it.value();
      const bool fits = v.is_number_unsigned() ? v.get<std::uint64_t>() <= std::uint64_t(INT64_MAX)
                                               : v.is_number_integer() && v.get<std::int64_t>() >= 0;
      if (!fits)
        throw FormatError("BPE vocabulary '" + vocab_file + "': the id of token " + nlohmann::json(it.key()).dump() +
                          " must be a non-negative integer, got " +
                          (v.is_primitive() ? v.dump() : std::string(v.type_name())));
      const std::int64_t id = v.is_number_unsigned() ? std::int64_t(v.get<std::uint64_t>()) : v.get<std::int64_t>();
      encoder_[it.key()] = id;
      decoder_[id] = it.key();
    }
  }

  // merges.txt: read().split("\n")[1:-1] in text mode (universal newlines), each line split on
  // whitespace; the first line (#version) and whatever follows the last newline are ignored. A
  // repeated pair takes the rank of its last line (dict(zip(merges, range(...)))).
  {
    std::string bytes = read_file(merges_file, "BPE merges");
    std::string norm;
    norm.reserve(bytes.size());
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      if (bytes[i] == '\r') {
        norm.push_back('\n');
        if (i + 1 < bytes.size() && bytes[i + 1] == '\n') ++i;
      } else {
        norm.push_back(bytes[i]);
      }
    }
    for (int b = 0; b < 256; ++b) merges_->intern(byte_symbol(static_cast<unsigned char>(b)));
    std::vector<std::string_view> lines;
    std::size_t start = 0;
    while (true) {
      const std::size_t nl = norm.find('\n', start);
      if (nl == std::string::npos) break;  // the last piece ([-1]) is dropped
      lines.emplace_back(std::string_view(norm).substr(start, nl - start));
      start = nl + 1;
    }
    for (std::size_t l = 1; l < lines.size(); ++l) {
      const std::vector<std::string> parts = text::split_whitespace(lines[l]);
      if (parts.empty()) continue;  // an empty tuple never matches a pair
      if (parts.size() != 2)
        throw FormatError("BPE merges '" + merges_file + "' line " + std::to_string(l + 1) + " has " +
                          std::to_string(parts.size()) + " symbols, expected 2");
      if (l > std::size_t(INT32_MAX)) throw FormatError("BPE merges '" + merges_file + "' has too many lines");
      const std::int32_t a = merges_->intern(parts[0]);
      const std::int32_t b = merges_->intern(parts[1]);
      const std::int32_t r = merges_->intern(parts[0] + parts[1]);
      merges_->pairs[Merges::key(a, b)] = Merges::Merge{std::int32_t(l), r};
    }
  }
  finish_init(config);
}

GPT2Tokenizer::~GPT2Tokenizer() = default;

std::unique_ptr<GPT2Tokenizer> GPT2Tokenizer::from_pretrained(const std::string& dir) {
  TokenizerConfig cfg = load_tokenizer_config(dir, "GPT2Tokenizer");
  return std::make_unique<GPT2Tokenizer>((fs::path(dir) / "vocab.json").string(),
                                         (fs::path(dir) / "merges.txt").string(), cfg);
}

std::int64_t GPT2Tokenizer::vocab_size() const { return std::int64_t(encoder_.size()); }

std::vector<std::string> GPT2Tokenizer::pre_tokenize(std::string_view input) {
  const std::u32string cps = text::decode_utf8(input);
  const std::size_t n = cps.size();
  std::vector<CharClass> cls(n);
  std::vector<std::size_t> off(n + 1);
  std::size_t o = 0;
  for (std::size_t k = 0; k < n; ++k) {
    cls[k] = classify(cps[k]);
    off[k] = o;
    o += cps[k] < 0x80 ? 1 : cps[k] < 0x800 ? 2 : cps[k] < 0x10000 ? 3 : 4;
  }
  off[n] = o;
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < n) {
    std::size_t end = i;
    // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
    if (cps[i] == '\'' && i + 1 < n) {
      const char32_t c1 = cps[i + 1], c2 = i + 2 < n ? cps[i + 2] : 0;
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') end = i + 2;
      else if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) end = i + 3;
    }
    if (end == i) {
      // " ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+": an optional U+0020, then a run of one class.
      std::size_t s = i;
      if (cps[i] == ' ' && i + 1 < n && cls[i + 1] != CharClass::Space) s = i + 1;
      if (cls[s] != CharClass::Space) {
        end = s;
        while (end < n && cls[end] == cls[s]) ++end;
      } else {
        // "\s+(?!\S)|\s+": a whitespace run, less its last character when a non-space follows
        // (that character then starts the next piece, e.g. " word"), unless it is the only one.
        std::size_t run = i;
        while (run < n && cls[run] == CharClass::Space) ++run;
        end = run == n || run - i == 1 ? run : run - 1;
      }
    }
    out.emplace_back(input.substr(off[i], off[end] - off[i]));
    i = end;
  }
  return out;
}

std::vector<std::string> GPT2Tokenizer::bpe(std::string_view word) const {
  // Symbols of `word` (each one character), interned; characters outside the byte alphabet are
  // interned on the fly in a local table so that they simply never merge.
  struct Node {
    std::int32_t sym;
    std::int64_t prev, next;  // -1 at the ends
    bool alive;
  };
  std::vector<Node> nodes;
  std::vector<std::string> extra;  // symbols unknown to the merges (ids -2, -3, ...)
  for (std::size_t i = 0; i < word.size();) {
    char32_t cp = 0;
    std::size_t k = text::next_code_point(word, i, &cp);
    if (k == 0) k = 1;
    const std::string ch(word.substr(i, k));
    auto it = merges_->index.find(ch);
    std::int32_t sym;
    if (it != merges_->index.end()) {
      sym = it->second;
    } else {
      extra.push_back(ch);
      sym = -std::int32_t(extra.size()) - 1;
    }
    const auto idx = std::int64_t(nodes.size());
    nodes.push_back(Node{sym, idx - 1, -1, true});
    if (idx > 0) nodes[std::size_t(idx - 1)].next = idx;
    i += k;
  }
  // As tokenization_gpt2.bpe: repeatedly take the pair of lowest rank and merge all its
  // occurrences left to right, then look again. Candidates wait in a queue ordered by (rank,
  // position); all of one rank are merged in position order before the next rank is taken, and a
  // candidate whose symbols changed meanwhile is dropped.
  using Cand = std::tuple<std::int32_t, std::int64_t, std::int32_t, std::int32_t>;  // rank, left, sym, next sym
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> queue;
  auto push = [&](std::int64_t left) {
    if (left < 0) return;
    const Node& a = nodes[std::size_t(left)];
    if (a.next < 0 || a.sym < 0) return;
    const Node& b = nodes[std::size_t(a.next)];
    if (b.sym < 0) return;
    if (const auto* m = merges_->find(a.sym, b.sym)) queue.emplace(m->rank, left, a.sym, b.sym);
  };
  for (std::int64_t i = 0; i + 1 < std::int64_t(nodes.size()); ++i) push(i);
  std::vector<Cand> batch;
  while (!queue.empty()) {
    // Every candidate of the lowest rank, in position order. The pairs these merges create never
    // have this rank (a + b is neither a nor b); lower-ranked ones wait for the next round.
    const std::int32_t rank = std::get<0>(queue.top());
    batch.clear();
    while (!queue.empty() && std::get<0>(queue.top()) == rank) {
      batch.push_back(queue.top());
      queue.pop();
    }
    for (const auto& [r, left, sa, sb] : batch) {
      (void)r;
      Node& a = nodes[std::size_t(left)];
      if (!a.alive || a.sym != sa || a.next < 0) continue;
      Node& b = nodes[std::size_t(a.next)];
      if (b.sym != sb) continue;
      a.sym = merges_->find(sa, sb)->result;
      b.alive = false;
      a.next = b.next;
      if (b.next >= 0) nodes[std::size_t(b.next)].prev = left;
      push(a.prev);
      push(left);
    }
  }
  std::vector<std::string> out;
  for (const Node& nd : nodes) {
    if (!nd.alive) continue;
    out.push_back(nd.sym >= 0 ? merges_->symbols[std::size_t(nd.sym)] : extra[std::size_t(-nd.sym - 2)]);
  }
  return out;
}

std::vector<std::string> GPT2Tokenizer::tokenize_checked(std::string_view text) const {
  // prepare_for_tokenization: the space goes before the added-token split.
  if (add_prefix_space_) return base_tokenize(" " + std::string(text));
  return base_tokenize(text);
}

std::vector<std::string> GPT2Tokenizer::tokenize_chunk(std::string_view text) const {
  std::vector<std::string> out;
  std::string symbols;
  for (const std::string& piece : pre_tokenize(text)) {
    symbols.clear();
    for (char c : piece) symbols += byte_symbol(static_cast<unsigned char>(c));
    std::vector<std::string> merged = bpe(symbols);
    out.insert(out.end(), std::make_move_iterator(merged.begin()), std::make_move_iterator(merged.end()));
  }
  return out;
}

std::int64_t GPT2Tokenizer::base_token_to_id(std::string_view token) const {
  auto it = encoder_.find(std::string(token));
  if (it != encoder_.end()) return it->second;
  // self.encoder.get(token, self.encoder.get(self.unk_token))
  if (auto unk = unk_token()) {
    auto u = encoder_.find(*unk);
    if (u != encoder_.end()) return u->second;
  }
  throw InvalidArgument("token '" + std::string(token) + "' is not in the BPE vocabulary, which has no unk token");
}

std::string GPT2Tokenizer::base_id_to_token(std::int64_t id) const {
  auto it = decoder_.find(id);
  if (it != decoder_.end()) return it->second;
  throw InvalidArgument("token id " + std::to_string(id) + " is outside the BPE vocabulary");
}

bool GPT2Tokenizer::base_vocab_contains(std::string_view token) const {
  return encoder_.count(std::string(token)) != 0;
}

std::int64_t GPT2Tokenizer::base_vocab_distinct_size() const { return std::int64_t(encoder_.size()); }

std::string GPT2Tokenizer::convert_tokens_to_string(std::vector<std::string> tokens) const {
  const ByteTables& t = byte_tables();
  std::string bytes;
  for (const std::string& tok : tokens) {
    const std::size_t mark = bytes.size();
    bool all_bytes = true;
    for (std::size_t i = 0; i < tok.size() && all_bytes;) {
      char32_t cp = 0;
      const std::size_t k = text::next_code_point(tok, i, &cp);
      auto it = k ? t.byte_of.find(cp) : t.byte_of.end();
      if (it == t.byte_of.end()) {
        all_bytes = false;
        break;
      }
      bytes.push_back(char(it->second));
      i += k;
    }
    if (!all_bytes) {
      bytes.resize(mark);
      bytes += tok;
    }
  }
  return decode_bytes(bytes, errors_);
}

std::vector<std::int64_t> GPT2Tokenizer::build_inputs_with_special_tokens(std::vector<std::int64_t> ids) const {
  if (!add_bos_token_) return ids;
  auto bos = bos_token_id();
  if (!bos) throw InvalidArgument("GPT2Tokenizer: add_bos_token is set but there is no bos_token");
  ids.insert(ids.begin(), *bos);
  return ids;
}

}  // namespace instructblip

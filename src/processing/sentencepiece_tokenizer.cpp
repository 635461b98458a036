// T5Tokenizer and LlamaTokenizer (transformers 4.36.2 slow tokenizers) on top of sentencepiece.
#include <filesystem>
#include <fstream>
#include <iterator>

#include <sentencepiece_processor.h>

#include "instructblip/core/error.hpp"
#include "instructblip/processing/tokenizer.hpp"
#include "../internal/text.hpp"

namespace instructblip {

namespace {

constexpr std::string_view kUnderline = "\xE2\x96\x81";  // U+2581, SPIECE_UNDERLINE

std::string read_model_file(const std::string& path, const char* what) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw IoError(std::string(what) + " not found: '" + path + "'");
  if (!std::filesystem::is_regular_file(path, ec))
    throw IoError(std::string(what) + " is not a regular file: '" + path + "'");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError(std::string("cannot open ") + what + " '" + path + "'");
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw IoError(std::string("cannot read ") + what + " '" + path + "'");
  return bytes;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  std::size_t pos = 0;
  while (true) {
    std::size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

}  // namespace

struct SentencePieceTokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::string path;
};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_file, const TokenizerConfig& config,
                                               bool default_clean_up)
    : Tokenizer(config, default_clean_up), sp_(std::make_unique<Impl>()) {
  legacy_ = config.legacy.value_or(true);
  sp_->path = model_file;
  std::string bytes = read_model_file(model_file, "sentencepiece model");
  if (bytes.empty()) throw FormatError("sentencepiece model '" + model_file + "' is empty");
  if (!legacy_) {
    // get_spm_processor(): normalizer_spec.add_dummy_prefix = False, merged into the model.
    // Protobuf merges repeated occurrences of a message field, so appending
    // `normalizer_spec (field 3) { add_dummy_prefix (field 3): false }` is exactly MergeFrom.
    bytes.append("\x1A\x02\x18\x00", 4);
  }
  auto status = sp_->sp.LoadFromSerializedProto(bytes);
  if (!status.ok())
    throw FormatError("cannot load sentencepiece model '" + model_file + "': " + status.ToString());
  if (sp_->sp.GetPieceSize() <= 0) throw FormatError("sentencepiece model '" + model_file + "' has no pieces");
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::int64_t SentencePieceTokenizer::vocab_size() const { return sp_->sp.GetPieceSize(); }

std::vector<std::string> SentencePieceTokenizer::sp_encode(std::string_view text) const {
  std::vector<std::string> pieces;
  auto status = sp_->sp.Encode(text, &pieces);
  if (!status.ok()) throw InvalidArgument("sentencepiece cannot encode the text: " + status.ToString());
  return pieces;
}

std::string SentencePieceTokenizer::sp_decode(const std::vector<std::string>& pieces) const {
  if (pieces.empty()) return {};
  std::string out;
  auto status = sp_->sp.Decode(pieces, &out);
  if (!status.ok()) throw InvalidArgument("sentencepiece cannot decode the pieces: " + status.ToString());
  return out;
}

std::vector<std::string> SentencePieceTokenizer::tokenize_checked(std::string_view text) const {
  if (legacy_ || text.empty()) return base_tokenize(text);
  // Non-legacy: one SPIECE_UNDERLINE prefix, underlines in the text read as spaces.
  std::string prefixed(kUnderline);
  prefixed += replace_all(text, kUnderline, " ");
  std::vector<std::string> tokens = base_tokenize(prefixed);
  if (tokens.size() > 1 && tokens[0] == kUnderline && is_special_token(tokens[1])) tokens.erase(tokens.begin());
  return tokens;
}

std::vector<std::string> SentencePieceTokenizer::tokenize_chunk(std::string_view text) const {
  if (legacy_ || !(starts_with(text, kUnderline) || starts_with(text, " "))) return sp_encode(text);
  // Without the dummy prefix sentencepiece drops a leading underline: encode "<unk>" + text and
  // drop the pieces of "<unk>".
  const std::string unk = unk_token().value_or(sp_->sp.IdToPiece(sp_->sp.unk_id()));
  const std::size_t unk_len = sp_encode(unk).size();
  std::vector<std::string> tokens = sp_encode(unk + std::string(text));
  if (tokens.size() >= unk_len) tokens.erase(tokens.begin(), tokens.begin() + std::ptrdiff_t(unk_len));
  return tokens;
}

std::int64_t SentencePieceTokenizer::base_token_to_id(std::string_view token) const {
  return sp_->sp.PieceToId(token);
}

std::string SentencePieceTokenizer::base_id_to_token(std::int64_t id) const {
  const std::int64_t n = sp_->sp.GetPieceSize();
  if (id < 0 || id >= n)
    throw InvalidArgument("token id " + std::to_string(id) + " is outside the vocabulary (sentencepiece model of " +
                          std::to_string(n) + " pieces and no added token with that id)");
  return sp_->sp.IdToPiece(int(id));
}

bool SentencePieceTokenizer::base_vocab_contains(std::string_view token) const {
  const int id = sp_->sp.PieceToId(token);
  return id >= 0 && sp_->sp.IdToPiece(id) == token;
}

std::int64_t SentencePieceTokenizer::base_vocab_distinct_size() const { return sp_->sp.GetPieceSize(); }

std::string SentencePieceTokenizer::join_pieces(std::vector<std::string> tokens, bool t5_style,
                                                bool space_before_special) const {
  if (tokens.empty()) return {};
  // "since we manually add the prefix space, we have to remove it when decoding"
  if (t5_style) {
    std::string_view first = tokens[0];
    while (starts_with(first, kUnderline)) first.remove_prefix(kUnderline.size());
    tokens[0] = std::string(first);
  } else if (starts_with(tokens[0], kUnderline)) {
    tokens[0].erase(0, kUnderline.size());
  }
  std::string out;
  std::vector<std::string> current;
  bool prev_is_special = false;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (is_special_token(tokens[i])) {
      // T5 always puts a space before the text decoded ahead of a special token; LLaMA only in
      // legacy mode and not for the first token.
      if (!prev_is_special && (t5_style || (space_before_special && i != 0))) out.push_back(' ');
      out += sp_decode(current);
      out += tokens[i];
      prev_is_special = true;
      current.clear();
    } else {
      current.push_back(std::move(tokens[i]));
      prev_is_special = false;
    }
  }
  out += sp_decode(current);
  if (t5_style) return std::string(text::strip(out));
  return out;
}

// ---- T5Tokenizer ----------------------------------------------------------------------------

TokenizerConfig T5Tokenizer::default_config() {
  TokenizerConfig c;
  c.eos_token = AddedToken::special_token("</s>");
  c.unk_token = AddedToken::special_token("<unk>");
  c.pad_token = AddedToken::special_token("<pad>");
  c.extra_ids = 100;
  return c;
}

T5Tokenizer::T5Tokenizer(const std::string& model_file, const TokenizerConfig& config)
    : SentencePieceTokenizer(model_file, config, /*default_clean_up=*/true) {
  if (config.extra_ids < 0 || config.extra_ids > kMaxT5ExtraIds)
    throw ConfigError("T5Tokenizer: extra_ids must be between 0 and " + std::to_string(kMaxT5ExtraIds) + ", got " +
                      std::to_string(config.extra_ids));
  extra_ids_ = config.extra_ids;
  std::vector<AddedToken> additional = config.additional_special_tokens;
  std::size_t n_extra = 0;
  auto extra_token = [](int i) {
    AddedToken t("<extra_id_" + std::to_string(i) + ">", true);
    t.lstrip = true;
    t.rstrip = true;
    return t;
  };
  if (!additional.empty()) {
    for (const auto& t : additional)
      if (t.content.find("<extra_id_") != std::string::npos) ++n_extra;
    if (n_extra == 0) {
      for (int i = 0; i < extra_ids_; ++i) additional.push_back(AddedToken::special_token(extra_token(i).content));
    } else if (extra_ids_ > 0 && std::size_t(extra_ids_) != n_extra) {
      throw ConfigError("T5Tokenizer: both extra_ids (" + std::to_string(extra_ids_) +
                        ") and additional_special_tokens (" + std::to_string(n_extra) +
                        " <extra_id_N> tokens) are given and they do not agree");
    }
  } else {
    for (int i = 0; i < extra_ids_; ++i) additional.push_back(AddedToken::special_token(extra_token(i).content));
    n_extra = std::size_t(extra_ids_);
  }
  additional_special_ = additional;
  // <extra_id_i> has id len(sp_model) - 1 + extra_ids - i.
  const std::int64_t sp_size = vocab_size();
  for (std::size_t i = 0; i < n_extra; ++i)
    added_decoder_[sp_size - 1 + extra_ids_ - std::int64_t(i)] = extra_token(int(i));
  finish_init(config);
}

std::unique_ptr<T5Tokenizer> T5Tokenizer::from_pretrained(const std::string& dir) {
  TokenizerConfig cfg = load_tokenizer_config(dir, "T5Tokenizer");
  return std::make_unique<T5Tokenizer>((std::filesystem::path(dir) / "spiece.model").string(), cfg);
}

std::string T5Tokenizer::convert_tokens_to_string(std::vector<std::string> tokens) const {
  return join_pieces(std::move(tokens), /*t5_style=*/true, /*space_before_special=*/true);
}

std::vector<std::int64_t> T5Tokenizer::build_inputs_with_special_tokens(std::vector<std::int64_t> ids) const {
  auto eos = eos_token_id();
  if (!eos) return ids;
  // _add_eos_if_not_present: a sequence already ending with </s> gets no second one.
  if (!ids.empty() && ids.back() == *eos) return ids;
  ids.push_back(*eos);
  return ids;
}

// ---- LlamaTokenizer -------------------------------------------------------------------------

TokenizerConfig LlamaTokenizer::default_config() {
  TokenizerConfig c;
  c.bos_token = AddedToken::special_token("<s>");
  c.eos_token = AddedToken::special_token("</s>");
  c.unk_token = AddedToken::special_token("<unk>");
  c.add_bos_token = true;
  c.add_eos_token = false;
  return c;
}

LlamaTokenizer::LlamaTokenizer(const std::string& model_file, const TokenizerConfig& config)
    : SentencePieceTokenizer(model_file, config, /*default_clean_up=*/false),
      add_bos_token_(config.add_bos_token),
      add_eos_token_(config.add_eos_token) {
  finish_init(config);
}

std::unique_ptr<LlamaTokenizer> LlamaTokenizer::from_pretrained(const std::string& dir) {
  TokenizerConfig cfg = load_tokenizer_config(dir, "LlamaTokenizer");
  return std::make_unique<LlamaTokenizer>((std::filesystem::path(dir) / "tokenizer.model").string(), cfg);
}

std::string LlamaTokenizer::convert_tokens_to_string(std::vector<std::string> tokens) const {
  return join_pieces(std::move(tokens), /*t5_style=*/false, /*space_before_special=*/legacy_);
}

std::vector<std::int64_t> LlamaTokenizer::build_inputs_with_special_tokens(std::vector<std::int64_t> ids) const {
  std::vector<std::int64_t> out;
  out.reserve(ids.size() + 2);
  if (add_bos_token_)
    if (auto bos = bos_token_id()) out.push_back(*bos);
  out.insert(out.end(), ids.begin(), ids.end());
  if (add_eos_token_)
    if (auto eos = eos_token_id()) out.push_back(*eos);
  return out;
}

}  // namespace instructblip

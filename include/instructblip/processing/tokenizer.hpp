#pragma once
// Text tokenizers that reproduce HuggingFace transformers 4.36.2's SLOW tokenizers exactly:
//   T5Tokenizer     (sentencepiece; </s> appended, <extra_id_N> sentinels, legacy mode)
//   LlamaTokenizer  (sentencepiece; BOS/EOS per add_bos_token / add_eos_token, byte fallback)
//   BertTokenizer   (WordPiece; BasicTokenizer cleaning, CJK splitting, lower-casing and accent
//                    stripping through utf8proc, punctuation splitting, [CLS] ... [SEP])
//   GPT2Tokenizer   (byte-level BPE of OPT / BLIP-2-OPT: vocab.json + merges.txt, GPT-2's
//                    pre-tokenisation regex with utf8proc's Unicode categories, bos prepended per
//                    add_bos_token, errors="replace" decoding of invalid UTF-8 byte sequences)
// Every tokenizer is configured from a checkpoint's own files (tokenizer_config.json,
// special_tokens_map.json, added_tokens.json and spiece.model / tokenizer.model / vocab.txt /
// vocab.json + merges.txt)
// through AutoTokenizer::from_pretrained(dir), or built directly from a model / vocab file and
// a TokenizerConfig (the Python constructor's keyword arguments).
//
// Added tokens (special tokens, <extra_id_N>, [DEC], [PAD], ...) are split out of the text first,
// honouring their lstrip / rstrip / single_word flags, exactly as PreTrainedTokenizer.tokenize does;
// decode() groups them like PreTrainedTokenizer._decode (spaces_between_special_tokens) and
// applies clean_up_tokenization when asked.
//
// Errors: InvalidArgument for text that is not valid UTF-8 (the message gives the byte offset) and
// for ids outside the vocabulary; IoError for a missing directory / model / vocab / merges file;
// FormatError for a model, vocab, merges or JSON file that cannot be parsed (or nests arrays /
// objects more than 64 levels deep); ConfigError for a tokenizer_config.json /
// special_tokens_map.json / added_tokens.json value of the wrong type or an unsupported setting.
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "instructblip/core/tensor.hpp"

namespace instructblip {

/// A token handled outside the model vocabulary split (transformers' tokenizers.AddedToken).
struct AddedToken {
  std::string content;
  bool single_word = false;
  bool lstrip = false;  // eats the whitespace on its left
  bool rstrip = false;  // eats the whitespace on its right
  bool normalized = true;
  bool special = false;

  AddedToken() = default;
  explicit AddedToken(std::string content_, bool special_ = false)
      : content(std::move(content_)), normalized(!special_), special(special_) {}
  /// A special token as transformers makes from a plain string (lstrip = rstrip = normalized = false).
  static AddedToken special_token(std::string content) { return AddedToken(std::move(content), true); }
  bool operator==(const AddedToken& o) const {
    return content == o.content && single_word == o.single_word && lstrip == o.lstrip && rstrip == o.rstrip &&
           normalized == o.normalized && special == o.special;
  }
};

enum class Side { Left, Right };
const char* side_name(Side side);

/// The special-token attributes, in transformers' SPECIAL_TOKENS_ATTRIBUTES order.
enum class SpecialToken { Bos = 0, Eos, Unk, Sep, Pad, Cls, Mask };
constexpr std::size_t kNumSpecialTokenRoles = 7;
const char* special_token_attribute(SpecialToken role);  // "bos_token", ...

/// model_max_length when the configuration gives none (transformers' VERY_LARGE_INTEGER).
constexpr std::int64_t kUnboundedLength = std::numeric_limits<std::int64_t>::max();

/// Most <extra_id_N> sentinels a T5Tokenizer accepts (checkpoints use 100): each becomes an added
/// token, so a larger extra_ids would let a few bytes of tokenizer_config.json cost minutes and
/// gigabytes. More is a ConfigError.
constexpr int kMaxT5ExtraIds = 10000;

/// The keyword arguments of the Python constructors (and of tokenizer_config.json). Start from
/// T5Tokenizer::default_config() / LlamaTokenizer::default_config() / BertTokenizer::default_config() /
/// GPT2Tokenizer::default_config(),
/// which hold each class's default special tokens.
struct TokenizerConfig {
  std::optional<AddedToken> bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token;
  std::vector<AddedToken> additional_special_tokens;
  /// Fixed ids of added tokens (tokenizer_config.json "added_tokens_decoder").
  std::map<std::int64_t, AddedToken> added_tokens_decoder;
  Side padding_side = Side::Right;
  Side truncation_side = Side::Right;
  std::int64_t model_max_length = kUnboundedLength;
  /// decode()'s default; unset means the class default (True for T5 / BERT, False for LLaMA).
  std::optional<bool> clean_up_tokenization_spaces;

  // T5Tokenizer / LlamaTokenizer
  std::optional<bool> legacy;  // unset = true, as 4.36.2 does for legacy=None
  int extra_ids = 100;         // T5 only; 0 ..= kMaxT5ExtraIds
  bool add_bos_token = true;   // LLaMA and GPT2 (GPT2Tokenizer::default_config() sets false)
  bool add_eos_token = false;  // LLaMA only

  // GPT2Tokenizer
  bool add_prefix_space = false;  // a space is put before the text (the first word then starts with "Ġ")
  /// How decode() treats byte sequences that are not UTF-8 (bytes.decode's errors=): "replace"
  /// (U+FFFD per maximal invalid subpart, as CPython), "ignore" (dropped) or "strict"
  /// (InvalidArgument); anything else is a ConfigError.
  std::string errors = "replace";

  // BertTokenizer
  bool do_lower_case = true;
  bool do_basic_tokenize = true;
  bool tokenize_chinese_chars = true;
  std::optional<bool> strip_accents;  // unset: follows do_lower_case
  std::vector<std::string> never_split;

  std::optional<AddedToken>& special(SpecialToken role);
  const std::optional<AddedToken>& special(SpecialToken role) const;
};

/// tokenizer(texts, padding=..., truncation=..., max_length=...) output: one row per text,
/// all rows the same length when padded (pad ids / zero mask on the tokenizer's padding side).
struct BatchEncoding {
  std::vector<std::vector<std::int64_t>> input_ids;
  std::vector<std::vector<std::int64_t>> attention_mask;

  std::size_t batch_size() const { return input_ids.size(); }
  /// Length of the longest row.
  std::size_t max_length() const;
  bool is_rectangular() const;
  /// [batch, seq] int64 tensors; InvalidArgument if the rows differ in length (padding=false).
  Tensor input_ids_tensor() const;
  Tensor attention_mask_tensor() const;
};

/// Rows of ids (or of a mask) as an int64 [rows, length] tensor, e.g. GenerateOutput::sequences.
/// InvalidArgument naming `what` when the rows differ in length.
Tensor ids_to_tensor(const std::vector<std::vector<std::int64_t>>& rows, const std::string& what = "ids");

/// The common interface of the three tokenizers (transformers' PreTrainedTokenizer).
class Tokenizer {
 public:
  virtual ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  /// AutoTokenizer.from_pretrained(dir): tokenizer_config.json's tokenizer_class selects the class
  /// (T5Tokenizer, LlamaTokenizer, BertTokenizer, GPT2Tokenizer; the *Fast names map to the slow
  /// classes); without it the model file present decides (spiece.model, tokenizer.model,
  /// vocab.json + merges.txt, vocab.txt).
  static std::unique_ptr<Tokenizer> from_pretrained(const std::string& dir);

  /// "T5Tokenizer", "LlamaTokenizer", "BertTokenizer" or "GPT2Tokenizer".
  virtual std::string class_name() const = 0;

  // ---- encoding ----------------------------------------------------------------------
  /// tokenizer.tokenize(text): the pieces, added tokens kept whole. InvalidArgument on bad UTF-8.
  std::vector<std::string> tokenize(std::string_view text) const;
  /// tokenizer(text, add_special_tokens=...)["input_ids"].
  std::vector<std::int64_t> encode(std::string_view text, bool add_special_tokens = true) const;
  /// tokenizer(texts, padding=padding, truncation=truncation, max_length=max_length).
  /// padding=true pads every row to the longest one (HF padding=True / "longest") on
  /// padding_side(); InvalidArgument if the tokenizer has no pad token. Truncation happens when
  /// `truncation` is true or `max_length` is given (HF truncation=None with max_length), to
  /// max_length or else model_max_length, on truncation_side(), special tokens counted.
  BatchEncoding encode_batch(const std::vector<std::string>& texts, bool padding = false, bool truncation = false,
                             std::optional<std::int64_t> max_length = std::nullopt,
                             bool add_special_tokens = true) const;
  /// Pads already-encoded rows to the longest (HF tokenizer.pad); masks are 1 for real tokens.
  BatchEncoding pad(std::vector<std::vector<std::int64_t>> rows) const;
  /// Truncates one id sequence (without special tokens) so that it fits max_length once the
  /// special tokens are added (HF truncate_sequences, longest_first on a single sequence).
  std::vector<std::int64_t> truncate(std::vector<std::int64_t> ids, std::int64_t max_length) const;

  // ---- decoding ----------------------------------------------------------------------
  /// tokenizer.decode(ids, skip_special_tokens, clean_up_tokenization_spaces,
  /// spaces_between_special_tokens); clean-up defaults to the configured value. As in the slow
  /// tokenizers of 4.36.2, spaces_between_special_tokens defaults to true whatever the config says;
  /// it only matters around added tokens that are not special or lie outside the base vocabulary
  /// (T5's <extra_id_N>). InvalidArgument for an id outside the vocabulary (BERT: "[UNK]", as HF).
  std::string decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens = false,
                     std::optional<bool> clean_up_tokenization_spaces = std::nullopt,
                     bool spaces_between_special_tokens = true) const;
  std::vector<std::string> batch_decode(const std::vector<std::vector<std::int64_t>>& sequences,
                                        bool skip_special_tokens = false,
                                        std::optional<bool> clean_up_tokenization_spaces = std::nullopt,
                                        bool spaces_between_special_tokens = true) const;
  /// Rows of a [batch, seq] int64 tensor (e.g. generate()'s sequences).
  std::vector<std::string> batch_decode(const Tensor& sequences, bool skip_special_tokens = false,
                                        std::optional<bool> clean_up_tokenization_spaces = std::nullopt,
                                        bool spaces_between_special_tokens = true) const;
  std::vector<std::string> convert_ids_to_tokens(const std::vector<std::int64_t>& ids,
                                                 bool skip_special_tokens = false) const;
  std::string convert_id_to_token(std::int64_t id) const;
  std::int64_t convert_token_to_id(std::string_view token) const;
  std::vector<std::int64_t> convert_tokens_to_ids(const std::vector<std::string>& tokens) const;
  /// Joins tokens as the class's convert_tokens_to_string does.
  virtual std::string convert_tokens_to_string(std::vector<std::string> tokens) const = 0;
  /// HF clean_up_tokenization: " ." -> "." and friends.
  static std::string clean_up_tokenization(std::string text);

  // ---- special tokens ----------------------------------------------------------------
  /// ids + the class's special tokens (T5: </s> unless already last; LLaMA: <s> / </s> as
  /// configured; BERT: [CLS] ids [SEP]; GPT2: bos ids when add_bos_token, never an eos).
  virtual std::vector<std::int64_t> build_inputs_with_special_tokens(std::vector<std::int64_t> ids) const = 0;
  std::size_t num_special_tokens_to_add() const;

  const std::optional<AddedToken>& special_token(SpecialToken role) const { return special_[std::size_t(role)]; }
  std::optional<std::int64_t> special_token_id(SpecialToken role) const;
  std::optional<std::string> bos_token() const { return token_str(SpecialToken::Bos); }
  std::optional<std::string> eos_token() const { return token_str(SpecialToken::Eos); }
  std::optional<std::string> unk_token() const { return token_str(SpecialToken::Unk); }
  std::optional<std::string> sep_token() const { return token_str(SpecialToken::Sep); }
  std::optional<std::string> pad_token() const { return token_str(SpecialToken::Pad); }
  std::optional<std::string> cls_token() const { return token_str(SpecialToken::Cls); }
  std::optional<std::string> mask_token() const { return token_str(SpecialToken::Mask); }
  std::optional<std::int64_t> bos_token_id() const { return special_token_id(SpecialToken::Bos); }
  std::optional<std::int64_t> eos_token_id() const { return special_token_id(SpecialToken::Eos); }
  std::optional<std::int64_t> unk_token_id() const { return special_token_id(SpecialToken::Unk); }
  std::optional<std::int64_t> sep_token_id() const { return special_token_id(SpecialToken::Sep); }
  std::optional<std::int64_t> pad_token_id() const { return special_token_id(SpecialToken::Pad); }
  std::optional<std::int64_t> cls_token_id() const { return special_token_id(SpecialToken::Cls); }
  std::optional<std::int64_t> mask_token_id() const { return special_token_id(SpecialToken::Mask); }
  const std::vector<AddedToken>& additional_special_tokens() const { return additional_special_; }
  /// Role tokens then additional ones, without duplicates (HF all_special_tokens).
  const std::vector<std::string>& all_special_tokens() const { return all_special_tokens_; }
  const std::vector<std::int64_t>& all_special_ids() const { return all_special_ids_; }
  bool is_special_id(std::int64_t id) const { return all_special_id_set_.count(id) != 0; }
  bool is_special_token(std::string_view token) const;

  /// tokenizer.add_special_tokens({"<role>": token}); returns the number of new vocabulary entries.
  int add_special_token(SpecialToken role, const AddedToken& token);
  /// tokenizer.add_tokens(tokens, special_tokens=...); returns the number of new vocabulary entries.
  int add_tokens(const std::vector<AddedToken>& tokens, bool special_tokens = false);
  /// id -> added token (HF added_tokens_decoder), and its inverse.
  const std::map<std::int64_t, AddedToken>& added_tokens_decoder() const { return added_decoder_; }
  const std::unordered_map<std::string, std::int64_t>& added_tokens_encoder() const { return added_encoder_; }

  // ---- sizes and settings ------------------------------------------------------------
  /// Size of the base vocabulary (HF tokenizer.vocab_size).
  virtual std::int64_t vocab_size() const = 0;
  /// len(tokenizer): distinct entries of the base vocabulary and the added tokens.
  std::int64_t size() const;
  Side padding_side() const { return padding_side_; }
  void set_padding_side(Side side) { padding_side_ = side; }
  Side truncation_side() const { return truncation_side_; }
  void set_truncation_side(Side side) { truncation_side_ = side; }
  std::int64_t model_max_length() const { return model_max_length_; }
  bool clean_up_tokenization_spaces() const { return clean_up_tokenization_spaces_; }

 protected:
  explicit Tokenizer(const TokenizerConfig& config, bool default_clean_up);

  /// Second construction step, once the base vocabulary is ready: applies the configured
  /// added_tokens_decoder over the class's defaults, then adds the special tokens missing from
  /// the added tokens (PreTrainedTokenizer.__init__).
  void finish_init(const TokenizerConfig& config);

  /// PreTrainedTokenizer.tokenize on valid UTF-8 (added-token split + _tokenize per chunk).
  std::vector<std::string> base_tokenize(std::string_view text) const;
  /// The class's tokenize(); defaults to base_tokenize.
  virtual std::vector<std::string> tokenize_checked(std::string_view text) const { return base_tokenize(text); }
  /// _tokenize: one chunk of text without added tokens.
  virtual std::vector<std::string> tokenize_chunk(std::string_view text) const = 0;
  /// _convert_token_to_id / _convert_id_to_token on the base vocabulary.
  virtual std::int64_t base_token_to_id(std::string_view token) const = 0;
  virtual std::string base_id_to_token(std::int64_t id) const = 0;
  /// True if `token` is an entry of the base vocabulary (a key of get_vocab()).
  virtual bool base_vocab_contains(std::string_view token) const = 0;
  virtual std::int64_t base_vocab_distinct_size() const = 0;
  /// BERT's do_lower_case (lower-cases the text around special tokens before splitting).
  virtual bool lowercases_input() const { return false; }

  std::optional<std::string> token_str(SpecialToken role) const;
  void refresh_special_cache();

  std::array<std::optional<AddedToken>, kNumSpecialTokenRoles> special_;
  std::vector<AddedToken> additional_special_;
  std::map<std::int64_t, AddedToken> added_decoder_;
  std::unordered_map<std::string, std::int64_t> added_encoder_;
  Side padding_side_ = Side::Right;
  Side truncation_side_ = Side::Right;
  std::int64_t model_max_length_ = kUnboundedLength;
  bool clean_up_tokenization_spaces_ = true;

 private:
  std::int64_t vocab_lookup(std::string_view token, bool* found) const;
  std::vector<std::string> split_on_added_tokens(std::string_view text) const;
  std::string lowercase_outside_special(std::string_view text) const;

  std::vector<std::string> all_special_tokens_;
  std::unordered_set<std::string> all_special_token_set_;
  std::vector<std::int64_t> all_special_ids_;
  std::unordered_set<std::int64_t> all_special_id_set_;
  // Tokens decode() keeps apart from their neighbours (PreTrainedTokenizer._decode's legacy_added_tokens).
  std::unordered_set<std::string> legacy_added_;
  // Added tokens by first byte, longest first (the trie of tokenization_utils.Trie).
  std::array<std::vector<std::string>, 256> added_by_first_byte_;
  // Tokens the lower-casing pass keeps as they are, in regex alternation order.
  std::vector<std::string> lowercase_keep_;
  std::array<bool, 256> lowercase_keep_first_{};
};

/// Shared base of the sentencepiece tokenizers.
class SentencePieceTokenizer : public Tokenizer {
 public:
  ~SentencePieceTokenizer() override;
  std::int64_t vocab_size() const override;
  bool legacy() const { return legacy_; }
  /// The sentencepiece pieces of `text` (sp_model.encode(text, out_type=str)).
  std::vector<std::string> sp_encode(std::string_view text) const;
  /// sp_model.decode(pieces).
  std::string sp_decode(const std::vector<std::string>& pieces) const;

 protected:
  SentencePieceTokenizer(const std::string& model_file, const TokenizerConfig& config, bool default_clean_up);
  std::vector<std::string> tokenize_checked(std::string_view text) const override;
  std::vector<std::string> tokenize_chunk(std::string_view text) const override;
  std::int64_t base_token_to_id(std::string_view token) const override;
  std::string base_id_to_token(std::int64_t id) const override;
  bool base_vocab_contains(std::string_view token) const override;
  std::int64_t base_vocab_distinct_size() const override;
  /// The part of convert_tokens_to_string shared by T5 and LLaMA.
  /// t5_style: every leading underline of the first token removed, a space before the text ahead
  /// of each special token, result stripped; otherwise (LLaMA) one underline removed and the space
  /// only when space_before_special (legacy) and not at the first token.
  std::string join_pieces(std::vector<std::string> tokens, bool t5_style, bool space_before_special) const;

  struct Impl;
  std::unique_ptr<Impl> sp_;
  bool legacy_ = true;
};

/// transformers T5Tokenizer (slow).
class T5Tokenizer : public SentencePieceTokenizer {
 public:
  /// T5Tokenizer(vocab_file=model_file, **config).
  explicit T5Tokenizer(const std::string& model_file, const TokenizerConfig& config = default_config());
  /// eos </s>, unk <unk>, pad <pad>, 100 extra ids, clean-up on.
  static TokenizerConfig default_config();
  static std::unique_ptr<T5Tokenizer> from_pretrained(const std::string& dir);

  std::string class_name() const override { return "T5Tokenizer"; }
  std::string convert_tokens_to_string(std::vector<std::string> tokens) const override;
  std::vector<std::int64_t> build_inputs_with_special_tokens(std::vector<std::int64_t> ids) const override;
  int extra_ids() const { return extra_ids_; }

 private:
  int extra_ids_ = 100;
};

/// transformers LlamaTokenizer (slow).
class LlamaTokenizer : public SentencePieceTokenizer {
 public:
  explicit LlamaTokenizer(const std::string& model_file, const TokenizerConfig& config = default_config());
  /// bos <s>, eos </s>, unk <unk>, no pad, add_bos_token, clean-up off.
  static TokenizerConfig default_config();
  static std::unique_ptr<LlamaTokenizer> from_pretrained(const std::string& dir);

  std::string class_name() const override { return "LlamaTokenizer"; }
  std::string convert_tokens_to_string(std::vector<std::string> tokens) const override;
  std::vector<std::int64_t> build_inputs_with_special_tokens(std::vector<std::int64_t> ids) const override;
  bool add_bos_token() const { return add_bos_token_; }
  bool add_eos_token() const { return add_eos_token_; }

 private:
  bool add_bos_token_ = true;
  bool add_eos_token_ = false;
};

/// transformers BertTokenizer (slow): BasicTokenizer + WordpieceTokenizer.
class BertTokenizer : public Tokenizer {
 public:
  /// BertTokenizer(vocab_file=vocab_file, **config). IoError / FormatError for the vocab file.
  explicit BertTokenizer(const std::string& vocab_file, const TokenizerConfig& config = default_config());
  /// unk [UNK], sep [SEP], pad [PAD], cls [CLS], mask [MASK], do_lower_case, clean-up on.
  static TokenizerConfig default_config();
  static std::unique_ptr<BertTokenizer> from_pretrained(const std::string& dir);
  ~BertTokenizer() override;

  std::string class_name() const override { return "BertTokenizer"; }
  std::string convert_tokens_to_string(std::vector<std::string> tokens) const override;
  std::vector<std::int64_t> build_inputs_with_special_tokens(std::vector<std::int64_t> ids) const override;
  std::int64_t vocab_size() const override;
  bool do_lower_case() const { return do_lower_case_; }

  /// BasicTokenizer.tokenize(text, never_split=all_special_tokens) on valid UTF-8.
  std::vector<std::string> basic_tokenize(std::string_view text) const;
  /// WordpieceTokenizer.tokenize on one whitespace-separated chunk.
  std::vector<std::string> wordpiece_tokenize(std::string_view text) const;

 protected:
  std::vector<std::string> tokenize_chunk(std::string_view text) const override;
  std::int64_t base_token_to_id(std::string_view token) const override;
  std::string base_id_to_token(std::int64_t id) const override;
  bool base_vocab_contains(std::string_view token) const override;
  std::int64_t base_vocab_distinct_size() const override;
  bool lowercases_input() const override { return do_lower_case_; }

 private:
  std::unordered_map<std::string, std::int64_t> vocab_;
  std::unordered_map<std::int64_t, std::string> ids_to_tokens_;
  std::unordered_set<std::string> never_split_;
  bool do_lower_case_ = true;
  bool do_basic_tokenize_ = true;
  bool tokenize_chinese_chars_ = true;
  std::optional<bool> strip_accents_;
  std::size_t max_input_chars_per_word_ = 100;
};

/// transformers GPT2Tokenizer (slow): byte-level BPE, as OPT / BLIP-2-OPT use it.
class GPT2Tokenizer : public Tokenizer {
 public:
  /// GPT2Tokenizer(vocab_file, merges_file, **config). IoError for a missing file; FormatError for
  /// a vocab.json that is not a JSON object of token -> non-negative integer id, or a merges.txt
  /// line (after the first, which is skipped as transformers does) that is not exactly two symbols;
  /// ConfigError for an unsupported `errors` mode.
  GPT2Tokenizer(const std::string& vocab_file, const std::string& merges_file,
                const TokenizerConfig& config = default_config());
  /// unk / bos / eos <|endoftext|>, no pad, add_bos_token false, add_prefix_space false,
  /// errors "replace", clean-up on.
  static TokenizerConfig default_config();
  static std::unique_ptr<GPT2Tokenizer> from_pretrained(const std::string& dir);
  ~GPT2Tokenizer() override;

  std::string class_name() const override { return "GPT2Tokenizer"; }
  /// The tokens' byte symbols mapped back to bytes, decoded per errors(). A token holding a
  /// character outside the byte alphabet (only possible for an added token) contributes its own
  /// UTF-8 bytes, as the fast tokenizer's ByteLevel decoder does (the slow one raises KeyError).
  std::string convert_tokens_to_string(std::vector<std::string> tokens) const override;
  std::vector<std::int64_t> build_inputs_with_special_tokens(std::vector<std::int64_t> ids) const override;
  std::int64_t vocab_size() const override;
  bool add_bos_token() const { return add_bos_token_; }
  bool add_prefix_space() const { return add_prefix_space_; }
  const std::string& errors() const { return errors_; }

  /// GPT-2's pre-tokenisation regex ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|
  /// \s+(?!\S)|\s+, findall) on valid UTF-8: the pieces, as UTF-8 text. As in Python's `regex`
  /// module, \s is the White_Space property; \p{L} / \p{N} are utf8proc's L* / N* categories.
  static std::vector<std::string> pre_tokenize(std::string_view text);
  /// bytes_to_unicode(): the symbol standing for each byte (UTF-8 encoded).
  static const std::string& byte_symbol(unsigned char byte);
  /// bpe(token) on a string of byte symbols: the merged symbols.
  std::vector<std::string> bpe(std::string_view symbols) const;

 protected:
  std::vector<std::string> tokenize_checked(std::string_view text) const override;
  std::vector<std::string> tokenize_chunk(std::string_view text) const override;
  std::int64_t base_token_to_id(std::string_view token) const override;
  std::string base_id_to_token(std::int64_t id) const override;
  bool base_vocab_contains(std::string_view token) const override;
  std::int64_t base_vocab_distinct_size() const override;

 private:
  struct Merges;
  std::unordered_map<std::string, std::int64_t> encoder_;
  std::unordered_map<std::int64_t, std::string> decoder_;
  std::unique_ptr<Merges> merges_;
  bool add_bos_token_ = false;
  bool add_prefix_space_ = false;
  std::string errors_ = "replace";
};

/// transformers.AutoTokenizer.
struct AutoTokenizer {
  static std::unique_ptr<Tokenizer> from_pretrained(const std::string& dir) { return Tokenizer::from_pretrained(dir); }
};

/// Reads tokenizer_config.json + special_tokens_map.json + added_tokens.json of `dir` into the
/// constructor arguments of `tokenizer_class` (as from_pretrained does). Missing files are allowed.
TokenizerConfig load_tokenizer_config(const std::string& dir, const std::string& tokenizer_class);
/// tokenizer_config.json's "tokenizer_class" (or the class guessed from the files present).
std::string detect_tokenizer_class(const std::string& dir);

/// Throws InvalidArgument naming `what` and the byte offset of the first invalid UTF-8 sequence
/// (overlong forms, surrogates and code points above U+10FFFF are invalid too).
void check_utf8(std::string_view text, const char* what = "text");

}  // namespace instructblip

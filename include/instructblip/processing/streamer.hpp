#pragma once
// TextStreamer: incremental detokenisation for printing an answer while it is generated (what
// transformers' TextStreamer does for a single sequence). Fed the generated ids one at a time, it
// returns the text that has become final, never a piece of a UTF-8 sequence, and once the
// sequence ends the concatenation of everything it returned equals
// tokenizer.decode(ids, skip_special_tokens) of the whole sequence.
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "instructblip/processing/tokenizer.hpp"

namespace instructblip {

class TextStreamer {
 public:
  /// Called with every non-empty piece put() / end() return.
  using Callback = std::function<void(std::string_view text)>;

  /// `tokenizer` must outlive the streamer. Ids the tokenizer has no entry for (a model's
  /// embedding matrix may have more rows than its tokenizer has ids: Flan-T5 32128 vs 32100) have
  /// no text and are left out.
  explicit TextStreamer(const Tokenizer& tokenizer, Callback on_text = {}, bool skip_special_tokens = true);

  /// Appends one generated id; returns the text that became final with it (possibly empty).
  /// Held back until a later token: a character whose bytes are still arriving (byte-fallback
  /// tokens decode to U+FFFD until the sequence is complete), trailing whitespace and the last
  /// three characters (the next token may complete one of decode()'s clean-up replacements, e.g.
  /// " n't" or " ' ", which join it to the previous word).
  std::string put(std::int64_t id);
  /// Appends several ids (e.g. generation::GenerateHooks::on_tokens' row), one put() each.
  std::string put(const std::vector<std::int64_t>& ids);
  /// The sequence is complete: returns the rest of the decoded text. After end() the streamer is
  /// empty again, ready for another sequence.
  std::string end();

  /// The ids fed since construction / the last end() (those the tokenizer has an entry for).
  const std::vector<std::int64_t>& ids() const { return ids_; }
  /// Everything returned since construction / the last end().
  const std::string& printed() const { return printed_; }

 private:
  std::string emit(std::string piece);

  const Tokenizer* tokenizer_;
  Callback on_text_;
  bool skip_special_tokens_;
  std::vector<std::int64_t> ids_;
  std::string printed_;
};

}  // namespace instructblip

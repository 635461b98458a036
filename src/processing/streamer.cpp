#include "instructblip/processing/streamer.hpp"

#include <algorithm>
#include <utility>

#include "../internal/text.hpp"

namespace instructblip {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD: what a partial byte sequence decodes to

// How many characters at the end of the text a later token can still change: decode()'s
// clean_up_tokenization joins " ." " ?" " !" " ," " ' " " n't" " 'm" " 's" " 've" " 're" (at most 4
// characters), so a replacement that a new token completes starts within the last 3 characters.
constexpr int kCleanUpReach = 3;

// The end of the part of `text` that no later token can change: whole UTF-8 characters, except
// the last kCleanUpReach ones, without trailing U+FFFD (bytes still arriving) or whitespace.
std::size_t stable_end(std::string_view text) {
  std::size_t end = text::valid_utf8_prefix(text);
  for (int i = 0; i < kCleanUpReach && end > 0; ++i) {
    --end;
    while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;  // to the character's start
  }
  for (;;) {
    const std::string_view head = text.substr(0, end);
    if (head.size() >= kReplacement.size() && head.substr(head.size() - kReplacement.size()) == kReplacement) {
      end -= kReplacement.size();
      continue;
    }
    const std::string_view trimmed = text::rstrip(head);
    if (trimmed.size() != head.size()) {
      end = trimmed.size();
      continue;
    }
    return end;
  }
}

}  // namespace

TextStreamer::TextStreamer(const Tokenizer& tokenizer, Callback on_text, bool skip_special_tokens)
    : tokenizer_(&tokenizer), on_text_(std::move(on_text)), skip_special_tokens_(skip_special_tokens) {}

std::string TextStreamer::emit(std::string piece) {
  if (!piece.empty()) {
    printed_ += piece;
    if (on_text_) on_text_(piece);
  }
  return piece;
}

std::string TextStreamer::put(std::int64_t id) {
  if (id < 0 || id >= tokenizer_->size()) return {};
  ids_.push_back(id);
  const std::string text = tokenizer_->decode(ids_, skip_special_tokens_);
  // Only text that extends what was already returned can be returned; when decoding changed an
  // earlier part (rare: the held-back rules prevent the known cases), wait for end().
  if (text.compare(0, printed_.size(), printed_) != 0) return {};
  const std::size_t end = stable_end(text);
  if (end <= printed_.size()) return {};
  return emit(text.substr(printed_.size(), end - printed_.size()));
}

std::string TextStreamer::put(const std::vector<std::int64_t>& ids) {
  std::string out;
  for (std::int64_t id : ids) out += put(id);
  return out;
}

std::string TextStreamer::end() {
  const std::string text = tokenizer_->decode(ids_, skip_special_tokens_);
  std::string rest;
  if (text.compare(0, printed_.size(), printed_) == 0) rest = text.substr(printed_.size());
  emit(rest);
  ids_.clear();
  printed_.clear();
  return rest;
}

}  // namespace instructblip

// libFuzzer harness: the four tokenizers on arbitrary bytes.
// The T5 (t5-tiny), LLaMA (llama-tiny), Q-Former BERT and OPT GPT2 (blip2-opt-tiny's byte-level
// BPE) tokenizers are loaded once from the fixture checkpoints. Each input is used whole as a prompt (tokenize / encode / encode_batch on
// its lines / decode of the result), and also read as a sequence of 16-bit little-endian token
// ids (some negative or past the vocabulary) to decode. Text that is not valid UTF-8 must be
// refused with InvalidArgument; on valid UTF-8, encoding and decoding what was encoded must not
// throw; decoding arbitrary ids may only throw InvalidArgument.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_common.hpp"
#include "instructblip/core/error.hpp"
#include "instructblip/processing/tokenizer.hpp"

using namespace instructblip;

namespace {

std::vector<std::unique_ptr<Tokenizer>>* g_toks = nullptr;

bool valid_utf8(std::string_view s) {
  try {
    check_utf8(s);
    return true;
  } catch (const InvalidArgument&) {
    return false;
  }
}

void run(const Tokenizer& tok, std::string_view text, bool utf8, const std::vector<std::int64_t>& raw_ids) {
  const std::string who = tok.class_name();
  try {
    const std::vector<std::string> pieces = tok.tokenize(text);
    const std::vector<std::int64_t> ids = tok.encode(text);
    const std::vector<std::int64_t> plain = tok.encode(text, /*add_special_tokens=*/false);
    IB_FUZZ_CHECK(utf8, who + ": invalid UTF-8 accepted");
    IB_FUZZ_CHECK(plain.size() == pieces.size(), who + ": encode and tokenize disagree");
    const std::int64_t n = tok.size();  // len(tokenizer); O(added tokens), so asked once
    for (std::int64_t id : ids) IB_FUZZ_CHECK(id >= 0 && id < n, who + ": id out of range");
    (void)tok.decode(ids);
    (void)tok.decode(ids, /*skip_special_tokens=*/true, /*clean_up_tokenization_spaces=*/false);
    (void)tok.decode(plain, false, true, /*spaces_between_special_tokens=*/false);
    (void)tok.convert_ids_to_tokens(ids, true);
    (void)tok.convert_tokens_to_ids(pieces);

    // A batch: the text's lines, padded and truncated.
    std::vector<std::string> lines;
    std::size_t start = 0;
    while (lines.size() < 8) {
      const std::size_t nl = text.find('\n', start);
      lines.emplace_back(text.substr(start, nl == std::string_view::npos ? nl : nl - start));
      if (nl == std::string_view::npos) break;
      start = nl + 1;
    }
    const std::int64_t max_len = std::int64_t(text.size() % 13);
    if (tok.pad_token_id()) {
      const BatchEncoding b = tok.encode_batch(lines, /*padding=*/true, /*truncation=*/true, max_len + 3);
      IB_FUZZ_CHECK(b.is_rectangular(), who + ": padded batch not rectangular");
      (void)tok.batch_decode(b.input_ids, true);
    }
    (void)tok.encode_batch(lines, false, false, std::nullopt, false);
  } catch (const InvalidArgument& e) {
    IB_FUZZ_CHECK(!utf8, who + ": valid UTF-8 refused: " + e.what());
  }
  try {
    (void)tok.decode(raw_ids);
    (void)tok.decode(raw_ids, true, false, false);
    (void)tok.convert_ids_to_tokens(raw_ids, true);
  } catch (const InvalidArgument&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  static std::vector<std::unique_ptr<Tokenizer>> toks;
  toks.push_back(Tokenizer::from_pretrained(ibfuzz::data_path("t5-tiny/model")));
  toks.push_back(Tokenizer::from_pretrained(ibfuzz::data_path("llama-tiny/model")));
  toks.push_back(Tokenizer::from_pretrained(ibfuzz::data_path("t5-tiny/model/qformer_tokenizer")));
  toks.push_back(Tokenizer::from_pretrained(ibfuzz::data_path("blip2-opt-tiny/model")));
  g_toks = &toks;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const bool utf8 = valid_utf8(text);
  for (const auto& tok : *g_toks) {
    // ids spread over [-4, len(tokenizer) + 4)
    const std::int64_t span = tok->size() + 8;
    std::vector<std::int64_t> raw_ids;
    for (std::size_t i = 0; i + 1 < size; i += 2)
      raw_ids.push_back(std::int64_t(data[i] | (data[i + 1] << 8)) % span - 4);
    run(*tok, text, utf8, raw_ids);
  }
  return 0;
}

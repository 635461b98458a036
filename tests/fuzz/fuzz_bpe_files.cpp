// libFuzzer harness: a byte-level BPE vocabulary and merge list, read as GPT2Tokenizer reads them.
//
// Input layout: vocab.json, a NUL byte (which valid JSON never contains), merges.txt; without a
// NUL the whole input is vocab.json and merges.txt holds just the "#version" line. The tokenizer
// is built with the OPT settings (bos / eos </s>, unk <unk>, pad <pad>, add_bos_token). One that
// gets built then tokenizes a few fixed strings and the input's own text; decoding what encode
// produced must succeed (errors="replace" never throws), and every id must decode.
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

ibfuzz::ScratchDir* g_dir = nullptr;

const char* const kTexts[] = {
    "What is unusual about this image?",
    "</s> a <pad> b <unk> c <s> d <|endoftext|>",
    "  \t lead and trail  \n\n",
    "don't IT'S we've 3.14159 1,000 \xC3\xA9t\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80 ne\xCC\x81 \xC4\xA0x",
    "",
};

void exercise(const Tokenizer& tok, std::string_view extra) {
  std::vector<std::string> texts(std::begin(kTexts), std::end(kTexts));
  try {
    check_utf8(extra);
    texts.emplace_back(extra.substr(0, 4096));
  } catch (const InvalidArgument&) {
  }
  for (const std::string& text : texts) {
    std::vector<std::int64_t> ids, plain;
    try {
      ids = tok.encode(text);
      plain = tok.encode(text, /*add_special_tokens=*/false);
      (void)tok.tokenize(text);
    } catch (const InvalidArgument&) {  // a piece outside the vocabulary and no <unk> in it
      continue;
    }
    try {
      (void)tok.decode(ids);
      (void)tok.decode(ids, /*skip_special_tokens=*/true);
      (void)tok.decode(plain, false, false, false);
      (void)tok.convert_ids_to_tokens(ids);
    } catch (const Error& e) {
      IB_FUZZ_CHECK(false, std::string("decoding what encode produced failed: ") + e.what());
    }
  }
  (void)tok.size();
  try {
    (void)tok.encode_batch(texts, /*padding=*/true, /*truncation=*/true, std::int64_t(7));
  } catch (const InvalidArgument&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  static ibfuzz::ScratchDir dir;
  g_dir = &dir;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::size_t nul = input.find('\0');
  const std::string_view vocab = input.substr(0, nul);
  const std::string_view merges = nul == std::string_view::npos ? std::string_view("#version: 0.2\n")
                                                                : input.substr(nul + 1);
  const std::string vocab_path = g_dir->file("vocab.json"), merges_path = g_dir->file("merges.txt");
  ibfuzz::write_file(vocab_path, vocab);
  ibfuzz::write_file(merges_path, merges);

  TokenizerConfig cfg = GPT2Tokenizer::default_config();
  cfg.bos_token = cfg.eos_token = AddedToken::special_token("</s>");
  cfg.unk_token = AddedToken::special_token("<unk>");
  cfg.pad_token = AddedToken::special_token("<pad>");
  cfg.add_bos_token = true;
  std::unique_ptr<GPT2Tokenizer> tok;
  try {
    tok = std::make_unique<GPT2Tokenizer>(vocab_path, merges_path, cfg);
  } catch (const Error&) {
    return 0;
  }
  try {
    exercise(*tok, merges);
  } catch (const Error&) {
  }
  return 0;
}

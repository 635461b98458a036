// libFuzzer harness: a checkpoint's tokenizer configuration files, read as
// AutoTokenizer.from_pretrained reads them (load_tokenizer_config + the tokenizer constructors).
//
// Input layout: byte 0 picks the class (% 4: 0 = from tokenizer_config.json's tokenizer_class,
// as Tokenizer::from_pretrained, 1 = T5Tokenizer, 2 = LlamaTokenizer, 3 = BertTokenizer); the rest
// is split at NUL bytes (which valid JSON never contains) into tokenizer_config.json,
// special_tokens_map.json and added_tokens.json; a missing or empty part means no such file.
// The scratch directory links to the fixture models (t5-tiny's spiece.model, llama-tiny's
// tokenizer.model, the Q-Former's vocab.txt, blip2-opt-tiny's vocab.json + merges.txt: a
// tokenizer_class GPT2Tokenizer is reached through class 0). A tokenizer that gets built then encodes and
// decodes a few strings full of special tokens; decoding what encode produced must succeed.
#include <cstddef>
#include <cstdint>
#include <filesystem>
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
const char* const kFiles[3] = {"tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"};

const char* const kTexts[] = {
    "Hello world! What is unusual about this image?",
    "<s> a </s> b <pad> c <unk> d <extra_id_0> e <extra_id_99> f [CLS] g [SEP] h [MASK] i [PAD] [UNK] [DEC] "
    "<|endoftext|>",
    "  \t lead and trail  <s>  ",
    "J'ai \xC3\xA9t\xC3\xA9 l\xC3\xA0 \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80 ne\xCC\x81 \xE2\x96\x81x",
    "",
};

void exercise(const Tokenizer& tok) {
  std::vector<std::string> texts(std::begin(kTexts), std::end(kTexts));
  for (const std::string& text : texts) {
    const std::vector<std::int64_t> ids = tok.encode(text);
    const std::vector<std::int64_t> plain = tok.encode(text, /*add_special_tokens=*/false);
    (void)tok.tokenize(text);
    try {
      (void)tok.decode(ids);
      (void)tok.decode(ids, /*skip_special_tokens=*/true);
      (void)tok.decode(plain, false, false, false);
      (void)tok.convert_ids_to_tokens(ids);
    } catch (const Error& e) {
      // errors="strict" refuses the bytes of a special token that is a lone byte symbol (as
      // transformers raises UnicodeDecodeError); every other decode must succeed.
      const auto* gpt2 = dynamic_cast<const GPT2Tokenizer*>(&tok);
      IB_FUZZ_CHECK(gpt2 && gpt2->errors() == "strict",
                    std::string("decoding what encode produced failed: ") + e.what());
    }
  }
  for (std::int64_t id : tok.all_special_ids()) (void)tok.convert_id_to_token(id);
  (void)tok.size();
  (void)tok.num_special_tokens_to_add();
  try {
    (void)tok.encode_batch(texts, /*padding=*/true, /*truncation=*/true);
  } catch (const InvalidArgument&) {  // no pad token, or nothing fits model_max_length
  }
  try {
    (void)tok.encode_batch(texts, /*padding=*/false, /*truncation=*/false, std::int64_t(5));
  } catch (const InvalidArgument&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  static ibfuzz::ScratchDir dir;
  g_dir = &dir;
  namespace fs = std::filesystem;
  fs::create_symlink(ibfuzz::data_path("t5-tiny/model/spiece.model"), dir.file("spiece.model"));
  fs::create_symlink(ibfuzz::data_path("llama-tiny/model/tokenizer.model"), dir.file("tokenizer.model"));
  fs::create_symlink(ibfuzz::data_path("t5-tiny/model/qformer_tokenizer/vocab.txt"), dir.file("vocab.txt"));
  fs::create_symlink(ibfuzz::data_path("blip2-opt-tiny/model/vocab.json"), dir.file("vocab.json"));
  fs::create_symlink(ibfuzz::data_path("blip2-opt-tiny/model/merges.txt"), dir.file("merges.txt"));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const int which = data[0] % 4;
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  for (int f = 0; f < 3; ++f) {
    const std::size_t nul = rest.find('\0');
    const std::string_view part = rest.substr(0, nul);
    if (part.empty()) ibfuzz::remove_file(g_dir->file(kFiles[f]));
    else ibfuzz::write_file(g_dir->file(kFiles[f]), part);
    rest = nul == std::string_view::npos ? std::string_view() : rest.substr(nul + 1);
  }

  const std::string& dir = g_dir->path();
  std::unique_ptr<Tokenizer> tok;
  try {
    (void)detect_tokenizer_class(dir);
  } catch (const Error&) {
  }
  try {
    switch (which) {
      case 0: tok = Tokenizer::from_pretrained(dir); break;
      case 1: tok = T5Tokenizer::from_pretrained(dir); break;
      case 2: tok = LlamaTokenizer::from_pretrained(dir); break;
      default: tok = BertTokenizer::from_pretrained(dir); break;
    }
  } catch (const Error&) {
    return 0;
  }
  try {
    exercise(*tok);
  } catch (const Error&) {
  }
  return 0;
}

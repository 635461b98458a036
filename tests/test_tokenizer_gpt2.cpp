// GPT2Tokenizer (byte-level BPE, as OPT / BLIP-2-OPT use it) against transformers 4.36.2's slow
// GPT2Tokenizer:
//  * every string of tests/data/tokenizers/opt_bpe_ours.json: tokens, ids with and without the
//    bos, attention masks, decodes with and without skip_special_tokens; its padded batch;
//  * the blip2-opt-tiny checkpoint's tokenizer files through Tokenizer::from_pretrained: the same
//    ids, the checkpoint's settings (its reference.json) and the processor's prompt ids (its
//    reference.safetensors);
//  * errors="replace" decoding as CPython's bytes.decode;
//  * typed errors: invalid UTF-8 text, missing / corrupted vocab.json and merges.txt, bad settings.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "instructblip/core/error.hpp"
#include "instructblip/processing/tokenizer.hpp"
#include "reference_util.hpp"

namespace ib = instructblip;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string kTokDir = std::string(IB_TEST_DATA_DIR) + "/tokenizers";
const std::string kFixture = std::string(IB_TEST_DATA_DIR) + "/blip2-opt-tiny";
const std::string kCheckpoint = kFixture + "/model";
// The fixture's opt_bpe_1000-vocab.json / -merges.txt, which the checkpoint ships byte for byte
// (the same sha256 in the fixture index) as vocab.json / merges.txt.
const std::string kVocab = kCheckpoint + "/vocab.json";
const std::string kMerges = kCheckpoint + "/merges.txt";

json load_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  return json::parse(std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>()));
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void write_text(const fs::path& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary);
  f << content;
}

std::vector<std::int64_t> ids_of(const json& j) { return j.get<std::vector<std::int64_t>>(); }

std::string show(const std::vector<std::int64_t>& v) {
  std::ostringstream o;
  o << "[";
  for (std::size_t i = 0; i < v.size(); ++i) o << (i ? ", " : "") << v[i];
  o << "]";
  return o.str();
}

std::string show(const std::vector<std::string>& v) {
  std::ostringstream o;
  o << "[";
  for (std::size_t i = 0; i < v.size(); ++i) o << (i ? ", " : "") << '"' << v[i] << '"';
  o << "]";
  return o.str();
}

// The constructor of opt_bpe_ours.json: GPT2Tokenizer(vocab, merges, bos_token='</s>',
// eos_token='</s>', unk_token='<unk>', pad_token='<pad>', add_bos_token=True).
std::unique_ptr<ib::GPT2Tokenizer> make_fixture_tokenizer() {
  ib::TokenizerConfig cfg = ib::GPT2Tokenizer::default_config();
  cfg.bos_token = ib::AddedToken::special_token("</s>");
  cfg.eos_token = ib::AddedToken::special_token("</s>");
  cfg.unk_token = ib::AddedToken::special_token("<unk>");
  cfg.pad_token = ib::AddedToken::special_token("<pad>");
  cfg.add_bos_token = true;
  return std::make_unique<ib::GPT2Tokenizer>(kVocab, kMerges, cfg);
}

// A scratch directory under the build tree, emptied first.
fs::path scratch(const std::string& name) {
  const fs::path p = fs::path(IB_TEST_TMP_DIR) / ("gpt2_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// Checks every string of opt_bpe_ours.json against `tok`; returns how many were checked.
int check_fixture_strings(const ib::Tokenizer& tok, const json& fx) {
  int checked = 0;
  for (const auto& s : fx["strings"]) {
    const std::string text = s["text"].get<std::string>();
    SCOPED_TRACE("text=" + json(text).dump());
    const auto ids = tok.encode(text, true);
    EXPECT_EQ(ids, ids_of(s["input_ids"])) << "got " << show(ids);
    const auto ids_ns = tok.encode(text, false);
    EXPECT_EQ(ids_ns, ids_of(s["input_ids_no_special"])) << "got " << show(ids_ns);
    const auto toks = tok.convert_ids_to_tokens(ids_of(s["input_ids"]));
    EXPECT_EQ(toks, s["tokens"].get<std::vector<std::string>>()) << "got " << show(toks);
    const auto pieces = tok.tokenize(text);
    EXPECT_EQ(tok.convert_tokens_to_ids(pieces), ids_of(s["input_ids_no_special"])) << "pieces " << show(pieces);
    const auto batch = tok.encode_batch({text});
    EXPECT_EQ(batch.input_ids.at(0), ids_of(s["input_ids"]));
    EXPECT_EQ(batch.attention_mask.at(0), ids_of(s["attention_mask"]));
    EXPECT_EQ(tok.decode(ids_of(s["input_ids"]), false), s["decode_keep_special"].get<std::string>());
    EXPECT_EQ(tok.decode(ids_of(s["input_ids"]), true), s["decode_skip_special"].get<std::string>());
    ++checked;
  }
  return checked;
}

TEST(GPT2Tokenizer, EveryFixtureStringMatchesTransformers) {
  const json fx = load_json(kTokDir + "/opt_bpe_ours.json");
  auto tok = make_fixture_tokenizer();
  EXPECT_EQ(fx["strings"].size(), 50u);
  EXPECT_EQ(check_fixture_strings(*tok, fx), 50);
}

TEST(GPT2Tokenizer, FixtureDescription) {
  const json fx = load_json(kTokDir + "/opt_bpe_ours.json");
  auto tok = make_fixture_tokenizer();
  const json& d = fx["tokenizer"];
  EXPECT_EQ(tok->class_name(), d["class"].get<std::string>());
  EXPECT_EQ(tok->size(), d["len"].get<std::int64_t>());
  EXPECT_EQ(tok->vocab_size(), d["vocab_size"].get<std::int64_t>());
  EXPECT_EQ(ib::side_name(tok->padding_side()), d["padding_side"].get<std::string>());
  EXPECT_EQ(tok->additional_special_tokens().size(), d["n_additional_special_tokens"].get<std::size_t>());
  EXPECT_EQ(tok->add_bos_token(), d["add_bos_token"].get<bool>());
  EXPECT_EQ(tok->add_prefix_space(), d["add_prefix_space"].get<bool>());
  EXPECT_EQ(tok->clean_up_tokenization_spaces(), d["clean_up_tokenization_spaces"].get<bool>());
  EXPECT_EQ(tok->errors(), d["errors"].get<std::string>());
  for (const auto& [attr, role] : {std::pair{"bos_token", ib::SpecialToken::Bos}, {"eos_token", ib::SpecialToken::Eos},
                                   {"unk_token", ib::SpecialToken::Unk}, {"pad_token", ib::SpecialToken::Pad}}) {
    EXPECT_EQ(tok->special_token_id(role), d["special_token_ids"][attr].get<std::int64_t>()) << attr;
    ASSERT_TRUE(tok->special_token(role).has_value()) << attr;
    EXPECT_EQ(tok->special_token(role)->content, d["special_tokens"][attr].get<std::string>()) << attr;
  }
  EXPECT_FALSE(tok->sep_token().has_value());
  EXPECT_FALSE(tok->cls_token().has_value());
  EXPECT_FALSE(tok->mask_token().has_value());
  // bos + ids, never an eos (tokenization_gpt2.py build_inputs_with_special_tokens).
  EXPECT_EQ(tok->build_inputs_with_special_tokens({7, 8}), (std::vector<std::int64_t>{2, 7, 8}));
  EXPECT_EQ(tok->num_special_tokens_to_add(), 1u);
}

TEST(GPT2Tokenizer, PaddedBatch) {
  const json fx = load_json(kTokDir + "/opt_bpe_ours.json");
  auto tok = make_fixture_tokenizer();
  const json& pb = fx["padded_batch"];
  const auto texts = pb["texts"].get<std::vector<std::string>>();
  const auto batch = tok->encode_batch(texts, /*padding=*/true);
  ASSERT_EQ(batch.batch_size(), texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(batch.input_ids[i], ids_of(pb["input_ids"][i])) << i;
    EXPECT_EQ(batch.attention_mask[i], ids_of(pb["attention_mask"][i])) << i;
  }
  EXPECT_EQ(batch.input_ids_tensor().shape(), (ib::Shape{3, 16}));
}

// ---------------------------------------------------------------------------------------------
// The checkpoint's tokenizer files
// ---------------------------------------------------------------------------------------------

TEST(GPT2Tokenizer, CheckpointFromPretrained) {
  const json ref = load_json(kFixture + "/reference.json");
  const json& d = ref["tokenizer"];
  EXPECT_EQ(ib::detect_tokenizer_class(kCheckpoint), "GPT2Tokenizer");
  auto tok = ib::AutoTokenizer::from_pretrained(kCheckpoint);
  ASSERT_NE(dynamic_cast<ib::GPT2Tokenizer*>(tok.get()), nullptr) << tok->class_name();
  const auto& gpt2 = dynamic_cast<const ib::GPT2Tokenizer&>(*tok);
  EXPECT_EQ(tok->class_name(), d["class"].get<std::string>());
  EXPECT_EQ(tok->size(), d["len"].get<std::int64_t>());
  EXPECT_EQ(tok->vocab_size(), d["vocab_size"].get<std::int64_t>());
  EXPECT_EQ(ib::side_name(tok->padding_side()), d["padding_side"].get<std::string>());
  EXPECT_EQ(gpt2.add_bos_token(), d["add_bos_token"].get<bool>());
  EXPECT_EQ(gpt2.add_prefix_space(), d["add_prefix_space"].get<bool>());
  EXPECT_EQ(tok->clean_up_tokenization_spaces(), d["clean_up_tokenization_spaces"].get<bool>());
  EXPECT_EQ(gpt2.errors(), "replace");
  for (const auto& [attr, role] : {std::pair{"bos_token", ib::SpecialToken::Bos}, {"eos_token", ib::SpecialToken::Eos},
                                   {"unk_token", ib::SpecialToken::Unk}, {"pad_token", ib::SpecialToken::Pad}}) {
    EXPECT_EQ(tok->special_token_id(role), d["special_token_ids"][attr].get<std::int64_t>()) << attr;
    EXPECT_EQ(tok->special_token(role)->content, d["special_tokens"][attr].get<std::string>()) << attr;
  }
  // model_max_length is 1e30 in the file: unbounded.
  EXPECT_EQ(tok->model_max_length(), ib::kUnboundedLength);
  // The same tokenizer as the fixture's constructor.
  const json fx = load_json(kTokDir + "/opt_bpe_ours.json");
  EXPECT_EQ(check_fixture_strings(*tok, fx), 50);
  // GPT2Tokenizer::from_pretrained reads the same files.
  auto direct = ib::GPT2Tokenizer::from_pretrained(kCheckpoint);
  EXPECT_EQ(direct->encode("Question: What is in the image? Answer:"),
            tok->encode("Question: What is in the image? Answer:"));
}

TEST(GPT2Tokenizer, CheckpointProcessorPromptIds) {
  const ibtest::Reference ref("blip2-opt-tiny");
  auto tok = ib::AutoTokenizer::from_pretrained(kCheckpoint);
  int checked = 0;
  for (const std::string key : {"a", "b"}) {
    SCOPED_TRACE("input " + key);
    const json& in = ref.json["inputs"][key];
    std::vector<std::string> texts;
    if (in["text"].is_string()) texts.push_back(in["text"].get<std::string>());
    else texts = in["text"].get<std::vector<std::string>>();
    const auto enc = tok->encode_batch(texts, /*padding=*/key == "b");
    EXPECT_EQ(enc.input_ids, ibtest::rows_of(ref.get(key + ".input_ids")));
    EXPECT_EQ(enc.attention_mask, ibtest::rows_of(ref.get(key + ".attention_mask")));
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

TEST(GPT2Tokenizer, DispatchWithoutTokenizerClass) {
  // vocab.json + merges.txt without a tokenizer_config.json: GPT2Tokenizer with the class defaults.
  const fs::path dir = scratch("bare");
  fs::copy_file(kVocab, dir / "vocab.json");
  fs::copy_file(kMerges, dir / "merges.txt");
  EXPECT_EQ(ib::detect_tokenizer_class(dir.string()), "GPT2Tokenizer");
  auto tok = ib::AutoTokenizer::from_pretrained(dir.string());
  EXPECT_EQ(tok->class_name(), "GPT2Tokenizer");
  EXPECT_EQ(tok->bos_token(), "<|endoftext|>");
  EXPECT_EQ(tok->eos_token(), "<|endoftext|>");
  EXPECT_EQ(tok->unk_token(), "<|endoftext|>");
  EXPECT_FALSE(tok->pad_token().has_value());
  EXPECT_TRUE(tok->clean_up_tokenization_spaces());
  // add_bos_token defaults to false: no special token is added.
  EXPECT_EQ(tok->encode("Hello world", true), tok->encode("Hello world", false));
  // The fixture's ids without special tokens are the same BPE.
  const json fx = load_json(kTokDir + "/opt_bpe_ours.json");
  for (const auto& s : fx["strings"]) {
    const std::string text = s["text"].get<std::string>();
    if (text.find('<') != std::string::npos) continue;  // '<pad>' etc. are not added tokens here
    EXPECT_EQ(tok->encode(text, false), ids_of(s["input_ids_no_special"])) << text;
  }
  // The Fast class name maps to the slow class.
  write_text(dir / "tokenizer_config.json", R"({"tokenizer_class": "GPT2TokenizerFast", "add_bos_token": true,
                                               "bos_token": "</s>"})");
  EXPECT_EQ(ib::detect_tokenizer_class(dir.string()), "GPT2Tokenizer");
  auto fast = ib::AutoTokenizer::from_pretrained(dir.string());
  EXPECT_EQ(fast->class_name(), "GPT2Tokenizer");
  EXPECT_EQ(fast->encode("a"), (std::vector<std::int64_t>{2, 68}));  // fixture: "a" -> [2, 68]
}

// ---------------------------------------------------------------------------------------------
// Behaviour details
// ---------------------------------------------------------------------------------------------

TEST(GPT2Tokenizer, AddPrefixSpaceGoesBeforeTheAddedTokenSplit) {
  ib::TokenizerConfig cfg = ib::GPT2Tokenizer::default_config();
  cfg.bos_token = cfg.eos_token = ib::AddedToken::special_token("</s>");
  cfg.unk_token = ib::AddedToken::special_token("<unk>");
  cfg.pad_token = ib::AddedToken::special_token("<pad>");
  cfg.add_prefix_space = true;
  ib::GPT2Tokenizer spaced(kVocab, kMerges, cfg);
  auto plain = make_fixture_tokenizer();
  EXPECT_TRUE(spaced.add_prefix_space());
  EXPECT_EQ(spaced.tokenize("Hello world"), plain->tokenize(" Hello world"));
  EXPECT_EQ(spaced.tokenize("</s>is"), plain->tokenize(" </s>is"));
  EXPECT_EQ(spaced.tokenize("is").front(), "Ġis");
}

TEST(GPT2Tokenizer, ReplaceDecodingMatchesCPython) {
  // bytearray(...).decode("utf-8", errors=...) of CPython 3 on these bytes: each maximal invalid
  // subpart becomes one U+FFFD.
  auto tok = make_fixture_tokenizer();
  auto symbols = [](const std::string& bytes) {
    std::vector<std::string> out;
    for (char c : bytes) out.push_back(ib::GPT2Tokenizer::byte_symbol(static_cast<unsigned char>(c)));
    return out;
  };
  const std::string R = "\xEF\xBF\xBD";
  const std::pair<std::string, std::string> cases[] = {
      {"\xE0\x80", R + R},
      {"\xED\xA0\x80", R + R + R},
      {"\xF0\x9F\x98", R},
      {"\xC3", R},
      {"\xFF", R},
      {"\xF4\x90\x80\x80", R + R + R + R},
      {"a\xE2\x82" "b", "a" + R + "b"},
      {"\xF0\x9F\x98\x80\x80", "\xF0\x9F\x98\x80" + R},
      {"\xE2\x82\xE2\x82\xAC", R + "\xE2\x82\xAC"},
  };
  for (const auto& [bytes, expected] : cases) EXPECT_EQ(tok->convert_tokens_to_string(symbols(bytes)), expected);
  // A cut emoji from the fixture's token ids ("ðŁ" "ĺ" are the first two bytes of U+1F600).
  EXPECT_EQ(tok->decode({tok->convert_token_to_id("ðŁ"), tok->convert_token_to_id("ĺ")}), R);

  ib::TokenizerConfig cfg = ib::GPT2Tokenizer::default_config();
  cfg.errors = "ignore";
  ib::GPT2Tokenizer ignoring(kVocab, kMerges, cfg);
  EXPECT_EQ(ignoring.convert_tokens_to_string(symbols("a\xE2\x82" "b")), "ab");
  EXPECT_EQ(ignoring.convert_tokens_to_string(symbols("\xE2\x82\xE2\x82\xAC")), "\xE2\x82\xAC");
  cfg.errors = "strict";
  ib::GPT2Tokenizer strict(kVocab, kMerges, cfg);
  EXPECT_THROW(strict.convert_tokens_to_string(symbols("a\xE2\x82" "b")), ib::InvalidArgument);
  EXPECT_EQ(strict.convert_tokens_to_string(symbols("caf\xC3\xA9")), "caf\xC3\xA9");
  cfg.errors = "backslashreplace";
  EXPECT_THROW(ib::GPT2Tokenizer(kVocab, kMerges, cfg), ib::ConfigError);
}

TEST(GPT2Tokenizer, ByteSymbolsAndPreTokenizer) {
  // bytes_to_unicode: printable Latin-1 stands for itself; space -> U+0120, '\n' -> U+010A.
  EXPECT_EQ(ib::GPT2Tokenizer::byte_symbol('a'), "a");
  EXPECT_EQ(ib::GPT2Tokenizer::byte_symbol(' '), "\xC4\xA0");
  EXPECT_EQ(ib::GPT2Tokenizer::byte_symbol('\n'), "\xC4\x8A");
  EXPECT_EQ(ib::GPT2Tokenizer::byte_symbol(0), "\xC4\x80");
  EXPECT_EQ(ib::GPT2Tokenizer::byte_symbol(0xE9), "\xC3\xA9");
  // The pieces the fixture's tokens imply ("multiple   internal" -> "Ġ", "Ġ", "Ġin"...).
  EXPECT_EQ(ib::GPT2Tokenizer::pre_tokenize("a   b"), (std::vector<std::string>{"a", "  ", " b"}));
  EXPECT_EQ(ib::GPT2Tokenizer::pre_tokenize("x  "), (std::vector<std::string>{"x", "  "}));
  EXPECT_EQ(ib::GPT2Tokenizer::pre_tokenize("don't IT'S"), (std::vector<std::string>{"don", "'t", " IT", "'", "S"}));
  EXPECT_TRUE(ib::GPT2Tokenizer::pre_tokenize("").empty());
}

TEST(GPT2Tokenizer, InvalidUtf8IsInvalidArgument) {
  auto tok = make_fixture_tokenizer();
  const std::string bad[] = {std::string("abc\xff"), std::string("caf\xc3"), std::string("\xc0\xaf"),
                             std::string("x\xed\xa0\x80y"), std::string("\xf4\x90\x80\x80"),
                             std::string("ok \xe2\x82 bad")};
  for (const auto& s : bad) {
    EXPECT_THROW(tok->encode(s), ib::InvalidArgument);
    EXPECT_THROW(tok->tokenize(s), ib::InvalidArgument);
    EXPECT_THROW(tok->encode_batch({"fine", s}), ib::InvalidArgument);
  }
  EXPECT_THROW(tok->decode({1000}), ib::InvalidArgument);  // outside the vocabulary
  EXPECT_THROW(tok->decode({-1}), ib::InvalidArgument);
}

TEST(GPT2Tokenizer, MissingFilesAreIoError) {
  EXPECT_THROW(ib::GPT2Tokenizer(kTokDir + "/no_such_vocab.json", kMerges), ib::IoError);
  EXPECT_THROW(ib::GPT2Tokenizer(kVocab, kTokDir + "/no_such_merges.txt"), ib::IoError);
  EXPECT_THROW(ib::GPT2Tokenizer(kTokDir, kMerges), ib::IoError);  // a directory
  const fs::path dir = scratch("no_merges");
  fs::copy_file(kVocab, dir / "vocab.json");
  write_text(dir / "tokenizer_config.json", R"({"tokenizer_class": "GPT2Tokenizer"})");
  EXPECT_THROW(ib::AutoTokenizer::from_pretrained(dir.string()), ib::IoError);
}

TEST(GPT2Tokenizer, CorruptedFilesAreFormatError) {
  const fs::path dir = scratch("corrupt");
  const fs::path vocab = dir / "vocab.json", merges = dir / "merges.txt";
  const std::string good_merges = read_text(kMerges);
  write_text(merges, good_merges);
  const std::string bad_vocabs[] = {
      "",
      "{\"a\": 1",                          // cut off
      "[\"a\", \"b\"]",                      // not an object
      "{}",                                   // no tokens
      "{\"a\": \"1\"}",                      // id not an integer
      "{\"a\": 1.5}",
      "{\"a\": -1}",
      "{\"a\": 18446744073709551615}",       // above int64
      "{\"a\": [1]}",
      "{\"a\": {\"b\": 1}}",
      std::string("{\"a\xff\": 1}"),         // not UTF-8
      std::string(100000, '[') + std::string(100000, ']'),
      "{\"a\": " + std::string(1000, '[') + std::string(1000, ']') + "}",
  };
  for (const auto& v : bad_vocabs) {
    write_text(vocab, v);
    EXPECT_THROW(ib::GPT2Tokenizer(vocab.string(), merges.string()), ib::FormatError) << v.substr(0, 60);
  }
  fs::copy_file(kVocab, vocab, fs::copy_options::overwrite_existing);
  const std::string bad_merges[] = {
      "#version: 0.2\nĠ t\nĠ a b\n",  // three symbols
      "#version: 0.2\nĠ t\nĠ\n",      // one symbol
      std::string("#version: 0.2\n\xff \xfe\n"),
  };
  for (const auto& m : bad_merges) {
    write_text(merges, m);
    EXPECT_THROW(ib::GPT2Tokenizer(vocab.string(), merges.string()), ib::FormatError) << m;
  }
  // What transformers accepts: the first line is skipped whatever it holds, empty lines match
  // nothing, \r\n ends lines, and the text after the last newline is ignored.
  for (const std::string m : {"", "#version: 0.2", "Ġ t\n", "#version: 0.2\r\nĠ t\r\n\r\nĠ a\r\n", "x\nĠ t\nĠ a b c"}) {
    write_text(merges, m);
    EXPECT_NO_THROW(ib::GPT2Tokenizer(vocab.string(), merges.string())) << m;
  }
  // "x\nĠ t\nĠ a b c": the 3-symbol last line is dropped ([1:-1]), "Ġ t" is used.
  ib::GPT2Tokenizer cut(vocab.string(), merges.string());
  EXPECT_EQ(cut.bpe("\xC4\xA0t"), (std::vector<std::string>{"\xC4\xA0t"}));
  EXPECT_EQ(cut.bpe("\xC4\xA0" "a"), (std::vector<std::string>{"\xC4\xA0", "a"}));
}

TEST(GPT2Tokenizer, BadConfigValuesAreConfigError) {
  const fs::path dir = scratch("config");
  fs::copy_file(kVocab, dir / "vocab.json");
  fs::copy_file(kMerges, dir / "merges.txt");
  for (const char* cfg : {R"({"tokenizer_class": "GPT2Tokenizer", "errors": "backslashreplace"})",
                          R"({"tokenizer_class": "GPT2Tokenizer", "errors": 1})",
                          R"({"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": "yes"})",
                          R"({"tokenizer_class": "GPT2Tokenizer", "add_bos_token": null})"}) {
    write_text(dir / "tokenizer_config.json", cfg);
    EXPECT_THROW(ib::AutoTokenizer::from_pretrained(dir.string()), ib::ConfigError) << cfg;
  }
  write_text(dir / "tokenizer_config.json", R"({"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": true,
                                               "errors": "ignore", "padding_side": "left"})");
  auto tok = ib::GPT2Tokenizer::from_pretrained(dir.string());
  EXPECT_TRUE(tok->add_prefix_space());
  EXPECT_EQ(tok->errors(), "ignore");
  EXPECT_EQ(tok->padding_side(), ib::Side::Left);
}

TEST(GPT2Tokenizer, LongWordsStayFast) {
  // bpe() merges through a queue: a long run without spaces costs n log n, not n^2.
  auto tok = make_fixture_tokenizer();
  std::string text;
  for (int i = 0; i < 20000; ++i) text += "abcdefghij";
  const auto ids = tok->encode(text, false);
  EXPECT_GT(ids.size(), 0u);
  EXPECT_EQ(tok->decode(ids), text);
}

}  // namespace

// Tokenizer throughput (bytes of text per second) for the four tokenizers of the test
// checkpoints: T5 (sentencepiece unigram), LLaMA (sentencepiece BPE with byte fallback), the
// Q-Former's BERT WordPiece and OPT's GPT2 byte-level BPE (blip2-opt-tiny's tokenizer files),
// encoding and decoding one English paragraph.
// The checkpoint files are looked up in $IB_DATA_DIR, else in tests/data next to this source file.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "instructblip/processing/tokenizer.hpp"

namespace ib = instructblip;

namespace {

std::string data_dir() {
  if (const char* env = std::getenv("IB_DATA_DIR")) return env;
  return (std::filesystem::path(__FILE__).parent_path().parent_path() / "tests" / "data").string();
}

const std::string& paragraph() {
  static const std::string text =
      "The InstructBLIP model was proposed in InstructBLIP: Towards General-purpose Vision-Language Models "
      "with Instruction Tuning. InstructBLIP leverages the BLIP-2 architecture for visual instruction tuning. "
      "General-purpose language models that can solve various language-domain tasks have emerged driven by the "
      "pre-training and instruction-tuning pipeline. However, building general-purpose vision-language models is "
      "challenging due to the increased task discrepancy introduced by the additional visual input. Although "
      "vision-language pre-training has been widely studied, vision-language instruction tuning remains "
      "relatively less explored. In this paper, we conduct a systematic and comprehensive study on "
      "vision-language instruction tuning based on the pre-trained BLIP-2 models. We gather a wide variety of 26 "
      "publicly available datasets, transform them into instruction tuning format and categorize them into two "
      "clusters for held-in instruction tuning and held-out zero-shot evaluation. Additionally, we introduce "
      "instruction-aware visual feature extraction, a crucial method that enables the model to extract "
      "informative features tailored to the given instruction. Question: What is unusual about this image? "
      "Answer: a man is ironing clothes on the back of a yellow taxi (café, naïve, 12,345 — done!).";
  return text;
}

std::unique_ptr<ib::Tokenizer> load(const std::string& which) {
  const std::string d = data_dir();
  if (which == "t5") return ib::AutoTokenizer::from_pretrained(d + "/t5-tiny/model");
  if (which == "llama") return ib::AutoTokenizer::from_pretrained(d + "/llama-tiny/model");
  if (which == "gpt2") return ib::AutoTokenizer::from_pretrained(d + "/blip2-opt-tiny/model");
  return ib::AutoTokenizer::from_pretrained(d + "/t5-tiny/model/qformer_tokenizer");
}

void run_encode(benchmark::State& state, const std::string& which) {
  std::unique_ptr<ib::Tokenizer> tok;
  try {
    tok = load(which);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  const std::string& text = paragraph();
  std::size_t n_tokens = 0;
  for (auto _ : state) {
    auto ids = tok->encode(text);
    n_tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(text.size()));
  state.counters["tokens"] = double(n_tokens);
  state.counters["tokens/s"] =
      benchmark::Counter(double(n_tokens) * double(state.iterations()), benchmark::Counter::kIsRate);
}

void run_decode(benchmark::State& state, const std::string& which) {
  std::unique_ptr<ib::Tokenizer> tok;
  try {
    tok = load(which);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  const std::vector<std::int64_t> ids = tok->encode(paragraph());
  std::size_t bytes = 0;
  for (auto _ : state) {
    std::string s = tok->decode(ids, /*skip_special_tokens=*/true);
    bytes = s.size();
    benchmark::DoNotOptimize(s.data());
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(bytes));
  state.counters["tokens/s"] =
      benchmark::Counter(double(ids.size()) * double(state.iterations()), benchmark::Counter::kIsRate);
}

void run_batch(benchmark::State& state, const std::string& which) {
  std::unique_ptr<ib::Tokenizer> tok;
  try {
    tok = load(which);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  // The processor's call: a batch of prompts, padded to the longest.
  const std::vector<std::string> texts = {"Where is this statue?",
                                          "What is unusual about this image? Answer in one short sentence.",
                                          paragraph()};
  std::int64_t total = 0;
  for (const auto& t : texts) total += std::int64_t(t.size());
  for (auto _ : state) {
    auto enc = tok->encode_batch(texts, /*padding=*/true);
    benchmark::DoNotOptimize(enc.input_ids.data());
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * total);
}

void BM_Encode_T5(benchmark::State& s) { run_encode(s, "t5"); }
void BM_Encode_Llama(benchmark::State& s) { run_encode(s, "llama"); }
void BM_Encode_BertQformer(benchmark::State& s) { run_encode(s, "bert"); }
void BM_Decode_T5(benchmark::State& s) { run_decode(s, "t5"); }
void BM_Decode_Llama(benchmark::State& s) { run_decode(s, "llama"); }
void BM_Decode_BertQformer(benchmark::State& s) { run_decode(s, "bert"); }
void BM_EncodeBatchPadded_T5(benchmark::State& s) { run_batch(s, "t5"); }
void BM_EncodeBatchPadded_Llama(benchmark::State& s) { run_batch(s, "llama"); }
void BM_EncodeBatchPadded_BertQformer(benchmark::State& s) { run_batch(s, "bert"); }
void BM_Encode_Gpt2Opt(benchmark::State& s) { run_encode(s, "gpt2"); }
void BM_Decode_Gpt2Opt(benchmark::State& s) { run_decode(s, "gpt2"); }
void BM_EncodeBatchPadded_Gpt2Opt(benchmark::State& s) { run_batch(s, "gpt2"); }

}  // namespace

BENCHMARK(BM_Encode_T5);
BENCHMARK(BM_Encode_Llama);
BENCHMARK(BM_Encode_BertQformer);
BENCHMARK(BM_Decode_T5);
BENCHMARK(BM_Decode_Llama);
BENCHMARK(BM_Decode_BertQformer);
BENCHMARK(BM_EncodeBatchPadded_T5);
BENCHMARK(BM_EncodeBatchPadded_Llama);
BENCHMARK(BM_EncodeBatchPadded_BertQformer);
BENCHMARK(BM_Encode_Gpt2Opt);
BENCHMARK(BM_Decode_Gpt2Opt);
BENCHMARK(BM_EncodeBatchPadded_Gpt2Opt);

#include "instructblip/processing/processor.hpp"

#include <algorithm>
#include <filesystem>

#include "../internal/util.hpp"

namespace instructblip {

namespace {

using detail::copy_file;
using detail::file_exists;
using detail::same_file;

// Number of ids the tokenizer can produce: len(tokenizer), and at least 1 + the highest id.
std::int64_t id_space(const Tokenizer& t) {
  std::int64_t n = std::max(t.size(), t.vocab_size());
  if (!t.added_tokens_decoder().empty()) n = std::max(n, t.added_tokens_decoder().rbegin()->first + 1);
  return n;
}

void check_fits(const Tokenizer& t, const std::string& which, std::int64_t vocab, const std::string& key,
                const std::string& source) {
  const std::int64_t n = id_space(t);
  if (n > vocab)
    throw ConfigError(source + ": " + key + " is " + std::to_string(vocab) + ", but the " + which + " (" +
                      t.class_name() + ", len(tokenizer) = " + std::to_string(t.size()) + ") produces ids up to " +
                      std::to_string(n - 1) + ": the tokenizer does not match the model's vocabulary");
}

}  // namespace

InstructBlipProcessor::InstructBlipProcessor(ImageProcessor image_processor, std::unique_ptr<Tokenizer> tokenizer,
                                             std::unique_ptr<Tokenizer> qformer_tokenizer)
    : image_processor_(std::move(image_processor)),
      tokenizer_(std::move(tokenizer)),
      qformer_tokenizer_(std::move(qformer_tokenizer)) {
  if (!tokenizer_ || !qformer_tokenizer_) throw InvalidArgument("InstructBlipProcessor: a tokenizer is missing");
}

InstructBlipProcessor InstructBlipProcessor::from_pretrained(const std::string& dir) {
  InstructBlipProcessor p(ImageProcessor::from_pretrained(dir), Tokenizer::from_pretrained(dir),
                          Tokenizer::from_pretrained(dir + "/qformer_tokenizer"));
  const std::string config_path = dir + "/config.json";
  if (file_exists(config_path)) p.check_vocabulary(InstructBlipConfig::from_json_file(config_path), config_path);
  p.source_dir_ = dir;
  return p;
}

void InstructBlipProcessor::save_pretrained(const std::string& dir) const {
  if (source_dir_.empty())
    throw InvalidArgument("InstructBlipProcessor::save_pretrained: the processor was built from its parts, not "
                          "loaded by from_pretrained(), so it has no tokenizer files to save");
  // Every file from_pretrained() reads (and tokenizer.json, which transformers writes beside them).
  static const char* const kFiles[] = {"preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json",
                                       "added_tokens.json",        "tokenizer.json",        "spiece.model",
                                       "tokenizer.model",          "vocab.txt"};
  for (const std::string sub : {"", "/qformer_tokenizer"}) {
    const std::string from_dir = source_dir_ + sub, to_dir = dir + sub;
    std::error_code ec;
    std::filesystem::create_directories(to_dir, ec);
    if (ec) throw IoError(to_dir + ": cannot create the directory: " + ec.message());
    for (const char* name : kFiles) {
      const std::string from = from_dir + "/" + name, to = to_dir + "/" + name;
      if (file_exists(from) && !same_file(from, to)) copy_file(from, to);
    }
  }
}

void InstructBlipProcessor::check_vocabulary(const InstructBlipConfig& config, const std::string& source) const {
  check_fits(*tokenizer_, "language-model tokenizer", config.text_vocab_size(),
             config.is_t5() ? "text_config.vocab_size (t5)" : "text_config.vocab_size (llama)", source);
  check_fits(*qformer_tokenizer_, "Q-Former tokenizer in qformer_tokenizer/", config.qformer_config.vocab_size,
             "qformer_config.vocab_size", source);
}

ProcessorOutput InstructBlipProcessor::operator()(const std::vector<Image>& images,
                                                  const std::vector<std::string>& texts_in,
                                                  const ProcessorOptions& options) const {
  ProcessorOutput out;
  std::vector<std::string> texts = texts_in;
  if (!images.empty() && texts.size() == 1 && images.size() > 1) texts.assign(images.size(), texts.front());
  if (!images.empty() && !texts.empty() && texts.size() != images.size())
    throw InvalidArgument(std::to_string(texts.size()) + " prompts for " + std::to_string(images.size()) +
                          " images (give one prompt per image, or one for all)");
  if (!texts.empty()) {
    const BatchEncoding lm = tokenizer_->encode_batch(texts, options.padding, options.truncation, options.max_length,
                                                      options.add_special_tokens);
    const BatchEncoding qf = qformer_tokenizer_->encode_batch(texts, options.padding, options.truncation,
                                                              options.max_length, options.add_special_tokens);
    if (!lm.is_rectangular() || !qf.is_rectangular())
      throw InvalidArgument("prompts of different lengths need padding (ProcessorOptions::padding)");
    out.input_ids = lm.input_ids_tensor();
    out.attention_mask = lm.attention_mask_tensor();
    out.qformer_input_ids = qf.input_ids_tensor();
    out.qformer_attention_mask = qf.attention_mask_tensor();
  }
  if (!images.empty()) out.pixel_values = image_processor_.preprocess(images);
  return out;
}

std::vector<std::string> InstructBlipProcessor::batch_decode(const std::vector<std::vector<std::int64_t>>& sequences,
                                                             bool skip_special_tokens) const {
  return tokenizer_->batch_decode(sequences, skip_special_tokens);
}

std::string InstructBlipProcessor::decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens) const {
  return tokenizer_->decode(ids, skip_special_tokens);
}

}  // namespace instructblip

#include "instructblip/processing/processor.hpp"

#include <algorithm>
#include <filesystem>
#include <optional>

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

VisionLanguageProcessor::VisionLanguageProcessor(ImageProcessor image_processor, std::unique_ptr<Tokenizer> tokenizer,
                                                 std::unique_ptr<Tokenizer> qformer_tokenizer)
    : image_processor_(std::move(image_processor)),
      tokenizer_(std::move(tokenizer)),
      qformer_tokenizer_(std::move(qformer_tokenizer)) {
  if (!tokenizer_) throw InvalidArgument("VisionLanguageProcessor: the tokenizer is missing");
}
VisionLanguageProcessor::~VisionLanguageProcessor() = default;
VisionLanguageProcessor::VisionLanguageProcessor(VisionLanguageProcessor&&) noexcept = default;
VisionLanguageProcessor& VisionLanguageProcessor::operator=(VisionLanguageProcessor&&) noexcept = default;

InstructBlipProcessor::InstructBlipProcessor(ImageProcessor image_processor, std::unique_ptr<Tokenizer> tokenizer,
                                             std::unique_ptr<Tokenizer> qformer_tokenizer)
    : VisionLanguageProcessor(std::move(image_processor), std::move(tokenizer), std::move(qformer_tokenizer)) {
  if (!has_qformer_tokenizer()) throw InvalidArgument("InstructBlipProcessor: the Q-Former tokenizer is missing");
}

Blip2Processor::Blip2Processor(ImageProcessor image_processor, std::unique_ptr<Tokenizer> tokenizer)
    : VisionLanguageProcessor(std::move(image_processor), std::move(tokenizer), nullptr) {}

VisionLanguageProcessor VisionLanguageProcessor::from_pretrained(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  std::optional<InstructBlipConfig> config;
  if (file_exists(config_path)) config = InstructBlipConfig::from_json_file(config_path);
  const bool qformer = config ? !config->is_blip2() : std::filesystem::is_directory(dir + "/qformer_tokenizer");
  VisionLanguageProcessor p(ImageProcessor::from_pretrained(dir), Tokenizer::from_pretrained(dir),
                            qformer ? Tokenizer::from_pretrained(dir + "/qformer_tokenizer") : nullptr);
  if (config) p.check_vocabulary(*config, config_path);
  p.source_dir_ = dir;
  return p;
}

InstructBlipProcessor InstructBlipProcessor::from_pretrained(const std::string& dir) {
  const std::string config_path = dir + "/config.json";
  std::optional<InstructBlipConfig> config;
  if (file_exists(config_path)) {
    config = InstructBlipConfig::from_json_file(config_path);
    if (config->is_blip2())
      throw ConfigError(config_path + ": a BLIP-2 checkpoint (no Q-Former tokenizer): load it with Blip2Processor");
  }
  InstructBlipProcessor p(ImageProcessor::from_pretrained(dir), Tokenizer::from_pretrained(dir),
                          Tokenizer::from_pretrained(dir + "/qformer_tokenizer"));
  if (config) p.check_vocabulary(*config, config_path);
  p.source_dir_ = dir;
  return p;
}

Blip2Processor Blip2Processor::from_pretrained(const std::string& dir) {
  VisionLanguageProcessor p = VisionLanguageProcessor::from_pretrained(dir);
  if (p.has_qformer_tokenizer())
    throw ConfigError(dir + ": an InstructBLIP processor (it has a Q-Former tokenizer): load it with "
                      "InstructBlipProcessor");
  return Blip2Processor(std::move(p));
}

const Tokenizer& VisionLanguageProcessor::qformer_tokenizer() const {
  if (!qformer_tokenizer_) throw InvalidArgument("a BLIP-2 processor has no Q-Former tokenizer");
  return *qformer_tokenizer_;
}

void VisionLanguageProcessor::save_pretrained(const std::string& dir) const {
  if (source_dir_.empty())
    throw InvalidArgument("InstructBlipProcessor::save_pretrained: the processor was built from its parts, not "
                          "loaded by from_pretrained(), so it has no tokenizer files to save");
  // Every file from_pretrained() reads (and tokenizer.json, which transformers writes beside them).
  static const char* const kFiles[] = {"preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json",
                                       "added_tokens.json",        "tokenizer.json",        "spiece.model",
                                       "tokenizer.model",          "vocab.txt",             "vocab.json",
                                       "merges.txt"};
  std::vector<std::string> subdirs{""};
  if (qformer_tokenizer_) subdirs.push_back("/qformer_tokenizer");
  for (const std::string& sub : subdirs) {
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

void VisionLanguageProcessor::check_vocabulary(const InstructBlipConfig& config, const std::string& source) const {
  check_fits(*tokenizer_, "language-model tokenizer", config.text_vocab_size(),
             "text_config.vocab_size (" + config.text_model_type() + ")", source);
  if (qformer_tokenizer_)
    check_fits(*qformer_tokenizer_, "Q-Former tokenizer in qformer_tokenizer/", config.qformer_config.vocab_size,
               "qformer_config.vocab_size", source);
}

ProcessorOutput VisionLanguageProcessor::operator()(const std::vector<Image>& images,
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
    if (!lm.is_rectangular()) throw InvalidArgument("prompts of different lengths need padding (ProcessorOptions::padding)");
    out.input_ids = lm.input_ids_tensor();
    out.attention_mask = lm.attention_mask_tensor();
    if (qformer_tokenizer_) {
      const BatchEncoding qf = qformer_tokenizer_->encode_batch(texts, options.padding, options.truncation,
                                                                options.max_length, options.add_special_tokens);
      if (!qf.is_rectangular())
        throw InvalidArgument("prompts of different lengths need padding (ProcessorOptions::padding)");
      out.qformer_input_ids = qf.input_ids_tensor();
      out.qformer_attention_mask = qf.attention_mask_tensor();
    }
  }
  if (!images.empty()) out.pixel_values = image_processor_.preprocess(images);
  return out;
}

std::vector<std::string> VisionLanguageProcessor::batch_decode(const std::vector<std::vector<std::int64_t>>& sequences,
                                                             bool skip_special_tokens) const {
  return tokenizer_->batch_decode(sequences, skip_special_tokens);
}

std::string VisionLanguageProcessor::decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens) const {
  return tokenizer_->decode(ids, skip_special_tokens);
}

}  // namespace instructblip

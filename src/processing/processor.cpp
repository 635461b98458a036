#include "instructblip/processing/processor.hpp"

namespace instructblip {

InstructBlipProcessor::InstructBlipProcessor(ImageProcessor image_processor, std::unique_ptr<Tokenizer> tokenizer,
                                             std::unique_ptr<Tokenizer> qformer_tokenizer)
    : image_processor_(std::move(image_processor)),
      tokenizer_(std::move(tokenizer)),
      qformer_tokenizer_(std::move(qformer_tokenizer)) {
  if (!tokenizer_ || !qformer_tokenizer_) throw InvalidArgument("InstructBlipProcessor: a tokenizer is missing");
}

InstructBlipProcessor InstructBlipProcessor::from_pretrained(const std::string& dir) {
  return InstructBlipProcessor(ImageProcessor::from_pretrained(dir), Tokenizer::from_pretrained(dir),
                               Tokenizer::from_pretrained(dir + "/qformer_tokenizer"));
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

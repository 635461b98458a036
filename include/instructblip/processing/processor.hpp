#pragma once
// InstructBlipProcessor: one image processor and two tokenizers read from a checkpoint
// directory (preprocessor_config.json; the language model's tokenizer files; the Q-Former's in
// qformer_tokenizer/), turning images and instructions into the model's inputs and generated ids
// back into text.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/processing/image.hpp"
#include "instructblip/processing/image_processor.hpp"
#include "instructblip/processing/streamer.hpp"
#include "instructblip/processing/tokenizer.hpp"

namespace instructblip {

/// transformers' BatchFeature of the processor.
struct ProcessorOutput {
  Tensor pixel_values;            // [B, 3, H, W] float32
  Tensor input_ids;               // [B, T] int64 (language model tokenizer)
  Tensor attention_mask;          // [B, T] int64
  Tensor qformer_input_ids;       // [B, Tq] int64 (BERT tokenizer)
  Tensor qformer_attention_mask;  // [B, Tq] int64
};

struct ProcessorOptions {
  /// Pad every row to the longest (transformers' padding=True), on each tokenizer's padding
  /// side. Default on, so that a batch of different prompts is always rectangular; it changes
  /// nothing for a single prompt.
  bool padding = true;
  /// Truncate to max_length (or each tokenizer's model_max_length), special tokens counted, on
  /// each tokenizer's truncation side. Off by default, as in transformers. Without it a long
  /// prompt is encoded whole, and the model rejects it with InvalidArgument when its Q-Former
  /// encoding exceeds qformer_config.max_position_embeddings (512 in the released checkpoints)
  /// or the language-model prompt exceeds GenerationLimits::max_prompt_tokens. With it, the
  /// Q-Former prompt is cut to the Q-Former tokenizer's model_max_length (512 for
  /// bert-base-uncased), which fits the Q-Former's position embeddings.
  bool truncation = false;
  /// Truncation length for both tokenizers (setting it enables truncation, as transformers'
  /// max_length with truncation=None does).
  std::optional<std::int64_t> max_length;
  bool add_special_tokens = true;
};

class InstructBlipProcessor {
 public:
  InstructBlipProcessor(ImageProcessor image_processor, std::unique_ptr<Tokenizer> tokenizer,
                        std::unique_ptr<Tokenizer> qformer_tokenizer);
  /// Reads `dir`/preprocessor_config.json, the tokenizer in `dir` and the one in
  /// `dir`/qformer_tokenizer (as transformers' InstructBlipProcessor.from_pretrained).
  /// When `dir`/config.json exists (a full model checkpoint), the tokenizers are also checked
  /// against it with check_vocabulary() — a ConfigError names the tokenizer and both sizes.
  static InstructBlipProcessor from_pretrained(const std::string& dir);

  /// Writes the processor to `dir` so that from_pretrained(dir) loads an equal processor:
  /// preprocessor_config.json and the language-model tokenizer's files in `dir`, the Q-Former
  /// tokenizer's in `dir`/qformer_tokenizer (created if needed). As transformers' slow tokenizers
  /// keep their vocabulary files, these are the files the processor was loaded from, copied byte
  /// for byte (tokenizer_config.json, special_tokens_map.json, added_tokens.json, tokenizer.json,
  /// spiece.model / tokenizer.model / vocab.txt, whichever exist). InvalidArgument for a processor
  /// not loaded by from_pretrained() (it has no files); IoError when `dir` cannot be written.
  void save_pretrained(const std::string& dir) const;
  /// The directory from_pretrained() read (empty for a processor built from its parts).
  const std::string& source_dir() const { return source_dir_; }

  /// Throws ConfigError when a tokenizer can produce ids the model has no embedding for: the
  /// language-model tokenizer's id space (len(tokenizer), and the highest added-token id + 1)
  /// larger than the text config's vocab_size, or the Q-Former tokenizer's larger than
  /// qformer_config.vocab_size. `source` names the config in the message.
  void check_vocabulary(const InstructBlipConfig& config, const std::string& source = "config.json") const;

  /// One prompt per image; a single prompt with several images applies to every image.
  /// Either list may be empty (then the corresponding outputs stay undefined).
  ProcessorOutput operator()(const std::vector<Image>& images, const std::vector<std::string>& texts,
                             const ProcessorOptions& options = {}) const;
  ProcessorOutput operator()(const Image& image, const std::string& text, const ProcessorOptions& options = {}) const {
    return (*this)(std::vector<Image>{image}, std::vector<std::string>{text}, options);
  }

  /// The language model tokenizer's batch_decode / decode.
  std::vector<std::string> batch_decode(const std::vector<std::vector<std::int64_t>>& sequences,
                                        bool skip_special_tokens = false) const;
  std::string decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens = false) const;

  const ImageProcessor& image_processor() const { return image_processor_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const Tokenizer& qformer_tokenizer() const { return *qformer_tokenizer_; }

 private:
  ImageProcessor image_processor_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Tokenizer> qformer_tokenizer_;
  std::string source_dir_;
};

}  // namespace instructblip

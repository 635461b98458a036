#pragma once
// The processors: an image processor and the language model's tokenizer read from a checkpoint
// directory (preprocessor_config.json and the tokenizer files), plus, for InstructBLIP, the
// Q-Former's tokenizer in qformer_tokenizer/. They turn images and prompts into the model's inputs
// and generated ids back into text.
//   InstructBlipProcessor: both tokenizers (the prompt feeds the Q-Former and the language model).
//   Blip2Processor: no Q-Former tokenizer; the prompt is optional (none = plain captioning).
// VisionLanguageProcessor is what both are; its from_pretrained() loads either (AutoProcessor).
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
  Tensor qformer_input_ids;       // [B, Tq] int64 (BERT tokenizer; InstructBLIP only)
  Tensor qformer_attention_mask;  // [B, Tq] int64 (InstructBLIP only)
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

class VisionLanguageProcessor {
 public:
  /// `qformer_tokenizer` null: a BLIP-2 processor.
  VisionLanguageProcessor(ImageProcessor image_processor, std::unique_ptr<Tokenizer> tokenizer,
                          std::unique_ptr<Tokenizer> qformer_tokenizer);
  virtual ~VisionLanguageProcessor();
  VisionLanguageProcessor(VisionLanguageProcessor&&) noexcept;
  VisionLanguageProcessor& operator=(VisionLanguageProcessor&&) noexcept;
  /// Reads `dir`/preprocessor_config.json, the tokenizer in `dir` and, when `dir`/qformer_tokenizer
  /// exists (InstructBLIP), the one there; when `dir`/config.json exists its model_type decides
  /// instead ("instructblip" needs qformer_tokenizer/, "blip-2" has none).
  /// When `dir`/config.json exists (a full model checkpoint), the tokenizers are also checked
  /// against it with check_vocabulary() — a ConfigError names the tokenizer and both sizes.
  static VisionLanguageProcessor from_pretrained(const std::string& dir);

  /// Writes the processor to `dir` so that from_pretrained(dir) loads an equal processor:
  /// preprocessor_config.json and the language-model tokenizer's files in `dir`, the Q-Former
  /// tokenizer's in `dir`/qformer_tokenizer (created if needed). As transformers' slow tokenizers
  /// keep their vocabulary files, these are the files the processor was loaded from, copied byte
  /// for byte (tokenizer_config.json, special_tokens_map.json, added_tokens.json, tokenizer.json,
  /// spiece.model / tokenizer.model / vocab.txt / vocab.json / merges.txt, whichever exist). InvalidArgument for a processor
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
  /// Either list may be empty (then the corresponding outputs stay undefined). The Q-Former
  /// outputs are filled only by a processor with a Q-Former tokenizer (InstructBLIP).
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
  /// False for a BLIP-2 processor.
  bool has_qformer_tokenizer() const { return qformer_tokenizer_ != nullptr; }
  /// InvalidArgument for a BLIP-2 processor.
  const Tokenizer& qformer_tokenizer() const;

 private:
  ImageProcessor image_processor_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Tokenizer> qformer_tokenizer_;

 protected:
  std::string source_dir_;
};

/// transformers' InstructBlipProcessor: both tokenizers required.
class InstructBlipProcessor : public VisionLanguageProcessor {
 public:
  InstructBlipProcessor(ImageProcessor image_processor, std::unique_ptr<Tokenizer> tokenizer,
                        std::unique_ptr<Tokenizer> qformer_tokenizer);
  /// As VisionLanguageProcessor::from_pretrained; IoError when `dir`/qformer_tokenizer is missing.
  static InstructBlipProcessor from_pretrained(const std::string& dir);

 private:
  explicit InstructBlipProcessor(VisionLanguageProcessor&& p) : VisionLanguageProcessor(std::move(p)) {}
};

/// transformers' Blip2Processor: the image processor and the language model's tokenizer.
class Blip2Processor : public VisionLanguageProcessor {
 public:
  Blip2Processor(ImageProcessor image_processor, std::unique_ptr<Tokenizer> tokenizer);
  static Blip2Processor from_pretrained(const std::string& dir);
  /// processor(images=image): pixel_values only (the model then starts from [[bos_token_id]]).
  ProcessorOutput operator()(const Image& image, const ProcessorOptions& options = {}) const {
    return VisionLanguageProcessor::operator()(std::vector<Image>{image}, {}, options);
  }
  using VisionLanguageProcessor::operator();

 private:
  explicit Blip2Processor(VisionLanguageProcessor&& p) : VisionLanguageProcessor(std::move(p)) {}
};

}  // namespace instructblip

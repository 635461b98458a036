#pragma once
// Resource limits: the bounds the library puts on request sizes before it allocates or loops on
// them. A request beyond a limit is rejected with an InvalidArgument naming the setting, its value
// and the limit — never a multi-gigabyte allocation or a run that does not end.
//
// Limits enforced elsewhere (and documented there):
//  * images: ImageLoadOptions::max_pixels (processing/image.hpp);
//  * safetensors headers and tensor counts: io::SafeTensorsLimits (io/safetensors.hpp);
//  * Q-Former instructions: at most qformer_config.max_position_embeddings tokens (512 in the
//    released checkpoints; the Q-Former has absolute position embeddings, so longer is impossible).
//    InstructBlipProcessor with ProcessorOptions::truncation cuts the instruction to the
//    tokenizers' model_max_length instead of letting generate()/forward() reject it.
//
// transformers itself has no hard limit for these settings (LLaMA's rotary embeddings extend past
// max_position_embeddings and T5 uses relative positions), so the defaults below are generous bounds
// that real InstructBLIP use never comes near (prompts are 32 query tokens plus a sentence or two;
// answers are tens to hundreds of tokens). They can be raised per model through
// LoadOptions::limits, or per call of generation::generate().
#include <cstdint>

namespace instructblip {

struct GenerationLimits {
  /// Longest language-model prompt, in positions: the num_query_tokens image queries plus the
  /// text tokens (T5: the encoder input; LLaMA: the prefill). Also bounds the decoder length of a
  /// teacher-forced forward() (decoder_input_ids / labels).
  std::int64_t max_prompt_tokens = 8192;
  /// Longest generated row as transformers counts max_length (the start token included):
  /// max_length and 1 + max_new_tokens must not exceed it.
  std::int64_t max_length = 65536;
  /// num_beams.
  std::int64_t max_num_beams = 64;
  /// num_return_sequences (with beam search it must also not exceed num_beams, as in transformers).
  std::int64_t max_num_return_sequences = 64;
  /// Rows decoded at once: batch x num_beams (beam search) or batch x num_return_sequences.
  /// Also bounds the image batch of forward() / generate().
  std::int64_t max_rows = 1024;
  /// rows x (prompt positions + max_length): the key/value-cache positions one call can reach
  /// (1,048,576: e.g. one row of 8192 + 65536, or 64 beams of 16384). Memory per position is
  /// model-dependent (LLaMA: 2 x layers x kv_width x 4 bytes). The caches are not allocated for
  /// max_length up front: they start at prompt + min(max_new_tokens, 512) and grow as tokens come.
  std::int64_t max_total_positions = std::int64_t(1) << 20;
  /// With GenerationConfig::output_scores: the bytes the per-step scores may reach,
  /// rows x (max_length - 1) x vocab x 4.
  std::int64_t max_output_scores_bytes = std::int64_t(4) << 30;

  /// The defaults above.
  static GenerationLimits defaults() { return GenerationLimits{}; }
  /// Throws InvalidArgument when a limit is not positive.
  void validate() const;
};

}  // namespace instructblip

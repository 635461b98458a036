#pragma once
// OPT decoder-only language model (transformers 4.36.2 OPTForCausalLM, the language model of
// BLIP-2-OPT) behind the LanguageModel interface: learned position embeddings with offset 2
// (positions from the attention mask: cumsum(mask) * mask - 1, in forward() and in generate()),
// pre- or post-LayerNorm layers (do_layer_norm_before), q = q_proj(x) * head_dim^-0.5, the FFN
// fc2(act(fc1 x)) with biases (enable_bias), a final LayerNorm, and an output head tied to the
// token embeddings (tie_word_embeddings) or its own lm_head. Masks are HF's: a key in the future
// or padded gets finfo(float32).min added to its score.
//
// Not supported (ConfigError): word_embed_proj_dim != hidden_size (project_in / project_out, as in
// OPT-350m; BLIP-2 4.36.2 cannot run it either) and layer_norm_elementwise_affine = false.
//
// A constructed model is immutable; every call keeps its scratch locally or in its state, so one
// model may serve several threads at once.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/models/decoder_state.hpp"
#include "instructblip/models/language_model.hpp"
#include "instructblip/models/weight_source.hpp"

namespace instructblip::models {

class OPTModel : public DecoderOnlyModel {
 public:
  /// Loads `<prefix>model.decoder.embed_tokens.weight`, `...embed_positions.weight`
  /// ([max_position_embeddings + 2, hidden]), `...layers.N.…`, `...final_layer_norm.*` and
  /// `<prefix>lm_head.weight` (absent and aliased to embed_tokens when tie_word_embeddings).
  /// `policy` chooses how the matrices are kept; the embedding table is float32 under f32 and
  /// bfloat16 otherwise (as LlamaModel).
  OPTModel(const OPTConfig& config, const WeightSource& source, const std::string& prefix = "language_model.",
           const WeightPolicy& policy = {});
  ~OPTModel() override;
  OPTModel(const OPTModel&) = delete;
  OPTModel& operator=(const OPTModel&) = delete;

  const OPTConfig& config() const;
  /// max_position_embeddings: generate() refuses settings that could run past it.
  std::optional<std::int64_t> max_positions() const override;
  /// The HF name (with `prefix`) and shape of every tensor the constructor binds, in binding order.
  static std::vector<std::pair<std::string, Shape>> tensor_specs(const OPTConfig& config,
                                                                 const std::string& prefix = "language_model.");
  // forward() (positions from the mask, pads at row 1), start(), step() (as LlamaModel: the first
  // call runs the prompt), step_batch(), select_rows(), the weight listing: DecoderOnlyModel.

  struct Impl;

 private:
  const Impl& impl() const;
};

}  // namespace instructblip::models

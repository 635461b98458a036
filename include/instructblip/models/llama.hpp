#pragma once
// LLaMA / Vicuna decoder-only language model (transformers 4.36.2 LlamaForCausalLM) behind the
// LanguageModel interface: RMSNorm (float32 variance), rotary position embeddings (rotate_half,
// theta from the config, no rope_scaling), grouped-query attention, SiLU-gated MLP
// down(act(gate x) * up x), optional q/k/v/o biases (attention_bias), untied or tied lm_head,
// and a per-call KV cache.
//
// Positions follow transformers exactly:
//  * forward(): position_ids = arange(L) for every row, also over left padding;
//  * start()/step() (generate): position_ids = cumsum(attention_mask) - 1 with padded positions
//    set to 1 for the prompt, then the number of attended positions so far for each new token.
// Masks are HF's: a key that is in the future or padded gets finfo(float32).min added to its score.
//
// A constructed model is immutable; every call keeps its scratch locally or in its LlamaState, so
// one model may serve several threads at once.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/core/dtype.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/io/checkpoint.hpp"
#include "instructblip/models/decoder_state.hpp"
#include "instructblip/models/language_model.hpp"
#include "instructblip/models/weight_source.hpp"

namespace instructblip::models {

struct LlamaOptions {
  /// How the projection matrices and lm_head are kept (f32 / bf16 / q8_0 / q4_0, see WeightPolicy).
  /// The embedding table is float32 under f32 and bfloat16 otherwise; norms and biases are always
  /// float32. f32 checkpoints are used in place under f32, bf16 ones under bf16 (zero-copy).
  WeightPolicy weights;
};

class LlamaModel : public DecoderOnlyModel {
 public:
  /// Loads the weights named `<prefix>model.embed_tokens.weight`, `<prefix>model.layers.N.…`,
  /// `<prefix>model.norm.weight` and `<prefix>lm_head.weight` (absent and aliased to
  /// embed_tokens when config.tie_word_embeddings). InstructBLIP checkpoints use the prefix
  /// "language_model.". Throws ConfigError for an invalid config or one this implementation does
  /// not support (rope_scaling other than null, odd head_dim), TensorError for a missing tensor
  /// or one of the wrong shape / dtype. `checkpoint` need not outlive the model.
  LlamaModel(const LlamaConfig& config, const io::Checkpoint& checkpoint,
             const std::string& prefix = "language_model.", const LlamaOptions& options = {});
  /// Same, from tensors held in memory (name -> tensor, F32 / F16 / BF16); the tensors are shared,
  /// not copied, when their dtype already matches the storage dtype.
  LlamaModel(const LlamaConfig& config, const std::map<std::string, Tensor>& weights,
             const std::string& prefix = "", const LlamaOptions& options = {});
  /// Same, from any WeightSource (names `prefix` + HF name).
  LlamaModel(const LlamaConfig& config, const WeightSource& source, const std::string& prefix = "",
             const LlamaOptions& options = {});
  ~LlamaModel() override;
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const LlamaConfig& config() const;
  const LlamaOptions& options() const;
  /// The HF name (with `prefix`) and shape of every tensor the constructor binds for `config`, in
  /// binding order (ConfigError for an invalid or unsupported config).
  static std::vector<std::pair<std::string, Shape>> tensor_specs(const LlamaConfig& config,
                                                                 const std::string& prefix = "language_model.");
  // forward(), start(), step(), step_batch(), select_rows(), the weight listing: DecoderOnlyModel.

  struct Impl;

 private:
  const Impl& impl() const;
};

/// The per-call decoding state of a LlamaModel (shared with the other decoder-only models).
using LlamaState = DecoderOnlyState;

}  // namespace instructblip::models

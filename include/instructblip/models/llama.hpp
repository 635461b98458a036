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

class LlamaModel : public LanguageModel {
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
  /// The tensors that store the bound weights under their HF names (with `prefix`).
  std::vector<std::pair<std::string, Tensor>> named_weights(
      const std::string& prefix = "language_model.") const override;
  /// The checkpoint / weight-map names the constructor looked up (with the prefix), in binding
  /// order. A tied model does not bind lm_head.weight.
  const std::vector<std::string>& bound_tensor_names() const override;
  /// The HF name (with `prefix`) and shape of every tensor the constructor binds for `config`, in
  /// binding order (ConfigError for an invalid or unsupported config).
  static std::vector<std::pair<std::string, Shape>> tensor_specs(const LlamaConfig& config,
                                                                 const std::string& prefix = "language_model.");
  /// lm_head.weight -> model.embed_tokens.weight when tie_word_embeddings; else none.
  std::vector<std::pair<std::string, std::string>> tied_aliases(
      const std::string& prefix = "language_model.") const override;
  /// Bytes of the weight matrices one decode step streams (every layer's projections plus lm_head).
  std::size_t decode_weight_bytes() const;
  /// Bytes of the lm_head matrix alone.
  std::size_t lm_head_weight_bytes() const;

  // LanguageModel
  std::int64_t vocab_size() const override;
  std::int64_t hidden_size() const override;
  bool is_encoder_decoder() const override { return false; }

  /// ids [B, L] (int64; any rank accepted) -> [B, L, hidden] float32.
  Tensor embed(const Tensor& input_ids) const override;

  /// Teacher-forced forward over inputs_embeds [B, L, H] (float32) with attention_mask [B, L]
  /// (int64 0/1; undefined = all ones), positions arange(L). Without labels: logits [B, L, V].
  /// With labels [B, L'] (int64, -100 ignored, L' <= L): logits of the last L' positions
  /// [B, L', V] and loss = mean CE(logits[:, -L':][:, :-1], labels[:, 1:]) over labels != -100
  /// (NaN when every label is ignored, as torch gives). `decoder_input_ids` is ignored.
  /// output_hidden_states: num_hidden_layers + 1 tensors [B, L, H] — the input embeddings, each
  /// layer's output except the last, and the last layer's output after the final norm.
  LMOutput forward(const Tensor& inputs_embeds, const Tensor& attention_mask,
                   const Tensor& decoder_input_ids = Tensor(), const Tensor& labels = Tensor(),
                   bool output_hidden_states = false) const override;

  /// Copies the prompt (inputs_embeds [B, L, H], attention_mask [B, L] int64 0/1, undefined = all
  /// ones) into a new LlamaState; the caches are sized for L + min(max_new_tokens, 1024) positions
  /// and grow (doubling) if more steps are taken. Attention runs per row and chunk of 256 queries,
  /// so the prefill's masks and scores take O(256 x L) memory per task, not O(B x L x L).
  std::unique_ptr<LMState> start(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                 std::int64_t max_new_tokens) const override;

  /// First call: prefill over the prompt (tokens ignored; may be empty), returns the logits of the
  /// last prompt position. Later calls: tokens.size() == batch(), one token per row appended with
  /// attention-mask value 1 at position (number of attended positions so far).
  Tensor step(LMState& state, const std::vector<std::int64_t>& tokens) const override;
  /// step() for several states: prefills run alone, the decoding states' rows go through the
  /// layers together (one pass over the weights).
  std::vector<Tensor> step_batch(const std::vector<LMState*>& states,
                                 const std::vector<std::vector<std::int64_t>>& tokens) const override;

  /// Reorders / repeats the state's rows (before or after the prefill). Indices must lie in
  /// [0, batch()); the index list must not be empty.
  void select_rows(LMState& state, const std::vector<std::int64_t>& index) const override;

  struct Impl;

 private:
  std::unique_ptr<const Impl> impl_;
};

/// The per-call decoding state of a LlamaModel (shared with the other decoder-only models).
using LlamaState = DecoderOnlyState;

}  // namespace instructblip::models

#pragma once
// What the decoder-only language models (LLaMA, OPT) share behind the LanguageModel interface:
// DecoderOnlyModel (the embedding table, the output head, forward / start / step / step_batch /
// select_rows, the weight listing) and DecoderOnlyState, the per-call decoding state: the prompt
// until the first step runs it (the prefill), then the KV cache and the key mask over the cached
// positions. A model supplies only its own layer math (src/models/decoder_only.hpp).
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "instructblip/core/tensor.hpp"
#include "instructblip/models/language_model.hpp"

namespace instructblip::models {

namespace detail {
class DecoderOnlyCore;  // src/models/decoder_only.hpp
}

/// Generation's positions are cumsum(attention_mask) - 1 for the prompt and then the number of
/// attended positions so far for each new token; a key in the future or padded gets
/// finfo(float32).min added to its score (HF's masks). The first step() runs the prompt (the
/// prefill) and ignores its tokens, exactly as transformers never feeds the placeholder BOS of an
/// inputs_embeds generation; later steps feed one token per row. step_batch(): prefills run alone,
/// the decoding states' rows go through the layers together (one pass over the weights), each row
/// computed as it would be alone.
class DecoderOnlyModel : public LanguageModel {
 public:
  ~DecoderOnlyModel() override;
  DecoderOnlyModel(const DecoderOnlyModel&) = delete;
  DecoderOnlyModel& operator=(const DecoderOnlyModel&) = delete;

  std::int64_t vocab_size() const override;
  std::int64_t hidden_size() const override;
  bool is_encoder_decoder() const override { return false; }
  /// ids (int64, any rank) -> [..., hidden] float32.
  Tensor embed(const Tensor& input_ids) const override;
  /// Teacher-forced forward over inputs_embeds [B, L, H] with attention_mask [B, L] (int64 0/1;
  /// undefined = all ones). Without labels: logits [B, L, V]. With labels [B, L'] (int64, -100
  /// ignored, L' <= L): logits of the last L' positions and loss = mean CE(logits[:, -L':][:, :-1],
  /// labels[:, 1:]) over labels != -100 (NaN when every label is ignored, as torch gives).
  /// `decoder_input_ids` is ignored. output_hidden_states: num_hidden_layers + 1 tensors [B, L, H]
  /// — the input of every layer, then the last layer's output after the final norm.
  LMOutput forward(const Tensor& inputs_embeds, const Tensor& attention_mask,
                   const Tensor& decoder_input_ids = Tensor(), const Tensor& labels = Tensor(),
                   bool output_hidden_states = false) const override;
  /// Copies the prompt into a new DecoderOnlyState; the caches are sized for L + min(max_new_tokens,
  /// 1024) positions and grow (doubling) if more steps are taken. Attention runs per row and chunk
  /// of 256 queries, so the prefill's masks and scores take O(256 x L) memory per task.
  std::unique_ptr<LMState> start(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                 std::int64_t max_new_tokens) const override;
  Tensor step(LMState& state, const std::vector<std::int64_t>& tokens) const override;
  std::vector<Tensor> step_batch(const std::vector<LMState*>& states,
                                 const std::vector<std::vector<std::int64_t>>& tokens) const override;
  /// Reorders / repeats the state's rows (before or after the prefill). Indices must lie in
  /// [0, batch()); the index list must not be empty.
  void select_rows(LMState& state, const std::vector<std::int64_t>& index) const override;

  /// The tensors that store the bound weights under their HF names (with `prefix`).
  std::vector<std::pair<std::string, Tensor>> named_weights(
      const std::string& prefix = "language_model.") const override;
  /// The names the constructor looked up (with the prefix), in binding order. A tied model does
  /// not bind lm_head.weight.
  const std::vector<std::string>& bound_tensor_names() const override;
  /// lm_head.weight -> the token embeddings when tie_word_embeddings; else none.
  std::vector<std::pair<std::string, std::string>> tied_aliases(
      const std::string& prefix = "language_model.") const override;
  /// Bytes of the weight matrices one decode step streams (every layer's projections plus the head).
  std::size_t decode_weight_bytes() const;
  /// Bytes of the output head alone.
  std::size_t lm_head_weight_bytes() const;

 protected:
  explicit DecoderOnlyModel(std::unique_ptr<detail::DecoderOnlyCore> core);
  const detail::DecoderOnlyCore& core() const { return *core_; }

 private:
  std::unique_ptr<const detail::DecoderOnlyCore> core_;
};

class DecoderOnlyState : public LMState {
 public:
  struct Data;
  explicit DecoderOnlyState(std::unique_ptr<Data> data);
  ~DecoderOnlyState() override;
  std::int64_t batch() const override;
  /// True once the prompt has been run (after the first step()).
  bool prefilled() const;
  /// Number of positions held in the KV cache (prompt + fed tokens; 0 before the prefill).
  std::int64_t cached_positions() const;
  /// Attention mask over the cached positions, [batch, cached_positions] int64 (the prompt's mask
  /// before the prefill).
  Tensor attention_mask() const;
  /// The model's view of the state (an incomplete type outside the library).
  Data& data() const { return *d_; }

 private:
  std::unique_ptr<Data> d_;
};

}  // namespace instructblip::models

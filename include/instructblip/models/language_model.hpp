#pragma once
// The one interface generation drives, whichever language-model family sits behind it
// (T5 encoder-decoder or LLaMA decoder-only). A loaded model is immutable and may be shared
// by threads; everything that changes during decoding (KV caches, encoder outputs, masks,
// positions) lives in a per-call LMState.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "instructblip/core/error.hpp"
#include "instructblip/core/tensor.hpp"

namespace instructblip::models {

/// Per-call decoding state. Opaque to generation; each model defines its own.
class LMState {
 public:
  virtual ~LMState() = default;
  /// Number of rows (batch x beams) the state currently holds.
  virtual std::int64_t batch() const = 0;
};

/// Teacher-forced forward outputs (transformers names).
struct LMOutput {
  Tensor logits;                              // [B, T, vocab] float32
  std::optional<float> loss;                  // mean cross-entropy over labels != -100, when labels given
  std::vector<Tensor> hidden_states;          // decoder (T5) / model (LLaMA) hidden states, on request:
                                              // embeddings output first, last one after the final norm
  std::vector<Tensor> encoder_hidden_states;  // T5 only, on request (same convention)
  Tensor encoder_last_hidden_state;           // T5 only
};

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;

  virtual std::int64_t vocab_size() const = 0;
  /// Width of the input embeddings (d_model / hidden_size).
  virtual std::int64_t hidden_size() const = 0;
  virtual bool is_encoder_decoder() const = 0;
  /// Positions a decoder-only model can hold (prompt + generated tokens) when its architecture
  /// fixes them (OPT's learned position table: max_position_embeddings); none for rotary or
  /// relative positions.
  virtual std::optional<std::int64_t> max_positions() const { return std::nullopt; }

  /// Token embeddings: ids [B, L] (int64) -> [B, L, hidden] float32. Out-of-range ids throw
  /// InvalidArgument.
  virtual Tensor embed(const Tensor& input_ids) const = 0;

  /// Teacher-forced forward from inputs_embeds [B, L, H] and attention_mask [B, L] (int64 0/1).
  /// T5: `decoder_input_ids` [B, T] (when undefined and labels are given: shift_right(labels)).
  /// LLaMA: positions are arange(L) as transformers' forward() uses them; `decoder_input_ids` unused.
  /// `labels` (optional, int64, -100 = ignored): T5 [B, T] (loss over the decoder logits); LLaMA
  /// [B, T'] aligned with the LAST T' positions, next-token shifted (as InstructBLIP computes it).
  virtual LMOutput forward(const Tensor& inputs_embeds, const Tensor& attention_mask,
                           const Tensor& decoder_input_ids = Tensor(), const Tensor& labels = Tensor(),
                           bool output_hidden_states = false) const = 0;

  /// Starts incremental decoding for a prompt (inputs_embeds [B, L, H], attention_mask [B, L]).
  /// T5 runs its encoder here; LLaMA keeps the prompt for the first step. `max_new_tokens` is a
  /// capacity hint for the caches (the models cap it at 1024 and grow the caches as needed).
  /// The returned state belongs to this call: states are never shared between calls, so
  /// concurrent calls on one model each use their own.
  virtual std::unique_ptr<LMState> start(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                         std::int64_t max_new_tokens) const = 0;

  /// One decoding step; returns the logits of the newest position, [batch, vocab] float32.
  /// `tokens` holds one id per row: the last token of each row's running sequence.
  /// T5: the token is fed to the decoder (the first call gets decoder_start_token_id).
  /// LLaMA: the first call runs the prompt (prefill) and ignores `tokens`, exactly as transformers
  /// never feeds the placeholder BOS of an inputs_embeds generation; later calls feed `tokens`,
  /// with position = (number of attended positions so far) as cumsum(attention_mask) - 1 gives.
  virtual Tensor step(LMState& state, const std::vector<std::int64_t>& tokens) const = 0;

  /// One decoding step for several states at once (each given its own `tokens`, as step() takes
  /// them); returns each state's logits, [state.batch(), vocab]. A decode step of any state
  /// computes every row independently of the others — the logits of a row are bit for bit those
  /// it gets alone in step(), whatever else is in the call — so a batching scheduler never changes
  /// an answer. The models run the projections once over all rows (one pass over the weights);
  /// this default calls step() per state. States must be distinct.
  virtual std::vector<Tensor> step_batch(const std::vector<LMState*>& states,
                                         const std::vector<std::vector<std::int64_t>>& tokens) const {
    if (tokens.size() != states.size()) throw InvalidArgument("step_batch: one token list per state");
    std::vector<Tensor> out;
    for (std::size_t i = 0; i < states.size(); ++i) out.push_back(step(*states[i], tokens[i]));
    return out;
  }

  /// Replaces the state's rows by rows[index[i]] (beam reordering, and expansion when
  /// index.size() differs from batch(): e.g. {0,0,1,1} repeats each row twice).
  virtual void select_rows(LMState& state, const std::vector<std::int64_t>& index) const = 0;

  // ---- weights (from the model's tensor table; see layers::WeightVisitor) ----------------------
  // Defaults for language models that hold no checkpoint weights (test doubles, wrappers): none.

  /// The tensors that store the bound weights under their HF names (with `prefix`), as
  /// save_pretrained() writes them (quantised matrices as their stored parts).
  virtual std::vector<std::pair<std::string, Tensor>> named_weights(
      const std::string& prefix = "language_model.") const {
    (void)prefix;
    return {};
  }
  /// The names the model bound at load (with the prefix it was loaded with), in binding order.
  virtual const std::vector<std::string>& bound_tensor_names() const {
    static const std::vector<std::string> none;
    return none;
  }
  /// (alias, target) pairs: names transformers ties to a bound weight (with `prefix`); checkpoints
  /// may hold them, the model never binds them.
  virtual std::vector<std::pair<std::string, std::string>> tied_aliases(
      const std::string& prefix = "language_model.") const {
    (void)prefix;
    return {};
  }
};

}  // namespace instructblip::models

#pragma once
// What the decoder-only language models (LLaMA, OPT) share: the embedding table and output head,
// the loop over layers with causal, padding-masked attention against a per-call KV cache, the
// teacher-forced forward(), and generation's start / step / step_batch / select_rows. A model
// supplies only its own layer math (norms, projections, rotary or learned positions, MLP) through
// the virtual hooks.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "instructblip/layers/kv_cache.hpp"
#include "instructblip/models/weight_source.hpp"
#include "instructblip/models/decoder_state.hpp"
#include "instructblip/models/language_model.hpp"

namespace instructblip::models {

struct DecoderOnlyState::Data {
  const void* model = nullptr;  // the DecoderOnlyCore that made the state
  std::int64_t B = 0;
  bool prefilled = false;
  // Before the prefill: the prompt.
  std::int64_t L = 0;
  std::vector<float> prompt;              // [B, L, H]
  std::vector<std::uint8_t> prompt_mask;  // [B, L]
  std::int64_t max_new = 0;
  // After the prefill.
  layers::KVCache cache;
  std::vector<std::vector<std::uint8_t>> mask;  // [B][cache.length()]
  std::vector<std::int64_t> attended;           // [B] number of mask-1 positions so far
};

namespace detail {

/// y[M, N] = x[M, K] W^T (+ b) through the layer's WeightMatrix.
void dense(const Linear& d, const float* x, std::int64_t M, float* y);

class DecoderOnlyCore {
 public:
  virtual ~DecoderOnlyCore() = default;

  // ---- sizes and weights every decoder-only model has
  std::string name = "model";  // for messages: "LlamaModel", "OPTModel"
  std::int64_t H = 0, V = 0, nh = 0, nkv = 0, hd = 0, kvdim = 0;
  float attention_scale = 1.0f;  // applied to q k^T inside attention
  Tensor embed;                  // [V, H] F32 (f32 weights) or BF16
  Linear lm_head;                // built from embed when tied
  std::vector<std::string> bound;  // names looked up at load, in order

  // ---- the model's own math
  virtual std::size_t num_layers() const = 0;
  /// Positions of forward(): false = arange(L) for every row (LLaMA), true = from the mask as
  /// generate() computes them (OPT).
  virtual bool forward_positions_from_mask() const = 0;
  /// The position a padded prompt position gets (LLaMA: 1 via masked_fill; OPT: -1 = cumsum * mask - 1).
  virtual std::int64_t pad_position() const = 0;
  /// Adds what the model adds to the input embeddings at `positions` (OPT: its learned position
  /// rows); `h` [rows, H] in place.
  virtual void add_position_embeddings(float* /*h*/, std::int64_t /*rows*/, const std::int64_t* /*positions*/) const {}
  /// Per-call scratch the layer hooks may grow and reuse across layers.
  struct Scratch {
    std::vector<float> a, b, c;
  };
  /// Layer `l`: q [R, nh*hd], k and v [R, kvdim] of the rows `h` [R, H] at `positions` (norm,
  /// projections, rotary embedding / scaling). `xn` has room for [R, H].
  virtual void attention_inputs(std::size_t l, const float* h, std::int64_t R, const std::int64_t* positions,
                                float* xn, float* q, float* k, float* v) const = 0;
  /// Layer `l` after attention: h += out_proj(att), then the MLP block, `h` [R, H] in place
  /// (with whatever norms the architecture puts around them).
  virtual void finish_layer(std::size_t l, const float* att, std::int64_t R, float* h, Scratch& s) const = 0;
  /// The norm after the last layer: out = norm(h), [rows, H].
  virtual void final_norm(const float* h, std::int64_t rows, float* out) const = 0;
  /// Bytes of the weight matrices one decode step streams (every layer's projections + lm_head).
  virtual std::size_t decode_weight_bytes() const = 0;
  /// The model's tensor table: every weight (HF name with `prefix`, shape, slot, role) in binding
  /// order, and the tied lm_head alias. Listing and aliasing visitors touch no slot.
  virtual void visit(const WeightVisitor& v, const std::string& prefix) = 0;

  // ---- shared
  void embed_rows(const std::int64_t* ids, std::int64_t n, float* out) const;
  /// Rows of one state in a batched call: B rows, their key validity and cache.
  struct Segment {
    std::int64_t B;
    const std::vector<std::vector<std::uint8_t>>* key_valid;
    layers::KVCache* cache;
  };
  /// Runs the decoder layers on T new positions of each row of the segments (their rows follow
  /// one another in `h`, [rows*T, H], in place): position embeddings added first, then per layer
  /// the projections over all rows and attention per row against its segment's cache (keys at
  /// positions [past, past + T) appended; a key in the future or not valid gets finfo.min). When
  /// `hidden` is given, the input of every layer is appended to it ([rows, T, H] each).
  void run_layers(float* h, const std::vector<Segment>& segments, std::int64_t T, const std::int64_t* positions,
                  std::vector<Tensor>* hidden) const;

  Tensor embed_ids(const Tensor& input_ids) const;
  LMOutput forward(const Tensor& inputs_embeds, const Tensor& attention_mask, const Tensor& labels,
                   bool output_hidden_states) const;
  std::unique_ptr<LMState> start(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                 std::int64_t max_new_tokens) const;
  std::vector<Tensor> step_batch(const std::vector<LMState*>& states,
                                 const std::vector<std::vector<std::int64_t>>& tokens) const;
  void select_rows(LMState& state, const std::vector<std::int64_t>& index) const;
};

}  // namespace detail
}  // namespace instructblip::models

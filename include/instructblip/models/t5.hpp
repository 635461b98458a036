#pragma once
// Flan-T5 (T5 v1.1 family) behind the LanguageModel interface, matching transformers 4.36.2's
// T5ForConditionalGeneration (models/t5/modeling_t5.py) in float32:
//  * one shared token embedding (`shared.weight`); encoder/decoder embed_tokens alias it;
//  * RMSNorm without mean subtraction or bias, variance in float32 (T5LayerNorm);
//  * unscaled attention (no 1/sqrt(d_kv)); d_kv * num_heads may differ from d_model;
//  * relative position bias computed by the first block of each stack (only block 0 stores
//    `relative_attention_bias`) and reused by every block of that stack: bidirectional buckets in
//    the encoder, causal buckets in the decoder. It is materialised per (row, head, chunk of 256
//    queries) inside the attention tasks, never as a whole [heads, L, L] tensor, so long prompts
//    cost O(256 x L) extra memory per task;
//  * padding masks as HF extends them: additive (1 - mask) * finfo(float32).min, so masked keys
//    get exactly zero weight (a row with every key masked attends uniformly, as in HF);
//  * FFN wo(act(wi_0 x) * wi_1 x) (gated) or wo(act(wi x)), act = dense_act_fn;
//  * untied lm_head, or (tie_word_embeddings) logits = (h * d_model**-0.5) @ shared^T.
// Everything is float32 (weights stored as f16/bf16 are converted when loaded); the FFN output in
// particular stays float32 (HF keeps `wo` in float32 for reduced-precision T5; this library has no
// reduced-precision activation path yet).
//
// The model is immutable after construction and safe to share between threads: all per-call
// scratch is local, and everything decoding changes lives in a T5State.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/io/checkpoint.hpp"
#include "instructblip/layers/kv_cache.hpp"
#include "instructblip/models/language_model.hpp"
#include "instructblip/models/weight_source.hpp"
#include "instructblip/ops/activations.hpp"
#include "instructblip/ops/linear.hpp"

namespace instructblip::models {

namespace t5_detail {
/// Per prompt row, fixed after T5Model::start(): the encoder output, its additive key mask and the
/// cross-attention keys / values of every decoder block. Shared (not copied) by the beams that
/// select_rows() expands from one row.
struct EncoderRow {
  std::int64_t length = 0;          // encoder positions L (padded length of the batch)
  std::vector<std::int64_t> mask;   // [L] the attention mask as given (1 = attend)
  std::vector<float> key_mask;      // [L] additive: (1 - mask) * finfo(float32).min
  MatrixF hidden;                   // [L, d_model] encoder_last_hidden_state
  std::vector<MatrixF> cross_k;     // per decoder block: [L, inner_dim]
  std::vector<MatrixF> cross_v;
};
}  // namespace t5_detail

/// Decoding state of a T5Model: encoder outputs + mask + cross K/V (per row, shared between
/// beams of one prompt) and the decoder self-attention KV cache (per row).
class T5State final : public LMState {
 public:
  std::int64_t batch() const override { return cache_.rows(); }
  /// Tokens fed to the decoder so far (the same for every row).
  std::int64_t decoded_length() const { return cache_.length(); }
  /// Encoder positions (the padded prompt length).
  std::int64_t encoder_length() const { return enc_.empty() ? 0 : enc_.front()->length; }
  /// The rows' encoder_last_hidden_state, [batch, L, d_model] (a copy).
  Tensor encoder_last_hidden_state() const;
  /// The rows' encoder attention mask as given to start(), [batch, L] int64 (a copy).
  Tensor encoder_attention_mask() const;

 private:
  friend class T5Model;
  std::vector<std::shared_ptr<const t5_detail::EncoderRow>> enc_;
  layers::KVCache cache_;  // decoder self-attention, per block [capacity, inner_dim] per row
};

class T5Model final : public LanguageModel {
 public:
  /// Returns the float32 weight named `name` (HF name without the model prefix, e.g.
  /// "encoder.block.0.layer.0.SelfAttention.q.weight") with exactly `shape`, or throws
  /// TensorError. The returned tensor must stay valid (it may borrow memory it keeps alive).
  using WeightFn = std::function<Tensor(const std::string& name, const Shape& shape)>;

  /// Binds the weights `prefix` + HF name in `checkpoint` (prefix "language_model." inside an
  /// InstructBLIP checkpoint, "" for a bare T5ForConditionalGeneration). F32 weights are zero-copy
  /// views of the mapped file (the views keep it mapped; `checkpoint` itself may be destroyed).
  /// Missing / misshapen tensors -> TensorError; an invalid config -> ConfigError; an unsupported
  /// dense_act_fn -> InvalidArgument.
  /// `policy` chooses how the projection matrices are kept (f32 / bf16 / q8_0 / q4_0; `wo` and the
  /// output head as WeightPolicy describes); a checkpoint saved quantised is used as stored.
  T5Model(const T5Config& config, const io::Checkpoint& checkpoint, const std::string& prefix = "language_model.",
          const WeightPolicy& policy = {});
  T5Model(const T5Config& config, const WeightSource& source, const std::string& prefix,
          const WeightPolicy& policy = {});
  /// Binds weights from any source (e.g. random tensors built in memory by a benchmark).
  T5Model(const T5Config& config, const WeightFn& weights, const WeightPolicy& policy = {});

  const T5Config& config() const { return config_; }

  /// The names the constructor looked up, in binding order (with the checkpoint prefix for the
  /// checkpoint constructor; as passed to the WeightFn otherwise). Tied models do not bind
  /// lm_head.weight; encoder/decoder embed_tokens are never bound (they alias shared.weight).
  const std::vector<std::string>& bound_tensor_names() const override { return bound_; }
  /// The HF name (with `prefix`) and shape of every tensor the constructor binds for `config`, in
  /// binding order (ConfigError for an invalid config).
  static std::vector<std::pair<std::string, Shape>> tensor_specs(const T5Config& config,
                                                                 const std::string& prefix = "language_model.");

  // ---- LanguageModel --------------------------------------------------------------------------
  std::int64_t vocab_size() const override { return config_.vocab_size; }
  std::int64_t hidden_size() const override { return config_.d_model; }
  bool is_encoder_decoder() const override { return true; }

  Tensor embed(const Tensor& input_ids) const override;

  /// Encoder over (inputs_embeds, attention_mask), then the decoder over `decoder_input_ids`
  /// (or shift_right(labels) when undefined). `labels` must have the decoder's [B, T] shape.
  /// loss = mean cross-entropy over labels != -100 (NaN when every label is ignored, as torch).
  /// hidden_states: decoder, num_decoder_layers + 1 tensors [B, T, d_model];
  /// encoder_hidden_states: num_layers + 1 tensors [B, L, d_model] (first = inputs_embeds, last =
  /// after the final norm). encoder_last_hidden_state is always set.
  LMOutput forward(const Tensor& inputs_embeds, const Tensor& attention_mask,
                   const Tensor& decoder_input_ids = Tensor(), const Tensor& labels = Tensor(),
                   bool output_hidden_states = false) const override;

  /// Runs the encoder and the cross-attention K/V projections; the returned state is a T5State
  /// whose self-attention caches hold min(max_new_tokens, 1024) positions and grow as needed.
  std::unique_ptr<LMState> start(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                 std::int64_t max_new_tokens) const override;
  /// Feeds one token per row to the decoder (the first call: decoder_start_id()).
  /// `state` must come from this model's start(); `tokens.size()` must equal state.batch().
  Tensor step(LMState& state, const std::vector<std::int64_t>& tokens) const override;
  /// step() for several states at once: one pass of the decoder's projections over all their rows.
  std::vector<Tensor> step_batch(const std::vector<LMState*>& states,
                                 const std::vector<std::vector<std::int64_t>>& tokens) const override;
  /// Reorders / expands every per-row cache (encoder output, mask, cross K/V, self KV cache).
  /// Every index must be in [0, batch()); an empty index is an InvalidArgument.
  void select_rows(LMState& state, const std::vector<std::int64_t>& index) const override;

  // ---- T5 specifics ---------------------------------------------------------------------------
  struct EncoderOutput {
    Tensor last_hidden_state;            // [B, L, d_model]
    std::vector<Tensor> hidden_states;   // on request: num_layers + 1 tensors
  };
  /// The encoder stack alone (T5EncoderModel semantics).
  EncoderOutput encode(const Tensor& inputs_embeds, const Tensor& attention_mask,
                       bool output_hidden_states = false) const;

  /// T5ForConditionalGeneration._shift_right: [start, labels[:, :-1]] with -100 -> pad_token_id.
  /// Throws ConfigError when decoder_start_token_id / pad_token_id are both unset.
  Tensor shift_right(const Tensor& labels) const;

  /// T5Attention._relative_position_bucket for one relative position (memory - query), computed as
  /// torch does it: the logarithmic branch in float32 (log(rp / max_exact) / log(max_distance /
  /// max_exact) * (num_buckets - max_exact)) truncated toward zero, capped at num_buckets - 1.
  static std::int64_t relative_position_bucket(std::int64_t relative_position, bool bidirectional,
                                               std::int64_t num_buckets, std::int64_t max_distance);

  /// The tensors that store the bound weights under their HF names (with `prefix`).
  std::vector<std::pair<std::string, Tensor>> named_weights(
      const std::string& prefix = "language_model.") const override;
  /// encoder/decoder embed_tokens.weight (and lm_head.weight when tied) -> shared.weight.
  std::vector<std::pair<std::string, std::string>> tied_aliases(
      const std::string& prefix = "language_model.") const override;
  const WeightPolicy& weight_policy() const { return policy_; }

  /// Bytes of weights one decoder step reads (self-attention q/k/v/o, cross-attention q/o, FFN,
  /// norms and the output head) - for bandwidth figures in benchmarks.
  std::size_t decoder_step_weight_bytes() const;

 private:
  struct Attention {
    Linear q, k, v, o;  // q/k/v [inner, d_model], o [d_model, inner]
  };
  struct FeedForward {
    Linear wi, wi_0, wi_1, wo;  // gated: wi_0 / wi_1 [d_ff, d_model]; else wi; wo [d_model, d_ff]
  };
  struct Block {
    Tensor self_norm;
    Attention self_attn;
    Tensor cross_norm;  // decoder only
    Attention cross_attn;
    Tensor ff_norm;
    FeedForward ff;
  };
  struct Stack {
    std::vector<Block> blocks;
    Tensor relative_attention_bias;  // [num_buckets, num_heads]
    Tensor final_norm;
  };

  T5Model() = default;  // for tensor_specs()
  void check_config();
  /// Walks every bound weight (names relative to the model, prefixed by `prefix`).
  void visit(const WeightVisitor& v, const std::string& prefix);
  void visit_stack(const WeightVisitor& v, const std::string& prefix, const std::string& name, std::int64_t layers,
                   bool decoder, Stack& stack);
  void load(const WeightSource& source, const std::string& prefix);

  using KeyRows = std::function<ops::In<float>(std::int64_t row)>;
  /// Self-attention with the stack's relative position bias for B rows of Lq queries (positions
  /// query_offset ..) against Lk keys (keys(b) / values(b): [Lk, inner_dim]); q and out are
  /// [B * Lq, inner_dim] from row `row0`. key_masks: additive [B, Lk] or null. The bias is built per task for one
  /// head and a chunk of queries, so memory stays O(chunk x Lk) whatever the prompt length.
  void biased_self_attention(const Stack& stack, bool bidirectional, bool causal, std::int64_t query_offset,
                             std::int64_t B, std::int64_t Lq, std::int64_t Lk, std::int64_t row0, const MatrixF& q,
                             const KeyRows& keys, const KeyRows& values, const float* key_masks, MatrixF& out) const;
  void feed_forward(const FeedForward& ff, const Tensor& norm, MatrixF& x) const;
  void rms_norm(const MatrixF& x, const Tensor& weight, MatrixF& y) const;

  /// Encoder: x [B*L, d_model] in / out (after the final norm); masks additive [B, L].
  void run_encoder(MatrixF& x, std::int64_t B, std::int64_t L, const std::vector<float>& key_masks,
                   std::vector<MatrixF>* hidden) const;
  /// Builds a state (encoder rows incl. cross K/V) from the encoder output.
  std::unique_ptr<T5State> make_state(const MatrixF& enc, std::int64_t B, std::int64_t L,
                                      std::vector<float> key_masks, const Tensor& attention_mask,
                                      std::int64_t capacity) const;
  /// Decoder over T new tokens per row of each state (x: the states' rows one after the other,
  /// [sum B_i * T, d_model] embeddings in, final-normed hidden out), appending to each state's
  /// self-attention caches. The projections run once over all rows; attention per state.
  void run_decoder(const std::vector<T5State*>& states, MatrixF& x, std::int64_t T,
                   std::vector<MatrixF>* hidden) const;
  /// logits [rows, vocab] from final-normed decoder states (applies the tied-head scaling).
  void lm_logits(const MatrixF& h, float* out) const;
  void check_prompt(const Tensor& inputs_embeds, const Tensor& attention_mask, const char* what) const;

  T5Config config_;
  std::vector<std::string> bound_;
  ops::Activation act_ = ops::Activation::Relu;
  WeightPolicy policy_;
  Tensor shared_;   // [vocab, d_model]
  Linear lm_head_;  // [vocab, d_model] (built from shared_ when tied)
  Stack encoder_, decoder_;
};

}  // namespace instructblip::models

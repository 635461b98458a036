#pragma once
// The instruction-aware Q-Former of InstructBLIP (transformers 4.36.2 InstructBlipQFormerModel)
// and the two top-level weights around it (query_tokens, language_projection).
//
// Q-Former, rows = [Q query tokens; T instruction tokens]:
//   embeddings = LayerNorm(cat(query_embeds, word_embeddings(ids) + position_embeddings(0..T-1)))
//   every layer (BERT style, post-LN):
//     a = LayerNorm(x + dense(self_attention(x, additive key mask (1 - mask) * -10000)))
//         mask = cat(ones(Q), qformer_attention_mask)
//     on layers with layer_idx % cross_attention_frequency == 0, query rows only:
//       a_q = LayerNorm(a_q + dense(cross_attention(a_q, image_embeds)))   (image mask all ones)
//     query rows:       x_q = LayerNorm(a_q + output_query.dense(act(intermediate_query.dense(a_q))))
//     instruction rows: x_t = LayerNorm(a_t + output.dense(act(intermediate.dense(a_t))))
//
// Projection (QueryProjector): owns `query_tokens` [1, Q, Hq] and `language_projection` and computes
//   language_model_inputs = language_projection(qformer_last_hidden_state[:, :Q]).
//
// Typical use:
//   VisionModel vision(cfg.vision_config, ckpt);           // "vision_model."
//   QFormer qformer(cfg.qformer_config, ckpt);             // "qformer."
//   QueryProjector proj(cfg, ckpt);                        // "query_tokens", "language_projection."
//   auto img = vision.forward(pixel_values);
//   auto q = qformer.forward(proj.query_tokens(), qformer_input_ids, qformer_attention_mask,
//                            img.last_hidden_state);
//   Tensor lm_inputs = proj.project(q.last_hidden_state);  // [B, Q, text_hidden]
//
// All classes are immutable after construction; forward()/project() are const and thread-safe.
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/io/checkpoint.hpp"
#include "instructblip/models/weight_source.hpp"
#include "instructblip/ops/activations.hpp"

namespace instructblip::models {

/// transformers' BaseModelOutputWithPoolingAndCrossAttentions of the Q-Former (pooler omitted: the
/// Q-Former pooler is just row 0 and InstructBLIP never uses it).
struct QFormerOutput {
  Tensor last_hidden_state;             // [B, Q + T, hidden]: query rows, then instruction rows
  /// On request: num_hidden_layers + 1 tensors [B, Q + T, hidden]: the embeddings (after their
  /// LayerNorm), then every layer's output (the last equals last_hidden_state).
  std::vector<Tensor> hidden_states;
  /// On request: one self-attention map [B, heads, Q + T, Q + T] per layer.
  std::vector<Tensor> attentions;
  /// On request: one cross-attention map [B, heads, Q, N_image] per cross-attention layer
  /// (ascending layer index), as HF's cross_attentions.
  std::vector<Tensor> cross_attentions;
};

class QFormer {
 public:
  /// Binds every weight under `prefix` (normally "qformer.") by its HF name and shape; layers with
  /// cross-attention (config.has_cross_attention) also bind `crossattention.*` with keys/values
  /// of width encoder_hidden_size. Missing / mis-shaped tensors -> TensorError naming the tensor.
  /// position_embedding_type other than "absolute" -> ConfigError.
  /// `policy` chooses how the linear layers' weights are kept (see WeightPolicy).
  QFormer(const QFormerConfig& config, const io::Checkpoint& checkpoint, const std::string& prefix = "qformer.",
          const WeightPolicy& policy = {});
  QFormer(const QFormerConfig& config, const WeightSource& source, const std::string& prefix = "qformer.",
          const WeightPolicy& policy = {});

  /// query_embeds: float32 [1 or B, Q, hidden] (a batch of 1 is broadcast, like query_tokens.expand);
  ///   may be undefined (Q = 0: no cross-attention, every row uses intermediate/output).
  /// input_ids: int64 [B, T] instruction ids (may be undefined: T = 0). T > max_position_embeddings
  ///   or an id outside the vocabulary -> InvalidArgument.
  /// attention_mask: [B, T] int64 or float32 over the INSTRUCTION tokens only (the query rows are
  ///   always attended); undefined = all ones.
  /// encoder_hidden_states: float32 [B, N, encoder_hidden_size] (image embeddings); required when
  ///   Q > 0 and the model has cross-attention layers.
  QFormerOutput forward(const Tensor& query_embeds, const Tensor& input_ids, const Tensor& attention_mask,
                        const Tensor& encoder_hidden_states, bool output_hidden_states = false,
                        bool output_attentions = false) const;

  const QFormerConfig& config() const { return config_; }

  /// The HF name (with `prefix`) and shape of every tensor the constructor binds, in binding order.
  static std::vector<std::pair<std::string, Shape>> tensor_specs(const QFormerConfig& config,
                                                                 const std::string& prefix = "qformer.");

  /// The tensors that store the bound weights under their HF names (with `prefix`).
  std::vector<std::pair<std::string, Tensor>> named_weights(const std::string& prefix = "qformer.") const;

  /// FLOPs (2 per MAC) of one forward: batch B, Q queries, T instruction tokens, N image tokens.
  double flops(std::int64_t batch, std::int64_t num_queries, std::int64_t num_text,
               std::int64_t num_image_tokens) const;

 private:
  using Dense = Linear;
  struct Attention {  // InstructBlipQFormerAttention: multi-head attention + output dense + LayerNorm
    Dense query, key, value, out;
    Tensor ln_w, ln_b;
  };
  struct Ffn {  // intermediate(.dense) + output(.dense, .LayerNorm)
    Dense in, out;
    Tensor ln_w, ln_b;
  };
  struct Layer {
    Attention self_attn;
    bool has_cross = false;
    Attention cross_attn;
    Ffn ffn_text;   // intermediate / output
    Ffn ffn_query;  // intermediate_query / output_query
  };

  struct Weights {
    Tensor word_embeddings;      // [vocab, H]
    Tensor position_embeddings;  // [max_pos, H]
    Tensor emb_ln_w, emb_ln_b;
    std::vector<Layer> layers;
  };
  /// The single list of weights: visits (prefix + HF name, shape, slot) for each, in order.
  static void visit(const QFormerConfig& config, const std::string& prefix, Weights& w, const WeightVisitor& v);

  QFormerConfig config_;
  ops::Activation act_ = ops::Activation::Gelu;
  Weights w_;
};

/// The learned query tokens and the language projection (top-level InstructBLIP weights).
class QueryProjector {
 public:
  /// Binds `prefix + "query_tokens"` [1, num_query_tokens, qformer hidden] and
  /// `prefix + "language_projection.{weight,bias}"` [text_hidden, qformer hidden] / [text_hidden].
  QueryProjector(const InstructBlipConfig& config, const io::Checkpoint& checkpoint, const std::string& prefix = "");
  QueryProjector(const InstructBlipConfig& config, const WeightSource& source, const std::string& prefix = "");

  /// [1, num_query_tokens, qformer hidden] (pass to QFormer::forward as query_embeds).
  const Tensor& query_tokens() const { return query_tokens_; }
  std::int64_t num_query_tokens() const { return num_query_tokens_; }
  std::int64_t qformer_hidden_size() const { return qformer_hidden_; }
  std::int64_t text_hidden_size() const { return text_hidden_; }

  /// language_model_inputs = language_projection(qformer_last_hidden_state[:, :num_query_tokens]):
  /// [B, S >= num_query_tokens, qformer hidden] -> [B, num_query_tokens, text_hidden].
  Tensor project(const Tensor& qformer_last_hidden_state) const;

  static std::vector<std::pair<std::string, Shape>> tensor_specs(const InstructBlipConfig& config,
                                                                 const std::string& prefix = "");
  /// query_tokens and language_projection.{weight,bias} under their HF names (float32).
  std::vector<std::pair<std::string, Tensor>> named_weights(const std::string& prefix = "") const;

 private:
  std::int64_t num_query_tokens_ = 0, qformer_hidden_ = 0, text_hidden_ = 0;
  Tensor query_tokens_;
  Tensor proj_w_, proj_b_;
};

}  // namespace instructblip::models

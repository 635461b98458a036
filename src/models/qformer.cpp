#include "instructblip/models/qformer.hpp"

#include <algorithm>
#include <cmath>

#include "instructblip/core/thread_pool.hpp"
#include "instructblip/ops/ops.hpp"
#include "../internal/util.hpp"
#include "row_ops.hpp"

namespace instructblip::models {

namespace {

using ops::In;
using ops::Out;
using detail::layer_norm_rows;
using instructblip::detail::to_tensor;

using instructblip::detail::describe;

}  // namespace

// ---------------------------------------------------------------------------------------------
// QFormer

void QFormer::visit(const QFormerConfig& c, const std::string& p, Weights& w, const WeightVisitor& v) {
  const auto& fn = v.tensor;
  const std::int64_t H = c.hidden_size, I = c.intermediate_size, E = c.encoder_hidden_size;
  const bool text = c.takes_instruction();
  if (text) {
    fn(p + "embeddings.word_embeddings.weight", {c.vocab_size, H}, w.word_embeddings);
    fn(p + "embeddings.position_embeddings.weight", {c.max_position_embeddings, H}, w.position_embeddings);
    fn(p + "embeddings.layernorm.weight", {H}, w.emb_ln_w);
    fn(p + "embeddings.layernorm.bias", {H}, w.emb_ln_b);
  } else {
    // Blip2QFormerModel: LayerNorm(query_embeds) is the input (modeling_blip_2.py:1109-1110).
    fn(p + "layernorm.weight", {H}, w.emb_ln_w);
    fn(p + "layernorm.bias", {H}, w.emb_ln_b);
  }
  auto dense = [&](const std::string& name, std::int64_t out, std::int64_t in, Dense& d) {
    v.linear(name, out, in, true, d, MatrixRole::QFormer);
  };
  auto attention = [&](const std::string& ap, std::int64_t kv_in, Attention& a) {
    dense(ap + "attention.query", H, H, a.query);
    dense(ap + "attention.key", H, kv_in, a.key);
    dense(ap + "attention.value", H, kv_in, a.value);
    dense(ap + "output.dense", H, H, a.out);
    fn(ap + "output.LayerNorm.weight", {H}, a.ln_w);
    fn(ap + "output.LayerNorm.bias", {H}, a.ln_b);
  };
  auto ffn = [&](const std::string& lp, const std::string& suffix, Ffn& f) {
    dense(lp + "intermediate" + suffix + ".dense", I, H, f.in);
    dense(lp + "output" + suffix + ".dense", H, I, f.out);
    fn(lp + "output" + suffix + ".LayerNorm.weight", {H}, f.ln_w);
    fn(lp + "output" + suffix + ".LayerNorm.bias", {H}, f.ln_b);
  };
  w.layers.resize(std::size_t(c.num_hidden_layers));
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    Layer& l = w.layers[std::size_t(i)];
    const std::string lp = p + "encoder.layer." + std::to_string(i) + ".";
    attention(lp + "attention.", H, l.self_attn);
    l.has_cross = c.has_cross_attention(i);
    if (l.has_cross) attention(lp + "crossattention.", E, l.cross_attn);
    if (text) ffn(lp, "", l.ffn_text);  // BLIP-2 layers have only the query FFN
    ffn(lp, "_query", l.ffn_query);
  }
}

std::vector<std::pair<std::string, Shape>> QFormer::tensor_specs(const QFormerConfig& config,
                                                                 const std::string& prefix) {
  std::vector<std::pair<std::string, Shape>> specs;
  Weights w;
  visit(config, prefix, w, WeightVisitor::lister(specs));
  return specs;
}

std::vector<std::pair<std::string, Tensor>> QFormer::named_weights(const std::string& prefix) const {
  std::vector<std::pair<std::string, Tensor>> out;
  Weights w = w_;  // shares the buffers
  visit(config_, prefix, w, WeightVisitor::saver(out));
  return out;
}

QFormer::QFormer(const QFormerConfig& config, const io::Checkpoint& checkpoint, const std::string& prefix,
                 const WeightPolicy& policy)
    : QFormer(config, WeightSource::from_checkpoint(checkpoint), prefix, policy) {}

QFormer::QFormer(const QFormerConfig& config, const WeightSource& source, const std::string& prefix,
                 const WeightPolicy& policy)
    : config_(config) {
  config_.validate("qformer_config", "qformer_config.");
  if (config_.position_embedding_type != "absolute")
    throw ConfigError("qformer_config: qformer_config.position_embedding_type: '" +
                      config_.position_embedding_type + "' is not supported (only \"absolute\")");
  act_ = ops::parse_activation(config_.hidden_act);
  visit(config_, prefix, w_, WeightVisitor::loader(source, policy));
}

double QFormer::flops(std::int64_t batch, std::int64_t Q, std::int64_t T, std::int64_t N) const {
  const double H = double(config_.hidden_size), I = double(config_.intermediate_size);
  const double E = double(config_.encoder_hidden_size), S = double(Q + T);
  double total = 0;
  for (std::int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    total += 2.0 * S * H * 4 * H + 2.0 * 2.0 * S * S * H;  // self-attention q/k/v/out + scores/context
    if (Q > 0 && config_.has_cross_attention(i))
      total += 2.0 * double(Q) * H * 2 * H + 2.0 * double(N) * E * 2 * H + 2.0 * 2.0 * double(Q) * double(N) * H;
    total += 2.0 * S * H * I * 2;  // FFN (query or text weights)
  }
  return double(batch) * total;
}

QFormerOutput QFormer::forward(const Tensor& query_embeds, const Tensor& input_ids, const Tensor& attention_mask,
                               const Tensor& encoder_hidden_states, bool output_hidden_states,
                               bool output_attentions) const {
  const std::int64_t Hd = config_.hidden_size, I = config_.intermediate_size, E = config_.encoder_hidden_size;
  const int heads = int(config_.num_attention_heads), hd = int(config_.head_dim());
  const float eps = float(config_.layer_norm_eps);
  const float scale = float(1.0 / std::sqrt(double(hd)));

  // ---- validate the inputs
  std::int64_t Q = 0, Bq = 0, T = 0, Bt = 0, N = 0, Be = 0;
  if (query_embeds.defined()) {
    if (query_embeds.dtype() != DType::F32 || query_embeds.ndim() != 3 || query_embeds.dim(2) != Hd ||
        query_embeds.dim(0) < 1)
      throw InvalidArgument("QFormer: query_embeds must be float32 [1 or B, num_queries, " + std::to_string(Hd) +
                            "], got " + describe(query_embeds));
    Bq = query_embeds.dim(0);
    Q = query_embeds.dim(1);
  }
  if (input_ids.defined() && !config_.takes_instruction())
    throw InvalidArgument("QFormer: the BLIP-2 Q-Former (blip_2_qformer) takes no instruction input_ids");
  if (input_ids.defined()) {
    if (input_ids.dtype() != DType::I64 || input_ids.ndim() != 2)
      throw InvalidArgument("QFormer: input_ids must be int64 [B, T], got " + describe(input_ids));
    Bt = input_ids.dim(0);
    T = input_ids.dim(1);
    if (T > config_.max_position_embeddings)
      throw InvalidArgument("QFormer: " + std::to_string(T) + " instruction tokens exceed max_position_embeddings (" +
                            std::to_string(config_.max_position_embeddings) + ")");
  }
  bool any_cross = false;
  for (const Layer& l : w_.layers) any_cross = any_cross || l.has_cross;
  const bool need_image = Q > 0 && any_cross;
  if (encoder_hidden_states.defined()) {
    if (encoder_hidden_states.dtype() != DType::F32 || encoder_hidden_states.ndim() != 3 ||
        encoder_hidden_states.dim(2) != E)
      throw InvalidArgument("QFormer: encoder_hidden_states must be float32 [B, N, " + std::to_string(E) +
                            "] (encoder_hidden_size), got " + describe(encoder_hidden_states));
    Be = encoder_hidden_states.dim(0);
    N = encoder_hidden_states.dim(1);
  }
  if (need_image && (!encoder_hidden_states.defined() || N < 1))
    throw InvalidArgument("QFormer: encoder_hidden_states (at least one image token) are required for the "
                          "cross-attention layers");
  const std::int64_t B = input_ids.defined() ? Bt : encoder_hidden_states.defined() ? Be : Bq;
  if (B < 1 || Q + T < 1)
    throw InvalidArgument("QFormer: empty input (batch " + std::to_string(B) + ", " + std::to_string(Q) +
                          " queries, " + std::to_string(T) + " instruction tokens)");
  if (Q > 0 && Bq != 1 && Bq != B)
    throw InvalidArgument("QFormer: query_embeds batch " + std::to_string(Bq) + " is neither 1 nor the batch " +
                          std::to_string(B));
  if (need_image && Be != B)
    throw InvalidArgument("QFormer: encoder_hidden_states batch " + std::to_string(Be) +
                          " differs from the batch " + std::to_string(B));
  if (attention_mask.defined()) {
    if ((attention_mask.dtype() != DType::I64 && attention_mask.dtype() != DType::F32) ||
        attention_mask.ndim() != 2 || attention_mask.dim(0) != B || attention_mask.dim(1) != T)
      throw InvalidArgument("QFormer: attention_mask must be int64 or float32 [" + std::to_string(B) + ", " +
                            std::to_string(T) + "] (instruction tokens only), got " + describe(attention_mask));
  }

  const std::int64_t S = Q + T, M = B * S;
  QFormerOutput out;
  // Every product below stacks the B images' rows: its regime is the one one image gets, so an
  // image's result does not depend on the images batched with it.
  ops::StackedItems per_image(B);

  // ---- embeddings: LayerNorm(cat(queries, word + position embeddings))
  MatrixF x(M, Hd);
  {
    for (std::int64_t b = 0; b < B; ++b) {
      if (Q > 0)
        x.middleRows(b * S, Q) = query_embeds.matrix<float>(Bq * Q, Hd).middleRows((Bq == 1 ? 0 : b) * Q, Q);
      if (T > 0) {  // InstructBLIP only: the BLIP-2 Q-Former has no text embeddings
        const auto word = w_.word_embeddings.matrix<float>(config_.vocab_size, Hd);
        const auto pos = w_.position_embeddings.matrix<float>(config_.max_position_embeddings, Hd);
        auto rows = x.middleRows(b * S + Q, T);
        ops::embedding<float>(input_ids.data<std::int64_t>() + b * T, std::size_t(T), word, rows);
        rows += pos.topRows(T);
      }
    }
    layer_norm_rows(x, w_.emb_ln_w, w_.emb_ln_b, eps, x);
  }
  if (output_hidden_states) out.hidden_states.push_back(to_tensor(x, {B, S, Hd}));

  // Additive self-attention key mask per row: 0 for the queries, (1 - mask) * -10000 for the text.
  std::vector<float> key_mask(std::size_t(M), 0.0f);
  if (attention_mask.defined())
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t t = 0; t < T; ++t) {
        const float m = attention_mask.dtype() == DType::I64 ? float(attention_mask.data<std::int64_t>()[b * T + t])
                                                             : attention_mask.data<float>()[b * T + t];
        key_mask[std::size_t(b * S + Q + t)] = (1.0f - m) * -10000.0f;
      }

  // Scratch for the whole call, reused by every layer.
  MatrixF q(M, Hd), k(M, Hd), v(M, Hd), ctx(M, Hd), a(M, Hd);
  MatrixF aq(B * Q, Hd), fq(B * Q, I), oq(B * Q, Hd);
  MatrixF at(B * T, Hd), ft(B * T, I), ot(B * T, Hd);
  MatrixF qc, kc, vc, ctxq, tq;
  if (need_image) {
    qc.resize(B * Q, Hd);
    kc.resize(B * N, Hd);
    vc.resize(B * N, Hd);
    ctxq.resize(B * Q, Hd);
    tq.resize(B * Q, Hd);
  }
  const auto image = need_image ? encoder_hidden_states.matrix<float>(B * N, E)
                                : ConstMatrixMap<float>(nullptr, 0, E);

  auto ffn = [&](const Ffn& f, const MatrixF& in, MatrixF& mid, MatrixF& o) {
    f.in(in, mid, act_);
    f.out(mid, o);
    o += in;
    layer_norm_rows(o, f.ln_w, f.ln_b, eps, o);
  };

  for (const Layer& l : w_.layers) {
    // ---- self-attention over [queries; instruction]
    const Attention& sa = l.self_attn;
    sa.query(x, q);
    sa.key(x, k);
    sa.value(x, v);
    float* probs = nullptr;
    if (output_attentions) {
      out.attentions.push_back(Tensor::empty({B, heads, S, S}));
      probs = out.attentions.back().data<float>();
    }
    parallel_for(0, B * heads, 1, [&](std::int64_t t0, std::int64_t t1) {
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t b = t / heads, h = t % heads;
        ops::AttentionOptions<float> o;
        o.num_heads = 1;
        o.head_dim = hd;
        o.scale = scale;
        o.key_mask = key_mask.data() + b * S;
        o.probs = probs ? probs + t * S * S : nullptr;
        ops::attention<float>(q.block(b * S, h * hd, S, hd), k.block(b * S, h * hd, S, hd),
                              v.block(b * S, h * hd, S, hd), o, ctx.block(b * S, h * hd, S, hd));
      }
    });
    sa.out(ctx, a);
    a += x;
    layer_norm_rows(a, sa.ln_w, sa.ln_b, eps, a);

    // ---- query rows: cross-attention to the image (on cross layers), then the query FFN
    if (Q > 0) {
      for (std::int64_t b = 0; b < B; ++b) aq.middleRows(b * Q, Q) = a.middleRows(b * S, Q);
      if (l.has_cross) {
        const Attention& ca = l.cross_attn;
        ca.query(aq, qc);
        ca.key(image, kc);
        ca.value(image, vc);
        float* cprobs = nullptr;
        if (output_attentions) {
          out.cross_attentions.push_back(Tensor::empty({B, heads, Q, N}));
          cprobs = out.cross_attentions.back().data<float>();
        }
        parallel_for(0, B * heads, 1, [&](std::int64_t t0, std::int64_t t1) {
          for (std::int64_t t = t0; t < t1; ++t) {
            const std::int64_t b = t / heads, h = t % heads;
            ops::AttentionOptions<float> o;
            o.num_heads = 1;
            o.head_dim = hd;
            o.scale = scale;  // the image attention mask is all ones: additive 0
            o.probs = cprobs ? cprobs + t * Q * N : nullptr;
            ops::attention<float>(qc.block(b * Q, h * hd, Q, hd), kc.block(b * N, h * hd, N, hd),
                                  vc.block(b * N, h * hd, N, hd), o, ctxq.block(b * Q, h * hd, Q, hd));
          }
        });
        ca.out(ctxq, tq);
        tq += aq;
        layer_norm_rows(tq, ca.ln_w, ca.ln_b, eps, aq);
      }
      ffn(l.ffn_query, aq, fq, oq);
      for (std::int64_t b = 0; b < B; ++b) x.middleRows(b * S, Q) = oq.middleRows(b * Q, Q);
    }
    // ---- instruction rows: the text FFN
    if (T > 0) {
      for (std::int64_t b = 0; b < B; ++b) at.middleRows(b * T, T) = a.middleRows(b * S + Q, T);
      ffn(l.ffn_text, at, ft, ot);
      for (std::int64_t b = 0; b < B; ++b) x.middleRows(b * S + Q, T) = ot.middleRows(b * T, T);
    }
    if (output_hidden_states) out.hidden_states.push_back(to_tensor(x, {B, S, Hd}));
  }

  out.last_hidden_state = to_tensor(x, {B, S, Hd});
  return out;
}

// ---------------------------------------------------------------------------------------------
// QueryProjector

namespace {
struct ProjectorSlots {
  Tensor* query_tokens;
  Tensor* weight;
  Tensor* bias;
};
template <typename Fn>
void visit_projector(const InstructBlipConfig& c, const std::string& p, const ProjectorSlots& s, Fn&& fn) {
  const std::int64_t Hq = c.qformer_config.hidden_size, Dt = c.text_hidden_size();
  fn(p + "query_tokens", Shape{1, c.num_query_tokens, Hq}, s.query_tokens);
  fn(p + "language_projection.weight", Shape{Dt, Hq}, s.weight);
  fn(p + "language_projection.bias", Shape{Dt}, s.bias);
}
}  // namespace

std::vector<std::pair<std::string, Shape>> QueryProjector::tensor_specs(const InstructBlipConfig& config,
                                                                        const std::string& prefix) {
  std::vector<std::pair<std::string, Shape>> specs;
  visit_projector(config, prefix, ProjectorSlots{nullptr, nullptr, nullptr},
                  [&](const std::string& name, const Shape& shape, Tensor*) { specs.emplace_back(name, shape); });
  return specs;
}

std::vector<std::pair<std::string, Tensor>> QueryProjector::named_weights(const std::string& prefix) const {
  return {{prefix + "query_tokens", query_tokens_},
          {prefix + "language_projection.weight", proj_w_},
          {prefix + "language_projection.bias", proj_b_}};
}

QueryProjector::QueryProjector(const InstructBlipConfig& config, const io::Checkpoint& checkpoint,
                               const std::string& prefix)
    : QueryProjector(config, WeightSource::from_checkpoint(checkpoint), prefix) {}

QueryProjector::QueryProjector(const InstructBlipConfig& config, const WeightSource& source,
                               const std::string& prefix)
    : num_query_tokens_(config.num_query_tokens),
      qformer_hidden_(config.qformer_config.hidden_size),
      text_hidden_(config.text_hidden_size()) {
  if (num_query_tokens_ < 1 || qformer_hidden_ < 1 || text_hidden_ < 1)
    throw ConfigError("config.json: num_query_tokens, qformer_config.hidden_size and the text hidden size must be "
                      "positive");
  visit_projector(config, prefix, ProjectorSlots{&query_tokens_, &proj_w_, &proj_b_},
                  [&](const std::string& name, const Shape& shape, Tensor* slot) {
                    *slot = source.f32(name, shape);
                  });
}

Tensor QueryProjector::project(const Tensor& h) const {
  if (!h.defined() || h.dtype() != DType::F32 || h.ndim() != 3 || h.dim(2) != qformer_hidden_ ||
      h.dim(1) < num_query_tokens_ || h.dim(0) < 1)
    throw InvalidArgument("QueryProjector: expected a float32 Q-Former output [B, >= " +
                          std::to_string(num_query_tokens_) + ", " + std::to_string(qformer_hidden_) + "], got " +
                          describe(h));
  const std::int64_t B = h.dim(0), S = h.dim(1), Q = num_query_tokens_;
  Tensor out = Tensor::empty({B, Q, text_hidden_});
  const auto hm = h.matrix<float>(B * S, qformer_hidden_);
  auto om = out.matrix<float>(B * Q, text_hidden_);
  const auto W = proj_w_.matrix<float>(text_hidden_, qformer_hidden_);
  if (S == Q) {
    ops::linear<float>(hm, W, proj_b_.data<float>(), om);
  } else {
    for (std::int64_t b = 0; b < B; ++b)
      ops::linear<float>(hm.middleRows(b * S, Q), W, proj_b_.data<float>(), om.middleRows(b * Q, Q));
  }
  return out;
}

}  // namespace instructblip::models

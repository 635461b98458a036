// Flan-T5 encoder-decoder (transformers 4.36.2 modeling_t5.py semantics), float32 on CPU.
#include "instructblip/models/t5.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "instructblip/core/thread_pool.hpp"
#include "instructblip/layers/loss.hpp"
#include "instructblip/ops/ops.hpp"
#include "../internal/util.hpp"

namespace instructblip::models {

using t5_detail::EncoderRow;

namespace {

ConstMatrixMap<float> W(const Tensor& t) { return t.matrix<float>(); }

using instructblip::detail::describe;
using instructblip::detail::to_tensor;

// HF's extended / inverted attention mask: (1.0 - mask) * torch.finfo(float32).min, in float32.
std::vector<float> additive_mask(const Tensor& mask) {
  std::vector<float> out(std::size_t(mask.numel()));
  const std::int64_t* m = mask.data<std::int64_t>();
  for (std::size_t i = 0; i < out.size(); ++i)
    out[i] = (1.0f - float(m[i])) * std::numeric_limits<float>::lowest();
  return out;
}

}  // namespace

// ---- T5State -------------------------------------------------------------------------------

Tensor T5State::encoder_last_hidden_state() const {
  if (enc_.empty()) return Tensor();
  const std::int64_t B = batch(), L = encoder_length(), D = enc_.front()->hidden.cols();
  Tensor t = Tensor::empty({B, L, D}, DType::F32);
  float* p = t.data<float>();
  for (std::int64_t b = 0; b < B; ++b) {
    const MatrixF& h = enc_[std::size_t(b)]->hidden;
    std::copy(h.data(), h.data() + h.size(), p + b * L * D);
  }
  return t;
}

Tensor T5State::encoder_attention_mask() const {
  if (enc_.empty()) return Tensor();
  const std::int64_t B = batch(), L = encoder_length();
  Tensor t = Tensor::empty({B, L}, DType::I64);
  std::int64_t* p = t.data<std::int64_t>();
  for (std::int64_t b = 0; b < B; ++b) {
    const auto& m = enc_[std::size_t(b)]->mask;
    std::copy(m.begin(), m.end(), p + b * L);
  }
  return t;
}

// ---- construction --------------------------------------------------------------------------

T5Model::T5Model(const T5Config& config, const io::Checkpoint& checkpoint, const std::string& prefix,
                 const WeightPolicy& policy)
    : T5Model(config, WeightSource::from_checkpoint(checkpoint), prefix, policy) {}

T5Model::T5Model(const T5Config& config, const WeightSource& source, const std::string& prefix,
                 const WeightPolicy& policy)
    : config_(config), policy_(policy) {
  load(source, prefix);
}

T5Model::T5Model(const T5Config& config, const WeightFn& weights, const WeightPolicy& policy)
    : config_(config), policy_(policy) {
  load(WeightSource([](const std::string&) { return Tensor(); }, weights, "the weight function"), "");
}

std::vector<std::pair<std::string, Shape>> T5Model::tensor_specs(const T5Config& config, const std::string& prefix) {
  std::vector<std::pair<std::string, Shape>> specs;
  T5Model probe;
  probe.config_ = config;
  probe.check_config();
  probe.visit(WeightVisitor::lister(specs), prefix);
  return specs;
}

std::vector<std::pair<std::string, Tensor>> T5Model::named_weights(const std::string& prefix) const {
  std::vector<std::pair<std::string, Tensor>> out;
  // The saver only reads the slots.
  const_cast<T5Model*>(this)->visit(WeightVisitor::saver(out), prefix);
  return out;
}

std::vector<std::pair<std::string, std::string>> T5Model::tied_aliases(const std::string& prefix) const {
  std::vector<std::pair<std::string, std::string>> out;
  const_cast<T5Model*>(this)->visit(WeightVisitor::alias_lister(out), prefix);  // touches no slot
  return out;
}

void T5Model::load(const WeightSource& source, const std::string& prefix) {
  check_config();
  visit(WeightVisitor::recording(WeightVisitor::loader(source, policy_), bound_), prefix);
  if (config_.tie_word_embeddings) {
    // Tied: lm_head is shared.weight (scaled inputs, see lm_logits), kept in the head's format.
    lm_head_.w = ops::WeightMatrix(shared_, policy_.format_for(MatrixRole::OutputHead));
    lm_head_.compute = policy_.compute_for(MatrixRole::OutputHead);
  }
}

void T5Model::check_config() {
  config_.validate("T5Config");
  // Degenerate bucket settings make HF's bucket formula divide by zero (log(1) / log(1)).
  if (config_.relative_attention_num_buckets < 4)
    throw ConfigError("T5Config: relative_attention_num_buckets must be >= 4, got " +
                      std::to_string(config_.relative_attention_num_buckets));
  if (config_.relative_attention_max_distance <= config_.relative_attention_num_buckets / 2)
    throw ConfigError("T5Config: relative_attention_max_distance (" +
                      std::to_string(config_.relative_attention_max_distance) +
                      ") must exceed relative_attention_num_buckets / 2");
  act_ = ops::parse_activation(config_.dense_act_fn);
}

void T5Model::visit(const WeightVisitor& v, const std::string& prefix) {
  const std::int64_t V = config_.vocab_size, D = config_.d_model;
  v.tensor(prefix + "shared.weight", {V, D}, shared_);
  // embed_tokens (and lm_head when tied) alias shared.weight; checkpoints may hold them, the model
  // never binds them.
  v.tied(prefix + "encoder.embed_tokens.weight", prefix + "shared.weight");
  v.tied(prefix + "decoder.embed_tokens.weight", prefix + "shared.weight");
  if (config_.tie_word_embeddings)
    v.tied(prefix + "lm_head.weight", prefix + "shared.weight");
  else
    v.linear(prefix + "lm_head", V, D, false, lm_head_, MatrixRole::OutputHead);
  visit_stack(v, prefix, "encoder", config_.num_layers, false, encoder_);
  visit_stack(v, prefix, "decoder", config_.num_decoder_layers, true, decoder_);
}

void T5Model::visit_stack(const WeightVisitor& v, const std::string& prefix, const std::string& name,
                          std::int64_t layers, bool decoder, Stack& stack) {
  const std::int64_t D = config_.d_model, I = config_.inner_dim(), F = config_.d_ff;
  auto tensor = [&](const std::string& n, const Shape& s, Tensor& slot) { v.tensor(prefix + n, s, slot); };
  auto linear = [&](const std::string& n, std::int64_t N, std::int64_t K, Linear& l, MatrixRole role) {
    v.linear(prefix + n, N, K, false, l, role);
  };
  auto attention = [&](const std::string& p, Attention& a) {
    linear(p + ".q", I, D, a.q, MatrixRole::Text);
    linear(p + ".k", I, D, a.k, MatrixRole::Text);
    linear(p + ".v", I, D, a.v, MatrixRole::Text);
    linear(p + ".o", D, I, a.o, MatrixRole::Text);
  };
  stack.blocks.resize(std::size_t(layers));
  for (std::int64_t i = 0; i < layers; ++i) {
    Block& blk = stack.blocks[std::size_t(i)];
    const std::string p = name + ".block." + std::to_string(i) + ".layer.";
    tensor(p + "0.layer_norm.weight", {D}, blk.self_norm);
    attention(p + "0.SelfAttention", blk.self_attn);
    if (i == 0)
      tensor(p + "0.SelfAttention.relative_attention_bias.weight",
             {config_.relative_attention_num_buckets, config_.num_heads}, stack.relative_attention_bias);
    std::string ffp = p + "1.";
    if (decoder) {
      tensor(p + "1.layer_norm.weight", {D}, blk.cross_norm);
      attention(p + "1.EncDecAttention", blk.cross_attn);
      ffp = p + "2.";
    }
    tensor(ffp + "layer_norm.weight", {D}, blk.ff_norm);
    if (config_.is_gated_act) {
      linear(ffp + "DenseReluDense.wi_0", F, D, blk.ff.wi_0, MatrixRole::Text);
      linear(ffp + "DenseReluDense.wi_1", F, D, blk.ff.wi_1, MatrixRole::Text);
    } else {
      linear(ffp + "DenseReluDense.wi", F, D, blk.ff.wi, MatrixRole::Text);
    }
    linear(ffp + "DenseReluDense.wo", D, F, blk.ff.wo, MatrixRole::T5FfnOut);
  }
  tensor(name + ".final_layer_norm.weight", {D}, stack.final_norm);
}

std::size_t T5Model::decoder_step_weight_bytes() const {
  std::size_t n = 0;
  for (const Block& b : decoder_.blocks) {
    for (const Linear* l : {&b.self_attn.q, &b.self_attn.k, &b.self_attn.v, &b.self_attn.o, &b.cross_attn.q,
                            &b.cross_attn.o, &b.ff.wi, &b.ff.wi_0, &b.ff.wi_1, &b.ff.wo})
      if (l->w.defined()) n += l->w.bytes();
    for (const Tensor* t : {&b.self_norm, &b.cross_norm, &b.ff_norm})
      if (t->defined()) n += std::size_t(t->numel()) * sizeof(float);
  }
  n += std::size_t(decoder_.final_norm.numel()) * sizeof(float);
  if (decoder_.relative_attention_bias.defined())
    n += std::size_t(decoder_.relative_attention_bias.numel()) * sizeof(float);
  n += lm_head_.w.bytes();
  n += std::size_t(config_.d_model) * sizeof(float);  // the embedding row of the fed token
  return n;
}

// ---- pieces --------------------------------------------------------------------------------

std::int64_t T5Model::relative_position_bucket(std::int64_t relative_position, bool bidirectional,
                                               std::int64_t num_buckets, std::int64_t max_distance) {
  std::int64_t bucket = 0;
  std::int64_t n = num_buckets;
  std::int64_t rp = relative_position;
  if (bidirectional) {
    n /= 2;
    if (rp > 0) bucket += n;
    rp = rp < 0 ? -rp : rp;
  } else {
    rp = -std::min<std::int64_t>(rp, 0);
  }
  const std::int64_t max_exact = n / 2;
  if (rp < max_exact) return bucket + rp;
  // torch: max_exact + (log(rp.float() / max_exact) / math.log(max_distance / max_exact)
  //                     * (num_buckets - max_exact)).to(long), every tensor op in float32 (the
  // Python-double scalars are rounded to float32 by the op), then min(..., num_buckets - 1).
  const float ratio = float(rp) / float(max_exact);
  const float denom = float(std::log(double(max_distance) / double(max_exact)));
  const float scaled = std::log(ratio) / denom * float(n - max_exact);
  std::int64_t large;
  if (!(scaled < float(n)))  // also catches NaN / inf of degenerate settings
    large = n - 1;
  else
    large = std::min<std::int64_t>(max_exact + std::int64_t(scaled), n - 1);  // truncation toward zero
  return bucket + large;
}

void T5Model::biased_self_attention(const Stack& stack, bool bidirectional, bool causal, std::int64_t query_offset,
                                    std::int64_t B, std::int64_t Lq, std::int64_t Lk, std::int64_t row0,
                                    const MatrixF& q, const KeyRows& keys, const KeyRows& values,
                                    const float* key_masks, MatrixF& out) const {
  const std::int64_t H = config_.num_heads, Dk = config_.d_kv, nb = config_.relative_attention_num_buckets;
  const float* table = stack.relative_attention_bias.data<float>();  // [nb, H]
  // relative position j - (query_offset + i) ranges over [min_rel, Lk - 1 - query_offset]
  const std::int64_t min_rel = -(query_offset + Lq - 1);
  const std::int64_t max_rel = Lk - 1 - query_offset;
  std::vector<std::int64_t> bucket_of(std::size_t(max_rel - min_rel + 1));
  for (std::int64_t r = min_rel; r <= max_rel; ++r) {
    std::int64_t b = relative_position_bucket(r, bidirectional, nb, config_.relative_attention_max_distance);
    if (b < 0 || b >= nb) throw InvalidArgument("T5: relative position bucket out of range");
    bucket_of[std::size_t(r - min_rel)] = b;
  }
  // One task per (row, chunk of queries, head); each builds the [n, Lk] bias of its head.
  constexpr std::int64_t kQueryChunk = 256;
  const std::int64_t chunk = std::min(Lq, kQueryChunk);
  const std::int64_t nchunks = (Lq + chunk - 1) / chunk;
  parallel_for(0, B * nchunks * H, 1, [&](std::int64_t t0, std::int64_t t1) {
    std::vector<float> pb;
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t h = t % H, c = (t / H) % nchunks, b = t / (H * nchunks);
      const std::int64_t i0 = c * chunk, n = std::min(chunk, Lq - i0);
      pb.resize(std::size_t(n * Lk));
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t off = -(query_offset + i0 + i) - min_rel;  // bucket_of[j + off]: key j
        float* row = pb.data() + i * Lk;
        for (std::int64_t j = 0; j < Lk; ++j) row[j] = table[bucket_of[std::size_t(j + off)] * H + h];
      }
      ops::AttentionOptions<float> opt;
      opt.num_heads = 1;
      opt.head_dim = int(Dk);
      opt.scale = 1.0f;  // T5 does not scale the scores
      opt.causal = causal;
      opt.query_offset = query_offset + i0;
      opt.key_mask = key_masks ? key_masks + b * Lk : nullptr;
      opt.position_bias = pb.data();
      const ops::In<float> K = keys(b), V = values(b);
      auto ob = out.block(row0 + b * Lq + i0, h * Dk, n, Dk);
      ops::attention<float>(q.block(row0 + b * Lq + i0, h * Dk, n, Dk), K.middleCols(h * Dk, Dk), V.middleCols(h * Dk, Dk),
                            opt, ob);
    }
  });
}

void T5Model::rms_norm(const MatrixF& x, const Tensor& weight, MatrixF& y) const {
  ops::rms_norm<float>(x, weight.data<float>(), float(config_.layer_norm_epsilon), y);
}

void T5Model::feed_forward(const FeedForward& ff, const Tensor& norm, MatrixF& x) const {
  const Eigen::Index rows = x.rows();
  MatrixF n(rows, x.cols());
  rms_norm(x, norm, n);
  MatrixF h(rows, config_.d_ff);
  if (config_.is_gated_act) {
    ff.wi_0(n, h, act_);
    MatrixF g(rows, config_.d_ff);
    ff.wi_1(n, g);
    h.array() *= g.array();
  } else {
    ff.wi(n, h, act_);
  }
  // `wo` is kept in higher precision than the other matrices (WeightPolicy): f32 / bf16.
  MatrixF o(rows, x.cols());
  ff.wo(h, o);
  x += o;
}

void T5Model::lm_logits(const MatrixF& h, float* out) const {
  MatrixMap<float> y(out, h.rows(), config_.vocab_size);
  if (config_.tie_word_embeddings) {
    // sequence_output * (model_dim ** -0.5): a Python double applied as a float32 scalar.
    const float scale = float(std::pow(double(config_.d_model), -0.5));
    MatrixF hs = h * scale;
    lm_head_(hs, y);
  } else {
    lm_head_(h, y);
  }
}

void T5Model::check_prompt(const Tensor& inputs_embeds, const Tensor& attention_mask, const char* what) const {
  if (!inputs_embeds.defined() || inputs_embeds.dtype() != DType::F32 || inputs_embeds.ndim() != 3 ||
      inputs_embeds.dim(2) != config_.d_model || inputs_embeds.dim(0) < 1 || inputs_embeds.dim(1) < 1)
    throw InvalidArgument(std::string("T5 ") + what + ": inputs_embeds must be F32 [B>=1, L>=1, " +
                          std::to_string(config_.d_model) + "], got " + describe(inputs_embeds));
  if (!attention_mask.defined() || attention_mask.dtype() != DType::I64 ||
      attention_mask.shape() != Shape{inputs_embeds.dim(0), inputs_embeds.dim(1)})
    throw InvalidArgument(std::string("T5 ") + what + ": attention_mask must be I64 " +
                          shape_str({inputs_embeds.dim(0), inputs_embeds.dim(1)}) + ", got " +
                          describe(attention_mask));
}

// ---- stacks --------------------------------------------------------------------------------

void T5Model::run_encoder(MatrixF& x, std::int64_t B, std::int64_t L, const std::vector<float>& key_masks,
                          std::vector<MatrixF>* hidden) const {
  const std::int64_t D = config_.d_model, I = config_.inner_dim();
  MatrixF n(B * L, D), q(B * L, I), k(B * L, I), v(B * L, I), a(B * L, I), o(B * L, D);
  const KeyRows keys = [&](std::int64_t b) { return ops::In<float>(k.middleRows(b * L, L)); };
  const KeyRows values = [&](std::int64_t b) { return ops::In<float>(v.middleRows(b * L, L)); };
  for (const Block& blk : encoder_.blocks) {
    if (hidden) hidden->push_back(x);
    rms_norm(x, blk.self_norm, n);
    blk.self_attn.q(n, q);
    blk.self_attn.k(n, k);
    blk.self_attn.v(n, v);
    biased_self_attention(encoder_, /*bidirectional=*/true, /*causal=*/false, 0, B, L, L, 0, q, keys, values,
                          key_masks.data(), a);
    blk.self_attn.o(a, o);
    x += o;
    feed_forward(blk.ff, blk.ff_norm, x);
  }
  rms_norm(x, encoder_.final_norm, x);
  if (hidden) hidden->push_back(x);
}

std::unique_ptr<T5State> T5Model::make_state(const MatrixF& enc, std::int64_t B, std::int64_t L,
                                             std::vector<float> key_masks, const Tensor& attention_mask,
                                             std::int64_t capacity) const {
  const std::int64_t I = config_.inner_dim();
  const std::size_t nl = decoder_.blocks.size();
  std::vector<std::shared_ptr<EncoderRow>> rows(static_cast<std::size_t>(B));
  const std::int64_t* m = attention_mask.data<std::int64_t>();
  for (std::int64_t b = 0; b < B; ++b) {
    auto r = std::make_shared<EncoderRow>();
    r->length = L;
    r->mask.assign(m + b * L, m + (b + 1) * L);
    r->key_mask.assign(key_masks.begin() + b * L, key_masks.begin() + (b + 1) * L);
    r->hidden = enc.middleRows(b * L, L);
    r->cross_k.resize(nl);
    r->cross_v.resize(nl);
    rows[std::size_t(b)] = std::move(r);
  }
  // Cross-attention K/V are computed once, for all rows at a time, per decoder block.
  MatrixF kb(B * L, I), vb(B * L, I);
  for (std::size_t l = 0; l < nl; ++l) {
    decoder_.blocks[l].cross_attn.k(enc, kb);
    decoder_.blocks[l].cross_attn.v(enc, vb);
    for (std::int64_t b = 0; b < B; ++b) {
      rows[std::size_t(b)]->cross_k[l] = kb.middleRows(b * L, L);
      rows[std::size_t(b)]->cross_v[l] = vb.middleRows(b * L, L);
    }
  }
  auto st = std::make_unique<T5State>();
  st->enc_.assign(rows.begin(), rows.end());
  st->cache_ = layers::KVCache(std::int64_t(nl), B, I, capacity);
  return st;
}

void T5Model::run_decoder(const std::vector<T5State*>& states, MatrixF& x, std::int64_t T,
                          std::vector<MatrixF>* hidden) const {
  const std::int64_t D = config_.d_model, I = config_.inner_dim();
  const int H = int(config_.num_heads), Dk = int(config_.d_kv);
  // Row r0[s] of x is state s's first row; (state, row) of every cross-attention task.
  std::vector<std::int64_t> r0(states.size() + 1, 0);
  std::vector<std::pair<std::size_t, std::int64_t>> rows;
  for (std::size_t s = 0; s < states.size(); ++s) {
    const std::int64_t B = states[s]->batch();
    r0[s + 1] = r0[s] + B * T;
    for (std::int64_t b = 0; b < B; ++b) rows.emplace_back(s, b);
    states[s]->cache_.reserve(states[s]->cache_.length() + T);
  }
  const std::int64_t R = r0.back();
  if (x.rows() != R) throw InvalidArgument("T5 decoder: input rows do not match batch x tokens");
  MatrixF n(R, D), q(R, I), k(R, I), v(R, I), a(R, I), o(R, D);
  for (std::size_t l = 0; l < decoder_.blocks.size(); ++l) {
    const Block& blk = decoder_.blocks[l];
    if (hidden) hidden->push_back(x);
    // causal self-attention over each state's cache
    rms_norm(x, blk.self_norm, n);
    blk.self_attn.q(n, q);
    blk.self_attn.k(n, k);
    blk.self_attn.v(n, v);
    const std::int64_t li = std::int64_t(l);
    for (std::size_t s = 0; s < states.size(); ++s) {
      T5State& st = *states[s];
      const std::int64_t B = st.batch(), P = st.cache_.length(), Lk = P + T;
      for (std::int64_t b = 0; b < B; ++b)
        st.cache_.write(li, b, k.data() + (r0[s] + b * T) * I, v.data() + (r0[s] + b * T) * I, T);
      biased_self_attention(
          decoder_, /*bidirectional=*/false, /*causal=*/true, P, B, T, Lk, r0[s], q,
          [&](std::int64_t b) { return ops::In<float>(st.cache_.keys(li, b).topRows(Lk)); },
          [&](std::int64_t b) { return ops::In<float>(st.cache_.values(li, b).topRows(Lk)); }, nullptr, a);
    }
    blk.self_attn.o(a, o);
    x += o;
    // cross-attention to the encoder output (no position bias; padding mask only)
    rms_norm(x, blk.cross_norm, n);
    blk.cross_attn.q(n, q);
    parallel_for(0, std::int64_t(rows.size()), 1, [&](std::int64_t i0, std::int64_t i1) {
      for (std::int64_t i = i0; i < i1; ++i) {
        const auto [s, b] = rows[std::size_t(i)];
        const EncoderRow& e = *states[s]->enc_[std::size_t(b)];
        ops::AttentionOptions<float> opt;
        opt.num_heads = H;
        opt.head_dim = Dk;
        opt.scale = 1.0f;
        opt.key_mask = e.key_mask.data();
        auto ab = a.middleRows(r0[s] + b * T, T);
        ops::attention<float>(q.middleRows(r0[s] + b * T, T), e.cross_k[l], e.cross_v[l], opt, ab);
      }
    });
    blk.cross_attn.o(a, o);
    x += o;
    feed_forward(blk.ff, blk.ff_norm, x);
  }
  rms_norm(x, decoder_.final_norm, x);
  if (hidden) hidden->push_back(x);
  for (T5State* st : states) st->cache_.advance(T);
}

// ---- LanguageModel -------------------------------------------------------------------------

Tensor T5Model::embed(const Tensor& input_ids) const {
  if (!input_ids.defined() || input_ids.dtype() != DType::I64 || input_ids.ndim() < 1)
    throw InvalidArgument("T5 embed: input_ids must be an I64 tensor, got " + describe(input_ids));
  Shape shape = input_ids.shape();
  shape.push_back(config_.d_model);
  Tensor out = Tensor::empty(shape, DType::F32);
  auto y = out.matrix<float>(input_ids.numel(), config_.d_model);
  ops::embedding<float>(input_ids.data<std::int64_t>(), std::size_t(input_ids.numel()), W(shared_), y);
  return out;
}

T5Model::EncoderOutput T5Model::encode(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                       bool output_hidden_states) const {
  check_prompt(inputs_embeds, attention_mask, "encode");
  const std::int64_t B = inputs_embeds.dim(0), L = inputs_embeds.dim(1), D = config_.d_model;
  MatrixF x = inputs_embeds.matrix<float>(B * L, D);
  std::vector<MatrixF> hidden;
  run_encoder(x, B, L, additive_mask(attention_mask), output_hidden_states ? &hidden : nullptr);
  EncoderOutput out;
  out.last_hidden_state = to_tensor(x, {B, L, D});
  for (const MatrixF& h : hidden) out.hidden_states.push_back(to_tensor(h, {B, L, D}));
  return out;
}

Tensor T5Model::shift_right(const Tensor& labels) const {
  if (!labels.defined() || labels.dtype() != DType::I64 || labels.ndim() != 2)
    throw InvalidArgument("T5 shift_right: labels must be I64 [B, T], got " + describe(labels));
  const auto start = config_.decoder_start_id();
  if (!start)
    throw ConfigError("T5Config: decoder_start_token_id (or pad_token_id) must be set to shift labels right");
  if (!config_.pad_token_id) throw ConfigError("T5Config: pad_token_id must be set to shift labels right");
  const std::int64_t B = labels.dim(0), T = labels.dim(1);
  Tensor out = Tensor::empty({B, T}, DType::I64);
  const std::int64_t* src = labels.data<std::int64_t>();
  std::int64_t* dst = out.data<std::int64_t>();
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < T; ++t) {
      std::int64_t id = t == 0 ? *start : src[b * T + t - 1];
      dst[b * T + t] = id == -100 ? *config_.pad_token_id : id;
    }
  return out;
}

LMOutput T5Model::forward(const Tensor& inputs_embeds, const Tensor& attention_mask, const Tensor& decoder_input_ids,
                          const Tensor& labels, bool output_hidden_states) const {
  check_prompt(inputs_embeds, attention_mask, "forward");
  const std::int64_t B = inputs_embeds.dim(0), L = inputs_embeds.dim(1), D = config_.d_model;
  const std::int64_t V = config_.vocab_size;
  if (!decoder_input_ids.defined() && !labels.defined())
    throw InvalidArgument("T5 forward: give decoder_input_ids or labels");
  const Tensor dec_ids = decoder_input_ids.defined() ? decoder_input_ids : shift_right(labels);
  if (dec_ids.dtype() != DType::I64 || dec_ids.ndim() != 2 || dec_ids.dim(0) != B || dec_ids.dim(1) < 1)
    throw InvalidArgument("T5 forward: decoder_input_ids must be I64 [" + std::to_string(B) + ", T>=1], got " +
                          describe(dec_ids));
  const std::int64_t T = dec_ids.dim(1);
  if (labels.defined()) {
    if (labels.dtype() != DType::I64 || labels.shape() != Shape{B, T})
      throw InvalidArgument("T5 forward: labels must be I64 " + shape_str({B, T}) + ", got " + describe(labels));
    const std::int64_t* lab = labels.data<std::int64_t>();
    for (std::int64_t i = 0; i < labels.numel(); ++i)
      if (lab[i] != layers::kIgnoreIndex && (lab[i] < 0 || lab[i] >= V))
        throw InvalidArgument("T5 forward: label " + std::to_string(lab[i]) + " is outside the vocabulary of " +
                              std::to_string(V));
  }

  LMOutput out;
  std::vector<float> key_masks = additive_mask(attention_mask);
  MatrixF enc = inputs_embeds.matrix<float>(B * L, D);
  std::vector<MatrixF> enc_hidden;
  run_encoder(enc, B, L, key_masks, output_hidden_states ? &enc_hidden : nullptr);

  MatrixF x(B * T, D);
  ops::embedding<float>(dec_ids.data<std::int64_t>(), std::size_t(B * T), W(shared_), x);
  auto st = make_state(enc, B, L, std::move(key_masks), attention_mask, T);
  std::vector<MatrixF> dec_hidden;
  run_decoder({st.get()}, x, T, output_hidden_states ? &dec_hidden : nullptr);

  out.logits = Tensor::empty({B, T, V}, DType::F32);
  float* logits = out.logits.data<float>();
  lm_logits(x, logits);

  // CrossEntropyLoss(ignore_index=-100), mean over the non-ignored positions.
  if (labels.defined()) out.loss = layers::cross_entropy(out.logits, labels);
  out.encoder_last_hidden_state = to_tensor(enc, {B, L, D});
  for (const MatrixF& h : dec_hidden) out.hidden_states.push_back(to_tensor(h, {B, T, D}));
  for (const MatrixF& h : enc_hidden) out.encoder_hidden_states.push_back(to_tensor(h, {B, L, D}));
  return out;
}

std::unique_ptr<LMState> T5Model::start(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                        std::int64_t max_new_tokens) const {
  check_prompt(inputs_embeds, attention_mask, "start");
  const std::int64_t B = inputs_embeds.dim(0), L = inputs_embeds.dim(1), D = config_.d_model;
  std::vector<float> key_masks = additive_mask(attention_mask);
  MatrixF enc = inputs_embeds.matrix<float>(B * L, D);
  run_encoder(enc, B, L, key_masks, nullptr);
  // max_new_tokens is only a hint: the self-attention caches grow when more tokens come, so a huge
  // hint does not allocate up front.
  constexpr std::int64_t kMaxInitialCapacity = 1024;
  return make_state(enc, B, L, std::move(key_masks), attention_mask,
                    std::clamp<std::int64_t>(max_new_tokens, 1, kMaxInitialCapacity));
}

Tensor T5Model::step(LMState& state, const std::vector<std::int64_t>& tokens) const {
  return std::move(step_batch({&state}, {tokens}).front());
}

std::vector<Tensor> T5Model::step_batch(const std::vector<LMState*>& states,
                                        const std::vector<std::vector<std::int64_t>>& tokens) const {
  if (tokens.size() != states.size())
    throw InvalidArgument("T5 step: " + std::to_string(tokens.size()) + " token lists for " +
                          std::to_string(states.size()) + " states");
  std::vector<T5State*> sts;
  std::vector<std::int64_t> ids;
  for (std::size_t i = 0; i < states.size(); ++i) {
    auto* st = states[i] ? dynamic_cast<T5State*>(states[i]) : nullptr;
    if (!st) throw InvalidArgument("T5 step: the state was not created by T5Model::start");
    if (std::find(sts.begin(), sts.end(), st) != sts.end()) throw InvalidArgument("T5 step: a state is given twice");
    const std::int64_t B = st->batch();
    if (std::int64_t(tokens[i].size()) != B)
      throw InvalidArgument("T5 step: " + std::to_string(tokens[i].size()) + " tokens for a state of " +
                            std::to_string(B) + " rows");
    sts.push_back(st);
    ids.insert(ids.end(), tokens[i].begin(), tokens[i].end());
  }
  const std::int64_t R = std::int64_t(ids.size());
  MatrixF x(R, config_.d_model);
  ops::embedding<float>(ids.data(), ids.size(), W(shared_), x);
  // Each row's logits are what it alone gives, whatever the other rows (and states) are.
  ops::RowIndependentProducts row_independent;
  run_decoder(sts, x, 1, nullptr);
  MatrixF logits(R, config_.vocab_size);
  lm_logits(x, logits.data());
  std::vector<Tensor> out;
  std::int64_t r = 0;
  for (T5State* st : sts) {
    const std::int64_t B = st->batch();
    Tensor t = Tensor::empty({B, config_.vocab_size}, DType::F32);
    std::memcpy(t.data<float>(), logits.data() + r * config_.vocab_size, std::size_t(B * config_.vocab_size) * 4);
    out.push_back(std::move(t));
    r += B;
  }
  return out;
}

void T5Model::select_rows(LMState& state, const std::vector<std::int64_t>& index) const {
  auto* st = dynamic_cast<T5State*>(&state);
  if (!st) throw InvalidArgument("T5 select_rows: the state was not created by T5Model::start");
  const std::int64_t B = st->batch();
  if (index.empty()) throw InvalidArgument("T5 select_rows: empty index");
  for (std::int64_t i : index)
    if (i < 0 || i >= B)
      throw InvalidArgument("T5 select_rows: row " + std::to_string(i) + " outside [0, " + std::to_string(B) + ")");
  std::vector<std::shared_ptr<const EncoderRow>> enc(index.size());
  // immutable: shared between the rows that come from one prompt row
  for (std::size_t i = 0; i < index.size(); ++i) enc[i] = st->enc_[std::size_t(index[i])];
  st->cache_.select_rows(index);
  st->enc_ = std::move(enc);
}

}  // namespace instructblip::models

// LLaMA / Vicuna (transformers 4.36.2 LlamaForCausalLM, eager attention, float32).
#include "instructblip/models/llama.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <utility>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "instructblip/core/thread_pool.hpp"
#include "instructblip/layers/kv_cache.hpp"
#include "instructblip/layers/loss.hpp"
#include "instructblip/ops/ops.hpp"

namespace instructblip::models {

namespace {

/// torch.finfo(torch.float32).min: what HF's 4-d causal / padding mask holds at masked entries.
constexpr float kMaskMin = std::numeric_limits<float>::lowest();

using RowVectorF = Eigen::Matrix<float, 1, Eigen::Dynamic>;

inline void bf16_to_f32_run(const std::uint16_t* src, float* dst, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint32_t u = std::uint32_t(src[i]) << 16;
    std::memcpy(dst + i, &u, 4);
  }
}

/// y[M, N] = x[M, K] W^T (+ b) through the layer's WeightMatrix.
void dense(const Linear& d, const float* x, std::int64_t M, float* y) {
  d(ConstMatrixMap<float>(x, M, d.in_features()), MatrixMap<float>(y, M, d.out_features()));
}

struct Layer {
  Tensor input_norm, post_norm;  // float32 [H]
  Linear q, k, v, o, gate, up, down;
};

void check_mask(const Tensor& mask, std::int64_t B, std::int64_t L, const char* what) {
  if (mask.dtype() != DType::I64 || mask.ndim() != 2 || mask.dim(0) != B || mask.dim(1) != L)
    throw InvalidArgument(std::string(what) + ": attention_mask must be int64 [" + std::to_string(B) + ", " +
                          std::to_string(L) + "], got " + dtype_name(mask.dtype()) + " " + shape_str(mask.shape()));
  const std::int64_t* m = mask.data<std::int64_t>();
  for (std::int64_t i = 0; i < B * L; ++i)
    if (m[i] != 0 && m[i] != 1)
      throw InvalidArgument(std::string(what) + ": attention_mask holds " + std::to_string(m[i]) +
                            "; only 0 and 1 are accepted");
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct LlamaModel::Impl {
  LlamaConfig cfg;
  LlamaOptions opt;
  std::int64_t H = 0, V = 0, I = 0, nh = 0, nkv = 0, hd = 0, kvdim = 0;
  float eps = 1e-6f;
  float theta = 10000.0f;
  ops::Activation act = ops::Activation::Silu;
  Tensor embed;    // [V, H] F32 (f32 weights) or BF16
  Linear lm_head;  // built from embed when tied
  Tensor norm;    // [H] F32
  std::vector<Layer> layers;
  std::vector<std::string> bound;  // names looked up at load, in order

  void load(const WeightSource& src, const std::string& prefix);
  /// Validates cfg and derives the sizes from it (ConfigError for what this implementation lacks).
  void configure();
  /// The tensor table: every weight (HF name with `prefix`, shape, slot, role) in binding order,
  /// and the tied lm_head alias.
  void visit(const WeightVisitor& v, const std::string& prefix);
  void embed_rows(const std::int64_t* ids, std::int64_t n, float* out) const;
  /// Runs the decoder layers on T new positions of each of the B rows held in `h` ([B*T, H], in
  /// place). Keys/values are appended to `cache` (positions [past, past + T), past =
  /// cache.length()); row b attends to cached positions j <= past + i whose key_valid[b][j] is set
  /// (else finfo.min is added). When `hidden` is given, the input of every layer is appended to it
  /// ([B, T, H] each).
  void run_layers(float* h, std::int64_t B, std::int64_t T, const std::int64_t* positions,
                  const std::vector<std::vector<std::uint8_t>>& key_valid, layers::KVCache& cache,
                  std::vector<Tensor>* hidden) const {
    run_layers(h, {Segment{B, &key_valid, &cache}}, T, positions, hidden);
  }
  /// Rows of one state in a batched call: B rows, their key validity and cache.
  struct Segment {
    std::int64_t B;
    const std::vector<std::vector<std::uint8_t>>* key_valid;
    layers::KVCache* cache;
  };
  /// The same for several states whose rows follow one another in `h` (T positions each): the
  /// projections run once over all rows, attention per state against its own cache.
  void run_layers(float* h, const std::vector<Segment>& segments, std::int64_t T, const std::int64_t* positions,
                  std::vector<Tensor>* hidden) const;
  void final_norm(const float* h, std::int64_t rows, float* out) const {
    ops::rms_norm<float>(ConstMatrixMap<float>(h, rows, H), norm.data<float>(), eps, MatrixMap<float>(out, rows, H));
  }
};

struct LlamaState::Data {
  const LlamaModel::Impl* model = nullptr;
  std::int64_t B = 0;
  bool prefilled = false;
  // Before the prefill: the prompt.
  std::int64_t L = 0;
  std::vector<float> prompt;             // [B, L, H]
  std::vector<std::uint8_t> prompt_mask; // [B, L]
  std::int64_t max_new = 0;
  // After the prefill.
  layers::KVCache cache;
  std::vector<std::vector<std::uint8_t>> mask;  // [B][cache.length()]
  std::vector<std::int64_t> attended;           // [B] number of mask-1 positions so far
};

LlamaState::LlamaState() : d_(std::make_unique<Data>()) {}
LlamaState::~LlamaState() = default;
std::int64_t LlamaState::batch() const { return d_->B; }
bool LlamaState::prefilled() const { return d_->prefilled; }
std::int64_t LlamaState::cached_positions() const { return d_->prefilled ? d_->cache.length() : 0; }
Tensor LlamaState::attention_mask() const {
  const std::int64_t B = d_->B;
  const std::int64_t L = d_->prefilled ? d_->cache.length() : d_->L;
  Tensor t = Tensor::empty({B, L}, DType::I64);
  std::int64_t* p = t.data<std::int64_t>();
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t j = 0; j < L; ++j)
      p[b * L + j] = d_->prefilled ? d_->mask[std::size_t(b)][std::size_t(j)] : d_->prompt_mask[std::size_t(b * L + j)];
  return t;
}

// ---------------------------------------------------------------------------------------------
// Loading

void LlamaModel::Impl::load(const WeightSource& src, const std::string& prefix) {
  configure();
  const WeightPolicy& policy = opt.weights;
  visit(WeightVisitor::recording(WeightVisitor::loader(src, policy), bound), prefix);
  if (policy.format != ops::WeightFormat::F32) embed = embed.to(DType::BF16);  // exact for bf16 checkpoints
  if (cfg.tie_word_embeddings) {
    lm_head.w = ops::WeightMatrix(embed, policy.format_for(MatrixRole::OutputHead));
    lm_head.compute = policy.compute_for(MatrixRole::OutputHead);
  }
}

void LlamaModel::Impl::configure() {
  const std::string where = "LlamaConfig";
  cfg.validate(where);
  if (cfg.rope_scaling)
    throw ConfigError(where + ": rope_scaling: {\"type\": \"" + cfg.rope_scaling->type +
                      "\", ...} is not supported by this implementation (only null)");
  H = cfg.hidden_size;
  V = cfg.vocab_size;
  I = cfg.intermediate_size;
  nh = cfg.num_attention_heads;
  nkv = cfg.num_key_value_heads;
  hd = cfg.head_dim();
  kvdim = nkv * hd;
  if (hd % 2 != 0)
    throw ConfigError(where + ": head_dim " + std::to_string(hd) + " (hidden_size / num_attention_heads) must be even for RoPE");
  eps = float(cfg.rms_norm_eps);
  theta = float(cfg.rope_theta);
  try {
    act = ops::parse_activation(cfg.hidden_act);
  } catch (const InvalidArgument& e) {
    throw ConfigError(where + ": hidden_act: " + e.what());
  }
}

void LlamaModel::Impl::visit(const WeightVisitor& v, const std::string& prefix) {
  v.tensor(prefix + "model.embed_tokens.weight", {V, H}, embed);
  v.tensor(prefix + "model.norm.weight", {H}, norm);
  if (cfg.tie_word_embeddings)
    v.tied(prefix + "lm_head.weight", prefix + "model.embed_tokens.weight");
  else
    v.linear(prefix + "lm_head", V, H, false, lm_head, MatrixRole::OutputHead);
  layers.resize(std::size_t(cfg.num_hidden_layers));
  const bool ab = cfg.attention_bias;
  for (std::int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = prefix + "model.layers." + std::to_string(l) + ".";
    Layer& L = layers[std::size_t(l)];
    v.tensor(p + "input_layernorm.weight", {H}, L.input_norm);
    v.tensor(p + "post_attention_layernorm.weight", {H}, L.post_norm);
    v.linear(p + "self_attn.q_proj", nh * hd, H, ab, L.q, MatrixRole::Text);
    v.linear(p + "self_attn.k_proj", kvdim, H, ab, L.k, MatrixRole::Text);
    v.linear(p + "self_attn.v_proj", kvdim, H, ab, L.v, MatrixRole::Text);
    v.linear(p + "self_attn.o_proj", H, nh * hd, ab, L.o, MatrixRole::Text);
    v.linear(p + "mlp.gate_proj", I, H, false, L.gate, MatrixRole::Text);
    v.linear(p + "mlp.up_proj", I, H, false, L.up, MatrixRole::Text);
    v.linear(p + "mlp.down_proj", H, I, false, L.down, MatrixRole::Text);
  }
}

LlamaModel::LlamaModel(const LlamaConfig& config, const io::Checkpoint& checkpoint, const std::string& prefix,
                       const LlamaOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->cfg = config;
  impl->opt = options;
  impl->load(WeightSource::from_checkpoint(checkpoint), prefix);
  impl_ = std::move(impl);
}

LlamaModel::LlamaModel(const LlamaConfig& config, const std::map<std::string, Tensor>& weights,
                       const std::string& prefix, const LlamaOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->cfg = config;
  impl->opt = options;
  impl->load(WeightSource(
                 [&](const std::string& n) {
                   auto it = weights.find(n);
                   return it == weights.end() ? Tensor() : it->second;
                 },
                 "the weight map"),
             prefix);
  impl_ = std::move(impl);
}

LlamaModel::LlamaModel(const LlamaConfig& config, const WeightSource& source, const std::string& prefix,
                       const LlamaOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->cfg = config;
  impl->opt = options;
  impl->load(source, prefix);
  impl_ = std::move(impl);
}

LlamaModel::~LlamaModel() = default;

const LlamaConfig& LlamaModel::config() const { return impl_->cfg; }
const LlamaOptions& LlamaModel::options() const { return impl_->opt; }
const std::vector<std::string>& LlamaModel::bound_tensor_names() const { return impl_->bound; }
std::int64_t LlamaModel::vocab_size() const { return impl_->V; }
std::int64_t LlamaModel::hidden_size() const { return impl_->H; }

std::vector<std::pair<std::string, Tensor>> LlamaModel::named_weights(const std::string& prefix) const {
  std::vector<std::pair<std::string, Tensor>> out;
  const_cast<Impl&>(*impl_).visit(WeightVisitor::saver(out), prefix);  // the saver only reads the slots
  return out;
}

std::vector<std::pair<std::string, Shape>> LlamaModel::tensor_specs(const LlamaConfig& config,
                                                                    const std::string& prefix) {
  Impl probe;
  probe.cfg = config;
  probe.configure();
  std::vector<std::pair<std::string, Shape>> specs;
  probe.visit(WeightVisitor::lister(specs), prefix);
  return specs;
}

std::vector<std::pair<std::string, std::string>> LlamaModel::tied_aliases(const std::string& prefix) const {
  std::vector<std::pair<std::string, std::string>> out;
  const_cast<Impl&>(*impl_).visit(WeightVisitor::alias_lister(out), prefix);  // touches no slot
  return out;
}

std::size_t LlamaModel::lm_head_weight_bytes() const { return impl_->lm_head.w.bytes(); }

std::size_t LlamaModel::decode_weight_bytes() const {
  std::size_t n = impl_->lm_head.w.bytes();
  for (const Layer& L : impl_->layers)
    for (const Linear* d : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) n += d->w.bytes();
  return n;
}

// ---------------------------------------------------------------------------------------------
// Compute

void LlamaModel::Impl::embed_rows(const std::int64_t* ids, std::int64_t n, float* out) const {
  for (std::int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= V)
      throw InvalidArgument("token id " + std::to_string(ids[i]) + " is outside the vocabulary of " + std::to_string(V));
  if (embed.dtype() == DType::F32) {
    ops::embedding<float>(ids, std::size_t(n), ConstMatrixMap<float>(embed.data<float>(), V, H), MatrixMap<float>(out, n, H));
    return;
  }
  const auto* tab = static_cast<const std::uint16_t*>(embed.raw());
  for (std::int64_t i = 0; i < n; ++i) bf16_to_f32_run(tab + ids[i] * H, out + i * H, H);
}

void LlamaModel::Impl::run_layers(float* h, const std::vector<Segment>& segments, std::int64_t T,
                                  const std::int64_t* positions, std::vector<Tensor>* hidden) const {
  std::int64_t R = 0;
  for (const Segment& sg : segments) {
    R += sg.B * T;
    sg.cache->reserve(sg.cache->length() + T);
  }
  const std::int64_t B = R / T;  // rows over all segments
  std::vector<float> xn(std::size_t(R * H)), q(std::size_t(R * nh * hd)), k(std::size_t(R * kvdim)),
      v(std::size_t(R * kvdim)), att(std::size_t(R * nh * hd)), tmp(std::size_t(R * H)), g(std::size_t(R * I)),
      u(std::size_t(R * I));
  MatrixMap<float> hm(h, R, H);

  // Attention runs per (row, chunk of queries): each task builds HF's additive mask for its chunk
  // ([n, Lk]: finfo.min for future or padded keys), so memory stays O(chunk x Lk) for long prompts.
  constexpr std::int64_t kQueryChunk = 256;
  const std::int64_t chunk = std::min(T, kQueryChunk);
  const std::int64_t nchunks = (T + chunk - 1) / chunk;
  // (segment, row within it) of every row
  std::vector<std::pair<std::size_t, std::int64_t>> row_of;
  for (std::size_t s = 0; s < segments.size(); ++s)
    for (std::int64_t b = 0; b < segments[s].B; ++b) row_of.emplace_back(s, b);

  ops::AttentionOptions<float> ao;
  ao.num_heads = int(nh);
  ao.num_kv_heads = int(nkv);
  ao.head_dim = int(hd);
  ao.scale = float(1.0 / std::sqrt(double(hd)));

  for (std::size_t l = 0; l < layers.size(); ++l) {
    const Layer& L = layers[l];
    if (hidden) {
      Tensor t = Tensor::empty({B, T, H});
      std::memcpy(t.data<float>(), h, std::size_t(R * H) * sizeof(float));
      hidden->push_back(std::move(t));
    }
    // Self-attention block.
    ops::rms_norm<float>(hm, L.input_norm.data<float>(), eps, MatrixMap<float>(xn.data(), R, H));
    dense(L.q, xn.data(), R, q.data());
    dense(L.k, xn.data(), R, k.data());
    dense(L.v, xn.data(), R, v.data());
    ops::rope<float>(MatrixMap<float>(q.data(), R, nh * hd), positions, int(nh), int(hd), theta);
    ops::rope<float>(MatrixMap<float>(k.data(), R, kvdim), positions, int(nkv), int(hd), theta);
    const std::int64_t li = std::int64_t(l);
    for (std::int64_t r = 0; r < B; ++r) {
      const auto [sg, b] = row_of[std::size_t(r)];
      segments[sg].cache->write(li, b, k.data() + r * T * kvdim, v.data() + r * T * kvdim, T);
    }
    parallel_for(0, B * nchunks, 1, [&](std::int64_t t0, std::int64_t t1) {
      std::vector<float> mask;
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t r = t / nchunks, i0 = (t % nchunks) * chunk, n = std::min(chunk, T - i0);
        const auto [sg, b] = row_of[std::size_t(r)];
        const layers::KVCache& cache = *segments[sg].cache;
        const std::int64_t past = cache.length(), Lk = past + T;
        mask.resize(std::size_t(n * Lk));
        const std::uint8_t* valid = (*segments[sg].key_valid)[std::size_t(b)].data();
        for (std::int64_t i = 0; i < n; ++i) {
          float* m = mask.data() + i * Lk;
          const std::int64_t last = past + i0 + i;  // the query's own position: keys after it are future
          for (std::int64_t j = 0; j < Lk; ++j) m[j] = (j > last || !valid[j]) ? kMaskMin : 0.0f;
        }
        ops::AttentionOptions<float> o = ao;
        o.mask = mask.data();
        const std::int64_t q0 = r * T + i0;  // first query row
        ops::attention<float>(ConstMatrixMap<float>(q.data() + q0 * nh * hd, n, nh * hd),
                              ops::In<float>(cache.keys(li, b).topRows(Lk)),
                              ops::In<float>(cache.values(li, b).topRows(Lk)), o,
                              MatrixMap<float>(att.data() + q0 * nh * hd, n, nh * hd));
      }
    });
    dense(L.o, att.data(), R, tmp.data());
    hm += ConstMatrixMap<float>(tmp.data(), R, H);
    // MLP block.
    ops::rms_norm<float>(hm, L.post_norm.data<float>(), eps, MatrixMap<float>(xn.data(), R, H));
    dense(L.gate, xn.data(), R, g.data());
    dense(L.up, xn.data(), R, u.data());
    ops::activate(act, g.data(), g.size());
    for (std::size_t i = 0; i < g.size(); ++i) g[i] *= u[i];
    dense(L.down, g.data(), R, tmp.data());
    hm += ConstMatrixMap<float>(tmp.data(), R, H);
  }
  for (const Segment& sg : segments) sg.cache->advance(T);
}

Tensor LlamaModel::embed(const Tensor& input_ids) const {
  if (!input_ids.defined() || input_ids.dtype() != DType::I64)
    throw InvalidArgument("embed: input_ids must be a defined int64 tensor");
  Shape s = input_ids.shape();
  s.push_back(impl_->H);
  Tensor out = Tensor::empty(s);
  impl_->embed_rows(input_ids.data<std::int64_t>(), input_ids.numel(), out.data<float>());
  return out;
}

namespace {
void check_embeds(const Tensor& e, std::int64_t H, const char* what) {
  if (!e.defined() || e.dtype() != DType::F32 || e.ndim() != 3 || e.dim(2) != H || e.dim(0) < 1 || e.dim(1) < 1)
    throw InvalidArgument(std::string(what) + ": inputs_embeds must be float32 [B, L, " + std::to_string(H) +
                          "] with B, L >= 1, got " + (e.defined() ? std::string(dtype_name(e.dtype())) + " " +
                                                                        shape_str(e.shape())
                                                                  : std::string("an undefined tensor")));
}
}  // namespace

LMOutput LlamaModel::forward(const Tensor& inputs_embeds, const Tensor& attention_mask, const Tensor& /*decoder_input_ids*/,
                             const Tensor& labels, bool output_hidden_states) const {
  const Impl& m = *impl_;
  check_embeds(inputs_embeds, m.H, "LlamaModel::forward");
  const std::int64_t B = inputs_embeds.dim(0), L = inputs_embeds.dim(1), H = m.H, V = m.V;
  std::vector<std::vector<std::uint8_t>> valid(std::size_t(B), std::vector<std::uint8_t>(std::size_t(L), 1));
  if (attention_mask.defined()) {
    check_mask(attention_mask, B, L, "LlamaModel::forward");
    const std::int64_t* am = attention_mask.data<std::int64_t>();
    for (std::int64_t i = 0; i < B * L; ++i) valid[std::size_t(i / L)][std::size_t(i % L)] = std::uint8_t(am[i]);
  }
  std::int64_t Lout = L;
  if (labels.defined()) {
    if (labels.dtype() != DType::I64 || labels.ndim() != 2 || labels.dim(0) != B || labels.dim(1) < 1 ||
        labels.dim(1) > L)
      throw InvalidArgument("LlamaModel::forward: labels must be int64 [" + std::to_string(B) + ", L'] with 1 <= L' <= " +
                            std::to_string(L) + ", got " + dtype_name(labels.dtype()) + " " + shape_str(labels.shape()));
    const std::int64_t* lp = labels.data<std::int64_t>();
    for (std::int64_t i = 0; i < labels.numel(); ++i)
      if (lp[i] != -100 && (lp[i] < 0 || lp[i] >= V))
        throw InvalidArgument("LlamaModel::forward: label " + std::to_string(lp[i]) + " is outside [0, " +
                              std::to_string(V) + ") and is not -100");
    Lout = labels.dim(1);
  }

  std::vector<float> h(inputs_embeds.data<float>(), inputs_embeds.data<float>() + B * L * H);
  std::vector<std::int64_t> pos(std::size_t(B * L));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < L; ++t) pos[std::size_t(b * L + t)] = t;  // forward(): arange(L)
  LMOutput out;
  {
    layers::KVCache cache(std::int64_t(m.layers.size()), B, m.kvdim, L);
    m.run_layers(h.data(), B, L, pos.data(), valid, cache, output_hidden_states ? &out.hidden_states : nullptr);
  }

  Tensor normed = Tensor::empty({B, L, H});
  m.final_norm(h.data(), B * L, normed.data<float>());
  if (output_hidden_states) out.hidden_states.push_back(normed);

  // lm_head over the last Lout positions of each row.
  std::vector<float> sel;
  const float* lm_in = normed.data<float>();
  if (Lout != L) {
    sel.resize(std::size_t(B * Lout * H));
    for (std::int64_t b = 0; b < B; ++b)
      std::memcpy(sel.data() + b * Lout * H, normed.data<float>() + (b * L + L - Lout) * H,
                  std::size_t(Lout * H) * sizeof(float));
    lm_in = sel.data();
  }
  out.logits = Tensor::empty({B, Lout, V});
  dense(m.lm_head, lm_in, B * Lout, out.logits.data<float>());

  // InstructBLIP: logits[:, -L':] shifted by one against labels[:, 1:], CE(ignore_index=-100, mean).
  if (labels.defined()) out.loss = layers::cross_entropy(out.logits, labels, /*shift_labels=*/true);
  return out;
}

std::unique_ptr<LMState> LlamaModel::start(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                           std::int64_t max_new_tokens) const {
  const Impl& m = *impl_;
  check_embeds(inputs_embeds, m.H, "LlamaModel::start");
  const std::int64_t B = inputs_embeds.dim(0), L = inputs_embeds.dim(1);
  std::unique_ptr<LlamaState> st(new LlamaState());
  LlamaState::Data& d = *st->d_;
  d.model = &m;
  d.B = B;
  d.L = L;
  // A capacity hint only (the caches grow past it), so a huge value does not allocate up front.
  constexpr std::int64_t kMaxInitialCapacity = 1024;
  d.max_new = std::clamp<std::int64_t>(max_new_tokens, 0, kMaxInitialCapacity);
  d.prompt.assign(inputs_embeds.data<float>(), inputs_embeds.data<float>() + B * L * m.H);
  d.prompt_mask.assign(std::size_t(B * L), 1);
  if (attention_mask.defined()) {
    check_mask(attention_mask, B, L, "LlamaModel::start");
    const std::int64_t* am = attention_mask.data<std::int64_t>();
    for (std::int64_t i = 0; i < B * L; ++i) d.prompt_mask[std::size_t(i)] = std::uint8_t(am[i]);
  }
  return st;
}

Tensor LlamaModel::step(LMState& state, const std::vector<std::int64_t>& tokens) const {
  return std::move(step_batch({&state}, {tokens}).front());
}

std::vector<Tensor> LlamaModel::step_batch(const std::vector<LMState*>& states,
                                           const std::vector<std::vector<std::int64_t>>& tokens) const {
  const Impl& m = *impl_;
  const std::int64_t H = m.H, V = m.V;
  const std::size_t nl = m.layers.size();
  if (tokens.size() != states.size())
    throw InvalidArgument("LlamaModel::step: " + std::to_string(tokens.size()) + " token lists for " +
                          std::to_string(states.size()) + " states");
  std::vector<LlamaState::Data*> data;
  for (std::size_t i = 0; i < states.size(); ++i) {
    auto* ls = states[i] ? dynamic_cast<LlamaState*>(states[i]) : nullptr;
    if (!ls || ls->d_->model != &m)
      throw InvalidArgument("LlamaModel::step: the state was not created by this model's start()");
    LlamaState::Data* d = ls->d_.get();
    if (std::find(data.begin(), data.end(), d) != data.end())
      throw InvalidArgument("LlamaModel::step: a state is given twice");
    if (d->prefilled && std::int64_t(tokens[i].size()) != d->B)
      throw InvalidArgument("LlamaModel::step: " + std::to_string(tokens[i].size()) + " tokens for a state of " +
                            std::to_string(d->B) + " rows");
    data.push_back(d);
  }
  // logits [rows, V] of final-normed `last` rows
  auto head = [&](const float* last, std::int64_t rows) {
    std::vector<float> normed(std::size_t(rows * H));
    m.final_norm(last, rows, normed.data());
    Tensor logits = Tensor::empty({rows, V});
    dense(m.lm_head, normed.data(), rows, logits.data<float>());
    return logits;
  };
  std::vector<Tensor> out(states.size());
  std::vector<std::size_t> decoding;
  for (std::size_t i = 0; i < data.size(); ++i) {
    LlamaState::Data& d = *data[i];
    if (d.prefilled) {
      decoding.push_back(i);
      continue;
    }
    // Prefill (alone: its products have the prompt's many rows): generate()'s positions
    // cumsum(mask) - 1, pads -> 1.
    const std::int64_t B = d.B, L = d.L;
    d.cache = layers::KVCache(std::int64_t(nl), B, m.kvdim, L + std::max<std::int64_t>(1, d.max_new));
    d.mask.assign(std::size_t(B), std::vector<std::uint8_t>(std::size_t(L), 0));
    d.attended.assign(std::size_t(B), 0);
    std::vector<std::int64_t> pos(std::size_t(B * L));
    for (std::int64_t b = 0; b < B; ++b) {
      std::int64_t c = 0;
      for (std::int64_t t = 0; t < L; ++t) {
        const std::uint8_t mv = d.prompt_mask[std::size_t(b * L + t)];
        d.mask[std::size_t(b)][std::size_t(t)] = mv;
        c += mv;
        pos[std::size_t(b * L + t)] = mv ? c - 1 : 1;
      }
      d.attended[std::size_t(b)] = c;
    }
    m.run_layers(d.prompt.data(), B, L, pos.data(), d.mask, d.cache, nullptr);
    std::vector<float> last(std::size_t(B * H));
    for (std::int64_t b = 0; b < B; ++b)
      std::memcpy(last.data() + b * H, d.prompt.data() + (b * L + L - 1) * H, std::size_t(H) * sizeof(float));
    d.prefilled = true;
    std::vector<float>().swap(d.prompt);
    std::vector<std::uint8_t>().swap(d.prompt_mask);
    out[i] = head(last.data(), B);
  }
  if (decoding.empty()) return out;
  // One token per row of every decoding state, all rows through the layers together; each row
  // computed as it would be alone.
  ops::RowIndependentProducts row_independent;
  std::vector<Impl::Segment> segments;
  std::vector<std::int64_t> ids, pos;
  for (std::size_t i : decoding) {
    LlamaState::Data& d = *data[i];
    segments.push_back({d.B, &d.mask, &d.cache});
    ids.insert(ids.end(), tokens[i].begin(), tokens[i].end());
  }
  const std::int64_t R = std::int64_t(ids.size());
  std::vector<float> last(std::size_t(R * H));
  m.embed_rows(ids.data(), R, last.data());
  for (std::size_t i : decoding) {
    LlamaState::Data& d = *data[i];
    for (std::int64_t b = 0; b < d.B; ++b) {
      d.mask[std::size_t(b)].push_back(1);
      pos.push_back(d.attended[std::size_t(b)]++);  // cumsum(mask)[-1] - 1
    }
  }
  m.run_layers(last.data(), segments, 1, pos.data(), nullptr);  // the caches grow as needed
  Tensor all = head(last.data(), R);
  std::int64_t r = 0;
  for (std::size_t i : decoding) {
    const std::int64_t B = data[i]->B;
    Tensor t = Tensor::empty({B, V});
    std::memcpy(t.data<float>(), all.data<float>() + r * V, std::size_t(B * V) * sizeof(float));
    out[i] = std::move(t);
    r += B;
  }
  return out;
}

void LlamaModel::select_rows(LMState& state, const std::vector<std::int64_t>& index) const {
  const Impl& m = *impl_;
  auto* ls = dynamic_cast<LlamaState*>(&state);
  if (!ls || ls->d_->model != &m)
    throw InvalidArgument("LlamaModel::select_rows: the state was not created by this model's start()");
  LlamaState::Data& d = *ls->d_;
  const std::int64_t B = d.B, NB = std::int64_t(index.size());
  if (NB == 0) throw InvalidArgument("LlamaModel::select_rows: empty index");
  for (std::int64_t i : index)
    if (i < 0 || i >= B)
      throw InvalidArgument("LlamaModel::select_rows: row " + std::to_string(i) + " is outside [0, " +
                            std::to_string(B) + ")");
  bool identity = NB == B;
  for (std::int64_t r = 0; identity && r < NB; ++r) identity = index[std::size_t(r)] == r;
  if (identity) return;
  // buf holds B rows of `row` elements of which the first `used` are meaningful.
  auto gather = [&](auto& buf, std::int64_t row, std::int64_t used) {
    using Vec = std::decay_t<decltype(buf)>;
    Vec nb(std::size_t(NB * row));
    for (std::int64_t r = 0; r < NB; ++r)
      std::copy_n(buf.begin() + index[std::size_t(r)] * row, used, nb.begin() + r * row);
    buf.swap(nb);
  };
  if (!d.prefilled) {
    gather(d.prompt, d.L * m.H, d.L * m.H);
    gather(d.prompt_mask, d.L, d.L);
  } else {
    d.cache.select_rows(index);
    gather(d.mask, 1, 1);
    gather(d.attended, 1, 1);
  }
  d.B = NB;
}

}  // namespace instructblip::models

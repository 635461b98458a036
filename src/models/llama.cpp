// LLaMA / Vicuna (transformers 4.36.2 LlamaForCausalLM, eager attention, float32).
#include "instructblip/models/llama.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "instructblip/ops/ops.hpp"
#include "decoder_only.hpp"

namespace instructblip::models {

namespace {

struct Layer {
  Tensor input_norm, post_norm;  // float32 [H]
  Linear q, k, v, o, gate, up, down;
};

}  // namespace

using detail::dense;

// ---------------------------------------------------------------------------------------------

struct LlamaModel::Impl : detail::DecoderOnlyCore {
  LlamaConfig cfg;
  LlamaOptions opt;
  std::int64_t I = 0;
  float eps = 1e-6f;
  float theta = 10000.0f;
  ops::Activation act = ops::Activation::Silu;
  Tensor norm;  // [H] F32
  std::vector<Layer> layers;

  void load(const WeightSource& src, const std::string& prefix);
  /// Validates cfg and derives the sizes from it (ConfigError for what this implementation lacks).
  void configure();
  /// The tensor table: every weight (HF name with `prefix`, shape, slot, role) in binding order,
  /// and the tied lm_head alias.
  void visit(const WeightVisitor& v, const std::string& prefix) override;

  // DecoderOnlyCore: positions are arange(L) in forward(), RoPE inside attention.
  std::size_t num_layers() const override { return layers.size(); }
  bool forward_positions_from_mask() const override { return false; }
  std::int64_t pad_position() const override { return 1; }  // position_ids.masked_fill_(mask == 0, 1)
  void attention_inputs(std::size_t l, const float* h, std::int64_t R, const std::int64_t* positions, float* xn,
                        float* q, float* k, float* v) const override {
    const Layer& L = layers[l];
    ops::rms_norm<float>(ConstMatrixMap<float>(h, R, H), L.input_norm.data<float>(), eps, MatrixMap<float>(xn, R, H));
    dense(L.q, xn, R, q);
    dense(L.k, xn, R, k);
    dense(L.v, xn, R, v);
    ops::rope<float>(MatrixMap<float>(q, R, nh * hd), positions, int(nh), int(hd), theta);
    ops::rope<float>(MatrixMap<float>(k, R, kvdim), positions, int(nkv), int(hd), theta);
  }
  void finish_layer(std::size_t l, const float* att, std::int64_t R, float* h, Scratch& s) const override {
    const Layer& L = layers[l];
    MatrixMap<float> hm(h, R, H);
    s.a.resize(std::size_t(R * H));
    s.b.resize(std::size_t(R * I));
    s.c.resize(std::size_t(R * I));
    float* tmp = s.a.data();
    dense(L.o, att, R, tmp);
    hm += ConstMatrixMap<float>(tmp, R, H);
    // MLP block: down(act(gate x) * up x)
    ops::rms_norm<float>(hm, L.post_norm.data<float>(), eps, MatrixMap<float>(tmp, R, H));
    float* g = s.b.data();
    float* u = s.c.data();
    dense(L.gate, tmp, R, g);
    dense(L.up, tmp, R, u);
    const std::size_t n = std::size_t(R * I);
    ops::activate(act, g, n);
    for (std::size_t i = 0; i < n; ++i) g[i] *= u[i];
    dense(L.down, g, R, tmp);
    hm += ConstMatrixMap<float>(tmp, R, H);
  }
  void final_norm(const float* h, std::int64_t rows, float* out) const override {
    ops::rms_norm<float>(ConstMatrixMap<float>(h, rows, H), norm.data<float>(), eps, MatrixMap<float>(out, rows, H));
  }
  std::size_t decode_weight_bytes() const override {
    std::size_t n = lm_head.w.bytes();
    for (const Layer& L : layers)
      for (const Linear* d : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) n += d->w.bytes();
    return n;
  }
};

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
  name = "LlamaModel";
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
  attention_scale = float(1.0 / std::sqrt(double(hd)));
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

namespace {
std::unique_ptr<LlamaModel::Impl> make_llama(const LlamaConfig& config, const WeightSource& source,
                                             const std::string& prefix, const LlamaOptions& options) {
  auto impl = std::make_unique<LlamaModel::Impl>();
  impl->cfg = config;
  impl->opt = options;
  impl->load(source, prefix);
  return impl;
}
}  // namespace

LlamaModel::LlamaModel(const LlamaConfig& config, const io::Checkpoint& checkpoint, const std::string& prefix,
                       const LlamaOptions& options)
    : DecoderOnlyModel(make_llama(config, WeightSource::from_checkpoint(checkpoint), prefix, options)) {}

LlamaModel::LlamaModel(const LlamaConfig& config, const std::map<std::string, Tensor>& weights,
                       const std::string& prefix, const LlamaOptions& options)
    : DecoderOnlyModel(make_llama(config,
                                  WeightSource(
                                      [&](const std::string& n) {
                                        auto it = weights.find(n);
                                        return it == weights.end() ? Tensor() : it->second;
                                      },
                                      "the weight map"),
                                  prefix, options)) {}

LlamaModel::LlamaModel(const LlamaConfig& config, const WeightSource& source, const std::string& prefix,
                       const LlamaOptions& options)
    : DecoderOnlyModel(make_llama(config, source, prefix, options)) {}

LlamaModel::~LlamaModel() = default;

const LlamaModel::Impl& LlamaModel::impl() const { return static_cast<const Impl&>(core()); }
const LlamaConfig& LlamaModel::config() const { return impl().cfg; }
const LlamaOptions& LlamaModel::options() const { return impl().opt; }

std::vector<std::pair<std::string, Shape>> LlamaModel::tensor_specs(const LlamaConfig& config,
                                                                    const std::string& prefix) {
  Impl probe;
  probe.cfg = config;
  probe.configure();
  std::vector<std::pair<std::string, Shape>> specs;
  probe.visit(WeightVisitor::lister(specs), prefix);
  return specs;
}

}  // namespace instructblip::models

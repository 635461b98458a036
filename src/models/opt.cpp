// OPT (transformers 4.36.2 OPTForCausalLM, eager attention, float32).
#include "instructblip/models/opt.hpp"

#include <cmath>
#include <cstring>
#include <utility>

#include "instructblip/ops/ops.hpp"
#include "decoder_only.hpp"

namespace instructblip::models {

namespace {

struct Layer {
  Tensor attn_ln_w, attn_ln_b, ffn_ln_w, ffn_ln_b;  // float32 [H]
  Linear q, k, v, out, fc1, fc2;
};

/// OPTLearnedPositionalEmbedding: row = position + 2.
constexpr std::int64_t kPositionOffset = 2;

}  // namespace

using detail::dense;

struct OPTModel::Impl : detail::DecoderOnlyCore {
  OPTConfig cfg;
  WeightPolicy policy;
  std::int64_t F = 0;  // ffn_dim
  float eps = 1e-5f;   // nn.LayerNorm's default: OPT does not configure it
  float q_scale = 1.0f;
  bool pre_ln = true, final_ln = true;
  ops::Activation act = ops::Activation::Relu;
  Tensor positions;  // [max_position_embeddings + 2, H] F32
  Tensor final_ln_w, final_ln_b;
  std::vector<Layer> layers;

  void configure() {
    const std::string where = "OPTConfig";
    name = "OPTModel";
    cfg.validate(where);
    if (cfg.word_embed_proj_dim != cfg.hidden_size)
      throw ConfigError(where + ": word_embed_proj_dim " + std::to_string(cfg.word_embed_proj_dim) +
                        " differs from hidden_size " + std::to_string(cfg.hidden_size) +
                        ": OPT with project_in / project_out is not supported (BLIP-2 cannot use it: its "
                        "language_projection outputs hidden_size columns)");
    if (!cfg.layer_norm_elementwise_affine)
      throw ConfigError(where + ": layer_norm_elementwise_affine false is not supported");
    H = cfg.hidden_size;
    V = cfg.vocab_size;
    F = cfg.ffn_dim;
    nh = nkv = cfg.num_attention_heads;
    hd = cfg.head_dim();
    kvdim = nh * hd;
    q_scale = float(std::pow(double(hd), -0.5));
    attention_scale = 1.0f;  // q is scaled after its projection, as OPTAttention does
    pre_ln = cfg.do_layer_norm_before;
    final_ln = cfg.do_layer_norm_before && !cfg._remove_final_layer_norm;
    try {
      act = ops::parse_activation(cfg.activation_function);
    } catch (const InvalidArgument& e) {
      throw ConfigError(where + ": activation_function: " + e.what());
    }
  }

  void visit(const WeightVisitor& v, const std::string& prefix) override {
    const std::string d = prefix + "model.decoder.";
    const bool bias = cfg.enable_bias;
    v.tensor(d + "embed_tokens.weight", {V, H}, embed);
    v.tensor(d + "embed_positions.weight", {cfg.max_position_embeddings + kPositionOffset, H}, positions);
    if (final_ln) {
      v.tensor(d + "final_layer_norm.weight", {H}, final_ln_w);
      v.tensor(d + "final_layer_norm.bias", {H}, final_ln_b);
    }
    if (cfg.tie_word_embeddings)
      v.tied(prefix + "lm_head.weight", d + "embed_tokens.weight");
    else
      v.linear(prefix + "lm_head", V, H, false, lm_head, MatrixRole::OutputHead);
    layers.resize(std::size_t(cfg.num_hidden_layers));
    for (std::int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
      const std::string p = d + "layers." + std::to_string(l) + ".";
      Layer& L = layers[std::size_t(l)];
      v.linear(p + "self_attn.q_proj", H, H, bias, L.q, MatrixRole::Text);
      v.linear(p + "self_attn.k_proj", H, H, bias, L.k, MatrixRole::Text);
      v.linear(p + "self_attn.v_proj", H, H, bias, L.v, MatrixRole::Text);
      v.linear(p + "self_attn.out_proj", H, H, bias, L.out, MatrixRole::Text);
      v.tensor(p + "self_attn_layer_norm.weight", {H}, L.attn_ln_w);
      v.tensor(p + "self_attn_layer_norm.bias", {H}, L.attn_ln_b);
      v.linear(p + "fc1", F, H, bias, L.fc1, MatrixRole::Text);
      v.linear(p + "fc2", H, F, bias, L.fc2, MatrixRole::Text);
      v.tensor(p + "final_layer_norm.weight", {H}, L.ffn_ln_w);
      v.tensor(p + "final_layer_norm.bias", {H}, L.ffn_ln_b);
    }
  }

  void load(const WeightSource& src, const std::string& prefix) {
    configure();
    visit(WeightVisitor::recording(WeightVisitor::loader(src, policy), bound), prefix);
    if (policy.format != ops::WeightFormat::F32) embed = embed.to(DType::BF16);  // exact for bf16 checkpoints
    if (cfg.tie_word_embeddings) {
      lm_head.w = ops::WeightMatrix(embed, policy.format_for(MatrixRole::OutputHead));
      lm_head.compute = policy.compute_for(MatrixRole::OutputHead);
    }
  }

  static void layer_norm(const float* x, std::int64_t R, std::int64_t H, const Tensor& w, const Tensor& b, float eps,
                         float* y) {
    ops::layer_norm<float>(ConstMatrixMap<float>(x, R, H), w.data<float>(), b.data<float>(), eps,
                           MatrixMap<float>(y, R, H));
  }

  // DecoderOnlyCore
  std::size_t num_layers() const override { return layers.size(); }
  bool forward_positions_from_mask() const override { return true; }
  std::int64_t pad_position() const override { return -1; }  // cumsum(mask) * mask - 1
  void add_position_embeddings(float* h, std::int64_t rows, const std::int64_t* pos) const override {
    const std::int64_t n = positions.dim(0);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t row = pos[r] + kPositionOffset;
      if (row < 0 || row >= n)
        throw InvalidArgument("OPTModel: position " + std::to_string(pos[r]) + " is beyond max_position_embeddings (" +
                              std::to_string(cfg.max_position_embeddings) + ")");
      const float* p = positions.data<float>() + row * H;
      float* x = h + r * H;
      for (std::int64_t c = 0; c < H; ++c) x[c] += p[c];
    }
  }
  void attention_inputs(std::size_t l, const float* h, std::int64_t R, const std::int64_t* /*positions*/, float* xn,
                        float* q, float* k, float* v) const override {
    const Layer& L = layers[l];
    const float* x = h;
    if (pre_ln) {
      layer_norm(h, R, H, L.attn_ln_w, L.attn_ln_b, eps, xn);
      x = xn;
    }
    dense(L.q, x, R, q);
    dense(L.k, x, R, k);
    dense(L.v, x, R, v);
    const std::int64_t n = R * H;
    for (std::int64_t i = 0; i < n; ++i) q[i] *= q_scale;
  }
  void finish_layer(std::size_t l, const float* att, std::int64_t R, float* h, Scratch& s) const override {
    const Layer& L = layers[l];
    MatrixMap<float> hm(h, R, H);
    s.a.resize(std::size_t(R * H));
    s.b.resize(std::size_t(R * F));
    float* tmp = s.a.data();
    dense(L.out, att, R, tmp);
    hm += ConstMatrixMap<float>(tmp, R, H);
    if (!pre_ln) layer_norm(h, R, H, L.attn_ln_w, L.attn_ln_b, eps, h);
    // FFN block: fc2(act(fc1(LN(x))))
    const float* x = h;
    if (pre_ln) {
      layer_norm(h, R, H, L.ffn_ln_w, L.ffn_ln_b, eps, tmp);
      x = tmp;
    }
    float* f = s.b.data();
    dense(L.fc1, x, R, f);
    ops::activate(act, f, std::size_t(R * F));
    dense(L.fc2, f, R, tmp);
    hm += ConstMatrixMap<float>(tmp, R, H);
    if (!pre_ln) layer_norm(h, R, H, L.ffn_ln_w, L.ffn_ln_b, eps, h);
  }
  void final_norm(const float* h, std::int64_t rows, float* out) const override {
    if (final_ln)
      layer_norm(h, rows, H, final_ln_w, final_ln_b, eps, out);
    else
      std::memcpy(out, h, std::size_t(rows * H) * sizeof(float));
  }
  std::size_t decode_weight_bytes() const override {
    std::size_t n = lm_head.w.bytes();
    for (const Layer& L : layers)
      for (const Linear* d : {&L.q, &L.k, &L.v, &L.out, &L.fc1, &L.fc2}) n += d->w.bytes();
    return n;
  }
};

namespace {
std::unique_ptr<OPTModel::Impl> make_opt(const OPTConfig& config, const WeightSource& source, const std::string& prefix,
                                         const WeightPolicy& policy) {
  auto impl = std::make_unique<OPTModel::Impl>();
  impl->cfg = config;
  impl->policy = policy;
  impl->load(source, prefix);
  return impl;
}
}  // namespace

OPTModel::OPTModel(const OPTConfig& config, const WeightSource& source, const std::string& prefix,
                   const WeightPolicy& policy)
    : DecoderOnlyModel(make_opt(config, source, prefix, policy)) {}

OPTModel::~OPTModel() = default;

const OPTModel::Impl& OPTModel::impl() const { return static_cast<const Impl&>(core()); }
const OPTConfig& OPTModel::config() const { return impl().cfg; }
std::optional<std::int64_t> OPTModel::max_positions() const { return impl().cfg.max_position_embeddings; }

std::vector<std::pair<std::string, Shape>> OPTModel::tensor_specs(const OPTConfig& config, const std::string& prefix) {
  Impl probe;
  probe.cfg = config;
  probe.configure();
  std::vector<std::pair<std::string, Shape>> specs;
  probe.visit(WeightVisitor::lister(specs), prefix);
  return specs;
}

}  // namespace instructblip::models

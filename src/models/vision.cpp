#include "instructblip/models/vision.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

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


}  // namespace

void VisionModel::visit(const VisionConfig& c, const std::string& p, Weights& w, const WeightVisitor& v) {
  const auto& fn = v.tensor;
  const std::int64_t D = c.hidden_size, I = c.intermediate_size, P = c.patch_size;
  fn(p + "embeddings.class_embedding", {1, 1, D}, w.class_embedding);
  fn(p + "embeddings.patch_embedding.weight", {D, 3, P, P}, w.patch_w);
  fn(p + "embeddings.patch_embedding.bias", {D}, w.patch_b);
  fn(p + "embeddings.position_embedding", {1, c.num_positions(), D}, w.position_embedding);
  w.layers.resize(std::size_t(c.num_hidden_layers));
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    Layer& l = w.layers[std::size_t(i)];
    const std::string lp = p + "encoder.layers." + std::to_string(i) + ".";
    fn(lp + "layer_norm1.weight", {D}, l.ln1_w);
    fn(lp + "layer_norm1.bias", {D}, l.ln1_b);
    v.linear(lp + "self_attn.qkv", 3 * D, D, c.qkv_bias, l.qkv, MatrixRole::Vision);
    v.linear(lp + "self_attn.projection", D, D, true, l.proj, MatrixRole::Vision);
    fn(lp + "layer_norm2.weight", {D}, l.ln2_w);
    fn(lp + "layer_norm2.bias", {D}, l.ln2_b);
    v.linear(lp + "mlp.fc1", I, D, true, l.fc1, MatrixRole::Vision);
    v.linear(lp + "mlp.fc2", D, I, true, l.fc2, MatrixRole::Vision);
  }
  fn(p + "post_layernorm.weight", {D}, w.post_ln_w);
  fn(p + "post_layernorm.bias", {D}, w.post_ln_b);
}

std::vector<std::pair<std::string, Shape>> VisionModel::tensor_specs(const VisionConfig& config,
                                                                     const std::string& prefix) {
  std::vector<std::pair<std::string, Shape>> specs;
  Weights w;
  visit(config, prefix, w, WeightVisitor::lister(specs));
  return specs;
}

std::vector<std::pair<std::string, Tensor>> VisionModel::named_weights(const std::string& prefix) const {
  std::vector<std::pair<std::string, Tensor>> out;
  Weights w = w_;  // shares the buffers
  visit(config_, prefix, w, WeightVisitor::saver(out));
  return out;
}

VisionModel::VisionModel(const VisionConfig& config, const io::Checkpoint& checkpoint, const std::string& prefix,
                         const WeightPolicy& policy)
    : VisionModel(config, WeightSource::from_checkpoint(checkpoint), prefix, policy) {}

VisionModel::VisionModel(const VisionConfig& config, const WeightSource& source, const std::string& prefix,
                         const WeightPolicy& policy)
    : config_(config) {
  config_.validate("vision_config", "vision_config.");
  act_ = ops::parse_activation(config_.hidden_act);
  visit(config_, prefix, w_, WeightVisitor::loader(source, policy));
}

double VisionModel::flops(std::int64_t batch) const {
  const double D = double(config_.hidden_size), I = double(config_.intermediate_size);
  const double L = double(num_positions()), N = double(config_.num_patches());
  const double P = double(config_.patch_size);
  const double per_layer = 2.0 * L * D * (3 * D + D + 2 * I)  // qkv, projection, fc1, fc2
                           + 2.0 * 2.0 * L * L * D;           // q k^T and probs v
  return double(batch) * (2.0 * N * 3 * P * P * D + double(config_.num_hidden_layers) * per_layer);
}

VisionOutput VisionModel::forward(const Tensor& pixel_values, bool output_hidden_states,
                                  bool output_attentions) const {
  const std::int64_t S = config_.image_size, P = config_.patch_size;
  if (!pixel_values.defined() || pixel_values.ndim() != 4 || pixel_values.dim(1) != 3 ||
      pixel_values.dim(2) != S || pixel_values.dim(3) != S || pixel_values.dim(0) < 1)
    throw InvalidArgument("VisionModel: pixel_values must be [B, 3, " + std::to_string(S) + ", " +
                          std::to_string(S) + "] with B >= 1 (vision_config.image_size = " + std::to_string(S) +
                          "), got " + (pixel_values.defined() ? shape_str(pixel_values.shape()) : "undefined"));
  if (pixel_values.dtype() != DType::F32)
    throw InvalidArgument("VisionModel: pixel_values must be float32, got " + std::string(dtype_name(pixel_values.dtype())));

  const std::int64_t B = pixel_values.dim(0);
  const std::int64_t G = S / P, N = G * G, L = N + 1;  // HF's Conv2d drops a partial last patch
  const std::int64_t D = config_.hidden_size, I = config_.intermediate_size;
  const int H = int(config_.num_attention_heads), hd = int(config_.head_dim());
  const float eps = float(config_.layer_norm_eps);
  const float scale = float(std::pow(double(hd), -0.5));
  const std::int64_t M = B * L;

  VisionOutput out;
  // Scratch for the whole call, reused by every layer.
  MatrixF x(M, D), y(M, D), qkv(M, 3 * D), ctx(M, D), f(M, I);

  // ---- embeddings
  {
    const auto pw = w_.patch_w.matrix<float>(D, 3 * P * P);
    const auto pos = w_.position_embedding.matrix<float>(L, D);
    const auto cls = w_.class_embedding.matrix<float>(1, D);
    const float* pix = pixel_values.data<float>();
    const std::int64_t S2 = G * P;  // the part of the image the convolution covers
    std::vector<float> crop;
    if (S2 != S) crop.resize(std::size_t(3 * S2 * S2));
    for (std::int64_t b = 0; b < B; ++b) {
      const float* img = pix + b * 3 * S * S;
      if (S2 != S) {
        for (std::int64_t c = 0; c < 3; ++c)
          for (std::int64_t r = 0; r < S2; ++r)
            std::memcpy(crop.data() + (c * S2 + r) * S2, img + (c * S + r) * S, std::size_t(S2) * sizeof(float));
        img = crop.data();
      }
      ops::patch_embed<float>(img, 3, int(S2), int(S2), int(P), pw, w_.patch_b.data<float>(),
                              x.middleRows(b * L + 1, N));
      x.row(b * L) = cls.row(0);
      x.middleRows(b * L, L) += pos;
    }
  }
  if (output_hidden_states) out.hidden_states.push_back(to_tensor(x, {B, L, D}));

  // ---- encoder layers
  for (const Layer& l : w_.layers) {
    // self-attention block
    layer_norm_rows(x, l.ln1_w, l.ln1_b, eps, y);
    l.qkv(y, qkv);
    float* probs = nullptr;
    if (output_attentions) {
      out.attentions.push_back(Tensor::empty({B, H, L, L}));
      probs = out.attentions.back().data<float>();
    }
    // One task per (image, head): q/k/v are column blocks of the fused projection (layout
    // [3, heads, head_dim] along the columns, as HF's reshape(B, L, 3, heads, hd)).
    parallel_for(0, B * H, 1, [&](std::int64_t t0, std::int64_t t1) {
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t b = t / H, h = t % H;
        ops::AttentionOptions<float> o;
        o.num_heads = 1;
        o.head_dim = hd;
        o.scale = scale;
        o.probs = probs ? probs + t * L * L : nullptr;
        const auto rows = qkv.middleRows(b * L, L);
        ops::attention<float>(rows.middleCols(h * hd, hd), rows.middleCols(D + h * hd, hd),
                              rows.middleCols(2 * D + h * hd, hd), o, ctx.block(b * L, h * hd, L, hd));
      }
    });
    l.proj(ctx, y);
    x += y;
    // MLP block
    layer_norm_rows(x, l.ln2_w, l.ln2_b, eps, y);
    l.fc1(y, f, act_);
    l.fc2(f, y);
    x += y;
    if (output_hidden_states) out.hidden_states.push_back(to_tensor(x, {B, L, D}));
  }

  // ---- post_layernorm, and the pooler (post_layernorm applied again to the CLS rows)
  out.last_hidden_state = Tensor::empty({B, L, D});
  auto last = out.last_hidden_state.matrix<float>(M, D);
  layer_norm_rows(x, w_.post_ln_w, w_.post_ln_b, eps, last);
  out.pooler_output = Tensor::empty({B, D});
  auto pooled = out.pooler_output.matrix<float>(B, D);
  for (std::int64_t b = 0; b < B; ++b)
    ops::layer_norm<float>(last.row(b * L), w_.post_ln_w.data<float>(), w_.post_ln_b.data<float>(), eps,
                           pooled.row(b));
  return out;
}

}  // namespace instructblip::models

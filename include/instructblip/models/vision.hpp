#pragma once
// The InstructBLIP vision encoder (EVA ViT-g/14 in the released checkpoints), transformers 4.36.2
// InstructBlipVisionModel:
//   embeddings = cat(class_embedding, Conv2d_{kernel = stride = patch}(pixels) flattened) + position_embedding
//   num_hidden_layers pre-LN layers:
//     x += projection(attention(qkv(layer_norm1(x))))   fused qkv, bias cat(q_bias, 0, v_bias), scale hd^-0.5
//     x += fc2(act(fc1(layer_norm2(x))))
//   last_hidden_state = post_layernorm(x)
//   pooler_output     = post_layernorm(last_hidden_state[:, 0])   (LayerNorm applied twice, as HF does)
//
// A VisionModel binds its weights once (zero-copy views of a float32 checkpoint, converted copies
// for bf16/f16) and is immutable afterwards: forward() is const and keeps all scratch local to the
// call, so one model may serve several threads at once.
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/io/checkpoint.hpp"
#include "instructblip/ops/activations.hpp"
#include "instructblip/models/weight_source.hpp"

namespace instructblip::models {

/// transformers' BaseModelOutputWithPooling of the vision model.
struct VisionOutput {
  Tensor last_hidden_state;           // [B, num_positions, hidden] (after post_layernorm)
  Tensor pooler_output;               // [B, hidden]
  /// On request: num_hidden_layers + 1 tensors [B, num_positions, hidden]: the embeddings, then the
  /// output of every layer (the last one is BEFORE post_layernorm), as HF's hidden_states.
  std::vector<Tensor> hidden_states;
  /// On request: one [B, heads, num_positions, num_positions] softmax map per layer.
  std::vector<Tensor> attentions;
};

class VisionModel {
 public:
  /// Binds every weight under `prefix` (normally "vision_model.") by its HF name and shape.
  /// Missing / mis-shaped tensors -> TensorError (from the Checkpoint) naming the tensor;
  /// an invalid config or unsupported hidden_act -> ConfigError / InvalidArgument.
  /// `policy` chooses how the linear layers' weights are kept (f32, or bf16 panels multiplied
  /// with bf16 arithmetic under the reduced formats; see WeightPolicy).
  VisionModel(const VisionConfig& config, const io::Checkpoint& checkpoint,
              const std::string& prefix = "vision_model.", const WeightPolicy& policy = {});
  VisionModel(const VisionConfig& config, const WeightSource& source, const std::string& prefix = "vision_model.",
              const WeightPolicy& policy = {});

  /// pixel_values: float32 [B, 3, image_size, image_size] (B >= 1). Anything else (other rank,
  /// channel count, spatial size or dtype) -> InvalidArgument.
  VisionOutput forward(const Tensor& pixel_values, bool output_hidden_states = false,
                       bool output_attentions = false) const;

  const VisionConfig& config() const { return config_; }
  /// Tokens per image: num_patches + 1.
  std::int64_t num_positions() const { return config_.num_positions(); }

  /// The HF name (with `prefix`) and shape of every tensor the constructor binds, in binding order.
  /// (Useful to build random checkpoints for tests and benchmarks.)
  static std::vector<std::pair<std::string, Shape>> tensor_specs(const VisionConfig& config,
                                                                 const std::string& prefix = "vision_model.");

  /// The tensors that store the bound weights under their HF names (with `prefix`), as
  /// save_pretrained writes them.
  std::vector<std::pair<std::string, Tensor>> named_weights(const std::string& prefix = "vision_model.") const;

  /// Multiply-add FLOPs (2 per MAC) of one forward over `batch` images (GEMMs and attention).
  double flops(std::int64_t batch) const;

 private:
  struct Layer {
    Tensor ln1_w, ln1_b;
    Linear qkv;  // bias undefined when config.qkv_bias is false
    Linear proj;
    Tensor ln2_w, ln2_b;
    Linear fc1, fc2;
  };
  struct Weights {
    Tensor class_embedding;     // [1, 1, D]
    Tensor patch_w, patch_b;    // [D, 3, P, P], [D]
    Tensor position_embedding;  // [1, num_positions, D]
    std::vector<Layer> layers;
    Tensor post_ln_w, post_ln_b;
  };
  /// The single list of weights: visits (prefix + HF name, shape, slot) for each, in order.
  static void visit(const VisionConfig& config, const std::string& prefix, Weights& w, const WeightVisitor& v);

  VisionConfig config_;
  ops::Activation act_ = ops::Activation::Gelu;
  Weights w_;
};

}  // namespace instructblip::models

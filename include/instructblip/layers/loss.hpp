#pragma once
// Cross-entropy loss as torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="mean") computes it
// for the language models (T5 over the decoder logits, LLaMA over next-token shifted logits).
#include <cstdint>

#include "instructblip/core/tensor.hpp"

namespace instructblip::layers {

/// The id labels use for positions that carry no loss.
constexpr std::int64_t kIgnoreIndex = -100;

/// Mean over the labels != -100 of -log_softmax(logits)[label], accumulated in double.
/// logits: float32 [B, T, V]; labels: int64 [B, T] (shift_labels = false: logits[b, t] predicts
/// labels[b, t]) or, with shift_labels = true, logits[b, t] predicts labels[b, t + 1] for t < T - 1
/// (the causal-LM shift). NaN when every label is ignored, as torch gives. InvalidArgument for
/// mismatched shapes or a label outside [0, V) that is not -100.
float cross_entropy(const Tensor& logits, const Tensor& labels, bool shift_labels = false);

}  // namespace instructblip::layers

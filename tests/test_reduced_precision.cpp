// Deviation of the reduced-precision weight formats (bf16 / q8_0 / q4_0, LoadOptions::weights)
// from transformers' float32 outputs on the tiny reference checkpoints: the vision encoder's
// output (bf16 weights, bf16 arithmetic under every reduced format), the projected queries and the
// logits. The figures are printed (and recorded as test properties); the bounds are loose
// regression guards, a few times the deviation these formats show.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "instructblip/instructblip.hpp"
#include "reference_util.hpp"

using namespace instructblip;
using ibtest::Reference;

namespace {

double max_abs(const Tensor& t) {
  double m = 0;
  for (std::int64_t i = 0; i < t.numel(); ++i) m = std::max(m, double(std::abs(t.f(i))));
  return m;
}

struct Case {
  std::string name;
  ops::WeightFormat format;
  double logits_rel_bound;  // max |logit - reference| / max |reference logit|
};

class ReducedPrecision : public ::testing::TestWithParam<Case> {};

TEST_P(ReducedPrecision, DeviationFromTransformersFloat32) {
  const Case& c = GetParam();
  Reference ref(c.name);
  LoadOptions lo;
  lo.weights = c.format;
  auto m = VisionLanguageModel::from_pretrained(ref.model_dir(), lo);  // InstructBLIP or BLIP-2
  const std::string k = "a.";
  Tensor decoder_ids = ref.tensors.contains(k + "decoder_input_ids") ? ref.get(k + "decoder_input_ids") : Tensor();
  auto maybe = [&](const std::string& key) { return ref.tensors.contains(key) ? ref.get(key) : Tensor(); };
  auto out = m.forward(ref.get(k + "pixel_values"), maybe(k + "qformer_input_ids"), maybe(k + "qformer_attention_mask"),
                       ref.get(k + "input_ids"), ref.get(k + "attention_mask"), decoder_ids);
  const Tensor& ref_logits = ref.get(k + "logits");
  const Tensor& ref_vision = ref.get(k + "vision.last_hidden_state");
  const Tensor& ref_lmi = ref.get(k + "language_model_inputs");
  const double vis = ibtest::max_abs_diff(out.vision_outputs.last_hidden_state, ref_vision) / max_abs(ref_vision);
  const double lmi = ibtest::max_abs_diff(out.language_model_inputs, ref_lmi) / max_abs(ref_lmi);
  const double logits_abs = ibtest::max_abs_diff(out.logits, ref_logits);
  const double logits = logits_abs / max_abs(ref_logits);
  std::printf("[ %-8s ] %s: relative max deviation  vision %.2e  projected queries %.2e  logits %.2e (abs %.2e)\n",
              ops::weight_format_name(c.format), c.name.c_str(), vis, lmi, logits, logits_abs);
  RecordProperty("vision_rel", std::to_string(vis));
  RecordProperty("logits_rel", std::to_string(logits));
  EXPECT_LE(vis, 0.05);
  EXPECT_LE(logits, c.logits_rel_bound);
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, ReducedPrecision,
    ::testing::Values(Case{"t5-tiny", ops::WeightFormat::BF16, 0.05}, Case{"t5-tiny", ops::WeightFormat::Q8_0, 0.1},
                      Case{"t5-tiny", ops::WeightFormat::Q4_0, 0.5}, Case{"llama-tiny", ops::WeightFormat::BF16, 0.05},
                      Case{"llama-tiny", ops::WeightFormat::Q8_0, 0.1},
                      Case{"llama-tiny", ops::WeightFormat::Q4_0, 0.5},
                      Case{"blip2-opt-tiny", ops::WeightFormat::BF16, 0.05},
                      Case{"blip2-opt-tiny", ops::WeightFormat::Q8_0, 0.1},
                      Case{"blip2-opt-tiny", ops::WeightFormat::Q4_0, 0.5},
                      Case{"blip2-t5-tiny", ops::WeightFormat::BF16, 0.05},
                      Case{"blip2-t5-tiny", ops::WeightFormat::Q8_0, 0.1},
                      Case{"blip2-t5-tiny", ops::WeightFormat::Q4_0, 0.5}),
    [](const auto& info) {
      std::string n = info.param.name + "_" + ops::weight_format_name(info.param.format);
      std::replace(n.begin(), n.end(), '-', '_');
      return n;
    });

}  // namespace

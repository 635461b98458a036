// libFuzzer harness: config.json and generation_config.json parsing.
// Input: JSON text. Inputs that are not JSON are dropped (the JSON parser is nlohmann's, not
// ours). The value is then given to InstructBlipConfig::from_json, GenerationConfig::from_json
// (and merged_with), and each sub-config's from_json. Whatever is accepted must round-trip
// through to_json (the documented `X::from_json(x.to_json()) == x`) and its derived accessors
// must be computable (no overflow).
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_common.hpp"
#include "instructblip/config.hpp"
#include "instructblip/core/error.hpp"

using namespace instructblip;
using json = nlohmann::json;

namespace {

// A round trip of an accepted config must neither throw nor change it.
template <typename Config>
void round_trip(const Config& c) {
  try {
    const Config back = Config::from_json(c.to_json(), "rt");
    IB_FUZZ_CHECK(back == c, "round trip changed " + c.to_json().dump());
  } catch (const Error& e) {
    IB_FUZZ_CHECK(false, std::string("round trip threw: ") + e.what() + " for " + c.to_json().dump());
  }
}

void exercise(const VisionConfig& c) {
  (void)c.num_patches();
  (void)c.num_positions();
  (void)c.head_dim();
  round_trip(c);
}

void exercise(const QFormerConfig& c) {
  (void)c.head_dim();
  (void)c.has_cross_attention(c.num_hidden_layers > 0 ? c.num_hidden_layers - 1 : 0);
  if (c.num_hidden_layers <= 4096) (void)c.cross_attention_layers();
  round_trip(c);
}

void exercise(const T5Config& c) {
  (void)c.inner_dim();
  (void)c.decoder_start_id();
  round_trip(c);
}

void exercise(const LlamaConfig& c) {
  (void)c.head_dim();
  (void)c.num_key_value_groups();
  round_trip(c);
}

void exercise(const GenerationConfig& g) {
  try {
    g.validate();  // from_json accepted it: must not throw
  } catch (const Error& e) {
    IB_FUZZ_CHECK(false, std::string("validate() rejects an accepted config: ") + e.what());
  }
  round_trip(g);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const json j = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;

  try {
    const InstructBlipConfig c = InstructBlipConfig::from_json(j, "config.json");
    exercise(c.vision_config);
    exercise(c.qformer_config);
    if (c.is_t5()) exercise(c.t5());
    else exercise(c.llama());
    (void)c.text_hidden_size();
    (void)c.text_vocab_size();
    (void)c.text_pad_token_id();
    (void)c.text_bos_token_id();
    (void)c.text_eos_token_id();
    (void)c.text_model_type();
    try {
      c.validate("validate");
    } catch (const Error& e) {
      IB_FUZZ_CHECK(false, std::string("validate() rejects an accepted config: ") + e.what());
    }
    round_trip(c);
    try {
      exercise(GenerationConfig::from_model_config(c));
    } catch (const Error& e) {
      IB_FUZZ_CHECK(false, std::string("from_model_config rejects an accepted config: ") + e.what());
    }
  } catch (const Error&) {
  }

  try {
    exercise(GenerationConfig::from_json(j, "generation_config.json"));
  } catch (const Error&) {
  }
  try {
    exercise(GenerationConfig{}.merged_with(j));
  } catch (const Error&) {
  }

  // The same bytes as each sub-config (also reached through config.json, but with fewer
  // constraints to get past first).
  try {
    exercise(VisionConfig::from_json(j, "vision", "vision_config."));
  } catch (const Error&) {
  }
  try {
    exercise(QFormerConfig::from_json(j, "qformer"));
  } catch (const Error&) {
  }
  try {
    exercise(T5Config::from_json(j, "t5"));
  } catch (const Error&) {
  }
  try {
    exercise(LlamaConfig::from_json(j, "llama"));
  } catch (const Error&) {
  }
  return 0;
}

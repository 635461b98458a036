#pragma once
// The per-call decoding state of the decoder-only language models (LLaMA, OPT): the prompt until
// the first step runs it (the prefill), then the KV cache and the key mask over the cached
// positions. Opaque apart from these queries.
#include <cstdint>
#include <memory>

#include "instructblip/core/tensor.hpp"
#include "instructblip/models/language_model.hpp"

namespace instructblip::models {

class DecoderOnlyState : public LMState {
 public:
  struct Data;
  explicit DecoderOnlyState(std::unique_ptr<Data> data);
  ~DecoderOnlyState() override;
  std::int64_t batch() const override;
  /// True once the prompt has been run (after the first step()).
  bool prefilled() const;
  /// Number of positions held in the KV cache (prompt + fed tokens; 0 before the prefill).
  std::int64_t cached_positions() const;
  /// Attention mask over the cached positions, [batch, cached_positions] int64 (the prompt's mask
  /// before the prefill).
  Tensor attention_mask() const;
  /// The model's view of the state (an incomplete type outside the library).
  Data& data() const { return *d_; }

 private:
  std::unique_ptr<Data> d_;
};

}  // namespace instructblip::models

#pragma once
// Deterministic random weights for the decode benchmarks (built in memory, no checkpoint file).
#include <cstdint>
#include <cstring>

#include "instructblip/core/dtype.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/core/thread_pool.hpp"

namespace ibbench {

/// Cheap pseudo-random value in [-scale, scale) for index i (splitmix64 of the index).
inline float hash_uniform(std::uint64_t i, float scale) {
  std::uint64_t z = i + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (float(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * scale;
}

/// A float32 or bfloat16 tensor of offset + uniform(-scale, scale) values, the same for the same seed.
inline instructblip::Tensor random_tensor(const instructblip::Shape& s, instructblip::DType dt, float scale,
                                          float offset, std::uint64_t seed) {
  using namespace instructblip;
  Tensor t = Tensor::empty(s, dt);
  const std::int64_t n = t.numel();
  void* p = t.raw_mut();
  parallel_for(0, n, 1 << 20, [&](std::int64_t a, std::int64_t b) {
    for (std::int64_t i = a; i < b; ++i) {
      const float v = offset + hash_uniform(seed * 0x100000000ull + std::uint64_t(i), scale);
      if (dt == DType::F32)
        static_cast<float*>(p)[i] = v;
      else
        static_cast<std::uint16_t*>(p)[i] = f32_to_bf16(v);
    }
  });
  return t;
}

}  // namespace ibbench

#pragma once
// Rotary position embedding, HF `rotate_half` convention: within each head the dimension i
// pairs with i + head_dim/2; x' = x * cos + rotate_half(x) * sin, with
// inv_freq[i] = 1 / theta^(2i / head_dim) and angle = position * inv_freq (float32, as HF).
#include <cmath>
#include <cstdint>
#include <vector>

#include "instructblip/ops/linear.hpp"

namespace instructblip::ops {

inline std::vector<float> rope_inv_freq(int head_dim, float theta) {
  std::vector<float> f(std::size_t(head_dim / 2));
  for (int i = 0; i < head_dim / 2; ++i)
    f[std::size_t(i)] = 1.0f / std::pow(theta, float(2 * i) / float(head_dim));
  return f;
}

/// Rotates every head of every row of x [L, num_heads * head_dim] in place; row r is at
/// position positions[r].
template <typename T>
void rope(Out<T> x, const std::int64_t* positions, int num_heads, int head_dim, float theta) {
  if (head_dim % 2 != 0 || x.cols() != Eigen::Index(num_heads) * head_dim)
    throw InvalidArgument("rope: x has " + std::to_string(x.cols()) + " columns for " + std::to_string(num_heads) +
                          " heads of " + std::to_string(head_dim));
  const int half = head_dim / 2;
  const std::vector<float> inv = rope_inv_freq(head_dim, theta);
  std::vector<T> c(static_cast<std::size_t>(half)), s(static_cast<std::size_t>(half));
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const float p = float(positions[r]);
    for (int i = 0; i < half; ++i) {
      const float a = p * inv[std::size_t(i)];
      c[std::size_t(i)] = T(std::cos(a));
      s[std::size_t(i)] = T(std::sin(a));
    }
    for (int h = 0; h < num_heads; ++h) {
      T* v = x.row(r).data() + Eigen::Index(h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const T a = v[i], b = v[i + half];
        v[i] = a * c[std::size_t(i)] - b * s[std::size_t(i)];
        v[i + half] = b * c[std::size_t(i)] + a * s[std::size_t(i)];
      }
    }
  }
}

}  // namespace instructblip::ops

#pragma once
// Element-wise activations (in place) and a numerically stable row softmax.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "instructblip/ops/linear.hpp"

namespace instructblip::ops {

/// GELU with the exact erf: 0.5 x (1 + erf(x / sqrt 2))  (HF "gelu").
template <typename T>
void gelu(T* x, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) x[i] = T(0.5) * x[i] * (T(1) + std::erf(x[i] * T(0.70710678118654752440)));
}

/// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (HF "gelu_new").
template <typename T>
void gelu_tanh(T* x, std::size_t n) {
  const T c = T(0.79788456080286535588);  // sqrt(2/pi)
  for (std::size_t i = 0; i < n; ++i) {
    T v = x[i];
    x[i] = T(0.5) * v * (T(1) + std::tanh(c * (v + T(0.044715) * v * v * v)));
  }
}

/// SiLU / swish: x * sigmoid(x).
template <typename T>
void silu(T* x, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) x[i] = x[i] / (T(1) + std::exp(-x[i]));
}

template <typename T>
void relu(T* x, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) x[i] = std::max(x[i], T(0));
}

enum class Activation { Gelu, GeluTanh, Silu, Relu };

/// Maps an HF activation name ("gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish", "relu").
inline Activation parse_activation(const std::string& name) {
  if (name == "gelu") return Activation::Gelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return Activation::GeluTanh;
  if (name == "silu" || name == "swish") return Activation::Silu;
  if (name == "relu") return Activation::Relu;
  throw InvalidArgument("unsupported activation '" + name + "'");
}

template <typename T>
void activate(Activation a, T* x, std::size_t n) {
  switch (a) {
    case Activation::Gelu: gelu(x, n); return;
    case Activation::GeluTanh: gelu_tanh(x, n); return;
    case Activation::Silu: silu(x, n); return;
    case Activation::Relu: relu(x, n); return;
  }
}

/// Softmax of one row in place with std::exp: subtracts the max first; a row of all -inf becomes
/// all zeros.
template <typename T>
void softmax_row_std(T* x, std::size_t n) {
  if (n == 0) return;
  T m = *std::max_element(x, x + n);
  if (m == -std::numeric_limits<T>::infinity()) {
    std::fill(x, x + n, T(0));
    return;
  }
  T s = 0;
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  const T inv = T(1) / s;
  for (std::size_t i = 0; i < n; ++i) x[i] *= inv;
}

/// Softmax of one row in place (softmax_row_std).
template <typename T>
void softmax_row(T* x, std::size_t n) {
  softmax_row_std(x, n);
}
/// float: the same on the kernel levels (cpu_features()): at the AVX-512 level with a vectorised exp
/// (max relative error ~2 ulp against std::exp; inputs below -87.3, -inf included, give exactly 0;
/// a NaN makes the row NaN) and 16 partial sums; below it, the code above.
template <>
void softmax_row<float>(float* x, std::size_t n);

/// Row-wise softmax in place.
template <typename T>
void softmax(Out<T> x) {
  for (Eigen::Index r = 0; r < x.rows(); ++r) softmax_row(x.row(r).data(), std::size_t(x.cols()));
}

/// log-softmax of one row into `out` (may equal x), computed as x - max - log(sum(exp(x - max))).
template <typename T>
void log_softmax_row(const T* x, T* out, std::size_t n) {
  T m = *std::max_element(x, x + n);
  T s = 0;
  for (std::size_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  const T l = std::log(s);
  for (std::size_t i = 0; i < n; ++i) out[i] = x[i] - m - l;
}

}  // namespace instructblip::ops

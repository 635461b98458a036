#pragma once
// Normalisations over the last dimension (one row at a time).
#include <cmath>

#include "instructblip/ops/linear.hpp"

namespace instructblip::ops {

/// LayerNorm: (x - mean) / sqrt(var + eps) * gamma + beta, biased variance, per row.
/// In-place use (y == x) is allowed. gamma / beta may be null (identity / zero).
template <typename T>
void layer_norm(const In<T>& x, const T* gamma, const T* beta, T eps, Out<T> y) {
  if (x.rows() != y.rows() || x.cols() != y.cols()) throw InvalidArgument("layer_norm: shape mismatch");
  const Eigen::Index n = x.cols();
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const T* xr = x.row(r).data();
    T* yr = y.row(r).data();
    T mean = 0;
    for (Eigen::Index i = 0; i < n; ++i) mean += xr[i];
    mean /= T(n);
    T var = 0;
    for (Eigen::Index i = 0; i < n; ++i) {
      T d = xr[i] - mean;
      var += d * d;
    }
    var /= T(n);
    const T inv = T(1) / std::sqrt(var + eps);
    for (Eigen::Index i = 0; i < n; ++i) {
      T v = (xr[i] - mean) * inv;
      if (gamma) v *= gamma[i];
      if (beta) v += beta[i];
      yr[i] = v;
    }
  }
}

/// RMSNorm (T5LayerNorm / LlamaRMSNorm): x * rsqrt(mean(x^2) + eps) * weight; no mean
/// subtraction, no bias; the variance is accumulated in float32 (or wider). In-place allowed.
template <typename T>
void rms_norm(const In<T>& x, const T* weight, T eps, Out<T> y) {
  if (x.rows() != y.rows() || x.cols() != y.cols()) throw InvalidArgument("rms_norm: shape mismatch");
  const Eigen::Index n = x.cols();
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const T* xr = x.row(r).data();
    T* yr = y.row(r).data();
    float ss = 0;
    for (Eigen::Index i = 0; i < n; ++i) ss += float(xr[i]) * float(xr[i]);
    const float inv = 1.0f / std::sqrt(ss / float(n) + float(eps));
    for (Eigen::Index i = 0; i < n; ++i) yr[i] = weight ? T(weight[i] * T(float(xr[i]) * inv)) : T(float(xr[i]) * inv);
  }
}

}  // namespace instructblip::ops

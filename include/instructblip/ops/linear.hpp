#pragma once
// Dense layers in HuggingFace's weight layout: W is [out_features, in_features], y = x W^T + b.
#include <Eigen/Core>

#include "instructblip/core/error.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/core/thread_pool.hpp"

namespace instructblip::ops {

template <typename T>
using In = Eigen::Ref<const RowMatrix<T>>;
template <typename T>
using Out = Eigen::Ref<RowMatrix<T>>;

/// y[M, N] = x[M, K] * W[N, K]^T (+ bias[N]). `y` must not alias `x`. The output columns
/// (weight rows) are split across the thread pool, which also parallelises the M = 1
/// matrix-vector case of decoding.
template <typename T>
void linear(const In<T>& x, const In<T>& W, const T* bias, Out<T> y) {
  if (x.cols() != W.cols() || y.rows() != x.rows() || y.cols() != W.rows())
    throw InvalidArgument("linear: x [" + std::to_string(x.rows()) + ", " + std::to_string(x.cols()) + "] W [" +
                          std::to_string(W.rows()) + ", " + std::to_string(W.cols()) + "] y [" +
                          std::to_string(y.rows()) + ", " + std::to_string(y.cols()) + "]");
  const std::int64_t N = W.rows();
  const std::int64_t work = std::int64_t(x.rows()) * N * std::int64_t(x.cols());
  const std::int64_t grain = work < (1 << 16) ? N : 16;
  parallel_for(0, N, grain, [&](std::int64_t n0, std::int64_t n1) {
    auto yb = y.middleCols(n0, n1 - n0);
    yb.noalias() = x * W.middleRows(n0, n1 - n0).transpose();
    if (bias) yb.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(bias + n0, n1 - n0);
  });
}

/// Convenience overload returning a new matrix.
template <typename T>
RowMatrix<T> linear(const In<T>& x, const In<T>& W, const T* bias = nullptr) {
  RowMatrix<T> y(x.rows(), W.rows());
  linear<T>(x, W, bias, y);
  return y;
}

}  // namespace instructblip::ops

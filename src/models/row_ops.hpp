#pragma once
// Row-parallel helpers shared by the vision encoder and the Q-Former (private to src/models).
#include <algorithm>

#include "instructblip/core/thread_pool.hpp"
#include "instructblip/ops/ops.hpp"

namespace instructblip::models::detail {

using ops::In;
using ops::Out;

/// LayerNorm over rows, rows split across the thread pool. In-place (x == y) allowed.
inline void layer_norm_rows(const In<float>& x, const Tensor& w, const Tensor& b, float eps, Out<float> y) {
  const std::int64_t grain = std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(1, x.cols()));
  parallel_for(0, x.rows(), grain, [&](std::int64_t r0, std::int64_t r1) {
    ops::layer_norm<float>(x.middleRows(r0, r1 - r0), w.data<float>(), b.data<float>(), eps,
                           y.middleRows(r0, r1 - r0));
  });
}

/// Activation in place over a dense matrix, split across the thread pool.
inline void activate_rows(ops::Activation act, MatrixF& m) {
  const std::int64_t cols = m.cols();
  const std::int64_t grain = std::max<std::int64_t>(1, 8192 / std::max<std::int64_t>(1, cols));
  parallel_for(0, m.rows(), grain, [&](std::int64_t r0, std::int64_t r1) {
    ops::activate<float>(act, m.data() + r0 * cols, std::size_t((r1 - r0) * cols));
  });
}

}  // namespace instructblip::models::detail

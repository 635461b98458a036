#include "instructblip/layers/loss.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "instructblip/core/error.hpp"

namespace instructblip::layers {

float cross_entropy(const Tensor& logits, const Tensor& labels, bool shift_labels) {
  if (!logits.defined() || logits.dtype() != DType::F32 || logits.ndim() != 3)
    throw InvalidArgument("cross_entropy: logits must be float32 [B, T, V]");
  const std::int64_t B = logits.dim(0), T = logits.dim(1), V = logits.dim(2);
  if (!labels.defined() || labels.dtype() != DType::I64 || labels.shape() != Shape{B, T})
    throw InvalidArgument("cross_entropy: labels must be int64 " + shape_str({B, T}) + ", got " +
                          (labels.defined() ? std::string(dtype_name(labels.dtype())) + " " + shape_str(labels.shape())
                                            : std::string("undefined")));
  const std::int64_t* lab = labels.data<std::int64_t>();
  const float* lg = logits.data<float>();
  const std::int64_t shift = shift_labels ? 1 : 0;
  double sum = 0.0;
  std::int64_t count = 0;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t + shift < T; ++t) {
      const std::int64_t y = lab[b * T + t + shift];
      if (y == kIgnoreIndex) continue;
      if (y < 0 || y >= V)
        throw InvalidArgument("cross_entropy: label " + std::to_string(y) + " is outside the vocabulary of " +
                              std::to_string(V));
      // log-sum-exp around the row maximum, in double: -log_softmax(row)[y] = max + log(sum exp(x - max)) - x[y].
      const float* row = lg + (b * T + t) * V;
      const float mx = *std::max_element(row, row + V);
      double z = 0.0;
      for (std::int64_t j = 0; j < V; ++j) z += std::exp(double(row[j]) - double(mx));
      sum += double(mx) + std::log(z) - double(row[y]);
      ++count;
    }
  return count > 0 ? float(sum / double(count)) : std::numeric_limits<float>::quiet_NaN();
}

}  // namespace instructblip::layers

#include "instructblip/layers/kv_cache.hpp"

#include <algorithm>
#include <string>
#include <utility>

#include "instructblip/core/error.hpp"

namespace instructblip::layers {

KVCache::KVCache(std::int64_t layers, std::int64_t rows, std::int64_t dim, std::int64_t capacity)
    : layers_(layers), dim_(dim), capacity_(std::max<std::int64_t>(capacity, 1)) {
  if (layers < 0 || rows < 0 || dim < 0)
    throw InvalidArgument("KVCache: negative size (layers " + std::to_string(layers) + ", rows " +
                          std::to_string(rows) + ", dim " + std::to_string(dim) + ")");
  rows_.resize(std::size_t(rows));
  for (Row& r : rows_) {
    r.k.assign(std::size_t(layers), MatrixF(capacity_, dim));
    r.v.assign(std::size_t(layers), MatrixF(capacity_, dim));
  }
}

void KVCache::reserve(std::int64_t positions) {
  if (positions <= capacity_) return;
  const std::int64_t cap = std::max(positions, 2 * capacity_);
  for (Row& r : rows_) {
    for (MatrixF& m : r.k) m.conservativeResize(cap, dim_);
    for (MatrixF& m : r.v) m.conservativeResize(cap, dim_);
  }
  capacity_ = cap;
}

void KVCache::write(std::int64_t layer, std::int64_t row, const float* keys, const float* values, std::int64_t n) {
  if (layer < 0 || layer >= layers_ || row < 0 || row >= rows() || n < 0 || length_ + n > capacity_)
    throw InvalidArgument("KVCache::write: layer " + std::to_string(layer) + ", row " + std::to_string(row) + ", " +
                          std::to_string(n) + " positions at " + std::to_string(length_) + " do not fit a cache of " +
                          std::to_string(layers_) + " layers x " + std::to_string(rows()) + " rows x " +
                          std::to_string(capacity_) + " positions");
  Row& r = rows_[std::size_t(row)];
  std::copy_n(keys, n * dim_, r.k[std::size_t(layer)].data() + length_ * dim_);
  std::copy_n(values, n * dim_, r.v[std::size_t(layer)].data() + length_ * dim_);
}

void KVCache::advance(std::int64_t n) {
  if (n < 0 || length_ + n > capacity_)
    throw InvalidArgument("KVCache::advance: " + std::to_string(n) + " positions past " + std::to_string(length_) +
                          " exceed the capacity " + std::to_string(capacity_));
  length_ += n;
}

void KVCache::select_rows(const std::vector<std::int64_t>& index) {
  if (index.empty()) throw InvalidArgument("KVCache::select_rows: empty index");
  const std::int64_t B = rows();
  std::vector<int> uses(std::size_t(B), 0);
  for (std::int64_t i : index) {
    if (i < 0 || i >= B)
      throw InvalidArgument("KVCache::select_rows: row " + std::to_string(i) + " outside [0, " + std::to_string(B) +
                            ")");
    ++uses[std::size_t(i)];
  }
  std::vector<Row> out(index.size());
  for (std::size_t i = 0; i < index.size(); ++i) {
    const std::size_t src = std::size_t(index[i]);
    if (--uses[src] == 0)
      out[i] = std::move(rows_[src]);  // last use of this row: no copy
    else
      out[i] = rows_[src];
  }
  rows_ = std::move(out);
}

}  // namespace instructblip::layers

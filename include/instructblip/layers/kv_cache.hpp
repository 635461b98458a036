#pragma once
// The self-attention key / value cache of a decoder, shared by every language model (T5's
// decoder, LLaMA): per row (batch x beams) and layer, a [capacity, dim] float32 matrix of keys and
// one of values, of which the first length() positions are valid.
//
// Usage per forward step over T new positions: reserve(length() + T); for every layer write the
// new keys / values at [length(), length() + T) (write()), attend over keys(l, b).topRows(length()
// + T); then advance(T). Capacity grows by at least doubling, so a long generation reallocates
// O(log n) times and the first allocation can stay small whatever max_new_tokens says.
#include <cstdint>
#include <vector>

#include "instructblip/core/tensor.hpp"

namespace instructblip::layers {

class KVCache {
 public:
  KVCache() = default;
  /// `rows` rows of `layers` layers, each [max(capacity, 1), dim], length 0.
  KVCache(std::int64_t layers, std::int64_t rows, std::int64_t dim, std::int64_t capacity);

  std::int64_t layers() const { return layers_; }
  std::int64_t rows() const { return std::int64_t(rows_.size()); }
  std::int64_t dim() const { return dim_; }
  /// Valid positions (the same for every row and layer).
  std::int64_t length() const { return length_; }
  /// Allocated positions per row and layer.
  std::int64_t capacity() const { return capacity_; }

  /// Makes room for `positions` positions: when more than capacity(), the capacity becomes
  /// max(positions, 2 * capacity()); the valid positions are kept.
  void reserve(std::int64_t positions);

  /// Stores `n` positions of keys and values ([n, dim] row-major each) of `row` in `layer` at
  /// positions [length(), length() + n); needs capacity() >= length() + n (reserve first).
  void write(std::int64_t layer, std::int64_t row, const float* keys, const float* values, std::int64_t n);
  /// Marks `n` more positions valid (after every layer has written them).
  void advance(std::int64_t n);

  /// The [capacity, dim] key / value storage of (`layer`, `row`); rows >= length() (+ pending
  /// writes) are unspecified.
  const MatrixF& keys(std::int64_t layer, std::int64_t row) const { return rows_[std::size_t(row)].k[std::size_t(layer)]; }
  const MatrixF& values(std::int64_t layer, std::int64_t row) const {
    return rows_[std::size_t(row)].v[std::size_t(layer)];
  }

  /// Replaces the rows by rows[index[i]] (beam reordering; expansion or shrinking when index.size()
  /// differs from rows()). A row's last use moves it, the others copy it. InvalidArgument for an
  /// empty index or one outside [0, rows()).
  void select_rows(const std::vector<std::int64_t>& index);

 private:
  struct Row {
    std::vector<MatrixF> k, v;  // per layer [capacity, dim]
  };
  std::vector<Row> rows_;
  std::int64_t layers_ = 0, dim_ = 0, length_ = 0, capacity_ = 0;
};

}  // namespace instructblip::layers

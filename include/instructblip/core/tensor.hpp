#pragma once
// Tensor: a contiguous, row-major n-d array with a dtype. It either owns its buffer or
// borrows memory owned by someone else (a memory-mapped checkpoint); a shared "keep-alive"
// handle makes borrowed views safe to outlive the object that handed them out.
#include <Eigen/Core>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "instructblip/core/dtype.hpp"
#include "instructblip/core/error.hpp"

namespace instructblip {

using Shape = std::vector<std::int64_t>;

template <typename T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixF = RowMatrix<float>;
template <typename T>
using MatrixMap = Eigen::Map<RowMatrix<T>>;
template <typename T>
using ConstMatrixMap = Eigen::Map<const RowMatrix<T>>;

std::string shape_str(const Shape& s);
/// Product of the dimensions; throws TensorError on a negative dimension or on overflow of int64.
std::int64_t shape_numel(const Shape& s);

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<std::int64_t> { static constexpr DType value = DType::I64; };
template <> struct dtype_of<std::uint8_t> { static constexpr DType value = DType::U8; };

class Tensor {
 public:
  Tensor() = default;

  /// A new owning tensor, zero-filled.
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32);
  /// A new owning tensor, uninitialised contents (for outputs that are fully written).
  static Tensor empty(const Shape& shape, DType dtype = DType::F32);
  /// A new owning float32 / int64 tensor holding a copy of `values` (size must match).
  static Tensor from_vector(const Shape& shape, const std::vector<float>& values);
  static Tensor from_vector(const Shape& shape, const std::vector<std::int64_t>& values);
  /// A view of memory owned elsewhere. `keep_alive` (may be null) is held for the view's lifetime.
  static Tensor borrow(const void* data, const Shape& shape, DType dtype,
                       std::shared_ptr<const void> keep_alive = nullptr);

  /// False for a default-constructed tensor.
  bool defined() const { return defined_; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  std::int64_t dim(int i) const;  // negative i counts from the back
  int ndim() const { return int(shape_.size()); }
  std::int64_t numel() const { return numel_; }
  std::size_t nbytes() const { return std::size_t(numel_) * dtype_size(dtype_); }
  /// True when the tensor views memory it does not own (e.g. a mapped file).
  bool is_borrowed() const { return borrowed_; }

  const void* raw() const { return data_; }
  /// Writable pointer; throws for borrowed (read-only) memory.
  void* raw_mut();

  template <typename T> const T* data() const { check_dtype(dtype_of<T>::value); return static_cast<const T*>(data_); }
  template <typename T> T* data() { check_dtype(dtype_of<T>::value); return static_cast<T*>(raw_mut()); }

  /// A view with a new shape of the same element count (shares memory).
  Tensor reshape(const Shape& shape) const;
  /// Rows [begin, end) along dimension 0 as a view (shares memory).
  Tensor slice0(std::int64_t begin, std::int64_t end) const;
  /// An owning copy.
  Tensor clone() const;
  /// A tensor of dtype `to`; returns *this (shared) when already of that dtype.
  Tensor to(DType to) const;

  /// The tensor as a matrix [numel / last_dim, last_dim] (a 1-d tensor is one row).
  template <typename T> ConstMatrixMap<T> matrix() const {
    auto rc = rows_cols();
    return ConstMatrixMap<T>(data<T>(), rc.first, rc.second);
  }
  template <typename T> MatrixMap<T> matrix() {
    auto rc = rows_cols();
    return MatrixMap<T>(data<T>(), rc.first, rc.second);
  }
  /// Row-major [rows, cols] view of the whole tensor; rows * cols must equal numel.
  template <typename T> ConstMatrixMap<T> matrix(std::int64_t rows, std::int64_t cols) const {
    check_matrix(rows, cols);
    return ConstMatrixMap<T>(data<T>(), rows, cols);
  }
  template <typename T> MatrixMap<T> matrix(std::int64_t rows, std::int64_t cols) {
    check_matrix(rows, cols);
    return MatrixMap<T>(data<T>(), rows, cols);
  }

  /// Element access for tests and small glue code (float32 / int64 only).
  float f(std::int64_t flat_index) const { return data<float>()[flat_index]; }
  std::int64_t i(std::int64_t flat_index) const { return data<std::int64_t>()[flat_index]; }

 private:
  std::pair<std::int64_t, std::int64_t> rows_cols() const;
  void check_dtype(DType want) const;
  void check_matrix(std::int64_t rows, std::int64_t cols) const;

  std::shared_ptr<const void> holder_;
  const void* data_ = nullptr;
  Shape shape_;
  std::int64_t numel_ = 0;
  DType dtype_ = DType::F32;
  bool borrowed_ = false;
  bool defined_ = false;
};

}  // namespace instructblip

#include "instructblip/core/tensor.hpp"

#include <sys/mman.h>

#include <cstring>
#include <limits>
#include <sstream>

namespace instructblip {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

std::int64_t shape_numel(const Shape& s) {
  std::int64_t n = 1;
  for (std::int64_t d : s) {
    if (d < 0) throw TensorError("negative dimension in shape " + shape_str(s));
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d)
      throw TensorError("shape " + shape_str(s) + " has more elements than fit in int64");
    n *= d;
  }
  return n;
}

namespace {
struct AlignedDeleter {
  std::size_t align = 64;
  void operator()(const void* p) const { ::operator delete(const_cast<void*>(p), std::align_val_t(align)); }
};

// Buffers of this size and more are aligned to 2 MiB and offered to the kernel for transparent
// huge pages (MADV_HUGEPAGE; THP in "madvise" mode is the common default). Weights converted or
// packed at load and large activations then take one page fault per 2 MiB instead of one per
// 4 KiB; on virtual machines, where each fault is costly, that is most of a bf16 model's load time.
constexpr std::size_t kHugeAlign = std::size_t(2) << 20;
constexpr std::size_t kHugeMin = std::size_t(8) << 20;
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  t.defined_ = true;
  std::int64_t bytes = t.numel_ * std::int64_t(dtype_size(dtype));
  if (t.numel_ != 0 && bytes / t.numel_ != std::int64_t(dtype_size(dtype)))
    throw TensorError("tensor of shape " + shape_str(shape) + " is too large");
  std::size_t alloc = std::size_t(bytes > 0 ? bytes : 1);
  const std::size_t align = alloc >= kHugeMin ? kHugeAlign : 64;
  void* p = ::operator new(alloc, std::align_val_t(align));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (align == kHugeAlign) ::madvise(p, alloc / kHugeAlign * kHugeAlign, MADV_HUGEPAGE);  // best effort
#endif
  t.holder_ = std::shared_ptr<const void>(p, AlignedDeleter{align});
  t.data_ = p;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(const_cast<void*>(t.data_), 0, t.nbytes());
  return t;
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<float>& values) {
  Tensor t = empty(shape, DType::F32);
  if (std::int64_t(values.size()) != t.numel_)
    throw TensorError("from_vector: " + std::to_string(values.size()) + " values for shape " + shape_str(shape));
  std::memcpy(const_cast<void*>(t.data_), values.data(), t.nbytes());
  return t;
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<std::int64_t>& values) {
  Tensor t = empty(shape, DType::I64);
  if (std::int64_t(values.size()) != t.numel_)
    throw TensorError("from_vector: " + std::to_string(values.size()) + " values for shape " + shape_str(shape));
  std::memcpy(const_cast<void*>(t.data_), values.data(), t.nbytes());
  return t;
}

Tensor Tensor::borrow(const void* data, const Shape& shape, DType dtype, std::shared_ptr<const void> keep_alive) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  t.data_ = data;
  t.holder_ = std::move(keep_alive);
  t.borrowed_ = true;
  t.defined_ = true;
  return t;
}

std::int64_t Tensor::dim(int i) const {
  int n = ndim();
  int k = i < 0 ? i + n : i;
  if (k < 0 || k >= n)
    throw TensorError("dimension " + std::to_string(i) + " out of range for shape " + shape_str(shape_));
  return shape_[std::size_t(k)];
}

void* Tensor::raw_mut() {
  if (borrowed_) throw TensorError("tensor " + shape_str(shape_) + " borrows read-only memory");
  return const_cast<void*>(data_);
}

void Tensor::check_dtype(DType want) const {
  if (!defined_) throw TensorError("access to an undefined tensor");
  if (dtype_ != want)
    throw TensorError(std::string("tensor has dtype ") + dtype_name(dtype_) + ", expected " + dtype_name(want));
}

void Tensor::check_matrix(std::int64_t rows, std::int64_t cols) const {
  if (rows < 0 || cols < 0 || rows * cols != numel_)
    throw TensorError("cannot view tensor " + shape_str(shape_) + " as [" + std::to_string(rows) + ", " +
                      std::to_string(cols) + "]");
}

std::pair<std::int64_t, std::int64_t> Tensor::rows_cols() const {
  if (shape_.empty()) return {1, 1};
  std::int64_t cols = shape_.back();
  return {cols == 0 ? 0 : numel_ / cols, cols};
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape s = shape;
  int infer = -1;
  std::int64_t known = 1;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      if (infer >= 0) throw TensorError("reshape: more than one -1 in " + shape_str(shape));
      infer = int(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || numel_ % known != 0)
      throw TensorError("reshape: cannot infer -1 in " + shape_str(shape) + " for " + shape_str(shape_));
    s[std::size_t(infer)] = numel_ / known;
  }
  if (shape_numel(s) != numel_)
    throw TensorError("reshape: " + shape_str(shape_) + " -> " + shape_str(shape) + " changes the element count");
  Tensor t = *this;
  t.shape_ = s;
  return t;
}

Tensor Tensor::slice0(std::int64_t begin, std::int64_t end) const {
  if (shape_.empty() || begin < 0 || end < begin || end > shape_[0])
    throw TensorError("slice0 [" + std::to_string(begin) + ", " + std::to_string(end) + ") out of range for " +
                      shape_str(shape_));
  Tensor t = *this;
  std::int64_t row = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  t.shape_[0] = end - begin;
  t.numel_ = row * (end - begin);
  t.data_ = static_cast<const char*>(data_) + std::size_t(begin * row) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_);
  if (nbytes()) std::memcpy(const_cast<void*>(t.data_), data_, nbytes());
  return t;
}

Tensor Tensor::to(DType to) const {
  if (to == dtype_) return *this;
  if (dtype_ == DType::I64 || to == DType::I64 || dtype_ == DType::U8 || to == DType::U8)
    throw TensorError(std::string("no conversion between ") + dtype_name(dtype_) + " and " + dtype_name(to));
  Tensor out = empty(shape_, to);
  void* dst = const_cast<void*>(out.data_);
  if (to == DType::F32) {
    convert_to_f32(data_, dtype_, static_cast<float*>(dst), std::size_t(numel_));
  } else if (dtype_ == DType::F32) {
    convert_from_f32(static_cast<const float*>(data_), to, dst, std::size_t(numel_));
  } else {  // f16 <-> bf16 through f32 (exact up-cast, then one rounding)
    Tensor mid = this->to(DType::F32);
    convert_from_f32(static_cast<const float*>(mid.data_), to, dst, std::size_t(numel_));
  }
  return out;
}

void convert_to_f32(const void* src, DType from, float* dst, std::size_t n) {
  switch (from) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16: {
      const auto* s = static_cast<const std::uint16_t*>(src);
      for (std::size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      const auto* s = static_cast<const std::uint16_t*>(src);
      for (std::size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::I64:
    case DType::U8: break;
  }
  throw TensorError("convert_to_f32: integer source");
}

void convert_from_f32(const float* src, DType to, void* dst, std::size_t n) {
  switch (to) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16: {
      auto* d = static_cast<std::uint16_t*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      auto* d = static_cast<std::uint16_t*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::I64:
    case DType::U8: break;
  }
  throw TensorError("convert_from_f32: integer destination");
}

}  // namespace instructblip

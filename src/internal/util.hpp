#pragma once
// Small helpers several parts of the library need (private to src/, not installed).
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <string>

#include "instructblip/core/error.hpp"
#include "instructblip/core/tensor.hpp"
#include "instructblip/ops/linear.hpp"

namespace instructblip::detail {

/// "F32 [2, 3]" or "undefined", for error messages about a tensor argument.
inline std::string describe(const Tensor& t) {
  return t.defined() ? std::string(dtype_name(t.dtype())) + " " + shape_str(t.shape()) : std::string("undefined");
}

/// The message of a GenerationLimits violation: "<what> (<value>) exceeds the limit of <limit>
/// (GenerationLimits::<limit_name>)".
inline std::string over_limit(const std::string& what, std::int64_t value, const char* limit_name,
                              std::int64_t limit) {
  return what + " (" + std::to_string(value) + ") exceeds the limit of " + std::to_string(limit) +
         " (GenerationLimits::" + limit_name + ")";
}

/// True when `path` names a regular file (a directory of that name does not count).
inline bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

/// True when `a` and `b` name the same existing file (same device and inode).
inline bool same_file(const std::string& a, const std::string& b) {
  struct stat sa {}, sb {};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

/// Copies the file `from` to `to` byte for byte (replacing it); IoError when either fails.
inline void copy_file(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) throw IoError(from + ": cannot open");
  std::ofstream out(to, std::ios::binary | std::ios::trunc);
  if (!out) throw IoError(to + ": cannot open for writing");
  out << in.rdbuf();
  if (!out) throw IoError(to + ": write failed");
}

/// A float32 tensor of `shape` holding the rows of `m` (which must have shape's element count).
inline Tensor to_tensor(const ops::In<float>& m, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F32);
  if (t.numel() != m.size()) throw TensorError("internal shape mismatch for " + shape_str(shape));
  t.matrix<float>(m.rows(), m.cols()) = m;
  return t;
}

}  // namespace instructblip::detail

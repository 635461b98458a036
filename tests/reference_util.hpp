#pragma once
// Shared helpers for the reference tests: fixture paths, reference tensors, comparisons.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "instructblip/core/tensor.hpp"
#include "instructblip/io/safetensors.hpp"

namespace ibtest {

inline std::string data_dir() { return IB_TEST_DATA_DIR; }
inline std::string tmp_dir() { return IB_TEST_TMP_DIR; }

/// tests/data/<case>/reference.safetensors and reference.json of a fixture case.
struct Reference {
  explicit Reference(const std::string& name)
      : dir(data_dir() + "/" + name),
        tensors(instructblip::io::SafeTensors::open(dir + "/reference.safetensors")),
        json(nlohmann::json::parse(std::ifstream(dir + "/reference.json"))) {}
  instructblip::Tensor get(const std::string& key) const { return tensors.get(key); }
  std::string model_dir() const { return dir + "/model"; }
  std::string dir;
  instructblip::io::SafeTensors tensors;
  nlohmann::json json;
};

/// Largest |a - b| over all elements (shapes must match; returns +inf otherwise).
inline double max_abs_diff(const instructblip::Tensor& a, const instructblip::Tensor& b) {
  if (a.shape() != b.shape()) return INFINITY;
  const instructblip::Tensor fa = a.to(instructblip::DType::F32), fb = b.to(instructblip::DType::F32);
  double m = 0;
  for (std::int64_t i = 0; i < fa.numel(); ++i) m = std::max(m, double(std::fabs(fa.f(i) - fb.f(i))));
  return m;
}

/// Rows of an int64 [B, L] tensor.
inline std::vector<std::vector<std::int64_t>> rows_of(const instructblip::Tensor& t) {
  std::vector<std::vector<std::int64_t>> r(static_cast<std::size_t>(t.dim(0)));
  const std::int64_t L = t.numel() / t.dim(0);
  for (std::int64_t b = 0; b < t.dim(0); ++b)
    r[std::size_t(b)].assign(t.data<std::int64_t>() + b * L, t.data<std::int64_t>() + (b + 1) * L);
  return r;
}

inline bool same_ids(const instructblip::Tensor& a, const instructblip::Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  return std::equal(a.data<std::int64_t>(), a.data<std::int64_t>() + a.numel(), b.data<std::int64_t>());
}

}  // namespace ibtest

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

  /// The image files of reference input `input` ("a", "b", ...), as the reference run opened them
  /// (from tests/data/images/).
  std::vector<std::string> image_paths(const std::string& input) const {
    std::vector<std::string> out;
    for (const auto& f : json["inputs"][input]["images"]) {
      const std::string path = f.get<std::string>();
      out.push_back(data_dir() + "/images/" + path.substr(path.rfind('/') + 1));
    }
    return out;
  }
  /// The prompts of reference input `input` (none for a BLIP-2 input without a prompt).
  std::vector<std::string> texts(const std::string& input) const {
    const auto& t = json["inputs"][input]["text"];
    if (t.is_null()) return {};
    if (t.is_string()) return {t.get<std::string>()};
    return t.get<std::vector<std::string>>();
  }
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

/// Largest |reference - ours| over generate()'s per-step scores: `reference` [B, steps, vocab] as
/// transformers stores them, `scores` one [B, vocab] tensor per step. A -inf on one side must be a
/// -inf on the other (else +inf is returned, as for a different number of steps).
inline double max_scores_diff(const instructblip::Tensor& reference, const std::vector<instructblip::Tensor>& scores) {
  const std::int64_t B = reference.dim(0), steps = reference.dim(1), V = reference.dim(2);
  if (std::int64_t(scores.size()) != steps) return INFINITY;
  double err = 0;
  for (std::int64_t t = 0; t < steps; ++t)
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t v = 0; v < V; ++v) {
        const float e = reference.f((b * steps + t) * V + v), a = scores[std::size_t(t)].f(b * V + v);
        if (std::isinf(e) || std::isinf(a)) {
          if (e != a) return INFINITY;
        } else {
          err = std::max(err, double(std::fabs(e - a)));
        }
      }
  return err;
}

inline bool same_ids(const instructblip::Tensor& a, const instructblip::Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  return std::equal(a.data<std::int64_t>(), a.data<std::int64_t>() + a.numel(), b.data<std::int64_t>());
}

}  // namespace ibtest

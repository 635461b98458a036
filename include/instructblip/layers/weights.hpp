#pragma once
// Where a model part's weights come from, in which format it keeps its matrices, and the
// declarative tensor table every model part describes its weights with (WeightVisitor).
//
// Every model part binds two kinds of weights by their HuggingFace names:
//  * plain tensors (norms, biases, embeddings, position tables) - always float32;
//  * weight matrices (nn.Linear weights, [out_features, in_features]) - kept as an
//    ops::WeightMatrix whose format the caller chooses at load (WeightPolicy).
// A checkpoint saved quantised (see InstructBlipForConditionalGeneration::save_pretrained) holds
// "<name>.q8_0" / "<name>.q4_0" tensors instead of "<name>"; such matrices are used as stored,
// without re-quantising.
#include <functional>
#include <string>
#include <vector>

#include "instructblip/core/tensor.hpp"
#include "instructblip/ops/weights.hpp"

namespace instructblip::io {
class Checkpoint;
}

namespace instructblip::layers {

/// What a weight matrix is for; the WeightPolicy maps it to a storage format.
enum class MatrixRole : std::uint8_t {
  Vision,      // vision encoder linears (many rows per product: compute-bound)
  QFormer,     // Q-Former linears (tens of rows)
  Text,        // language-model projections (one row per decode step: bandwidth-bound)
  T5FfnOut,    // Flan-T5's FFN output projection `wo` (kept in higher precision)
  OutputHead,  // language-model lm_head
};

/// The weight format chosen at load (`--weights f32|bf16|q8_0|q4_0`) and what it means per role:
///
/// | format | Vision / QFormer            | Text      | T5FfnOut | OutputHead |
/// |--------|-----------------------------|-----------|----------|------------|
/// | f32    | f32                         | f32       | f32      | f32        |
/// | bf16   | bf16 panels, bf16 compute   | bf16      | bf16     | bf16       |
/// | q8_0   | bf16 panels, bf16 compute   | q8_0      | bf16     | q8_0       |
/// | q4_0   | bf16 panels, bf16 compute   | q4_0      | bf16     | q8_0       |
///
/// The vision encoder and the Q-Former are compute-bound, so quantising them saves no time; they
/// stay bf16 under every reduced format. Layout: under a reduced format every f32 / bf16 matrix is
/// packed into panels at load (packs_in_place); under f32, a matrix stored as f32 is used in place
/// (row-major, mapped) and one converted from another dtype is packed. q8_0 matrices, quantised at
/// load or stored so, take ops::preferred_layout (16-row panels at the AVX-512 level without AMX,
/// whose integer kernels read them: a stored one is repacked once and its mapped pages released). T5's FFN output projection `wo` is never quantised:
/// transformers keeps it in float32 against float16 overflow (`_keep_in_fp32_modules`); bfloat16
/// has float32's exponent range, so it is kept bf16. The output head is never below 8 bits.
/// Arithmetic: under f32 everything is float32. Under a reduced format, products over many rows
/// (the vision encoder, the Q-Former, the language model's prompt) round activations and weights
/// to bf16 and accumulate in float32 (AMX / AVX512-BF16), as a bf16 model does; one-row products
/// (decoding) keep float32 activations and stream the stored weights.
struct WeightPolicy {
  ops::WeightFormat format = ops::WeightFormat::F32;
  /// Under a reduced format, many-row products use bf16 arithmetic (true, as a bf16 model computes)
  /// or float32 arithmetic on the exact stored weights (false: for a bf16 checkpoint kept as bf16,
  /// the same values as the float32 model, with half its memory).
  bool bf16_arithmetic = true;

  ops::WeightFormat format_for(MatrixRole role) const;
  ops::WeightLayout layout_for(MatrixRole role) const;
  /// Under a reduced format: true, every f32 / bf16 matrix is packed into panels at load even when
  /// the checkpoint stores it in the requested format (its mapped pages are then released). Many-row
  /// products then need no per-call packing (which cost as much as the product), and decoding
  /// streams weights from huge-page anonymous memory instead of 4 KiB file pages (-35% per token on
  /// a virtual machine, where first touches and TLB misses of file pages are costly). Under f32:
  /// false, an f32 checkpoint stays mapped in place (no second copy).
  bool packs_in_place(MatrixRole role) const;
  /// Arithmetic of many-row products for matrices of `role`.
  ops::GemmCompute compute_for(MatrixRole role) const;
};

/// Looks tensors up by name. `find` returns an undefined Tensor when the name is absent.
class WeightSource {
 public:
  using Find = std::function<Tensor(const std::string& name)>;
  /// Returns the tensor `name` of exactly `shape` in its stored dtype, or throws TensorError.
  using Get = std::function<Tensor(const std::string& name, const Shape& shape)>;
  /// `where` names the source in errors ("checkpoint <dir>", "the weight map", ...).
  WeightSource(Find find, std::string where);
  WeightSource(Find find, Get get, std::string where);
  /// The tensors of a checkpoint (zero-copy views of its mapped files).
  /// The tensors of a checkpoint (zero-copy views of its mapped files). Weights that are converted
  /// on the way (another dtype, panels, quantised) release the mapped pages they were read from,
  /// so the file's copy does not stay resident beside the converted one.
  static WeightSource from_checkpoint(const io::Checkpoint& checkpoint);

  /// The float tensor `name` with exactly `shape`, as float32 (a view when stored as F32, else
  /// converted exactly). TensorError when it is missing, mis-shaped or not F32 / F16 / BF16.
  Tensor f32(const std::string& name, const Shape& shape) const;
  /// The weight matrix `name` of `shape` ([N, K]): the stored quantised form when the source
  /// has "<name>.q8_0" / "<name>.q4_0" (shape checked), else the float tensor converted to
  /// `format` in `layout` (zero-copy where the dtype allows).
  ops::WeightMatrix matrix(const std::string& name, const Shape& shape, ops::WeightFormat format,
                           ops::WeightLayout layout, bool pack_in_place = false) const;
  /// True when the source holds `name` in a quantised form.
  bool is_quantised(const std::string& name) const;

 private:
  Tensor get(const std::string& name, const Shape& shape) const;
  Find find_;
  Get get_;
  std::function<void(const std::string& name)> release_;  // the source's copy is no longer needed
  std::string where_;
};

/// The names a matrix called `name` may be stored under (the plain name and the quantised parts),
/// for the check that a checkpoint holds no unbound tensor.
std::vector<std::string> matrix_storage_names(const std::string& name);

/// A dense layer: y = x W^T (+ b), W kept as an ops::WeightMatrix.
struct Linear {
  ops::WeightMatrix w;
  Tensor b;  // float32 [N] or undefined
  ops::GemmCompute compute = ops::GemmCompute::F32;

  std::int64_t out_features() const { return w.rows(); }
  std::int64_t in_features() const { return w.cols(); }
  /// y = x W^T + b, then `activation` when given (fused into the product).
  void operator()(const ops::In<float>& x, ops::Out<float> y) const;
  void operator()(const ops::In<float>& x, ops::Out<float> y, ops::Activation activation) const;
};

/// The tensor table of a model part: each part writes ONE `visit(const WeightVisitor&)` that names
/// every weight it holds, in binding order - HF tensor name, shape from the config, slot, and for
/// matrices their MatrixRole - plus the tied aliases (names transformers ties to another weight,
/// which checkpoints may hold but the part never binds). That one list drives loading (loader),
/// listing (lister: tensor_specs / bound names), saving (saver: named_weights) and the alias check.
struct WeightVisitor {
  std::function<void(const std::string& name, const Shape& shape, Tensor& slot)> tensor;
  std::function<void(const std::string& name, const Shape& shape, Linear& slot, MatrixRole role)> matrix;
  /// Optional: `alias_name` is tied to (holds the same weight as) the bound tensor `target`.
  std::function<void(const std::string& alias_name, const std::string& target)> alias;

  /// Reports a tied alias to `alias` when set (loading, listing and saving ignore aliases).
  void tied(const std::string& alias_name, const std::string& target) const {
    if (alias) alias(alias_name, target);
  }

  /// "<name>.weight" [N, K] as a matrix of `role`, and "<name>.bias" [N] when `bias`.
  void linear(const std::string& name, std::int64_t N, std::int64_t K, bool bias, Linear& l, MatrixRole role) const;

  /// Loads from `source`: tensors as float32, matrices in the policy's format (or as stored quantised).
  static WeightVisitor loader(const WeightSource& source, const WeightPolicy& policy);
  /// Records every name and shape (matrices under their plain names).
  static WeightVisitor lister(std::vector<std::pair<std::string, Shape>>& out);
  /// Collects the tensors that store the bound weights (matrices via ops::WeightMatrix::to_tensors).
  static WeightVisitor saver(std::vector<std::pair<std::string, Tensor>>& out);
  /// Collects the tied aliases (alias name, target name) and nothing else.
  static WeightVisitor alias_lister(std::vector<std::pair<std::string, std::string>>& out);
  /// Appends every bound name to `names`, then calls `inner` (e.g. a loader) with the same arguments.
  static WeightVisitor recording(const WeightVisitor& inner, std::vector<std::string>& names);
};

}  // namespace instructblip::layers

#pragma once
// Reduced-precision weight matrices (f32 / bf16 / q8_0 / q4_0) and the linear() kernels that
// consume them. A WeightMatrix holds an [N, K] matrix in HuggingFace's [out_features, in_features]
// layout; ops::linear(x, W, bias, y) computes y[M, N] = x[M, K] * W^T (+ bias) for any format.
//
// Storage in the default RowMajor layout (row n of the matrix is contiguous in every format):
//   F32   float32 [N, K] row-major. Borrows an F32 Tensor (zero-copy).
//   BF16  bfloat16 [N, K] row-major. Borrows a BF16 Tensor (zero-copy), or is rounded from
//         float32 / float16 to nearest, ties to even.
//   Q8_0  K is zero-padded to Kp = round_up(K, 64) (an even number of 32-weight blocks).
//         qs:     int8 (two's complement) [N, Kp]    weight k of row n at qs[n * Kp + k]
//         scales: IEEE f16 [N, Kp / 32]             block b of row n covers k in [32b, 32b + 32)
//         w[n][k] = scales[n][k / 32] * qs[n][k]; scale = f16(max|w| / 127), q = round(w / scale)
//         (computed with the f16-rounded scale, clamped to [-127, 127]). 34 bytes / 32 weights.
//   Q4_0  K zero-padded to Kp = round_up(K, 64) as above; 4-bit codes c in [0, 15], w = d * (c - 8).
//         qs:     uint8 [N, Kp / 2]. Each 64-weight pair of blocks (2p, 2p+1) is 32 bytes
//                 qs[n][32p + j] = c[64p + j] | c[64p + 32 + j] << 4    (j = 0..31)
//                 i.e. low nibbles hold block 2p in order, high nibbles block 2p + 1 (unpacks to
//                 64 weights in order with one shift + mask; differs from ggml's q4_0 nibble order).
//         scales: IEEE f16 [N, Kp / 32]; d = f16(m / -8) where m is the block's weight of largest
//                 magnitude (so m maps exactly to code 0), c = clamp(round(w / d), -8, 7) + 8.
//                 18 bytes / 32 weights.
//
// Serialisation (to_tensors / from_tensors; plain safetensors tensors, no metadata needed):
//   F32 / BF16:  "<name>"             F32 / BF16 [N, K]  (the usual HF tensor)
//   Q8_0:        "<name>.q8_0"        U8  [N, Kp]       qs bytes as above
//                "<name>.q8_0_scale"  F16 [N, Kp / 32]
//                "<name>.shape"       I64 [2]           {N, K} (the logical, unpadded shape)
//   Q4_0:        "<name>.q4_0"        U8  [N, Kp / 2]
//                "<name>.q4_0_scale"  F16 [N, Kp / 32]
//                "<name>.shape"       I64 [2]
//   from_tensors() borrows the tensors it is given (zero-copy from a memory-mapped file), so a
//   quantised checkpoint loads without re-quantising.
//
// Layouts (Q4_0 is always row-major):
//   RowMajor  as above; borrows the source tensor where the dtype allows.
//   Panels    prepacked for the kernels (built once at construction, same byte count plus
//             padding). F32 / BF16: P = ceil(N / 32) panels of 32 weight rows (rows past N are zero).
//             F32:  float [P][K][32]              panel p, element (k, c) = w[32p + c][k]
//             BF16: bf16  [P][ceil(K / 2)][32][2] element (j, c, e)   = w[32p + c][2j + e]
//             (k = K when K is odd is zero) - the pairwise-interleaved layout a 64-byte load
//             widens to two f32 vectors (or feeds vdpbf16ps). Use it for weights that mostly
//             see many rows (the vision encoder): no per-call packing. The streaming kernels
//             read it too, so one copy serves every M.
//             Q8_0: P = ceil(N / 16) panels of 16 weight rows (rows past N: codes and scales 0),
//             the codes of 16 rows interleaved in groups of 4 consecutive k:
//             qs:     int8 [P][Kp / 32][8][16][4]   element (j, r, e) of (panel p, block b) =
//                                                   q[16p + r][32b + 4j + e]
//             scales: f16 [P][Kp / 32][16]          (p, b, r) = scale of row 16p + r, block b
//             One 64-byte line holds 4 consecutive weights of 16 rows, so a broadcast group of
//             4 activation bytes meets 16 outputs per integer dot-product instruction (vpdpbusd).
//             Saved (to_tensors) in the row-major form above, bit for bit.
//
// linear() numerics, by the number of activation rows M (threshold: gemv_max_rows(), default 8):
//   F32,  any M:         float32 activations, weights and accumulation.
//   BF16, any M:         float32 activations times the exact bf16 weights, f32 accumulation.
//   Q8_0/Q4_0, M <= thr: activations quantised per 32-block to int8 (scale max|x| / 127, f32,
//                        round to nearest even), exact integer block dot products, f32 sum of
//                        scale_w * scale_x * dot.
//   Q8_0/Q4_0, M > thr:  float32 activations times the exact dequantised weights (dequantised
//                        per call, 32 rows x one K block at a time), f32 accumulation.
//   With GemmCompute::BF16 (per call through LinearOptions, or process-wide through
//   set_gemm_bf16_activations(true) for GemmCompute::Auto), BF16 / Q8_0 / Q4_0 at M > thr
//   instead round the activations and the (dequantised) weights to bf16 (nearest even) and
//   accumulate in f32: on AMX tiles (tdpbf16ps; Sapphire Rapids and later, ~2-3x the f32 FMA
//   kernels) when the CPU has AMX-BF16 and the OS grants the tile state, else with vdpbf16ps
//   (AVX512-BF16; on Sapphire Rapids half the f32 FMA rate), else an exact emulation.
//   F32 weights at M > thr use the own AVX-512 FMA GEMM (measured faster than Eigen here).
// Every kernel computes each output element with the same operations whatever the thread count
// (work is split by whole weight rows / 32-row panels), so 1 and N threads agree bit for bit.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "instructblip/core/tensor.hpp"
#include "instructblip/ops/activations.hpp"
#include "instructblip/ops/linear.hpp"

namespace instructblip::ops {

enum class WeightFormat : std::uint8_t { F32, BF16, Q8_0, Q4_0 };
enum class WeightLayout : std::uint8_t { RowMajor, Panels };

/// "f32", "bf16", "q8_0", "q4_0".
const char* weight_format_name(WeightFormat f);
/// Parses the names above (case-insensitive); false if unknown.
bool parse_weight_format(const std::string& s, WeightFormat* out);

/// Returns the tensor called `name`, or an undefined Tensor when there is none.
using TensorLookup = std::function<Tensor(const std::string& name)>;

class WeightMatrix {
 public:
  WeightMatrix() = default;
  /// From a 2-d [N, K] F32 / BF16 / F16 tensor. F32 -> F32 and BF16 -> BF16 row-major share the
  /// tensor's memory (zero-copy); every other combination converts / quantises / packs (in
  /// parallel over rows). Throws TensorError for another rank or dtype, InvalidArgument for a
  /// Panels layout of Q4_0.
  WeightMatrix(const Tensor& w, WeightFormat format, WeightLayout layout = WeightLayout::RowMajor);

  bool defined() const { return defined_; }
  WeightFormat format() const { return format_; }
  WeightLayout layout() const { return layout_; }
  std::int64_t rows() const { return n_; }          // N (out_features)
  std::int64_t cols() const { return k_; }          // K (in_features)
  /// Row length in elements as stored: K for F32 / BF16, round_up(K, 64) for Q8_0 / Q4_0.
  std::int64_t padded_cols() const { return kp_; }
  /// Bytes of weight storage (data + scales).
  std::size_t bytes() const;
  /// The matrix as a new float32 [N, K] tensor (exact: the values linear() multiplies by).
  Tensor dequantize() const;

  /// The same matrix in `layout` (a repacked copy; *this when it already is). The values, and
  /// therefore what linear() computes, are unchanged. Throws InvalidArgument for Q4_0 Panels.
  WeightMatrix with_layout(WeightLayout layout) const;
  /// Tensors that store this matrix under `name` (see the naming convention above); they share
  /// this matrix's memory, except for the Panels layout, which is written as the plain row-major
  /// "<name>" tensor (F32 / BF16) or the row-major Q8_0 tensors (copies; load them back and use
  /// WeightLayout::Panels / with_layout() to re-pack).
  std::vector<std::pair<std::string, Tensor>> to_tensors(const std::string& name) const;
  /// Rebuilds a matrix saved by to_tensors() (zero-copy). F16 "<name>" is converted to F32.
  /// Throws TensorError when the tensors are missing or their dtypes / shapes disagree.
  static WeightMatrix from_tensors(const std::string& name, const TensorLookup& lookup);
  static WeightMatrix from_tensors(const std::string& name,
                                   const std::vector<std::pair<std::string, Tensor>>& tensors);

  // Raw storage for kernels. data(): float (F32), uint16 bf16 bits (BF16), int8 (Q8_0),
  // packed nibbles (Q4_0), in the layout() above. scales(): f16 bits, [N, Kp / 32] (row-major) or
  // [P][Kp / 32][16] (Q8_0 Panels) (Q formats only, else null).
  const void* data() const { return data_.raw(); }
  const std::uint16_t* scales() const { return static_cast<const std::uint16_t*>(scales_.raw()); }
  const Tensor& data_tensor() const { return data_; }
  const Tensor& scales_tensor() const { return scales_; }

 private:
  Tensor data_, scales_;
  std::int64_t n_ = 0, k_ = 0, kp_ = 0;
  WeightFormat format_ = WeightFormat::F32;
  WeightLayout layout_ = WeightLayout::RowMajor;
  bool defined_ = false;
};

/// The layout whose kernels read a matrix of `format` fastest on this CPU at the kernel level in
/// use now (cpu_features()): Panels for F32 / BF16, Panels for Q8_0 at the AVX-512 level (its
/// integer kernels are written for it) and RowMajor below it or with AMX (whose prompt products
/// read rows), RowMajor for Q4_0. linear() takes either layout at every level; only the speed
/// differs.
WeightLayout preferred_layout(WeightFormat format);

/// The tensor names a matrix called `name` is stored under in `format` (the convention above):
/// F32 / BF16: data = name (scale and shape empty); Q8_0: name.q8_0, name.q8_0_scale, name.shape;
/// Q4_0: name.q4_0, name.q4_0_scale, name.shape.
struct StorageNames {
  std::string data, scale, shape;
};
StorageNames storage_names(const std::string& name, WeightFormat format);
/// Every tensor name a matrix called `name` may be stored under, in any format.
std::vector<std::string> all_storage_names(const std::string& name);
/// True when `lookup` holds a quantised copy (Q8_0 or Q4_0 data) of the matrix `name`.
bool stored_quantized(const std::string& name, const TensorLookup& lookup);

/// y[M, N] = x[M, K] * W[N, K]^T (+ bias[N]); `y` must not alias `x`. Rows of W (output columns)
/// are split over the thread pool. Throws InvalidArgument on mismatched shapes.
void linear(const In<float>& x, const WeightMatrix& W, const float* bias, Out<float> y);
/// Convenience overload returning a new matrix.
MatrixF linear(const In<float>& x, const WeightMatrix& W, const float* bias = nullptr);

/// Arithmetic of the matrix-matrix regime (M > gemv_max_rows()) of BF16 / Q8_0 / Q4_0 weights
/// (F32 weights are always multiplied in float32).
enum class GemmCompute : std::uint8_t {
  Auto,  // the process-wide setting (set_gemm_bf16_activations)
  F32,   // float32 activations times the exact (dequantised) weights, f32 accumulation
  BF16,  // activations and weights rounded to bf16, f32 accumulation: AMX tiles when the CPU and
         // the OS allow them, else vdpbf16ps, else an exact emulation (same rounding)
};

struct LinearOptions {
  GemmCompute compute = GemmCompute::Auto;
  /// Applies `activation` to y after the bias, fused into the product (each output block is
  /// activated by the thread that computed it, while it is in cache).
  bool activate = false;
  Activation activation = Activation::Gelu;
};

/// linear() with options (see LinearOptions).
void linear(const In<float>& x, const WeightMatrix& W, const float* bias, Out<float> y, const LinearOptions& options);

/// While an instance lives, linear() calls made on the constructing thread use the row-by-row
/// regime (the M <= gemv_max_rows() numerics above) for any number of rows M: every output row is
/// then bit for bit what that activation row alone gives, whatever other rows share the call.
/// Batched decoding uses it so that a sequence's tokens never depend on what it is batched with.
/// (The row-by-row kernels still stream each weight block once for all rows.) Nests.
class RowIndependentProducts {
 public:
  RowIndependentProducts();
  ~RowIndependentProducts();
  RowIndependentProducts(const RowIndependentProducts&) = delete;
  RowIndependentProducts& operator=(const RowIndependentProducts&) = delete;
  /// True while an instance lives on this thread.
  static bool active();

 private:
  bool previous_;
};

/// While an instance lives, linear() calls made on the constructing thread whose M is a multiple
/// of `count` treat their activations as `count` stacked items of M / count rows each (e.g. the
/// images of a batch) and choose the regime one item alone would get: each item's rows are then
/// bit for bit what that item gives alone (every kernel computes a row independently of the
/// others within a regime; only the M-based regime choice could differ). Nests (innermost wins).
class StackedItems {
 public:
  explicit StackedItems(std::int64_t count);
  ~StackedItems();
  StackedItems(const StackedItems&) = delete;
  StackedItems& operator=(const StackedItems&) = delete;

 private:
  std::int64_t previous_;
};

/// GELU with the exact erf, 0.5 x (1 + erf(x / sqrt 2)), in place, vectorised (AVX-512 when the
/// build and the CPU have it; max abs error vs the float formula with std::erf <= 1e-6 for
/// |x| < 10, relative error of x * Phi(x) ~1e-7 beyond), else std::erf. The kernel linear()
/// fuses with LinearOptions{.activate = true, .activation = Gelu}.
void gelu_vectorized(float* x, std::size_t n);
/// Applies `a` in place: Gelu through gelu_vectorized, Relu vectorised, the others as activate().
void activate_vectorized(Activation a, float* x, std::size_t n);

/// The kernel linear() would use for this matrix and M activation rows under the current
/// settings, e.g. "avx512-fma-gemm(panels)" or "avx512vnni-dpbusd-q8_0" (for logs / benchmarks).
std::string kernel_name(const WeightMatrix& W, std::int64_t M);
/// The same for a given GemmCompute (Auto: the process-wide setting), e.g.
/// "amx-bf16-tdpbf16ps-gemm(bf16,panels)".
std::string kernel_name(const WeightMatrix& W, std::int64_t M, GemmCompute compute);
/// M > gemv_max_rows() with BF16 / Q8_0 / Q4_0 weights: round activations and weights to bf16
/// (true; AMX tiles when the CPU and OS allow them, else vdpbf16ps, else emulated) instead of f32
/// FMA (false, default). Process-wide default of GemmCompute::Auto; per call, pass LinearOptions.
void set_gemm_bf16_activations(bool on);
bool gemm_bf16_activations();

/// One line naming the kernel levels this build carries, what the CPU supports and the kernel each
/// format / regime dispatches to, e.g.
/// "levels: portable avx2 avx512 amx | cpu: avx2 avx512 avx512bf16 | using: avx512 | M<=8: ...".
/// The level is chosen at run time from the CPU; INSTRUCTBLIP_ISA=portable|avx2|avx512|avx512-bf16|amx
/// caps it for the process (e.g. to compare the levels' answers).
std::string cpu_features();
/// The CPU's model name (/proc/cpuinfo, else the CPUID brand string), for benchmark tables.
std::string cpu_model();

}  // namespace instructblip::ops

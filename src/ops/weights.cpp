// Reduced-precision weight matrices and their linear() kernels. See weights.hpp for the formats
// and the numerics. Layout of this file:
//   1. ISA detection and kernel switches
//   2. quantisation / dequantisation of rows (portable)
//   3. WeightMatrix (construction, serialisation)
//   4. activation preparation shared by the streaming (M small) kernels
//   5. portable kernels (plain loops; Eigen for the M-large fallback)
//   6. AVX-512 kernels (F / BW, VNNI, BF16), compiled only when the build targets them and used
//      only when the CPU reports them at run time
//   7. linear() dispatch and cpu_features()
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsic headers build "undefined" vectors by self-initialisation, which
// -W(maybe-)uninitialized reports at every use; the warning is spurious.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "instructblip/ops/weights.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <type_traits>
#include <utility>

#include "instructblip/core/thread_pool.hpp"
#include "weights_amx.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX2__)
#define IB_W_AVX512 1
#include <immintrin.h>
#endif
#if defined(IB_W_AVX512) && defined(__AVX512VNNI__)
#define IB_W_VNNI 1
#endif
#if defined(IB_W_AVX512) && defined(__AVX512BF16__)
#define IB_W_BF16 1
#endif

#ifdef IB_W_AVX512
#define IB_AVX512_FN
#include "avx512_util.hpp"
#endif

namespace instructblip::ops {

namespace {

constexpr std::int64_t QK = 32;        // weights per quantisation block
constexpr std::int64_t QPAD = 64;      // Q rows are padded to a multiple of two blocks

std::int64_t round_up(std::int64_t a, std::int64_t b) { return (a + b - 1) / b * b; }

// ---------------------------------------------------------------------------------------------
// 1. ISA detection and switches

struct IsaInfo {
  bool avx512 = false;  // F + BW + VL, compiled and present
  bool vnni = false;
  bool bf16 = false;
  bool cpu_avx512 = false, cpu_vnni = false, cpu_bf16 = false, cpu_avx2 = false;
};

IsaInfo detect_isa() {
  IsaInfo s;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  s.cpu_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl");
  s.cpu_vnni = __builtin_cpu_supports("avx512vnni");
  s.cpu_bf16 = __builtin_cpu_supports("avx512bf16");
  s.cpu_avx2 = __builtin_cpu_supports("avx2");
#endif
#ifdef IB_W_AVX512
  s.avx512 = s.cpu_avx512;
#endif
#ifdef IB_W_VNNI
  s.vnni = s.avx512 && s.cpu_vnni;
#endif
#ifdef IB_W_BF16
  s.bf16 = s.avx512 && s.cpu_bf16;
#endif
  return s;
}

const IsaInfo& isa() {
  static const IsaInfo s = detect_isa();
  return s;
}

std::atomic<bool> g_force_scalar{false};
std::atomic<unsigned> g_disabled{0};
std::atomic<int> g_gemv_max_rows{8};
std::atomic<bool> g_gemm_bf16{false};

bool use_avx512() { return !g_force_scalar.load() && !(g_disabled.load() & kIsaAvx512) && isa().avx512; }
bool use_vnni() { return use_avx512() && !(g_disabled.load() & kIsaAvx512Vnni) && isa().vnni; }
bool use_bf16() { return use_avx512() && !(g_disabled.load() & kIsaAvx512Bf16) && isa().bf16; }
// AMX-BF16 GEMM (weights_amx.cpp; checks the CPU and requests the OS permission itself). It
// converts with AVX512-BF16, so turning that (or AVX-512) off turns it off too.
bool use_amx() {
  return !g_force_scalar.load() && !(g_disabled.load() & (kIsaAvx512 | kIsaAvx512Bf16 | kIsaAmx)) &&
         detail::amx_bf16_usable();
}

// An aligned scratch buffer (64-byte aligned through Tensor::empty).
template <typename T>
struct Buf {
  Tensor t;
  T* p = nullptr;
  explicit Buf(std::size_t n) {
    t = Tensor::empty({std::int64_t(std::max<std::size_t>(1, n) * sizeof(T))}, DType::U8);
    p = reinterpret_cast<T*>(t.data<std::uint8_t>());
  }
  T& operator[](std::size_t i) { return p[i]; }
};

// ---------------------------------------------------------------------------------------------
// 2. quantisation (portable; used once at construction)

void check_finite(float amax) {
  if (!std::isfinite(amax)) throw TensorError("WeightMatrix: cannot quantise a weight that is not finite");
}

// One row: K floats -> Kp int8 + Kp/32 f16 scales (zero padding after K).
void quantize_row_q8(const float* w, std::int64_t K, std::int64_t Kp, std::int8_t* qs, std::uint16_t* sc) {
  for (std::int64_t b = 0; b < Kp / QK; ++b) {
    const std::int64_t k0 = b * QK, k1 = std::min(K, k0 + QK);
    float amax = 0.f;
    for (std::int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(w[k]));
    check_finite(amax);
    const std::uint16_t d16 = f32_to_f16(amax / 127.f);
    const float d = f16_to_f32(d16);
    sc[b] = d16;
    for (std::int64_t k = k0; k < k0 + QK; ++k) {
      int q = 0;
      if (k < k1 && d != 0.f) q = int(std::nearbyint(w[k] / d));
      qs[k] = std::int8_t(std::clamp(q, -127, 127));
    }
  }
}

void quantize_row_q4(const float* w, std::int64_t K, std::int64_t Kp, std::uint8_t* qs, std::uint16_t* sc) {
  std::vector<std::uint8_t> codes(std::size_t(Kp), 8);
  for (std::int64_t b = 0; b < Kp / QK; ++b) {
    const std::int64_t k0 = b * QK, k1 = std::min(K, k0 + QK);
    float amax = 0.f, m = 0.f;
    for (std::int64_t k = k0; k < k1; ++k)
      if (std::fabs(w[k]) > amax) { amax = std::fabs(w[k]); m = w[k]; }
    check_finite(amax);
    const std::uint16_t d16 = f32_to_f16(m / -8.f);
    const float d = f16_to_f32(d16);
    sc[b] = d16;
    for (std::int64_t k = k0; k < k1; ++k) {
      int q = 0;
      if (d != 0.f) q = int(std::nearbyint(w[k] / d));
      codes[std::size_t(k)] = std::uint8_t(std::clamp(q, -8, 7) + 8);
    }
  }
  for (std::int64_t p = 0; p < Kp / 64; ++p)
    for (int j = 0; j < 32; ++j)
      qs[p * 32 + j] = std::uint8_t(codes[std::size_t(p * 64 + j)] | (codes[std::size_t(p * 64 + 32 + j)] << 4));
}

// Code of weight k in a Q4 row.
inline int q4_code(const std::uint8_t* qs, std::int64_t k) {
  const std::uint8_t byte = qs[(k / 64) * 32 + (k % 32)];
  return (k % 64) < 32 ? (byte & 0x0f) : (byte >> 4);
}

// Element (n, k) of the Panels layouts (see weights.hpp).
inline std::int64_t panel_index_f32(std::int64_t n, std::int64_t k, std::int64_t K) {
  return ((n / 32) * K + k) * 32 + n % 32;
}
inline std::int64_t panel_index_bf16(std::int64_t n, std::int64_t k, std::int64_t K) {
  return (((n / 32) * ((K + 1) / 2) + k / 2) * 32 + n % 32) * 2 + (k & 1);
}

// Row n of the matrix as float (exact).
void dequantize_row(const WeightMatrix& W, std::int64_t n, float* out) {
  const std::int64_t K = W.cols(), Kp = W.padded_cols();
  const bool panels = W.layout() == WeightLayout::Panels;
  switch (W.format()) {
    case WeightFormat::F32: {
      const auto* w = static_cast<const float*>(W.data());
      if (panels)
        for (std::int64_t k = 0; k < K; ++k) out[k] = w[panel_index_f32(n, k, K)];
      else
        std::memcpy(out, w + n * K, std::size_t(K) * 4);
      return;
    }
    case WeightFormat::BF16: {
      const auto* w = static_cast<const std::uint16_t*>(W.data());
      for (std::int64_t k = 0; k < K; ++k) out[k] = bf16_to_f32(panels ? w[panel_index_bf16(n, k, K)] : w[n * K + k]);
      return;
    }
    case WeightFormat::Q8_0: {
      const auto* q = static_cast<const std::int8_t*>(W.data()) + n * Kp;
      const std::uint16_t* s = W.scales() + n * (Kp / QK);
      for (std::int64_t k = 0; k < K; ++k) out[k] = f16_to_f32(s[k / QK]) * float(q[k]);
      return;
    }
    case WeightFormat::Q4_0: {
      const auto* q = static_cast<const std::uint8_t*>(W.data()) + n * (Kp / 2);
      const std::uint16_t* s = W.scales() + n * (Kp / QK);
      for (std::int64_t k = 0; k < K; ++k) out[k] = f16_to_f32(s[k / QK]) * float(q4_code(q, k) - 8);
      return;
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// 3. WeightMatrix

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::F32: return "f32";
    case WeightFormat::BF16: return "bf16";
    case WeightFormat::Q8_0: return "q8_0";
    case WeightFormat::Q4_0: return "q4_0";
  }
  return "?";
}

bool parse_weight_format(const std::string& s, WeightFormat* out) {
  std::string l;
  for (char c : s) l += char(std::tolower(static_cast<unsigned char>(c)));
  if (l == "f32" || l == "fp32" || l == "float32") { *out = WeightFormat::F32; return true; }
  if (l == "bf16" || l == "bfloat16") { *out = WeightFormat::BF16; return true; }
  if (l == "q8_0" || l == "q8") { *out = WeightFormat::Q8_0; return true; }
  if (l == "q4_0" || l == "q4") { *out = WeightFormat::Q4_0; return true; }
  return false;
}

WeightMatrix::WeightMatrix(const Tensor& w, WeightFormat format, WeightLayout layout) {
  if (!w.defined() || w.ndim() != 2)
    throw TensorError("WeightMatrix: expected a 2-d [out, in] tensor, got " +
                      (w.defined() ? shape_str(w.shape()) : std::string("an undefined tensor")));
  if (w.dtype() != DType::F32 && w.dtype() != DType::BF16 && w.dtype() != DType::F16)
    throw TensorError(std::string("WeightMatrix: unsupported dtype ") + dtype_name(w.dtype()));
  n_ = w.dim(0);
  k_ = w.dim(1);
  format_ = format;
  layout_ = layout;
  if (layout == WeightLayout::Panels) {
    if (format != WeightFormat::F32 && format != WeightFormat::BF16)
      throw InvalidArgument(std::string("WeightMatrix: the Panels layout is for f32 / bf16, not ") +
                            weight_format_name(format));
    const std::int64_t N = n_, K = k_, P = (N + 31) / 32, KW = (K + 1) / 2;
    const bool f32 = format == WeightFormat::F32;
    data_ = f32 ? Tensor::zeros({P, K, 32}, DType::F32) : Tensor::zeros({P, KW, 32, 2}, DType::BF16);
    kp_ = k_;
    const DType dt = w.dtype();
    const auto* src = static_cast<const std::uint8_t*>(w.raw());
    const std::size_t es = dtype_size(dt);
    void* dst = data_.raw_mut();
    parallel_for(0, P, 1, [&](std::int64_t p0, std::int64_t p1) {
      std::vector<float> row(std::size_t(std::max<std::int64_t>(K, 1)));
      for (std::int64_t n = p0 * 32; n < std::min(N, p1 * 32); ++n) {
        const std::uint8_t* r = src + std::size_t(n * K) * es;
        if (f32) {
          convert_to_f32(r, dt, row.data(), std::size_t(K));
          float* o = static_cast<float*>(dst);
          for (std::int64_t k = 0; k < K; ++k) o[panel_index_f32(n, k, K)] = row[std::size_t(k)];
        } else {
          auto* o = static_cast<std::uint16_t*>(dst);
          if (dt == DType::BF16) {
            const auto* b = reinterpret_cast<const std::uint16_t*>(r);
            for (std::int64_t k = 0; k < K; ++k) o[panel_index_bf16(n, k, K)] = b[k];
          } else {
            convert_to_f32(r, dt, row.data(), std::size_t(K));
            for (std::int64_t k = 0; k < K; ++k) o[panel_index_bf16(n, k, K)] = f32_to_bf16(row[std::size_t(k)]);
          }
        }
      }
    });
    defined_ = true;
    return;
  }
  switch (format) {
    case WeightFormat::F32:
      data_ = w.to(DType::F32);
      kp_ = k_;
      break;
    case WeightFormat::BF16:
      data_ = w.to(DType::BF16);
      kp_ = k_;
      break;
    case WeightFormat::Q8_0:
    case WeightFormat::Q4_0: {
      if (k_ > (std::int64_t(1) << 40)) throw TensorError("WeightMatrix: too many columns to quantise");
      kp_ = round_up(k_, QPAD);
      const bool q8 = format == WeightFormat::Q8_0;
      data_ = Tensor::empty({n_, q8 ? kp_ : kp_ / 2}, DType::U8);
      scales_ = Tensor::empty({n_, kp_ / QK}, DType::F16);
      auto* qs = data_.data<std::uint8_t>();
      auto* sc = static_cast<std::uint16_t*>(scales_.raw_mut());
      const std::int64_t K = k_, Kp = kp_;
      const DType dt = w.dtype();
      const auto* src = static_cast<const std::uint8_t*>(w.raw());
      const std::size_t es = dtype_size(dt);
      parallel_for(0, n_, std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(1, K)),
                   [&](std::int64_t n0, std::int64_t n1) {
        std::vector<float> row(std::size_t(std::max<std::int64_t>(K, 1)));
        for (std::int64_t n = n0; n < n1; ++n) {
          convert_to_f32(src + std::size_t(n * K) * es, dt, row.data(), std::size_t(K));
          if (q8)
            quantize_row_q8(row.data(), K, Kp, reinterpret_cast<std::int8_t*>(qs + n * Kp), sc + n * (Kp / QK));
          else
            quantize_row_q4(row.data(), K, Kp, qs + n * (Kp / 2), sc + n * (Kp / QK));
        }
      });
      break;
    }
  }
  defined_ = true;
}

std::size_t WeightMatrix::bytes() const {
  return (data_.defined() ? data_.nbytes() : 0) + (scales_.defined() ? scales_.nbytes() : 0);
}

Tensor WeightMatrix::dequantize() const {
  if (!defined_) throw TensorError("WeightMatrix::dequantize: undefined matrix");
  Tensor out = Tensor::empty({n_, k_}, DType::F32);
  float* o = out.data<float>();
  for (std::int64_t n = 0; n < n_; ++n) dequantize_row(*this, n, o + n * k_);
  return out;
}

std::vector<std::pair<std::string, Tensor>> WeightMatrix::to_tensors(const std::string& name) const {
  if (!defined_) throw TensorError("WeightMatrix::to_tensors: undefined matrix");
  std::vector<std::pair<std::string, Tensor>> out;
  if (layout_ == WeightLayout::Panels) {
    Tensor t = dequantize();
    out.emplace_back(name, format_ == WeightFormat::BF16 ? t.to(DType::BF16) : t);  // bf16 -> f32 -> bf16 is exact
    return out;
  }
  if (format_ == WeightFormat::F32 || format_ == WeightFormat::BF16) {
    out.emplace_back(name, data_);
    return out;
  }
  const std::string fmt = weight_format_name(format_);
  out.emplace_back(name + "." + fmt, data_);
  out.emplace_back(name + "." + fmt + "_scale", scales_);
  out.emplace_back(name + ".shape", Tensor::from_vector({2}, std::vector<std::int64_t>{n_, k_}));
  return out;
}

WeightMatrix WeightMatrix::from_tensors(const std::string& name,
                                        const std::vector<std::pair<std::string, Tensor>>& tensors) {
  return from_tensors(name, [&](const std::string& key) {
    for (const auto& kv : tensors)
      if (kv.first == key) return kv.second;
    return Tensor();
  });
}

WeightMatrix WeightMatrix::from_tensors(const std::string& name, const TensorLookup& lookup) {
  auto bad = [&](const std::string& what) { return TensorError("weight '" + name + "': " + what); };
  WeightMatrix m;
  for (WeightFormat f : {WeightFormat::Q8_0, WeightFormat::Q4_0}) {
    const std::string fmt = weight_format_name(f);
    Tensor q = lookup(name + "." + fmt);
    if (!q.defined()) continue;
    Tensor s = lookup(name + "." + fmt + "_scale");
    Tensor shp = lookup(name + ".shape");
    if (!s.defined()) throw bad("missing " + name + "." + fmt + "_scale");
    if (!shp.defined()) throw bad("missing " + name + ".shape");
    if (shp.dtype() != DType::I64 || shp.numel() != 2) throw bad(".shape must be I64 with 2 elements");
    std::int64_t dims[2];
    std::memcpy(dims, shp.raw(), sizeof dims);
    const std::int64_t N = dims[0], K = dims[1];
    if (N < 0 || K < 0 || K > (std::int64_t(1) << 40)) throw bad("invalid logical shape");
    const std::int64_t Kp = round_up(K, QPAD);
    const Shape want_q{N, f == WeightFormat::Q8_0 ? Kp : Kp / 2}, want_s{N, Kp / QK};
    if (q.dtype() != DType::U8 || q.shape() != want_q)
      throw bad(fmt + " data must be U8 " + shape_str(want_q) + ", got " + dtype_name(q.dtype()) + " " +
                shape_str(q.shape()));
    if (s.dtype() != DType::F16 || s.shape() != want_s)
      throw bad(fmt + " scales must be F16 " + shape_str(want_s) + ", got " + dtype_name(s.dtype()) + " " +
                shape_str(s.shape()));
    m.data_ = q;
    m.scales_ = s;
    m.n_ = N;
    m.k_ = K;
    m.kp_ = Kp;
    m.format_ = f;
    m.defined_ = true;
    return m;
  }
  Tensor t = lookup(name);
  if (!t.defined()) throw bad("not found (looked for " + name + ", " + name + ".q8_0, " + name + ".q4_0)");
  if (t.ndim() != 2) throw bad("expected a 2-d tensor, got " + shape_str(t.shape()));
  if (t.dtype() == DType::F32 || t.dtype() == DType::F16) return WeightMatrix(t, WeightFormat::F32);
  if (t.dtype() == DType::BF16) return WeightMatrix(t, WeightFormat::BF16);
  throw bad(std::string("unsupported dtype ") + dtype_name(t.dtype()));
}

// ---------------------------------------------------------------------------------------------
// 4. activation preparation for the streaming kernels

namespace {

// Quantised activations for M rows: int8 [M][Kp], f32 scales [M][Kp/32], and for the SIMD
// kernels the VNNI offset correction negc[M][Kp/4] = -offset * (sum of 4 consecutive q) and the
// scales expanded per pair of blocks dxe[M][Kp/64][16] (lanes 0-7: block 2p, 8-15: block 2p+1).
struct QuantAct {
  std::int64_t M = 0, Kp = 0;
  Buf<std::int8_t> q{0};
  Buf<float> d{0};
  Buf<std::int32_t> negc{0};
  Buf<float> dxe{0};
};

void quantize_act(const float* x, std::int64_t ldx, std::int64_t M, std::int64_t K, std::int64_t Kp,
                  int offset, bool simd_extras, QuantAct& a) {
  a.M = M;
  a.Kp = Kp;
  a.q = Buf<std::int8_t>(std::size_t(M * Kp));
  a.d = Buf<float>(std::size_t(M * (Kp / QK)));
  if (simd_extras) {
    a.negc = Buf<std::int32_t>(std::size_t(M * (Kp / 4)));
    a.dxe = Buf<float>(std::size_t(M * (Kp / 64) * 16));
  }
  for (std::int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    std::int8_t* q = a.q.p + m * Kp;
    float* d = a.d.p + m * (Kp / QK);
    for (std::int64_t b = 0; b < Kp / QK; ++b) {
      const std::int64_t k0 = b * QK, k1 = std::min(K, k0 + QK);
      float amax = 0.f;
      bool nan = false;
      for (std::int64_t k = k0; k < k1; ++k) {
        amax = std::max(amax, std::fabs(xr[k]));
        nan |= xr[k] != xr[k];
      }
      const float id = amax > 0.f ? 127.f / amax : 0.f;
      d[b] = nan ? std::numeric_limits<float>::quiet_NaN() : amax / 127.f;  // a NaN reaches the output
      for (std::int64_t k = k0; k < k0 + QK; ++k) {
        float v = k < k1 ? xr[k] * id : 0.f;
        if (!(std::fabs(v) <= 127.f)) v = v > 0.f ? 127.f : (v < 0.f ? -127.f : 0.f);  // inf / NaN guard
        q[k] = std::int8_t(std::nearbyint(v));
      }
    }
    if (simd_extras) {
      std::int32_t* nc = a.negc.p + m * (Kp / 4);
      for (std::int64_t g = 0; g < Kp / 4; ++g)
        nc[g] = -offset * (int(q[4 * g]) + q[4 * g + 1] + q[4 * g + 2] + q[4 * g + 3]);
      float* e = a.dxe.p + m * (Kp / 64) * 16;
      for (std::int64_t p = 0; p < Kp / 64; ++p)
        for (int l = 0; l < 16; ++l) e[p * 16 + l] = d[2 * p + l / 8];
    }
  }
}

// Activations rounded to bf16 and widened back to f32 (the M-large numerics).
MatrixF round_bf16(const float* x, std::int64_t ldx, std::int64_t M, std::int64_t K) {
  MatrixF r(M, K);
  for (std::int64_t m = 0; m < M; ++m)
    for (std::int64_t k = 0; k < K; ++k) r(m, k) = bf16_to_f32(f32_to_bf16(x[m * ldx + k]));
  return r;
}

// ---------------------------------------------------------------------------------------------
// 5. portable kernels

struct GemvArgs {
  const float* x;
  std::int64_t ldx, M, K;
  float* y;
  std::int64_t ldy;
  const float* bias;
  const Activation* act;  // fused epilogue (after the bias), or null
};

void apply_activation(Activation a, float* p, std::int64_t n);

// The fused epilogue on the block y[m0, m1) x [n0, n1) that a task has just finished.
inline void activate_block(const GemvArgs& g, std::int64_t m0, std::int64_t m1, std::int64_t n0, std::int64_t n1) {
  if (!g.act || n1 <= n0) return;
  for (std::int64_t m = m0; m < m1; ++m) apply_activation(*g.act, g.y + m * g.ldy + n0, n1 - n0);
}

void gemv_portable(const WeightMatrix& W, const GemvArgs& g, const QuantAct* qa, std::int64_t n0,
                   std::int64_t n1) {
  const std::int64_t K = g.K, Kp = W.padded_cols();
  for (std::int64_t n = n0; n < n1; ++n) {
    const float bias_n = g.bias ? g.bias[n] : 0.f;
    for (std::int64_t m = 0; m < g.M; ++m) {
      const float* x = g.x + m * g.ldx;
      float acc = 0.f;
      switch (W.format()) {
        case WeightFormat::F32: {
          const float* w = static_cast<const float*>(W.data());
          if (W.layout() == WeightLayout::Panels)
            for (std::int64_t k = 0; k < K; ++k) acc += w[panel_index_f32(n, k, K)] * x[k];
          else
            for (std::int64_t k = 0; k < K; ++k) acc += w[n * K + k] * x[k];
          break;
        }
        case WeightFormat::BF16: {
          const auto* w = static_cast<const std::uint16_t*>(W.data());
          if (W.layout() == WeightLayout::Panels)
            for (std::int64_t k = 0; k < K; ++k) acc += bf16_to_f32(w[panel_index_bf16(n, k, K)]) * x[k];
          else
            for (std::int64_t k = 0; k < K; ++k) acc += bf16_to_f32(w[n * K + k]) * x[k];
          break;
        }
        case WeightFormat::Q8_0: {
          const auto* w = static_cast<const std::int8_t*>(W.data()) + n * Kp;
          const std::uint16_t* s = W.scales() + n * (Kp / QK);
          const std::int8_t* q = qa->q.p + m * Kp;
          const float* dx = qa->d.p + m * (Kp / QK);
          for (std::int64_t b = 0; b < Kp / QK; ++b) {
            std::int32_t dot = 0;
            for (std::int64_t k = b * QK; k < b * QK + QK; ++k) dot += std::int32_t(w[k]) * q[k];
            acc += f16_to_f32(s[b]) * dx[b] * float(dot);
          }
          break;
        }
        case WeightFormat::Q4_0: {
          const auto* w = static_cast<const std::uint8_t*>(W.data()) + n * (Kp / 2);
          const std::uint16_t* s = W.scales() + n * (Kp / QK);
          const std::int8_t* q = qa->q.p + m * Kp;
          const float* dx = qa->d.p + m * (Kp / QK);
          for (std::int64_t b = 0; b < Kp / QK; ++b) {
            std::int32_t dot = 0;
            for (std::int64_t k = b * QK; k < b * QK + QK; ++k) dot += std::int32_t(q4_code(w, k) - 8) * q[k];
            acc += f16_to_f32(s[b]) * dx[b] * float(dot);
          }
          break;
        }
      }
      g.y[m * g.ldy + n] = acc + bias_n;
    }
  }
}

// Dequantises rows [n0, n1) into `out` ([n1 - n0, K] row-major), rounded to bf16 when asked.
void dequant_rows(const WeightMatrix& W, std::int64_t n0, std::int64_t n1, bool to_bf16, float* out) {
  const std::int64_t K = W.cols();
  for (std::int64_t n = n0; n < n1; ++n) {
    float* o = out + (n - n0) * K;
    dequantize_row(W, n, o);
    if (to_bf16 && W.format() != WeightFormat::BF16)
      for (std::int64_t k = 0; k < K; ++k) o[k] = bf16_to_f32(f32_to_bf16(o[k]));
  }
}

// M-large fallback: Eigen GEMM on fixed tiles of 128 dequantised weight rows (so the result does
// not depend on the thread count); with bf16 = true activations and weights rounded to bf16.
void gemm_portable(const WeightMatrix& W, const GemvArgs& g, bool bf16) {
  const std::int64_t N = W.rows(), K = g.K;
  MatrixF xr;
  if (bf16) {
    xr = round_bf16(g.x, g.ldx, g.M, K);
  } else {
    xr.resize(g.M, K);
    for (std::int64_t m = 0; m < g.M; ++m) std::memcpy(xr.row(m).data(), g.x + m * g.ldx, std::size_t(K) * 4);
  }
  constexpr std::int64_t T = 128;
  const std::int64_t tiles = (N + T - 1) / T;
  Eigen::Map<RowMatrix<float>, 0, Eigen::OuterStride<>> y(g.y, g.M, N, Eigen::OuterStride<>(g.ldy));
  parallel_for(0, tiles, 1, [&](std::int64_t t0, std::int64_t t1) {
    MatrixF w(T, K);
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t n0 = t * T, n1 = std::min(N, n0 + T);
      dequant_rows(W, n0, n1, bf16, w.data());
      auto yb = y.middleCols(n0, n1 - n0);
      yb.noalias() = xr * w.topRows(n1 - n0).transpose();
      if (g.bias) yb.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(g.bias + n0, n1 - n0);
      activate_block(g, 0, g.M, n0, n1);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// 6. AVX-512 kernels

#ifdef IB_W_AVX512

// The streaming kernels read each weight once; a software prefetch this far ahead of the read
// pointer (into the next rows for row-major data) keeps enough misses in flight to approach the
// read bandwidth from one stream per thread (+50-70% over the hardware prefetcher alone here).
#ifndef IB_GEMV_PREFETCH
#define IB_GEMV_PREFETCH 6144
#endif
inline void prefetch_ahead(const void* p) {
  _mm_prefetch(static_cast<const char*>(p) + IB_GEMV_PREFETCH, _MM_HINT_T0);
}

// ---- F32 streaming kernel: MB activation rows against weight rows [n0, n1).
template <int MB>
void gemv_f32_avx512(const float* Wd, const GemvArgs& g, std::int64_t m0, std::int64_t n0, std::int64_t n1) {
  const std::int64_t K = g.K;
  const float* xs[MB];
  for (int m = 0; m < MB; ++m) xs[m] = g.x + (m0 + m) * g.ldx;
  for (std::int64_t n = n0; n < n1; ++n) {
    const float* w = Wd + n * K;
    __m512 a0[MB], a1[MB];
    for (int m = 0; m < MB; ++m) a0[m] = a1[m] = _mm512_setzero_ps();
    std::int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      prefetch_ahead(w + k);
      prefetch_ahead(w + k + 16);
      const __m512 w0 = _mm512_loadu_ps(w + k), w1 = _mm512_loadu_ps(w + k + 16);
      for (int m = 0; m < MB; ++m) {
        a0[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xs[m] + k), a0[m]);
        a1[m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xs[m] + k + 16), a1[m]);
      }
    }
    for (; k < K; k += 16) {
      const __mmask16 mk = mask16(K - k);
      const __m512 w0 = _mm512_maskz_loadu_ps(mk, w + k);
      for (int m = 0; m < MB; ++m) a0[m] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mk, xs[m] + k), a0[m]);
    }
    const float b = g.bias ? g.bias[n] : 0.f;
    for (int m = 0; m < MB; ++m) g.y[(m0 + m) * g.ldy + n] = _mm512_reduce_add_ps(_mm512_add_ps(a0[m], a1[m])) + b;
  }
}

// ---- BF16 streaming kernel. Activations are pre-arranged per 32-chunk as [16 even | 16 odd]
// (xe[m][Kp32]) so that a 64-byte load of 32 bf16 weights widens to two f32 vectors with one
// shift (even elements) and one mask (odd elements).
void arrange_bf16_act(const float* x, std::int64_t ldx, std::int64_t M, std::int64_t K, std::int64_t K32, float* xe) {
  for (std::int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    float* o = xe + m * K32;
    for (std::int64_t c = 0; c < K32; c += 32)
      for (int j = 0; j < 16; ++j) {
        o[c + j] = c + 2 * j < K ? xr[c + 2 * j] : 0.f;
        o[c + 16 + j] = c + 2 * j + 1 < K ? xr[c + 2 * j + 1] : 0.f;
      }
  }
}

template <int MB>
void gemv_bf16_avx512(const std::uint16_t* Wd, const GemvArgs& g, const float* xe, std::int64_t K32, std::int64_t m0,
                      std::int64_t n0, std::int64_t n1) {
  const std::int64_t K = g.K;
  const __m512i hi = _mm512_set1_epi32(int(0xffff0000u));
  for (std::int64_t n = n0; n < n1; ++n) {
    const std::uint16_t* w = Wd + n * K;
    __m512 a0[MB], a1[MB];
    for (int m = 0; m < MB; ++m) a0[m] = a1[m] = _mm512_setzero_ps();
    auto step = [&](__m512i wv, std::int64_t k) {
      const __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(wv, 16));
      const __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(wv, hi));
      for (int m = 0; m < MB; ++m) {
        const float* xm = xe + (m0 + m) * K32 + k;
        a0[m] = _mm512_fmadd_ps(we, _mm512_load_ps(xm), a0[m]);
        a1[m] = _mm512_fmadd_ps(wo, _mm512_load_ps(xm + 16), a1[m]);
      }
    };
    std::int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      prefetch_ahead(w + k);
      step(_mm512_loadu_si512(w + k), k);
    }
    if (k < K) step(_mm512_maskz_loadu_epi16(mask32(K - k), w + k), k);
    const float b = g.bias ? g.bias[n] : 0.f;
    for (int m = 0; m < MB; ++m) g.y[(m0 + m) * g.ldy + n] = _mm512_reduce_add_ps(_mm512_add_ps(a0[m], a1[m])) + b;
  }
}

// ---- Q8_0 / Q4_0 streaming kernels. One 512-bit step covers a pair of blocks (64 weights).
// VNNI: weights as unsigned bytes (q8: q ^ 0x80 = q + 128; q4: the code c = q + 8) times signed
// activation bytes with vpdpbusd, the accumulator initialised with -offset * sum(x) per 4 bytes
// (negc) which cancels the offset exactly. Without VNNI (AVX-512BW): signed weights, the sign
// of x moved onto w, |x| * (+-w) with vpmaddubsw (no saturation: 2 * 127 * 127 < 32767) and
// vpmaddwd with ones.
template <bool Q4, bool VNNI>
inline __m512i q_weights(const std::uint8_t* p) {
  if constexpr (Q4) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    __m512i c = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
    c = _mm512_and_si512(c, _mm512_set1_epi8(0x0f));
    if constexpr (!VNNI) c = _mm512_sub_epi8(c, _mm512_set1_epi8(8));
    return c;
  } else {
    const __m512i v = _mm512_loadu_si512(p);
    if constexpr (VNNI) return _mm512_xor_si512(v, _mm512_set1_epi8(char(0x80)));
    return v;
  }
}

template <bool VNNI>
inline __m512i q_dot(__m512i negc, __m512i w, __m512i x) {
#ifdef IB_W_VNNI
  if constexpr (VNNI) return _mm512_dpbusd_epi32(negc, w, x);
#endif
  (void)negc;
  const __m512i ax = _mm512_abs_epi8(x);
  const __m512i sw = _mm512_mask_sub_epi8(w, _mm512_movepi8_mask(x), _mm512_setzero_si512(), w);
  return _mm512_madd_epi16(_mm512_maddubs_epi16(ax, sw), _mm512_set1_epi16(1));
}

template <bool Q4, bool VNNI, int MB>
void gemv_q_avx512(const WeightMatrix& W, const GemvArgs& g, const QuantAct& qa, std::int64_t m0, std::int64_t n0,
                   std::int64_t n1) {
  const std::int64_t Kp = W.padded_cols(), P = Kp / 64;
  const std::int64_t row_bytes = Q4 ? Kp / 2 : Kp, step_bytes = Q4 ? 32 : 64;
  const auto* base = static_cast<const std::uint8_t*>(W.data());
  const __m512i idx[4] = {_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                          _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2),
                          _mm512_set_epi32(5, 5, 5, 5, 5, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4),
                          _mm512_set_epi32(7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6)};
  const std::int8_t* xq[MB];
  const std::int32_t* nc[MB];
  const float* dx[MB];
  for (int m = 0; m < MB; ++m) {
    xq[m] = qa.q.p + (m0 + m) * Kp;
    nc[m] = VNNI ? qa.negc.p + (m0 + m) * (Kp / 4) : nullptr;
    dx[m] = qa.dxe.p + (m0 + m) * P * 16;
  }
  // One activation row (decoding): two weight rows per pass share the activation loads.
  constexpr int NR = MB == 1 ? 2 : 1;
  std::int64_t n = n0;
  auto rows = [&](auto nr_c) {
    constexpr int R = decltype(nr_c)::value;
    const std::uint8_t* w[R];
    const std::uint16_t* s[R];
    __m512 a0[R][MB], a1[R][MB];
    for (int r = 0; r < R; ++r) {
      w[r] = base + (n + r) * row_bytes;
      s[r] = W.scales() + (n + r) * (Kp / QK);
      for (int m = 0; m < MB; ++m) a0[r][m] = a1[r][m] = _mm512_setzero_ps();
    }
    auto pair = [&](std::int64_t p, const __m512* sw, __m512 (*acc)[MB]) {
      __m512i wv[R];
      for (int r = 0; r < R; ++r) {
        prefetch_ahead(w[r] + p * step_bytes);
        wv[r] = q_weights<Q4, VNNI>(w[r] + p * step_bytes);
      }
      for (int m = 0; m < MB; ++m) {
        const __m512i negc = VNNI ? _mm512_load_si512(nc[m] + p * 16) : _mm512_setzero_si512();
        const __m512i xv = _mm512_load_si512(xq[m] + p * 64);
        const __m512 dxv = _mm512_load_ps(dx[m] + p * 16);
        for (int r = 0; r < R; ++r) {
          const __m512i d = q_dot<VNNI>(negc, wv[r], xv);
          acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sw[r], dxv), acc[r][m]);
        }
      }
    };
    std::int64_t p = 0;
    for (; p + 4 <= P; p += 4) {
      __m512 s8[R];
      for (int r = 0; r < R; ++r)
        s8[r] = _mm512_cvtph_ps(_mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s[r] + 2 * p))));
      for (int j = 0; j < 4; ++j) {
        __m512 sw[R];
        for (int r = 0; r < R; ++r) sw[r] = _mm512_permutexvar_ps(idx[j], s8[r]);
        pair(p + j, sw, j % 2 ? a1 : a0);
      }
    }
    for (; p < P; ++p) {
      __m512 sw[R];
      for (int r = 0; r < R; ++r) {
        std::uint32_t two;
        std::memcpy(&two, s[r] + 2 * p, 4);
        sw[r] = _mm512_permutexvar_ps(idx[0], _mm512_cvtph_ps(_mm256_zextsi128_si256(_mm_cvtsi32_si128(int(two)))));
      }
      pair(p, sw, a0);
    }
    for (int r = 0; r < R; ++r) {
      const float b = g.bias ? g.bias[n + r] : 0.f;
      for (int m = 0; m < MB; ++m)
        g.y[(m0 + m) * g.ldy + n + r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r][m], a1[r][m])) + b;
    }
  };
  for (; n + NR <= n1; n += NR) rows(std::integral_constant<int, NR>{});
  for (; n < n1; ++n) rows(std::integral_constant<int, 1>{});
}

#endif  // IB_W_AVX512

#ifdef IB_W_AVX512

// ---- Streaming kernels on the Panels layout: 32 outputs per panel, a broadcast activation
// times a 32-wide weight row per k (f32), or per k pair (bf16, widened by shift / mask).
template <int MB>
void gemv_panels_avx512(const WeightMatrix& W, const GemvArgs& g, std::int64_t m0, std::int64_t p0, std::int64_t p1) {
  const std::int64_t K = g.K, N = W.rows();
  const bool f32 = W.format() == WeightFormat::F32;
  const float* xs[MB];
  for (int m = 0; m < MB; ++m) xs[m] = g.x + (m0 + m) * g.ldx;
  for (std::int64_t p = p0; p < p1; ++p) {
    __m512 c0[MB], c1[MB];
    for (int m = 0; m < MB; ++m) c0[m] = c1[m] = _mm512_setzero_ps();
    if (f32) {
      const float* b = static_cast<const float*>(W.data()) + p * K * 32;
      for (std::int64_t k = 0; k < K; ++k) {
        prefetch_ahead(b + k * 32);
        prefetch_ahead(b + k * 32 + 16);
        const __m512 b0 = _mm512_load_ps(b + k * 32), b1 = _mm512_load_ps(b + k * 32 + 16);
        for (int m = 0; m < MB; ++m) {
          const __m512 a = _mm512_set1_ps(xs[m][k]);
          c0[m] = _mm512_fmadd_ps(a, b0, c0[m]);
          c1[m] = _mm512_fmadd_ps(a, b1, c1[m]);
        }
      }
    } else {
      const std::int64_t KW = (K + 1) / 2;
      const auto* b = static_cast<const std::uint32_t*>(W.data()) + p * KW * 32;
      for (std::int64_t j = 0; j < KW; ++j) {
        prefetch_ahead(b + j * 32);
        prefetch_ahead(b + j * 32 + 16);
        const __m512i v0 = _mm512_load_si512(b + j * 32), v1 = _mm512_load_si512(b + j * 32 + 16);
        const __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), e1 = _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16));
        const __m512 o0 = _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0xaaaaaaaau, v0));
        const __m512 o1 = _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0xaaaaaaaau, v1));
        const bool odd = 2 * j + 1 < K;
        for (int m = 0; m < MB; ++m) {
          const __m512 ae = _mm512_set1_ps(xs[m][2 * j]);
          const __m512 ao = _mm512_set1_ps(odd ? xs[m][2 * j + 1] : 0.f);
          c0[m] = _mm512_fmadd_ps(ae, e0, c0[m]);
          c1[m] = _mm512_fmadd_ps(ae, e1, c1[m]);
          c0[m] = _mm512_fmadd_ps(ao, o0, c0[m]);
          c1[m] = _mm512_fmadd_ps(ao, o1, c1[m]);
        }
      }
    }
    const std::int64_t n0 = p * 32, rows = std::min<std::int64_t>(32, N - n0);
    const __mmask16 k0 = mask16(rows), k1 = mask16(rows - 16);
    const __m512 bb0 = g.bias ? _mm512_maskz_loadu_ps(k0, g.bias + n0) : _mm512_setzero_ps();
    const __m512 bb1 = g.bias ? _mm512_maskz_loadu_ps(k1, g.bias + n0 + 16) : _mm512_setzero_ps();
    for (int m = 0; m < MB; ++m) {
      float* y = g.y + (m0 + m) * g.ldy + n0;
      _mm512_mask_storeu_ps(y, k0, _mm512_add_ps(c0[m], bb0));
      _mm512_mask_storeu_ps(y + 16, k1, _mm512_add_ps(c1[m], bb1));
    }
  }
}

// ---- GEMM (M large): C[M, N] = A[M, K] B[N, K]^T with an MR x 32 register-blocked micro-kernel.
// The weights are consumed as 32-column panels of 32-bit words Bp[kw][32] (the Panels layout, or
// packed per call into a 16 KiB L1-resident buffer per (32 columns x one K block)):
//   F32    word kw = w[n][kw]                         (f32 weights; Q weights dequantised to f32)
//   WIDEN  word kw = bf16 pair (w[n][2kw], w[n][2kw + 1]), widened to two f32 vectors in the
//          kernel by a shift (even k) and a 16-bit lane mask (odd k)
//   DPBF16 the same pairs, multiplied against bf16 activation pairs by vdpbf16ps
// Activations are packed per call in panels of MR rows: Ap[panel][k][r] (f32; K padded to even)
// or, for DPBF16, Ap[panel][kw][r] = bf16 pair (x[m][2kw], x[m][2kw + 1]).
// Per thread (a contiguous range of 32-column panels): N block of GEMM_NCP panels -> K block ->
// panel -> MR-row panels, so the A block and the C block stay in L2 and the B panel in L1.
enum GemmKind { kGemmF32 = 0, kGemmWiden = 1, kGemmDpbf16 = 2 };
constexpr int gemm_mr(int kind) { return kind == kGemmWiden ? 12 : 14; }
constexpr std::int64_t GEMM_KCW = 128;  // B words per K block (16 KiB per 32-column panel)
constexpr std::int64_t GEMM_NCP = 8;  // 32-column panels per N block

template <int KIND, int MR>
void ukernel(std::int64_t kwn, const std::uint32_t* A, const std::uint32_t* B, float* C, std::int64_t ldc, bool load_c,
             const float* bias, __mmask16 m0, __mmask16 m1, const char* pf) {
  __m512 c0[MR], c1[MR];
  if (load_c) {
    for (int r = 0; r < MR; ++r) {
      c0[r] = _mm512_maskz_loadu_ps(m0, C + r * ldc);
      c1[r] = _mm512_maskz_loadu_ps(m1, C + r * ldc + 16);
    }
  } else {
    const __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    const __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
    for (int r = 0; r < MR; ++r) {
      c0[r] = b0;
      c1[r] = b1;
    }
  }
  for (std::int64_t kw = 0; kw < kwn; ++kw) {
    _mm_prefetch(pf + kw * 64, _MM_HINT_T0);  // the next A panel, one line per step
    if constexpr (KIND == kGemmF32) {
      const __m512 b0 = _mm512_load_ps(reinterpret_cast<const float*>(B + kw * 32));
      const __m512 b1 = _mm512_load_ps(reinterpret_cast<const float*>(B + kw * 32 + 16));
      const float* a = reinterpret_cast<const float*>(A) + kw * MR;
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(a[r]);
        c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
        c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
      }
    } else if constexpr (KIND == kGemmWiden) {
      const float* a = reinterpret_cast<const float*>(A) + kw * 2 * MR;
      {
        const __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_load_si512(B + kw * 32), 16));
        const __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_load_si512(B + kw * 32 + 16), 16));
        for (int r = 0; r < MR; ++r) {
          const __m512 av = _mm512_set1_ps(a[r]);
          c0[r] = _mm512_fmadd_ps(av, e0, c0[r]);
          c1[r] = _mm512_fmadd_ps(av, e1, c1[r]);
        }
      }
      {
        const __m512 o0 = _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0xaaaaaaaau, _mm512_load_si512(B + kw * 32)));
        const __m512 o1 = _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0xaaaaaaaau, _mm512_load_si512(B + kw * 32 + 16)));
        for (int r = 0; r < MR; ++r) {
          const __m512 av = _mm512_set1_ps(a[MR + r]);
          c0[r] = _mm512_fmadd_ps(av, o0, c0[r]);
          c1[r] = _mm512_fmadd_ps(av, o1, c1[r]);
        }
      }
    } else {
#ifdef IB_W_BF16
      const __m512bh b0 = (__m512bh)_mm512_load_si512(B + kw * 32);
      const __m512bh b1 = (__m512bh)_mm512_load_si512(B + kw * 32 + 16);
      const std::uint32_t* a = A + kw * MR;
      for (int r = 0; r < MR; ++r) {
        const __m512bh av = (__m512bh)_mm512_set1_epi32(int(a[r]));
        c0[r] = _mm512_dpbf16_ps(c0[r], av, b0);
        c1[r] = _mm512_dpbf16_ps(c1[r], av, b1);
      }
#endif
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(C + r * ldc, m0, c0[r]);
    _mm512_mask_storeu_ps(C + r * ldc + 16, m1, c1[r]);
  }
}

using UkernelFn = void (*)(std::int64_t, const std::uint32_t*, const std::uint32_t*, float*, std::int64_t, bool,
                           const float*, __mmask16, __mmask16, const char*);
template <int KIND, int... R>
constexpr std::array<UkernelFn, sizeof...(R)> ukernel_table(std::integer_sequence<int, R...>) {
  return {&ukernel<KIND, R + 1>...};
}

// Packs `rows` (<= 32) rows of 32-bit words (row stride ld elements; `nvalid` valid bf16 (BF16)
// or f32 elements per row counted from src) into Bp[kw][32] for kw in [0, round_up(kwn, 16)).
// Everything outside the valid rows / columns is zero.
template <bool BF16>
void pack_b(const void* src, std::int64_t ld, std::int64_t rows, std::int64_t nvalid, std::int64_t kwn,
            std::uint32_t* Bp) {
  for (int h = 0; h < 2; ++h) {
    for (std::int64_t kc = 0; kc < kwn; kc += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        const std::int64_t row = 16 * h + i;
        if (row >= rows) {
          r[i] = _mm512_setzero_si512();
        } else if (BF16) {
          r[i] = _mm512_maskz_loadu_epi16(mask32(nvalid - 2 * kc), static_cast<const std::uint16_t*>(src) + row * ld + 2 * kc);
        } else {
          r[i] = _mm512_maskz_loadu_epi32(mask16(nvalid - kc), static_cast<const std::uint32_t*>(src) + row * ld + kc);
        }
      }
      transpose16x16(r);
      for (int j = 0; j < 16; ++j) _mm512_store_si512(Bp + (kc + j) * 32 + 16 * h, r[j]);
    }
  }
}

// Dequantises rows [n0, n0 + rows) of a Q matrix, columns [k0, k0 + klen) (k0 a multiple of 64;
// klen rounded up to 64 stays inside Kp), into rows of `tmp` (stride ld elements): f32 (exact)
// or bf16 (rounded to nearest even; needs AVX512-BF16).
template <bool BF16>
void dequant_q(const WeightMatrix& W, std::int64_t n0, std::int64_t rows, std::int64_t k0, std::int64_t klen, void* tmp,
               std::int64_t ld) {
  const std::int64_t Kp = W.padded_cols();
  const bool q4 = W.format() == WeightFormat::Q4_0;
  const auto* base = static_cast<const std::uint8_t*>(W.data());
  const std::int64_t kend = std::min(Kp, k0 + round_up(klen, 64));
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t n = n0 + i;
    const std::uint16_t* s = W.scales() + n * (Kp / QK);
    for (std::int64_t k = k0; k < kend; k += 64) {
      __m512i codes;  // 64 signed values
      if (q4) {
        const std::uint8_t* p = base + n * (Kp / 2) + k / 2;
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        codes = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
        codes = _mm512_sub_epi8(_mm512_and_si512(codes, _mm512_set1_epi8(0x0f)), _mm512_set1_epi8(8));
      } else {
        codes = _mm512_loadu_si512(base + n * Kp + k);
      }
      const __m512 d0 = _mm512_set1_ps(f16_to_f32(s[k / QK])), d1 = _mm512_set1_ps(f16_to_f32(s[k / QK + 1]));
      const __m512 f0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, 0))), d0);
      const __m512 f1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, 1))), d0);
      const __m512 f2 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, 2))), d1);
      const __m512 f3 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(codes, 3))), d1);
      if constexpr (BF16) {
#ifdef IB_W_BF16
        std::uint16_t* o = static_cast<std::uint16_t*>(tmp) + i * ld + (k - k0);
        _mm512_storeu_si512(o, (__m512i)_mm512_cvtne2ps_pbh(f1, f0));
        _mm512_storeu_si512(o + 32, (__m512i)_mm512_cvtne2ps_pbh(f3, f2));
#endif
      } else {
        float* o = static_cast<float*>(tmp) + i * ld + (k - k0);
        _mm512_storeu_ps(o, f0);
        _mm512_storeu_ps(o + 16, f1);
        _mm512_storeu_ps(o + 32, f2);
        _mm512_storeu_ps(o + 48, f3);
      }
    }
  }
}

// Row-major / Q sources are read 32 rows x one K block at a time (a strided pattern the hardware
// prefetchers do not follow); prefetching the next panel's rows while this one is packed and
// multiplied hides the memory latency (otherwise the packing dominates at small M).
void prefetch_source_rows(const WeightMatrix& W, std::int64_t n0, std::int64_t k0, std::int64_t nvalid) {
  const std::int64_t rows = std::min<std::int64_t>(32, W.rows() - n0);
  const auto* base = static_cast<const char*>(W.data());
  std::int64_t row_bytes, off, len;
  switch (W.format()) {
    case WeightFormat::F32: row_bytes = W.cols() * 4; off = k0 * 4; len = nvalid * 4; break;
    case WeightFormat::BF16: row_bytes = W.cols() * 2; off = k0 * 2; len = nvalid * 2; break;
    case WeightFormat::Q8_0: row_bytes = W.padded_cols(); off = k0; len = nvalid; break;
    default: row_bytes = W.padded_cols() / 2; off = k0 / 2; len = (nvalid + 1) / 2; break;
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    const char* p = base + (n0 + r) * row_bytes + off;
    for (std::int64_t b = 0; b < len; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
  }
}

template <int KIND>
void gemm_avx512(const WeightMatrix& W, const GemvArgs& g) {
  constexpr int MR = gemm_mr(KIND);
  const std::int64_t M = g.M, N = W.rows(), K = g.K;
  const std::int64_t KW = KIND == kGemmF32 ? K : (K + 1) / 2;    // B words per row
  const std::int64_t AW = KIND == kGemmWiden ? 2 * KW : KW;         // A words per row
  const std::int64_t mpanels = (M + MR - 1) / MR, npanels = (N + 31) / 32;
  Buf<std::uint32_t> Ap(std::size_t(mpanels * MR * AW));
  parallel_for(0, mpanels, 1, [&](std::int64_t p0, std::int64_t p1) {
    Buf<std::uint32_t> row(std::size_t(round_up(AW, 16)));
    for (std::int64_t p = p0; p < p1; ++p) {
      const std::int64_t mr = std::min<std::int64_t>(MR, M - p * MR);
      std::uint32_t* dst = Ap.p + p * MR * AW;
      for (std::int64_t r = 0; r < mr; ++r) {
        const float* x = g.x + (p * MR + r) * g.ldx;
        const std::uint32_t* words = reinterpret_cast<const std::uint32_t*>(x);
        if constexpr (KIND == kGemmDpbf16) {
#ifdef IB_W_BF16
          for (std::int64_t k = 0; k < K; k += 32) {
            const __m512 lo = _mm512_maskz_loadu_ps(mask16(K - k), x + k);
            const __m512 hi = _mm512_maskz_loadu_ps(mask16(K - k - 16), x + k + 16);
            _mm512_store_si512(row.p + k / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
          }
          words = row.p;
#endif
        } else if (AW != K) {  // odd K: zero pad
          std::memcpy(row.p, x, std::size_t(K) * 4);
          row.p[K] = 0;
          words = row.p;
        }
        for (std::int64_t kw = 0; kw < AW; ++kw) dst[kw * mr + r] = words[kw];
      }
    }
  });
  static constexpr auto table = ukernel_table<KIND>(std::make_integer_sequence<int, MR>{});
  const bool panels = W.layout() == WeightLayout::Panels;
  const bool q = W.format() == WeightFormat::Q8_0 || W.format() == WeightFormat::Q4_0;
  parallel_for(0, npanels, 1, [&](std::int64_t j0, std::int64_t j1) {
    Buf<std::uint32_t> Bp(panels ? 0 : std::size_t(GEMM_KCW * 32));
    Buf<std::uint32_t> tmp(q ? std::size_t(32 * GEMM_KCW) * (KIND == kGemmF32 ? 1 : 2) : 0);
    // One (32-column panel jp, K block kb) step: pack / dequantise B, then all MR-row panels.
    // nj, nk: the step that follows (its source is prefetched).
    auto step = [&](std::int64_t jp, std::int64_t kb, std::int64_t nj, std::int64_t nk) {
      const std::int64_t kwn = std::min(GEMM_KCW, KW - kb);
      const std::int64_t k0 = KIND == kGemmF32 ? kb : 2 * kb;
      const std::int64_t nvalid = std::min<std::int64_t>(KIND == kGemmF32 ? GEMM_KCW : 2 * GEMM_KCW, K - k0);
      const std::int64_t n0 = jp * 32, rows = std::min<std::int64_t>(32, N - n0);
      const std::uint32_t* B = Bp.p;
      if (!panels && nj >= 0)
        prefetch_source_rows(W, nj * 32, KIND == kGemmF32 ? nk : 2 * nk,
                             std::min<std::int64_t>(KIND == kGemmF32 ? GEMM_KCW : 2 * GEMM_KCW, K - (KIND == kGemmF32 ? nk : 2 * nk)));
      if (panels) {
        B = static_cast<const std::uint32_t*>(W.data()) + (jp * KW + kb) * 32;
      } else if (q) {
        if constexpr (KIND == kGemmF32) {
          dequant_q<false>(W, n0, rows, k0, nvalid, tmp.p, GEMM_KCW);
          pack_b<false>(tmp.p, GEMM_KCW, rows, nvalid, kwn, Bp.p);
        } else {
          dequant_q<true>(W, n0, rows, k0, nvalid, tmp.p, 2 * GEMM_KCW);
          pack_b<true>(tmp.p, 2 * GEMM_KCW, rows, nvalid, kwn, Bp.p);
        }
      } else if constexpr (KIND == kGemmF32) {
        pack_b<false>(static_cast<const float*>(W.data()) + n0 * K + k0, K, rows, nvalid, kwn, Bp.p);
      } else {
        pack_b<true>(static_cast<const std::uint16_t*>(W.data()) + n0 * K + k0, K, rows, nvalid, kwn, Bp.p);
      }
      const __mmask16 m0 = mask16(rows), m1 = mask16(rows - 16);
      const std::int64_t aoff = KIND == kGemmWiden ? 2 * kb : kb;
      // Panels: the next step's B block (contiguous) is prefetched a few lines per micro-kernel
      // call so that its first use does not stall on memory.
      const char* nxt = nullptr;
      std::int64_t lines = 0, per_call = 0;
      if (panels && nj >= 0) {
        nxt = reinterpret_cast<const char*>(static_cast<const std::uint32_t*>(W.data()) + (nj * KW + nk) * 32);
        lines = std::min(GEMM_KCW, KW - nk) * 2;  // 128 bytes per word row
        per_call = (lines + mpanels - 1) / mpanels;
      }
      for (std::int64_t ip = 0; ip < mpanels; ++ip) {
        const std::int64_t mr = std::min<std::int64_t>(MR, M - ip * MR);
        if (nxt)
          for (std::int64_t l = ip * per_call; l < std::min(lines, (ip + 1) * per_call); ++l)
            _mm_prefetch(nxt + l * 64, _MM_HINT_T0);
        const std::uint32_t* a = Ap.p + ip * MR * AW + aoff * mr;
        const std::uint32_t* a_next = ip + 1 < mpanels ? Ap.p + (ip + 1) * MR * AW + aoff * MR : Ap.p + aoff * MR;
        table[std::size_t(mr - 1)](kwn, a, B, g.y + ip * MR * g.ldy + n0, g.ldy, kb > 0,
                                   g.bias ? g.bias + n0 : nullptr, m0, m1, reinterpret_cast<const char*>(a_next));
        if (kb + GEMM_KCW >= KW) activate_block(g, ip * MR, ip * MR + mr, n0, n0 + rows);
      }
    };
    if (mpanels <= 2) {
      // Few rows: the activations stay in L1 / L2, so walk each panel's rows along K
      // (sequential reads of the source rows).
      for (std::int64_t jp = j0; jp < j1; ++jp)
        for (std::int64_t kb = 0; kb < KW; kb += GEMM_KCW) {
          const bool last = kb + GEMM_KCW >= KW;
          step(jp, kb, last ? (jp + 1 < j1 ? jp + 1 : -1) : jp, last ? 0 : kb + GEMM_KCW);
        }
    } else {
      // Many rows: N block -> K block -> panel, so the A block and the C block stay in L2.
      for (std::int64_t jb = j0; jb < j1; jb += GEMM_NCP) {
        const std::int64_t je = std::min(j1, jb + GEMM_NCP);
        for (std::int64_t kb = 0; kb < KW; kb += GEMM_KCW)
          for (std::int64_t jp = jb; jp < je; ++jp) {
            std::int64_t nj = jp + 1, nk = kb;
            if (nj == je) {
              nj = kb + GEMM_KCW < KW ? jb : (je < j1 ? je : -1);
              nk = kb + GEMM_KCW < KW ? kb + GEMM_KCW : 0;
            }
            step(jp, kb, nj, nk);
          }
      }
    }
  });
}

#endif  // IB_W_AVX512

// ---------------------------------------------------------------------------------------------
// 7. dispatch

template <typename F>
void for_row_groups(std::int64_t M, F&& f) {  // calls f(integral_constant<MB>, m0) for groups of <= 8 rows
  for (std::int64_t m0 = 0; m0 < M; m0 += 8) {
    switch (std::min<std::int64_t>(8, M - m0)) {
      case 1: f(std::integral_constant<int, 1>{}, m0); break;
      case 2: f(std::integral_constant<int, 2>{}, m0); break;
      case 3: f(std::integral_constant<int, 3>{}, m0); break;
      case 4: f(std::integral_constant<int, 4>{}, m0); break;
      case 5: f(std::integral_constant<int, 5>{}, m0); break;
      case 6: f(std::integral_constant<int, 6>{}, m0); break;
      case 7: f(std::integral_constant<int, 7>{}, m0); break;
      default: f(std::integral_constant<int, 8>{}, m0); break;
    }
  }
}

void gemv(const WeightMatrix& W, const GemvArgs& g) {
  const std::int64_t N = W.rows(), K = g.K, Kp = W.padded_cols();
  const std::int64_t grain = std::max<std::int64_t>(1, (1 << 15) / std::max<std::int64_t>(1, K * g.M));
  const bool simd = use_avx512();
  const bool q = W.format() == WeightFormat::Q8_0 || W.format() == WeightFormat::Q4_0;
  QuantAct qa;
  if (q) quantize_act(g.x, g.ldx, g.M, K, Kp, W.format() == WeightFormat::Q8_0 ? 128 : 8, simd, qa);
  if (!simd) {
    parallel_for(0, N, grain, [&](std::int64_t n0, std::int64_t n1) {
      gemv_portable(W, g, &qa, n0, n1);
      activate_block(g, 0, g.M, n0, n1);
    });
    return;
  }
#ifdef IB_W_AVX512
  if (W.layout() == WeightLayout::Panels) {
    parallel_for(0, (N + 31) / 32, (grain + 31) / 32, [&](std::int64_t p0, std::int64_t p1) {
      for_row_groups(g.M, [&](auto mb, std::int64_t m0) { gemv_panels_avx512<decltype(mb)::value>(W, g, m0, p0, p1); });
      activate_block(g, 0, g.M, p0 * 32, std::min(N, p1 * 32));
    });
    return;
  }
  switch (W.format()) {
    case WeightFormat::F32: {
      const auto* Wd = static_cast<const float*>(W.data());
      parallel_for(0, N, grain, [&](std::int64_t n0, std::int64_t n1) {
        for_row_groups(g.M, [&](auto mb, std::int64_t m0) { gemv_f32_avx512<decltype(mb)::value>(Wd, g, m0, n0, n1); });
        activate_block(g, 0, g.M, n0, n1);
      });
      return;
    }
    case WeightFormat::BF16: {
      const std::int64_t K32 = round_up(K, 32);
      Buf<float> xe(std::size_t(g.M * K32));
      arrange_bf16_act(g.x, g.ldx, g.M, K, K32, xe.p);
      const auto* Wd = static_cast<const std::uint16_t*>(W.data());
      parallel_for(0, N, grain, [&](std::int64_t n0, std::int64_t n1) {
        for_row_groups(g.M, [&](auto mb, std::int64_t m0) {
          gemv_bf16_avx512<decltype(mb)::value>(Wd, g, xe.p, K32, m0, n0, n1);
        });
        activate_block(g, 0, g.M, n0, n1);
      });
      return;
    }
    case WeightFormat::Q8_0:
    case WeightFormat::Q4_0: {
      const bool q4 = W.format() == WeightFormat::Q4_0, vnni = use_vnni();
      parallel_for(0, N, grain, [&](std::int64_t n0, std::int64_t n1) {
        for_row_groups(g.M, [&](auto mb, std::int64_t m0) {
          constexpr int MB = decltype(mb)::value;
#ifdef IB_W_VNNI
          if (vnni) {
            if (q4) gemv_q_avx512<true, true, MB>(W, g, qa, m0, n0, n1);
            else gemv_q_avx512<false, true, MB>(W, g, qa, m0, n0, n1);
            return;
          }
#endif
          if (q4) gemv_q_avx512<true, false, MB>(W, g, qa, m0, n0, n1);
          else gemv_q_avx512<false, false, MB>(W, g, qa, m0, n0, n1);
        });
        activate_block(g, 0, g.M, n0, n1);
      });
      (void)vnni;
      return;
    }
  }
#endif
}

// Which M-large path a matrix takes: 0 portable, 1 f32 FMA, 2 widen (bf16 -> f32) FMA, 3 dpbf16,
// 4 AMX-BF16. bf16: the BF16-compute regime (ignored for F32 weights).
int gemm_path(const WeightMatrix& W, bool bf16) {
  if (W.format() != WeightFormat::F32 && bf16 && use_amx()) return 4;
  if (!use_avx512()) return 0;
  if (W.format() == WeightFormat::F32) return 1;
  if (bf16) return use_bf16() ? 3 : 0;
  return W.format() == WeightFormat::BF16 ? 2 : 1;
}

bool resolve_bf16(GemmCompute c) {
  return c == GemmCompute::Auto ? g_gemm_bf16.load() : c == GemmCompute::BF16;
}

// ---- vectorised activations (the fused epilogue and gelu_vectorized)
#ifdef IB_W_AVX512
// e^x, ~1 ulp (Cephes expf polynomial on x - n ln2, |r| <= ln2 / 2; scalef handles under- /
// overflow).
inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) with erfc(t) = s P(s) e^{-t^2}, s = 1 / (1 + p t)
// (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7), t = |x| / sqrt 2: h = 0.5 x erfc(t) is
// x Phi(x) for x < 0 and x - x Phi(x) for x > 0, so both tails keep their relative accuracy.
// |x| is clamped to 12 inside h so that no intermediate is subnormal (subnormal results cost a
// microcode assist each - 30x slower on large activations); x * Phi(x) < 3e-32 beyond, so
// x < -12 gives 0 (and -inf 0), x > 12 gives x exactly (+inf inf); NaN propagates.
inline __m512 gelu_avx512(__m512 x) {
  // (max / min return their second operand when one is NaN: x's NaN propagates)
  const __m512 xc = _mm512_min_ps(_mm512_set1_ps(12.f), _mm512_max_ps(_mm512_set1_ps(-12.f), x));
  const __m512 t = _mm512_mul_ps(_mm512_abs_ps(xc), _mm512_set1_ps(0.70710678118654752f));
  const __m512 s = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_fmadd_ps(t, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.f)));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, s);
  const __m512 e = _mm512_mul_ps(p, exp_avx512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), t), t)));
  const __m512 h = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), xc), e);
  const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
  const __mmask16 far_neg = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-12.f), _CMP_LT_OQ);
  return _mm512_maskz_mov_ps(_knot_mask16(far_neg), _mm512_mask_sub_ps(h, pos, x, h));  // NaN: h is NaN
}
#endif

void gelu_impl(float* x, std::int64_t n) {
#ifdef IB_W_AVX512
  if (use_avx512()) {
    std::int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, gelu_avx512(_mm512_loadu_ps(x + i)));
    if (i < n) {
      const __mmask16 k = mask16(n - i);
      _mm512_mask_storeu_ps(x + i, k, gelu_avx512(_mm512_maskz_loadu_ps(k, x + i)));
    }
    return;
  }
#endif
  gelu<float>(x, std::size_t(n));
}

void apply_activation(Activation a, float* p, std::int64_t n) {
  switch (a) {
    case Activation::Gelu: gelu_impl(p, n); return;
    case Activation::Relu:
      for (std::int64_t i = 0; i < n; ++i) p[i] = p[i] > 0.f ? p[i] : (p[i] == p[i] ? 0.f : p[i]);
      return;
    default: activate<float>(a, p, std::size_t(n)); return;
  }
}

void amx_epilogue(float* y, std::int64_t n, const void* ctx) {
  apply_activation(*static_cast<const Activation*>(ctx), y, n);
}

}  // namespace

void gelu_vectorized(float* x, std::size_t n) { gelu_impl(x, std::int64_t(n)); }
void activate_vectorized(Activation a, float* x, std::size_t n) { apply_activation(a, x, std::int64_t(n)); }

void set_force_scalar(bool on) { g_force_scalar.store(on); }
bool force_scalar() { return g_force_scalar.load(); }
void set_disabled_isa(unsigned mask) { g_disabled.store(mask); }
unsigned disabled_isa() { return g_disabled.load(); }
void set_gemv_max_rows(int m) { g_gemv_max_rows.store(std::max(0, m)); }
int gemv_max_rows() { return g_gemv_max_rows.load(); }
void set_gemm_bf16_activations(bool on) { g_gemm_bf16.store(on); }
bool gemm_bf16_activations() { return g_gemm_bf16.load(); }

void linear(const In<float>& x, const WeightMatrix& W, const float* bias, Out<float> y) {
  linear(x, W, bias, y, LinearOptions{});
}

void linear(const In<float>& x, const WeightMatrix& W, const float* bias, Out<float> y, const LinearOptions& options) {
  if (!W.defined()) throw InvalidArgument("linear: undefined WeightMatrix");
  if (x.cols() != W.cols() || y.rows() != x.rows() || y.cols() != W.rows())
    throw InvalidArgument("linear: x [" + std::to_string(x.rows()) + ", " + std::to_string(x.cols()) + "] W [" +
                          std::to_string(W.rows()) + ", " + std::to_string(W.cols()) + "] (" +
                          weight_format_name(W.format()) + ") y [" + std::to_string(y.rows()) + ", " +
                          std::to_string(y.cols()) + "]");
  const std::int64_t M = x.rows(), N = W.rows(), K = W.cols();
  if (M == 0 || N == 0) return;
  const Activation act = options.activation;
  const Activation* actp = options.activate ? &act : nullptr;
  if (K == 0) {
    for (std::int64_t m = 0; m < M; ++m) {
      for (std::int64_t n = 0; n < N; ++n) y(m, n) = bias ? bias[n] : 0.f;
      if (actp) apply_activation(act, &y(m, 0), N);
    }
    return;
  }
  const GemvArgs g{x.data(), x.outerStride(), M, K, y.data(), y.outerStride(), bias, actp};
  if (M <= gemv_max_rows()) {
    gemv(W, g);
    return;
  }
  // Read the process-wide setting once: the whole call uses one regime.
  const bool bf16 = resolve_bf16(options.compute) && W.format() != WeightFormat::F32;
  switch (gemm_path(W, bf16)) {
    case 4: {
      const detail::AmxGemmArgs a{g.x, g.ldx, M, K, g.y, g.ldy, bias, actp ? &amx_epilogue : nullptr, actp};
      detail::gemm_amx_bf16(W, a);
      return;
    }
#ifdef IB_W_AVX512
    case 1: gemm_avx512<kGemmF32>(W, g); return;
    case 2: gemm_avx512<kGemmWiden>(W, g); return;
#endif
#ifdef IB_W_BF16
    case 3: gemm_avx512<kGemmDpbf16>(W, g); return;
#endif
    default: break;
  }
  gemm_portable(W, g, bf16);
}

MatrixF linear(const In<float>& x, const WeightMatrix& W, const float* bias) {
  MatrixF y(x.rows(), W.rows());
  linear(x, W, bias, y);
  return y;
}

std::string kernel_name(const WeightMatrix& W, std::int64_t M) { return kernel_name(W, M, GemmCompute::Auto); }

std::string kernel_name(const WeightMatrix& W, std::int64_t M, GemmCompute compute) {
  const bool panels = W.layout() == WeightLayout::Panels;
  const std::string lay = panels ? "(panels)" : "(row-major)";
  const char* fmt = weight_format_name(W.format());
  if (M <= gemv_max_rows()) {
    if (!use_avx512()) return std::string("portable-gemv-") + fmt;
    if (W.format() == WeightFormat::Q8_0 || W.format() == WeightFormat::Q4_0)
      return std::string(use_vnni() ? "avx512vnni-dpbusd-" : "avx512bw-maddubs-") + fmt;
    return std::string(W.format() == WeightFormat::F32 ? "avx512-fma-gemv" : "avx512-widen-fma-gemv") + lay;
  }
  const bool bf16 = resolve_bf16(compute) && W.format() != WeightFormat::F32;
  switch (gemm_path(W, bf16)) {
    case 1: return std::string("avx512-fma-gemm") + (W.format() == WeightFormat::F32 ? lay : std::string("(") + fmt + "->f32)");
    case 2: return "avx512-widen-fma-gemm" + lay;
    case 3: return std::string("avx512bf16-dpbf16ps-gemm(") + fmt + (panels ? ",panels)" : ")");
    case 4: return std::string("amx-bf16-tdpbf16ps-gemm(") + fmt + (panels ? ",panels)" : ")");
    default: break;
  }
  return bf16 ? "eigen-gemm(bf16-rounded tiles)" : "eigen-gemm(f32 tiles)";
}

std::string cpu_features() {
  const IsaInfo& s = isa();
  std::ostringstream os;
  os << "compiled:";
#ifdef IB_W_AVX512
  os << " avx512f/bw/vl";
#endif
#ifdef IB_W_VNNI
  os << " avx512vnni";
#endif
#ifdef IB_W_BF16
  os << " avx512bf16";
#endif
#if !defined(IB_W_AVX512)
  os << " portable";
#endif
  const bool amx = detail::amx_bf16_usable();
  os << " | cpu:" << (s.cpu_avx512 ? " avx512f/bw/vl" : "") << (s.cpu_vnni ? " avx512vnni" : "")
     << (s.cpu_bf16 ? " avx512bf16" : "") << (s.cpu_avx2 ? " avx2" : "") << (amx ? " amx-bf16(os-enabled)" : "");
  const bool a = use_avx512(), v = use_vnni(), b = use_bf16(), x = use_amx();
  os << " | M<=" << gemv_max_rows() << ": f32=" << (a ? "avx512-fma" : "portable")
     << " bf16=" << (a ? "avx512-widen-fma" : "portable")
     << " q8_0/q4_0=" << (v ? "avx512vnni-dpbusd" : a ? "avx512bw-maddubs" : "portable")
     << " | M>" << gemv_max_rows() << ": f32=" << (a ? "avx512-fma-gemm" : "eigen");
  const char* bf16_kernel = x ? "amx-bf16-tdpbf16ps-gemm" : b ? "avx512bf16-dpbf16ps-gemm" : "eigen(bf16-rounded)";
  if (g_gemm_bf16.load())
    os << " bf16/q8_0/q4_0=" << bf16_kernel;
  else
    os << " bf16=" << (a ? "avx512-widen-fma-gemm" : "eigen") << " q8_0/q4_0=" << (a ? "dequant-f32+avx512-fma-gemm" : "eigen")
       << " (GemmCompute::BF16: " << bf16_kernel << ")";
  if (g_force_scalar.load()) os << " (forced portable)";
  return os.str();
}

}  // namespace instructblip::ops

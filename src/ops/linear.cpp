// ops::linear() for WeightMatrix: picks the kernel level from the CPU at run time (cpu.hpp) and
// the regime from M and the weight format (weights.hpp, "linear() numerics"); kernel_name() and
// cpu_features() report the choice.
#include <algorithm>
#include <atomic>
#include <sstream>

#include "cpu.hpp"
#include "instructblip/ops/weights.hpp"
#include "kernels.hpp"
#include "kernels_amx.hpp"

namespace instructblip::ops {

namespace {

using namespace detail;

std::atomic<bool> g_gemm_bf16{false};
thread_local bool t_row_independent = false;
thread_local std::int64_t t_items = 1;
// The rows that choose the regime: one item's (StackedItems), else all of them.
std::int64_t regime_rows(std::int64_t M) { return t_items > 1 && M % t_items == 0 ? M / t_items : M; }

bool resolve_bf16(GemmCompute c) { return c == GemmCompute::Auto ? g_gemm_bf16.load() : c == GemmCompute::BF16; }

void apply_activation(Activation a, float* p, std::int64_t n) {
  if (use_avx512()) avx512::activate(a, p, n);
  else activate_portable(a, p, n);
}

void amx_epilogue(float* y, std::int64_t n, const void* ctx) {
  apply_activation(*static_cast<const Activation*>(ctx), y, n);
}

enum class Level { Portable, Avx2, Avx512 };
Level level() { return use_avx512() ? Level::Avx512 : use_avx2() ? Level::Avx2 : Level::Portable; }

// The M-large path of a matrix. bf16: the BF16-compute regime (ignored for F32 weights).
enum class Path { Portable, Avx2, F32, Widen, Dpbf16, Amx };
Path gemm_path(const WeightMatrix& W, bool bf16) {
  if (W.format() != WeightFormat::F32 && bf16 && use_amx()) return Path::Amx;
  switch (level()) {
    case Level::Avx512:
      if (W.format() == WeightFormat::F32) return Path::F32;
      if (bf16) return use_bf16() ? Path::Dpbf16 : Path::Avx2;  // no vdpbf16ps: exact emulation
      return W.format() == WeightFormat::BF16 ? Path::Widen : Path::F32;
    case Level::Avx2: return Path::Avx2;
    case Level::Portable: break;
  }
  return Path::Portable;
}

void gemv(const WeightMatrix& W, const GemvArgs& g) {
  const Level lv = level();
  QuantAct qa;
  if (W.format() == WeightFormat::Q8_0 || W.format() == WeightFormat::Q4_0)
    quantize_act(g.x, g.ldx, g.M, g.K, W.padded_cols(), W.format() == WeightFormat::Q8_0 ? 128 : 8,
                 lv == Level::Avx512, qa);
  switch (lv) {
    case Level::Avx512: avx512::gemv(W, g, &qa, use_vnni()); return;
    case Level::Avx2: avx2::gemv(W, g, &qa); return;
    case Level::Portable: portable::gemv(W, g, &qa); return;
  }
}

}  // namespace

template <>
void softmax_row<float>(float* x, std::size_t n) {
  if (n > 0 && use_avx512()) avx512::softmax_row(x, std::int64_t(n));
  else softmax_row_std(x, n);
}

void gelu_vectorized(float* x, std::size_t n) { apply_activation(Activation::Gelu, x, std::int64_t(n)); }
void activate_vectorized(Activation a, float* x, std::size_t n) { apply_activation(a, x, std::int64_t(n)); }

RowIndependentProducts::RowIndependentProducts() : previous_(t_row_independent) { t_row_independent = true; }
RowIndependentProducts::~RowIndependentProducts() { t_row_independent = previous_; }
bool RowIndependentProducts::active() { return t_row_independent; }
StackedItems::StackedItems(std::int64_t count) : previous_(t_items) { t_items = std::max<std::int64_t>(1, count); }
StackedItems::~StackedItems() { t_items = previous_; }

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
  if (regime_rows(M) <= gemv_max_rows() || t_row_independent) {
    gemv(W, g);
    return;
  }
  // Read the process-wide setting once: the whole call uses one regime.
  const bool bf16 = resolve_bf16(options.compute) && W.format() != WeightFormat::F32;
  switch (gemm_path(W, bf16)) {
    case Path::Amx: {
      const AmxGemmArgs a{g.x, g.ldx, M, K, g.y, g.ldy, bias, actp ? &amx_epilogue : nullptr, actp};
      gemm_amx_bf16(W, a);
      return;
    }
    case Path::F32: avx512::gemm(W, g, GemmKind::F32); return;
    case Path::Widen: avx512::gemm(W, g, GemmKind::Widen); return;
    case Path::Dpbf16: avx512::gemm(W, g, GemmKind::Dpbf16); return;
    case Path::Avx2: avx2::gemm(W, g, bf16); return;
    case Path::Portable: portable::gemm(W, g, bf16); return;
  }
}

MatrixF linear(const In<float>& x, const WeightMatrix& W, const float* bias) {
  MatrixF y(x.rows(), W.rows());
  linear(x, W, bias, y);
  return y;
}

WeightLayout preferred_layout(WeightFormat format) {
  switch (format) {
    case WeightFormat::F32:
    case WeightFormat::BF16: return WeightLayout::Panels;
    // (AMX machines keep row-major q8_0: their prompt products load rows into AMX tiles straight,
    // where panels would need a gather per 64 weights; not measured there yet)
    case WeightFormat::Q8_0:
      return level() == Level::Avx512 && !use_amx() ? WeightLayout::Panels : WeightLayout::RowMajor;
    case WeightFormat::Q4_0: break;
  }
  return WeightLayout::RowMajor;
}

std::string kernel_name(const WeightMatrix& W, std::int64_t M) { return kernel_name(W, M, GemmCompute::Auto); }

std::string kernel_name(const WeightMatrix& W, std::int64_t M, GemmCompute compute) {
  const bool panels = W.layout() == WeightLayout::Panels;
  const std::string lay = panels ? "(panels)" : "(row-major)";
  const std::string fmt = weight_format_name(W.format());
  const bool q = W.format() == WeightFormat::Q8_0 || W.format() == WeightFormat::Q4_0;
  if (regime_rows(M) <= gemv_max_rows() || t_row_independent) {
    switch (level()) {
      case Level::Portable: return "portable-gemv-" + fmt;
      case Level::Avx2: return "avx2-gemv-" + fmt;
      case Level::Avx512: break;
    }
    if (q) return (use_vnni() ? "avx512vnni-dpbusd-" : "avx512bw-maddubs-") + fmt + (panels ? "(panels)" : "");
    return std::string(W.format() == WeightFormat::F32 ? "avx512-fma-gemv" : "avx512-widen-fma-gemv") + lay;
  }
  const bool bf16 = resolve_bf16(compute) && W.format() != WeightFormat::F32;
  const std::string rounded = bf16 ? "(bf16-rounded tiles)" : "(f32 tiles)";
  switch (gemm_path(W, bf16)) {
    case Path::F32: return "avx512-fma-gemm" + (W.format() == WeightFormat::F32 ? lay : "(" + fmt + "->f32)");
    case Path::Widen: return "avx512-widen-fma-gemm" + lay;
    case Path::Dpbf16: return "avx512bf16-dpbf16ps-gemm(" + fmt + (panels ? ",panels)" : ")");
    case Path::Amx: return "amx-bf16-tdpbf16ps-gemm(" + fmt + (panels ? ",panels)" : ")");
    case Path::Avx2: return "avx2-eigen-gemm" + rounded;
    case Path::Portable: break;
  }
  return "eigen-gemm" + rounded;
}

std::string cpu_features() {
  const CpuInfo& c = cpu();
  const bool amx = amx_bf16_usable();
  std::ostringstream os;
  os << "levels: portable" << (avx2::compiled() ? " avx2" : "") << (avx512::compiled() ? " avx512" : "")
     << (amx_compiled() ? " amx" : "");
  os << " | cpu:" << (c.avx2 ? " avx2+fma" : "") << (c.avx512 ? " avx512(f/bw/vl/dq/vnni)" : "")
     << (c.bf16 ? " avx512bf16" : "") << (amx ? " amx-bf16(os-enabled)" : "");
  const Level lv = level();
  const char* lname = lv == Level::Avx512 ? "avx512" : lv == Level::Avx2 ? "avx2" : "portable";
  os << " | using: " << lname << (use_amx() ? "+amx" : use_bf16() ? "+bf16" : "");
  if (force_scalar()) os << " (forced portable)";
  const bool a = lv == Level::Avx512;
  const std::string gemv_f = a ? "avx512-fma" : lv == Level::Avx2 ? "avx2" : "portable";
  const std::string gemm_f = a ? "avx512-fma-gemm" : lv == Level::Avx2 ? "avx2-eigen" : "eigen";
  os << " | M<=" << gemv_max_rows() << ": f32/bf16=" << gemv_f
     << " q8_0/q4_0=" << (a ? (use_vnni() ? "avx512vnni-dpbusd" : "avx512bw-maddubs") : gemv_f);
  const char* bf16_kernel = use_amx() ? "amx-bf16-tdpbf16ps-gemm"
                            : use_bf16() ? "avx512bf16-dpbf16ps-gemm"
                            : lv == Level::Portable ? "eigen(bf16-rounded)" : "avx2-eigen(bf16-rounded)";
  os << " | M>" << gemv_max_rows() << ": f32=" << gemm_f;
  if (g_gemm_bf16.load())
    os << " bf16/q8_0/q4_0=" << bf16_kernel;
  else
    os << " bf16=" << (a ? "avx512-widen-fma-gemm" : gemm_f) << " q8_0/q4_0=" << (a ? "dequant-f32+avx512-fma-gemm" : gemm_f)
       << " (GemmCompute::BF16: " << bf16_kernel << ")";
  return os.str();
}

}  // namespace instructblip::ops

// WeightMatrix formats (f32 / bf16 / q8_0 / q4_0) and ops::linear on them.
//
// Each result is checked against a double-precision reference of what the kernel is defined to
// compute (weights.hpp, "linear() numerics"): the dequantised weights times the activations as
// the kernel sees them (f32; int8-quantised per 32-block for q8_0 / q4_0 at small M; with
// set_gemm_bf16_activations(true) activations and weights rounded to bf16 at large M).
// Per element: |y - ref| <= 2e-6 * (sum_k |w_k x_k| + |b|) (a float32 summation bound), reported
// as the worst ratio reached. Quantisation error against the dequantised weights with f32
// activations and against the original f32 weights is reported as the relative Frobenius error
// and bounded (q8_0 < 1% / 1.5%, q4_0 < 1% / 15%, bf16 < 0.5%, bf16-activation GEMM < 1%).
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 intrinsics (inlined through Eigen) trip a spurious -Wmaybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>

#include "instructblip/core/thread_pool.hpp"
#include "ops/cpu.hpp"
#include "instructblip/io/safetensors.hpp"
#include "instructblip/ops/weights.hpp"

using namespace instructblip;
using ops::WeightFormat;
using ops::WeightMatrix;

namespace {

constexpr double kSumTol = 2e-6;
const WeightFormat kFormats[] = {WeightFormat::F32, WeightFormat::BF16, WeightFormat::Q8_0, WeightFormat::Q4_0};
struct Config {
  WeightFormat f;
  ops::WeightLayout l;
};
const Config kConfigs[] = {{WeightFormat::F32, ops::WeightLayout::RowMajor},  {WeightFormat::F32, ops::WeightLayout::Panels},
                           {WeightFormat::BF16, ops::WeightLayout::RowMajor}, {WeightFormat::BF16, ops::WeightLayout::Panels},
                           {WeightFormat::Q8_0, ops::WeightLayout::RowMajor}, {WeightFormat::Q8_0, ops::WeightLayout::Panels},
                           {WeightFormat::Q4_0, ops::WeightLayout::RowMajor}};
constexpr int kNumConfigs = int(sizeof(kConfigs) / sizeof(kConfigs[0]));
std::string cname(const Config& c) {
  return std::string(ops::weight_format_name(c.f)) + (c.l == ops::WeightLayout::Panels ? "/panels" : "");
}

MatrixF random_matrix(Eigen::Index r, Eigen::Index c, unsigned seed, float scale = 1.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.f, scale);
  MatrixF m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(g);
  return m;
}

Tensor to_tensor(const MatrixF& m) {
  Tensor t = Tensor::empty({m.rows(), m.cols()});
  std::memcpy(t.data<float>(), m.data(), std::size_t(m.size()) * 4);
  return t;
}

MatrixF to_matrix(const Tensor& t) {
  MatrixF m(t.dim(0), t.dim(1));
  std::memcpy(m.data(), t.data<float>(), std::size_t(m.size()) * 4);
  return m;
}

float bf16_round(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// Activations as the kernel sees them (see weights.hpp).
MatrixF effective_x(const MatrixF& x, WeightFormat f, bool large_m) {
  MatrixF e = x;
  if (f == WeightFormat::F32) return e;
  if (large_m) {
    if (ops::gemm_bf16_activations())
      for (Eigen::Index i = 0; i < e.size(); ++i) e.data()[i] = bf16_round(e.data()[i]);
    return e;
  }
  if (f == WeightFormat::BF16) return e;
  for (Eigen::Index m = 0; m < x.rows(); ++m)
    for (Eigen::Index b = 0; b * 32 < x.cols(); ++b) {
      const Eigen::Index k0 = b * 32, k1 = std::min<Eigen::Index>(x.cols(), k0 + 32);
      float amax = 0.f;
      for (Eigen::Index k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(x(m, k)));
      const float id = amax > 0.f ? 127.f / amax : 0.f, d = amax / 127.f;
      for (Eigen::Index k = k0; k < k1; ++k) e(m, k) = float(std::nearbyint(x(m, k) * id)) * d;
    }
  return e;
}

MatrixF effective_w(const WeightMatrix& W, bool large_m) {
  MatrixF w = to_matrix(W.dequantize());
  if (large_m && ops::gemm_bf16_activations() && W.format() != WeightFormat::F32)
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = bf16_round(w.data()[i]);
  return w;
}

struct Ref {
  Eigen::MatrixXd y, mag;  // reference and sum_k |w x| + |b|
};

Ref reference(const MatrixF& x, const MatrixF& w, const float* bias) {
  Ref r{Eigen::MatrixXd(x.rows(), w.rows()), Eigen::MatrixXd(x.rows(), w.rows())};
  for (Eigen::Index m = 0; m < x.rows(); ++m)
    for (Eigen::Index n = 0; n < w.rows(); ++n) {
      double s = bias ? bias[n] : 0.0, a = bias ? std::fabs(bias[n]) : 0.0;
      for (Eigen::Index k = 0; k < x.cols(); ++k) {
        s += double(x(m, k)) * double(w(n, k));
        a += std::fabs(double(x(m, k)) * double(w(n, k)));
      }
      r.y(m, n) = s;
      r.mag(m, n) = a;
    }
  return r;
}

// Worst |y - ref| / (kSumTol * mag); <= 1 passes.
double worst_ratio(const MatrixF& y, const Ref& r) {
  double worst = 0;
  for (Eigen::Index m = 0; m < y.rows(); ++m)
    for (Eigen::Index n = 0; n < y.cols(); ++n)
      worst = std::max(worst, std::fabs(double(y(m, n)) - r.y(m, n)) / (kSumTol * r.mag(m, n) + 1e-30));
  return worst;
}

double rel_frobenius(const MatrixF& y, const Eigen::MatrixXd& ref) {
  return (y.cast<double>() - ref).norm() / std::max(ref.norm(), 1e-300);
}

bool is_large(Eigen::Index M) { return M > ops::gemv_max_rows(); }

bool bit_equal(const MatrixF& a, const MatrixF& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), std::size_t(a.size()) * 4) == 0;
}

struct ScalarGuard {
  explicit ScalarGuard(bool on) { ops::set_force_scalar(on); }
  ~ScalarGuard() { ops::set_force_scalar(false); }
};
struct Bf16GemmGuard {
  explicit Bf16GemmGuard(bool on) { ops::set_gemm_bf16_activations(on); }
  ~Bf16GemmGuard() { ops::set_gemm_bf16_activations(false); }
};
struct ThreadGuard {
  explicit ThreadGuard(int n) : old(num_threads()) { set_num_threads(n); }
  ~ThreadGuard() { set_num_threads(old); }
  int old;
};

}  // namespace

TEST(Weights, CpuFeatures) {
  const std::string s = ops::cpu_features();
  std::printf("cpu_features: %s\n", s.c_str());
  EXPECT_NE(s.find("levels: portable"), std::string::npos);
  EXPECT_NE(s.find("using: "), std::string::npos);
}

TEST(Weights, FormatNames) {
  for (WeightFormat f : kFormats) {
    WeightFormat g;
    ASSERT_TRUE(ops::parse_weight_format(ops::weight_format_name(f), &g));
    EXPECT_EQ(f, g);
  }
  WeightFormat g;
  EXPECT_TRUE(ops::parse_weight_format("BF16", &g));
  EXPECT_EQ(g, WeightFormat::BF16);
  EXPECT_FALSE(ops::parse_weight_format("q5_k", &g));
}

TEST(Weights, ZeroCopyAndBf16Rounding) {
  MatrixF w = random_matrix(5, 37, 1);
  Tensor t = to_tensor(w);
  WeightMatrix f(t, WeightFormat::F32);
  EXPECT_EQ(f.data(), t.raw());
  EXPECT_EQ(f.bytes(), std::size_t(5 * 37 * 4));
  Tensor tb = t.to(DType::BF16);
  WeightMatrix b(tb, WeightFormat::BF16);
  EXPECT_EQ(b.data(), tb.raw());
  EXPECT_EQ(b.bytes(), std::size_t(5 * 37 * 2));
  WeightMatrix b2(t, WeightFormat::BF16);  // rounded from f32, nearest-even
  const auto* p = static_cast<const std::uint16_t*>(b2.data());
  for (int i = 0; i < 5 * 37; ++i) ASSERT_EQ(p[i], f32_to_bf16(w.data()[i]));
  // f16 source
  WeightMatrix h(t.to(DType::F16), WeightFormat::F32);
  MatrixF hd = to_matrix(h.dequantize());
  for (int i = 0; i < 5 * 37; ++i) ASSERT_EQ(hd.data()[i], f16_to_f32(f32_to_f16(w.data()[i])));
  EXPECT_THROW(WeightMatrix(Tensor::zeros({3}), WeightFormat::F32), TensorError);
}

TEST(Weights, QuantisationOfBlocks) {
  // K = 70: blocks [0,32) [32,64) [64,70) + zero padding to Kp = 128.
  MatrixF w = random_matrix(3, 70, 2);
  w(1, 5) = 0;  // an all-zero block:
  for (int k = 32; k < 64; ++k) w(2, k) = 0.f;
  WeightMatrix q8(to_tensor(w), WeightFormat::Q8_0), q4(to_tensor(w), WeightFormat::Q4_0);
  EXPECT_EQ(q8.padded_cols(), 128);
  EXPECT_EQ(q8.bytes(), std::size_t(3 * 128 + 3 * 4 * 2));
  EXPECT_EQ(q4.bytes(), std::size_t(3 * 64 + 3 * 4 * 2));
  MatrixF d8 = to_matrix(q8.dequantize()), d4 = to_matrix(q4.dequantize());
  for (int n = 0; n < 3; ++n)
    for (int b = 0; b < 3; ++b) {
      const int k0 = 32 * b, k1 = std::min(70, k0 + 32);
      float amax = 0, mval = 0;
      for (int k = k0; k < k1; ++k)
        if (std::fabs(w(n, k)) > amax) { amax = std::fabs(w(n, k)); mval = w(n, k); }
      const float s8 = f16_to_f32(q8.scales()[n * 4 + b]), s4 = f16_to_f32(q4.scales()[n * 4 + b]);
      EXPECT_EQ(s8, f16_to_f32(f32_to_f16(amax / 127.f)));
      EXPECT_EQ(s4, f16_to_f32(f32_to_f16(mval / -8.f)));
      for (int k = k0; k < k1; ++k) {
        EXPECT_LE(std::fabs(d8(n, k) - w(n, k)), 0.5f * s8 * 1.0001f + 1e-30f);
        EXPECT_LE(std::fabs(d4(n, k) - w(n, k)), std::fabs(s4) * 1.0001f + 1e-30f);  // +7 clamp: <= |d|
      }
      if (amax > 0) {  // the largest-magnitude weight is represented exactly up to the f16 scale
        int at = k0;
        for (int k = k0; k < k1; ++k)
          if (w(n, k) == mval) at = k;
        EXPECT_NEAR(d4(n, at), mval, 1e-3f * amax);
      }
    }
  for (int k = 32; k < 64; ++k) EXPECT_EQ(d8(2, k), 0.f);
  // padding is zero
  const auto* qs = static_cast<const std::int8_t*>(q8.data());
  for (int k = 70; k < 128; ++k) EXPECT_EQ(qs[k], 0);
  const float inf = std::numeric_limits<float>::infinity();
  w(0, 0) = inf;
  EXPECT_THROW(WeightMatrix(to_tensor(w), WeightFormat::Q8_0), TensorError);
}

// The main sweep: every format, odd shapes, bias / no bias, against the references.
void sweep(bool bf16_gemm) {
  Bf16GemmGuard guard(bf16_gemm);
  const int Ks[] = {1, 33, 64, 100, 300};
  const int Ns[] = {1, 17, 64};
  const int Ms[] = {1, 3, 8, 9, 257};
  double worst[kNumConfigs] = {};
  for (int ci = 0; ci < kNumConfigs; ++ci)
    for (int K : Ks)
      for (int N : Ns) {
        const WeightFormat f = kConfigs[ci].f;
        MatrixF w = random_matrix(N, K, unsigned(K * 131 + N));
        WeightMatrix W(to_tensor(w), f, kConfigs[ci].l);
        std::vector<float> bias(static_cast<std::size_t>(N), 0.f);
        for (int n = 0; n < N; ++n) bias[std::size_t(n)] = 0.1f * float(n % 7) - 0.3f;
        for (int M : Ms)
          for (bool with_bias : {false, true}) {
            SCOPED_TRACE(cname(kConfigs[ci]) + " M=" + std::to_string(M) + " K=" +
                         std::to_string(K) + " N=" + std::to_string(N) + " bias=" + std::to_string(with_bias));
            MatrixF x = random_matrix(M, K, unsigned(M * 7 + K));
            const float* b = with_bias ? bias.data() : nullptr;
            MatrixF y = ops::linear(x, W, b);
            const bool large = is_large(M);
            Ref r = reference(effective_x(x, f, large), effective_w(W, large), b);
            const double ratio = worst_ratio(y, r);
            worst[ci] = std::max(worst[ci], ratio);
            ASSERT_LE(ratio, 1.0);
          }
      }
  for (int ci = 0; ci < kNumConfigs; ++ci)
    std::printf("%-11s worst |y-ref| / (2e-6 sum|wx|)%s: %.3f\n", cname(kConfigs[ci]).c_str(),
                bf16_gemm ? " (bf16-activation GEMM)" : "", worst[ci]);
}

TEST(Weights, LinearMatchesReference) { sweep(false); }
TEST(Weights, LinearMatchesReferenceBf16ActivationGemm) { sweep(true); }

// Larger shapes (several K blocks in the GEMM, M tail panels, K odd) and quantisation error.
TEST(Weights, QuantisationError) {
  const int K = 601, N = 100;
  MatrixF w = random_matrix(N, K, 5, 0.05f);
  for (int M : {1, 4, 257}) {
    MatrixF x = random_matrix(M, K, 6);
    std::vector<float> bias(std::size_t(N), 0.01f);
    Ref exact = reference(x, w, bias.data());  // original f32 weights
    for (int mode = 0; mode < 2; ++mode)
    for (WeightFormat f : kFormats) {
      if (mode == 1 && (f == WeightFormat::F32 || !is_large(M))) continue;
      Bf16GemmGuard guard(mode == 1);
      WeightMatrix W(to_tensor(w), f);
      MatrixF y = ops::linear(x, W, bias.data());
      const bool large = is_large(M);
      Ref sem = reference(effective_x(x, f, large), effective_w(W, large), bias.data());
      Ref deq = reference(x, to_matrix(W.dequantize()), bias.data());
      const double r = worst_ratio(y, sem), e_deq = rel_frobenius(y, deq.y), e_f32 = rel_frobenius(y, exact.y);
      std::printf("M=%3d %-5s%s vs kernel ref %.3f | rel Frobenius vs dequantised W (f32 x) %.2e | vs f32 W %.2e  [%s]\n",
                  M, ops::weight_format_name(f), mode ? "(bf16 x)" : "        ", r, e_deq, e_f32,
                  ops::kernel_name(W, M).c_str());
      EXPECT_LE(r, 1.0);
      const bool qx = (f == WeightFormat::Q8_0 || f == WeightFormat::Q4_0) && !large;  // int8 activations
      if (mode == 1) EXPECT_LT(e_deq, 1e-2);
      else if (!qx) EXPECT_LT(e_deq, 1e-6);
      else EXPECT_LT(e_deq, 1e-2);
      switch (f) {
        case WeightFormat::F32: EXPECT_LT(e_f32, 1e-6); break;
        case WeightFormat::BF16: EXPECT_LT(e_f32, 5e-3); break;
        case WeightFormat::Q8_0: EXPECT_LT(e_f32, 1.5e-2); break;
        case WeightFormat::Q4_0: EXPECT_LT(e_f32, 0.15); break;
      }
    }
  }
}

TEST(Weights, StridedInputAndOutput) {
  const int K = 77, N = 33;
  MatrixF w = random_matrix(N, K, 9);
  MatrixF big = random_matrix(300, K + 10, 10);
  for (const Config& c : kConfigs) {
    WeightMatrix W(to_tensor(w), c.f, c.l);
    const WeightFormat f = c.f;
    for (int M : {2, 20}) {
      MatrixF out = MatrixF::Constant(M, N + 8, 7.f);
      ops::linear(big.block(3, 5, M, K), W, nullptr, out.middleCols(4, N));
      MatrixF xc = big.block(3, 5, M, K);
      MatrixF ref = ops::linear(xc, W);
      EXPECT_TRUE(bit_equal(MatrixF(out.middleCols(4, N)), ref)) << ops::weight_format_name(f) << " M=" << M;
      EXPECT_TRUE((out.leftCols(4).array() == 7.f).all());
      EXPECT_TRUE((out.rightCols(4).array() == 7.f).all());
    }
  }
}

TEST(Weights, ThreadCountDoesNotChangeResults) {
  const int K = 333, N = 190;
  MatrixF w = random_matrix(N, K, 11);
  std::vector<float> bias(std::size_t(N), 0.25f);
  for (int mode = 0; mode < 2; ++mode)
  for (const Config& c : kConfigs) {
    Bf16GemmGuard guard(mode == 1);
    WeightMatrix W(to_tensor(w), c.f, c.l);
    const WeightFormat f = c.f;
    for (int M : {1, 5, 20, 257}) {
      MatrixF x = random_matrix(M, K, 12);
      MatrixF y1, y2;
      {
        ThreadGuard t(1);
        y1 = ops::linear(x, W, bias.data());
      }
      {
        ThreadGuard t(2);
        y2 = ops::linear(x, W, bias.data());
      }
      EXPECT_TRUE(bit_equal(y1, y2)) << ops::weight_format_name(f) << " M=" << M;
    }
  }
}

TEST(Weights, ScalarPathMatchesSimd) {
  const int K = 300, N = 70;
  MatrixF w = random_matrix(N, K, 13);
  std::vector<float> bias(std::size_t(N), -0.5f);
  for (int mode = 0; mode < 2; ++mode)
  for (const Config& c : kConfigs) {
    Bf16GemmGuard guard(mode == 1);
    WeightMatrix W(to_tensor(w), c.f, c.l);
    const WeightFormat f = c.f;
    for (int M : {1, 3, 8, 257}) {
      MatrixF x = random_matrix(M, K, 14);
      MatrixF ys, yv;
      {
        ScalarGuard s(true);
        ys = ops::linear(x, W, bias.data());
      }
      yv = ops::linear(x, W, bias.data());
      MatrixF ya;  // the x86-64-v3 level (AVX2 + FMA), when the CPU has it
      if (ops::detail::cpu().avx2) {
        ops::set_disabled_isa(ops::isa_mask_from_env("avx2"));
        ya = ops::linear(x, W, bias.data());
        ops::set_disabled_isa(0);
      }
      const bool large = is_large(M);
      Ref r = reference(effective_x(x, f, large), effective_w(W, large), bias.data());
      if (ya.size()) EXPECT_LE(worst_ratio(ya, r), 1.0) << "avx2 " << ops::weight_format_name(f) << " M=" << M;
      // both within the float32 summation bound of the same reference => within 2x of each other
      EXPECT_LE(worst_ratio(ys, r), 1.0) << ops::weight_format_name(f) << " M=" << M;
      EXPECT_LE(worst_ratio(yv, r), 1.0) << ops::weight_format_name(f) << " M=" << M;
      double d = 0;
      for (Eigen::Index i = 0; i < ys.size(); ++i)
        d = std::max(d, double(std::fabs(ys.data()[i] - yv.data()[i])) / (kSumTol * r.mag.data()[i] + 1e-30));
      EXPECT_LE(d, 2.0);
    }
  }
}

TEST(Weights, VnniAndAvx512BwIntegerKernelsAgreeExactly) {
  const int K = 4 * 64 + 32 + 5, N = 45;  // a 4-pair group, a single pair and a K tail
  MatrixF w = random_matrix(N, K, 15);
  for (const Config& c : {Config{WeightFormat::Q8_0, ops::WeightLayout::RowMajor},
                          Config{WeightFormat::Q8_0, ops::WeightLayout::Panels},
                          Config{WeightFormat::Q4_0, ops::WeightLayout::RowMajor}}) {
    const WeightFormat f = c.f;
    WeightMatrix W(to_tensor(w), f, c.l);
    for (int M : {1, 3, 6}) {
      MatrixF x = random_matrix(M, K, 16);
      MatrixF a = ops::linear(x, W);
      ops::set_disabled_isa(ops::kIsaAvx512Vnni);
      MatrixF b = ops::linear(x, W);
      ops::set_disabled_isa(0);
      // identical integer lanes, identical float order
      EXPECT_TRUE(bit_equal(a, b)) << cname(c) << " M=" << M;
    }
  }
}

TEST(Weights, Bf16GemmFallbackMatchesDpbf16) {
  const int K = 700, N = 100, M = 40;  // K spans 3 kc blocks
  MatrixF w = random_matrix(N, K, 17);
  MatrixF x = random_matrix(M, K, 18);
  Bf16GemmGuard guard(true);
  for (WeightFormat f : {WeightFormat::BF16, WeightFormat::Q8_0, WeightFormat::Q4_0}) {
    WeightMatrix W(to_tensor(w), f);
    MatrixF a = ops::linear(x, W);
    ops::set_disabled_isa(ops::kIsaAvx512Bf16);
    MatrixF b = ops::linear(x, W);
    ops::set_disabled_isa(0);
    Ref r = reference(effective_x(x, f, true), effective_w(W, true), nullptr);
    EXPECT_LE(worst_ratio(a, r), 1.0);
    EXPECT_LE(worst_ratio(b, r), 1.0);
  }
}

TEST(Weights, GemvThresholdIsConfigurable) {
  const int K = 64, N = 16;
  MatrixF w = random_matrix(N, K, 19), x = random_matrix(12, K, 20);
  WeightMatrix W(to_tensor(w), WeightFormat::Q8_0);
  const int old = ops::gemv_max_rows();
  ops::set_gemv_max_rows(16);  // 12 rows: two groups of the streaming kernel
  MatrixF y = ops::linear(x, W);
  ops::set_gemv_max_rows(old);
  Ref r = reference(effective_x(x, WeightFormat::Q8_0, false), effective_w(W, false), nullptr);
  EXPECT_LE(worst_ratio(y, r), 1.0);
}

TEST(Weights, SerialisationRoundTripIsBitIdentical) {
  const int K = 100, N = 23;
  MatrixF w = random_matrix(N, K, 21);
  MatrixF x = random_matrix(3, K, 22), xl = random_matrix(30, K, 23);
  for (WeightFormat f : kFormats) {
    WeightMatrix W(to_tensor(w), f);
    const std::string name = "layer.fc.weight";
    auto tensors = W.to_tensors(name);
    const std::string path = std::string(IB_TEST_TMP_DIR) + "/weights_" + ops::weight_format_name(f) + ".safetensors";
    io::save_safetensors(path, tensors);
    io::SafeTensors st = io::SafeTensors::open(path);
    WeightMatrix R = WeightMatrix::from_tensors(name, [&](const std::string& k) {
      return st.contains(k) ? st.get(k) : Tensor();
    });
    ASSERT_EQ(R.format(), f);
    ASSERT_EQ(R.rows(), N);
    ASSERT_EQ(R.cols(), K);
    ASSERT_EQ(R.bytes(), W.bytes());
    EXPECT_EQ(std::memcmp(R.data(), W.data(), W.data_tensor().nbytes()), 0);
    if (W.scales()) {
      EXPECT_EQ(std::memcmp(R.scales(), W.scales(), W.scales_tensor().nbytes()), 0);
    }
    EXPECT_TRUE(R.data_tensor().is_borrowed());  // zero-copy from the mapping
    EXPECT_TRUE(bit_equal(ops::linear(x, W), ops::linear(x, R)));
    EXPECT_TRUE(bit_equal(ops::linear(xl, W), ops::linear(xl, R)));
    // in-memory lookup too
    WeightMatrix R2 = WeightMatrix::from_tensors(name, tensors);
    EXPECT_TRUE(bit_equal(ops::linear(x, W), ops::linear(x, R2)));
  }
}

TEST(Weights, PanelsLayout) {
  for (int K : {1, 33, 64, 301})
    for (int N : {1, 31, 32, 70}) {
      MatrixF w = random_matrix(N, K, unsigned(27 + K + N));
      for (WeightFormat f : {WeightFormat::F32, WeightFormat::BF16}) {
        WeightMatrix R(to_tensor(w), f), P(to_tensor(w), f, ops::WeightLayout::Panels);
        ASSERT_EQ(P.layout(), ops::WeightLayout::Panels);
        EXPECT_TRUE(bit_equal(to_matrix(R.dequantize()), to_matrix(P.dequantize())));
        EXPECT_EQ(P.bytes(), std::size_t((N + 31) / 32) * 32 * std::size_t(f == WeightFormat::F32 ? K * 4 : (K + 1) / 2 * 4));
        // serialised as the row-major tensor; re-packing gives identical bytes
        auto t = P.to_tensors("p");
        ASSERT_EQ(t.size(), 1u);
        WeightMatrix L = WeightMatrix::from_tensors("p", t);
        EXPECT_EQ(L.layout(), ops::WeightLayout::RowMajor);
        EXPECT_EQ(std::memcmp(L.data(), R.data(), R.bytes()), 0);
        WeightMatrix P2(L.data_tensor(), f, ops::WeightLayout::Panels);
        EXPECT_EQ(std::memcmp(P2.data(), P.data(), P.bytes()), 0);
      }
    }
  EXPECT_THROW(WeightMatrix(to_tensor(random_matrix(4, 64, 1)), WeightFormat::Q4_0, ops::WeightLayout::Panels),
               InvalidArgument);
  EXPECT_THROW(WeightMatrix(to_tensor(random_matrix(4, 64, 1)), WeightFormat::Q4_0).with_layout(ops::WeightLayout::Panels),
               InvalidArgument);
}

TEST(Weights, Q8PanelsLayout) {
  int checked = 0;
  for (int K : {1, 33, 64, 301})
    for (int N : {1, 15, 16, 17, 70}) {
      SCOPED_TRACE("N=" + std::to_string(N) + " K=" + std::to_string(K));
      MatrixF w = random_matrix(N, K, unsigned(41 + K + N));
      const WeightMatrix R(to_tensor(w), WeightFormat::Q8_0), P(to_tensor(w), WeightFormat::Q8_0, ops::WeightLayout::Panels);
      ASSERT_EQ(P.layout(), ops::WeightLayout::Panels);
      ASSERT_EQ(P.padded_cols(), R.padded_cols());
      const std::int64_t Kp = R.padded_cols(), KB = Kp / 32, Pn = (N + 15) / 16;
      EXPECT_EQ(P.bytes(), std::size_t(Pn * 16 * Kp + Pn * 16 * KB * 2));
      // the documented element map, padding rows zero
      const auto* rq = static_cast<const std::int8_t*>(R.data());
      const auto* pq = static_cast<const std::int8_t*>(P.data());
      for (std::int64_t n = 0; n < Pn * 16; ++n)
        for (std::int64_t k = 0; k < Kp; ++k) {
          const std::int64_t at = (((n / 16) * KB + k / 32) * 8 + (k % 32) / 4) * 64 + (n % 16) * 4 + k % 4;
          ASSERT_EQ(pq[at], n < N ? rq[n * Kp + k] : 0) << n << "," << k;
        }
      for (std::int64_t n = 0; n < Pn * 16; ++n)
        for (std::int64_t b = 0; b < KB; ++b)
          ASSERT_EQ(P.scales()[((n / 16) * KB + b) * 16 + n % 16], n < N ? R.scales()[n * KB + b] : 0);
      EXPECT_TRUE(bit_equal(to_matrix(R.dequantize()), to_matrix(P.dequantize())));
      // saved row-major, bit for bit; repacked back to the same panels
      auto t = P.to_tensors("p");
      ASSERT_EQ(t.size(), 3u);
      const WeightMatrix L = WeightMatrix::from_tensors("p", t);
      EXPECT_EQ(L.layout(), ops::WeightLayout::RowMajor);
      EXPECT_EQ(std::memcmp(L.data(), R.data(), R.data_tensor().nbytes()), 0);
      EXPECT_EQ(std::memcmp(L.scales(), R.scales(), R.scales_tensor().nbytes()), 0);
      const WeightMatrix P2 = L.with_layout(ops::WeightLayout::Panels);
      EXPECT_EQ(std::memcmp(P2.data(), P.data(), P.data_tensor().nbytes()), 0);
      EXPECT_EQ(std::memcmp(P2.scales(), P.scales(), P.scales_tensor().nbytes()), 0);
      ++checked;
    }
  EXPECT_EQ(checked, 20);
}

// The many-row regime dequantises the same values from either layout: the products agree bit for
// bit at every level; the row-by-row regime agrees bit for bit at the portable level (one formula)
// and within the summation tolerance at the others.
TEST(Weights, Q8PanelsAndRowMajorAgree) {
  const int K = 4 * 64 + 32 + 5, N = 45;
  MatrixF w = random_matrix(N, K, 43);
  std::vector<float> bias(std::size_t(N), 0.25f);
  const WeightMatrix R(to_tensor(w), WeightFormat::Q8_0), P = R.with_layout(ops::WeightLayout::Panels);
  int checked = 0;
  for (const char* level : {"portable", "avx2", ""}) {
    ops::set_disabled_isa(ops::isa_mask_from_env(level));
    for (bool bf16 : {false, true}) {
      Bf16GemmGuard guard(bf16);
      for (int M : {1, 2, 5, 8, 9, 40}) {
        SCOPED_TRACE(std::string("level ") + (*level ? level : "best") + " M=" + std::to_string(M) + " bf16=" + std::to_string(bf16));
        const MatrixF x = random_matrix(M, K, unsigned(44 + M));
        const MatrixF yr = ops::linear(x, R, bias.data()), yp = ops::linear(x, P, bias.data());
        const bool large = is_large(M);
        if (large || std::string(level) == "portable") {
          EXPECT_TRUE(bit_equal(yr, yp));
        } else {
          const Ref r = reference(effective_x(x, WeightFormat::Q8_0, large), effective_w(R, large), bias.data());
          EXPECT_LE(worst_ratio(yp, r), 1.0);
          EXPECT_LE(worst_ratio(yr, r), 1.0);
        }
        ++checked;
      }
    }
    ops::set_disabled_isa(0);
  }
  EXPECT_EQ(checked, 36);
}

TEST(Weights, FromTensorsRejectsInconsistentTensors) {
  MatrixF w = random_matrix(4, 40, 24);
  WeightMatrix W(to_tensor(w), WeightFormat::Q4_0);
  auto t = W.to_tensors("w");
  auto find = [&](const std::string& k) -> Tensor& {
    for (auto& kv : t)
      if (kv.first == k) return kv.second;
    throw std::runtime_error("no " + k);
  };
  EXPECT_THROW(WeightMatrix::from_tensors("v", t), TensorError);  // absent
  auto t2 = t;
  t = t2;
  find("w.shape") = Tensor::from_vector({2}, std::vector<std::int64_t>{4, 70});  // Kp 128 != 64
  EXPECT_THROW(WeightMatrix::from_tensors("w", t), TensorError);
  t = t2;
  find("w.shape") = Tensor::from_vector({2}, std::vector<std::int64_t>{-4, 40});
  EXPECT_THROW(WeightMatrix::from_tensors("w", t), TensorError);
  t = t2;
  find("w.q4_0_scale") = Tensor::zeros({4, 2}, DType::BF16);
  EXPECT_THROW(WeightMatrix::from_tensors("w", t), TensorError);
  t = t2;
  find("w.q4_0") = Tensor::zeros({4, 31}, DType::U8);
  EXPECT_THROW(WeightMatrix::from_tensors("w", t), TensorError);
  t = t2;
  t.pop_back();  // no shape
  EXPECT_THROW(WeightMatrix::from_tensors("w", t), TensorError);
  std::vector<std::pair<std::string, Tensor>> ints{{"w", Tensor::zeros({2, 2}, DType::I64)}};
  EXPECT_THROW(WeightMatrix::from_tensors("w", ints), TensorError);
}

TEST(Weights, ShapeErrorsAndEdgeCases) {
  MatrixF w = random_matrix(5, 8, 25);
  WeightMatrix W(to_tensor(w), WeightFormat::Q8_0);
  MatrixF x = random_matrix(2, 9, 26), y(2, 5);
  EXPECT_THROW(ops::linear(x, W, nullptr, y), InvalidArgument);
  EXPECT_THROW(ops::linear(random_matrix(2, 8, 1), WeightMatrix(), nullptr, y), InvalidArgument);
  // K = 0: bias only; M = 0: nothing
  WeightMatrix Z(Tensor::zeros({3, 0}), WeightFormat::Q4_0);
  std::vector<float> b{1.f, 2.f, 3.f};
  MatrixF x0(2, 0), y0(2, 3);
  ops::linear(x0, Z, b.data(), y0);
  EXPECT_EQ(y0(1, 2), 3.f);
  MatrixF xe(0, 8), ye(0, 5);
  ops::linear(xe, W, nullptr, ye);
}

// ---------------------------------------------------------------------------------------------
// Per-call compute selection, the AMX-BF16 GEMM, the fused epilogue and the vectorised GELU.

namespace {

struct GemvRowsGuard {
  explicit GemvRowsGuard(int m) : old(ops::gemv_max_rows()) { ops::set_gemv_max_rows(m); }
  ~GemvRowsGuard() { ops::set_gemv_max_rows(old); }
  int old;
};
struct IsaGuard {
  explicit IsaGuard(unsigned mask) : old(ops::disabled_isa()) { ops::set_disabled_isa(mask); }
  ~IsaGuard() { ops::set_disabled_isa(old); }
  unsigned old;
};

bool amx_active() {
  MatrixF w = random_matrix(32, 32, 1);
  WeightMatrix W(to_tensor(w), WeightFormat::BF16, ops::WeightLayout::Panels);
  return ops::kernel_name(W, 1000, ops::GemmCompute::BF16).find("amx") != std::string::npos;
}

ops::LinearOptions bf16_options() {
  ops::LinearOptions o;
  o.compute = ops::GemmCompute::BF16;
  return o;
}

// Exact reference of the BF16-compute regime: activations and (dequantised) weights rounded to
// bf16, products summed in double.
Ref bf16_reference(const MatrixF& x, const WeightMatrix& W, const float* bias) {
  MatrixF xe = x, we = to_matrix(W.dequantize());
  for (Eigen::Index i = 0; i < xe.size(); ++i) xe.data()[i] = bf16_round(xe.data()[i]);
  for (Eigen::Index i = 0; i < we.size(); ++i) we.data()[i] = bf16_round(we.data()[i]);
  return reference(xe, we, bias);
}

// |y - ref| <= tol * (sum |w x| + |b|) (f32 accumulation of exact bf16 products).
double worst_rel(const MatrixF& y, const Ref& r) {
  double worst = 0;
  for (Eigen::Index m = 0; m < y.rows(); ++m)
    for (Eigen::Index n = 0; n < y.cols(); ++n)
      worst = std::max(worst, std::fabs(double(y(m, n)) - r.y(m, n)) / (r.mag(m, n) + 1e-30));
  return worst;
}

constexpr double kBf16GemmTol = 1e-5;

// The BF16-compute sweep with the given ISA mask: every format / layout, all shapes, against the
// exact reference. Small M uses the GEMM too (gemv_max_rows = 0).
void bf16_compute_sweep(unsigned isa_mask, bool all_m, const char* what) {
  IsaGuard isa(isa_mask);
  GemvRowsGuard rows(0);
  std::vector<int> Ms;
  for (int m = 1; m <= 40; m += all_m ? 1 : 7) Ms.push_back(m);
  Ms.push_back(257);
  const int Ks[] = {32, 64, 96, 1408, 40, 1};
  const int Ns[] = {1, 17, 32, 48, 100};
  double worst = 0;
  for (const Config& c : kConfigs) {
    if (c.f == WeightFormat::F32) continue;
    for (int K : Ks)
      for (int N : Ns) {
        MatrixF w = random_matrix(N, K, unsigned(K * 17 + N));
        WeightMatrix W(to_tensor(w), c.f, c.l);
        std::vector<float> bias(static_cast<std::size_t>(N));
        for (int n = 0; n < N; ++n) bias[static_cast<std::size_t>(n)] = 0.05f * float(n % 5) - 0.1f;
        for (int M : Ms) {
          if (K == 1408 && M != 257 && M % 8 != 1 && M != 16 && M != 32) continue;  // keep the reference cheap
          SCOPED_TRACE(std::string(what) + " " + cname(c) + " M=" + std::to_string(M) + " K=" + std::to_string(K) +
                       " N=" + std::to_string(N));
          MatrixF x = random_matrix(M, K, unsigned(M * 3 + K));
          MatrixF y(M, N);
          const float* b = (M + N) % 2 ? bias.data() : nullptr;
          ops::linear(x, W, b, y, bf16_options());
          const double r = worst_rel(y, bf16_reference(x, W, b));
          worst = std::max(worst, r);
          ASSERT_LE(r, kBf16GemmTol) << ops::kernel_name(W, M, ops::GemmCompute::BF16);
        }
      }
  }
  std::printf("%s: worst |y - ref| / sum|wx| = %.3g\n", what, worst);
}

}  // namespace

TEST(Weights, KernelNamesAndCpuFeaturesNameAmx) {
  MatrixF w = random_matrix(64, 64, 30);
  WeightMatrix W(to_tensor(w), WeightFormat::BF16, ops::WeightLayout::Panels);
  const std::string amx = ops::kernel_name(W, 257, ops::GemmCompute::BF16);
  const std::string f32 = ops::kernel_name(W, 257, ops::GemmCompute::F32);
  std::printf("GemmCompute::BF16: %s, GemmCompute::F32: %s\n", amx.c_str(), f32.c_str());
  EXPECT_EQ(f32.find("amx"), std::string::npos);
  EXPECT_EQ(ops::kernel_name(W, 257), ops::kernel_name(W, 257, ops::GemmCompute::Auto));
  if (!amx_active()) GTEST_SKIP() << "no AMX-BF16 on this CPU / OS (or not in this build)";
  EXPECT_NE(amx.find("amx-bf16"), std::string::npos);
  EXPECT_NE(ops::cpu_features().find("amx"), std::string::npos);
  IsaGuard g(ops::kIsaAmx);
  EXPECT_EQ(ops::kernel_name(W, 257, ops::GemmCompute::BF16).find("amx"), std::string::npos);
}

TEST(Weights, Bf16ComputeMatchesExactReference) {
  if (!amx_active()) std::printf("note: no AMX here; this sweeps the vdpbf16ps / portable kernels\n");
  bf16_compute_sweep(0, true, amx_active() ? "amx" : "default bf16 kernel");
}

TEST(Weights, Bf16ComputeFallbacksMatchExactReference) {
  bf16_compute_sweep(ops::kIsaAmx, false, "vdpbf16ps (AMX off)");
  bf16_compute_sweep(ops::kIsaAmx | ops::kIsaAvx512Bf16, false, "portable (AMX and AVX512-BF16 off)");
}

TEST(Weights, Bf16ComputeKernelsAgree) {
  const int K = 1408 + 40, N = 100;
  MatrixF w = random_matrix(N, K, 31);
  for (const Config& c : kConfigs) {
    if (c.f == WeightFormat::F32) continue;
    WeightMatrix W(to_tensor(w), c.f, c.l);
    for (int M : {9, 40, 257}) {
      MatrixF x = random_matrix(M, K, 32), ya(M, N), yb(M, N), yc(M, N);
      ops::linear(x, W, nullptr, ya, bf16_options());
      {
        IsaGuard g(ops::kIsaAmx);
        ops::linear(x, W, nullptr, yb, bf16_options());
      }
      {
        IsaGuard g(ops::kIsaAmx | ops::kIsaAvx512Bf16);
        ops::linear(x, W, nullptr, yc, bf16_options());
      }
      const Ref r = bf16_reference(x, W, nullptr);
      EXPECT_LE(worst_rel(ya, r), kBf16GemmTol) << cname(c) << " M=" << M;
      EXPECT_LE(worst_rel(yb, r), kBf16GemmTol) << cname(c) << " M=" << M;
      EXPECT_LE(worst_rel(yc, r), kBf16GemmTol) << cname(c) << " M=" << M;
    }
  }
}

TEST(Weights, Bf16ComputeThreadCountDoesNotChangeResults) {
  // K = 4100 spans several K blocks of the AMX kernel (partial sums through memory).
  for (int K : {333, 4100}) {
    const int N = 190;
    MatrixF w = random_matrix(N, K, 33);
    std::vector<float> bias(static_cast<std::size_t>(N), 0.25f);
    for (const Config& c : kConfigs)
      for (unsigned mask : {0u, unsigned(ops::kIsaAmx)}) {
        IsaGuard g(mask);
        WeightMatrix W(to_tensor(w), c.f, c.l);
        for (int M : {20, 257}) {
          MatrixF x = random_matrix(M, K, 34), y1(M, N), y2(M, N), y3(M, N);
          ops::LinearOptions o = bf16_options();
          o.activate = true;
          {
            ThreadGuard t(1);
            ops::linear(x, W, bias.data(), y1, o);
          }
          {
            ThreadGuard t(2);
            ops::linear(x, W, bias.data(), y2, o);
          }
          {
            ThreadGuard t(3);
            ops::linear(x, W, bias.data(), y3, o);
          }
          EXPECT_TRUE(bit_equal(y1, y2)) << cname(c) << " K=" << K << " M=" << M << " mask=" << mask;
          EXPECT_TRUE(bit_equal(y1, y3)) << cname(c) << " K=" << K << " M=" << M << " mask=" << mask;
        }
      }
  }
}

TEST(Weights, GeluVectorizedAccuracy) {
  double worst = 0;
  float worst_x = 0;
  std::vector<float> xs;
  for (int i = -200000; i <= 200000; ++i) xs.push_back(float(i) * 5e-5f);  // [-10, 10]
  std::mt19937 gen(35);
  std::uniform_real_distribution<float> u(-10.f, 10.f);
  for (int i = 0; i < 100000; ++i) xs.push_back(u(gen));
  std::vector<float> v = xs;
  ops::gelu_vectorized(v.data(), v.size());
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const float x = xs[i];
    const float ref = 0.5f * x * (1.f + std::erf(x / std::sqrt(2.f)));
    const double e = std::fabs(double(v[i]) - double(ref));
    if (e > worst) {
      worst = e;
      worst_x = x;
    }
  }
  std::printf("gelu_vectorized: max abs error %.3g at x = %.6g (|x| < 10)\n", worst, double(worst_x));
  EXPECT_LE(worst, 1e-6);
  // tails and specials
  std::vector<float> sp{1e4f, -1e4f, 30.f, -30.f, std::numeric_limits<float>::infinity(), 0.f, -0.f,
                        std::numeric_limits<float>::quiet_NaN()};
  ops::gelu_vectorized(sp.data(), sp.size());
  EXPECT_EQ(sp[0], 1e4f);
  EXPECT_EQ(sp[1], 0.f);
  EXPECT_EQ(sp[2], 30.f);
  EXPECT_NEAR(sp[3], 0.f, 1e-30);
  EXPECT_EQ(sp[4], std::numeric_limits<float>::infinity());
  EXPECT_EQ(sp[5], 0.f);
  EXPECT_EQ(sp[6], 0.f);
  EXPECT_TRUE(std::isnan(sp[7]));
  // odd lengths (masked tails) agree with the full-vector result
  for (std::size_t n : {1u, 7u, 16u, 17u, 33u}) {
    std::vector<float> a(xs.begin() + 1000, xs.begin() + 1000 + static_cast<std::ptrdiff_t>(n));
    ops::gelu_vectorized(a.data(), a.size());
    for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(a[i], v[1000 + i]);
  }
}

TEST(Weights, FusedActivationMatchesUnfused) {
  const int K = 300, N = 70;
  MatrixF w = random_matrix(N, K, 36, 0.2f);
  std::vector<float> bias(static_cast<std::size_t>(N));
  for (int n = 0; n < N; ++n) bias[static_cast<std::size_t>(n)] = 0.1f * float(n % 9) - 0.4f;
  const ops::Activation acts[] = {ops::Activation::Gelu, ops::Activation::GeluTanh, ops::Activation::Silu,
                                  ops::Activation::Relu};
  for (int mode = 0; mode < 4; ++mode) {  // default, AMX off, AVX512-BF16 off, portable
    IsaGuard g(mode == 1 ? unsigned(ops::kIsaAmx) : mode == 2 ? unsigned(ops::kIsaAmx | ops::kIsaAvx512Bf16) : 0u);
    ScalarGuard sg(mode == 3);
    for (const Config& c : kConfigs) {
      WeightMatrix W(to_tensor(w), c.f, c.l);
      for (ops::GemmCompute comp : {ops::GemmCompute::F32, ops::GemmCompute::BF16})
        for (int M : {3, 40, 257})
          for (ops::Activation a : acts) {
            MatrixF x = random_matrix(M, K, unsigned(37 + M)), yf(M, N), yu(M, N);
            ops::LinearOptions o;
            o.compute = comp;
            ops::linear(x, W, bias.data(), yu, o);
            o.activate = true;
            o.activation = a;
            ops::linear(x, W, bias.data(), yf, o);
            for (Eigen::Index m = 0; m < M; ++m) ops::activate<float>(a, yu.row(m).data(), std::size_t(N));
            double worst = 0;
            for (Eigen::Index i = 0; i < yu.size(); ++i) {
              const double d = std::fabs(double(yf.data()[i]) - double(yu.data()[i]));
              worst = std::max(worst, a == ops::Activation::Gelu ? d / (1e-6 + 2e-7 * std::fabs(yu.data()[i])) : d);
            }
            EXPECT_LE(worst, a == ops::Activation::Gelu ? 1.0 : 0.0)
                << "mode " << mode << " " << cname(c) << " M=" << M << " act=" << int(a)
                << " bf16=" << (comp == ops::GemmCompute::BF16);
          }
    }
  }
}

TEST(Weights, PerCallComputeSelectionIsThreadSafe) {
  const int K = 256, N = 96, M = 40;
  MatrixF w = random_matrix(N, K, 38), x = random_matrix(M, K, 39);
  for (const Config& c : kConfigs) {
    if (c.f == WeightFormat::F32) continue;
    WeightMatrix W(to_tensor(w), c.f, c.l);
    ops::LinearOptions of, ob = bf16_options();
    of.compute = ops::GemmCompute::F32;
    MatrixF ref_f(M, N), ref_b(M, N);
    ops::linear(x, W, nullptr, ref_f, of);
    ops::linear(x, W, nullptr, ref_b, ob);
    // the two regimes really differ (bf16-rounded activations)
    EXPECT_FALSE(bit_equal(ref_f, ref_b)) << cname(c);
    EXPECT_LE(worst_rel(ref_b, bf16_reference(x, W, nullptr)), kBf16GemmTol);
    std::atomic<int> bad{0};
    auto worker = [&](const ops::LinearOptions& o, const MatrixF& want) {
      MatrixF y(M, N);
      for (int i = 0; i < 200; ++i) {
        ops::linear(x, W, nullptr, y, o);
        if (!bit_equal(y, want)) ++bad;
      }
    };
    std::thread t1(worker, std::cref(of), std::cref(ref_f)), t2(worker, std::cref(ob), std::cref(ref_b));
    t1.join();
    t2.join();
    EXPECT_EQ(bad.load(), 0) << cname(c);
    EXPECT_FALSE(ops::gemm_bf16_activations());  // the process-wide setting is untouched
  }
}

// The regimes batched decoding and batched stages rely on: under RowIndependentProducts any
// number of rows, and under StackedItems(n) each of n stacked items, gets bit for bit what it
// gets alone — for every weight format.
TEST(LinearRegimes, RowIndependentAndStackedItemsGiveEachRowWhatItGetsAlone) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  const std::int64_t K = 96, N = 40;
  Tensor w = Tensor::empty({N, K});
  for (std::int64_t i = 0; i < N * K; ++i) w.data<float>()[i] = nd(rng);
  int checked = 0;
  for (const Config& c : kConfigs) {
    const WeightFormat f = c.f;
    const ops::WeightMatrix W(w, f, c.l);
    MatrixF x(24, K);
    for (std::int64_t i = 0; i < x.size(); ++i) x.data()[i] = nd(rng);
    // 3 items of 3 rows: alone each is in the row-by-row regime, the 9 stacked rows are not
    MatrixF alone(9, N);
    for (int i = 0; i < 3; ++i) alone.middleRows(3 * i, 3) = ops::linear(x.middleRows(3 * i, 3), W, nullptr);
    EXPECT_NE(ops::kernel_name(W, 3), ops::kernel_name(W, 9));
    {
      ops::StackedItems items(3);
      EXPECT_EQ(ops::kernel_name(W, 9), ops::kernel_name(W, 3));
      const MatrixF stacked = ops::linear(x.topRows(9), W, nullptr);
      EXPECT_EQ((stacked - alone).cwiseAbs().maxCoeff(), 0.0f) << ops::weight_format_name(f);
    }
    {
      ops::RowIndependentProducts rows;
      EXPECT_TRUE(ops::RowIndependentProducts::active());
      const MatrixF all = ops::linear(x, W, nullptr);
      for (std::int64_t r = 0; r < x.rows(); r += 5) {
        const MatrixF one = ops::linear(x.middleRows(r, 1), W, nullptr);
        EXPECT_EQ((all.middleRows(r, 1) - one).cwiseAbs().maxCoeff(), 0.0f) << ops::weight_format_name(f);
      }
    }
    EXPECT_FALSE(ops::RowIndependentProducts::active());
    ++checked;
  }
  EXPECT_EQ(checked, kNumConfigs);
}

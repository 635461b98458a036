// Kernels against closed forms, hand-worked cases and naive double-precision references.
// Tolerance: 1e-5 absolute for float32 results of O(1) magnitude unless stated.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "instructblip/ops/ops.hpp"
#include "ops/cpu.hpp"

using namespace instructblip;
using M = MatrixF;

namespace {
constexpr float kTol = 1e-5f;

M random_matrix(Eigen::Index r, Eigen::Index c, unsigned seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.0f, scale);
  M m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(g);
  return m;
}

// Naive attention in double for one batch row: scores = q k^T * scale + bias + masks.
M naive_attention(const M& q, const M& k, const M& v, int H, int Hkv, int D, double scale, bool causal,
                  std::int64_t offset, const std::vector<float>* key_mask, const std::vector<float>* pos_bias) {
  M out(q.rows(), q.cols());
  for (int h = 0; h < H; ++h) {
    int kh = h / (H / Hkv);
    for (Eigen::Index i = 0; i < q.rows(); ++i) {
      std::vector<double> s(std::size_t(k.rows()));
      double mx = -1e300;
      for (Eigen::Index j = 0; j < k.rows(); ++j) {
        double d = 0;
        for (int x = 0; x < D; ++x) d += double(q(i, h * D + x)) * double(k(j, kh * D + x));
        d *= scale;
        if (pos_bias) d += (*pos_bias)[std::size_t((h * q.rows() + i) * k.rows() + j)];
        if (key_mask) d += (*key_mask)[std::size_t(j)];
        if (causal && j > offset + i) d = -1e300;
        s[std::size_t(j)] = d;
        mx = std::max(mx, d);
      }
      double z = 0;
      for (auto& x : s) z += (x = (x <= -1e299 ? 0.0 : std::exp(x - mx)));
      for (int x = 0; x < D; ++x) {
        double acc = 0;
        for (Eigen::Index j = 0; j < k.rows(); ++j) acc += s[std::size_t(j)] / z * double(v(j, kh * D + x));
        out(i, h * D + x) = float(acc);
      }
    }
  }
  return out;
}
}  // namespace

TEST(Linear, HandWorked) {
  M x(2, 3);
  x << 1, 2, 3, 4, 5, 6;
  M W(2, 3);  // [out, in]
  W << 1, 0, -1, 0.5, 0.5, 0.5;
  float b[2] = {10, -1};
  M y = ops::linear<float>(x, W, b);
  EXPECT_FLOAT_EQ(y(0, 0), 1 - 3 + 10);
  EXPECT_FLOAT_EQ(y(0, 1), 3 - 1);
  EXPECT_FLOAT_EQ(y(1, 0), 4 - 6 + 10);
  EXPECT_FLOAT_EQ(y(1, 1), 7.5f - 1);
  M y2 = ops::linear<float>(x, W);
  EXPECT_FLOAT_EQ(y2(1, 1), 7.5f);
  M bad(3, 3);
  EXPECT_THROW(ops::linear<float>(x, bad, nullptr, y), InvalidArgument);
}

TEST(Linear, MatchesNaiveOnRandomInput) {
  M x = random_matrix(7, 33, 1), W = random_matrix(19, 33, 2);
  M y = ops::linear<float>(x, W);
  for (int i = 0; i < 7; ++i)
    for (int j = 0; j < 19; ++j) {
      double acc = 0;
      for (int k = 0; k < 33; ++k) acc += double(x(i, k)) * W(j, k);
      EXPECT_NEAR(y(i, j), acc, 1e-4);
    }
}

TEST(Norm, LayerNormClosedForm) {
  M x(1, 4);
  x << 1, 2, 3, 4;  // mean 2.5, biased var 1.25
  M y(1, 4);
  float g[4] = {1, 2, 1, 1}, b[4] = {0, 0, 1, 0};
  ops::layer_norm<float>(x, g, b, 0.0f, y);
  const float s = 1.0f / std::sqrt(1.25f);
  EXPECT_NEAR(y(0, 0), -1.5f * s, kTol);
  EXPECT_NEAR(y(0, 1), 2 * -0.5f * s, kTol);
  EXPECT_NEAR(y(0, 2), 0.5f * s + 1, kTol);
  EXPECT_NEAR(y(0, 3), 1.5f * s, kTol);
  // eps enters under the square root
  ops::layer_norm<float>(x, nullptr, nullptr, 0.75f, y);
  EXPECT_NEAR(y(0, 3), 1.5f / std::sqrt(2.0f), kTol);
  // identity: normalised rows have mean 0, variance 1; in place
  M r = random_matrix(5, 64, 3, 4.0f);
  ops::layer_norm<float>(r, nullptr, nullptr, 0.0f, r);
  for (int i = 0; i < 5; ++i) {
    EXPECT_NEAR(r.row(i).mean(), 0.0f, kTol);
    EXPECT_NEAR((r.row(i).array().square()).mean(), 1.0f, 1e-4);
  }
}

TEST(Norm, RmsNormClosedForm) {
  M x(1, 2);
  x << 3, 4;  // mean square 12.5
  M y(1, 2);
  float w[2] = {1, 0.5f};
  ops::rms_norm<float>(x, w, 0.0f, y);
  EXPECT_NEAR(y(0, 0), 3 / std::sqrt(12.5f), kTol);
  EXPECT_NEAR(y(0, 1), 0.5f * 4 / std::sqrt(12.5f), kTol);
  // no mean subtraction: a constant row maps to sign * 1
  M c = M::Constant(1, 8, -3.0f);
  ops::rms_norm<float>(c, nullptr, 0.0f, c);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(c(0, i), -1.0f, kTol);
  // eps
  ops::rms_norm<float>(x, nullptr, 3.5f, y);
  EXPECT_NEAR(y(0, 1), 1.0f, kTol);
}

TEST(Activations, ClosedForms) {
  float g[5] = {0, 1, -1, 3, -10};
  ops::gelu(g, 5);
  EXPECT_EQ(g[0], 0.0f);
  EXPECT_NEAR(g[1], 0.8413447460685429f, 1e-6);   // Phi(1)
  EXPECT_NEAR(g[2], -0.15865525393145707f, 1e-6);
  EXPECT_NEAR(g[3], 3 * 0.9986501019683699f, 1e-6);
  EXPECT_NEAR(g[4], 0.0f, 1e-6);
  float t[3] = {0, 1, -1};
  ops::gelu_tanh(t, 3);
  EXPECT_EQ(t[0], 0.0f);
  EXPECT_NEAR(t[1], 0.8411919906082768f, 1e-6);
  EXPECT_NEAR(t[2], -0.15880800939172324f, 1e-6);
  float s[3] = {0, 1, -2};
  ops::silu(s, 3);
  EXPECT_EQ(s[0], 0.0f);
  EXPECT_NEAR(s[1], 0.7310585786300049f, 1e-6);
  EXPECT_NEAR(s[2], -0.2384058440442351f, 1e-6);
  float r[2] = {-1, 2};
  ops::relu(r, 2);
  EXPECT_EQ(r[0], 0.0f);
  EXPECT_EQ(r[1], 2.0f);
  EXPECT_EQ(ops::parse_activation("gelu_new"), ops::Activation::GeluTanh);
  EXPECT_THROW(ops::parse_activation("swiglu2"), InvalidArgument);
}

TEST(Softmax, StableAndNormalised) {
  M x(3, 3);
  const float inf = std::numeric_limits<float>::infinity();
  x << 1, 2, 3, 1000, 1001, 1002, -inf, 0, -inf;
  ops::softmax<float>(x);
  const double z = std::exp(-2.0) + std::exp(-1.0) + 1.0;
  EXPECT_NEAR(x(0, 0), std::exp(-2.0) / z, 1e-6);
  EXPECT_NEAR(x(0, 2), 1.0 / z, 1e-6);
  for (int j = 0; j < 3; ++j) EXPECT_NEAR(x(1, j), x(0, j), 1e-6);  // shift invariance, no overflow
  EXPECT_EQ(x(2, 0), 0.0f);
  EXPECT_EQ(x(2, 1), 1.0f);
  float allmasked[2] = {-inf, -inf};
  ops::softmax_row(allmasked, 2);
  EXPECT_EQ(allmasked[0], 0.0f);
  float ls[3] = {1, 2, 3}, out[3];
  ops::log_softmax_row(ls, out, 3);
  EXPECT_NEAR(out[2], -std::log(z), 1e-6);
}

// softmax_row<float> runs on the kernel levels: every level within 2e-6 relative of the double
// formula, masked (-inf or very negative) entries exactly 0, a NaN spreads over its row.
TEST(Softmax, FloatRowsAtEveryLevel) {
  const float inf = std::numeric_limits<float>::infinity();
  int checked = 0;
  for (unsigned mask : {0u, unsigned(ops::kIsaAvx512), unsigned(ops::kIsaAvx512 | ops::kIsaAvx2)}) {
    ops::set_disabled_isa(mask);
    for (std::size_t n : {1, 5, 16, 17, 257, 1000}) {
      SCOPED_TRACE("mask " + std::to_string(mask) + " n=" + std::to_string(n));
      M r = random_matrix(1, Eigen::Index(n), unsigned(n), 4.f);
      std::vector<float> x(r.data(), r.data() + n);
      if (n > 2) x[1] = -inf, x[2] = -1e30f;
      std::vector<float> y = x;
      ops::softmax_row(y.data(), n);
      double m = -1e300, z = 0;
      for (float v : x) m = std::max(m, double(v));
      for (float v : x) z += std::exp(double(v) - m);
      double sum = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const double want = std::exp(double(x[i]) - m) / z;
        EXPECT_NEAR(y[i], want, 2e-6 * want + 1e-30) << i;
        sum += y[i];
      }
      if (n > 2) {
        EXPECT_EQ(y[1], 0.0f);
        EXPECT_EQ(y[2], 0.0f);
      }
      EXPECT_NEAR(sum, 1.0, 1e-5);
      x[0] = std::numeric_limits<float>::quiet_NaN();
      ops::softmax_row(x.data(), n);
      for (float v : x) EXPECT_TRUE(std::isnan(v));
      ++checked;
    }
    ops::set_disabled_isa(0);
  }
  EXPECT_EQ(checked, 18);
}

TEST(Attention, SingleKeyReturnsItsValue) {
  M q = random_matrix(3, 8, 4), k = random_matrix(1, 8, 5), v = random_matrix(1, 8, 6);
  M out(3, 8);
  ops::AttentionOptions<float> o;
  o.num_heads = 2;
  o.head_dim = 4;
  ops::attention<float>(q, k, v, o, out);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR((out.row(i) - v.row(0)).cwiseAbs().maxCoeff(), 0.0f, kTol);
}

TEST(Attention, ZeroQueryAveragesValues) {
  M q = M::Zero(2, 4), k = random_matrix(5, 4, 7), v = random_matrix(5, 4, 8);
  M out(2, 4);
  ops::AttentionOptions<float> o;
  o.head_dim = 4;
  ops::attention<float>(q, k, v, o, out);
  EXPECT_NEAR((out.row(0) - v.colwise().mean()).cwiseAbs().maxCoeff(), 0.0f, kTol);
}

TEST(Attention, MasksBiasCausalAndGqaMatchNaive) {
  const int H = 4, Hkv = 2, D = 8, Lq = 3, Lk = 6;
  M q = random_matrix(Lq, H * D, 9), k = random_matrix(Lk, Hkv * D, 10), v = random_matrix(Lk, Hkv * D, 11);
  std::vector<float> key_mask = {0, 0, -10000.0f, 0, 0, 0};
  std::vector<float> bias(std::size_t(H * Lq * Lk));
  std::mt19937 g(12);
  std::normal_distribution<float> n;
  for (auto& b : bias) b = n(g);
  ops::AttentionOptions<float> o;
  o.num_heads = H;
  o.num_kv_heads = Hkv;
  o.head_dim = D;
  o.scale = 1.0f / std::sqrt(float(D));
  o.causal = true;
  o.query_offset = Lk - Lq;  // decoding the last three positions of six
  o.key_mask = key_mask.data();
  o.position_bias = bias.data();
  std::vector<float> probs(std::size_t(H * Lq * Lk));
  o.probs = probs.data();
  M out(Lq, H * D);
  ops::attention<float>(q, k, v, o, out);
  M ref = naive_attention(q, k, v, H, Hkv, D, 1.0 / std::sqrt(double(D)), true, Lk - Lq, &key_mask, &bias);
  EXPECT_LT((out - ref).cwiseAbs().maxCoeff(), kTol);
  // causal: query 0 (absolute position 3) gives zero weight to keys 4 and 5
  EXPECT_EQ(probs[4], 0.0f);
  EXPECT_EQ(probs[5], 0.0f);
  EXPECT_NEAR(std::accumulate(probs.begin(), probs.begin() + Lk, 0.0f), 1.0f, kTol);
}

TEST(Attention, GqaEqualsRepeatedKeyValueHeads) {
  const int H = 4, Hkv = 1, D = 4;
  M q = random_matrix(2, H * D, 13), k = random_matrix(5, D, 14), v = random_matrix(5, D, 15);
  M k4(5, H * D), v4(5, H * D);
  for (int h = 0; h < H; ++h) {
    k4.middleCols(h * D, D) = k;
    v4.middleCols(h * D, D) = v;
  }
  ops::AttentionOptions<float> o;
  o.num_heads = H;
  o.head_dim = D;
  M a(2, H * D), b(2, H * D);
  ops::attention<float>(q, k4, v4, o, a);
  o.num_kv_heads = Hkv;
  ops::attention<float>(q, k, v, o, b);
  EXPECT_LT((a - b).cwiseAbs().maxCoeff(), 1e-6f);
}

TEST(Rope, RotatesPairsByPositionTimesFrequency) {
  // head_dim 2: inv_freq = 1, so position p rotates (a, b) by p radians.
  M x(3, 2);
  x << 1, 0, 1, 0, 0.5f, 2;
  std::int64_t pos[3] = {0, 1, 2};
  ops::rope<float>(x, pos, 1, 2, 10000.0f);
  EXPECT_NEAR(x(0, 0), 1.0f, kTol);
  EXPECT_NEAR(x(0, 1), 0.0f, kTol);
  EXPECT_NEAR(x(1, 0), std::cos(1.0f), kTol);
  EXPECT_NEAR(x(1, 1), std::sin(1.0f), kTol);
  EXPECT_NEAR(x(2, 0), 0.5f * std::cos(2.0f) - 2 * std::sin(2.0f), kTol);
  EXPECT_NEAR(x(2, 1), 2 * std::cos(2.0f) + 0.5f * std::sin(2.0f), kTol);
  // inv_freq as HF: theta^(-2i/d)
  auto f = ops::rope_inv_freq(8, 10000.0f);
  EXPECT_NEAR(f[1], std::pow(10000.0, -0.25), 1e-7);
}

TEST(Rope, DotProductDependsOnlyOnRelativePosition) {
  const int H = 2, D = 16;
  M q = random_matrix(1, H * D, 16), k = random_matrix(1, H * D, 17);
  auto rotated_dot = [&](std::int64_t m, std::int64_t n) {
    M a = q, b = k;
    ops::rope<float>(a, &m, H, D, 10000.0f);
    ops::rope<float>(b, &n, H, D, 10000.0f);
    return double(a.row(0).dot(b.row(0)));
  };
  EXPECT_NEAR(rotated_dot(5, 2), rotated_dot(13, 10), 1e-4);
  EXPECT_NEAR(rotated_dot(0, 0), double(q.row(0).dot(k.row(0))), 1e-5);
  M odd(1, 6);
  std::int64_t p = 0;
  EXPECT_THROW(ops::rope<float>(odd, &p, 2, 3, 1.0f), InvalidArgument);
}

TEST(Embedding, LooksUpRowsAndRejectsOutOfRange) {
  M table(3, 2);
  table << 0, 1, 10, 11, 20, 21;
  std::int64_t ids[3] = {2, 0, 2};
  M out(3, 2);
  ops::embedding<float>(ids, 3, table, out);
  EXPECT_EQ(out(0, 1), 21.0f);
  EXPECT_EQ(out(1, 0), 0.0f);
  std::int64_t bad[1] = {3};
  M one(1, 2);
  EXPECT_THROW(ops::embedding<float>(bad, 1, table, one), InvalidArgument);
  std::int64_t neg[1] = {-1};
  EXPECT_THROW(ops::embedding<float>(neg, 1, table, one), InvalidArgument);
}

TEST(PatchEmbed, EqualsDirectConvolution) {
  const int C = 3, Hh = 8, W = 12, P = 4, Dout = 5;
  M img = random_matrix(1, C * Hh * W, 18);
  M w = random_matrix(Dout, C * P * P, 19);
  std::vector<float> b = {0.1f, -0.2f, 0.3f, 0.0f, 1.0f};
  M out((Hh / P) * (W / P), Dout);
  ops::patch_embed<float>(img.data(), C, Hh, W, P, w, b.data(), out);
  for (int py = 0; py < Hh / P; ++py)
    for (int px = 0; px < W / P; ++px)
      for (int o = 0; o < Dout; ++o) {
        double acc = b[std::size_t(o)];
        for (int c = 0; c < C; ++c)
          for (int ky = 0; ky < P; ++ky)
            for (int kx = 0; kx < P; ++kx)
              acc += double(img(0, (c * Hh + py * P + ky) * W + px * P + kx)) * w(o, (c * P + ky) * P + kx);
        EXPECT_NEAR(out(py * (W / P) + px, o), acc, 1e-4);
      }
  M wrong(6, Dout);
  EXPECT_THROW(ops::patch_embed<float>(img.data(), C, 9, W, P, w, b.data(), wrong), InvalidArgument);
}

// Tensor storage, views and dtype conversion.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "instructblip/core/tensor.hpp"

using namespace instructblip;

TEST(DType, Bf16KnownBitPatterns) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xc000);
  // ties go to even: 1 + 2^-8 is half-way between 0x3f80 and 0x3f81 -> 0x3f80
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f808000u)), 0x3f80);
  // 0x3f818000 is half-way between 0x3f81 and 0x3f82 -> even 0x3f82
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f818000u)), 0x3f82);
  // just above half-way rounds up
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f808001u)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0x4049), 3.140625f);
}

TEST(DType, F16KnownBitPatterns) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);           // largest half
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);           // rounds down
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);           // half-way to 65536 -> even -> inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // half of it: tie to even -> 0
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp: tie -> even 2
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie -> even
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_TRUE(std::isinf(f16_to_f32(0xfc00)) && f16_to_f32(0xfc00) < 0);
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
}

TEST(DType, EveryHalfAndBf16RoundTripsExactly) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto b = std::uint16_t(h);
    float f = f16_to_f32(b);
    if (!std::isnan(f)) EXPECT_EQ(f32_to_f16(f), b) << std::hex << h;
    float g = bf16_to_f32(b);
    if (!std::isnan(g)) EXPECT_EQ(f32_to_bf16(g), b) << std::hex << h;
  }
}

TEST(DType, F16RoundingMatchesNearestEvenOnRandomValues) {
  // Independent check: the nearest half (by exhaustive neighbour comparison in double).
  std::uint32_t s = 12345;
  for (int n = 0; n < 20000; ++n) {
    s = s * 1664525u + 1013904223u;
    float f = f32_from_bits((s & 0x807fffffu) | (std::uint32_t(100 + (s >> 24) % 45) << 23));  // |f| in ~[2^-27, 2^18)
    std::uint16_t h = f32_to_f16(f);
    if (std::isinf(f16_to_f32(h))) continue;
    double err = std::fabs(double(f16_to_f32(h)) - double(f));
    double lo = std::fabs(double(f16_to_f32(std::uint16_t(h - 1))) - double(f));
    double hi = std::fabs(double(f16_to_f32(std::uint16_t(h + 1))) - double(f));
    if ((h & 0x7fff) != 0) EXPECT_LE(err, lo) << f;
    if ((h & 0x7fff) != 0x7bff) EXPECT_LE(err, hi) << f;
  }
}

TEST(Tensor, OwningBasics) {
  Tensor t = Tensor::zeros({2, 3});
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.nbytes(), 24u);
  EXPECT_EQ(t.dim(-1), 3);
  EXPECT_FALSE(t.is_borrowed());
  t.data<float>()[4] = 7.0f;
  EXPECT_EQ(t.matrix<float>()(1, 1), 7.0f);
  EXPECT_THROW(t.data<std::int64_t>(), TensorError);
  EXPECT_THROW(t.dim(2), TensorError);
  EXPECT_FALSE(Tensor().defined());
}

TEST(Tensor, ViewsShareMemory) {
  Tensor t = Tensor::from_vector({3, 2}, std::vector<float>{0, 1, 2, 3, 4, 5});
  Tensor r = t.reshape({2, -1});
  EXPECT_EQ(r.shape(), (Shape{2, 3}));
  EXPECT_EQ(r.raw(), t.raw());
  Tensor s = t.slice0(1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 2}));
  EXPECT_EQ(s.f(0), 2.0f);
  EXPECT_THROW(t.slice0(2, 4), TensorError);
  EXPECT_THROW(t.reshape({4, 2}), TensorError);
  Tensor c = t.clone();
  EXPECT_NE(c.raw(), t.raw());
  EXPECT_EQ(c.f(5), 5.0f);
}

TEST(Tensor, BorrowedIsReadOnlyAndKeepsOwnerAlive) {
  auto owner = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3, 4});
  Tensor b = Tensor::borrow(owner->data(), {4}, DType::F32, owner);
  std::weak_ptr<std::vector<float>> weak = owner;
  owner.reset();
  EXPECT_FALSE(weak.expired());
  EXPECT_TRUE(b.is_borrowed());
  EXPECT_EQ(b.f(3), 4.0f);
  EXPECT_THROW(b.data<float>(), TensorError);  // non-const access to borrowed memory
  const Tensor& cb = b;
  EXPECT_EQ(cb.matrix<float>().sum(), 10.0f);
  b = Tensor();
  EXPECT_TRUE(weak.expired());
}

TEST(Tensor, DtypeConversion) {
  Tensor t = Tensor::from_vector({3}, std::vector<float>{1.0f, 0.1f, -65504.0f});
  Tensor h = t.to(DType::F16);
  Tensor b = t.to(DType::BF16);
  EXPECT_EQ(h.nbytes(), 6u);
  Tensor back = h.to(DType::F32);
  EXPECT_EQ(back.f(0), 1.0f);
  EXPECT_EQ(back.f(1), f16_to_f32(f32_to_f16(0.1f)));
  EXPECT_EQ(back.f(2), -65504.0f);
  EXPECT_EQ(b.to(DType::F32).f(1), bf16_to_f32(f32_to_bf16(0.1f)));
  EXPECT_EQ(t.to(DType::F32).raw(), t.raw());  // no copy when already f32
  EXPECT_THROW(t.to(DType::I64), TensorError);
}

TEST(Tensor, RejectsOverflowingShapes) {
  EXPECT_THROW(shape_numel({std::int64_t(1) << 40, std::int64_t(1) << 40}), TensorError);
  EXPECT_THROW(shape_numel({-1, 2}), TensorError);
  EXPECT_THROW(Tensor::empty({std::int64_t(1) << 62, 4}), TensorError);
}

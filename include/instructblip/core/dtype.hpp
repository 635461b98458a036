#pragma once
// Element types and exact conversions between float32, float16 and bfloat16.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "instructblip/core/error.hpp"

namespace instructblip {

enum class DType : std::uint8_t { F32, F16, BF16, I64, U8 };

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

/// The safetensors spelling of a dtype ("F32", "F16", "BF16", "I64").
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
  }
  return "?";
}

/// Parses a safetensors dtype string; returns false for dtypes the library does not handle.
inline bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32") { *out = DType::F32; return true; }
  if (s == "F16") { *out = DType::F16; return true; }
  if (s == "BF16") { *out = DType::BF16; return true; }
  if (s == "I64") { *out = DType::I64; return true; }
  if (s == "U8") { *out = DType::U8; return true; }
  return false;
}

inline std::uint32_t f32_bits(float f) { std::uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float f32_from_bits(std::uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

/// bfloat16 -> float32: exact (the upper half of the float32 bit pattern).
inline float bf16_to_f32(std::uint16_t h) { return f32_from_bits(std::uint32_t(h) << 16); }

/// float32 -> bfloat16, round to nearest, ties to even; NaN stays a (quiet) NaN.
inline std::uint16_t f32_to_bf16(float f) {
  std::uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}

/// IEEE half -> float32: exact, including subnormals, infinities and NaN.
inline float f16_to_f32(std::uint16_t h) {
  std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t man = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { man <<= 1; ++e; } while ((man & 0x400u) == 0);
      man &= 0x3ffu;
      bits = sign | (std::uint32_t(127 - 15 - e) << 23) | (man << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  return f32_from_bits(bits);
}

/// float32 -> IEEE half, round to nearest, ties to even; overflow gives infinity.
inline std::uint16_t f32_to_f16(float f) {
  std::uint32_t u = f32_bits(f);
  std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
  std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return std::uint16_t(sign | 0x7e00u);  // NaN
  if (a >= 0x47800000u) return std::uint16_t(sign | 0x7c00u); // >= 65536: inf (after rounding)
  if (a < 0x38800000u) {                                      // below the smallest normal half
    if (a < 0x33000000u) return sign;                         // < 2^-25 rounds to zero
    std::uint32_t e = a >> 23;
    std::uint32_t m = (a & 0x7fffffu) | 0x800000u;
    std::uint32_t shift = 126 - e;  // 14 - (e - 127) - 1 + 13 ... gives the subnormal position
    std::uint32_t half = m >> shift;
    std::uint32_t rem = m & ((1u << shift) - 1u);
    std::uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return std::uint16_t(sign | half);
  }
  // normal: rebias the exponent and round the 13 dropped mantissa bits
  std::uint32_t r = a - 0x38000000u;  // (127-15) << 23
  r += 0xfffu + ((r >> 13) & 1u);
  if (r >= 0x0f800000u) return std::uint16_t(sign | 0x7c00u);
  return std::uint16_t(sign | (r >> 13));
}

/// Converts n elements of `src` (dtype `from`) into float32.
void convert_to_f32(const void* src, DType from, float* dst, std::size_t n);
/// Converts n float32 elements into `to` (rounding to nearest even for f16 / bf16).
void convert_from_f32(const float* src, DType to, void* dst, std::size_t n);

}  // namespace instructblip

// WeightMatrix: construction (conversion, quantisation, packing) and serialisation; the one
// place that names the tensors a matrix is stored under (see weights.hpp).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <vector>

#include "instructblip/core/thread_pool.hpp"
#include "instructblip/ops/weights.hpp"
#include "cpu.hpp"
#include "kernels.hpp"
#include "quantize.hpp"

namespace instructblip::ops {

using detail::QK;
using detail::QPAD;
using detail::round_up;

namespace {

// A matrix's source may be a file mapping no one has read yet. Its page tables are filled in one
// pass by the kernel (MADV_POPULATE_READ; page-cache pages are mapped, missing ones read) rather
// than by one page fault per 4 KiB in the first product that uses a matrix kept in place (about a
// second for the 2.5 GB of a bf16 ViT-g/14, on the first image) or in the conversion at load
// (faults are costly on virtual machines). A no-op where the kernel lacks it (Linux < 5.14).
void populate(const Tensor& t) {
#if defined(__linux__) && defined(MADV_POPULATE_READ)
  if (!t.defined() || !t.is_borrowed() || t.nbytes() == 0) return;
  static const std::uintptr_t page = std::uintptr_t(::sysconf(_SC_PAGESIZE));
  const auto b = reinterpret_cast<std::uintptr_t>(t.raw()) / page * page;
  const auto e = reinterpret_cast<std::uintptr_t>(t.raw()) + t.nbytes();
  ::madvise(reinterpret_cast<void*>(b), e - b, MADV_POPULATE_READ);  // best effort
#else
  (void)t;
#endif
}

}  // namespace


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
  // Used in place, or read once to convert / pack: either way every page of a mapped source is
  // needed; one kernel pass maps them far faster than a fault per page.
  populate(w);
  if (layout == WeightLayout::Panels && format == WeightFormat::Q8_0) {
    // 16 rows at a time quantised row-major into a scratch block, then interleaved into their panel
    if (k_ > (std::int64_t(1) << 40)) throw TensorError("WeightMatrix: too many columns to quantise");
    kp_ = round_up(k_, QPAD);
    const std::int64_t K = k_, Kp = kp_, KB = Kp / QK, P = (n_ + 15) / 16;
    data_ = Tensor::empty({P, KB, 512}, DType::U8);
    scales_ = Tensor::empty({P, KB, 16}, DType::F16);
    auto* pq = static_cast<std::int8_t*>(data_.raw_mut());
    auto* ps = static_cast<std::uint16_t*>(scales_.raw_mut());
    const DType dt = w.dtype();
    const auto* src = static_cast<const std::uint8_t*>(w.raw());
    const std::size_t es = dtype_size(dt);
    parallel_for(0, P, 1, [&](std::int64_t p0, std::int64_t p1) {
      std::vector<float> row(std::size_t(std::max<std::int64_t>(K, 1)));
      std::vector<std::int8_t> q(std::size_t(16 * Kp));
      std::vector<std::uint16_t> sc(std::size_t(16 * KB));
      for (std::int64_t p = p0; p < p1; ++p) {
        const std::int64_t rows = std::min<std::int64_t>(16, n_ - p * 16);
        for (std::int64_t r = 0; r < rows; ++r) {
          convert_to_f32(src + std::size_t((p * 16 + r) * K) * es, dt, row.data(), std::size_t(K));
          detail::quantize_row_q8(row.data(), K, Kp, q.data() + r * Kp, sc.data() + r * KB);
        }
        detail::pack_q8_panels(q.data(), sc.data(), rows, Kp, pq + p * KB * 512, ps + p * KB * 16);
      }
    });
    defined_ = true;
    return;
  }
  if (layout == WeightLayout::Panels) {
    if (format != WeightFormat::F32 && format != WeightFormat::BF16)
      throw InvalidArgument(std::string("WeightMatrix: the Panels layout is for f32 / bf16 / q8_0, not ") +
                            weight_format_name(format));
    const std::int64_t N = n_, K = k_, P = (N + 31) / 32, KW = (K + 1) / 2;
    const bool f32 = format == WeightFormat::F32;
    const bool simd = detail::use_avx512();  // the SIMD packer writes every word, padding included
    const Shape shape = f32 ? Shape{P, K, 32} : Shape{P, KW, 32, 2};
    const DType dtype = f32 ? DType::F32 : DType::BF16;
    data_ = simd ? Tensor::empty(shape, dtype) : Tensor::zeros(shape, dtype);
    kp_ = k_;
    const DType dt = w.dtype();
    const auto* src = static_cast<const std::uint8_t*>(w.raw());
    const std::size_t es = dtype_size(dt);
    void* dst = data_.raw_mut();
    const bool same = (f32 && dt == DType::F32) || (!f32 && dt == DType::BF16);
    parallel_for(0, P, 1, [&](std::int64_t p0, std::int64_t p1) {
      // Another source dtype: 32 rows at a time converted to the target dtype (row-major) first.
      std::vector<float> conv(same ? 0 : std::size_t(32 * K));
      std::vector<std::uint16_t> conv_bf16(same || f32 ? 0 : std::size_t(32 * K));
      for (std::int64_t p = p0; p < p1; ++p) {
        const std::int64_t n0 = p * 32, rows = std::min<std::int64_t>(32, N - n0);
        const void* block = src + std::size_t(n0 * K) * es;
        if (!same) {
          convert_to_f32(static_cast<const std::uint8_t*>(block), dt, conv.data(), std::size_t(rows * K));
          if (!f32)
            for (std::int64_t i = 0; i < rows * K; ++i) conv_bf16[std::size_t(i)] = f32_to_bf16(conv[std::size_t(i)]);
          block = f32 ? static_cast<const void*>(conv.data()) : static_cast<const void*>(conv_bf16.data());
        }
        const std::size_t panel_bytes = std::size_t(f32 ? K : KW) * 32 * 4;
        void* out = static_cast<std::uint8_t*>(dst) + std::size_t(p) * panel_bytes;
        if (simd) {
          detail::avx512::pack_panel(block, K, rows, !f32, out);
          continue;
        }
        for (std::int64_t r = 0; r < rows; ++r)
          for (std::int64_t k = 0; k < K; ++k) {
            if (f32)
              static_cast<float*>(dst)[detail::panel_index_f32(n0 + r, k, K)] = static_cast<const float*>(block)[r * K + k];
            else
              static_cast<std::uint16_t*>(dst)[detail::panel_index_bf16(n0 + r, k, K)] =
                  static_cast<const std::uint16_t*>(block)[r * K + k];
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
            detail::quantize_row_q8(row.data(), K, Kp, reinterpret_cast<std::int8_t*>(qs + n * Kp), sc + n * (Kp / QK));
          else
            detail::quantize_row_q4(row.data(), K, Kp, qs + n * (Kp / 2), sc + n * (Kp / QK));
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
  for (std::int64_t n = 0; n < n_; ++n) detail::dequantize_row(*this, n, o + n * k_);
  return out;
}

WeightMatrix WeightMatrix::with_layout(WeightLayout layout) const {
  if (!defined_) throw TensorError("WeightMatrix::with_layout: undefined matrix");
  if (layout == layout_) return *this;
  if (format_ == WeightFormat::Q8_0) {
    WeightMatrix m = *this;
    m.layout_ = layout;
    const std::int64_t KB = kp_ / QK;
    const auto* q = static_cast<const std::int8_t*>(data_.raw());
    const auto* s = static_cast<const std::uint16_t*>(scales_.raw());
    if (layout == WeightLayout::Panels) {
      const std::int64_t P = (n_ + 15) / 16;
      m.data_ = Tensor::empty({P, KB, 512}, DType::U8);
      m.scales_ = Tensor::empty({P, KB, 16}, DType::F16);
      detail::pack_q8_panels(q, s, n_, kp_, static_cast<std::int8_t*>(m.data_.raw_mut()),
                             static_cast<std::uint16_t*>(m.scales_.raw_mut()));
    } else {
      m.data_ = Tensor::empty({n_, kp_}, DType::U8);
      m.scales_ = Tensor::empty({n_, KB}, DType::F16);
      detail::unpack_q8_panels(q, s, n_, kp_, static_cast<std::int8_t*>(m.data_.raw_mut()),
                               static_cast<std::uint16_t*>(m.scales_.raw_mut()));
    }
    return m;
  }
  if (format_ == WeightFormat::Q4_0) throw InvalidArgument("WeightMatrix: q4_0 has the RowMajor layout only");
  if (layout == WeightLayout::Panels) return WeightMatrix(data_, format_, WeightLayout::Panels);
  Tensor t = dequantize();
  return WeightMatrix(format_ == WeightFormat::BF16 ? t.to(DType::BF16) : t, format_);
}

std::vector<std::pair<std::string, Tensor>> WeightMatrix::to_tensors(const std::string& name) const {
  if (!defined_) throw TensorError("WeightMatrix::to_tensors: undefined matrix");
  std::vector<std::pair<std::string, Tensor>> out;
  if (layout_ == WeightLayout::Panels && format_ == WeightFormat::Q8_0) return with_layout(WeightLayout::RowMajor).to_tensors(name);
  if (layout_ == WeightLayout::Panels) {
    Tensor t = dequantize();
    out.emplace_back(name, format_ == WeightFormat::BF16 ? t.to(DType::BF16) : t);  // bf16 -> f32 -> bf16 is exact
    return out;
  }
  if (format_ == WeightFormat::F32 || format_ == WeightFormat::BF16) {
    out.emplace_back(name, data_);
    return out;
  }
  const StorageNames s = storage_names(name, format_);
  out.emplace_back(s.data, data_);
  out.emplace_back(s.scale, scales_);
  out.emplace_back(s.shape, Tensor::from_vector({2}, std::vector<std::int64_t>{n_, k_}));
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
    const StorageNames names = storage_names(name, f);
    Tensor q = lookup(names.data);
    if (!q.defined()) continue;
    Tensor s = lookup(names.scale);
    Tensor shp = lookup(names.shape);
    if (!s.defined()) throw bad("missing " + names.scale);
    if (!shp.defined()) throw bad("missing " + names.shape);
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
    populate(m.data_);
    populate(m.scales_);
    m.n_ = N;
    m.k_ = K;
    m.kp_ = Kp;
    m.format_ = f;
    m.defined_ = true;
    return m;
  }
  Tensor t = lookup(name);
  if (!t.defined())
    throw bad("not found (looked for " + name + ", " + storage_names(name, WeightFormat::Q8_0).data + ", " +
              storage_names(name, WeightFormat::Q4_0).data + ")");
  if (t.ndim() != 2) throw bad("expected a 2-d tensor, got " + shape_str(t.shape()));
  if (t.dtype() == DType::F32 || t.dtype() == DType::F16) return WeightMatrix(t, WeightFormat::F32);
  if (t.dtype() == DType::BF16) return WeightMatrix(t, WeightFormat::BF16);
  throw bad(std::string("unsupported dtype ") + dtype_name(t.dtype()));
}

StorageNames storage_names(const std::string& name, WeightFormat format) {
  if (format == WeightFormat::F32 || format == WeightFormat::BF16) return {name, "", ""};
  const std::string fmt = weight_format_name(format);
  return {name + "." + fmt, name + "." + fmt + "_scale", name + ".shape"};
}

std::vector<std::string> all_storage_names(const std::string& name) {
  std::vector<std::string> out{name};
  for (WeightFormat f : {WeightFormat::Q8_0, WeightFormat::Q4_0}) {
    const StorageNames s = storage_names(name, f);
    out.push_back(s.data);
    out.push_back(s.scale);
  }
  out.push_back(storage_names(name, WeightFormat::Q8_0).shape);
  return out;
}

bool stored_quantized(const std::string& name, const TensorLookup& lookup) {
  for (WeightFormat f : {WeightFormat::Q8_0, WeightFormat::Q4_0})
    if (lookup(storage_names(name, f).data).defined()) return true;
  return false;
}

}  // namespace instructblip::ops

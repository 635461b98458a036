#include "instructblip/layers/weights.hpp"

#include "instructblip/core/error.hpp"
#include "instructblip/io/checkpoint.hpp"

namespace instructblip::layers {

using ops::GemmCompute;
using ops::WeightFormat;
using ops::WeightLayout;

WeightFormat WeightPolicy::format_for(MatrixRole role) const {
  if (format == WeightFormat::F32) return WeightFormat::F32;
  switch (role) {
    case MatrixRole::Vision:
    case MatrixRole::QFormer: return WeightFormat::BF16;
    case MatrixRole::Text: return format;
    case MatrixRole::T5FfnOut: return WeightFormat::BF16;
    case MatrixRole::OutputHead: return format == WeightFormat::Q4_0 ? WeightFormat::Q8_0 : format;
  }
  return format;
}

WeightLayout WeightPolicy::layout_for(MatrixRole role) const {
  // Panels for f32 / bf16 (WeightSource::matrix keeps a matrix already stored in that format in
  // place, row-major); q8_0 in the layout this CPU's kernels read fastest; q4_0 row-major.
  return ops::preferred_layout(format_for(role));
}

bool WeightPolicy::packs_in_place(MatrixRole) const {
  // An f32 checkpoint at f32 stays mapped (no second copy of 16 GB). Under a reduced format the
  // matrices are packed even when stored as requested: see the header.
  return format != WeightFormat::F32;
}

GemmCompute WeightPolicy::compute_for(MatrixRole) const {
  return format != WeightFormat::F32 && bf16_arithmetic ? GemmCompute::BF16 : GemmCompute::F32;
}

WeightSource::WeightSource(Find find, std::string where) : find_(std::move(find)), where_(std::move(where)) {}

WeightSource::WeightSource(Find find, Get get, std::string where)
    : find_(std::move(find)), get_(std::move(get)), where_(std::move(where)) {}

WeightSource WeightSource::from_checkpoint(const io::Checkpoint& ck) {
  WeightSource src([&ck](const std::string& n) { return ck.contains(n) ? ck.get(n) : Tensor(); },
                      [&ck](const std::string& n, const Shape& s) {
                        Tensor t = ck.get(n, s);
                        if (t.dtype() == DType::I64 || t.dtype() == DType::U8)
                          throw TensorError("tensor '" + n + "' in " + ck.file_of(n) + " has integer dtype " +
                                            dtype_name(t.dtype()) + ", expected a floating-point weight");
                        return t;
                      },
                      "checkpoint " + ck.dir());
  src.release_ = [&ck](const std::string& n) { ck.release_pages(n); };
  return src;
}

Tensor WeightSource::get(const std::string& name, const Shape& shape) const {
  if (get_) return get_(name, shape);
  Tensor t = find_(name);
  if (!t.defined()) throw TensorError("tensor '" + name + "' not found in " + where_);
  if (t.shape() != shape)
    throw TensorError("tensor '" + name + "' in " + where_ + " has shape " + shape_str(t.shape()) + ", expected " +
                      shape_str(shape));
  if (t.dtype() != DType::F32 && t.dtype() != DType::F16 && t.dtype() != DType::BF16)
    throw TensorError("tensor '" + name + "' in " + where_ + " has dtype " + dtype_name(t.dtype()) +
                      ", expected a floating-point weight (F32, F16 or BF16)");
  return t;
}

Tensor WeightSource::f32(const std::string& name, const Shape& shape) const {
  const Tensor t = get(name, shape);
  if (t.dtype() == DType::F32) return t;
  Tensor f = t.to(DType::F32);
  if (release_) release_(name);
  return f;
}

bool WeightSource::is_quantised(const std::string& name) const {
  return ops::stored_quantized(name, find_);
}

ops::WeightMatrix WeightSource::matrix(const std::string& name, const Shape& shape, WeightFormat format,
                                       WeightLayout layout, bool pack_in_place) const {
  if (shape.size() != 2) throw TensorError("matrix '" + name + "': expected a 2-d shape, got " + shape_str(shape));
  if (is_quantised(name)) {
    ops::WeightMatrix m;
    try {
      m = ops::WeightMatrix::from_tensors(name, find_);
    } catch (const TensorError& e) {
      throw TensorError(std::string(e.what()) + " (in " + where_ + ")");
    }
    if (m.rows() != shape[0] || m.cols() != shape[1])
      throw TensorError("quantised matrix '" + name + "' in " + where_ + " has shape [" + std::to_string(m.rows()) +
                        ", " + std::to_string(m.cols()) + "], expected " + shape_str(shape));
    // stored row-major; repacked once where this CPU's kernels read another layout faster
    const WeightLayout best = ops::preferred_layout(m.format());
    if (m.layout() != best) {
      m = m.with_layout(best);
      if (release_) {
        const ops::StorageNames names = ops::storage_names(name, m.format());
        release_(names.data);
        release_(names.scale);
      }
    }
    return m;
  }
  const Tensor t = get(name, shape);
  if (format == WeightFormat::Q4_0) layout = WeightLayout::RowMajor;
  // A matrix converted at load, or stored in the requested format under a reduced one
  // (WeightPolicy::packs_in_place), is packed into panels once; an f32 one at f32 is used in place
  // (mapped; the GEMM kernels pack it per call).
  const bool in_place = (format == WeightFormat::BF16 && t.dtype() == DType::BF16) ||
                        (format == WeightFormat::F32 && t.dtype() == DType::F32);
  if (in_place && !(pack_in_place && layout == WeightLayout::Panels)) layout = WeightLayout::RowMajor;
  ops::WeightMatrix m(t, format, layout);
  if (m.data() != t.raw() && release_) release_(name);
  return m;
}

std::vector<std::string> matrix_storage_names(const std::string& name) {
  return ops::all_storage_names(name);
}

void Linear::operator()(const ops::In<float>& x, ops::Out<float> y) const {
  ops::LinearOptions o;
  o.compute = compute;
  ops::linear(x, w, b.defined() ? b.data<float>() : nullptr, y, o);
}

void Linear::operator()(const ops::In<float>& x, ops::Out<float> y, ops::Activation activation) const {
  ops::LinearOptions o;
  o.compute = compute;
  o.activate = true;
  o.activation = activation;
  ops::linear(x, w, b.defined() ? b.data<float>() : nullptr, y, o);
}

void WeightVisitor::linear(const std::string& name, std::int64_t N, std::int64_t K, bool bias, Linear& l,
                           MatrixRole role) const {
  matrix(name + ".weight", {N, K}, l, role);
  if (bias) tensor(name + ".bias", {N}, l.b);
}

WeightVisitor WeightVisitor::loader(const WeightSource& source, const WeightPolicy& policy) {
  WeightVisitor v;
  v.tensor = [&source](const std::string& name, const Shape& shape, Tensor& slot) { slot = source.f32(name, shape); };
  v.matrix = [&source, policy](const std::string& name, const Shape& shape, Linear& slot, MatrixRole role) {
    slot.w = source.matrix(name, shape, policy.format_for(role), policy.layout_for(role), policy.packs_in_place(role));
    slot.compute = policy.compute_for(role);
  };
  return v;
}

WeightVisitor WeightVisitor::lister(std::vector<std::pair<std::string, Shape>>& out) {
  WeightVisitor v;
  v.tensor = [&out](const std::string& name, const Shape& shape, Tensor&) { out.emplace_back(name, shape); };
  v.matrix = [&out](const std::string& name, const Shape& shape, Linear&, MatrixRole) { out.emplace_back(name, shape); };
  return v;
}

WeightVisitor WeightVisitor::alias_lister(std::vector<std::pair<std::string, std::string>>& out) {
  WeightVisitor v;
  v.tensor = [](const std::string&, const Shape&, Tensor&) {};
  v.matrix = [](const std::string&, const Shape&, Linear&, MatrixRole) {};
  v.alias = [&out](const std::string& name, const std::string& target) { out.emplace_back(name, target); };
  return v;
}

WeightVisitor WeightVisitor::recording(const WeightVisitor& inner, std::vector<std::string>& names) {
  WeightVisitor v;
  v.tensor = [inner, &names](const std::string& n, const Shape& s, Tensor& slot) {
    names.push_back(n);
    inner.tensor(n, s, slot);
  };
  v.matrix = [inner, &names](const std::string& n, const Shape& s, Linear& slot, MatrixRole role) {
    names.push_back(n);
    inner.matrix(n, s, slot, role);
  };
  v.alias = inner.alias;
  return v;
}

WeightVisitor WeightVisitor::saver(std::vector<std::pair<std::string, Tensor>>& out) {
  WeightVisitor v;
  v.tensor = [&out](const std::string& name, const Shape&, Tensor& slot) { out.emplace_back(name, slot); };
  v.matrix = [&out](const std::string& name, const Shape&, Linear& slot, MatrixRole) {
    for (auto& t : slot.w.to_tensors(name)) out.push_back(std::move(t));
  };
  return v;
}

}  // namespace instructblip::layers

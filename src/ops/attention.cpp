// attention<float>: the two products of every head on the kernel levels (see attention.hpp).
#include "instructblip/ops/attention.hpp"

#include "instructblip/ops/weights.hpp"

namespace instructblip::ops {

template <>
void attention<float>(const In<float>& q, const In<float>& k, const In<float>& v, const AttentionOptions<float>& o,
                      Out<float> out) {
  // Small products (decoding, prompts of tens of tokens) stay with Eigen in the calling thread:
  // dispatching them to the pool per head would cost more than they do.
  if (q.rows() < 128 || k.rows() < 128) {
    attention_eigen<float>(q, k, v, o, out);
    return;
  }
  const Eigen::Index D = o.head_dim, Lk = k.rows();
  // k_h and v_h^T as contiguous [out, in] matrices, the layout linear() multiplies by
  MatrixF kh, vt;
  attention_with<float>(
      q, k, v, o, out,
      [&](int h, int kvh, MatrixF& s) {
        kh = k.middleCols(kvh * D, D);
        linear(q.middleCols(h * D, D), WeightMatrix(Tensor::borrow(kh.data(), {Lk, D}, DType::F32), WeightFormat::F32),
               nullptr, s);
      },
      [&](int h, int kvh, const MatrixF& s) {
        vt = v.middleCols(kvh * D, D).transpose();
        linear(s, WeightMatrix(Tensor::borrow(vt.data(), {D, Lk}, DType::F32), WeightFormat::F32), nullptr,
               out.middleCols(h * D, D));
      });
}

}  // namespace instructblip::ops

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
  // k_h and v_h^T of the current head, copied into owned [out, in] matrices (the layout linear()
  // multiplies by); the WeightMatrix views share their memory, so each is built once.
  Tensor kh = Tensor::empty({Lk, D}), vt = Tensor::empty({D, Lk});
  const WeightMatrix Wk(kh, WeightFormat::F32), Wv(vt, WeightFormat::F32);
  attention_with<float>(
      q, k, v, o, out,
      [&](int h, int kvh, MatrixF& s) {
        kh.matrix<float>(Lk, D) = k.middleCols(kvh * D, D);
        linear(q.middleCols(h * D, D), Wk, nullptr, s);
      },
      [&](int h, int kvh, const MatrixF& s) {
        vt.matrix<float>(D, Lk) = v.middleCols(kvh * D, D).transpose();
        linear(s, Wv, nullptr, out.middleCols(h * D, D));
      });
}

}  // namespace instructblip::ops

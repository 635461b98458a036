#pragma once
// Scaled dot-product multi-head attention on [L, heads * head_dim] row-major activations,
// with additive masks, an optional additive position bias (T5), causal masking and
// grouped-query attention (several query heads share one key/value head).
#include <cstdint>
#include <limits>

#include "instructblip/ops/activations.hpp"

namespace instructblip::ops {

template <typename T>
struct AttentionOptions {
  int num_heads = 1;
  int num_kv_heads = 0;  // 0: same as num_heads
  int head_dim = 0;
  T scale = T(1);        // scores = (q . k) * scale
  bool causal = false;   // query row i (absolute position query_offset + i) sees keys 0 .. query_offset + i
  std::int64_t query_offset = 0;
  const T* key_mask = nullptr;       // additive, [Lk] (padding masks as HF extends them)
  const T* mask = nullptr;           // additive, [Lq, Lk]
  const T* position_bias = nullptr;  // additive, [num_heads, Lq, Lk]
  T* probs = nullptr;                // if set, receives the attention probabilities [num_heads, Lq, Lk]
};

/// attention() with the two products supplied per head h (key / value head kvh):
/// qk(h, kvh, scores) sets scores[Lq, Lk] = q_h k_kvh^T; pv(h, kvh, scores) sets out_h = scores v_kvh.
template <typename T, typename QK, typename PV>
void attention_with(const In<T>& q, const In<T>& k, const In<T>& v, const AttentionOptions<T>& o, Out<T> out,
                    const QK& qk, const PV& pv) {
  const int H = o.num_heads;
  const int Hkv = o.num_kv_heads > 0 ? o.num_kv_heads : H;
  const int D = o.head_dim;
  if (H <= 0 || D <= 0 || H % Hkv != 0) throw InvalidArgument("attention: bad head configuration");
  const Eigen::Index Lq = q.rows(), Lk = k.rows();
  if (q.cols() != Eigen::Index(H) * D || k.cols() != Eigen::Index(Hkv) * D || v.cols() != k.cols() ||
      v.rows() != Lk || out.rows() != Lq || out.cols() != q.cols())
    throw InvalidArgument("attention: q/k/v/out shapes do not agree with the head configuration");
  const int group = H / Hkv;
  RowMatrix<T> scores(Lq, Lk);
  for (int h = 0; h < H; ++h) {
    const int kvh = h / group;
    qk(h, kvh, scores);
    scores *= o.scale;
    for (Eigen::Index i = 0; i < Lq; ++i) {
      T* row = scores.row(i).data();
      if (o.position_bias) {
        const T* pb = o.position_bias + (Eigen::Index(h) * Lq + i) * Lk;
        for (Eigen::Index j = 0; j < Lk; ++j) row[j] += pb[j];
      }
      if (o.mask) {
        const T* m = o.mask + i * Lk;
        for (Eigen::Index j = 0; j < Lk; ++j) row[j] += m[j];
      }
      if (o.key_mask)
        for (Eigen::Index j = 0; j < Lk; ++j) row[j] += o.key_mask[j];
      if (o.causal)
        for (Eigen::Index j = std::max<Eigen::Index>(0, o.query_offset + i + 1); j < Lk; ++j)
          row[j] = -std::numeric_limits<T>::infinity();
      softmax_row(row, std::size_t(Lk));
    }
    if (o.probs)
      Eigen::Map<RowMatrix<T>>(o.probs + Eigen::Index(h) * Lq * Lk, Lq, Lk) = scores;
    pv(h, kvh, scores);
  }
}

/// attention() with Eigen's products (any T; float uses it below 128 query or key rows).
template <typename T>
void attention_eigen(const In<T>& q, const In<T>& k, const In<T>& v, const AttentionOptions<T>& o, Out<T> out) {
  const Eigen::Index D = o.head_dim;
  attention_with<T>(
      q, k, v, o, out,
      [&](int h, int kvh, RowMatrix<T>& s) { s.noalias() = q.middleCols(h * D, D) * k.middleCols(kvh * D, D).transpose(); },
      [&](int h, int kvh, const RowMatrix<T>& s) { out.middleCols(h * D, D).noalias() = s * v.middleCols(kvh * D, D); });
}

/// out[Lq, H*D] = softmax(q k^T * scale + masks) v, per head.
template <typename T>
void attention(const In<T>& q, const In<T>& k, const In<T>& v, const AttentionOptions<T>& o, Out<T> out) {
  attention_eigen<T>(q, k, v, o, out);
}

/// float: with 128 or more query and key rows (the vision encoder's 257 tokens) the two products
/// run on the library's kernel levels (ops::linear; chosen at run time, so a portable build gets
/// AVX-512 there too); smaller ones (decoding, prompts, the Q-Former) use Eigen.
template <>
void attention<float>(const In<float>& q, const In<float>& k, const In<float>& v, const AttentionOptions<float>& o,
                      Out<float> out);

}  // namespace instructblip::ops

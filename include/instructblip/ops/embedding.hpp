#pragma once
// Table look-ups and the ViT patch embedding.
#include <cstdint>

#include "instructblip/ops/linear.hpp"

namespace instructblip::ops {

/// out[i] = table[ids[i]]; an id outside [0, rows) is an InvalidArgument.
template <typename T>
void embedding(const std::int64_t* ids, std::size_t n, const In<T>& table, Out<T> out) {
  if (out.rows() != Eigen::Index(n) || out.cols() != table.cols())
    throw InvalidArgument("embedding: output shape does not match ids x embedding width");
  for (std::size_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= table.rows())
      throw InvalidArgument("token id " + std::to_string(ids[i]) + " is outside the vocabulary of " +
                            std::to_string(table.rows()));
    out.row(Eigen::Index(i)) = table.row(Eigen::Index(ids[i]));
  }
}

/// Non-overlapping convolution (kernel = stride = P) as one GEMM: the image [C, H, W] is
/// unfolded into patches [(H/P)*(W/P), C*P*P] ordered (c, ky, kx), multiplied by the conv weight
/// [D, C, P, P] viewed as [D, C*P*P], plus bias. Patches are row-major over the patch grid.
template <typename T>
void patch_embed(const T* image, int C, int H, int W, int P, const In<T>& weight, const T* bias, Out<T> out) {
  if (P <= 0 || H % P != 0 || W % P != 0)
    throw InvalidArgument("patch_embed: image " + std::to_string(H) + "x" + std::to_string(W) +
                          " is not a whole number of " + std::to_string(P) + "-pixel patches");
  const int gh = H / P, gw = W / P;
  const Eigen::Index K = Eigen::Index(C) * P * P;
  if (weight.cols() != K || out.rows() != Eigen::Index(gh) * gw || out.cols() != weight.rows())
    throw InvalidArgument("patch_embed: weight / output shapes do not match");
  RowMatrix<T> cols(Eigen::Index(gh) * gw, K);
  for (int py = 0; py < gh; ++py)
    for (int px = 0; px < gw; ++px) {
      T* dst = cols.row(Eigen::Index(py) * gw + px).data();
      for (int c = 0; c < C; ++c)
        for (int ky = 0; ky < P; ++ky) {
          const T* src = image + (std::size_t(c) * H + std::size_t(py) * P + ky) * W + std::size_t(px) * P;
          for (int kx = 0; kx < P; ++kx) *dst++ = src[kx];
        }
    }
  linear<T>(cols, weight, bias, out);
}

}  // namespace instructblip::ops

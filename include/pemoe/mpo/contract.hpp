/// @file contract.hpp
/// @brief `mpo_apply`: y = x·Wᵀ for an MPO-represented W, by rebuilding W or by contracting x through the
/// cores (TT-matrix–vector product), whichever a FLOP model says is cheaper.
///
/// References: Novikov et al. 2015, "Tensorizing neural networks" (TT-layer, contraction through the
/// cores); MPOE (arXiv 2203.01104) and MPOP (ACL 2021) always rebuild W and run one GEMM.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/mpo/decompose.hpp"
#include "pemoe/mpo/detail/mpo_chain.hpp"
#include "pemoe/mpo/reconstruct.hpp"

namespace pemoe {

/// How `mpo_apply` computes y = x·Wᵀ.
enum class MpoApplyPath {
  automatic,    ///< the cheaper of the two by `mpo_apply_cost`
  rebuild,      ///< W = reconstruct(cores), then one GEMM
  contraction,  ///< x contracted through the cores one by one, W never formed
};

/// Default `float_cost` of `mpo_apply_cost`: flop-equivalents charged per value a path writes or reads
/// outside the GEMM kernels (see `MpoApplyCost`).
inline constexpr double kMpoFlopsPerFloatMoved = 32.0;

/**
 * @brief The cost model `mpo_apply` decides by, for N tokens and an MPO with modes (i_k, j_k), bonds d_k
 * (padded sizes R = Π i_k, C = Π j_k):
 *
 * - rebuild flops: @f$ F_\mathrm{rb} = F_\mathrm{chain} + 2 N R C @f$, F_chain the cheapest pairwise
 *   contraction of the cores (matrix-chain DP; 2.7 GFLOP for T5's 3072×768 at full rank, 0.29 of the dense
 *   GEMM at N = 2048, independent of N); values moved: ≈ 3·R·C (the chain's last product, the
 *   de-interleave);
 * - contraction flops (left to right, one GEMM per core): @f$ F_\mathrm{ct} = \sum_k 2 N
 *   \big(\prod_{m<k} i_m\big) \big(\prod_{m>k} j_m\big)\, d_k j_k\, i_k d_{k+1} @f$; values moved:
 *   3·Σ_k S_k with @f$ S_k = N \prod_{m\le k} i_m\, d_{k+1} \prod_{m>k} j_m @f$ the state after core k
 *   (GEMM output, permutation read and write).
 *
 * The path with the smaller flops + `float_cost`·(values moved) wins. The contraction's flops grow with the
 * bond dimensions squared and its state with N·d, the rebuild's fixed part is amortised over N: the
 * contraction wins for small bonds and few tokens (3072×768 at χ = 2–4, N = 64), the rebuild at full rank
 * and for many tokens (at χ = d_full the contraction costs hundreds of dense GEMMs). `float_cost` =
 * `kMpoFlopsPerFloatMoved` = 32 is calibrated by bench/bench_mpo.cpp on this project's AVX-512 machines
 * (≈ 140 GFLOP/s GEMM against a few GB/s of allocation + permutation traffic): at χ = 8 both paths then
 * cost the same at N = 64, as measured, and the rebuild is ~3× cheaper at N = 2048 (measured 9×).
 */
struct MpoApplyCost {
  double rebuild_flops = 0;      ///< F_rb (including the dense GEMM)
  double contraction_flops = 0;  ///< F_ct
  double dense_flops = 0;        ///< 2·N·rows·cols, the dense GEMM alone (the yardstick)
  double rebuild_moved = 0;      ///< values the rebuild moves outside GEMM kernels
  double contraction_moved = 0;  ///< values the contraction moves outside GEMM kernels
  MpoApplyPath best = MpoApplyPath::rebuild;
};

/// The cost model of `mpo_apply` (see `MpoApplyCost`) from the shapes alone: an MPO of `shape` with bond
/// dimensions `bonds` (d_0..d_n) representing a `(rows, cols)` matrix, applied to `n_tokens` rows of x.
inline MpoApplyCost mpo_apply_cost(const MpoShape& shape, const std::vector<Index>& bonds, Index rows,
                                   Index cols, Index n_tokens, double float_cost = kMpoFlopsPerFloatMoved) {
  const Index n = shape.n_cores();
  std::vector<detail::CoreView<float>> v;
  for (Index k = 0; k < n; ++k)
    v.push_back(
        {nullptr, bonds[std::size_t(k)], shape.row_modes[k], shape.col_modes[k], bonds[std::size_t(k + 1)]});
  MpoApplyCost c;
  const double N = double(n_tokens);
  c.dense_flops = 2.0 * N * double(rows) * double(cols);
  c.rebuild_flops = detail::chain_flops(v, 0, n - 1) + c.dense_flops;
  c.rebuild_moved = 3.0 * double(shape.rows()) * double(shape.cols());
  double ilt = 1;  // Π_{m<k} i_m
  for (Index k = 0; k < n; ++k) {
    double jgt = 1;  // Π_{m>k} j_m
    for (Index m = k + 1; m < n; ++m) jgt *= double(shape.col_modes[m]);
    const auto& g = v[std::size_t(k)];
    c.contraction_flops += 2.0 * N * ilt * jgt * double(g.d0 * g.j) * double(g.i * g.d1);
    c.contraction_moved += 3.0 * N * ilt * double(g.i) * double(g.d1) * jgt;
    ilt *= double(shape.row_modes[k]);
  }
  c.best =
      c.contraction_flops + float_cost * c.contraction_moved < c.rebuild_flops + float_cost * c.rebuild_moved
          ? MpoApplyPath::contraction
          : MpoApplyPath::rebuild;
  return c;
}

/// The cost model of `mpo_apply` (see `MpoApplyCost`) for `n_tokens` rows of x.
template <class T>
MpoApplyCost mpo_apply_cost(const Mpo<T>& mpo, Index n_tokens, double float_cost = kMpoFlopsPerFloatMoved) {
  return mpo_apply_cost(mpo.shape, mpo.bond_dims(), mpo.rows, mpo.cols, n_tokens, float_cost);
}

namespace detail {
template <class T>
void check_apply_shapes(const char* site, ConstMatrixRef<T> x, const Mpo<T>& mpo, MatrixRef<T> y) {
  PEMOE_CHECK_SHAPE(x.cols() == mpo.cols, site, ": x has ", x.cols(), " features, the MPO's matrix is (",
                    mpo.rows, ", ", mpo.cols, ")");
  check_shape(site, "y", y, x.rows(), mpo.rows);
}
}  // namespace detail

/**
 * @brief y = x·Wᵀ with W = reconstruct(mpo): the MPOE/MPOP forward.  x: (N, cols) → y: (N, rows).
 * Cost: `MpoApplyCost::rebuild_flops`; memory: W.
 */
template <class T>
void mpo_apply_by_rebuild(ConstMatrixRef<T> x, const Mpo<T>& mpo, MatrixRef<T> y) {
  detail::check_apply_shapes("mpo_apply_by_rebuild", x, mpo, y);
  const Matrix<T> W = reconstruct(mpo);  // (rows, cols)
  gemm<T>(Op::N, Op::T, T(1), x, W, T(0), y);
}

/**
 * @brief y = x·Wᵀ by contracting x through the cores left to right, never forming W.
 * x: (N, cols) → y: (N, rows).
 *
 * The state before core k is the tensor Z_k[d_k, j_k, r, b], r = (j_{k+1}..j_n),
 * b = (i_{k-1}..i_1, token) with the token fastest; one GEMM with the core permuted to
 * K_k[(i_k, d_{k+1}), (d_k, j_k)] gives O[i_k, d_{k+1}, r, b], permuted (contiguous runs of ≥ N values)
 * to Z_{k+1}[d_{k+1}, r, (i_k, b)]. Cost: `MpoApplyCost::contraction_flops` plus one permutation
 * of the state per core; memory: the largest state, N·Π_{m≤k} i_m·d_{k+1}·Π_{m>k} j_m.
 */
template <class T>
void mpo_apply_by_contraction(ConstMatrixRef<T> x, const Mpo<T>& mpo, MatrixRef<T> y) {
  detail::check_apply_shapes("mpo_apply_by_contraction", x, mpo, y);
  const Index N = x.rows(), n = mpo.n_cores();
  const auto& rm = mpo.shape.row_modes;
  const auto& cm = mpo.shape.col_modes;
  const Index C = mpo.shape.cols();
  // Z_0[1, j_1, J_>1, token] = xᵀ (zero-padded columns): the token index is the fastest, so every
  // permutation below moves contiguous runs of at least N values.
  Index jr = C / cm[0];  // Π_{m>k} j_m
  // Both state buffers are allocated once at the largest size (no re-allocation or copy per core).
  std::size_t biggest = std::size_t(C * N);
  {
    Index b = N, r = jr;
    for (Index k = 0; k < n; ++k) {
      const Index d1 = Index(mpo.cores[std::size_t(k)].shape()[3]);
      biggest = std::max(biggest, std::size_t(rm[k] * d1 * r * b));
      b *= rm[k];
      r = k + 1 < n ? r / cm[k + 1] : 1;
    }
  }
  std::vector<T> z(biggest), o(biggest), K;
  std::fill(z.begin(), z.begin() + C * N, T(0));
  for (Index t = 0; t < N; ++t)
    for (Index c = 0; c < x.cols(); ++c) z[std::size_t(c * N + t)] = x(t, c);
  Index B = N;  // b = (i_{k-1}, …, i_1, token), token fastest
  for (Index k = 0; k < n; ++k) {
    const auto& g = mpo.cores[std::size_t(k)];
    const Index d0 = Index(g.shape()[0]), ik = rm[k], jk = cm[k], d1 = Index(g.shape()[3]);
    const Index R = jr;  // Π_{m>k} j_m
    // K[(i, d1), (d0, j)] = core[d0, i, j, d1]
    K.assign(std::size_t(ik * d1 * d0 * jk), T(0));
    const T* gd = g.data();
    for (Index a = 0; a < d0; ++a)
      for (Index i = 0; i < ik; ++i)
        for (Index j = 0; j < jk; ++j)
          for (Index e = 0; e < d1; ++e)
            K[std::size_t((i * d1 + e) * (d0 * jk) + a * jk + j)] = gd[((a * ik + i) * jk + j) * d1 + e];
    // O[(i, d1), (r, b)] = K · Z[(d0, j), (r, b)]
    gemm<T>(Op::N, Op::N, T(1), ConstMatrixMap<T>(K.data(), ik * d1, d0 * jk),
            ConstMatrixMap<T>(z.data(), d0 * jk, R * B), T(0), MatrixMap<T>(o.data(), ik * d1, R * B));
    // O[i, d1, r, b] -> Z'[d1, r, i, b]: runs of B contiguous values (r = (j_{k+1}, r') for the next core).
    for (Index i = 0; i < ik; ++i)
      for (Index e = 0; e < d1; ++e)
        for (Index r = 0; r < R; ++r)
          std::memcpy(z.data() + ((e * R + r) * ik + i) * B, o.data() + ((i * d1 + e) * R + r) * B,
                      std::size_t(B) * sizeof(T));
    B *= ik;
    jr = k + 1 < n ? R / cm[k + 1] : 1;
  }
  // Z_n[1, (i_n, …, i_1, token)] -> y[token, (i_1..i_n)] (padded rows sliced off).
  std::vector<Index> rev(std::size_t(y.cols()));
  for (Index r = 0; r < y.cols(); ++r) {
    Index rem = r, v = 0, stride = 1;  // digits of r (i_n fastest) re-weighted with i_1 fastest
    std::vector<Index> dig(static_cast<std::size_t>(n));
    for (Index m = n - 1; m >= 0; --m) {
      dig[std::size_t(m)] = rem % rm[m];
      rem /= rm[m];
    }
    for (Index m = 0; m < n; ++m) {
      v += dig[std::size_t(m)] * stride;
      stride *= rm[m];
    }
    rev[std::size_t(r)] = v;
  }
  for (Index t = 0; t < N; ++t)
    for (Index r = 0; r < y.cols(); ++r) y(t, r) = z[std::size_t(rev[std::size_t(r)] * N + t)];
}

/**
 * @brief y = x·Wᵀ for the matrix an MPO represents, by `path` (by default the cheaper one of
 * `mpo_apply_cost`). x: (N, mpo.cols) → y: (N, mpo.rows). Returns the path taken.
 *
 * Named `mpo_apply` rather than `apply` to keep a generic name out of namespace `pemoe`.
 */
template <class T>
MpoApplyPath mpo_apply(ConstMatrixRef<T> x, const Mpo<T>& mpo, MatrixRef<T> y,
                       MpoApplyPath path = MpoApplyPath::automatic) {
  if (path == MpoApplyPath::automatic) path = mpo_apply_cost(mpo, x.rows()).best;
  if (path == MpoApplyPath::contraction)
    mpo_apply_by_contraction(x, mpo, y);
  else
    mpo_apply_by_rebuild(x, mpo, y);
  return path;
}

}  // namespace pemoe

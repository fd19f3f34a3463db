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
#include "pemoe/detail/mpo_chain.hpp"
#include "pemoe/mpo/decompose.hpp"
#include "pemoe/mpo/reconstruct.hpp"

namespace pemoe {

/// How `mpo_apply` computes y = x·Wᵀ.
enum class MpoApplyPath {
  automatic,    ///< the cheaper of the two by `mpo_apply_cost`
  rebuild,      ///< W = reconstruct(cores), then one GEMM
  contraction,  ///< x contracted through the cores one by one, W never formed
};

/// Default `contraction_weight` of `mpo_apply_cost` (see `MpoApplyCost`).
inline constexpr double kMpoContractionWeight = 8.0;

/**
 * @brief The FLOP model `mpo_apply` decides by, for N tokens and an MPO with modes (i_k, j_k), bonds d_k
 * (padded sizes R = Π i_k, C = Π j_k):
 *
 * - rebuild: @f$ F_\mathrm{rb} = F_\mathrm{chain} + 2 N R C @f$, F_chain the cheapest pairwise contraction
 *   of the cores (matrix-chain DP; 2.7 GFLOP for T5's 3072×768 at full rank, 0.29 of the dense GEMM at
 *   N = 2048, independent of N);
 * - contraction (left to right, one GEMM per core): @f$ F_\mathrm{ct} = \sum_k 2 N
 *   \big(\prod_{m<k} i_m\big) \big(\prod_{m>k} j_m\big)\, d_k j_k\, i_k d_{k+1} @f$.
 *
 * The contraction's cost grows with the bond dimensions squared and is linear in N, the rebuild's fixed
 * part is amortised over N: contraction wins for small bonds and few tokens (e.g. 3072×768 at χ = 8 and
 * N = 64 by flops), rebuild at full rank for any N (at χ = d_full the contraction costs hundreds of dense
 * GEMMs).
 * `contraction_weight` multiplies F_ct before the comparison, to account for the contraction's skinny GEMMs
 * (inner dimension d_k·j_k) and its permutations (memory traffic ≈ 4·N·Π i·d·Π j per core, not counted as
 * flops). Its default `kMpoContractionWeight` = 8 is calibrated by bench/bench_mpo.cpp on an AVX-512 core:
 * the contraction ran at 8–50 GFLOP/s where the rebuild + dense GEMM ran at 40–140.
 */
struct MpoApplyCost {
  double rebuild_flops = 0;      ///< F_rb (including the dense GEMM)
  double contraction_flops = 0;  ///< F_ct
  double dense_flops = 0;        ///< 2·N·rows·cols, the dense GEMM alone (the yardstick)
  MpoApplyPath best = MpoApplyPath::rebuild;
};

/// The FLOP model of `mpo_apply` (see `MpoApplyCost`) from the shapes alone: an MPO of `shape` with bond
/// dimensions `bonds` (d_0..d_n) representing a `(rows, cols)` matrix, applied to `n_tokens` rows of x.
inline MpoApplyCost mpo_apply_cost(const MpoShape& shape, const std::vector<Index>& bonds, Index rows,
                                   Index cols, Index n_tokens, double contraction_weight = 1.0) {
  const Index n = shape.n_cores();
  std::vector<detail::CoreView<float>> v;
  for (Index k = 0; k < n; ++k)
    v.push_back(
        {nullptr, bonds[std::size_t(k)], shape.row_modes[k], shape.col_modes[k], bonds[std::size_t(k + 1)]});
  MpoApplyCost c;
  c.dense_flops = 2.0 * double(n_tokens) * double(rows) * double(cols);
  c.rebuild_flops = detail::chain_flops(v, 0, n - 1) + c.dense_flops;
  double ilt = 1;  // Π_{m<k} i_m
  for (Index k = 0; k < n; ++k) {
    double jgt = 1;  // Π_{m>k} j_m
    for (Index m = k + 1; m < n; ++m) jgt *= double(shape.col_modes[m]);
    const auto& g = v[std::size_t(k)];
    c.contraction_flops += 2.0 * double(n_tokens) * ilt * jgt * double(g.d0 * g.j) * double(g.i * g.d1);
    ilt *= double(shape.row_modes[k]);
  }
  c.best = contraction_weight * c.contraction_flops < c.rebuild_flops ? MpoApplyPath::contraction
                                                                      : MpoApplyPath::rebuild;
  return c;
}

/// The FLOP model of `mpo_apply` (see `MpoApplyCost`) for `n_tokens` rows of x.
template <class T>
MpoApplyCost mpo_apply_cost(const Mpo<T>& mpo, Index n_tokens,
                            double contraction_weight = kMpoContractionWeight) {
  return mpo_apply_cost(mpo.shape, mpo.bond_dims(), mpo.rows, mpo.cols, n_tokens, contraction_weight);
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
 * The state before core k is the tensor Z_k[d_k, j_k, b, r], b = (token, i_1..i_{k-1}),
 * r = (j_{k+1}..j_n); one GEMM with the core permuted to K_k[(i_k, d_{k+1}), (d_k, j_k)] gives
 * O[i_k, d_{k+1}, b, r], permuted to Z_{k+1}. Cost: `MpoApplyCost::contraction_flops` plus one permutation
 * of the state per core; memory: the largest state, N·Π_{m≤k} i_m·d_{k+1}·Π_{m>k} j_m.
 */
template <class T>
void mpo_apply_by_contraction(ConstMatrixRef<T> x, const Mpo<T>& mpo, MatrixRef<T> y) {
  detail::check_apply_shapes("mpo_apply_by_contraction", x, mpo, y);
  const Index N = x.rows(), n = mpo.n_cores();
  const auto& rm = mpo.shape.row_modes;
  const auto& cm = mpo.shape.col_modes;
  const Index C = mpo.shape.cols();
  // Z_0[1, j_1, N, J_>1] = x[N, j_1, J_>1] (zero-padded columns).
  Index jr = C / cm[0];  // Π_{m>0} j_m
  std::vector<T> z(std::size_t(cm[0] * N * jr), T(0));
  for (Index t = 0; t < N; ++t)
    for (Index c = 0; c < x.cols(); ++c) z[std::size_t(((c / jr) * N + t) * jr + c % jr)] = x(t, c);
  Index B = N;  // b = (token, i_<k)
  std::vector<T> o, K;
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
          for (Index b = 0; b < d1; ++b)
            K[std::size_t((i * d1 + b) * (d0 * jk) + a * jk + j)] = gd[((a * ik + i) * jk + j) * d1 + b];
    o.resize(std::size_t(ik * d1 * B * R));
    gemm<T>(Op::N, Op::N, T(1), ConstMatrixMap<T>(K.data(), ik * d1, d0 * jk),
            ConstMatrixMap<T>(z.data(), d0 * jk, B * R), T(0), MatrixMap<T>(o.data(), ik * d1, B * R));
    // O[i, d1, b, j', r'] -> Z'[d1, j', b, i, r'] with R = j'·r'.
    const Index jn = k + 1 < n ? cm[k + 1] : 1, rn = R / jn;
    z.resize(o.size());
    for (Index i = 0; i < ik; ++i)
      for (Index e = 0; e < d1; ++e)
        for (Index b = 0; b < B; ++b)
          for (Index jj = 0; jj < jn; ++jj) {
            const T* src = o.data() + ((i * d1 + e) * B + b) * R + jj * rn;
            T* dst = z.data() + (((e * jn + jj) * B + b) * ik + i) * rn;
            std::memcpy(dst, src, std::size_t(rn) * sizeof(T));
          }
    B *= ik;
    jr = rn;
  }
  // Z_n[1, 1, (token, i_1..i_n), 1] -> y (padded rows sliced off).
  const Index Rp = mpo.shape.rows();
  for (Index t = 0; t < N; ++t)
    for (Index r = 0; r < y.cols(); ++r) y(t, r) = z[std::size_t(t * Rp + r)];
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

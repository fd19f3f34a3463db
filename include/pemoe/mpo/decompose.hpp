/// @file decompose.hpp
/// @brief MPO (tensor-train matrix) decomposition of a dense matrix by TT-SVD: truncation policy, gauges,
/// bond spectra and truncation error; `fix_auxiliary_central` (a new central tensor for fixed auxiliary
/// tensors).
///
/// References: Oseledets 2011, "Tensor-train decomposition" (TT-SVD and its error bound); Gao et al.,
/// "Compressing deep neural networks by matrix product operators" (Matrix2MPO); MPOP (Liu et al., ACL
/// 2021, Appendix Thm 1); MPOE (Gao et al., COLING 2022, arXiv 2203.01104).
#pragma once

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>
#include <xtensor/xtensor.hpp>

#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/mpo/detail/mpo_chain.hpp"
#include "pemoe/mpo/shape.hpp"

namespace pemoe {

/**
 * @brief How many singular values every bond keeps (ITensor `MaxDim`/`Cutoff`/`MinDim`, TeNPy `chi_max`/
 * `trunc_cut`/`chi_min`).
 *
 * At each step of the TT-SVD sweep with singular values σ_1 ≥ … ≥ σ_m the kept rank is
 * - r = the smallest r whose discarded weight @f$ \sum_{i>r} \sigma_i^2 / \sum_i \sigma_i^2 \le @f$
 *   `rel_cutoff` (r = m when `rel_cutoff` is 0: exact zeros are kept, so shapes do not depend on the data),
 * - then r ← min(r, `max_bond`) (the reference's `truncate_num`, a uniform cap), then
 *   r ← max(r, min(`min_bond`, m)), and r ≥ 1.
 *
 * The defaults keep everything (the lossless decomposition MPOE uses, `truncate_num = 30000`).
 */
struct TruncationPolicy {
  Index max_bond = std::numeric_limits<Index>::max();  ///< cap on every bond dimension χ
  double rel_cutoff = 0.0;  ///< largest discarded weight Σσ²_discarded/Σσ² per bond
  Index min_bond = 1;       ///< keep at least this many (if available)

  /// Throws `ConfigError` on max_bond < 1, min_bond < 1 or rel_cutoff outside [0, 1).
  void validate(const std::string& site = "TruncationPolicy") const {
    PEMOE_CHECK_CONFIG(max_bond >= 1 && min_bond >= 1, site, ": max_bond and min_bond must be >= 1, got ",
                       max_bond, " and ", min_bond);
    PEMOE_CHECK_CONFIG(rel_cutoff >= 0.0 && rel_cutoff < 1.0, site, ": rel_cutoff must be in [0, 1), got ",
                       rel_cutoff);
  }
};

/**
 * @brief The gauge (the choice among the equivalent MPOs of one matrix) `decompose` returns.
 *
 * All three represent the same matrix; they differ by invertible matrices on the bonds.
 */
enum class MpoGauge {
  /// The reference form (Matrix2MPO §1.3 step 3): at every bond k the block left of it is
  /// (isometry)·Λ_k^{1/2} and the block right of it Λ_k^{1/2}·(co-isometry), Λ_k the Schmidt values in
  /// descending order. Computed as @f$ G_k = \Lambda_k^{-1/2} U_k^\top A_k U_{k+1} \Lambda_{k+1}^{1/2} @f$
  /// with a guarded inverse: @f$ \sigma^{-1/2} @f$ is replaced by 0 when σ ≤ σ_max·max(rows, cols)·ε
  /// (those directions carry no weight, so the matrix is unchanged; the reference adds 1e-6 instead).
  symmetric,
  /// Centred on core c = (n-1)/2: cores < c left-orthonormal, cores > c right-orthonormal, core c carries
  /// the whole norm (no inverse anywhere). Not bit-compatible with `symmetric`.
  mixed_canonical,
  /// The raw TT-SVD output: cores 0..n-2 left-orthonormal, the last core carries the norm (cheapest).
  left_canonical,
};

/**
 * @brief A matrix product operator: n cores `(d_k, i_k, j_k, d_{k+1})` representing a `(rows, cols)`
 * matrix, as produced by `decompose`.
 *
 * - `cores[k]`: row-major `xt::xtensor<T, 4>` of shape `(d_k, i_k, j_k, d_{k+1})`, d_0 = d_n = 1.
 * - `spectra[k-1]` (bonds k = 1..n-1): every singular value of step k-1 of the TT-SVD sweep, descending,
 *   *before* truncation (the first `bond_dims()[k]` are kept). Without truncation at earlier bonds they are
 *   exactly the singular values of the k-th unfolding of W (Π_{m<k} i_m j_m rows); divide by their norm for
 *   the reference's normalised `lamda_set`.
 * - `truncation_error`: @f$ \|W - \mathrm{MPO}\|_F = \sqrt{\sum_k \delta_k^2} @f$ with δ_k the norm discarded
 *   at step k (exact for TT-SVD, whose left cores are orthonormal); it obeys Oseledets' bound
 *   @f$ \le \sqrt{\sum_k \varepsilon_k^2} @f$, ε_k the best rank-d_k error of the k-th unfolding.
 * - `rows`, `cols`: the original matrix size; `shape.rows() ≥ rows` when the matrix was zero-padded.
 */
template <class T>
struct Mpo {
  MpoShape shape;                        ///< mode factorisation (padded sizes)
  std::vector<xt::xtensor<T, 4>> cores;  ///< n cores (d_k, i_k, j_k, d_{k+1})
  std::vector<std::vector<T>> spectra;   ///< n-1 bond spectra (see the class comment)
  double truncation_error = 0.0;         ///< ‖W − MPO‖_F (absolute)
  double norm = 0.0;                     ///< ‖W‖_F of the decomposed matrix
  Index rows = 0;                        ///< original (unpadded) rows
  Index cols = 0;                        ///< original (unpadded) columns
  MpoGauge gauge = MpoGauge::symmetric;  ///< the gauge the cores are in

  /// Number of cores n.
  Index n_cores() const { return static_cast<Index>(cores.size()); }
  /// Index (n-1)/2 of the central core.
  Index central() const { return (n_cores() - 1) / 2; }
  /// Bond dimensions d_0..d_n (n+1 values).
  std::vector<Index> bond_dims() const {
    std::vector<Index> d;
    for (const auto& c : cores) d.push_back(static_cast<Index>(c.shape()[0]));
    d.push_back(cores.empty() ? 1 : static_cast<Index>(cores.back().shape()[3]));
    return d;
  }
  /// Σ_k |core_k|.
  Index num_params() const {
    Index p = 0;
    for (const auto& c : cores) p += static_cast<Index>(c.size());
    return p;
  }
  /// |core_c|, the central tensor MPOE shares between experts.
  Index central_params() const {
    return static_cast<Index>(cores[static_cast<std::size_t>(central())].size());
  }
  /// Parameters of the auxiliary tensors together.
  Index auxiliary_params() const { return num_params() - central_params(); }
  /// truncation_error / ‖W‖_F (0 for the zero matrix).
  double relative_truncation_error() const { return norm > 0 ? truncation_error / norm : 0.0; }
  /// Whether rows or columns were zero-padded.
  bool padded() const { return shape.rows() != rows || shape.cols() != cols; }
};

namespace detail {

using MatD = Eigen::MatrixXd;  // column-major, the layout Eigen's decompositions work in
using RowMatD = Matrix<double>;

/// Thin left SVD: A (rows×cols) = U·diag(s)·Vᵀ with U (rows × m), m = min(rows, cols). QR-preconditioned
/// (an LQ of a wide A, a QR of a tall A, then a divide-and-conquer SVD of the small triangle).
inline void left_svd(const RowMatD& A, MatD& U, Eigen::VectorXd& s) {
  const Index rows = A.rows(), cols = A.cols();
  if (rows <= cols) {
    Eigen::HouseholderQR<MatD> qr(A.transpose());  // Aᵀ = Q R  =>  A = Rᵀ Qᵀ
    const MatD L =
        qr.matrixQR().topRows(rows).template triangularView<Eigen::Upper>().toDenseMatrix().transpose();
    Eigen::BDCSVD<MatD> svd(L, Eigen::ComputeFullU);
    U = svd.matrixU();
    s = svd.singularValues();
  } else {
    Eigen::HouseholderQR<MatD> qr(A);
    const MatD R = qr.matrixQR().topRows(cols).template triangularView<Eigen::Upper>();
    Eigen::BDCSVD<MatD> svd(R, Eigen::ComputeFullU);
    const MatD Q = qr.householderQ() * MatD::Identity(rows, cols);
    U = Q * svd.matrixU();
    s = svd.singularValues();
  }
}

/// Right SVD with a square U: A (rows×cols) = U·diag(s)·Vt, U (rows×rows), s (rows, zero-padded when
/// rows > cols), Vt (rows × cols, zero rows appended when rows > cols; only if `want_v`).
inline void right_svd(const RowMatD& A, MatD& U, Eigen::VectorXd& s, MatD* Vt) {
  const Index rows = A.rows(), cols = A.cols();
  if (rows <= cols) {
    Eigen::HouseholderQR<MatD> qr(A.transpose());  // A = L Qᵀ
    const MatD L =
        qr.matrixQR().topRows(rows).template triangularView<Eigen::Upper>().toDenseMatrix().transpose();
    Eigen::BDCSVD<MatD> svd(L, Vt ? (Eigen::ComputeFullU | Eigen::ComputeFullV) : Eigen::ComputeFullU);
    U = svd.matrixU();
    s = svd.singularValues();
    if (Vt) {
      const MatD Q = qr.householderQ() * MatD::Identity(cols, rows);
      *Vt = (Q * svd.matrixV()).transpose();
    }
  } else {
    Eigen::BDCSVD<MatD> svd(A, Vt ? (Eigen::ComputeFullU | Eigen::ComputeThinV) : Eigen::ComputeFullU);
    U = svd.matrixU();
    s = Eigen::VectorXd::Zero(rows);
    s.head(cols) = svd.singularValues();
    if (Vt) {
      *Vt = MatD::Zero(rows, cols);
      Vt->topRows(cols) = svd.matrixV().transpose();
    }
  }
}

/// Rank kept by `policy` for descending singular values `s`; adds the discarded Σσ² to `discarded2`.
inline Index choose_rank(const Eigen::VectorXd& s, const TruncationPolicy& policy, double& discarded2) {
  const Index m = s.size();
  Index r = m;
  if (policy.rel_cutoff > 0) {
    const double total = s.squaredNorm();
    double gone = 0;
    while (r > 1 && gone + s(r - 1) * s(r - 1) <= policy.rel_cutoff * total) {
      gone += s(r - 1) * s(r - 1);
      --r;
    }
  }
  r = std::min(r, policy.max_bond);
  r = std::max(r, std::min(policy.min_bond, m));
  r = std::max<Index>(r, 1);
  for (Index i = r; i < m; ++i) discarded2 += s(i) * s(i);
  return r;
}

/// Row-major (rows, cols) copy of a column-major matrix block.
inline RowMatD to_row(const MatD& m) {
  return RowMatD(m);
}

template <class T>
xt::xtensor<T, 4> make_core(const double* data, Index d0, Index i, Index j, Index d1) {
  xt::xtensor<T, 4> c =
      xt::xtensor<T, 4>::from_shape({std::size_t(d0), std::size_t(i), std::size_t(j), std::size_t(d1)});
  for (Index e = 0; e < d0 * i * j * d1; ++e) c.data()[e] = static_cast<T>(data[e]);
  return c;
}

}  // namespace detail

/**
 * @brief TT-SVD of a `(rows, cols)` matrix into an MPO of the given shape (Matrix2MPO, Oseledets 2011).
 *
 * Algorithm:
 * 1. Zero-pad W to `(shape.rows(), shape.cols())`, reshape it row-major to (i_1..i_n, j_1..j_n) and
 *    permute to the interleaved order (i_1, j_1, …, i_n, j_n).
 * 2. Sweep k = 0..n-2: SVD of the remainder reshaped to `(d_k·i_k·j_k, ·)` (QR-preconditioned,
 *    divide-and-conquer), keep r = d_{k+1} values by `policy` (truncating *during* the sweep, as TensorLy
 *    and Oseledets do, which gives the error bound; at full rank it equals the reference's
 *    decompose-then-slice), core_k = U_r, remainder = U_rᵀ·remainder. The last remainder is core_{n-1}.
 * 3. Re-gauge (`MpoGauge`): a right-to-left SVD sweep yields, per bond, U_k and the Schmidt values Λ_k.
 *
 * Precision: computed in double for any T (cores are cast to T at the end), so a float matrix is exact to
 * float rounding. Shapes: `W.rows() ≤ shape.rows()`, `W.cols() ≤ shape.cols()` (else `ShapeError`).
 * Complexity: dominated by the central unfoldings, ≈ 4·|W|·d_k flops per step (T5 3072×768 full rank:
 * a few GFLOP, about a second). Memory: a few copies of W in double.
 * @see `reconstruct`, `mpo_apply`, `fix_auxiliary_central`.
 */
template <class T>
Mpo<T> decompose(ConstMatrixRef<T> W, const MpoShape& shape, const TruncationPolicy& policy = {},
                 MpoGauge gauge = MpoGauge::symmetric) {
  shape.validate("decompose");
  policy.validate("decompose");
  PEMOE_CHECK_SHAPE(W.rows() <= shape.rows() && W.cols() <= shape.cols(), "decompose: W is (", W.rows(), ", ",
                    W.cols(), ") but the MPO shape ", shape.to_string(), " holds at most (", shape.rows(),
                    ", ", shape.cols(), ")");
  using detail::MatD;
  using detail::RowMatD;
  const Index n = shape.n_cores();
  Mpo<T> out;
  out.shape = shape;
  out.rows = W.rows();
  out.cols = W.cols();
  out.gauge = gauge;

  std::vector<double> res = detail::interleave_as<double, T>(W, shape, detail::interleave_map(shape));
  {
    double s2 = 0;
    for (double v : res) s2 += v * v;
    out.norm = std::sqrt(s2);
  }

  // ---- 2. left-to-right TT-SVD: A[k] is the left unfolding (d_k·i_k·j_k, d_{k+1}), left-orthonormal.
  std::vector<RowMatD> A(static_cast<std::size_t>(n));
  std::vector<Index> d(static_cast<std::size_t>(n + 1), 1);
  double discarded2 = 0;
  Index cols_total = static_cast<Index>(res.size());
  for (Index k = 0; k + 1 < n; ++k) {
    const Index rk = d[k] * shape.row_modes[k] * shape.col_modes[k];
    const Index ck = cols_total / rk;
    const RowMatD M = Eigen::Map<const RowMatD>(res.data(), rk, ck);
    MatD U;
    Eigen::VectorXd s;
    detail::left_svd(M, U, s);
    out.spectra.emplace_back(s.data(), s.data() + s.size());
    const Index r = detail::choose_rank(s, policy, discarded2);
    A[k] = U.leftCols(r);
    RowMatD next(r, ck);  // U_rᵀ·M
    gemm<double>(Op::T, Op::N, 1.0, A[k], M, 0.0, next);
    res.assign(next.data(), next.data() + next.size());
    d[k + 1] = r;
    cols_total = r * ck;
  }
  A[n - 1] = Eigen::Map<const RowMatD>(res.data(), static_cast<Index>(res.size()), 1);
  out.truncation_error = std::sqrt(discarded2);

  // ---- 3. gauge
  std::vector<RowMatD> G(static_cast<std::size_t>(n));  // final cores, left unfolding (d_k·i·j, d_{k+1})
  auto free_k = [&](Index k) { return shape.row_modes[k] * shape.col_modes[k]; };
  if (gauge == MpoGauge::left_canonical) {
    G = A;
  } else {
    const Index c = shape.central();
    const Index stop = gauge == MpoGauge::symmetric ? 1 : c + 1;
    std::vector<MatD> Uk(static_cast<std::size_t>(n + 1));
    std::vector<Eigen::VectorXd> Sk(static_cast<std::size_t>(n + 1));
    RowMatD cur = A[n - 1];  // left unfolding of the current right-end core
    for (Index k = n - 1; k >= stop; --k) {
      const RowMatD right = Eigen::Map<const RowMatD>(cur.data(), d[k], free_k(k) * d[k + 1]);
      MatD Vt;
      const bool want_v = gauge == MpoGauge::mixed_canonical;
      detail::right_svd(right, Uk[k], Sk[k], want_v ? &Vt : nullptr);
      if (want_v) G[k] = Eigen::Map<const RowMatD>(RowMatD(Vt).data(), d[k] * free_k(k), d[k + 1]);
      // cur_{k-1} = A[k-1]·U_k·diag(S_k)
      RowMatD US = Uk[k] * Sk[k].asDiagonal();
      cur.resize(A[k - 1].rows(), d[k]);
      gemm<double>(Op::N, Op::N, 1.0, A[k - 1], US, 0.0, cur);
    }
    if (gauge == MpoGauge::mixed_canonical) {
      for (Index k = 0; k < c; ++k) G[k] = A[k];
      G[c] = cur;
    } else {
      Uk[0] = MatD::Ones(1, 1);
      Sk[0] = Eigen::VectorXd::Ones(1);
      Uk[n] = MatD::Ones(1, 1);
      Sk[n] = Eigen::VectorXd::Ones(1);
      auto sqrt_and_inv = [](const Eigen::VectorXd& s, Index other_dim, Eigen::VectorXd& sq,
                             Eigen::VectorXd& isq) {
        const double tol = (s.size() ? s.maxCoeff() : 0.0) * double(std::max<Index>(s.size(), other_dim)) *
                           std::numeric_limits<double>::epsilon();
        sq.resize(s.size());
        isq.resize(s.size());
        for (Index i = 0; i < s.size(); ++i) {
          sq(i) = std::sqrt(std::max(s(i), 0.0));
          isq(i) = s(i) > tol ? 1.0 / sq(i) : 0.0;
        }
      };
      for (Index k = 0; k < n; ++k) {
        Eigen::VectorXd sq_l, isq_l, sq_r, isq_r;
        sqrt_and_inv(Sk[k], free_k(k) * d[k + 1], sq_l, isq_l);
        sqrt_and_inv(Sk[k + 1], free_k(k) * d[k], sq_r, isq_r);
        // X = U_kᵀ · A_k (right unfolding (d_k, i·j·d_{k+1}))
        const Eigen::Map<const RowMatD> Ar(A[k].data(), d[k], free_k(k) * d[k + 1]);
        RowMatD X(d[k], free_k(k) * d[k + 1]);
        gemm<double>(Op::T, Op::N, 1.0, RowMatD(Uk[k]), Ar, 0.0, X);
        for (Index a = 0; a < d[k]; ++a) X.row(a) *= isq_l(a);
        // Y = X (left unfolding) · U_{k+1} · diag(√S_{k+1})
        const Eigen::Map<const RowMatD> Xl(X.data(), d[k] * free_k(k), d[k + 1]);
        RowMatD Y(d[k] * free_k(k), d[k + 1]);
        gemm<double>(Op::N, Op::N, 1.0, Xl, RowMatD(Uk[k + 1] * sq_r.asDiagonal()), 0.0, Y);
        G[k] = std::move(Y);
      }
    }
  }
  out.cores.reserve(static_cast<std::size_t>(n));
  for (Index k = 0; k < n; ++k)
    out.cores.push_back(
        detail::make_core<T>(G[k].data(), d[k], shape.row_modes[k], shape.col_modes[k], d[k + 1]));
  return out;
}

/**
 * @brief The central tensor C' that best represents a new matrix with the auxiliary tensors of `mpo` held
 * fixed (MPOE's `FixAuxilaryTensorCalculateCentralTensor`, generalised to any n and to truncated bonds).
 *
 * With L = contraction of the cores left of the centre as a `(Π_{m<c} i_m j_m, d_c)` matrix and R the cores
 * right of it as `(d_{c+1}, Π_{m>c} i_m j_m)`, and M the interleaved W_new as `(Π_{m<c}, i_c j_c, Π_{m>c})`:
 * @f$ C'[:, ij, :] = L^{+} M[:, ij, :] R^{+} @f$ (pseudo-inverses; the reference's L⁻¹ M R⁻¹ when L and R are
 * square and invertible, as at full rank: 192×192 and 384×384 for T5-base). This is the least-squares
 * optimum of ‖W_new − MPO(A, C', A)‖_F. Returns a core of shape `(d_c, i_c, j_c, d_{c+1})`.
 * W_new must have `mpo.rows × mpo.cols` (it is zero-padded like the original). Computed in double.
 */
template <class T>
xt::xtensor<T, 4> fix_auxiliary_central(ConstMatrixRef<T> W_new, const Mpo<T>& mpo) {
  PEMOE_CHECK_SHAPE(W_new.rows() == mpo.rows && W_new.cols() == mpo.cols, "fix_auxiliary_central: W_new is (",
                    W_new.rows(), ", ", W_new.cols(), "), the MPO represents (", mpo.rows, ", ", mpo.cols,
                    ")");
  using detail::MatD;
  using detail::RowMatD;
  const Index n = mpo.n_cores(), c = mpo.central();
  std::vector<xt::xtensor<double, 4>> cd;
  for (const auto& core : mpo.cores) cd.push_back(xt::cast<double>(core));
  const std::vector<Index> d = mpo.bond_dims();
  const RowMatD L = detail::chain_contract(cd, 0, c - 1);  // (F_<c, d_c)
  const RowMatD Rl = detail::chain_contract(cd, c + 1, n - 1);
  const Index d_r = d[c + 1];
  const Eigen::Map<const RowMatD> R(Rl.data(), d_r, Rl.size() / d_r);  // (d_{c+1}, F_>c)
  const Index f_l = L.rows(), f_c = mpo.shape.row_modes[c] * mpo.shape.col_modes[c], f_r = R.cols();
  const std::vector<double> t =
      detail::interleave_as<double, T>(W_new, mpo.shape, detail::interleave_map(mpo.shape));
  const Eigen::Map<const RowMatD> M(t.data(), f_l, f_c * f_r);
  const RowMatD Lp = Eigen::CompleteOrthogonalDecomposition<MatD>(MatD(L)).pseudoInverse();  // (d_c, F_<c)
  const RowMatD Rp =
      Eigen::CompleteOrthogonalDecomposition<MatD>(MatD(R)).pseudoInverse();  // (F_>c, d_{c+1})
  RowMatD X(d[c], f_c * f_r);
  gemm<double>(Op::N, Op::N, 1.0, Lp, M, 0.0, X);
  const Eigen::Map<const RowMatD> Xl(X.data(), d[c] * f_c, f_r);
  RowMatD Y(d[c] * f_c, d_r);
  gemm<double>(Op::N, Op::N, 1.0, Xl, Rp, 0.0, Y);
  return detail::make_core<T>(Y.data(), d[c], mpo.shape.row_modes[c], mpo.shape.col_modes[c], d_r);
}

}  // namespace pemoe

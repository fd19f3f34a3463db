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
#include <type_traits>
#include <vector>
#include <xtensor/xtensor.hpp>

#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/mpo/detail/mpo_chain.hpp"
#include "pemoe/mpo/detail/svd_step.hpp"
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

/// Whether this build's `decompose` factors with LAPACK (`PEMOE_WITH_LAPACK`, the CMake target
/// `pemoe::lapack`) rather than with Eigen (the header-only default). Both give the same MPO to rounding.
constexpr bool decompose_uses_lapack() {
#ifdef PEMOE_WITH_LAPACK
  return true;
#else
  return false;
#endif
}

namespace detail {

/// Right SVD with a square U: A (rows×cols) = U·diag(s)·Vt, U (rows×rows), s (rows, zero-padded when
/// rows > cols), Vt (rows × cols, zero rows appended when rows > cols; only if `want_v`). A template
/// (`RowMat` = `RowMatD`, `Mat` = `MatD`) so that including this header does not instantiate BDCSVD (see
/// `square_svd`).
template <class RowMat, class Mat>
void right_svd(const RowMat& A, Mat& U, Eigen::VectorXd& s, std::common_type_t<Mat>* Vt) {  // Vt: not deduced
  const Index rows = A.rows(), cols = A.cols();
  if (rows <= cols) {
    Eigen::HouseholderQR<Mat> qr(A.transpose());  // A = L Qᵀ
    const Mat L =
        qr.matrixQR().topRows(rows).template triangularView<Eigen::Upper>().toDenseMatrix().transpose();
    Eigen::BDCSVD<Mat> svd(L, Vt ? (Eigen::ComputeFullU | Eigen::ComputeFullV) : Eigen::ComputeFullU);
    U = svd.matrixU();
    s = svd.singularValues();
    if (Vt) {
      const Mat Q = qr.householderQ() * Mat::Identity(cols, rows);
      *Vt = (Q * svd.matrixV()).transpose();
    }
  } else {
    Eigen::BDCSVD<Mat> svd(A, Vt ? (Eigen::ComputeFullU | Eigen::ComputeThinV) : Eigen::ComputeFullU);
    U = svd.matrixU();
    s = Eigen::VectorXd::Zero(rows);
    s.head(cols) = svd.singularValues();
    if (Vt) {
      *Vt = Mat::Zero(rows, cols);
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

/// The cheapest split core of the two-sided sweep: the last core c with Π_{m<c} i_m j_m ≤ Π_{m≥c} i_m j_m.
/// Every left step before it factors a wide matrix and every right step after it a tall one, so no step
/// forms an orthonormal factor of its long side.
inline Index cheapest_split(const MpoShape& shape) {
  const Index n = shape.n_cores();
  const Index total = shape.rows() * shape.cols();
  Index c = 0, left = 1;
  for (Index k = 1; k < n; ++k) {
    left *= shape.row_modes[k - 1] * shape.col_modes[k - 1];
    if (left <= total / left) c = k;
  }
  return c;
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
 * 2. Sweep k = 0..n-2: SVD of the remainder reshaped to `(d_k·i_k·j_k, ·)` (a Householder QR of the long
 *    side, then a divide-and-conquer SVD of the small triangle), keep r = d_{k+1} values by `policy`
 *    (truncating *during* the sweep, as TensorLy and Oseledets do, which gives the error bound; at full
 *    rank it equals the reference's decompose-then-slice), core_k = U_r, remainder = U_rᵀ·remainder. The
 *    last remainder is core_{n-1}.
 * 3. Re-gauge (`MpoGauge`): the remainder after step k is Σ_r·V_rᵀ, so every bond k with no truncation
 *    at a later bond already has its Schmidt basis (U = I, Λ_k = the kept spectrum) and the symmetric
 *    gauge is a diagonal scaling there; a right-to-left SVD sweep yields U_k and Λ_k at the other bonds.
 *
 * At full rank (`policy` keeps every value, which depends on the shape only) the symmetric and
 * mixed-canonical gauges use a two-sided sweep instead: left steps up to a split core c, right steps
 * (SVD of the remainder reshaped to `(·, i_k·j_k·d_{k+1})`, core_k = V_rᵀ, remainder = remainder·V_r) from
 * the last core down to c+1. That is the mixed-canonical form centred on c with every bond's Schmidt
 * values, and no step has to form an orthonormal factor of its long side (c = `central()` for
 * mixed_canonical, else the core where the unfoldings turn from wide to tall). The result is the same
 * MPO (to rounding and the signs of singular vectors); the spectra are the singular values of the
 * unfoldings either way.
 *
 * Precision: computed in double for any T (cores are cast to T at the end), so a float matrix is exact to
 * float rounding. Shapes: `W.rows() ≤ shape.rows()`, `W.cols() ≤ shape.cols()` (else `ShapeError`).
 * Complexity: dominated by the central unfoldings, one Householder QR and one GEMM each, ≈ 4·|W|·d_k
 * flops (T5 3072×768 at full rank: ≈ 5.4 GFLOP, about 0.2 s on one core with -march=native). A step whose
 * U (or V) is square leaves its remainder unrotated when another step on its side follows and rotates
 * that step's core instead (a small product in place of a pass over W). With `PEMOE_WITH_LAPACK` (CMake
 * target `pemoe::lapack`) the SVDs of the small triangles run in LAPACK's dgesdd, else in Eigen's BDCSVD.
 * Memory: a few copies of W in double.
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

  const std::vector<double> tensor =
      detail::interleave_as<double, T>(W, shape, detail::interleave_map(shape));
  {
    double s2 = 0;
    for (double v : tensor) s2 += v * v;
    out.norm = std::sqrt(s2);
  }
  auto free_k = [&](Index k) { return shape.row_modes[k] * shape.col_modes[k]; };

  // ---- 2. the sweep. G[k] holds core k in row-major order (its left unfolding (d_k·i·j, d_{k+1})).
  const std::vector<Index> full = shape.bond_dims();
  const bool keeps_all =
      policy.rel_cutoff == 0.0 && policy.max_bond >= *std::max_element(full.begin(), full.end());
  Index c = n - 1;  // cores < c come from left steps, cores > c from right steps, core c is the remainder
  if (keeps_all && gauge == MpoGauge::mixed_canonical) c = shape.central();
  if (keeps_all && gauge == MpoGauge::symmetric) c = detail::cheapest_split(shape);
  std::vector<RowMatD> G(static_cast<std::size_t>(n));
  std::vector<Index> d(static_cast<std::size_t>(n + 1), 1);
  out.spectra.resize(static_cast<std::size_t>(n - 1));
  std::vector<Eigen::VectorXd> spectra(static_cast<std::size_t>(n - 1));  // in double (out.spectra: T)
  double discarded2 = 0;
  Index last_truncated = 0;  // the last bond whose rank was cut (0: none)
  auto rank = [&](const Eigen::VectorXd& s) { return detail::choose_rank(s, policy, discarded2); };
  detail::SvdStep step;
  RowMatD rem;  // the remainder, row-major; `x` points at it (or at the tensor before the first step)
  const double* x = tensor.data();
  Index size = static_cast<Index>(tensor.size());
  // A left (right) step whose U (V) is square and orthogonal leaves its remainder unrotated when another step
  // on the same side follows (`turn` holds U or Vᵀ): that step's SVD of the unrotated matrix has the same
  // values, and its core is rotated into the true basis by a small product (T5: saves two passes over W).
  RowMatD turn;
  // After step k: its core becomes G[k] (through `rotate` when a deferred step left `turn`; a right core V_rᵀ
  // (d_k, i·j·d_{k+1}) is the same buffer as the left unfolding); then either the step deferred (its U or Vᵀ
  // becomes `turn`, x stays) or its remainder becomes x.
  auto finish = [&](Index k, auto&& rotate) {
    const bool deferred = step.next.size() == 0;
    if (turn.size())
      rotate();
    else if (deferred)
      G[k] = step.core;
    else
      G[k] = std::move(step.core);
    if (deferred) {
      turn = std::move(step.core);
      return;
    }
    turn.resize(0, 0);
    rem = std::move(step.next);
    x = rem.data();
    size = rem.size();
  };
  for (Index k = 0; k < c; ++k) {
    const Index rows = d[k] * free_k(k);
    detail::left_step(x, rows, size / rows, rank, k + 1 < c, step);
    spectra[static_cast<std::size_t>(k)] = step.s;
    d[k + 1] = step.r;
    if (step.r < step.s.size()) last_truncated = k + 1;
    finish(k, [&] {  // core = (turnᵀ ⊗ I)·U: turnᵀ times the (d_k, i·j·r) view
      G[k].resize(rows, step.r);
      gemm<double>(Op::T, Op::N, 1.0, turn,
                   Eigen::Map<const RowMatD>(step.core.data(), d[k], free_k(k) * step.r), 0.0,
                   Eigen::Map<RowMatD>(G[k].data(), d[k], free_k(k) * step.r));
    });
  }
  turn.resize(0, 0);
  for (Index k = n - 1; k > c; --k) {
    const Index cols = free_k(k) * d[k + 1];
    detail::right_step(x, size / cols, cols, rank, k - 1 > c, step);
    spectra[static_cast<std::size_t>(k - 1)] = step.s;
    d[k] = step.r;
    finish(k, [&] {  // core = Vᵀ·(I ⊗ turnᵀ): the (r·i·j, d_{k+1}) view times turnᵀ
      G[k].resize(step.r, cols);
      gemm<double>(Op::N, Op::T, 1.0,
                   Eigen::Map<const RowMatD>(step.core.data(), step.r * free_k(k), d[k + 1]), turn, 0.0,
                   Eigen::Map<RowMatD>(G[k].data(), step.r * free_k(k), d[k + 1]));
    });
  }
  if (x == tensor.data())
    G[c] = Eigen::Map<const RowMatD>(x, size, 1);  // n = 1: no step ran
  else
    G[c] = std::move(rem);
  out.truncation_error = std::sqrt(discarded2);
  for (std::size_t b = 0; b < spectra.size(); ++b)
    out.spectra[b].assign(spectra[b].data(), spectra[b].data() + spectra[b].size());
  auto left_of = [&](Index k) { return Eigen::Map<RowMatD>(G[k].data(), d[k] * free_k(k), d[k + 1]); };
  auto right_of = [&](Index k) { return Eigen::Map<RowMatD>(G[k].data(), d[k], free_k(k) * d[k + 1]); };

  // ---- 3. gauge
  if (gauge == MpoGauge::mixed_canonical && c != shape.central()) {
    // Truncated: a right-to-left SVD sweep of the left-canonical MPO down to the centre.
    const Index centre = shape.central();
    MatD Uk;
    Eigen::VectorXd Sk;
    RowMatD cur = left_of(n - 1);
    for (Index k = n - 1; k > centre; --k) {
      const RowMatD right = Eigen::Map<const RowMatD>(cur.data(), d[k], free_k(k) * d[k + 1]);
      MatD Vt;
      detail::right_svd(right, Uk, Sk, &Vt);
      G[k] = Vt;
      // cur_{k-1} = A[k-1]·U_k·diag(S_k)
      const RowMatD US = Uk * Sk.asDiagonal();
      cur.resize(d[k - 1] * free_k(k - 1), d[k]);
      gemm<double>(Op::N, Op::N, 1.0, left_of(k - 1), US, 0.0, cur);
    }
    G[centre] = std::move(cur);
  } else if (gauge == MpoGauge::symmetric) {
    // Schmidt bases U_k (empty: the identity) and values Λ_k of every bond; bonds ≥ last_truncated are
    // exact from the sweep, the others need a right-to-left SVD sweep.
    std::vector<MatD> Uk(static_cast<std::size_t>(n + 1));
    std::vector<Eigen::VectorXd> Sk(static_cast<std::size_t>(n + 1), Eigen::VectorXd::Ones(1));
    for (Index k = std::max<Index>(last_truncated, 1); k < n; ++k)
      Sk[k] = spectra[static_cast<std::size_t>(k - 1)].head(d[k]);
    if (last_truncated >= 2) {  // c = n - 1 here: truncation implies the one-sided sweep
      const Index t = last_truncated;
      RowMatD cur = left_of(t - 1) * Sk[t].asDiagonal();  // A[t-1]·U_t·diag(S_t), U_t = I
      for (Index k = t - 1; k >= 1; --k) {
        const RowMatD right = Eigen::Map<const RowMatD>(cur.data(), d[k], free_k(k) * d[k + 1]);
        detail::right_svd(right, Uk[k], Sk[k], nullptr);
        const RowMatD US = Uk[k] * Sk[k].asDiagonal();
        cur.resize(d[k - 1] * free_k(k - 1), d[k]);
        gemm<double>(Op::N, Op::N, 1.0, left_of(k - 1), US, 0.0, cur);
      }
    }
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
    // G_k = diag(l_k)·U_kᵀ·X_k·U_{k+1}·diag(r_k): X_k = A_k, l = Λ_k^{-1/2}, r = Λ_{k+1}^{1/2} left of the
    // split core c; X_c = C, l = Λ_c^{-1/2}, r = Λ_{c+1}^{-1/2}; X_k = B_k, l = Λ_k^{1/2}, r = Λ_{k+1}^{-1/2}
    // right of it (the guarded inverse as documented on `MpoGauge::symmetric`).
    for (Index k = 0; k < n; ++k) {
      Eigen::VectorXd sq_l, isq_l, sq_r, isq_r;
      sqrt_and_inv(Sk[k], free_k(k) * d[k + 1], sq_l, isq_l);
      sqrt_and_inv(Sk[k + 1], free_k(k) * d[k], sq_r, isq_r);
      const Eigen::VectorXd& l = k <= c ? isq_l : sq_l;
      const Eigen::VectorXd& r = k < c ? sq_r : isq_r;
      if (Uk[k].size()) {
        RowMatD X(d[k], free_k(k) * d[k + 1]);
        gemm<double>(Op::T, Op::N, 1.0, RowMatD(Uk[k]), right_of(k), 0.0, X);
        G[k] = std::move(X);
      }
      right_of(k).array().colwise() *= l.array();
      if (Uk[k + 1].size()) {
        RowMatD Y(d[k] * free_k(k), d[k + 1]);
        gemm<double>(Op::N, Op::N, 1.0, left_of(k), RowMatD(Uk[k + 1]), 0.0, Y);
        G[k] = std::move(Y);
      }
      left_of(k).array().rowwise() *= r.transpose().array();
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

#ifdef PEMOE_PREBUILT_DECOMPOSE
// pemoe's own binaries (tests, tools, examples, benches) compile these two instantiations once, in a static
// library (cmake/prebuilt/decompose.cpp), and every other translation unit skips them: GCC takes about 45 s
// for them at -O1, as long as for the rest of a tool that trains GPT-2. Users of the headers need nothing.
extern template Mpo<float> decompose<float>(ConstMatrixRef<float>, const MpoShape&, const TruncationPolicy&,
                                            MpoGauge);
extern template Mpo<double> decompose<double>(ConstMatrixRef<double>, const MpoShape&,
                                              const TruncationPolicy&, MpoGauge);
#endif

}  // namespace pemoe

/// @file svd_step.hpp
/// @brief Private helpers of `decompose`: one step of the TT-SVD sweep on a row-major matrix, from the left
/// (the isometry is U) or from the right (the isometry is Vᵀ). Not part of the public API.
///
/// A step works on the row-major buffer the sweep keeps (a row-major (m, n) matrix is the column-major
/// (n, m) matrix of its transpose), factors the long side away with one Householder QR (Eigen's blocked
/// one), takes the SVD of the small triangle, and forms only what the sweep needs: the kept singular vectors
/// of the short side and the remainder. No Gram matrix is formed (that would square the condition number),
/// so every singular value and vector is backward stable to double rounding.
///
/// The large products go through `pemoe::gemm` and the QR is Eigen's blocked Householder QR. The small SVD is
/// Eigen's BDCSVD, or LAPACK's dgesdd with `PEMOE_WITH_LAPACK` (CMake target `pemoe::lapack`,
/// detail/lapack_svd.hpp). Measured on one AMD EPYC (Zen 5) core with -march=native against Debian's
/// OpenBLAS 0.3.21 (Haswell kernels on this CPU): QR of a 6144×384 matrix Eigen 41 ms, dgeqrf 54, dgelqf 110;
/// its product with a 384×384 matrix Eigen 26 ms, dgemm 33; SVD of the 384×384 triangle Eigen 30 ms, dgesdd
/// 24. So only the SVD goes to LAPACK.
#pragma once

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>

#include "pemoe/core/gemm.hpp"
#include "pemoe/core/tensor.hpp"
#ifdef PEMOE_WITH_LAPACK
#include "pemoe/mpo/detail/lapack_svd.hpp"
#endif

namespace pemoe::detail {

using MatD = Eigen::MatrixXd;  // column-major, the layout Eigen's decompositions work in
using RowMatD = Matrix<double>;

/// One TT-SVD step on a row-major `(rows, cols)` matrix X = U·diag(s)·Vᵀ.
struct SvdStep {
  Eigen::VectorXd s;  ///< all min(rows, cols) singular values, descending
  Index r = 0;        ///< how many are kept (the rank function's choice)
  RowMatD core;       ///< left step: U_r `(rows, r)`; right step: V_rᵀ `(r, cols)` (row-major)
  RowMatD next;       ///< left step: U_rᵀ·X `(r, cols)`; right step: X·V_r `(rows, r)` (row-major)
};

/// The upper triangle R `(n, n)` of an in-place Householder QR of an `(m, n)` matrix, m ≥ n.
template <class QR>
MatD qr_triangle(const QR& qr, Index n) {
  return qr.matrixQR().topRows(n).template triangularView<Eigen::Upper>();
}

/// SVD of a small square matrix t = U·diag(s)·Vᵀ: Eigen's divide and conquer (BDCSVD), or LAPACK's (dgesdd)
/// with `PEMOE_WITH_LAPACK`. Fills U and V when asked (LAPACK fills both). A template (`Mat` = `MatD`) only
/// so that a translation unit which includes the MPO headers without decomposing does not instantiate BDCSVD
/// (about 13 s of compile time each).
template <class Mat>
void square_svd(const Mat& t, bool want_u, bool want_v, Eigen::VectorXd& s, Mat& U, Mat& V) {
#ifdef PEMOE_WITH_LAPACK
  (void)want_u;
  (void)want_v;
  lapack_square_svd(t, s, U, V);
#else
  const unsigned flags =
      (want_u ? unsigned(Eigen::ComputeThinU) : 0u) | (want_v ? unsigned(Eigen::ComputeThinV) : 0u);
  const Eigen::BDCSVD<Mat> svd(t, flags);
  s = svd.singularValues();
  if (want_u) U = svd.matrixU();
  if (want_v) V = svd.matrixV();
#endif
}

/// Left step: s, r = `rank(s)` (1 ≤ r ≤ s.size()), core = U_r `(rows, r)`, next = U_rᵀ·X `(r, cols)`.
/// With `defer` and a square U (r = rows) next is left empty: the caller keeps X and folds U into the next
/// core (U is orthogonal, so the next unfolding of X has the same spectrum and U-rotated singular vectors).
///
/// - rows ≤ cols: the column-major view of X is Xᵀ = Q·R, so X = Rᵀ·Qᵀ and U is the V of the small R; the
///   remainder U_rᵀ·X is one GEMM.
/// - rows > cols: X = Q·R (after a transposing copy), R = U_R·Σ·Wᵀ, U_r = Q·[U_R,r; 0] (the reflectors
///   applied to the small factor; never the thin Q), remainder U_R,rᵀ·R (small).
template <class RankFn>
void left_step(const double* x, Index rows, Index cols, RankFn&& rank, bool defer, SvdStep& out) {
  const Eigen::Map<const RowMatD> X(x, rows, cols);
  MatD U, V;
  if (rows <= cols) {
    const Eigen::HouseholderQR<MatD> qr(Eigen::Map<const MatD>(x, cols, rows));
    square_svd(qr_triangle(qr, rows), false, true, out.s, U, V);
    out.r = rank(out.s);
    out.core = V.leftCols(out.r);
    if (defer && out.r == rows) {
      out.next.resize(0, 0);
      return;
    }
    out.next.resize(out.r, cols);
    gemm<double>(Op::T, Op::N, 1.0, out.core, X, 0.0, out.next);
  } else {
    MatD Xc = X;
    const Eigen::HouseholderQR<Eigen::Ref<MatD>> qr(Xc);
    const MatD R = qr_triangle(qr, cols);
    square_svd(R, true, false, out.s, U, V);
    out.r = rank(out.s);
    out.next = U.leftCols(out.r).transpose() * R;
    MatD Uq = MatD::Zero(rows, out.r);
    Uq.topRows(cols) = U.leftCols(out.r);
    Uq.applyOnTheLeft(qr.householderQ());
    out.core = Uq;
  }
}

/// Right step (the left step of Xᵀ): s, r = `rank(s)`, core = V_rᵀ `(r, cols)`, next = X·V_r `(rows, r)`.
/// `defer` as for `left_step` (next left empty when V is square, r = cols).
///
/// - rows ≥ cols: X = Q·R (after a transposing copy), V = the V of the small R; the remainder X·V_r is one
///   GEMM.
/// - rows < cols: Xᵀ = Q·R on the column-major view, X = L·Qᵀ with L = Rᵀ; R = U_R·Σ·V_Rᵀ gives V = Q·U_R
///   (V_r = Q·[U_R,r; 0], the reflectors applied to the small factor) and remainder X·V_r = V_R,r·Σ_r.
template <class RankFn>
void right_step(const double* x, Index rows, Index cols, RankFn&& rank, bool defer, SvdStep& out) {
  const Eigen::Map<const RowMatD> X(x, rows, cols);
  MatD U, V;
  if (rows >= cols) {
    MatD Xc = X;
    const Eigen::HouseholderQR<Eigen::Ref<MatD>> qr(Xc);
    square_svd(qr_triangle(qr, cols), false, true, out.s, U, V);
    out.r = rank(out.s);
    out.core = V.leftCols(out.r).transpose();
    if (defer && out.r == cols) {
      out.next.resize(0, 0);
      return;
    }
    out.next.resize(rows, out.r);
    gemm<double>(Op::N, Op::T, 1.0, X, out.core, 0.0, out.next);
  } else {
    const Eigen::HouseholderQR<MatD> qr(Eigen::Map<const MatD>(x, cols, rows));
    square_svd(qr_triangle(qr, rows), true, true, out.s, U, V);
    out.r = rank(out.s);
    out.next = V.leftCols(out.r) * out.s.head(out.r).asDiagonal();
    MatD Vq = MatD::Zero(cols, out.r);
    Vq.topRows(rows) = U.leftCols(out.r);
    Vq.applyOnTheLeft(qr.householderQ());
    out.core = Eigen::Map<const RowMatD>(Vq.data(), out.r, cols);  // column-major V_r is row-major V_rᵀ
  }
}

}  // namespace pemoe::detail

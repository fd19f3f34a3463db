/// @file lapack_svd.hpp
/// @brief Private helper of `decompose` (detail/svd_step.hpp) with `PEMOE_WITH_LAPACK`: the SVD of the small
/// triangle of a TT-SVD step by LAPACK's divide and conquer (LAPACKE_dgesdd_work). Compiled only with
/// `PEMOE_WITH_LAPACK` (CMake target `pemoe::lapack`, which links LAPACKE and a LAPACK, e.g. OpenBLAS's);
/// empty otherwise. Not part of the public API.
///
/// Measured on one AMD EPYC core (OpenBLAS 0.3.21): dgesdd of a 384×384 triangle 22-24 ms, Eigen's BDCSVD
/// 28-30 ms with -march=native and 35-39 ms with AVX2 only.
#pragma once

#ifdef PEMOE_WITH_LAPACK

#include <lapacke.h>

#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe::detail {

/// SVD of a square matrix t = U·diag(s)·Vᵀ (thin factors, descending s) by dgesdd; throws `NumericError`
/// when LAPACK reports failure.
inline void lapack_square_svd(const Eigen::MatrixXd& t, Eigen::VectorXd& s, Eigen::MatrixXd& U,
                              Eigen::MatrixXd& V) {
  const auto n = static_cast<lapack_int>(t.rows());
  Eigen::MatrixXd a = t;  // dgesdd overwrites its input
  Eigen::MatrixXd vt(n, n);
  s.resize(n);
  U.resize(n, n);
  std::vector<lapack_int> iwork(static_cast<std::size_t>(8) * static_cast<std::size_t>(std::max(n, 1)));
  double query = 0;
  lapack_int info =
      LAPACKE_dgesdd_work(LAPACK_COL_MAJOR, 'S', n, n, a.data(), std::max(n, 1), s.data(), U.data(),
                          std::max(n, 1), vt.data(), std::max(n, 1), &query, -1, iwork.data());
  std::vector<double> work(static_cast<std::size_t>(std::max(1.0, query)));
  if (info == 0)
    info = LAPACKE_dgesdd_work(LAPACK_COL_MAJOR, 'S', n, n, a.data(), std::max(n, 1), s.data(), U.data(),
                               std::max(n, 1), vt.data(), std::max(n, 1), work.data(),
                               static_cast<lapack_int>(work.size()), iwork.data());
  PEMOE_CHECK_AS(::pemoe::NumericError, info == 0, "decompose: LAPACK dgesdd failed (info ", info, ") on a ",
                 n, "x", n, " matrix");
  V = vt.transpose();
}

}  // namespace pemoe::detail

#endif  // PEMOE_WITH_LAPACK

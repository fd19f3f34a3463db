/// @file reconstruct.hpp
/// @brief `reconstruct`: the dense matrix an MPO represents (the reference's `mpo2matrix`).
#pragma once

#include <vector>
#include <xtensor/xtensor.hpp>

#include "pemoe/core/error.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/mpo/decompose.hpp"
#include "pemoe/mpo/detail/mpo_chain.hpp"
#include "pemoe/mpo/shape.hpp"

namespace pemoe {

/**
 * @brief Rebuilds the `(rows, cols)` matrix from MPO cores: contracts the cores over their bonds, permutes
 * (i_1, j_1, …, i_n, j_n) back to (i_1..i_n, j_1..j_n), and slices off zero-padding.
 *
 * @f$ W[(i_1..i_n),(j_1..j_n)] = \sum_{d_1..d_{n-1}} \prod_k G_k[d_k, i_k, j_k, d_{k+1}] @f$.
 * The cores are contracted pairwise in the cheapest order (matrix-chain dynamic programming; for T5's
 * 3072×768 at full rank 2.7 GFLOP: any order must absorb the 192×32×384 central core from both sides), every
 * product through `pemoe::gemm`. `cores[k]` must have shape `(d_k, i_k, j_k, d_{k+1})` matching `shape` (else
 * `ShapeError`).
 * `rows`, `cols`: the size to return (≤ the shape's; the rest is padding); -1 for the full shape.
 */
template <class T>
Matrix<T> reconstruct(const std::vector<xt::xtensor<T, 4>>& cores, const MpoShape& shape, Index rows = -1,
                      Index cols = -1) {
  shape.validate("reconstruct");
  const Index n = shape.n_cores();
  PEMOE_CHECK_SHAPE(static_cast<Index>(cores.size()) == n, "reconstruct: ", cores.size(),
                    " cores for an MPO shape with ", n, " modes");
  for (Index k = 0; k < n; ++k) {
    const auto& s = cores[static_cast<std::size_t>(k)].shape();
    const Index prev = k == 0 ? 1 : static_cast<Index>(cores[static_cast<std::size_t>(k - 1)].shape()[3]);
    const bool ok = static_cast<Index>(s[0]) == prev && static_cast<Index>(s[1]) == shape.row_modes[k] &&
                    static_cast<Index>(s[2]) == shape.col_modes[k] && (k + 1 < n || s[3] == 1);
    PEMOE_CHECK_SHAPE(ok, "reconstruct: core ", k, " has shape (", s[0], ", ", s[1], ", ", s[2], ", ", s[3],
                      "), expected (", prev, ", ", shape.row_modes[k], ", ", shape.col_modes[k], ", ",
                      k + 1 < n ? std::string("d") : std::string("1"), ")");
  }
  if (rows < 0) rows = shape.rows();
  if (cols < 0) cols = shape.cols();
  PEMOE_CHECK_SHAPE(rows <= shape.rows() && cols <= shape.cols(), "reconstruct: asked for (", rows, ", ",
                    cols, ") from an MPO of ", shape.to_string());
  const Matrix<T> t = detail::chain_contract(cores, 0, n - 1);  // interleaved tensor, (Π i_k j_k, 1)
  Matrix<T> W(rows, cols);
  detail::deinterleave<T>(t.data(), detail::interleave_map(shape), W);
  return W;
}

/// The `(mpo.rows, mpo.cols)` matrix an `Mpo` represents (padding sliced off); see the overload above.
template <class T>
Matrix<T> reconstruct(const Mpo<T>& mpo) {
  return reconstruct(mpo.cores, mpo.shape, mpo.rows, mpo.cols);
}

}  // namespace pemoe

/// @file mpo_chain.hpp
/// @brief Private helpers of the MPO headers: the interleaving index map and the contraction of a range
/// of cores in the cheapest order. Not part of the public API.
#pragma once

#include <limits>
#include <vector>
#include <xtensor/xtensor.hpp>

#include "pemoe/core/gemm.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/mpo/shape.hpp"

namespace pemoe::detail {

/// Offsets of the interleaved tensor `(i_1, j_1, …, i_n, j_n)` (row-major): element (r, c) of the
/// `(rows, cols)` matrix sits at `row_offset[r] + col_offset[c]` (r, c split row-major into modes).
struct InterleaveMap {
  std::vector<Index> row_offset, col_offset;
};

inline InterleaveMap interleave_map(const MpoShape& shape) {
  const Index n = shape.n_cores();
  // Row-major strides of the 2n axes (i_1, j_1, …, i_n, j_n).
  std::vector<Index> stride(static_cast<std::size_t>(2 * n));
  Index s = 1;
  for (Index a = 2 * n - 1; a >= 0; --a) {
    stride[static_cast<std::size_t>(a)] = s;
    const auto k = static_cast<std::size_t>(a / 2);
    s *= (a % 2 == 0) ? shape.row_modes[k] : shape.col_modes[k];
  }
  auto offsets = [&](const std::vector<Index>& modes, Index parity) {
    Index total = 1;
    for (Index m : modes) total *= m;
    std::vector<Index> off(static_cast<std::size_t>(total));
    for (Index r = 0; r < total; ++r) {
      Index rem = r, o = 0;
      for (Index k = n - 1; k >= 0; --k) {
        const Index mk = modes[static_cast<std::size_t>(k)];
        o += (rem % mk) * stride[static_cast<std::size_t>(2 * k + parity)];
        rem /= mk;
      }
      off[static_cast<std::size_t>(r)] = o;
    }
    return off;
  };
  return {offsets(shape.row_modes, 0), offsets(shape.col_modes, 1)};
}

/// Free size i_k·j_k of core k.
template <class T>
Index free_size(const xt::xtensor<T, 4>& core) {
  return static_cast<Index>(core.shape()[1] * core.shape()[2]);
}
/// Left bond d_k of a core.
template <class T>
Index left_bond(const xt::xtensor<T, 4>& core) {
  return static_cast<Index>(core.shape()[0]);
}
/// Right bond d_{k+1} of a core.
template <class T>
Index right_bond(const xt::xtensor<T, 4>& core) {
  return static_cast<Index>(core.shape()[3]);
}

/// Cheapest pairwise contraction order of cores [a, b] (dynamic programming over the split point, the
/// classic matrix-chain problem): merging [a..m] (d_a, F1, d_{m+1}) with [m+1..b] (d_{m+1}, F2, d_{b+1})
/// costs 2·d_a·F1·d_{m+1}·F2·d_{b+1} flops. `split[a][b]` is the best m; returns the total flops.
template <class T>
double chain_order(const std::vector<xt::xtensor<T, 4>>& cores, Index a, Index b,
                   std::vector<std::vector<Index>>& split) {
  const Index n = static_cast<Index>(cores.size());
  std::vector<std::vector<double>> cost(static_cast<std::size_t>(n), std::vector<double>(n, 0.0));
  split.assign(static_cast<std::size_t>(n), std::vector<Index>(static_cast<std::size_t>(n), -1));
  std::vector<double> F(static_cast<std::size_t>(n + 1), 1.0);  // prefix products of free sizes
  for (Index k = 0; k < n; ++k) F[k + 1] = F[k] * double(free_size(cores[k]));
  auto bond = [&](Index k) { return k < n ? double(left_bond(cores[k])) : double(right_bond(cores[n - 1])); };
  for (Index len = 2; len <= b - a + 1; ++len)
    for (Index s = a; s + len - 1 <= b; ++s) {
      const Index e = s + len - 1;
      double best = std::numeric_limits<double>::infinity();
      for (Index m = s; m < e; ++m) {
        const double c =
            cost[s][m] + cost[m + 1][e] +
            2.0 * bond(s) * (F[m + 1] / F[s]) * bond(m + 1) * (F[e + 1] / F[m + 1]) * bond(e + 1);
        if (c < best) {
          best = c;
          split[s][e] = m;
        }
      }
      cost[s][e] = best;
    }
  return cost[a][b];
}

/// Flops of contracting cores [a, b] in the cheapest order (0 for a single core).
template <class T>
double chain_flops(const std::vector<xt::xtensor<T, 4>>& cores, Index a, Index b) {
  if (a >= b) return 0.0;
  std::vector<std::vector<Index>> split;
  return chain_order(cores, a, b, split);
}

template <class T>
Matrix<T> chain_rec(const std::vector<xt::xtensor<T, 4>>& cores, Index a, Index b,
                    const std::vector<std::vector<Index>>& split) {
  if (a == b) {
    const auto& c = cores[static_cast<std::size_t>(a)];
    return ConstMatrixMap<T>(c.data(), left_bond(c) * free_size(c), right_bond(c));
  }
  const Index m = split[a][b];
  const Matrix<T> L = chain_rec(cores, a, m, split);      // (d_a·F1, d_{m+1})
  const Matrix<T> R = chain_rec(cores, m + 1, b, split);  // (d_{m+1}·F2, d_{b+1})
  const Index dm = L.cols(), db = right_bond(cores[static_cast<std::size_t>(b)]);
  const ConstMatrixMap<T> Rv(R.data(), dm, R.size() / dm);  // (d_{m+1}, F2·d_{b+1})
  Matrix<T> out(L.rows(), Rv.cols());                       // (d_a·F1, F2·d_{b+1})
  gemm<T>(Op::N, Op::N, T(1), L, Rv, T(0), out);
  Matrix<T> res(out.size() / db, db);
  std::copy(out.data(), out.data() + out.size(), res.data());
  return res;
}

/// Contraction of cores [a, b] (inclusive) in the cheapest order, returned as the row-major matrix
/// `(d_a·F, d_{b+1})` of the tensor `(d_a, i_a, j_a, …, i_b, j_b, d_{b+1})`. For a > b: the 1×1 identity.
template <class T>
Matrix<T> chain_contract(const std::vector<xt::xtensor<T, 4>>& cores, Index a, Index b) {
  if (a > b) return Matrix<T>::Ones(1, 1);
  std::vector<std::vector<Index>> split;
  if (a < b) chain_order(cores, a, b, split);
  return chain_rec(cores, a, b, split);
}

}  // namespace pemoe::detail

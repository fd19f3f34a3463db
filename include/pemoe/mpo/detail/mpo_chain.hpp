/// @file mpo_chain.hpp
/// @brief Private helpers of the MPO headers and layers: the interleaving index map, the contraction of a
/// range of cores in the cheapest order, and the gradient of that contraction. Not part of the public API.
#pragma once

#include <algorithm>
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

/// The zero-padded `(shape.rows(), shape.cols())` matrix permuted to the interleaved tensor, as scalar S.
template <class S, class T>
std::vector<S> interleave_as(ConstMatrixRef<T> W, const MpoShape& shape, const InterleaveMap& map) {
  std::vector<S> t(static_cast<std::size_t>(shape.rows() * shape.cols()), S(0));
  for (Index r = 0; r < W.rows(); ++r) {
    const Index ro = map.row_offset[static_cast<std::size_t>(r)];
    for (Index c = 0; c < W.cols(); ++c)
      t[static_cast<std::size_t>(ro + map.col_offset[static_cast<std::size_t>(c)])] = static_cast<S>(W(r, c));
  }
  return t;
}

/// Writes the leading `(W.rows(), W.cols())` block of the matrix held by interleaved tensor `t` into W.
template <class T>
void deinterleave(const T* t, const InterleaveMap& map, MatrixRef<T> W) {
  for (Index r = 0; r < W.rows(); ++r) {
    const Index ro = map.row_offset[static_cast<std::size_t>(r)];
    for (Index c = 0; c < W.cols(); ++c) W(r, c) = t[ro + map.col_offset[static_cast<std::size_t>(c)]];
  }
}

/// Read-only view of one core `(d0, i, j, d1)`, row-major (an xtensor or a ParamStore entry).
template <class T>
struct CoreView {
  const T* data = nullptr;
  Index d0 = 1, i = 1, j = 1, d1 = 1;
  Index free() const { return i * j; }
  Index size() const { return d0 * i * j * d1; }
  /// Left unfolding `(d0·i·j, d1)`.
  ConstMatrixMap<T> left() const { return ConstMatrixMap<T>(data, d0 * i * j, d1); }
  /// Right unfolding `(d0, i·j·d1)`.
  ConstMatrixMap<T> right() const { return ConstMatrixMap<T>(data, d0, i * j * d1); }
};

template <class T>
std::vector<CoreView<T>> views(const std::vector<xt::xtensor<T, 4>>& cores) {
  std::vector<CoreView<T>> v;
  for (const auto& c : cores)
    v.push_back({c.data(), static_cast<Index>(c.shape()[0]), static_cast<Index>(c.shape()[1]),
                 static_cast<Index>(c.shape()[2]), static_cast<Index>(c.shape()[3])});
  return v;
}

/// Cheapest pairwise contraction order of cores [a, b] (dynamic programming over the split point, the
/// classic matrix-chain problem): merging [a..m] (d_a, F1, d_{m+1}) with [m+1..b] (d_{m+1}, F2, d_{b+1})
/// costs 2·d_a·F1·d_{m+1}·F2·d_{b+1} flops. `split[s][e]` is the best m; returns the total flops.
template <class T>
double chain_order(const std::vector<CoreView<T>>& cores, Index a, Index b,
                   std::vector<std::vector<Index>>& split) {
  const auto n = cores.size();
  std::vector<std::vector<double>> cost(n, std::vector<double>(n, 0.0));
  split.assign(n, std::vector<Index>(n, -1));
  std::vector<double> F(n + 1, 1.0);  // prefix products of the free sizes
  for (std::size_t k = 0; k < n; ++k) F[k + 1] = F[k] * double(cores[k].free());
  auto bond = [&](Index k) {
    return k < Index(n) ? double(cores[std::size_t(k)].d0) : double(cores[n - 1].d1);
  };
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

/// Flops of contracting cores [a, b] in the cheapest order (0 for fewer than two cores).
template <class T>
double chain_flops(const std::vector<CoreView<T>>& cores, Index a, Index b) {
  if (a >= b) return 0.0;
  std::vector<std::vector<Index>> split;
  return chain_order(cores, a, b, split);
}

template <class T>
Matrix<T> chain_rec(const std::vector<CoreView<T>>& cores, Index a, Index b,
                    const std::vector<std::vector<Index>>& split) {
  if (a == b) return cores[std::size_t(a)].left();
  const Index m = split[a][b];
  const Matrix<T> L = chain_rec(cores, a, m, split);      // (d_a·F1, d_{m+1})
  const Matrix<T> R = chain_rec(cores, m + 1, b, split);  // (d_{m+1}·F2, d_{b+1})
  const Index dm = L.cols(), db = cores[std::size_t(b)].d1;
  const ConstMatrixMap<T> Rv(R.data(), dm, R.size() / dm);  // (d_{m+1}, F2·d_{b+1})
  Matrix<T> out(L.rows() * (Rv.cols() / db), db);           // (d_a·F1·F2, d_{b+1})
  MatrixMap<T> ov(out.data(), L.rows(), Rv.cols());         // the same memory as (d_a·F1, F2·d_{b+1})
  gemm<T>(Op::N, Op::N, T(1), L, Rv, T(0), ov);
  return out;
}

/// Contraction of cores [a, b] (inclusive) in the cheapest order, returned as the row-major matrix
/// `(d_a·F, d_{b+1})` of the tensor `(d_a, i_a, j_a, …, i_b, j_b, d_{b+1})`. For a > b: the 1×1 identity.
template <class T>
Matrix<T> chain_contract(const std::vector<CoreView<T>>& cores, Index a, Index b) {
  if (a > b) return Matrix<T>::Ones(1, 1);
  std::vector<std::vector<Index>> split;
  if (a < b) chain_order(cores, a, b, split);
  return chain_rec(cores, a, b, split);
}

template <class T>
Matrix<T> chain_contract(const std::vector<xt::xtensor<T, 4>>& cores, Index a, Index b) {
  return chain_contract(views(cores), a, b);
}

/**
 * Gradient of the full contraction t = G_0 ⋯ G_{n-1} (interleaved, length F = Π i_k j_k) with respect to
 * the cores: for every k with `grads[k] != nullptr`,
 *   dG_k[a, (i j), b] += Σ L_k[f<, a] · dt[f<, (i j), f>] · R_k[b, f>],
 * L_k = G_0⋯G_{k-1} as (F_<k, d_k), R_k = G_{k+1}⋯G_{n-1} as (d_{k+1}, F_>k). The environments are built
 * incrementally (only as far as a trainable core needs them) and each gradient picks the cheaper
 * association ((Lᵀ dt) Rᵀ or Lᵀ (dt Rᵀ)). Every product goes through `gemm`.
 */
template <class T>
void chain_backward(const std::vector<CoreView<T>>& cores, const T* dt, const std::vector<T*>& grads) {
  const Index n = static_cast<Index>(cores.size());
  Index first = n, last = -1;
  for (Index k = 0; k < n; ++k)
    if (grads[std::size_t(k)]) {
      first = std::min(first, k);
      last = std::max(last, k);
    }
  if (last < 0) return;
  std::vector<Index> Fl(std::size_t(n + 1), 1), Fr(std::size_t(n + 1), 1);  // F_<k and F_>=k
  for (Index k = 0; k < n; ++k) Fl[k + 1] = Fl[k] * cores[std::size_t(k)].free();
  for (Index k = n - 1; k >= 0; --k) Fr[k] = Fr[k + 1] * cores[std::size_t(k)].free();
  // L[k]: (F_<k, d_k) for k <= last; R[k]: (d_{k+1}, F_>k) for k >= first.
  std::vector<Matrix<T>> L(static_cast<std::size_t>(n)), R(static_cast<std::size_t>(n));
  L[0] = Matrix<T>::Ones(1, 1);
  for (Index k = 0; k < last; ++k) {
    const auto& c = cores[std::size_t(k)];
    Matrix<T> next(Fl[k] * c.free(), c.d1);
    MatrixMap<T> nv(next.data(), Fl[k], c.free() * c.d1);
    gemm<T>(Op::N, Op::N, T(1), L[std::size_t(k)], c.right(), T(0), nv);
    L[std::size_t(k + 1)] = std::move(next);
  }
  R[std::size_t(n - 1)] = Matrix<T>::Ones(1, 1);
  for (Index k = n - 1; k > first; --k) {
    const auto& c = cores[std::size_t(k)];
    Matrix<T> next(c.d0, c.free() * Fr[k + 1]);
    MatrixMap<T> nv(next.data(), c.d0 * c.free(), Fr[k + 1]);
    gemm<T>(Op::N, Op::N, T(1), c.left(), R[std::size_t(k)], T(0), nv);
    R[std::size_t(k - 1)] = std::move(next);
  }
  for (Index k = first; k <= last; ++k) {
    T* g = grads[std::size_t(k)];
    if (!g) continue;
    const auto& c = cores[std::size_t(k)];
    const Index fl = Fl[k], fr = Fr[k + 1], f = c.free();
    MatrixMap<T> G(g, c.d0 * f, c.d1);
    const double left_first = 2.0 * c.d0 * fl * f * fr + 2.0 * c.d0 * f * fr * c.d1;
    const double right_first = 2.0 * fl * f * fr * c.d1 + 2.0 * c.d0 * fl * f * c.d1;
    if (left_first <= right_first) {
      Matrix<T> P(c.d0, f * fr);  // Lᵀ·dt
      gemm<T>(Op::T, Op::N, T(1), L[std::size_t(k)], ConstMatrixMap<T>(dt, fl, f * fr), T(0), P);
      gemm<T>(Op::N, Op::T, T(1), ConstMatrixMap<T>(P.data(), c.d0 * f, fr), R[std::size_t(k)], T(1), G);
    } else {
      Matrix<T> Q(fl * f, c.d1);  // dt·Rᵀ
      gemm<T>(Op::N, Op::T, T(1), ConstMatrixMap<T>(dt, fl * f, fr), R[std::size_t(k)], T(0), Q);
      MatrixMap<T> Gr(g, c.d0, f * c.d1);
      gemm<T>(Op::T, Op::N, T(1), L[std::size_t(k)], ConstMatrixMap<T>(Q.data(), fl, f * c.d1), T(1), Gr);
    }
  }
}

}  // namespace pemoe::detail

namespace pemoe::detail {

/// The `(rows, cols)` leading block of the matrix represented by `cores` (interleaving `map`).
template <class T>
Matrix<T> rebuild(const std::vector<CoreView<T>>& cores, const InterleaveMap& map, Index rows, Index cols) {
  const Matrix<T> t = chain_contract(cores, 0, static_cast<Index>(cores.size()) - 1);
  Matrix<T> W(rows, cols);
  deinterleave<T>(t.data(), map, W);
  return W;
}

}  // namespace pemoe::detail

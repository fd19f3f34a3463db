/// @file topk.hpp
/// @brief Row kernels of the routers: a max-subtracted softmax, log-sum-exp, and a top-k selection
/// whose ties always go to the lowest expert index.
#pragma once

#include <cmath>
#include <limits>

#include "pemoe/core/config.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe {

/// Row-major matrix of expert indices (`topk_idx` of a router: (N, k)).
using IndexMatrix = Eigen::Matrix<Index, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/**
 * @brief Softmax of one row in the scalar type T with a max-subtraction:
 * @f$ p_i = e^{z_i - m} / \sum_j e^{z_j - m} @f$, @f$ m = \max_j z_j @f$. Returns the log-sum-exp
 * @f$ m + \log \sum_j e^{z_j - m} @f$. `p` may alias `z`. Cost: n exponentials.
 */
template <class T>
T softmax_row(const T* z, Index n, T* p) {
  T m = z[0];
  for (Index i = 1; i < n; ++i) m = z[i] > m ? z[i] : m;
  T s = T(0);
  for (Index i = 0; i < n; ++i) {
    p[i] = std::exp(z[i] - m);
    s += p[i];
  }
  const T inv = T(1) / s;
  for (Index i = 0; i < n; ++i) p[i] *= inv;
  return m + std::log(s);
}

/**
 * @brief The indices of the `k` largest of `v[0..n)`, written to `out[0..k)` in decreasing order of
 * value; equal values are ordered by increasing index, so an exact tie always selects the lowest
 * index (deterministic, unlike an unstable partial sort). Cost: O(n·k), fine for n = E experts.
 */
template <class T>
void topk_row(const T* v, Index n, Index k, Index* out) {
  Index filled = 0;
  for (Index i = 0; i < n; ++i) {
    // position of i among the kept entries: after every kept j with v[j] >= v[i] (ties: lower index first)
    Index pos = filled;
    while (pos > 0 && v[i] > v[out[pos - 1]]) --pos;
    if (pos >= k) continue;
    const Index last = filled < k ? filled : k - 1;
    for (Index j = last; j > pos; --j) out[j] = out[j - 1];
    out[pos] = i;
    if (filled < k) ++filled;
  }
}

/// Standard normal CDF Φ(a) = ½·erfc(−a/√2).
template <class T>
T normal_cdf(T a) {
  return T(0.5) * std::erfc(-a * T(0.70710678118654752440));
}

/// Standard normal density φ(a) = exp(−a²/2)/√(2π).
template <class T>
T normal_pdf(T a) {
  return T(0.39894228040143267794) * std::exp(T(-0.5) * a * a);
}

/// softplus(x) = log(1 + eˣ), computed without overflow.
template <class T>
T softplus(T x) {
  return x > T(0) ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x));
}

/// The logistic function, softplus'(x).
template <class T>
T sigmoid(T x) {
  return x >= T(0) ? T(1) / (T(1) + std::exp(-x)) : std::exp(x) / (T(1) + std::exp(x));
}

}  // namespace pemoe

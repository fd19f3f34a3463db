/// @file shape.hpp
/// @brief `MpoShape`: how a matrix is factorised into the modes of a matrix product operator (MPO),
/// balanced factorisations with optional zero padding, bond dimensions and parameter counts.
///
/// References: Gao et al. 2020/2021, "Compressing deep neural networks by matrix product operators"
/// and MPOP (Liu et al., ACL 2021, "Enabling lightweight fine-tuning for pre-trained language model
/// compression based on matrix product operators"); MPOE (Gao et al., COLING 2022, arXiv 2203.01104).
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "pemoe/core/config.hpp"
#include "pemoe/core/error.hpp"

namespace pemoe {

/**
 * @brief The mode factorisation of an MPO: a `(rows, cols)` matrix W with
 * rows = Π_k row_modes[k] (i_k) and cols = Π_k col_modes[k] (j_k), n = `row_modes.size()` cores.
 *
 * Core k has shape `(d_k, i_k, j_k, d_{k+1})` (bond dimensions d_0 = d_n = 1), and
 * @f$ W[(i_1..i_n), (j_1..j_n)] = \sum_{d} \prod_k G_k[d_k, i_k, j_k, d_{k+1}] @f$, the row and column
 * multi-indices being row-major (C order, i_1 slowest) — exactly the reference `matrix2mpo`.
 *
 * PyTorch trap: the reference decomposes the `nn.Linear` weight `(out, in)`, so `row_modes` factorise the
 * layer's **output** features (MPOE's "mpo_input_shape"). T5 `wi` (3072×768): row_modes [4,4,8,6,4],
 * col_modes [3,4,4,4,4].
 *
 * Full-rank bond dimensions: @f$ d_k = \min(\prod_{m<k} i_m j_m, \prod_{m\ge k} i_m j_m) @f$; with a cap χ,
 * @f$ d_k = \min(\cdot,\cdot,\chi) @f$ (the reference's `truncate_num`). The central core is (n-1)/2.
 * Parameters: @f$ P = \sum_k d_k\, i_k\, j_k\, d_{k+1} @f$ (`calculate_total_mpo_param`).
 */
struct MpoShape {
  std::vector<Index> row_modes;  ///< i_1..i_n, factorise the rows (PyTorch: output features)
  std::vector<Index> col_modes;  ///< j_1..j_n, factorise the columns (PyTorch: input features)

  /// Number of cores n.
  Index n_cores() const { return static_cast<Index>(row_modes.size()); }
  /// Index (n-1)/2 of the central core (MPOE's `CT_index`).
  Index central() const { return (n_cores() - 1) / 2; }
  /// Π row_modes: the (padded) number of rows.
  Index rows() const { return product(row_modes); }
  /// Π col_modes: the (padded) number of columns.
  Index cols() const { return product(col_modes); }

  /// Throws `ConfigError` naming `site` unless both mode lists have the same length ≥ 1 and all modes ≥ 1.
  void validate(const std::string& site = "MpoShape") const {
    PEMOE_CHECK_CONFIG(!row_modes.empty() && row_modes.size() == col_modes.size(), site,
                       ": row_modes and col_modes need the same, positive number of modes, got ",
                       row_modes.size(), " and ", col_modes.size());
    for (std::size_t k = 0; k < row_modes.size(); ++k)
      PEMOE_CHECK_CONFIG(row_modes[k] >= 1 && col_modes[k] >= 1, site, ": mode ", k, " is (", row_modes[k],
                         ", ", col_modes[k], "); every mode must be >= 1");
  }

  /// Bond dimensions d_0..d_n (n+1 values, d_0 = d_n = 1) capped at `max_bond`.
  std::vector<Index> bond_dims(Index max_bond = std::numeric_limits<Index>::max()) const {
    const Index n = n_cores();
    std::vector<Index> d(static_cast<std::size_t>(n + 1), 1);
    for (Index k = 1; k < n; ++k) {
      // left = Π_{m<k} i_m j_m, right = Π_{m>=k} i_m j_m; computed in double to avoid overflow.
      double left = 1, right = 1;
      for (Index m = 0; m < k; ++m) left *= double(row_modes[m]) * double(col_modes[m]);
      for (Index m = k; m < n; ++m) right *= double(row_modes[m]) * double(col_modes[m]);
      const double cap = std::min({left, right, double(max_bond)});
      d[static_cast<std::size_t>(k)] = static_cast<Index>(cap);
    }
    return d;
  }

  /// Shape `(d_k, i_k, j_k, d_{k+1})` of core k for bond dimensions `bonds` (from `bond_dims`).
  std::vector<Index> core_shape(Index k, const std::vector<Index>& bonds) const {
    const auto u = static_cast<std::size_t>(k);
    return {bonds[u], row_modes[u], col_modes[u], bonds[u + 1]};
  }

  /// Parameters of core k: d_k·i_k·j_k·d_{k+1}.
  Index core_params(Index k, const std::vector<Index>& bonds) const {
    const auto u = static_cast<std::size_t>(k);
    return bonds[u] * row_modes[u] * col_modes[u] * bonds[u + 1];
  }
  /// Total parameters Σ_k d_k·i_k·j_k·d_{k+1} for bond dimensions `bonds`.
  Index num_params(const std::vector<Index>& bonds) const {
    Index p = 0;
    for (Index k = 0; k < n_cores(); ++k) p += core_params(k, bonds);
    return p;
  }
  /// Total parameters with every bond capped at `max_bond` (full rank by default).
  Index num_params(Index max_bond = std::numeric_limits<Index>::max()) const {
    return num_params(bond_dims(max_bond));
  }
  /// Parameters of the central core (capped at `max_bond`).
  Index central_params(Index max_bond = std::numeric_limits<Index>::max()) const {
    return core_params(central(), bond_dims(max_bond));
  }
  /// Parameters of the auxiliary (non-central) cores together (capped at `max_bond`).
  Index auxiliary_params(Index max_bond = std::numeric_limits<Index>::max()) const {
    return num_params(max_bond) - central_params(max_bond);
  }

  /// The shape of Wᵀ: row and column modes swapped (T5 `wo` uses `wi`'s shape transposed).
  MpoShape transposed() const { return MpoShape{col_modes, row_modes}; }

  bool operator==(const MpoShape& o) const { return row_modes == o.row_modes && col_modes == o.col_modes; }
  bool operator!=(const MpoShape& o) const { return !(*this == o); }

  /// "[4,4,8,6,4]x[3,4,4,4,4]" for messages and logs.
  std::string to_string() const { return modes_string(row_modes) + "x" + modes_string(col_modes); }

  /// "[a,b,c]".
  static std::string modes_string(const std::vector<Index>& modes) {
    std::string s = "[";
    for (std::size_t k = 0; k < modes.size(); ++k) s += (k ? "," : "") + std::to_string(modes[k]);
    return s + "]";
  }

 private:
  static Index product(const std::vector<Index>& v) {
    Index p = 1;
    for (Index x : v) p *= x;
    return p;
  }
};

namespace detail {

// Depth-first search over non-decreasing factor lists f (|f| = n, Π f = m, every factor <= bound),
// keeping the one with the smallest (max factor, Σ f²): the most balanced factorisation.
inline void search_factors(Index m, Index n, Index min_factor, Index bound, std::vector<Index>& cur,
                           std::vector<Index>& best, double& best_score) {
  if (n == 1) {
    if (m < min_factor || m > bound) return;
    cur.push_back(m);
    double sq = 0;
    for (Index f : cur) sq += double(f) * double(f);
    // max factor first (cur is sorted, so m is its largest), then Σ f²
    if (best.empty() || m < best.back() || (m == best.back() && sq < best_score)) {
      best = cur;
      best_score = sq;
    }
    cur.pop_back();
    return;
  }
  for (Index f = min_factor; f <= bound; ++f) {
    // f is the smallest of the remaining n factors: f^n <= m
    double pw = 1;
    for (Index t = 0; t < n; ++t) pw *= double(f);
    if (pw > double(m)) break;
    if (m % f) continue;
    cur.push_back(f);
    search_factors(m / f, n - 1, f, bound, cur, best, best_score);
    cur.pop_back();
  }
}

// The most balanced factorisation of m into n factors, each <= bound (empty if none exists).
inline std::vector<Index> balanced_factors_bounded(Index m, Index n, Index bound) {
  std::vector<Index> cur, best;
  double score = 0;
  search_factors(m, n, 1, bound, cur, best, score);
  return best;
}

// Orders sorted factors "largest in the middle": the largest goes to the central core (n-1)/2, the next
// to its right, then its left, and so on outwards. This reproduces MPOE's presets (3072 -> [4,4,8,6,4],
// 768 -> [3,4,4,4,4], 4096 -> [4,4,8,8,4]) and puts most parameters into the central tensor.
inline std::vector<Index> centre_out(std::vector<Index> f) {
  std::sort(f.begin(), f.end(), std::greater<Index>());
  const Index n = static_cast<Index>(f.size()), c = (n - 1) / 2;
  std::vector<Index> out(f.size());
  Index lo = c, hi = c;
  out[static_cast<std::size_t>(c)] = f[0];
  for (Index t = 1; t < n; ++t) {
    const bool right = (t % 2 == 1) ? hi + 1 < n : lo - 1 < 0;
    const Index pos = right ? ++hi : --lo;
    out[static_cast<std::size_t>(pos)] = f[static_cast<std::size_t>(t)];
  }
  return out;
}

}  // namespace detail

/**
 * @brief The most balanced factorisation of `size` into `n_cores` factors (smallest largest factor, then
 * smallest Σ f²), ordered largest-in-the-middle.
 *
 * Without padding a prime `size` gives `[1,..,size,..,1]`. With `allow_padding`, a size whose balanced
 * factorisation has a factor above 2·⌈size^{1/n}⌉ is rounded up to the smallest m ≥ size that factorises
 * into n factors each ≤ ⌈size^{1/n}⌉ (MPOE pads T5's vocabulary 32128 = 2^7·251 up to 8^5 = 32768 this
 * way; 3072 keeps [4,4,8,6,4]); read the padded size off the product of the returned modes.
 * Cost: a depth-first search over divisors, microseconds for sizes up to 10^6.
 * Examples: 3072, 5 → [4,4,8,6,4]; 768, 5 → [3,4,4,4,4]; 1024, 5 → [4,4,4,4,4].
 */
inline std::vector<Index> propose_modes(Index size, Index n_cores, bool allow_padding = false) {
  PEMOE_CHECK_CONFIG(size >= 1 && n_cores >= 1, "propose_modes: need size >= 1 and n_cores >= 1, got size ",
                     size, " and n_cores ", n_cores);
  auto exact = detail::balanced_factors_bounded(size, n_cores, size);
  if (!allow_padding) return detail::centre_out(exact);
  // bound = ⌈size^{1/n}⌉ computed exactly in integers.
  Index bound =
      std::max<Index>(1, static_cast<Index>(std::floor(std::pow(double(size), 1.0 / double(n_cores)))));
  auto pow_n = [&](Index b) {
    double p = 1;
    for (Index t = 0; t < n_cores; ++t) p *= double(b);
    return p;
  };
  while (pow_n(bound) < double(size)) ++bound;
  while (bound > 1 && pow_n(bound - 1) >= double(size)) --bound;
  if (exact.back() <= 2 * bound) return detail::centre_out(exact);  // good enough: no padding
  for (Index m = size;; ++m) {
    auto f = detail::balanced_factors_bounded(m, n_cores, bound);
    if (!f.empty()) return detail::centre_out(f);
  }
}

/**
 * @brief Proposes an `MpoShape` for a `(rows, cols)` matrix with `n_cores` cores (MPOE/MPOP use 5; 3, 5, 7
 * are usual): each side factorised by `propose_modes`, zero-padded up to a factorisable size when
 * `allow_padding` (the padded rows/columns are sliced off by `reconstruct`).
 */
inline MpoShape propose_mpo_shape(Index rows, Index cols, Index n_cores, bool allow_padding = false) {
  return MpoShape{propose_modes(rows, n_cores, allow_padding), propose_modes(cols, n_cores, allow_padding)};
}

}  // namespace pemoe

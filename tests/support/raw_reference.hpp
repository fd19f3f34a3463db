/// @file raw_reference.hpp
/// @brief Reference computations for the MoE adapter tests that trust nothing of the layer under test: they
/// read its parameters by raw index from `store.values()` (located by their PEFT names, laid out as the
/// documented shapes say) and compute the router's gates from scratch in plain loops.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "pemoe/core/param_store.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/moe/router.hpp"

namespace pemoe::testing {

/// The values of parameter `name`: `store.values()` from its offset on (row-major in its declared shape).
/// Throws if the parameter does not exist or was declared with another shape than `shape`.
inline const double* raw_param(const ParamStore<double>& store, const std::string& name, const Shape& shape) {
  const auto& e = store.entry(store.id(name));
  if (e.shape != shape)
    throw Error("raw_param: '" + name + "' is " + shape_string(e.shape) + ", the test expects " +
                shape_string(shape));
  return store.values().data() + e.offset;
}

/// y = x·Wᵀ + b of the linear `<prefix>.weight` (d_out, d_in) and `<prefix>.bias` (d_out) (if declared).
inline Matrix<double> raw_linear(const ParamStore<double>& store, const std::string& prefix,
                                 const Matrix<double>& x, Index d_out) {
  const Index d_in = x.cols();
  const double* W = raw_param(store, prefix + ".weight", {d_out, d_in});
  const double* b = store.contains(prefix + ".bias") ? raw_param(store, prefix + ".bias", {d_out}) : nullptr;
  Matrix<double> y(x.rows(), d_out);
  for (Index t = 0; t < x.rows(); ++t)
    for (Index o = 0; o < d_out; ++o) {
      double acc = b ? b[o] : 0.0;
      for (Index i = 0; i < d_in; ++i) acc += x(t, i) * W[o * d_in + i];
      y(t, o) = acc;
    }
  return y;
}

/**
 * @brief Gates (N, E) of the router `<router>.weight` (E, d_u) (+ `<router>.bias` (E) if declared) for the
 * inputs u (N, d_u), in eval mode (no noise, no jitter): logits z_e = Σ_j u_j W[e·d_u + j] + b_e, p =
 * softmax(z) (max-subtracted), S = the k largest p (ties to the lower index), then the gate mode: soft g = p;
 * topk_mask g = p on S; topk_renorm and noisy_topk (noise off) g = p / Σ_S p on S; switch_top1 g = p on
 * argmax.
 */
inline Matrix<double> raw_router_gates(const ParamStore<double>& store, const std::string& router,
                                       const Matrix<double>& u, Index n_experts, GateMode mode, Index k) {
  const Index n = u.rows(), d = u.cols(), E = n_experts;
  const double* W = raw_param(store, router + ".weight", {E, d});
  const double* b = store.contains(router + ".bias") ? raw_param(store, router + ".bias", {E}) : nullptr;
  const Index kk = (mode == GateMode::soft || mode == GateMode::switch_top1) ? 1 : k;
  Matrix<double> g = Matrix<double>::Zero(n, E);
  for (Index t = 0; t < n; ++t) {
    std::vector<double> z(static_cast<std::size_t>(E), 0.0), p(static_cast<std::size_t>(E));
    for (Index e = 0; e < E; ++e) {
      z[std::size_t(e)] = b ? b[e] : 0.0;
      for (Index j = 0; j < d; ++j) z[std::size_t(e)] += u(t, j) * W[e * d + j];
    }
    const double mx = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (Index e = 0; e < E; ++e) sum += std::exp(z[std::size_t(e)] - mx);
    for (Index e = 0; e < E; ++e) p[std::size_t(e)] = std::exp(z[std::size_t(e)] - mx) / sum;
    std::vector<Index> order(static_cast<std::size_t>(E));
    std::iota(order.begin(), order.end(), Index(0));
    std::stable_sort(order.begin(), order.end(),
                     [&](Index a, Index c) { return p[std::size_t(a)] > p[std::size_t(c)]; });
    double kept = 0;
    for (Index j = 0; j < kk; ++j) kept += p[std::size_t(order[std::size_t(j)])];
    for (Index e = 0; e < E; ++e) {
      const bool selected = std::find(order.begin(), order.begin() + kk, e) != order.begin() + kk;
      const double pe = p[std::size_t(e)];
      switch (mode) {
        case GateMode::soft:
          g(t, e) = pe;
          break;
        case GateMode::topk_mask:
        case GateMode::switch_top1:
          g(t, e) = selected ? pe : 0.0;
          break;
        case GateMode::topk_renorm:
        case GateMode::noisy_topk:
          g(t, e) = selected ? pe / kept : 0.0;
          break;
      }
    }
  }
  return g;
}

}  // namespace pemoe::testing

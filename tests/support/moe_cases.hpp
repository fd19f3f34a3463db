// Shared by the MoE adapter tests: the gate modes, a naive router, and a config with every aux loss on.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "pemoe/moe/router.hpp"

namespace pemoe::testing {

inline const std::vector<GateMode>& all_gate_modes() {
  static const std::vector<GateMode> m = {GateMode::soft, GateMode::topk_mask, GateMode::topk_renorm,
                                          GateMode::noisy_topk, GateMode::switch_top1};
  return m;
}

inline const char* gate_name(GateMode m) {
  switch (m) {
    case GateMode::soft:
      return "soft";
    case GateMode::topk_mask:
      return "topk_mask";
    case GateMode::topk_renorm:
      return "topk_renorm";
    case GateMode::noisy_topk:
      return "noisy_topk";
    case GateMode::switch_top1:
      return "switch_top1";
  }
  return "?";
}

/// Router settings of a gradient-check case: the mode, k, and every aux loss on.
inline RouterConfig router_case(GateMode mode, Index k) {
  RouterConfig c;
  c.mode = mode;
  c.top_k = k;
  c.aux.balance_coef = 0.3;
  c.aux.z_coef = 0.2;
  c.aux.importance_coef = 0.25;
  c.aux.load_coef = 0.35;
  return c;
}

/// Gates (N, E) from logits z = u·Wᵀ, computed from scratch (eval mode: no noise; noisy_topk = topk_renorm).
inline Matrix<double> naive_router(const Matrix<double>& u, const Matrix<double>& W, GateMode mode, Index k) {
  const Index n = u.rows(), e = W.rows();
  Matrix<double> g = Matrix<double>::Zero(n, e);
  for (Index t = 0; t < n; ++t) {
    std::vector<double> z(static_cast<std::size_t>(e)), p(z.size());
    for (Index i = 0; i < e; ++i) {
      z[i] = 0;
      for (Index j = 0; j < u.cols(); ++j) z[i] += u(t, j) * W(i, j);
    }
    const double m = *std::max_element(z.begin(), z.end());
    double s = 0;
    for (Index i = 0; i < e; ++i) s += std::exp(z[i] - m);
    for (Index i = 0; i < e; ++i) p[i] = std::exp(z[i] - m) / s;
    std::vector<Index> order(z.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return z[a] > z[b]; });
    const Index kk = (mode == GateMode::soft || mode == GateMode::switch_top1) ? 1 : k;
    double ks = 0;
    for (Index j = 0; j < kk; ++j) ks += p[order[j]];
    for (Index i = 0; i < e; ++i) {
      const bool sel = std::find(order.begin(), order.begin() + kk, i) != order.begin() + kk;
      switch (mode) {
        case GateMode::soft:
          g(t, i) = p[i];
          break;
        case GateMode::topk_mask:
          g(t, i) = sel ? p[i] : 0.0;
          break;
        case GateMode::topk_renorm:
        case GateMode::noisy_topk:
          g(t, i) = sel ? p[i] / ks : 0.0;
          break;
        case GateMode::switch_top1:
          g(t, i) = sel ? p[i] : 0.0;
          break;
      }
    }
  }
  return g;
}

}  // namespace pemoe::testing

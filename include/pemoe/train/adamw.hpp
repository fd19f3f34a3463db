/// @file adamw.hpp
/// @brief AdamW over a `ParamStore`'s flat gradient arena (Loshchilov & Hutter 2019, arXiv 1711.05101).
#pragma once

#include <cmath>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"

namespace pemoe {

/// Hyper-parameters of AdamW (defaults are PyTorch's `torch.optim.AdamW`).
struct AdamWConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  ///< decoupled: w -= lr·wd·w
};

/**
 * @brief AdamW: for every trainable scalar w with gradient g,
 * @f$ m \leftarrow \beta_1 m + (1-\beta_1) g,\; v \leftarrow \beta_2 v + (1-\beta_2) g^2,\;
 * w \leftarrow w - \eta\,(\hat m / (\sqrt{\hat v} + \epsilon) + \lambda w) @f$
 * with bias corrections @f$ \hat m = m/(1-\beta_1^t) @f$, @f$ \hat v = v/(1-\beta_2^t) @f$.
 *
 * The moments live in two arenas parallel to the store's gradient arena; the update is one flat loop.
 * `skip(regex)`-style masking (e.g. MPOE's gradient mask) is done by `step(mask)` with a per-parameter flag.
 * If the store's trainable set changes, call `reset()` (moments are laid out like the gradient arena).
 */
template <class T>
class AdamW {
 public:
  explicit AdamW(const AdamWConfig& config = {}) : m_config(config) {
    PEMOE_CHECK_CONFIG(config.lr >= 0 && config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 &&
                           config.beta2 < 1 && config.eps > 0,
                       "AdamW: need lr >= 0, 0 <= beta1, beta2 < 1, eps > 0");
  }

  /// One update of every trainable parameter; `update[i] == false` skips parameter `i` (its value
  /// and, unless `keep_moments_of_skipped` is false, its moments). An empty mask updates all.
  void step(ParamStore<T>& store, const std::vector<bool>& update = {}, bool keep_moments_of_skipped = true) {
    const auto n = static_cast<std::size_t>(store.num_trainable());
    if (m_m.size() != n) {
      PEMOE_CHECK_CONFIG(m_t == 0, "AdamW: the store's trainable parameters changed after ", m_t,
                         " steps; call reset() after set_trainable()");
      m_m.assign(n, 0.0);
      m_v.assign(n, 0.0);
    }
    ++m_t;
    const double b1 = m_config.beta1, b2 = m_config.beta2;
    const double c1 = 1.0 - std::pow(b1, double(m_t)), c2 = 1.0 - std::pow(b2, double(m_t));
    const auto& entries = store.entries();
    for (std::size_t p = 0; p < entries.size(); ++p) {
      const auto& e = entries[p];
      if (!e.trainable) continue;
      const bool skip = !update.empty() && !update[p];
      if (skip && keep_moments_of_skipped) continue;
      T* w = store.values().data() + e.offset;
      const T* g = store.grads().data() + e.grad_offset;
      double* m = m_m.data() + e.grad_offset;
      double* v = m_v.data() + e.grad_offset;
      for (Index i = 0; i < e.size; ++i) {
        const double gi = static_cast<double>(g[i]);
        m[i] = b1 * m[i] + (1.0 - b1) * gi;
        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
        if (skip) continue;
        const double upd = (m[i] / c1) / (std::sqrt(v[i] / c2) + m_config.eps);
        w[i] = static_cast<T>(w[i] - m_config.lr * (upd + m_config.weight_decay * w[i]));
      }
    }
  }

  /// Forgets the moments and the step count.
  void reset() {
    m_m.clear();
    m_v.clear();
    m_t = 0;
  }
  long steps() const { return m_t; }
  void set_lr(double lr) { m_config.lr = lr; }
  const AdamWConfig& config() const { return m_config; }

 private:
  AdamWConfig m_config;
  std::vector<double> m_m, m_v;
  long m_t = 0;
};

}  // namespace pemoe

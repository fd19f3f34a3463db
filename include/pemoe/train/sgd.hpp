/// @file sgd.hpp
/// @brief SGD with momentum, dampening, Nesterov and L2 weight decay (PyTorch `torch.optim.SGD`).
#pragma once

#include <cmath>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/train/param_groups.hpp"

namespace pemoe {

/// Hyper-parameters of SGD (defaults are PyTorch's, with lr 1e-3).
struct SGDConfig {
  double lr = 1e-3;
  double momentum = 0.0;      ///< μ
  double dampening = 0.0;     ///< τ
  double weight_decay = 0.0;  ///< λ, added to the gradient (L2, not decoupled)
  bool nesterov = false;
};

/**
 * @brief PyTorch's SGD for every trainable parameter w with gradient g:
 * g ← g + λw; b ← g on the parameter's first step, else b ← μb + (1−τ)g; g ← g + μb (Nesterov) or b;
 * w ← w − η·g. Each parameter keeps its own step count and buffer (double), so a parameter skipped by
 * `step(store, update)` is untouched, as PyTorch skips a parameter without a gradient (with
 * `keep_moments_of_skipped == false` its buffer and step count still absorb the gradient, only the value
 * stays). Parameter groups scale η and replace λ per parameter; `lr_mult` (the schedule) scales η.
 */
template <class T>
class SGD {
 public:
  explicit SGD(const SGDConfig& c = {}, ParamGroups groups = {}) : m_c(c), m_groups(std::move(groups)) {
    PEMOE_CHECK_CONFIG(c.lr >= 0 && c.momentum >= 0 && c.dampening >= 0 && c.weight_decay >= 0,
                       "SGD: lr, momentum, dampening and weight_decay must be >= 0");
    PEMOE_CHECK_CONFIG(!c.nesterov || (c.momentum > 0 && c.dampening == 0),
                       "SGD: Nesterov momentum requires a momentum and zero dampening");
  }

  /// One update, with the arguments of `AdamW::step`: `update[i] == false` skips parameter i (an empty mask
  /// updates all); with `keep_moments_of_skipped == false` a skipped parameter's momentum buffer and step
  /// count still advance (its value does not); `lr_mult` (>= 0) is the schedule's multiplier. `ConfigError`
  /// on a mask of the wrong length or a negative `lr_mult`.
  void step(ParamStore<T>& store, const std::vector<bool>& update = {}, bool keep_moments_of_skipped = true,
            double lr_mult = 1.0) {
    PEMOE_CHECK_CONFIG(update.empty() || update.size() == store.size(), "SGD: the update mask has ",
                       update.size(), " flags, the store ", store.size(), " parameters");
    PEMOE_CHECK_CONFIG(std::isfinite(lr_mult) && lr_mult >= 0, "SGD: lr_mult must be finite and >= 0, got ",
                       lr_mult);
    bind(store);
    const auto& entries = store.entries();
    for (std::size_t p = 0; p < entries.size(); ++p) {
      const auto& e = entries[p];
      if (!e.trainable) continue;
      const bool skip = !update.empty() && !update[p];
      if (skip && keep_moments_of_skipped) continue;
      const GroupOptions go = m_groups.options_for(e.name);
      const double lr = m_c.lr * lr_mult * go.lr_scale;
      const double wd = go.weight_decay >= 0 ? go.weight_decay : m_c.weight_decay;
      T* w = store.values().data() + e.offset;
      const T* g = store.grads().data() + e.grad_offset;
      double* b = m_buf.data() + e.grad_offset;
      const bool first = m_steps[p] == 0;
      for (Index i = 0; i < e.size; ++i) {
        double gi = double(g[i]) + wd * double(w[i]);
        if (m_c.momentum != 0) {
          b[i] = first ? gi : m_c.momentum * b[i] + (1.0 - m_c.dampening) * gi;
          gi = m_c.nesterov ? gi + m_c.momentum * b[i] : b[i];
        }
        if (!skip) w[i] = static_cast<T>(double(w[i]) - lr * gi);
      }
      ++m_steps[p];
    }
  }
  /// Deleted: a floating-point third argument is a learning-rate multiplier passed where
  /// `keep_moments_of_skipped` (a bool) stands; write `step(store, update, true, lr_mult)`.
  template <class F, std::enable_if_t<std::is_floating_point<F>::value, int> = 0>
  void step(ParamStore<T>& store, const std::vector<bool>& update, F lr_mult) = delete;

  /// Steps taken by parameter i (index in `store.entries()`).
  long steps(std::size_t i) const { return i < m_steps.size() ? m_steps[i] : 0; }
  /// The momentum buffers, laid out like the store's gradient arena.
  const std::vector<double>& momentum_buffer() const { return m_buf; }
  std::vector<double>& momentum_buffer() { return m_buf; }
  std::vector<long>& step_counts() { return m_steps; }
  void set_lr(double lr) { m_c.lr = lr; }
  const SGDConfig& config() const { return m_c; }

 private:
  void bind(const ParamStore<T>& store) {
    const auto n = static_cast<std::size_t>(store.num_trainable());
    if (m_buf.size() == n && m_steps.size() == store.entries().size()) return;
    for (long s : m_steps)
      PEMOE_CHECK_CONFIG(s == 0,
                         "SGD: the store's parameters changed after training started; create a new "
                         "optimizer after set_trainable()");
    m_buf.assign(n, 0.0);
    m_steps.assign(store.entries().size(), 0);
  }

  SGDConfig m_c;
  ParamGroups m_groups;
  std::vector<double> m_buf;
  std::vector<long> m_steps;
};

}  // namespace pemoe

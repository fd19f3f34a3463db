/// @file adamw.hpp
/// @brief AdamW over a `ParamStore` with PyTorch's per-parameter state (Loshchilov & Hutter 2019,
/// arXiv 1711.05101; `torch.optim.AdamW`).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/train/param_groups.hpp"

namespace pemoe {

/// Hyper-parameters of AdamW (defaults are PyTorch's `torch.optim.AdamW`).
struct AdamWConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  ///< decoupled: w ← w·(1 − lr·wd) before the Adam step (a group may override)
};

/**
 * @brief AdamW with the semantics of `torch.optim.AdamW` (amsgrad off): for every updated parameter, with
 * its own step count t (incremented first) and gradient g,
 * @f$ w \leftarrow w\,(1 - \eta\lambda),\; m \leftarrow \beta_1 m + (1-\beta_1) g,\;
 * v \leftarrow \beta_2 v + (1-\beta_2) g^2,\;
 * w \leftarrow w - \frac{\eta}{1-\beta_1^t}\, \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon} @f$.
 *
 * State is per parameter (PyTorch's `state[p]`: `step`, `exp_avg`, `exp_avg_sq`), created at the parameter's
 * first update and stored and computed in the parameter's type T, as PyTorch keeps and computes it in the
 * parameter's dtype (the scalar coefficients — bias corrections, step size, decay — are computed in double).
 * A parameter that a step does not update — frozen, or skipped by the `update` mask of `step` (MPOE's
 * `GradientMask`) — is treated as PyTorch treats a parameter whose `.grad` is None: no moment update, no step
 * increment, no weight decay; when it is updated again, its bias correction uses its own count. Because the
 * state is keyed by `ParamId`, changing the trainable set (`set_trainable`) needs no `reset()`: a re-enabled
 * parameter resumes from its own state.
 *
 * Parameter groups (`ParamGroups`, as PyTorch's `param_groups`): a parameter's rate is
 * η = lr · lr_mult · lr_scale of its group (lr_mult: the schedule's multiplier of this step) and its decay λ
 * the group's `weight_decay` (or the config's when the group leaves it negative); both enter the formula
 * above, so the decay factor is 1 − ηλ with the scheduled, scaled η, exactly as PyTorch with a `LambdaLR`.
 * `ParamGroups::standard(router_lr_scale)` is Hugging Face's choice (no decay on biases and norm weights)
 * plus a router learning-rate scale.
 *
 * Cost per step: one pass over the updated parameters' values, gradients and moments (4 reads, 3 writes
 * per scalar: 28 bytes for float, memory-bound on one core); memory: two T per scalar ever updated.
 */
template <class T>
class AdamW {
 public:
  /// Optimizer state of one parameter (PyTorch `state[p]`); empty until its first update.
  struct ParamState {
    long step = 0;              ///< updates this parameter has received (`state['step']`)
    std::vector<T> exp_avg;     ///< first moment m (`exp_avg`), the parameter's size once updated
    std::vector<T> exp_avg_sq;  ///< second moment v (`exp_avg_sq`)
  };

  /// An optimizer with `config`'s hyper-parameters, per-parameter rate scales and decays from `groups`
  /// (default: one group, the config's rate and decay for every parameter).
  explicit AdamW(const AdamWConfig& config = {}, ParamGroups groups = {})
      : m_config(config), m_groups(std::move(groups)) {
    PEMOE_CHECK_CONFIG(config.lr >= 0 && config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 &&
                           config.beta2 < 1 && config.eps > 0 && config.weight_decay >= 0,
                       "AdamW: need lr >= 0, 0 <= beta1, beta2 < 1, eps > 0, weight_decay >= 0");
  }

  /**
   * @brief One optimizer step over every trainable parameter of `store`.
   *
   * `update` (empty: all) has one flag per parameter (`store.size()`, e.g. from `GradientMask::next`);
   * a parameter whose flag is false is skipped as described in the class comment. With
   * `keep_moments_of_skipped == false` a skipped parameter's moments still absorb its gradient (and its step
   * count advances with them, so the bias correction stays that of its moments); only its value update,
   * weight decay included, is skipped. `lr_mult` (>= 0) multiplies every group's rate: the schedule's
   * multiplier of this step (`Schedule`). SGD and Adafactor take the same arguments.
   * Throws `ConfigError` when `update` has the wrong length, `lr_mult` is negative or not finite, or the
   * store is not the one the state was built for (a parameter's size differs from its state's).
   */
  void step(ParamStore<T>& store, const std::vector<bool>& update = {}, bool keep_moments_of_skipped = true,
            double lr_mult = 1.0) {
    PEMOE_CHECK_CONFIG(update.empty() || update.size() == store.size(), "AdamW: the update mask has ",
                       update.size(), " flags, the store ", store.size(), " parameters");
    PEMOE_CHECK_CONFIG(std::isfinite(lr_mult) && lr_mult >= 0, "AdamW: lr_mult must be finite and >= 0, got ",
                       lr_mult);
    PEMOE_CHECK_CONFIG(store.size() >= m_state.size(), "AdamW: the store has ", store.size(),
                       " parameters, the optimizer state ", m_state.size(), "; call reset() for a new store");
    const auto& entries = store.entries();
    for (std::size_t p = 0; p < entries.size() && p < m_state.size(); ++p)
      PEMOE_CHECK_CONFIG(m_state[p].exp_avg.empty() || Index(m_state[p].exp_avg.size()) == entries[p].size,
                         "AdamW: parameter '", entries[p].name, "' has ", entries[p].size,
                         " values, its optimizer state ", m_state[p].exp_avg.size(),
                         "; call reset() for a new store");
    m_state.resize(store.size());
    ++m_calls;
    const double b1 = m_config.beta1, b2 = m_config.beta2;
    for (std::size_t p = 0; p < entries.size(); ++p) {
      const auto& e = entries[p];
      if (!e.trainable) continue;  // no gradient: untouched, like `.grad is None`
      const bool skip = !update.empty() && !update[p];
      if (skip && keep_moments_of_skipped) continue;
      const GroupOptions go = m_groups.options_for(e.name);
      const double lr = m_config.lr * lr_mult * go.lr_scale;
      const double wd = go.weight_decay >= 0 ? go.weight_decay : m_config.weight_decay;
      ParamState& st = m_state[p];
      if (st.exp_avg.empty()) {
        st.exp_avg.assign(std::size_t(e.size), T(0));
        st.exp_avg_sq.assign(std::size_t(e.size), T(0));
      }
      ++st.step;
      const double t = double(st.step);
      Coefficients k;
      k.b1 = b1;
      k.b2 = b2;
      k.eps = m_config.eps;
      k.step_size = lr / (1.0 - std::pow(b1, t));
      k.bc2_sqrt = std::sqrt(1.0 - std::pow(b2, t));
      k.decay = 1.0 - lr * wd;
      T* w = store.values().data() + e.offset;
      const T* g = store.grads().data() + e.grad_offset;
      if (skip)
        update_parameter<false>(k, w, g, st.exp_avg.data(), st.exp_avg_sq.data(), e.size);
      else
        update_parameter<true>(k, w, g, st.exp_avg.data(), st.exp_avg_sq.data(), e.size);
    }
  }

  /// Deleted: a floating-point third argument is a learning-rate multiplier passed where
  /// `keep_moments_of_skipped` (a bool) stands; write `step(store, update, true, lr_mult)`.
  template <class F, std::enable_if_t<std::is_floating_point<F>::value, int> = 0>
  void step(ParamStore<T>& store, const std::vector<bool>& update, F lr_mult) = delete;

  /// The state of parameter `id`: step 0 and empty moments before its first update (or for an id the
  /// optimizer has not seen yet).
  const ParamState& state(ParamId id) const {
    static const ParamState empty;
    return id < m_state.size() ? m_state[id] : empty;
  }
  /// Updates parameter `id` has received (0 for one never updated or never seen).
  long step_count(ParamId id) const { return id < m_state.size() ? m_state[id].step : 0; }
  /// Replaces the state of parameter `id` (checkpoint loading); the moments must be empty or both of size
  /// `size` of the parameter they belong to, which the next `step` checks.
  void set_state(ParamId id, ParamState state) {
    PEMOE_CHECK_CONFIG(
        state.exp_avg.size() == state.exp_avg_sq.size() && state.step >= 0 &&
            (state.step > 0) == !state.exp_avg.empty(),
        "AdamW::set_state: need step >= 0 and two moments of one size, non-empty iff step > 0");
    if (id >= m_state.size()) m_state.resize(id + 1);
    m_state[id] = std::move(state);
  }

  /// Forgets every parameter's state and the call count.
  void reset() {
    m_state.clear();
    m_calls = 0;
  }
  /// Number of `step()` calls since construction or `reset()`.
  long steps() const { return m_calls; }
  /// Sets the base rate (before groups' scales and the step's multiplier).
  void set_lr(double lr) { m_config.lr = lr; }
  const AdamWConfig& config() const { return m_config; }
  /// The parameter groups (per-parameter rate scale and decay).
  const ParamGroups& groups() const { return m_groups; }

 private:
  /// The scalars of one parameter's step: betas, ε, the bias-corrected step size η/(1−β1^t), √(1−β2^t) and
  /// the decay factor 1 − ηλ.
  struct Coefficients {
    double b1, b2, eps, step_size, bc2_sqrt, decay;
  };

  /// One parameter's update, in T, as PyTorch computes in the parameter's dtype: m ← m + (1−β1)(g − m)
  /// (`exp_avg.lerp_(grad, 1 − beta1)`), v ← β2 v + (1−β2) g², then, with `kUpdateValue`,
  /// w ← w·decay − step_size · m / (√v · (1/√(1−β2^t)) + ε). The reciprocal of √(1−β2^t) is taken once (a
  /// multiply instead of a divide per scalar). The three statements run over chunks of `kChunk` scalars that
  /// stay in L1 between them, so memory is crossed once; they are Eigen array expressions because a plain
  /// loop with `std::sqrt` does not vectorise unless the user compiles with `-fno-math-errno` (the scalar
  /// loop took 238 ms per 124 M floats on one AVX-512 core, the vectorised one 135 ms). Eigen's packet square
  /// root and division are the correctly rounded IEEE operations, so the values are those of the scalar loop.
  template <bool kUpdateValue>
  static void update_parameter(const Coefficients& k, T* w, const T* g, T* m, T* v, Index n) {
    using Array = Eigen::Array<T, Eigen::Dynamic, 1>;
    const T one_minus_b1 = T(1.0 - k.b1), b2 = T(k.b2), one_minus_b2 = T(1.0 - k.b2);
    const T inv_bc2_sqrt = T(1.0 / k.bc2_sqrt), eps = T(k.eps), step_size = T(k.step_size),
            decay = T(k.decay);
    constexpr Index kChunk = 1024;  // 4 arrays of 4 KiB (float): within L1
    for (Index begin = 0; begin < n; begin += kChunk) {
      const Index len = std::min(kChunk, n - begin);
      Eigen::Map<const Array> gc(g + begin, len);
      Eigen::Map<Array> mc(m + begin, len), vc(v + begin, len);
      mc = mc + one_minus_b1 * (gc - mc);
      vc = b2 * vc + one_minus_b2 * gc * gc;
      if constexpr (kUpdateValue) {
        Eigen::Map<Array> wc(w + begin, len);
        wc = wc * decay - step_size * mc / (vc.sqrt() * inv_bc2_sqrt + eps);
      }
    }
  }

  AdamWConfig m_config;
  ParamGroups m_groups;
  std::vector<ParamState> m_state;  ///< indexed by ParamId
  long m_calls = 0;
};

}  // namespace pemoe

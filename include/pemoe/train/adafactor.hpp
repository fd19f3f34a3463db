/// @file adafactor.hpp
/// @brief Adafactor with factored second moments (Shazeer & Stern 2018, arXiv 1804.04235), exactly as
/// Hugging Face's `transformers.optimization.Adafactor` computes it (the MoV/MoLoRA recipe's optimizer).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/train/param_groups.hpp"

namespace pemoe {

/// Hyper-parameters of Adafactor (defaults are Hugging Face's).
struct AdafactorConfig {
  double lr = 0.0;              ///< external rate (used when `relative_step` is false; 0 otherwise)
  double eps1 = 1e-30;          ///< ε₁ added to g²
  double eps2 = 1e-3;           ///< ε₂, the floor of the parameter scale
  double clip_threshold = 1.0;  ///< d: the update's RMS is clipped to d
  double decay_rate = -0.8;     ///< β₂ₜ = 1 − t^decay_rate
  double beta1 = 0.0;           ///< first moment (0: none, HF's `beta1=None`)
  double weight_decay = 0.0;    ///< decoupled: w −= wd·lr·w
  bool scale_parameter = true;  ///< multiply the step by max(ε₂, RMS(w))
  bool relative_step = true;    ///< time-dependent rate min(10⁻², 1/√t) instead of `lr`
  bool warmup_init = false;     ///< relative step starts at 10⁻⁶·t

  /// The MoV/MoLoRA recipe: constant rate `lr`, no relative step, no parameter scaling.
  static AdafactorConfig constant(double lr) {
    AdafactorConfig c;
    c.lr = lr;
    c.relative_step = false;
    c.scale_parameter = false;
    return c;
  }
};

/**
 * @brief Adafactor. Per trainable parameter W with gradient G at its step t (each parameter counts its own
 * steps): ρ = min(10⁻⁶t if warmup_init else 10⁻², 1/√t) (relative step) or lr; α = ρ·max(ε₂, RMS(W)) with
 * `scale_parameter`, else ρ; β₂ₜ = 1 − t^decay; U = G² + ε₁.
 * - Tensors with ≥ 2 dimensions are factored over their last two (leading dimensions are a batch, e.g. the
 *   E of stacked experts): R ← β₂ₜR + (1−β₂ₜ)·mean_cols(U), C ← β₂ₜC + (1−β₂ₜ)·mean_rows(U),
 *   V̂ = (R / mean(R)) ⊗ C, update = G / √V̂.
 * - Vectors keep the full V ← β₂ₜV + (1−β₂ₜ)U, update = G / √V.
 * Then update ← update / max(1, RMS(update)/d) · α; with β₁ > 0, M ← β₁M + (1−β₁)update and update = M;
 * W ← W − wd·α·W − update. Memory: O(rows + cols) per matrix instead of O(rows·cols). State in double.
 */
template <class T>
class Adafactor {
 public:
  /// One parameter's state.
  struct State {
    long step = 0;
    std::vector<double> row, col;  ///< factored: (batch, rows) and (batch, cols)
    std::vector<double> v;         ///< not factored: like the parameter
    std::vector<double> m;         ///< first moment (beta1 > 0)
  };

  explicit Adafactor(const AdafactorConfig& c = {}, ParamGroups groups = {})
      : m_c(c), m_groups(std::move(groups)) {
    PEMOE_CHECK_CONFIG(c.relative_step || c.lr > 0, "Adafactor: set lr > 0 or relative_step");
    PEMOE_CHECK_CONFIG(!(c.relative_step && c.lr > 0),
                       "Adafactor: a manual lr cannot be combined with relative_step (as in Hugging Face)");
    PEMOE_CHECK_CONFIG(c.beta1 >= 0 && c.beta1 < 1, "Adafactor: beta1 must be in [0, 1)");
    PEMOE_CHECK_CONFIG(c.clip_threshold > 0, "Adafactor: clip_threshold must be positive");
  }

  /// One update, with the arguments of `AdamW::step`: `update[i] == false` skips parameter i entirely (with
  /// `keep_moments_of_skipped == false` its factored moments, first moment and step count still advance; its
  /// value does not); `lr_mult` (>= 0) scales the rate (schedules). `ConfigError` on a mask of the wrong
  /// length or a negative `lr_mult`.
  void step(ParamStore<T>& store, const std::vector<bool>& update = {}, bool keep_moments_of_skipped = true,
            double lr_mult = 1.0) {
    PEMOE_CHECK_CONFIG(update.empty() || update.size() == store.size(), "Adafactor: the update mask has ",
                       update.size(), " flags, the store ", store.size(), " parameters");
    PEMOE_CHECK_CONFIG(std::isfinite(lr_mult) && lr_mult >= 0,
                       "Adafactor: lr_mult must be finite and >= 0, got ", lr_mult);
    if (m_state.size() != store.entries().size()) {
      for (const auto& s : m_state)
        PEMOE_CHECK_CONFIG(s.step == 0, "Adafactor: the store's parameters changed after training started");
      m_state.assign(store.entries().size(), State{});
    }
    const auto& entries = store.entries();
    std::vector<double> u, csum, sqrt_col;  // reused by every parameter (no allocation per matrix)
    for (std::size_t p = 0; p < entries.size(); ++p) {
      const auto& e = entries[p];
      if (!e.trainable) continue;
      const bool skip = !update.empty() && !update[p];
      if (skip && keep_moments_of_skipped) continue;
      const GroupOptions go = m_groups.options_for(e.name);
      const double wd = go.weight_decay >= 0 ? go.weight_decay : m_c.weight_decay;
      State& st = m_state[p];
      T* w = store.values().data() + e.offset;
      const T* g = store.grads().data() + e.grad_offset;
      const Index n = e.size;
      const long t = ++st.step;
      double rho = m_c.lr;
      if (m_c.relative_step)
        rho = std::min(m_c.warmup_init ? 1e-6 * double(t) : 1e-2, 1.0 / std::sqrt(double(t)));
      double scale = 1.0;
      if (m_c.scale_parameter) scale = std::max(m_c.eps2, rms(w, n));
      const double alpha = rho * scale * lr_mult * go.lr_scale;
      const double b2 = 1.0 - std::pow(double(t), m_c.decay_rate);
      u.resize(static_cast<std::size_t>(n));
      if (e.shape.size() >= 2) {
        const Index cols = e.shape.back(), rows = e.shape[e.shape.size() - 2], batch = n / (rows * cols);
        if (st.row.empty()) {
          st.row.assign(static_cast<std::size_t>(batch * rows), 0.0);
          st.col.assign(static_cast<std::size_t>(batch * cols), 0.0);
        }
        for (Index b = 0; b < batch; ++b) {
          const T* gb = g + b * rows * cols;
          double* R = st.row.data() + b * rows;
          double* C = st.col.data() + b * cols;
          csum.assign(static_cast<std::size_t>(cols), 0.0);
          sqrt_col.resize(static_cast<std::size_t>(cols));
          for (Index i = 0; i < rows; ++i) {
            double rsum = 0.0;
            for (Index j = 0; j < cols; ++j) {
              const double q = double(gb[i * cols + j]) * double(gb[i * cols + j]) + m_c.eps1;
              rsum += q;
              csum[static_cast<std::size_t>(j)] += q;
            }
            R[i] = b2 * R[i] + (1.0 - b2) * (rsum / double(cols));
          }
          for (Index j = 0; j < cols; ++j)
            C[j] = b2 * C[j] + (1.0 - b2) * (csum[static_cast<std::size_t>(j)] / double(rows));
          double rmean = 0.0;
          for (Index i = 0; i < rows; ++i) rmean += R[i];
          rmean /= double(rows);
          // √C once per column (the same values): the inner loop then has no square root, which GCC does
          // not vectorise without -fno-math-errno
          for (Index j = 0; j < cols; ++j) sqrt_col[static_cast<std::size_t>(j)] = std::sqrt(C[j]);
          for (Index i = 0; i < rows; ++i) {
            const double rf = 1.0 / std::sqrt(R[i] / rmean);
            double* ub = u.data() + b * rows * cols + i * cols;
            const T* gi = gb + i * cols;
            for (Index j = 0; j < cols; ++j)
              ub[j] = rf / sqrt_col[static_cast<std::size_t>(j)] * double(gi[j]);
          }
        }
      } else {
        if (st.v.empty()) st.v.assign(static_cast<std::size_t>(n), 0.0);
        for (Index i = 0; i < n; ++i) {
          const double q = double(g[i]) * double(g[i]) + m_c.eps1;
          st.v[std::size_t(i)] = b2 * st.v[std::size_t(i)] + (1.0 - b2) * q;
          u[std::size_t(i)] = double(g[i]) / std::sqrt(st.v[std::size_t(i)]);
        }
      }
      double usq = 0.0;
      for (double x : u) usq += x * x;
      const double clip = std::max(1.0, std::sqrt(usq / double(n)) / m_c.clip_threshold);
      for (double& x : u) x = x / clip * alpha;
      if (m_c.beta1 > 0) {
        if (st.m.empty()) st.m.assign(static_cast<std::size_t>(n), 0.0);
        for (Index i = 0; i < n; ++i) {
          st.m[std::size_t(i)] = m_c.beta1 * st.m[std::size_t(i)] + (1.0 - m_c.beta1) * u[std::size_t(i)];
          u[std::size_t(i)] = st.m[std::size_t(i)];
        }
      }
      if (skip) continue;  // the state absorbed the gradient; the value stays
      for (Index i = 0; i < n; ++i) {
        double wi = double(w[i]);
        if (wd != 0) wi -= wd * alpha * wi;
        w[i] = static_cast<T>(wi - u[std::size_t(i)]);
      }
    }
  }

  /// Deleted: a floating-point third argument is a learning-rate multiplier passed where
  /// `keep_moments_of_skipped` (a bool) stands; write `step(store, update, true, lr_mult)`.
  template <class F, std::enable_if_t<std::is_floating_point<F>::value, int> = 0>
  void step(ParamStore<T>& store, const std::vector<bool>& update, F lr_mult) = delete;

  /// Per-parameter state, indexed like `store.entries()`.
  const std::vector<State>& state() const { return m_state; }
  std::vector<State>& state() { return m_state; }
  void set_lr(double lr) { m_c.lr = lr; }
  const AdafactorConfig& config() const { return m_c; }

 private:
  static double rms(const T* w, Index n) {
    double s = 0.0;
    for (Index i = 0; i < n; ++i) s += double(w[i]) * double(w[i]);
    return std::sqrt(s / double(n));
  }

  AdafactorConfig m_c;
  ParamGroups m_groups;
  std::vector<State> m_state;
};

}  // namespace pemoe

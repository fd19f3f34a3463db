/// @file ia3.hpp
/// @brief `IA3`: (IA)³, a learned vector rescaling an activation (Liu et al. 2022, arXiv 2205.05638),
/// standalone or fused with a frozen linear; PEFT-compatible names.
#pragma once

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "pemoe/core/detail/parallel_rows.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/nn/linear.hpp"

namespace pemoe {

/// Configuration of an `IA3` adapter on a linear.
struct IA3Config {
  bool feedforward = false;  ///< PEFT `feedforward_modules`: scale the linear's input instead of its output
  bool base_trainable = false;  ///< also train the wrapped linear
  Index panel_rows = 2048;      ///< rows per panel of the fused GEMM + scale loop (Eigen re-packs W per panel
                                ///< GEMM: measured 5-12 % slower at 256 rows)
};

/**
 * @brief (IA)³: @f$ y = h \odot l @f$, l ∈ R^d initialised to ones (the identity).
 *
 * Three placements:
 * - standalone (`IA3(d)`): h = x, an activation (N, d) (T5 K/V (d = H·d_head) or the FFN intermediate);
 * - on a linear, output (PEFT non-feed-forward): y = (x W^T + b) ⊙ l, l ∈ R^{d_out};
 * - on a linear, input (`feedforward`, PEFT feed-forward modules): y = (x ⊙ l) W^T + b, l ∈ R^{d_in}.
 *
 * Parameter: `<prefix>.ia3_l` (d) (PEFT stores (d_out, 1) or (1, d_in); same values), plus the base
 * `<prefix>.weight`/`.bias` (frozen by default). Memory-bound: in the output placement the scale is applied
 * panel by panel right after the GEMM of that panel, while it is in cache (DESIGN §7), not as a second pass.
 * Cache: the unscaled output h (N, d_out) (or the scaled input (N, d_in)). Cost beyond the base: N·d.
 * NaN in x propagates to y (IA3 has no router and does not check; the MoE layers do).
 */
template <class T>
class IA3 {
 public:
  using Scalar = T;
  /// What forward saves for backward (reused across calls to avoid reallocations).
  struct Cache {
    typename Linear<T>::Cache base;
    Matrix<T> h;  ///< output placement: x·Wᵀ + b (N, d_out); feedforward: x ⊙ l (N, d_in); standalone: empty
  };

  /// Standalone: scales an activation of d features.
  explicit IA3(Index d) : m_d(d) { PEMOE_CHECK_CONFIG(d > 0, "IA3: d must be positive, got ", d); }
  /// On a linear.
  IA3(const LinearConfig& base, const IA3Config& config = {})
      : m_config(config), m_d(config.feedforward ? base.d_in : base.d_out) {
    LinearConfig b = base;
    b.trainable = config.base_trainable;
    m_base.emplace(b);
    PEMOE_CHECK_CONFIG(config.panel_rows > 0, "IA3: panel_rows must be positive");
  }

  /// Declares `<prefix>.ia3_l` (ones) and the base linear.
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    if (m_base) m_base->register_params(store, prefix, rng);
    m_store = &store;
    m_name = prefix;
    m_l = store.add(prefix + ".ia3_l", {m_d});
    std::fill(store.value(m_l), store.value(m_l) + m_d, T(1));
  }

  /// x: (N, d_in or d) -> y: (N, d_out or d)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& cache) {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "IA3: call register_params() before forward/backward");
    const Index n = x.rows();
    PEMOE_CHECK_SHAPE(x.cols() == d_in(), site(), ": x has ", x.cols(), " features, layer expects ", d_in());
    check_shape(site(), "y", y, n, d_out());
    check_no_alias(site(), x, y);
    const auto l = scale().row(0).array();
    if (!m_base) {
      cache.h.resize(0, 0);
      y = (x.array().rowwise() * l).matrix();
    } else if (m_config.feedforward) {
      cache.h = (x.array().rowwise() * l).matrix();
      m_base->forward(cache.h, y, cache.base);
    } else {
      cache.h.resize(n, d_out());
      for (Index r0 = 0; r0 < n; r0 += m_config.panel_rows) {  // GEMM a panel, scale it while in cache
        const Index m = std::min(m_config.panel_rows, n - r0);
        auto h = cache.h.middleRows(r0, m);
        m_base->product(x.middleRows(r0, m), h);
        if (m_base->config().bias) h.rowwise() += m_base->bias().row(0);
        detail::parallel_rows(m, detail::row_blocks(m), [&](int, Index i0, Index i1) {
          y.middleRows(r0 + i0, i1 - i0) = (h.middleRows(i0, i1 - i0).array().rowwise() * l).matrix();
        });
      }
    }
  }

  /// dl += Σ_rows dy ⊙ h; dx = (dy ⊙ l)·W (output), dy·W ⊙ l (feedforward) or dy ⊙ l (standalone).
  void backward(ConstMatrixRef<T> x, const Cache& cache, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "IA3: call register_params() before forward/backward");
    const Index n = x.rows();
    check_shape(site(), "x", x, -1, d_in());
    check_shape(site(), "dy", dy, n, d_out());
    if (dx) check_shape(site(), "dx", *dx, n, d_in());
    const auto l = scale().row(0).array();
    const bool tl = m_store->trainable(m_l);
    if (!m_base) {
      if (tl) m_store->grad_matrix(m_l) += (dy.array() * x.array()).matrix().colwise().sum();
      if (dx) *dx = (dy.array().rowwise() * l).matrix();
    } else if (m_config.feedforward) {
      check_shape(site(), "cache.h (did forward run on this x?)", cache.h, n, d_in());
      Matrix<T> dh(n, d_in());
      m_base->backward(cache.h, cache.base, dy, dh);
      if (tl) m_store->grad_matrix(m_l) += (dh.array() * x.array()).matrix().colwise().sum();
      if (dx) *dx = (dh.array().rowwise() * l).matrix();
    } else {
      check_shape(site(), "cache.h (did forward run on this x?)", cache.h, n, d_out());
      const bool tw = m_store->trainable(m_base->weight_id());
      const bool tb = m_base->config().bias && m_store->trainable(m_base->bias_id());
      const int blocks = detail::row_blocks(std::min(m_config.panel_rows, n));
      std::vector<RowVector<T>> dl(static_cast<std::size_t>(blocks), RowVector<T>::Zero(m_d));
      if (!tw && !tb && n > m_base->config().d_in && !m_base->packed()) {
        // Frozen base, more tokens than input features: dx = (dy ⊙ l)·W = dy·(diag(l)·W), scaling the
        // (d_out, d_in) weight instead of writing the (N, d_out) dy ⊙ l; one pass over dy and h for dl.
        if (tl)
          detail::parallel_rows(n, detail::row_blocks(n), [&](int b, Index i0, Index i1) {
            for (Index r0 = i0; r0 < i1; r0 += 64) {
              const Index m = std::min<Index>(64, i1 - r0);
              dl[static_cast<std::size_t>(b)] +=
                  (dy.middleRows(r0, m).array() * cache.h.middleRows(r0, m).array()).matrix().colwise().sum();
            }
          });
        if (dx) {
          const auto W = m_base->weight();
          const Matrix<T> wl = (W.array().colwise() * l.transpose()).matrix();  // diag(l)·W
          gemm<T>(Op::N, Op::N, T(1), dy, wl, T(0), *dx);
        }
        if (tl)
          for (const auto& d : dl) m_store->grad_matrix(m_l) += d;
        return;
      }
      Matrix<T> dh(std::min(m_config.panel_rows, n), d_out());
      for (Index r0 = 0; r0 < n; r0 += m_config.panel_rows) {
        const Index m = std::min(m_config.panel_rows, n - r0);
        auto dhp = dh.topRows(m);
        detail::parallel_rows(m, std::min(blocks, detail::row_blocks(m)), [&](int b, Index i0, Index i1) {
          const auto dyp = dy.middleRows(r0 + i0, i1 - i0);
          if (tl)
            dl[static_cast<std::size_t>(b)] +=
                (dyp.array() * cache.h.middleRows(r0 + i0, i1 - i0).array()).matrix().colwise().sum();
          dhp.middleRows(i0, i1 - i0) = (dyp.array().rowwise() * l).matrix();
        });
        if (tw)
          gemm<T>(Op::T, Op::N, T(1), dhp, x.middleRows(r0, m), T(1),
                  m_store->grad_matrix(m_base->weight_id()));
        if (tb) m_store->grad_matrix(m_base->bias_id()) += dhp.colwise().sum();
        if (dx) m_base->input_grad(dhp, dx->middleRows(r0, m));
      }
      if (tl)
        for (const auto& d : dl) m_store->grad_matrix(m_l) += d;  // blocks in a fixed order
    }
  }

  void set_training(bool /*on*/) {}

  /// l as a row (1, d).
  MatrixMap<T> scale() const { return MatrixMap<T>(m_store->value(m_l), 1, m_d); }
  ParamId scale_id() const { return m_l; }
  bool has_base() const { return m_base.has_value(); }
  Linear<T>& base() { return *m_base; }
  const IA3Config& config() const { return m_config; }
  const std::string& name() const { return m_name; }

 private:
  Index d_in() const { return m_base ? m_base->config().d_in : m_d; }
  Index d_out() const { return m_base ? m_base->config().d_out : m_d; }
  std::string site() const { return "IA3 '" + m_name + "'"; }

  IA3Config m_config;
  Index m_d;
  std::optional<Linear<T>> m_base;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
  ParamId m_l = 0;
};

}  // namespace pemoe

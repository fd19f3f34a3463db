/// @file layernorm.hpp
/// @brief `LayerNorm` (GPT-2, BERT) and `RMSNorm` (T5's `T5LayerNorm`) over the feature axis of (N, d).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "pemoe/core/detail/parallel_rows.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe {

/// Configuration of a `LayerNorm` or an `RMSNorm`.
struct NormConfig {
  Index d = 0;        ///< features normalised (the last axis)
  double eps = -1.0;  ///< added to the variance; negative: the layer's default (LayerNorm 1e-5, RMSNorm 1e-6)
  bool trainable = true;  ///< declare the parameters trainable
};

namespace detail {

inline double norm_eps(const NormConfig& c, double fallback, const char* layer) {
  PEMOE_CHECK_CONFIG(c.d > 0, layer, ": d must be positive, got ", c.d);
  const double eps = c.eps < 0.0 ? fallback : c.eps;
  PEMOE_CHECK_CONFIG(eps > 0.0 && std::isfinite(eps), layer, ": eps must be positive and finite, got ", eps);
  return eps;
}

}  // namespace detail

/**
 * @brief Layer normalisation (Ba, Kiros, Hinton 2016, arXiv 1607.06450; PyTorch `nn.LayerNorm`, HF GPT-2
 * `ln_1`, `ln_2`, `ln_f`): per row, @f$ \mu = \frac1d\sum_j x_j @f$,
 * @f$ \sigma^2 = \frac1d\sum_j (x_j-\mu)^2 @f$ (biased), @f$ r = 1/\sqrt{\sigma^2+\epsilon} @f$,
 * @f$ y = (x-\mu)\,r \odot w + b @f$.
 *
 * Backward, with @f$ \hat x = (x-\mu) r @f$ and @f$ g = dy \odot w @f$:
 * @f$ dx = r\,(g - \overline{g} - \hat x\,\overline{g \hat x}) @f$ (bars: means over the row),
 * @f$ dw \mathrel{+}= \sum_{rows} dy \odot \hat x @f$, @f$ db \mathrel{+}= \sum_{rows} dy @f$.
 *
 * Parameters (HF names): `<prefix>.weight` (d) ones, `<prefix>.bias` (d) zeros. eps defaults to 1e-5
 * (PyTorch, GPT-2 `layer_norm_epsilon`). Statistics are computed in T, two-pass (mean, then the centred sum
 * of squares), row by row. Shapes: x (N, d) -> y (N, d); y must not alias x (backward reads x).
 * Cache: `mean` and `rstd` per row (N). Cost: about 5·N·d flops forward, 10·N·d backward; rows in parallel,
 * parameter gradients summed per thread block and reduced in block order (same thread count, same bits).
 * @tparam T scalar type.
 */
template <class T>
class LayerNorm {
 public:
  using Scalar = T;
  /// Per-row statistics forward saves for backward.
  struct Cache {
    Vector<T> mean;  ///< (N) μ of each row
    Vector<T> rstd;  ///< (N) 1/√(σ² + ε) of each row
  };

  explicit LayerNorm(const NormConfig& config = {}) : m_config(config) {
    m_config.eps = detail::norm_eps(config, 1e-5, "LayerNorm");
  }

  /// Declares `<prefix>.weight` (ones) and `<prefix>.bias` (zeros).
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& /*rng*/) {
    m_store = &store;
    m_name = prefix;
    m_weight = store.add(prefix + ".weight", {m_config.d}, m_config.trainable);
    m_bias = store.add(prefix + ".bias", {m_config.d}, m_config.trainable);
    store.matrix(m_weight).setOnes();
  }
  void set_training(bool /*on*/) {}

  /// y = (x − μ)·r ⊙ w + b per row.   x: (N, d) -> y: (N, d)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& cache) {
    check_bound();
    const Index n = x.rows(), d = m_config.d;
    PEMOE_CHECK_SHAPE(x.cols() == d, site(), ": x has ", x.cols(), " features, layer expects ", d);
    check_shape(site(), "y", y, n, d);
    check_no_alias(site(), x, y);
    cache.mean.resize(n);
    cache.rstd.resize(n);
    const MatrixMap<T> wm = weight(), bm = bias();
    const auto w = wm.row(0).array();
    const auto b = bm.row(0).array();
    const T inv_d = T(1) / T(d), eps = T(m_config.eps);
    detail::parallel_rows(n, detail::row_blocks(n), [&](int, Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i) {
        const auto xr = x.row(i).array();
        const T mu = xr.sum() * inv_d;
        const T var = (xr - mu).square().sum() * inv_d;
        const T r = T(1) / std::sqrt(var + eps);
        cache.mean(i) = mu;
        cache.rstd(i) = r;
        y.row(i) = ((xr - mu) * r * w + b).matrix();
      }
    });
  }

  /// dw += Σ dy ⊙ x̂, db += Σ dy; dx = r·(g − mean(g) − x̂·mean(g ⊙ x̂)), g = dy ⊙ w.
  /// x: (N, d), dy: (N, d) -> dx: (N, d)
  void backward(ConstMatrixRef<T> x, const Cache& cache, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    check_bound();
    const Index n = x.rows(), d = m_config.d;
    check_shape(site(), "x", x, -1, d);
    check_shape(site(), "dy", dy, n, d);
    check_shape(site(), "cache.mean (did forward run on this x?)", cache.mean, n, 1);
    check_shape(site(), "cache.rstd (did forward run on this x?)", cache.rstd, n, 1);
    if (dx) check_shape(site(), "dx", *dx, n, d);
    const bool tw = m_store->trainable(m_weight), tb = m_store->trainable(m_bias);
    if (!tw && !tb && !dx) return;
    const MatrixMap<T> wm = weight();
    const auto w = wm.row(0).array();
    const T inv_d = T(1) / T(d);
    const int blocks = detail::row_blocks(n);
    std::vector<RowVector<T>> dw(static_cast<std::size_t>(blocks)), db(dw.size());
    detail::parallel_rows(n, blocks, [&](int blk, Index i0, Index i1) {
      RowVector<T>& dwb = dw[static_cast<std::size_t>(blk)];
      RowVector<T>& dbb = db[static_cast<std::size_t>(blk)];
      dwb.setZero(d);
      dbb.setZero(d);
      RowVector<T> xhat(d), g(d);
      for (Index i = i0; i < i1; ++i) {
        const T r = cache.rstd(i);
        xhat = ((x.row(i).array() - cache.mean(i)) * r).matrix();
        const auto dyr = dy.row(i).array();
        if (tw) dwb.array() += dyr * xhat.array();
        if (tb) dbb.array() += dyr;
        if (!dx) continue;
        g = (dyr * w).matrix();
        const T g_mean = g.sum() * inv_d;
        const T gx_mean = (g.array() * xhat.array()).sum() * inv_d;
        dx->row(i) = (r * (g.array() - g_mean - xhat.array() * gx_mean)).matrix();
      }
    });
    for (std::size_t blk = 0; blk < dw.size(); ++blk) {  // fixed order: same bits for the same thread count
      if (tw) m_store->grad_matrix(m_weight) += dw[blk];
      if (tb) m_store->grad_matrix(m_bias) += db[blk];
    }
  }

  /// The weight (gain) as a row (1, d).
  MatrixMap<T> weight() const { return m_store->matrix(m_weight); }
  /// The bias as a row (1, d).
  MatrixMap<T> bias() const { return m_store->matrix(m_bias); }
  ParamId weight_id() const { return m_weight; }
  ParamId bias_id() const { return m_bias; }
  /// Whether backward has a parameter gradient to write (the weight or the bias is trainable).
  bool has_trainable_params() const {
    check_bound();
    return m_store->trainable(m_weight) || m_store->trainable(m_bias);
  }
  /// The configuration, with `eps` resolved to the value used.
  const NormConfig& config() const { return m_config; }
  /// The parameter prefix, used to name this layer in error messages.
  const std::string& name() const { return m_name; }

 private:
  std::string site() const { return "LayerNorm '" + m_name + "'"; }
  void check_bound() const {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "LayerNorm: call register_params() before forward/backward");
  }

  NormConfig m_config;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
  ParamId m_weight = 0, m_bias = 0;
};

/**
 * @brief Root-mean-square normalisation (Zhang & Sennrich 2019, arXiv 1910.07467) as T5 uses it (HF
 * `T5LayerNorm`): per row @f$ r = 1/\sqrt{\frac1d\sum_j x_j^2 + \epsilon} @f$, @f$ y = x\,r \odot w @f$;
 * no mean subtraction, no bias.
 *
 * Backward, with @f$ \hat x = x r @f$ and @f$ g = dy \odot w @f$:
 * @f$ dx = r\,(g - \hat x\,\overline{g \hat x}) @f$, @f$ dw \mathrel{+}= \sum_{rows} dy \odot \hat x @f$.
 *
 * Parameter (HF name): `<prefix>.weight` (d), ones. eps defaults to 1e-6 (T5 `layer_norm_epsilon`).
 * The mean of squares is computed in T (HF upcasts half precision to float32 for it; for float and double the
 * two agree). Shapes: x (N, d) -> y (N, d); y must not alias x. Cache: `rstd` per row (N).
 * Cost: about 4·N·d flops forward, 7·N·d backward; rows in parallel, dw reduced in block order.
 * @tparam T scalar type.
 */
template <class T>
class RMSNorm {
 public:
  using Scalar = T;
  /// Per-row statistic forward saves for backward.
  struct Cache {
    Vector<T> rstd;  ///< (N) 1/√(mean(x²) + ε) of each row
  };

  explicit RMSNorm(const NormConfig& config = {}) : m_config(config) {
    m_config.eps = detail::norm_eps(config, 1e-6, "RMSNorm");
  }

  /// Declares `<prefix>.weight` (ones).
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& /*rng*/) {
    m_store = &store;
    m_name = prefix;
    m_weight = store.add(prefix + ".weight", {m_config.d}, m_config.trainable);
    store.matrix(m_weight).setOnes();
  }
  void set_training(bool /*on*/) {}

  /// y = x·r ⊙ w per row.   x: (N, d) -> y: (N, d)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& cache) {
    check_bound();
    const Index n = x.rows(), d = m_config.d;
    PEMOE_CHECK_SHAPE(x.cols() == d, site(), ": x has ", x.cols(), " features, layer expects ", d);
    check_shape(site(), "y", y, n, d);
    check_no_alias(site(), x, y);
    cache.rstd.resize(n);
    const MatrixMap<T> wm = weight();
    const auto w = wm.row(0).array();
    const T inv_d = T(1) / T(d), eps = T(m_config.eps);
    detail::parallel_rows(n, detail::row_blocks(n), [&](int, Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i) {
        const auto xr = x.row(i).array();
        const T r = T(1) / std::sqrt(xr.square().sum() * inv_d + eps);
        cache.rstd(i) = r;
        y.row(i) = (xr * r * w).matrix();
      }
    });
  }

  /// dw += Σ dy ⊙ x̂; dx = r·(g − x̂·mean(g ⊙ x̂)), g = dy ⊙ w.   x: (N, d), dy: (N, d) -> dx: (N, d)
  void backward(ConstMatrixRef<T> x, const Cache& cache, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    check_bound();
    const Index n = x.rows(), d = m_config.d;
    check_shape(site(), "x", x, -1, d);
    check_shape(site(), "dy", dy, n, d);
    check_shape(site(), "cache.rstd (did forward run on this x?)", cache.rstd, n, 1);
    if (dx) check_shape(site(), "dx", *dx, n, d);
    const bool tw = m_store->trainable(m_weight);
    if (!tw && !dx) return;
    const MatrixMap<T> wm = weight();
    const auto w = wm.row(0).array();
    const T inv_d = T(1) / T(d);
    const int blocks = detail::row_blocks(n);
    std::vector<RowVector<T>> dw(static_cast<std::size_t>(blocks));
    detail::parallel_rows(n, blocks, [&](int blk, Index i0, Index i1) {
      RowVector<T>& dwb = dw[static_cast<std::size_t>(blk)];
      dwb.setZero(d);
      RowVector<T> xhat(d), g(d);
      for (Index i = i0; i < i1; ++i) {
        const T r = cache.rstd(i);
        xhat = (x.row(i).array() * r).matrix();
        const auto dyr = dy.row(i).array();
        if (tw) dwb.array() += dyr * xhat.array();
        if (!dx) continue;
        g = (dyr * w).matrix();
        const T gx_mean = (g.array() * xhat.array()).sum() * inv_d;
        dx->row(i) = (r * (g.array() - xhat.array() * gx_mean)).matrix();
      }
    });
    if (tw)
      for (const auto& part : dw) m_store->grad_matrix(m_weight) += part;  // fixed block order
  }

  /// The weight (gain) as a row (1, d).
  MatrixMap<T> weight() const { return m_store->matrix(m_weight); }
  ParamId weight_id() const { return m_weight; }
  /// The configuration, with `eps` resolved to the value used.
  const NormConfig& config() const { return m_config; }
  /// The parameter prefix, used to name this layer in error messages.
  const std::string& name() const { return m_name; }

 private:
  std::string site() const { return "RMSNorm '" + m_name + "'"; }
  void check_bound() const {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "RMSNorm: call register_params() before forward/backward");
  }

  NormConfig m_config;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
  ParamId m_weight = 0;
};

}  // namespace pemoe

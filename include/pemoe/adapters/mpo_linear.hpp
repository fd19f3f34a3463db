/// @file mpo_linear.hpp
/// @brief `MpoLinear`: a linear layer whose weight is a matrix product operator with trainable cores
/// (MPOP, Liu et al., ACL 2021, `LinearDecomMPO`; MPOE, Gao et al., COLING 2022, arXiv 2203.01104).
#pragma once

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/mpo/contract.hpp"
#include "pemoe/mpo/decompose.hpp"
#include "pemoe/mpo/detail/mpo_chain.hpp"
#include "pemoe/mpo/shape.hpp"

namespace pemoe {

/// Configuration of an `MpoLinear` layer.
struct MpoLinearConfig {
  Index d_in = 0;   ///< input features (columns of W)
  Index d_out = 0;  ///< output features (rows of W, PyTorch `(out, in)`)
  /// Mode factorisation of the `(d_out, d_in)` weight (row_modes: outputs). Empty: proposed by
  /// `propose_mpo_shape(d_out, d_in, n_cores, true)` (zero-padded when a size does not factorise well).
  MpoShape shape;
  Index n_cores = 5;                                   ///< cores when `shape` is empty
  Index max_bond = std::numeric_limits<Index>::max();  ///< bond cap χ (the reference's `truncate_num`)
  bool bias = true;                                    ///< add a bias `(d_out)` (`LinearDecomMPO` has one)
  std::vector<Index> frozen_cores;                     ///< core indices declared frozen (e.g. {central})
  bool bias_trainable = true;                          ///< whether the bias trains
  MpoGauge gauge = MpoGauge::symmetric;                ///< gauge used by `register_params`/`load_dense`
};

/**
 * @brief Linear layer @f$ y = x W^\top + b @f$ with @f$ W = \mathrm{MPO}(G_0, \dots, G_{n-1}) @f$, the
 * cores being the trainable parameters (MPOP / MPOE `LinearDecomMPO`).
 *
 * Parameters: `<prefix>.mpo.core_<k>` of shape `(d_k, i_k, j_k, d_{k+1})` for k = 0..n-1 (core (n-1)/2 is
 * the central tensor), `<prefix>.bias` `(d_out)`. Any subset of cores can be frozen (`frozen_cores`, or
 * `set_trainable(store, regex, flag)` (core/param_select.hpp) by name before training).
 *
 * Forward (the reference's, rebuild then GEMM): W = reconstruct(cores) `(d_out, d_in)` (padding sliced
 * off), y = x·Wᵀ + b; cache: W. Outside training (`set_training(false)`, the default) x is instead
 * contracted through the cores when `mpo_apply_cost` finds that cheaper; backward then rebuilds W for dx.
 * Shapes x `(N, d_in)` → y `(N, d_out)`.
 * Backward: dW = dyᵀ·x `(d_out, d_in)` through `gemm`, zero-padded and interleaved to dT; then for each
 * trainable core @f$ dG_k = L_k^\top\, dT\, R_k^\top @f$ with L_k the contraction of the cores left of k
 * `(Π_{m<k} i_m j_m, d_k)` and R_k of the cores right of k `(d_{k+1}, Π_{m>k} i_m j_m)` (environments built
 * incrementally); dx = dy·W.
 * Cost: rebuild ≈ 2·|W|·d (chain order chosen by DP; 2.7 GFLOP for 3072×768 at full rank) + the dense
 * GEMMs (2·N·d_in·d_out each for y, dW, dx) + ≈ 2·|W|·(d_k + d_{k+1}) per trainable core in backward.
 * `register_params` initialises like `nn.Linear` (a kaiming-uniform dense weight, decomposed);
 * `load_dense` decomposes a pretrained weight (exact at full rank).
 */
template <class T>
class MpoLinear {
 public:
  using Scalar = T;
  struct Cache {
    Matrix<T> W;  ///< the rebuilt weight (d_out, d_in)
  };

  explicit MpoLinear(const MpoLinearConfig& config) : m_config(config) {
    PEMOE_CHECK_CONFIG(config.d_in > 0 && config.d_out > 0,
                       "MpoLinear: d_in and d_out must be positive, got d_in=", config.d_in,
                       " d_out=", config.d_out);
    if (m_config.shape.row_modes.empty())
      m_config.shape = propose_mpo_shape(config.d_out, config.d_in, config.n_cores, true);
    m_config.shape.validate("MpoLinear");
    PEMOE_CHECK_CONFIG(m_config.shape.rows() >= config.d_out && m_config.shape.cols() >= config.d_in,
                       "MpoLinear: MPO shape ", m_config.shape.to_string(), " holds (", m_config.shape.rows(),
                       ", ", m_config.shape.cols(), "), weight is (", config.d_out, ", ", config.d_in, ")");
    PEMOE_CHECK_CONFIG(config.max_bond >= 1, "MpoLinear: max_bond must be >= 1, got ", config.max_bond);
    for (Index k : config.frozen_cores)
      PEMOE_CHECK_CONFIG(k >= 0 && k < m_config.shape.n_cores(), "MpoLinear: frozen core ", k,
                         " out of range [0, ", m_config.shape.n_cores(), ")");
    m_bonds = m_config.shape.bond_dims(config.max_bond);
    m_map = detail::interleave_map(m_config.shape);
  }

  /// Declares the cores (and bias) and initialises them from a kaiming-uniform dense weight, like
  /// `nn.Linear`.
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_store = &store;
    m_name = prefix;
    const Index n = m_config.shape.n_cores();
    m_cores.clear();
    for (Index k = 0; k < n; ++k) {
      bool frozen = false;
      for (Index f : m_config.frozen_cores) frozen = frozen || f == k;
      m_cores.push_back(store.add(core_name(prefix, k), m_config.shape.core_shape(k, m_bonds), !frozen));
    }
    if (m_config.bias) {
      m_bias = store.add(prefix + ".bias", {m_config.d_out}, m_config.bias_trainable);
      const double bound = 1.0 / std::sqrt(static_cast<double>(m_config.d_in));
      rng.split(prefix + ".bias").fill_uniform(store.value(m_bias), m_config.d_out, -bound, bound);
    }
    Matrix<T> W(m_config.d_out, m_config.d_in);
    rng.split(prefix + ".weight").fill_kaiming_uniform(W.data(), W.size(), m_config.d_in);
    load_dense(W);
  }

  /// Name of core k: `<prefix>.mpo.core_<k>`.
  static std::string core_name(const std::string& prefix, Index k) {
    return prefix + ".mpo.core_" + std::to_string(k);
  }

  /**
   * Replaces the cores by the decomposition of a dense `(d_out, d_in)` weight (PyTorch layout) with this
   * layer's bond cap and gauge; optionally sets the bias. Returns the relative truncation error (0 at full
   * rank).
   */
  double load_dense(ConstMatrixRef<T> W, const T* bias = nullptr) {
    check_bound();
    check_shape(site(), "W", W, m_config.d_out, m_config.d_in);
    TruncationPolicy pol;
    pol.max_bond = m_config.max_bond;
    const Mpo<T> m = decompose<T>(W, m_config.shape, pol, m_config.gauge);
    for (Index k = 0; k < m.n_cores(); ++k) {
      const auto& c = m.cores[std::size_t(k)];
      PEMOE_CHECK(Index(c.size()) == m_store->entry(m_cores[std::size_t(k)]).size, site(), ": core ", k,
                  " of the decomposition has ", c.size(), " values, the parameter ",
                  m_store->entry(m_cores[std::size_t(k)]).size);
      std::copy(c.data(), c.data() + c.size(), m_store->value(m_cores[std::size_t(k)]));
    }
    if (bias && m_config.bias) std::copy(bias, bias + m_config.d_out, m_store->value(m_bias));
    return m.relative_truncation_error();
  }

  /// y = x·Wᵀ + b with W rebuilt from the cores.   x: (N, d_in) -> y: (N, d_out)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& cache) {
    check_bound();
    PEMOE_CHECK_SHAPE(x.cols() == m_config.d_in, site(), ": x has ", x.cols(), " features, layer expects ",
                      m_config.d_in);
    check_shape(site(), "y", y, x.rows(), m_config.d_out);
    check_no_alias(site(), x, y);
    if (!m_training &&
        mpo_apply_cost(m_config.shape, m_bonds, m_config.d_out, m_config.d_in, x.rows()).best ==
            MpoApplyPath::contraction) {
      cache.W.resize(0, 0);  // backward rebuilds W if it needs it
      mpo_apply_by_contraction<T>(x, to_mpo(), y);
    } else {
      cache.W = weight();
      gemm<T>(Op::N, Op::T, T(1), x, cache.W, T(0), y);
    }
    if (m_config.bias) y.rowwise() += m_store->matrix(m_bias).row(0);
  }

  /// dG_k += L_kᵀ·interleave(dyᵀx)·R_kᵀ for trainable cores, db += Σ dy; dx = dy·W.
  /// x: (N, d_in), dy: (N, d_out) -> dx: (N, d_in)
  void backward(ConstMatrixRef<T> x, const Cache& cache, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    check_bound();
    check_shape(site(), "x", x, -1, m_config.d_in);
    check_shape(site(), "dy", dy, x.rows(), m_config.d_out);
    if (dx) check_shape(site(), "dx", *dx, x.rows(), m_config.d_in);
    if (cache.W.size() != 0) check_shape(site(), "cache.W", cache.W, m_config.d_out, m_config.d_in);
    std::vector<T*> grads;
    bool any = false;
    for (ParamId id : m_cores) {
      grads.push_back(m_store->trainable(id) ? m_store->grad(id) : nullptr);
      any = any || grads.back();
    }
    if (any) {
      Matrix<T> dW(m_config.d_out, m_config.d_in);
      gemm<T>(Op::T, Op::N, T(1), dy, x, T(0), dW);
      const std::vector<T> dt = detail::interleave_as<T, T>(dW, m_config.shape, m_map);
      detail::chain_backward(views(), dt.data(), grads);
    }
    if (m_config.bias && m_store->trainable(m_bias)) m_store->grad_matrix(m_bias) += dy.colwise().sum();
    if (dx) {
      check_shape(site(), "dx", *dx, x.rows(), m_config.d_in);
      if (cache.W.size() != 0)
        gemm<T>(Op::N, Op::N, T(1), dy, cache.W, T(0), *dx);
      else
        gemm<T>(Op::N, Op::N, T(1), dy, weight(), T(0), *dx);
    }
  }

  /// In training, forward rebuilds W (it is needed again for dx); outside training it contracts x through
  /// the cores when `mpo_apply_cost` says that is cheaper (small bonds, few tokens). Default: not training.
  void set_training(bool on) { m_training = on; }
  bool training() const { return m_training; }

  /// The dense weight `(d_out, d_in)` the cores represent.
  Matrix<T> weight() const {
    check_bound();
    return detail::rebuild(views(), m_map, m_config.d_out, m_config.d_in);
  }
  /// The cores as an `Mpo` (copies; spectra empty, truncation_error 0).
  Mpo<T> to_mpo() const {
    check_bound();
    Mpo<T> m;
    m.shape = m_config.shape;
    m.rows = m_config.d_out;
    m.cols = m_config.d_in;
    m.gauge = m_config.gauge;
    for (Index k = 0; k < m_config.shape.n_cores(); ++k) {
      const auto s = m_config.shape.core_shape(k, m_bonds);
      auto c = xt::xtensor<T, 4>::from_shape(
          {std::size_t(s[0]), std::size_t(s[1]), std::size_t(s[2]), std::size_t(s[3])});
      const T* v = m_store->value(m_cores[std::size_t(k)]);
      std::copy(v, v + c.size(), c.data());
      m.cores.push_back(std::move(c));
    }
    return m;
  }

  ParamId core_id(Index k) const { return m_cores[std::size_t(k)]; }
  ParamId central_id() const { return m_cores[std::size_t(m_config.shape.central())]; }
  ParamId bias_id() const { return m_bias; }
  /// Bond dimensions d_0..d_n.
  const std::vector<Index>& bond_dims() const { return m_bonds; }
  const MpoLinearConfig& config() const { return m_config; }
  const std::string& name() const { return m_name; }

 private:
  std::string site() const { return "MpoLinear '" + m_name + "'"; }
  void check_bound() const {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "MpoLinear: call register_params() before using the layer");
  }
  std::vector<detail::CoreView<T>> views() const {
    std::vector<detail::CoreView<T>> v;
    for (Index k = 0; k < m_config.shape.n_cores(); ++k)
      v.push_back({m_store->value(m_cores[std::size_t(k)]), m_bonds[std::size_t(k)],
                   m_config.shape.row_modes[k], m_config.shape.col_modes[k], m_bonds[std::size_t(k + 1)]});
    return v;
  }

  MpoLinearConfig m_config;
  std::vector<Index> m_bonds;
  detail::InterleaveMap m_map;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
  std::vector<ParamId> m_cores;
  ParamId m_bias = 0;
  bool m_training = false;
};

}  // namespace pemoe

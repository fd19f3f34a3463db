// IWYU pragma: private, include pemoe/adapters/molora.hpp or pemoe/adapters/sparse_lora.hpp instead
/// @file routed_lora_layer.hpp
/// @brief `detail::RoutedLoraLayer`: what `MoLoRA` (soft) and `SparseLoRAExperts` (top-k) share: a base
/// linear, a bank of E LoRA experts, a router, LoRA dropout, the forward/backward overloads for the two
/// router inputs, and the accessors. Each derived class supplies its Cache and `run_forward` /
/// `run_backward`.
#pragma once

#include <optional>
#include <string>

#include "pemoe/adapters/lora_experts.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/moe/router.hpp"
#include "pemoe/nn/dropout.hpp"
#include "pemoe/nn/linear.hpp"

namespace pemoe::detail {

/// The part of the forward cache both routed LoRA-expert layers keep.
template <class T>
struct RoutedLoraCache {
  typename Linear<T>::Cache base;
  typename Router<T>::Cache router;
  typename Dropout<T>::Cache dropout;
  Matrix<T> x_dropped;  ///< (N, d_in), only when dropout is active
  Matrix<T> gates;      ///< (N, E); zeros outside the selected set in the top-k modes
};

/**
 * @brief CRTP base of the routed LoRA-expert layers. `Derived` provides
 * `run_forward(x, u, y, cache)` and `run_backward(x, u, cache, dy, dx, du)` (u = x for the `layer_input`
 * router); `CacheT` is its forward cache. Parameters: the base linear `<prefix>.weight`/`.bias` (frozen
 * unless `base_trainable`), the experts `<prefix>.lora_A.weight` (E, r, d_in) / `<prefix>.lora_B.weight` (E,
 * d_out, r), the router `<prefix>.router.weight` (E, d_u).
 */
template <class Derived, class T, class CacheT>
class RoutedLoraLayer {
 public:
  using Scalar = T;
  /// What forward saves for backward (reused across calls to avoid reallocations).
  using Cache = CacheT;

  /// Declares the base linear, the experts and the router; seeds the dropout stream.
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_base.register_params(store, prefix, rng);
    m_store = &store;
    m_name = prefix;
    m_bank.register_params(store, prefix, rng);
    m_router.register_params(store, prefix + ".router", rng);
    m_dropout.seed(rng.split(prefix + ".lora_dropout"));
  }

  /// Router input = x.   x: (N, d_in) -> y: (N, d_out)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& cache) {
    require_input(RouterInput::layer_input);
    check_forward(x, x, y);
    derived().run_forward(x, x, y, cache);
  }
  /// Router input = u (N, d_u).
  void forward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, MatrixRef<T> y, Cache& cache) {
    require_input(RouterInput::external);
    check_forward(x, u, y);
    derived().run_forward(x, u, y, cache);
  }
  /// x: (N, d_in), dy: (N, d_out) -> dx: (N, d_in) (including the router's path).
  void backward(ConstMatrixRef<T> x, const Cache& cache, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    require_input(RouterInput::layer_input);
    check_backward(x, x, dy, dx, std::nullopt);
    derived().run_backward(x, x, cache, dy, dx, std::nullopt);
  }
  /// External router input: also writes du (N, d_u) when given.
  void backward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, const Cache& cache, ConstMatrixRef<T> dy,
                GradOut<T> dx = std::nullopt, GradOut<T> du = std::nullopt) {
    require_input(RouterInput::external);
    check_backward(x, u, dy, dx, du);
    derived().run_backward(x, u, cache, dy, dx, du);
  }

  /// Dropout and the router's noise/jitter are active only in training.
  void set_training(bool on) {
    m_dropout.set_training(on);
    m_router.set_training(on);
  }

  T scaling() const { return T(m_config.scaling()); }  ///< s = alpha / r
  Linear<T>& base() { return m_base; }
  const Linear<T>& base() const { return m_base; }
  Router<T>& router() { return m_router; }
  const Router<T>& router() const { return m_router; }
  LoraExpertBank<T>& experts() { return m_bank; }
  const LoraExpertBank<T>& experts() const { return m_bank; }
  Dropout<T>& dropout() { return m_dropout; }
  const LoraExpertsConfig& config() const { return m_config; }
  const std::string& name() const { return m_name; }
  /// Aux loss of the last forward (coefficient-weighted, layer-reduced), for the caller's total loss.
  double aux_loss(const Cache& cache) const { return m_router.aux_loss(cache.router); }

 protected:
  /// `kind` names the layer in errors ("MoLoRA", "SparseLoRAExperts").
  RoutedLoraLayer(const char* kind, const LinearConfig& base, const LoraExpertsConfig& config)
      : m_kind(kind),
        m_base(with_trainable(base, config)),
        m_config(config),
        m_bank(base.d_in, base.d_out, config) {
    PEMOE_CHECK_CONFIG(config.router_input != RouterInput::activation, m_kind,
                       ": router input 'activation' is circular (the output depends on the gates); use "
                       "layer_input or external");
    m_config.router.n_experts = config.n_experts;
    if (config.router_input == RouterInput::layer_input) m_config.router.d_in = base.d_in;
    m_router = Router<T>(m_config.router);
    m_dropout = Dropout<T>(config.dropout);
  }

  /// "MoLoRA 'h.0.mlp.c_fc'": the layer as errors name it.
  std::string site() const { return m_kind + " '" + m_name + "'"; }

  std::string m_kind;
  Linear<T> m_base;
  LoraExpertsConfig m_config;
  LoraExpertBank<T> m_bank;
  Router<T> m_router;
  Dropout<T> m_dropout;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;

 private:
  Derived& derived() { return static_cast<Derived&>(*this); }
  static LinearConfig with_trainable(LinearConfig base, const LoraExpertsConfig& c) {
    base.trainable = c.base_trainable;
    return base;
  }
  // The shapes of every buffer forward reads or writes; y may alias neither x nor u (backward reads them).
  void check_forward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& u, const MatrixRef<T>& y) const {
    const Index n = x.rows();
    PEMOE_CHECK_SHAPE(x.cols() == m_base.config().d_in, site(), ": x has ", x.cols(),
                      " features, layer expects ", m_base.config().d_in);
    check_shape(site(), "router input u", u, n, m_router.config().d_in);
    check_shape(site(), "y", y, n, m_base.config().d_out);
    check_no_alias(site(), x, y);
    check_no_alias(site(), u, y);
  }
  void check_backward(const ConstMatrixRef<T>& x, const ConstMatrixRef<T>& u, const ConstMatrixRef<T>& dy,
                      const GradOut<T>& dx, const GradOut<T>& du) const {
    const Index n = x.rows();
    check_shape(site(), "x", x, -1, m_base.config().d_in);
    check_shape(site(), "router input u", u, n, m_router.config().d_in);
    check_shape(site(), "dy", dy, n, m_base.config().d_out);
    if (dx) check_shape(site(), "dx", *dx, n, m_base.config().d_in);
    if (du) check_shape(site(), "du", *du, n, m_router.config().d_in);
  }
  void require_input(RouterInput in) const {
    PEMOE_CHECK_CONFIG(m_store != nullptr, m_kind, ": call register_params() before forward/backward");
    PEMOE_CHECK_CONFIG(m_config.router_input == in, site(), ": the router input is configured as ",
                       m_config.router_input == RouterInput::external ? "external (pass u)" : "layer_input",
                       "; call the matching forward/backward overload");
  }
};

}  // namespace pemoe::detail

/// @file molora.hpp
/// @brief `MoLoRA`: soft mixture of E LoRA experts on a frozen linear (Zadouri et al. 2023, arXiv
/// 2309.05444), computed as one LoRA of rank E·r with a gated hidden layer.
#pragma once

#include <optional>
#include <string>

#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/moe/lora_experts.hpp"
#include "pemoe/moe/router.hpp"
#include "pemoe/nn/dropout.hpp"
#include "pemoe/nn/linear.hpp"

namespace pemoe {

/**
 * @brief Soft MoLoRA: @f$ y = x W_0^\top + b + s \sum_{e} g_e(u)\, (\tilde x A_e^\top) B_e^\top @f$, with
 * @f$ \tilde x = \mathrm{dropout}(x) @f$, @f$ s = \alpha/r @f$, g = router(u) (all E experts in `soft` mode;
 * any `GateMode` works, the unselected experts are computed and multiplied by 0).
 *
 * Computed as one LoRA of rank E·r: H = x̃·A_catᵀ (N, E·r), H_g = H with expert e's r columns scaled by g_e,
 * y += s·H_g·B_catᵀ. The (N, E, d_out) tensor of per-expert outputs is never formed
 * (DESIGN §7: 1.25× instead of 3.5× the dense layer in PyTorch).
 *
 * Parameters: `<prefix>.weight`/`.bias` (base, frozen by default), `<prefix>.lora_A.weight` (E, r, d_in),
 * `<prefix>.lora_B.weight` (E, d_out, r), `<prefix>.router.weight` (E, d_u).
 * Shapes: x (N, d_in) -> y (N, d_out); the router reads x (`layer_input`) or a caller's u (N, d_u)
 * (`external`). Cost beyond the base: forward 2·N·E·r·(d_in + d_out) + 2·N·d_u·E, backward twice that. With E
 * = 1 it is exactly LoRA (the gate is 1).
 */
template <class T>
class MoLoRA {
 public:
  /// What forward saves for backward (reused across calls to avoid reallocations).
  struct Cache {
    typename Linear<T>::Cache base;
    typename Router<T>::Cache router;
    typename Dropout<T>::Cache dropout;
    Matrix<T> x_dropped;  ///< (N, d_in), only when dropout is active
    Matrix<T> gates;      ///< (N, E)
    Matrix<T> h;          ///< (N, E·r) = x̃·A_catᵀ
    Matrix<T> hg;         ///< (N, E·r) = h with gates applied
    Matrix<T> b_cat;      ///< (d_out, E·r)
  };

  MoLoRA(const LinearConfig& base, const LoraExpertsConfig& config)
      : m_base(with_trainable(base, config)), m_config(config), m_bank(base.d_in, base.d_out, config) {
    PEMOE_CHECK_CONFIG(config.router_input != RouterInput::activation,
                       "MoLoRA: router input 'activation' is circular (the output depends on the gates); use "
                       "layer_input or external");
    m_config.router.n_experts = config.n_experts;
    if (config.router_input == RouterInput::layer_input) m_config.router.d_in = base.d_in;
    m_router = Router<T>(m_config.router);
    m_dropout = Dropout<T>(config.dropout);
  }

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
    run_forward(x, x, y, cache);
  }
  /// Router input = u (N, d_u).
  void forward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, MatrixRef<T> y, Cache& cache) {
    require_input(RouterInput::external);
    run_forward(x, u, y, cache);
  }

  /// x: (N, d_in), dy: (N, d_out) -> dx: (N, d_in) (including the router's path).
  void backward(ConstMatrixRef<T> x, const Cache& cache, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    require_input(RouterInput::layer_input);
    run_backward(x, x, cache, dy, dx, std::nullopt);
  }
  /// External router input: also writes du (N, d_u) when given.
  void backward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, const Cache& cache, ConstMatrixRef<T> dy,
                GradOut<T> dx = std::nullopt, GradOut<T> du = std::nullopt) {
    require_input(RouterInput::external);
    run_backward(x, u, cache, dy, dx, du);
  }

  void set_training(bool on) {
    m_dropout.set_training(on);
    m_router.set_training(on);
  }

  T scaling() const { return T(m_config.scaling()); }
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

 private:
  static LinearConfig with_trainable(LinearConfig base, const LoraExpertsConfig& c) {
    base.trainable = c.base_trainable;
    return base;
  }
  std::string site() const { return "MoLoRA '" + m_name + "'"; }
  void require_input(RouterInput in) const {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "MoLoRA: call register_params() before forward/backward");
    PEMOE_CHECK_CONFIG(m_config.router_input == in, site(), ": the router input is configured as ",
                       m_config.router_input == RouterInput::external ? "external (pass u)" : "layer_input",
                       "; call the matching forward/backward overload");
  }

  void run_forward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, MatrixRef<T> y, Cache& c) {
    const Index n = x.rows(), d_in = m_base.config().d_in, er = m_config.n_experts * m_config.r;
    PEMOE_CHECK_SHAPE(x.cols() == d_in, site(), ": x has ", x.cols(), " features, layer expects ", d_in);
    PEMOE_CHECK_SHAPE(u.rows() == n, site(), ": router input has ", u.rows(), " rows, x has ", n);
    m_base.forward(x, y, c.base);
    c.gates.resize(n, m_config.n_experts);
    m_router.forward(u, c.gates, c.router);
    c.h.resize(n, er);
    if (m_dropout.active()) {
      c.x_dropped.resize(n, d_in);
      m_dropout.forward(x, c.x_dropped, c.dropout);
      gemm<T>(Op::N, Op::T, T(1), c.x_dropped, m_bank.A_cat(), T(0), c.h);
    } else {
      c.x_dropped.resize(0, 0);
      gemm<T>(Op::N, Op::T, T(1), x, m_bank.A_cat(), T(0), c.h);
    }
    apply_gates(c.h, c.gates, c.hg);
    m_bank.build_B_cat(c.b_cat);
    gemm<T>(Op::N, Op::T, scaling(), c.hg, c.b_cat, T(1), y);
  }

  // hg = h with column block e (r wide) scaled by gates(:, e).
  void apply_gates(const Matrix<T>& h, const Matrix<T>& gates, Matrix<T>& hg) const {
    const Index n = h.rows(), e = m_config.n_experts, r = m_config.r;
    hg.resize(n, e * r);
    for (Index t = 0; t < n; ++t)
      for (Index i = 0; i < e; ++i) hg.row(t).segment(i * r, r) = gates(t, i) * h.row(t).segment(i * r, r);
  }

  void run_backward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, const Cache& c, ConstMatrixRef<T> dy,
                    GradOut<T> dx, GradOut<T> du) {
    const Index n = x.rows(), e = m_config.n_experts, r = m_config.r;
    check_shape(site(), "cache.h (did forward run on this x?)", c.h, n, e * r);
    m_base.backward(x, c.base, dy, dx);
    if (m_bank.b_trainable()) {
      Matrix<T> db_cat(c.b_cat.rows(), e * r);  // (d_out, E·r) = s·dyᵀ·H_g
      gemm<T>(Op::T, Op::N, scaling(), dy, c.hg, T(0), db_cat);
      m_bank.add_B_cat_grad(db_cat);
    }
    Matrix<T> dhg(n, e * r);  // (N, E·r) = s·dy·B_cat
    gemm<T>(Op::N, Op::N, scaling(), dy, c.b_cat, T(0), dhg);
    Matrix<T> dgates(n, e);
    for (Index t = 0; t < n; ++t)
      for (Index i = 0; i < e; ++i) {
        dgates(t, i) = dhg.row(t).segment(i * r, r).dot(c.h.row(t).segment(i * r, r));
        dhg.row(t).segment(i * r, r) *= c.gates(t, i);  // now dL/dH
      }
    const bool dropped = c.x_dropped.size() != 0;
    if (m_bank.a_trainable())
      gemm<T>(Op::T, Op::N, T(1), dhg, dropped ? ConstMatrixRef<T>(c.x_dropped) : x, T(1), m_bank.dA_cat());
    if (dx) {
      if (!dropped) {
        gemm<T>(Op::N, Op::N, T(1), dhg, m_bank.A_cat(), T(1), *dx);
      } else {
        Matrix<T> dxd(n, x.cols());
        gemm<T>(Op::N, Op::N, T(1), dhg, m_bank.A_cat(), T(0), dxd);
        *dx += dxd.cwiseProduct(c.dropout.mask);
      }
    }
    if (m_config.router_input == RouterInput::layer_input)
      m_router.backward(u, c.router, dgates, dx, /*accumulate=*/true);
    else
      m_router.backward(u, c.router, dgates, du, /*accumulate=*/false);
  }

  Linear<T> m_base;
  LoraExpertsConfig m_config;
  LoraExpertBank<T> m_bank;
  Router<T> m_router;
  Dropout<T> m_dropout;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
};

}  // namespace pemoe

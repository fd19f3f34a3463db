/// @file molora.hpp
/// @brief `MoLoRA`: soft mixture of E LoRA experts on a frozen linear (Zadouri et al. 2023, arXiv
/// 2309.05444), computed as one LoRA of rank E·r with a gated hidden layer.
#pragma once

#include "pemoe/adapters/detail/routed_lora_layer.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe {

/// What `MoLoRA` forward saves for backward (reused across calls to avoid reallocations).
template <class T>
struct MoLoRACache : detail::RoutedLoraCache<T> {
  Matrix<T> h;      ///< (N, E·r) = x̃·A_catᵀ
  Matrix<T> hg;     ///< (N, E·r) = h with gates applied
  Matrix<T> b_cat;  ///< (d_out, E·r)
};

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
class MoLoRA : public detail::RoutedLoraLayer<MoLoRA<T>, T, MoLoRACache<T>> {
  using Base = detail::RoutedLoraLayer<MoLoRA<T>, T, MoLoRACache<T>>;
  friend Base;

 public:
  using Base::scaling;
  using typename Base::Cache;

  MoLoRA(const LinearConfig& base, const LoraExpertsConfig& config) : Base("MoLoRA", base, config) {}

 private:
  using Base::m_bank;
  using Base::m_base;
  using Base::m_config;
  using Base::m_dropout;
  using Base::m_router;
  using Base::site;

  void run_forward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, MatrixRef<T> y, Cache& c) {
    const Index n = x.rows(), d_in = m_base.config().d_in, er = m_config.n_experts * m_config.r;
    PEMOE_CHECK_SHAPE(x.cols() == d_in, site(), ": x has ", x.cols(), " features, layer expects ", d_in);
    PEMOE_CHECK_SHAPE(u.rows() == n, site(), ": router input has ", u.rows(), " rows, x has ", n);
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
    // y = s·H_g·B_catᵀ, then the base product adds x·Wᵀ + b in its epilogue (one pass over y fewer than
    // adding the experts' term to the base output)
    gemm<T>(Op::N, Op::T, scaling(), c.hg, c.b_cat, T(0), y);
    m_base.forward(x, y, c.base, Output::add);
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
    if (dx) {  // dx = dropoutᵀ(dL/dH·A_cat), then the base product adds dy·W in its epilogue
      gemm<T>(Op::N, Op::N, T(1), dhg, m_bank.A_cat(), T(0), *dx);
      if (dropped) m_dropout.apply_mask_rows(c.dropout, 0, *dx);
    }
    m_base.backward(x, c.base, dy, dx, InputGrad::add);
    if (m_config.router_input == RouterInput::layer_input)
      m_router.backward(u, c.router, dgates, dx, InputGrad::add);
    else
      m_router.backward(u, c.router, dgates, du);
  }
};

}  // namespace pemoe

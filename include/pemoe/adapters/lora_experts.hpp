/// @file lora_experts.hpp
/// @brief `LoraExpertsConfig` and `LoraExpertBank`: E rank-r LoRA experts stored stacked, shared by the soft
/// (`MoLoRA`) and the sparse top-k (`SparseLoRAExperts`) adapters.
#pragma once

#include <cmath>
#include <string>

#include "pemoe/adapters/lora.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/moe/router.hpp"

namespace pemoe {

/**
 * @brief Configuration of a mixture of LoRA experts on one linear:
 * @f$ y = x W_0^\top + b + \frac{\alpha}{r} \sum_e g_e(u)\, B_e A_e\, \mathrm{dropout}(x) @f$.
 *
 * Presets (spec `mov_mola.md` §5.4):
 * - `for_ai(E, r)`: MoLoRA of Zadouri et al. 2023 (arXiv 2309.05444): A ~ N(0, 0.02), B = 0, alpha 16,
 *   router N(0, 0.02) without bias, soft gate, no dropout (the reference used E = 10, r = 4);
 * - `mola(E, k, r)`: MoLA / PEFT (Gao et al. 2024, arXiv 2402.08562): A ~ kaiming-uniform(√5), B = 0,
 *   alpha 16, r 8, dropout 0.05, router kaiming-uniform, top-k renormalised with k = 2.
 */
struct LoraExpertsConfig {
  Index n_experts = 4;                 ///< E
  Index r = 4;                         ///< rank of every expert
  double alpha = 16.0;                 ///< scaling numerator: s = alpha / r
  double dropout = 0.0;                ///< dropout on the experts' input (not the router's)
  LoraInit init = LoraInit::gaussian;  ///< initialisation of every A_e (B_e = 0)
  double init_std = 0.02;              ///< std of `LoraInit::gaussian`
  bool base_trainable = false;         ///< also train the wrapped linear
  RouterConfig router;                 ///< gate mode, k, init, aux losses (d_in, E filled in)
  RouterInput router_input = RouterInput::layer_input;  ///< layer_input (MoLoRA/MoLA) or external

  /// s = alpha / r.
  double scaling() const { return alpha / double(r); }

  /// for-ai MoLoRA preset (soft merging of all experts).
  static LoraExpertsConfig for_ai(Index n_experts = 10, Index r = 4) {
    LoraExpertsConfig c;
    c.n_experts = n_experts;
    c.r = r;
    c.alpha = 16.0;
    c.init = LoraInit::gaussian;
    c.init_std = 0.02;
    c.router.mode = GateMode::soft;
    c.router.init = RouterInit::normal;
    c.router.init_std = 0.02;
    return c;
  }
  /// MoLA / PEFT preset (sparse top-k, renormalised).
  static LoraExpertsConfig mola(Index n_experts = 8, Index top_k = 2, Index r = 8) {
    LoraExpertsConfig c;
    c.n_experts = n_experts;
    c.r = r;
    c.alpha = 16.0;
    c.dropout = 0.05;
    c.init = LoraInit::peft;
    c.router.mode = GateMode::topk_renorm;
    c.router.top_k = top_k;
    c.router.init = RouterInit::kaiming_uniform;
    return c;
  }
};

/**
 * @brief E LoRA experts stacked PEFT-style: `<prefix>.lora_A.weight` (E, r, d_in) and
 * `<prefix>.lora_B.weight` (E, d_out, r). Expert e's A_e is rows [e·r, (e+1)·r) of A viewed as (E·r, d_in),
 * so the concatenation A_cat of the soft adapter is the stored tensor itself; B_e is rows [e·d_out,
 * (e+1)·d_out) of B viewed as (E·d_out, r).
 */
template <class T>
class LoraExpertBank {
 public:
  LoraExpertBank() = default;
  LoraExpertBank(Index d_in, Index d_out, const LoraExpertsConfig& c) : m_d_in(d_in), m_d_out(d_out), m_c(c) {
    PEMOE_CHECK_CONFIG(c.n_experts > 0 && c.r > 0,
                       "LoRA experts: n_experts and r must be positive, got E=", c.n_experts, " r=", c.r);
  }

  /// Declares A (init per config) and B (zeros).
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_store = &store;
    const Index e = m_c.n_experts, r = m_c.r;
    m_a = store.add(prefix + ".lora_A.weight", {e, r, m_d_in});
    m_b = store.add(prefix + ".lora_B.weight", {e, m_d_out, r});
    Rng ra = rng.split(prefix + ".lora_A.weight");
    if (m_c.init == LoraInit::peft)
      ra.fill_kaiming_uniform(store.value(m_a), e * r * m_d_in, m_d_in);
    else
      ra.fill_normal(store.value(m_a), e * r * m_d_in, 0.0, m_c.init_std);
  }

  MatrixMap<T> A_cat() const { return m_store->matrix(m_a); }    ///< (E·r, d_in)
  MatrixMap<T> B_stack() const { return m_store->matrix(m_b); }  ///< (E·d_out, r)
  /// Expert e's A_e (r, d_in).
  MatrixMap<T> A(Index e) const { return MatrixMap<T>(A_cat().data() + e * m_c.r * m_d_in, m_c.r, m_d_in); }
  /// Expert e's B_e (d_out, r).
  MatrixMap<T> B(Index e) const {
    return MatrixMap<T>(B_stack().data() + e * m_d_out * m_c.r, m_d_out, m_c.r);
  }
  bool a_trainable() const { return m_store->trainable(m_a); }
  bool b_trainable() const { return m_store->trainable(m_b); }
  MatrixMap<T> dA_cat() { return m_store->grad_matrix(m_a); }    ///< (E·r, d_in)
  MatrixMap<T> dB_stack() { return m_store->grad_matrix(m_b); }  ///< (E·d_out, r)

  /// B_cat (d_out, E·r) = [B_0 … B_{E−1}], so Σ_e H_e B_eᵀ = H_cat B_catᵀ.
  void build_B_cat(Matrix<T>& out) const {
    const Index e = m_c.n_experts, r = m_c.r;
    out.resize(m_d_out, e * r);
    for (Index i = 0; i < e; ++i) out.middleCols(i * r, r) = B(i);
  }
  /// dB_e += block e of dB_cat (d_out, E·r).
  void add_B_cat_grad(const Matrix<T>& dB_cat) {
    const Index e = m_c.n_experts, r = m_c.r;
    auto g = dB_stack();
    for (Index i = 0; i < e; ++i) g.middleRows(i * m_d_out, m_d_out) += dB_cat.middleCols(i * r, r);
  }

  ParamId A_id() const { return m_a; }
  ParamId B_id() const { return m_b; }

 private:
  Index m_d_in = 0, m_d_out = 0;
  LoraExpertsConfig m_c;
  ParamStore<T>* m_store = nullptr;
  ParamId m_a = 0, m_b = 0;
};

}  // namespace pemoe

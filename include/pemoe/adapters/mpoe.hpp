/// @file mpoe.hpp
/// @brief `MpoeFfn`: the MPOE expert bank for a transformer FFN — experts share the central tensor of every
/// MPO-decomposed matrix and own its auxiliary tensors (Gao et al., "Parameter-efficient mixture-of-experts
/// architecture for pre-trained language models", COLING 2022, arXiv 2203.01104).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/moe/router.hpp"
#include "pemoe/mpo/decompose.hpp"
#include "pemoe/mpo/detail/mpo_chain.hpp"
#include "pemoe/mpo/shape.hpp"
#include "pemoe/nn/activations.hpp"

namespace pemoe {

/// Configuration of an `MpoeFfn` expert bank (defaults follow the MPOE `moe_type=switch` runs).
struct MpoeConfig {
  Index d_model = 0;    ///< model width (T5-base 768)
  Index d_ff = 0;       ///< FFN width (T5-base 3072)
  Index n_experts = 8;  ///< N
  /// Modes of `wi` `(d_ff, d_model)`; empty: `propose_mpo_shape(d_ff, d_model, n_cores, true)`
  /// (T5-base: [4,4,8,6,4]×[3,4,4,4,4]).
  MpoShape wi_shape;
  /// Modes of `wo` `(d_model, d_ff)`; empty: `wi_shape.transposed()`.
  MpoShape wo_shape;
  Index n_cores = 5;                                   ///< cores when a shape is empty
  Index max_bond = std::numeric_limits<Index>::max();  ///< bond cap (MPOE: 30000 = no truncation)
  bool tensor_learn = false;   ///< MPOE `--tensor_learn`: the shared central tensors are frozen
  bool scale_by_prob = false;  ///< gate value p_max (`is_scale_prob=True`) instead of p/sg(p) = 1 (default)
  MpoGauge gauge = MpoGauge::symmetric;  ///< gauge of the decomposition at initialisation
  AuxLossConfig aux;                     ///< router aux losses (MPOE itself uses none; all off)
  double jitter = 0.0;                   ///< router input jitter ε (training only)
  /// The experts' activation: "relu" (T5 `DenseReluDense`, MPOE's) or a GELU name of Hugging Face
  /// ("gelu_new", "gelu", ...: a GPT-2 MLP).
  std::string activation = "relu";
  /// Shared biases `<prefix>.wi.bias` (d_ff) and `<prefix>.wo.bias` (d_model), as a GPT-2 MLP has (T5: none).
  bool bias = false;
};

/**
 * @brief MPOE FFN expert bank with Switch top-1 routing (spec §2): expert e computes the T5
 * `DenseReluDense` @f$ f_e(x) = \mathrm{ReLU}(x W_{i,e}^\top) W_{o,e}^\top @f$ (no bias, no dropout) with
 * @f$ W_{\cdot,e} = \mathrm{MPO}(A_{1,e}, A_{2,e}, C, A_{3,e}, A_{4,e}) @f$: the central tensor C of each
 * matrix is **one** parameter shared by every expert, the auxiliary tensors are per expert.
 *
 * Routing (`SwitchFFN`, after labml.ai): p = softmax(x Rᵀ + b) with a `nn.Linear(d_model, N)` router
 * (bias included), e = argmax p (ties: lowest index), y_t = g_t · f_e(x_t) with the gate applied to the
 * expert **output**: g = p_e / sg(p_e) (value 1, the router still gets a gradient; default) or g = p_e
 * (`scale_by_prob`). No capacity limit, no dropped tokens, no balance loss by default (MPOE adds none). The
 * router is a `Router` in `GateMode::switch_top1` (straight-through unless `scale_by_prob`, weight and bias
 * initialised like `nn.Linear`), so the bank gets its aux losses, jitter, token mask and NaN check.
 *
 * Parameters: `<prefix>.router.weight` `(N, d_model)`, `<prefix>.router.bias` `(N)`,
 * `<prefix>.wi.mpo.central` and `<prefix>.wo.mpo.central` (shared; frozen with `tensor_learn`),
 * `<prefix>.experts.<e>.wi.mpo.core_<k>` / `.wo.mpo.core_<k>` for every non-central k, shapes
 * `(d_k, i_k, j_k, d_{k+1})`. Count: router + Σ_{wi,wo} (|C| + N·Σ|A|) (`num_params`); T5-base full rank,
 * N = 8: 2·(2,359,296 + 8·184,720) per layer vs 2·8·2,359,296 for Switch.
 *
 * Forward: tokens are counting-sorted by expert; per expert with tokens, W_i and W_o are rebuilt from its
 * cores (`reconstruct`, cheapest chain order) and applied by two GEMMs over its contiguous group.
 * Backward: dW = dOᵀ·H per expert through `gemm`, then into its cores; the shared C receives the sum of
 * every expert's contribution (one gradient buffer). Cache: per expert the rebuilt W_i, W_o (2·|W|
 * each), the gathered x, hidden and output activations.
 * Shapes: x `(T, d_model)` → y `(T, d_model)`.
 * Initialisation: `load_dense(wi, wo)` decomposes a pretrained FFN and copies it into every expert, so the
 * step-0 output equals the dense FFN for any router (spec §3.4 b).
 */
template <class T>
class MpoeFfn {
 public:
  using Scalar = T;
  struct Cache {
    typename Router<T>::Cache router;   ///< the Switch router's cache (probs, topk_idx, aux statistics)
    Matrix<T> gates;                    ///< (T, N) gate values, non-zero at the chosen expert only
    std::vector<Index> expert;          ///< (T) chosen expert
    std::vector<Index> order;           ///< token ids sorted by expert
    std::vector<Index> offsets;         ///< (N+1) group boundaries in `order`
    std::vector<Matrix<T>> wi, wo;      ///< rebuilt weights of experts with tokens
    std::vector<Matrix<T>> xe, he, oe;  ///< gathered x (n_e, d_model), activated hidden (n_e, d_ff), output
    std::vector<Matrix<T>> fe;          ///< pre-activation hidden (n_e, d_ff), GELU experts only
  };

  explicit MpoeFfn(const MpoeConfig& config) : m_config(config) {
    PEMOE_CHECK_CONFIG(config.d_model > 0 && config.d_ff > 0 && config.n_experts > 0,
                       "MpoeFfn: d_model, d_ff and n_experts must be positive, got ", config.d_model, ", ",
                       config.d_ff, ", ", config.n_experts);
    PEMOE_CHECK_CONFIG(config.max_bond >= 1, "MpoeFfn: max_bond must be >= 1, got ", config.max_bond);
    if (m_config.wi_shape.row_modes.empty())
      m_config.wi_shape = propose_mpo_shape(config.d_ff, config.d_model, config.n_cores, true);
    if (m_config.wo_shape.row_modes.empty()) m_config.wo_shape = m_config.wi_shape.transposed();
    m_config.wi_shape.validate("MpoeFfn wi");
    m_config.wo_shape.validate("MpoeFfn wo");
    PEMOE_CHECK_CONFIG(m_config.wi_shape.rows() >= config.d_ff && m_config.wi_shape.cols() >= config.d_model,
                       "MpoeFfn: wi shape ", m_config.wi_shape.to_string(), " cannot hold (", config.d_ff,
                       ", ", config.d_model, ")");
    PEMOE_CHECK_CONFIG(m_config.wo_shape.rows() >= config.d_model && m_config.wo_shape.cols() >= config.d_ff,
                       "MpoeFfn: wo shape ", m_config.wo_shape.to_string(), " cannot hold (", config.d_model,
                       ", ", config.d_ff, ")");
    RouterConfig rc;
    rc.d_in = config.d_model;
    rc.n_experts = config.n_experts;
    rc.mode = GateMode::switch_top1;
    rc.straight_through = !config.scale_by_prob;
    rc.bias = true;
    rc.init = RouterInit::kaiming_uniform;
    rc.bias_init = RouterInit::kaiming_uniform;
    rc.aux = config.aux;
    rc.jitter = config.jitter;
    m_router = Router<T>(rc);
    if (config.activation != "relu") m_gelu.emplace(gelu_kind_from_hf(config.activation));
    m_mat[0].init(m_config.wi_shape, config.max_bond, config.d_ff, config.d_model);
    m_mat[1].init(m_config.wo_shape, config.max_bond, config.d_model, config.d_ff);
  }

  /// Total parameters of a bank with this configuration: router N·(d_model+1) + Σ_{wi,wo} (|C| + N·Σ|A|).
  static Index num_params(const MpoeConfig& config) {
    const MpoeFfn probe(config);
    Index p = config.n_experts * (config.d_model + 1) + (config.bias ? config.d_ff + config.d_model : 0);
    for (const auto& m : probe.m_mat) {
      const MpoShape& s = m.shape;
      p += s.core_params(s.central(), m.bonds) +
           config.n_experts * (s.num_params(m.bonds) - s.core_params(s.central(), m.bonds));
    }
    return p;
  }

  /// Declares router, shared central tensors and per-expert auxiliary tensors; initialises the router like
  /// `nn.Linear` and the experts (all identical) from kaiming-uniform dense `wi`, `wo`.
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_store = &store;
    m_name = prefix;
    const Index N = m_config.n_experts, d = m_config.d_model;
    m_router.register_params(store, prefix + ".router", rng);
    if (m_config.bias) {
      m_bi = store.add(prefix + ".wi.bias", {m_config.d_ff});
      m_bo = store.add(prefix + ".wo.bias", {m_config.d_model});
    }
    const char* names[2] = {"wi", "wo"};
    for (int w = 0; w < 2; ++w) {
      Mat& m = m_mat[w];
      const Index n = m.shape.n_cores(), c = m.shape.central();
      m.central = store.add(prefix + "." + names[w] + ".mpo.central", m.shape.core_shape(c, m.bonds),
                            !m_config.tensor_learn);
      m.cores.assign(std::size_t(N), std::vector<ParamId>(std::size_t(n), 0));
      for (Index e = 0; e < N; ++e)
        for (Index k = 0; k < n; ++k)
          m.cores[std::size_t(e)][std::size_t(k)] =
              k == c ? m.central
                     : store.add(prefix + ".experts." + std::to_string(e) + "." + names[w] + ".mpo.core_" +
                                     std::to_string(k),
                                 m.shape.core_shape(k, m.bonds));
    }
    Matrix<T> wi(m_config.d_ff, d), wo(d, m_config.d_ff);
    rng.split(prefix + ".wi.weight").fill_kaiming_uniform(wi.data(), wi.size(), d);
    rng.split(prefix + ".wo.weight").fill_kaiming_uniform(wo.data(), wo.size(), m_config.d_ff);
    load_dense(wi, wo);
  }

  /**
   * MPOE initialisation (spec §2.3): decomposes a pretrained dense FFN — `wi` `(d_ff, d_model)`, `wo`
   * `(d_model, d_ff)`, PyTorch layout — sets the shared central tensors and copies the auxiliary tensors
   * into every expert. Returns the larger relative truncation error of the two (0 at full rank).
   */
  double load_dense(ConstMatrixRef<T> wi, ConstMatrixRef<T> wo, const T* wi_bias = nullptr,
                    const T* wo_bias = nullptr) {
    check_bound();
    if (m_config.bias) {
      T* bi = m_store->value(m_bi);
      T* bo = m_store->value(m_bo);
      if (wi_bias)
        std::copy(wi_bias, wi_bias + m_config.d_ff, bi);
      else
        std::fill(bi, bi + m_config.d_ff, T(0));
      if (wo_bias)
        std::copy(wo_bias, wo_bias + m_config.d_model, bo);
      else
        std::fill(bo, bo + m_config.d_model, T(0));
    }
    check_shape(site(), "wi", wi, m_config.d_ff, m_config.d_model);
    check_shape(site(), "wo", wo, m_config.d_model, m_config.d_ff);
    double err = 0;
    for (int w = 0; w < 2; ++w) {
      Mat& m = m_mat[w];
      TruncationPolicy pol;
      pol.max_bond = m_config.max_bond;
      const Mpo<T> mpo = decompose<T>(w == 0 ? wi : wo, m.shape, pol, m_config.gauge);
      err = std::max(err, mpo.relative_truncation_error());
      for (Index e = 0; e < m_config.n_experts; ++e)
        for (Index k = 0; k < m.shape.n_cores(); ++k) {
          const auto& c = mpo.cores[std::size_t(k)];
          std::copy(c.data(), c.data() + c.size(), m_store->value(m.cores[std::size_t(e)][std::size_t(k)]));
        }
    }
    return err;
  }

  /// y_t = g_t·ReLU(x_t W_{i,e}ᵀ) W_{o,e}ᵀ, e = argmax softmax(x_t Rᵀ + b).
  /// x: (T, d_model) -> y: (T, d_model)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& cache) {
    check_bound();
    const Index Tn = x.rows(), N = m_config.n_experts, d = m_config.d_model, f = m_config.d_ff;
    PEMOE_CHECK_SHAPE(x.cols() == d, site(), ": x has ", x.cols(), " features, layer expects ", d);
    check_shape(site(), "y", y, Tn, d);
    check_no_alias(site(), x, y);
    // router (Switch top-1): gates (T, N), the chosen expert in topk_idx(:, 0)
    cache.gates.resize(Tn, N);
    m_router.forward(x, cache.gates, cache.router);
    cache.expert.assign(std::size_t(Tn), 0);
    for (Index t = 0; t < Tn; ++t) cache.expert[std::size_t(t)] = cache.router.topk_idx(t, 0);
    // counting sort of tokens by expert
    cache.offsets.assign(std::size_t(N + 1), 0);
    for (Index t = 0; t < Tn; ++t) ++cache.offsets[std::size_t(cache.expert[std::size_t(t)] + 1)];
    for (Index e = 0; e < N; ++e) cache.offsets[std::size_t(e + 1)] += cache.offsets[std::size_t(e)];
    cache.order.assign(std::size_t(Tn), 0);
    {
      std::vector<Index> fill(cache.offsets.begin(), cache.offsets.end() - 1);
      for (Index t = 0; t < Tn; ++t)
        cache.order[std::size_t(fill[std::size_t(cache.expert[std::size_t(t)])]++)] = t;
    }
    cache.wi.assign(std::size_t(N), Matrix<T>());
    cache.wo.assign(std::size_t(N), Matrix<T>());
    cache.xe.assign(std::size_t(N), Matrix<T>());
    cache.he.assign(std::size_t(N), Matrix<T>());
    cache.oe.assign(std::size_t(N), Matrix<T>());
    cache.fe.assign(m_gelu ? std::size_t(N) : 0, Matrix<T>());
    for (Index e = 0; e < N; ++e) {
      const Index begin = cache.offsets[std::size_t(e)], ne = cache.offsets[std::size_t(e + 1)] - begin;
      if (ne == 0) continue;
      const auto u = std::size_t(e);
      cache.wi[u] = rebuild(0, e);  // (d_ff, d_model)
      cache.wo[u] = rebuild(1, e);  // (d_model, d_ff)
      Matrix<T>& xe = cache.xe[u];
      xe.resize(ne, d);
      for (Index r = 0; r < ne; ++r) xe.row(r) = x.row(cache.order[std::size_t(begin + r)]);
      cache.he[u].resize(ne, f);
      Matrix<T>& pre = m_gelu ? cache.fe[u] : cache.he[u];
      pre.resize(ne, f);
      gemm<T>(Op::N, Op::T, T(1), xe, cache.wi[u], T(0), pre);
      if (m_config.bias) pre.rowwise() += m_store->matrix(m_bi).row(0);
      if (m_gelu) {
        typename GELU<T>::Cache gc;
        m_gelu->forward(pre, cache.he[u], gc);
      } else {
        cache.he[u] = cache.he[u].cwiseMax(T(0));
      }
      cache.oe[u].resize(ne, d);
      gemm<T>(Op::N, Op::T, T(1), cache.he[u], cache.wo[u], T(0), cache.oe[u]);
      if (m_config.bias) cache.oe[u].rowwise() += m_store->matrix(m_bo).row(0);
      for (Index r = 0; r < ne; ++r) {
        const Index t = cache.order[std::size_t(begin + r)];
        y.row(t) = gate(cache, t) * cache.oe[u].row(r);
      }
    }
  }

  /// Accumulates the router, shared-central and auxiliary gradients; writes dx.
  /// x: (T, d_model), dy: (T, d_model) -> dx: (T, d_model)
  void backward(ConstMatrixRef<T> x, const Cache& cache, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    check_bound();
    const Index Tn = x.rows(), N = m_config.n_experts, d = m_config.d_model, f = m_config.d_ff;
    check_shape(site(), "x", x, -1, d);
    check_shape(site(), "dy", dy, Tn, d);
    check_shape(site(), "cache.gates (did forward run on this x?)", cache.gates, Tn, N);
    if (dx) {
      check_shape(site(), "dx", *dx, Tn, d);
      dx->setZero();
    }
    Matrix<T> dgates = Matrix<T>::Zero(Tn, N);  // dL/dg_{t,e} = <dy_t, f_e(x_t)> at the chosen expert
    for (Index e = 0; e < N; ++e) {
      const Index begin = cache.offsets[std::size_t(e)], ne = cache.offsets[std::size_t(e + 1)] - begin;
      if (ne == 0) continue;
      const auto u = std::size_t(e);
      Matrix<T> doe(ne, d);  // dL/d f_e(x) = g·dy
      for (Index r = 0; r < ne; ++r) {
        const Index t = cache.order[std::size_t(begin + r)];
        doe.row(r) = gate(cache, t) * dy.row(t);
        dgates(t, e) = dy.row(t).dot(cache.oe[u].row(r));
      }
      // wo: dWo = doeᵀ·H (d_model, d_ff)
      backprop_weight(1, e, doe, cache.he[u]);
      if (m_config.bias && m_store->trainable(m_bo)) m_store->grad_matrix(m_bo) += doe.colwise().sum();
      // dH = doe·Wo, then through the activation: ⊙ 1[H > 0] (ReLU) or ⊙ gelu'(pre-activation)
      Matrix<T> dh(ne, f);
      gemm<T>(Op::N, Op::N, T(1), doe, cache.wo[u], T(0), dh);
      if (m_gelu) {
        typename GELU<T>::Cache gc;
        m_gelu->backward(cache.fe[u], gc, dh, dh);
      } else {
        dh = (cache.he[u].array() > T(0)).select(dh, T(0));
      }
      if (m_config.bias && m_store->trainable(m_bi)) m_store->grad_matrix(m_bi) += dh.colwise().sum();
      backprop_weight(0, e, dh, cache.xe[u]);
      if (dx) {
        Matrix<T> dxe(ne, d);
        gemm<T>(Op::N, Op::N, T(1), dh, cache.wi[u], T(0), dxe);
        for (Index r = 0; r < ne; ++r) dx->row(cache.order[std::size_t(begin + r)]) = dxe.row(r);
      }
    }
    m_router.backward(x, cache.router, dgates, dx, InputGrad::add);  // through the gate into R, b and dx
  }

  /// Router noise/jitter act only in training.
  void set_training(bool on) { m_router.set_training(on); }
  /// Aux loss of the last forward (see `Router::aux_loss`).
  double aux_loss(const Cache& cache) const { return m_router.aux_loss(cache.router); }
  Router<T>& router() { return m_router; }
  const Router<T>& router() const { return m_router; }

  /// The dense `wi` `(d_ff, d_model)` of expert e.
  Matrix<T> expert_wi(Index e) const { return rebuild(0, e); }
  /// The dense `wo` `(d_model, d_ff)` of expert e.
  Matrix<T> expert_wo(Index e) const { return rebuild(1, e); }
  /// The shared central tensor of `wi` (w = 0) or `wo` (w = 1).
  ParamId central_id(int w) const { return m_mat[w].central; }
  /// Core k of matrix w (0: wi, 1: wo) of expert e (the central id for k = central).
  ParamId core_id(int w, Index e, Index k) const { return m_mat[w].cores[std::size_t(e)][std::size_t(k)]; }
  ParamId router_weight_id() const { return m_router.weight_id(); }
  ParamId router_bias_id() const { return m_router.bias_id(); }
  const MpoeConfig& config() const { return m_config; }
  const std::string& name() const { return m_name; }

 private:
  struct Mat {
    MpoShape shape;
    std::vector<Index> bonds;
    detail::InterleaveMap map;
    Index rows = 0, cols = 0;
    ParamId central = 0;
    std::vector<std::vector<ParamId>> cores;  // [expert][k]
    void init(const MpoShape& s, Index max_bond, Index r, Index c) {
      shape = s;
      bonds = s.bond_dims(max_bond);
      map = detail::interleave_map(s);
      rows = r;
      cols = c;
    }
  };

  std::string site() const { return "MpoeFfn '" + m_name + "'"; }
  void check_bound() const {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "MpoeFfn: call register_params() before using the layer");
  }
  T gate(const Cache& cache, Index t) const { return cache.gates(t, cache.expert[std::size_t(t)]); }
  std::vector<detail::CoreView<T>> views(int w, Index e) const {
    const Mat& m = m_mat[w];
    std::vector<detail::CoreView<T>> v;
    for (Index k = 0; k < m.shape.n_cores(); ++k)
      v.push_back({m_store->value(m.cores[std::size_t(e)][std::size_t(k)]), m.bonds[std::size_t(k)],
                   m.shape.row_modes[k], m.shape.col_modes[k], m.bonds[std::size_t(k + 1)]});
    return v;
  }
  Matrix<T> rebuild(int w, Index e) const {
    const Mat& m = m_mat[w];
    return detail::rebuild(views(w, e), m.map, m.rows, m.cols);
  }
  // Matrix w of expert e: dW = dOutᵀ·In (rows, cols), then into its trainable cores (the shared central's
  // gradient accumulates over experts).
  void backprop_weight(int w, Index e, const Matrix<T>& dout, const Matrix<T>& in) {
    const Mat& m = m_mat[w];
    std::vector<T*> grads;
    bool any = false;
    for (ParamId id : m.cores[std::size_t(e)]) {
      grads.push_back(m_store->trainable(id) ? m_store->grad(id) : nullptr);
      any = any || grads.back();
    }
    if (!any) return;
    Matrix<T> dW(m.rows, m.cols);
    gemm<T>(Op::T, Op::N, T(1), dout, in, T(0), dW);
    const std::vector<T> dt = detail::interleave_as<T, T>(dW, m.shape, m.map);
    detail::chain_backward(views(w, e), dt.data(), grads);
  }

  MpoeConfig m_config;
  Mat m_mat[2];  // 0: wi, 1: wo
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
  Router<T> m_router;
  std::optional<GELU<T>> m_gelu;
  ParamId m_bi = 0, m_bo = 0;
};

}  // namespace pemoe

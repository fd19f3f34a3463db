/// @file mov.hpp
/// @brief `MoV`: mixture of (IA)³ vectors merged per token by a router (Zadouri et al. 2023, arXiv
/// 2309.05444).
#pragma once

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "pemoe/core/detail/parallel_rows.hpp"
#include "pemoe/core/detail/skinny_gemm.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/moe/router.hpp"
#include "pemoe/nn/linear.hpp"

namespace pemoe {

/// Configuration of a `MoV` adapter.
struct MoVConfig {
  Index n_experts = 4;  ///< E vectors per site (the reference trains MoV-10/30/60)
  Index heads = 1;  ///< H > 1 at attention sites: the activation is (N, H, d_head), routed per token and head
  RouterConfig router;  ///< defaults are for-ai's: soft, N(0, 0.02), no bias (d_in and E are filled in)
  RouterInput router_input = RouterInput::activation;  ///< activation (reference), layer_input or external
  bool base_trainable = false;                         ///< also train the wrapped linear
  /// Rows per panel of base GEMM + router + merge; 0 (default) = the whole call in one panel, so the base
  /// GEMM runs exactly as the dense layer's. Measured on a 2-core AVX-512 machine with a 32 MB L3: 512-row
  /// panels were 4-7 % slower at (2048, 768 -> 3072) and (4096, 1024 -> 1024), since Eigen re-packs W for
  /// every panel GEMM while the (N, d) output stays in L3 anyway. Set a row count to bound the working set.
  Index panel_rows = 0;

  /// for-ai MoV preset: E vectors (ones), soft router on the activation, N(0, 0.02), no bias.
  static MoVConfig for_ai(Index n_experts = 30, Index heads = 1) {
    MoVConfig c;
    c.n_experts = n_experts;
    c.heads = heads;
    c.router.mode = GateMode::soft;
    c.router.init = RouterInit::normal;
    c.router.init_std = 0.02;
    return c;
  }
};

/**
 * @brief MoV: @f$ y = h \odot m @f$, @f$ m = \sum_i g_i(u)\, l_i @f$: the E vectors l_i are merged per token
 * BEFORE they are applied (equal to mixing the E scaled outputs, which is never formed).
 *
 * - FFN site (heads = 1): h (N, d), `<prefix>.mov_scaling` (E, d), router kernel (E, d_u), gates (N, E).
 * - Attention K/V site (heads = H): h (N, H·d_head) read as (N, H, d_head), `<prefix>.mov_scaling`
 *   (H, E, d_head) (each head its own E vectors), ONE router kernel (E, d_head) shared across heads, gates
 *   (N·H, E): routing per token and head from that head's vector. With a per-token router input (the layer
 *   input, or an external u with N rows) the gates (N, E) are shared by the heads.
 * - h is either the input itself (`MoV(d, config)`, a standalone activation scaler) or the output of a frozen
 *   linear (`MoV(base, config)`, h = x W^T + b); the router reads h (`activation`, the reference), the
 *   linear's input x (`layer_input`) or a caller's u (`external`).
 *
 * After the base GEMM (one call over all rows, or `panel_rows` at a time) the router, the merge and the scale
 * run tile by tile (32 rows, one tile per thread at a time) while the tile is in cache; the skinny products
 * ((t, d)·(d, E), (t, E)·(E, d)) go to `gemm`'s register-blocked kernels and the merge is applied as it is
 * formed (M is never stored). Vectors init to ones, so the layer starts as the identity for any router. Cost
 * beyond the base: 2·N·d·E (merge) + 2·N·H·d_u·E (router) forward, about twice that backward. Cache: h (N, d)
 * when there is a base, the gates and the router's cache.
 */
template <class T>
class MoV {
 public:
  using Scalar = T;
  /// What forward saves for backward (reused across calls to avoid reallocations).
  struct Cache {
    typename Linear<T>::Cache base;
    typename Router<T>::Cache router;
    Matrix<T> h;           ///< (N, d) base output (or a contiguous copy of a strided standalone input)
    Matrix<T> gates;       ///< (N·hg, E), hg = H (per head) or 1 (per token)
    Index gate_heads = 1;  ///< hg
  };

  /// Standalone: scales an activation (N, d), d = heads·d_head.
  MoV(Index d, const MoVConfig& config) : m_config(config), m_d(d) { init(0); }
  /// On a linear: scales its output (N, d_out).
  MoV(const LinearConfig& base, const MoVConfig& config) : m_config(config), m_d(base.d_out) {
    LinearConfig b = base;
    b.trainable = config.base_trainable;
    m_base.emplace(b);
    init(base.d_in);
  }

  /// Declares `<prefix>.mov_scaling` (ones), the router `<prefix>.router.*` and the base linear.
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    if (m_base) m_base->register_params(store, prefix, rng);
    m_store = &store;
    m_name = prefix;
    const Index e = m_config.n_experts, hh = m_config.heads;
    m_l = hh == 1 ? store.add(prefix + ".mov_scaling", {e, m_d})
                  : store.add(prefix + ".mov_scaling", {hh, e, m_d / hh});
    std::fill(store.value(m_l), store.value(m_l) + e * m_d, T(1));
    m_router.register_params(store, prefix + ".router", rng);
  }

  /// Router input = the activation or the layer input.   x: (N, d_in) -> y: (N, d)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& cache) {
    require(false);
    run_forward(x, x, y, cache);
  }
  /// Router input = u: (N·H, d_u) per token and head, or (N, d_u) per token.
  void forward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, MatrixRef<T> y, Cache& cache) {
    require(true);
    run_forward(x, u, y, cache);
  }
  /// x: (N, d_in), dy: (N, d) -> dx: (N, d_in).
  void backward(ConstMatrixRef<T> x, const Cache& cache, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    require(false);
    run_backward(x, x, cache, dy, dx, std::nullopt);
  }
  /// External router input: also writes du when given.
  void backward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, const Cache& cache, ConstMatrixRef<T> dy,
                GradOut<T> dx = std::nullopt, GradOut<T> du = std::nullopt) {
    require(true);
    run_backward(x, u, cache, dy, dx, du);
  }

  void set_training(bool on) { m_router.set_training(on); }

  /// The vectors as a (H·E, d_head) matrix (for H = 1: (E, d)).
  MatrixMap<T> scaling_vectors() const { return m_store->matrix(m_l); }
  ParamId scaling_id() const { return m_l; }
  Router<T>& router() { return m_router; }
  const Router<T>& router() const { return m_router; }
  bool has_base() const { return m_base.has_value(); }
  Linear<T>& base() { return *m_base; }
  const MoVConfig& config() const { return m_config; }
  const std::string& name() const { return m_name; }
  double aux_loss(const Cache& cache) const { return m_router.aux_loss(cache.router); }

 private:
  void init(Index base_d_in) {
    const auto& c = m_config;
    PEMOE_CHECK_CONFIG(m_d > 0 && c.n_experts > 0 && c.heads > 0 && m_d % c.heads == 0,
                       "MoV: d must be a positive multiple of heads and E positive, got d=", m_d,
                       " heads=", c.heads, " E=", c.n_experts);
    PEMOE_CHECK_CONFIG(c.panel_rows >= 0, "MoV: panel_rows must be 0 (whole call) or positive, got ",
                       c.panel_rows);
    PEMOE_CHECK_CONFIG(c.router_input != RouterInput::layer_input || base_d_in > 0,
                       "MoV: router input 'layer_input' needs a base linear (use MoV(base, config))");
    RouterConfig rc = c.router;
    rc.n_experts = c.n_experts;
    if (c.router_input == RouterInput::activation) rc.d_in = m_d / c.heads;
    if (c.router_input == RouterInput::layer_input) rc.d_in = base_d_in;
    PEMOE_CHECK_CONFIG(rc.d_in > 0, "MoV: an external router input needs config.router.d_in");
    m_router = Router<T>(rc);
  }
  std::string site() const { return "MoV '" + m_name + "'"; }
  void require(bool external) const {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "MoV: call register_params() before forward/backward");
    PEMOE_CHECK_CONFIG((m_config.router_input == RouterInput::external) == external, site(),
                       ": the router input is configured as ",
                       external ? "internal; call forward(x, y, cache)" : "external; pass u");
  }
  Index d_in() const { return m_base ? m_base->config().d_in : m_d; }
  Index panel(Index n) const { return m_config.panel_rows > 0 ? m_config.panel_rows : std::max<Index>(n, 1); }

  static constexpr Index kTile = 32;  // rows per tile of the merge GEMMs (the tile stays in L1/L2)

  // out (t, d) = S ⊙ M for t rows, M = the merged vectors of rows whose gates start at `gates` ((t, hg·E)
  // row-major): per head M[:, head] = G[:, head's E gates]·L_head, a (t, E)·(E, d_head) product scaling S on
  // its way out (M itself is never stored). It calls the skinny kernel directly, not `gemm`: a product whose
  // result is multiplied elementwise on its way out is not something `gemm` expresses.
  void mix_scaled(const T* gates, Index t, Index hg, const T* S, Index lds, T* out, Index ldo) const {
    const Index e = m_config.n_experts, hh = m_config.heads, dh = m_d / hh;
    const T* L = m_store->value(m_l);
    for (Index h = 0; h < hh; ++h)
      detail::skinny_ab(gates + (hg == 1 ? 0 : h) * e, hg * e, L + h * e * dh, dh, t, e, dh,
                        detail::ScaledOut<T>{S + h * dh, lds, out + h * dh, ldo});
  }

  void run_forward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, MatrixRef<T> y, Cache& c) {
    const Index n = x.rows(), hh = m_config.heads, dh = m_d / hh, e = m_config.n_experts, P = panel(n);
    PEMOE_CHECK_SHAPE(x.cols() == d_in(), site(), ": x has ", x.cols(), " features, layer expects ", d_in());
    check_shape(site(), "y", y, n, m_d);
    check_no_alias(site(), x, y);
    const auto in = m_config.router_input;
    if (in == RouterInput::external) check_no_alias(site(), u, y);
    Index hg = in == RouterInput::activation ? hh : 1;
    if (in == RouterInput::external) {
      PEMOE_CHECK_SHAPE(u.rows() == n * hh || u.rows() == n, site(), ": router input has ", u.rows(),
                        " rows, expected N·H = ", n * hh, " (per head) or N = ", n, " (per token)");
      hg = u.rows() == n * hh ? hh : 1;
    }
    c.gate_heads = hg;
    c.gates.resize(n * hg, e);
    const bool own_h = m_base || x.outerStride() != m_d;
    if (!m_base && own_h) c.h = x;
    if (m_base) c.h.resize(n, m_d);
    if (!own_h) c.h.resize(0, 0);
    m_router.begin_forward(n * hg, c.router);
    for (Index r0 = 0; r0 < n; r0 += P) {
      const Index m = std::min(P, n - r0);
      if (m_base) {  // the panel of the base GEMM; everything below reads it while it is in cache
        auto hp = c.h.middleRows(r0, m);
        m_base->product(x.middleRows(r0, m), hp);
        if (m_base->config().bias) hp.rowwise() += m_base->bias().row(0);
      }
      const T* hptr = own_h ? c.h.data() + r0 * m_d : x.data() + r0 * m_d;
      auto gp = c.gates.middleRows(r0 * hg, m * hg);
      if (in == RouterInput::activation) {
        // routed per tile below, while the tile of h is in cache
      } else if (in == RouterInput::layer_input)
        m_router.forward_rows(x.middleRows(r0, m), r0, gp, c.router);
      else
        m_router.forward_rows(u.middleRows(r0 * hg, m * hg), r0 * hg, gp, c.router);
      detail::parallel_rows(m, detail::row_blocks(m), [&](int, Index i0, Index i1) {
        for (Index i = i0; i < i1; i += kTile) {  // y = h ⊙ (G·L), a tile of rows at a time
          const Index t = std::min(kTile, i1 - i);
          if (in == RouterInput::activation)
            m_router.forward_rows(ConstMatrixMap<T>(hptr + i * m_d, t * hh, dh), (r0 + i) * hh,
                                  c.gates.middleRows((r0 + i) * hh, t * hh), c.router);
          mix_scaled(&c.gates((r0 + i) * hg, 0), t, hg, hptr + i * m_d, m_d, &y(r0 + i, 0), y.outerStride());
        }
      });
    }
    m_router.finish_forward(c.router);
  }

  void run_backward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, const Cache& c, ConstMatrixRef<T> dy,
                    GradOut<T> dx, GradOut<T> du) {
    const Index n = x.rows(), hh = m_config.heads, dh = m_d / hh, e = m_config.n_experts, P = panel(n);
    const Index hg = c.gate_heads;
    check_shape(site(), "x", x, -1, d_in());
    check_shape(site(), "dy", dy, n, m_d);
    if (dx) check_shape(site(), "dx", *dx, n, d_in());
    if (du) check_shape(site(), "du", *du, u.rows(), u.cols());
    if (m_config.router_input == RouterInput::external)
      PEMOE_CHECK_SHAPE(u.rows() == n * hg, site(), ": router input has ", u.rows(), " rows, forward routed ",
                        n * hg);
    PEMOE_CHECK_SHAPE(c.gates.rows() == n * hg, site(), ": the cache holds ", c.gates.rows() / hg,
                      " tokens, x has ", n, " (did forward run on this x?)");
    const auto in = m_config.router_input;
    const bool own_h = c.h.size() != 0;
    const bool tl = m_store->trainable(m_l);
    const bool tw = m_base && m_store->trainable(m_base->weight_id());
    const bool tb = m_base && m_base->config().bias && m_store->trainable(m_base->bias_id());
    const T* L = m_store->value(m_l);
    const int blocks = detail::row_blocks(std::min(P, n));
    std::vector<Matrix<T>> dL(tl ? static_cast<std::size_t>(blocks) : 0);  // per-block partial dL/dL_vectors
    for (auto& d : dL) d.setZero(hh * e, dh);
    std::vector<typename Router<T>::Grads> rg(
        in == RouterInput::activation ? static_cast<std::size_t>(blocks) : 0,
        m_router.make_grads());  // per-block router gradients
    const Index cap = std::min(P, std::max<Index>(n, 1));
    // Workspaces kept across calls: a fresh (N, d) buffer (25 MB at N = 2048, d = 3072) page-faults on every
    // call.
    Matrix<T>& dH = m_dh;      // (panel, d) dL/dh
    Matrix<T>& dG = m_dgates;  // (panel, hg·E) dL/dgates
    dH.resize(cap, m_d);
    dG.resize(cap, hg * e);
    for (Index r0 = 0; r0 < n; r0 += P) {
      const Index m = std::min(P, n - r0);
      const T* hptr = own_h ? c.h.data() + r0 * m_d : x.data() + r0 * m_d;
      auto dGp = dG.topRows(m);
      dGp.setZero();
      auto dHp = dH.topRows(m);
      detail::parallel_rows(m, std::min(blocks, detail::row_blocks(m)), [&](int b, Index i0, Index i1) {
        Matrix<T> At(std::min(kTile, std::max<Index>(i1 - i0, 1)), m_d);
        for (Index i = i0; i < i1; i += kTile) {  // one pass over dy and h per tile of rows
          const Index t = std::min(kTile, i1 - i);
          const auto dyt = dy.middleRows(r0 + i, t);
          auto A = At.topRows(t);
          A = dyt.cwiseProduct(ConstMatrixMap<T>(hptr + i * m_d, t, m_d));  // dL/dm
          ConstMatrixMap<T> G2(&c.gates((r0 + i) * hg, 0), t, hg * e);
          for (Index h = 0; h < hh; ++h) {
            const Index gh = (hg == 1 ? 0 : h) * e;
            const ConstMatrixMap<T> Lh(L + h * e * dh, e, dh);
            gemm<T>(Op::N, Op::T, T(1), A.middleCols(h * dh, dh), Lh, T(1), dGp.block(i, gh, t, e));
            if (tl)
              gemm<T>(Op::T, Op::N, T(1), G2.middleCols(gh, e), A.middleCols(h * dh, dh), T(1),
                      dL[static_cast<std::size_t>(b)].middleRows(h * e, e));
          }
          mix_scaled(G2.data(), t, hg, dyt.data(), dy.outerStride(), dHp.data() + i * m_d,
                     m_d);                      // dy ⊙ (G·L)
          if (in == RouterInput::activation) {  // the router's backward on the same tile, into dh
            MatrixMap<T> du_t(dHp.data() + i * m_d, t * hh, dh);
            m_router.backward_rows(ConstMatrixMap<T>(hptr + i * m_d, t * hh, dh), (r0 + i) * hh, c.router,
                                   ConstMatrixMap<T>(dGp.data() + i * hh * e, t * hh, e), MatrixRef<T>(du_t),
                                   InputGrad::add, &rg[static_cast<std::size_t>(b)]);
          }
        }
      });
      MatrixMap<T> dG_rows(dGp.data(), m * hg, e);
      if (in == RouterInput::external) {
        if (du)
          m_router.backward_rows(u.middleRows(r0 * hg, m * hg), r0 * hg, c.router, dG_rows,
                                 MatrixRef<T>(du->middleRows(r0 * hg, m * hg)));
        else
          m_router.backward_rows(u.middleRows(r0 * hg, m * hg), r0 * hg, c.router, dG_rows);
      }
      if (m_base) {
        if (tw)
          gemm<T>(Op::T, Op::N, T(1), dHp, x.middleRows(r0, m), T(1),
                  m_store->grad_matrix(m_base->weight_id()));
        if (tb) m_store->grad_matrix(m_base->bias_id()) += dHp.colwise().sum();
        if (dx) m_base->input_grad(dHp, dx->middleRows(r0, m));
      } else if (dx) {
        dx->middleRows(r0, m) = dHp;
      }
      if (in == RouterInput::layer_input) {
        if (dx)
          m_router.backward_rows(x.middleRows(r0, m), r0, c.router, dG_rows,
                                 MatrixRef<T>(dx->middleRows(r0, m)), InputGrad::add);
        else
          m_router.backward_rows(x.middleRows(r0, m), r0, c.router, dG_rows);
      }
    }
    if (tl) {
      auto gL = m_store->grad_matrix(m_l);  // (H·E, d_head); blocks reduced in a fixed order
      for (const auto& d : dL) gL += d;
    }
    for (const auto& g : rg) m_router.add_grads(g);
  }

  MoVConfig m_config;
  Index m_d;
  std::optional<Linear<T>> m_base;
  Router<T> m_router;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
  ParamId m_l = 0;
  Matrix<T> m_dh;      // backward's dL/dh workspace, reused across calls
  Matrix<T> m_dgates;  // backward's dL/dgates workspace, reused across calls
};

}  // namespace pemoe

/// @file sparse_lora.hpp
/// @brief `SparseLoRAExperts`: top-k mixture of LoRA experts computing only the selected experts, token by
/// token over the selected expert rows (MoLA, Gao et al. 2024, arXiv 2402.08562).
#pragma once

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include "pemoe/adapters/detail/routed_lora_layer.hpp"
#include "pemoe/adapters/detail/selected_rows.hpp"
#include "pemoe/core/detail/parallel_rows.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/moe/topk.hpp"

namespace pemoe {

/// What `SparseLoRAExperts` forward saves for backward (reused across calls to avoid reallocations).
template <class T>
struct SparseLoRAExpertsCache : detail::RoutedLoraCache<T> {
  int blocks = 1;            ///< token blocks (one per thread); backward splits the tokens the same way
  IndexMatrix experts;       ///< (N, k) each token's selected experts in increasing order
  std::vector<Index> order;  ///< (N) each block's tokens sorted by their selected set, then by index
  Matrix<T> h;  ///< (N, k·r): columns [j·r, (j+1)·r) = x̃_t·A_eᵀ, e = experts(t, j) (before the gate)
  Matrix<T> a_rows;  ///< (E·r, ≥ d_in) = A_cat in padded rows (detail::selected_rows_ld)
  Matrix<T> b_rows;  ///< (E·r, ≥ d_out) = B_catᵀ in padded rows: row e·r + ρ is column ρ of B_e
};

/**
 * @brief Sparse top-k LoRA experts: @f$ y = x W_0^\top + b + s \sum_{e \in S(u)} g_e(u)\,
 * (\tilde x A_e^\top) B_e^\top @f$, S = the router's selected set (k experts per token), x̃ = dropout(x),
 * s = alpha/r. The default preset (`LoraExpertsConfig::mola`) is MoLA's: `topk_renorm`, k = 2, r = 8, alpha
 * 16, dropout 0.05, kaiming-uniform A and router, B = 0.
 *
 * Tokens grouped by their selected set (adapters/detail/selected_rows.hpp): each thread sorts its block of
 * tokens by the set (E = 8, k = 2: 28 sets), and a tile of 4 tokens of one set reads the set's k·r rows of
 * A_cat (E·r, d_in) and B_catᵀ (E·r, d_out) once: H = x̃·A_rowsᵀ, y += (s·g·H)·B_rows, and in backward one
 * pass over dy for both dL/dH and dB_rows += (s·g·H)ᵀ·dy. The tokens' rows of x, y, dy and dx are read and
 * written in place: a grouped GEMM over (token, expert) assignments (DESIGN §7) gathers each token's rows
 * once per selected expert and scatter-adds k partial outputs back, which costs more than the products
 * when k·r is a few dozen. No atomics: each thread owns a block of tokens, with its own expert gradients
 * reduced in block order. Only the selected experts are computed: expert FLOPs are k/E of the soft
 * `MoLoRA`'s.
 *
 * Parameters: as `MoLoRA` (`lora_A.weight` (E, r, d_in), `lora_B.weight` (E, d_out, r), `router.weight`).
 * Shapes: x (N, d_in) -> y (N, d_out). Cache: the router's, each token's selected experts, H (N, k·r),
 * A_cat and B_catᵀ in padded rows. Cost beyond the base: forward 2·N·k·r·(d_in + d_out), backward twice that.
 * The gate mode must select experts (topk_mask, topk_renorm, noisy_topk or switch_top1); with k = E and
 * topk_renorm it equals the soft MoLoRA.
 */
template <class T>
class SparseLoRAExperts : public detail::RoutedLoraLayer<SparseLoRAExperts<T>, T, SparseLoRAExpertsCache<T>> {
  using Base = detail::RoutedLoraLayer<SparseLoRAExperts<T>, T, SparseLoRAExpertsCache<T>>;
  friend Base;

 public:
  using Base::scaling;
  using typename Base::Cache;

  SparseLoRAExperts(const LinearConfig& base, const LoraExpertsConfig& config)
      : Base("SparseLoRAExperts", base, config) {
    PEMOE_CHECK_CONFIG(config.router.mode != GateMode::soft,
                       "SparseLoRAExperts: gate mode 'soft' selects no experts; use MoLoRA for soft merging");
  }

  /// Tokens routed to expert e by the last forward.
  static Index group_size(const Cache& cache, Index e) {
    return static_cast<Index>((cache.experts.array() == e).count());
  }

 private:
  using Base::m_bank;
  using Base::m_base;
  using Base::m_config;
  using Base::m_dropout;
  using Base::m_router;
  using Base::site;

  static constexpr Index kMinTokensPerThread = 64;
  static constexpr int kTile = detail::kSelectedTile;

  // Records each token's selected set (increasing) and, per token block, the tokens sorted by it.
  void group(Cache& c, Index n) const {
    const IndexMatrix& idx = c.router.topk_idx;
    c.experts = idx;
    for (Index t = 0; t < n; ++t) std::sort(&c.experts(t, 0), &c.experts(t, 0) + idx.cols());
    c.order.resize(static_cast<std::size_t>(n));
    std::iota(c.order.begin(), c.order.end(), Index(0));
    for (int b = 0; b < c.blocks; ++b) {
      const auto t0 = c.order.begin() + n * b / c.blocks, t1 = c.order.begin() + n * (b + 1) / c.blocks;
      std::stable_sort(t0, t1, [&](Index a, Index z) {
        return std::lexicographical_compare(&c.experts(a, 0), &c.experts(a, 0) + idx.cols(), &c.experts(z, 0),
                                            &c.experts(z, 0) + idx.cols());
      });
    }
  }

  // Calls f(tile size as std::integral_constant, tokens) for the tiles of block [t0, t1) of c.order: runs of
  // one selected set, kTile tokens at a time, the rest of a run as one smaller tile (GPT-2 at B·T = 256 on
  // two threads leaves about 4.6 tokens per set of top-2 of 8).
  template <class F>
  static void for_each_tile(const Cache& c, Index t0, Index t1, F&& f) {
    const Index k = c.experts.cols();
    const Index* tok = c.order.data();
    auto same = [&](Index a, Index z) {
      return std::equal(&c.experts(a, 0), &c.experts(a, 0) + k, &c.experts(z, 0));
    };
    for (Index i = t0; i < t1;) {
      Index j = i + 1;
      while (j < t1 && same(tok[i], tok[j])) ++j;
      Index q = i;
      for (; q + kTile <= j; q += kTile) f(std::integral_constant<int, kTile>{}, tok + q);
      static_assert(kTile == 4, "the rest of a run below is a tile of 3, 2 or 1 tokens");
      if (j - q == 3) f(std::integral_constant<int, 3>{}, tok + q);
      if (j - q == 2) f(std::integral_constant<int, 2>{}, tok + q);
      if (j - q == 1) f(std::integral_constant<int, 1>{}, tok + q);
      i = j;
    }
  }

  // The k·r stacked rows e·r + ρ of a token's selected set.
  void set_rows(const Cache& c, Index t, Index* rows) const {
    const Index r = m_config.r;
    for (Index j = 0; j < c.experts.cols(); ++j)
      for (Index q = 0; q < r; ++q) rows[j * r + q] = c.experts(t, j) * r + q;
  }

  // coef(i, j·r + ρ) = s·g_e·h(t, j·r + ρ) for the tile's tokens: the forward's mixing weights, which are
  // also the dB outer-product weights.
  void mixing_weights(const Cache& c, const Index* tok, int tt, Matrix<T>& coef) const {
    const Index r = m_config.r;
    for (int i = 0; i < tt; ++i)
      for (Index j = 0; j < c.experts.cols(); ++j) {
        const T sg = scaling() * c.gates(tok[i], c.experts(tok[i], j));
        for (Index q = j * r; q < (j + 1) * r; ++q) coef(i, q) = sg * c.h(tok[i], q);
      }
  }

  void run_forward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, MatrixRef<T> y, Cache& c) {
    const Index n = x.rows(), d_in = m_base.config().d_in, d_out = m_base.config().d_out, r = m_config.r;
    const Index ne = m_config.n_experts;
    PEMOE_CHECK_SHAPE(x.cols() == d_in, site(), ": x has ", x.cols(), " features, layer expects ", d_in);
    PEMOE_CHECK_SHAPE(u.rows() == n, site(), ": router input has ", u.rows(), " rows, x has ", n);
    c.gates.resize(n, ne);
    m_router.forward(u, c.gates, c.router);
    if (m_dropout.active()) {
      c.x_dropped.resize(n, d_in);
      m_dropout.forward(x, c.x_dropped, c.dropout);
    } else {
      c.x_dropped.resize(0, 0);
    }
    const bool dropped = c.x_dropped.size() != 0;
    const ConstMatrixRef<T> xs = dropped ? ConstMatrixRef<T>(c.x_dropped) : x;  // the experts' input
    const Index kr = c.router.topk_idx.cols() * r;
    c.blocks = detail::row_blocks(n, kMinTokensPerThread);
    group(c, n);
    c.h.resize(n, kr);
    c.a_rows.resize(ne * r, detail::selected_rows_ld<T>(d_in));
    c.a_rows.leftCols(d_in) = m_bank.A_cat();
    c.b_rows.resize(ne * r, detail::selected_rows_ld<T>(d_out));
    for (Index e = 0; e < ne; ++e) c.b_rows.block(e * r, 0, r, d_out) = m_bank.B(e).transpose();
    const Index lda = c.a_rows.cols(), ldb = c.b_rows.cols();
    detail::parallel_rows(n, c.blocks, [&](int, Index t0, Index t1) {
      std::vector<Index> rows(static_cast<std::size_t>(kr));
      Matrix<T> h(kTile, kr), coef(kTile, kr);
      for_each_tile(c, t0, t1, [&](auto tile, const Index* tok) {
        constexpr int tt = decltype(tile)::value;
        set_rows(c, tok[0], rows.data());
        const T* xp[tt];
        T* yp[tt];
        for (int i = 0; i < tt; ++i) {
          xp[i] = xs.data() + tok[i] * xs.outerStride();
          yp[i] = y.data() + tok[i] * y.outerStride();
        }
        h.setZero();  // H = x̃ · A_rowsᵀ
        detail::dot_and_accumulate_selected_rows<tt, T>(xp, d_in, c.a_rows.data(), lda, rows.data(), kr,
                                                        h.data(), kr, nullptr, 0, nullptr, 0);
        for (int i = 0; i < tt; ++i) c.h.row(tok[i]) = h.row(i);
        mixing_weights(c, tok, tt, coef);  // y = (s·g·H) · B_rows
        detail::add_selected_rows<tt, T, false>(c.b_rows.data(), ldb, rows.data(), kr, coef.data(), kr, d_out,
                                                yp);
      });
    });
    // the base product adds x·Wᵀ + b in its epilogue: y is written once by the tiles and read once by it
    m_base.forward(x, y, c.base, Output::add);
  }

  void run_backward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, const Cache& c, ConstMatrixRef<T> dy,
                    GradOut<T> dx, GradOut<T> du) {
    const Index n = x.rows(), d_in = m_base.config().d_in, d_out = m_base.config().d_out, r = m_config.r;
    const Index ne = m_config.n_experts, k = c.experts.cols(), kr = k * r;
    PEMOE_CHECK_SHAPE(
        c.gates.rows() == n && c.h.rows() == n && c.experts.rows() == n &&
            static_cast<Index>(c.order.size()) == n && c.a_rows.rows() == ne * r && c.b_rows.rows() == ne * r,
        site(), ": the cache holds ", c.gates.rows(), " tokens, x has ", n, " (did forward run on this x?)");
    const bool dropped = c.x_dropped.size() != 0;
    const ConstMatrixRef<T> xs = dropped ? ConstMatrixRef<T>(c.x_dropped) : x;
    const T s = scaling();
    Matrix<T> dgates = Matrix<T>::Zero(n, ne);
    const bool ta = m_bank.a_trainable(), tb = m_bank.b_trainable();
    const int blocks = c.blocks;
    const Index lda = c.a_rows.cols(), ldb = c.b_rows.cols();
    // Per-block expert gradients in padded rows, reduced in block order afterwards: deterministic, no
    // atomics. dB is accumulated transposed, as rows of dB_catᵀ (E·r, d_out), the layout the tiles stream.
    m_dbt.resize(tb ? static_cast<std::size_t>(blocks) : 0);
    for (auto& g : m_dbt) g.setZero(ne * r, ldb);
    m_da.resize(ta ? static_cast<std::size_t>(blocks) : 0);
    for (auto& g : m_da) g.setZero(ne * r, lda);
    detail::parallel_rows(n, blocks, [&](int b, Index t0, Index t1) {
      const auto bi = static_cast<std::size_t>(b);
      std::vector<Index> rows(static_cast<std::size_t>(kr));
      Matrix<T> coef(kTile, kr), dh(kTile, kr);
      T* dbt = tb ? m_dbt[bi].data() : nullptr;
      T* da = ta ? m_da[bi].data() : nullptr;
      for_each_tile(c, t0, t1, [&](auto tile, const Index* tok) {
        constexpr int tt = decltype(tile)::value;
        set_rows(c, tok[0], rows.data());
        const T* dyp[tt];
        const T* xp[tt];
        for (int i = 0; i < tt; ++i) {
          dyp[i] = dy.data() + tok[i] * dy.outerStride();
          xp[i] = xs.data() + tok[i] * xs.outerStride();
        }
        mixing_weights(c, tok, tt, coef);
        dh.setZero();  // one pass over dy: dy·B_rowsᵀ, and dB_rows += (s·g·H)ᵀ·dy
        detail::dot_and_accumulate_selected_rows<tt, T>(dyp, d_out, c.b_rows.data(), ldb, rows.data(), kr,
                                                        dh.data(), kr, dbt, ldb, coef.data(), kr);
        for (int i = 0; i < tt; ++i)  // dL/dHg = s·dy·B_rowsᵀ; dL/dg_e = Σ_ρ dL/dHg·h; dL/dH = g_e·dL/dHg
          for (Index j = 0; j < k; ++j) {
            const Index e = c.experts(tok[i], j);
            const T g = c.gates(tok[i], e);
            T dg = T(0);
            for (Index q = j * r; q < (j + 1) * r; ++q) {
              const T dhg = s * dh(i, q);
              dg += dhg * c.h(tok[i], q);
              dh(i, q) = g * dhg;
            }
            dgates(tok[i], e) = dg;
          }
        if (da)  // dA_rows += dL/dHᵀ · x̃
          detail::dot_and_accumulate_selected_rows<tt, T>(xp, d_in, c.a_rows.data(), lda, rows.data(), kr,
                                                          nullptr, 0, da, lda, dh.data(), kr);
        if (!dx) return;
        T* dxp[tt];  // dx = dL/dH · A_rows (through the dropout mask); the base adds dy·W below
        for (int i = 0; i < tt; ++i) dxp[i] = dx->data() + tok[i] * dx->outerStride();
        detail::add_selected_rows<tt, T, false>(c.a_rows.data(), lda, rows.data(), kr, dh.data(), kr, d_in,
                                                dxp);
        if (dropped)
          for (int i = 0; i < tt; ++i)
            m_dropout.apply_mask_rows(c.dropout, tok[i], dx->middleRows(tok[i], 1));
      });
    });
    m_base.backward(x, c.base, dy, dx, InputGrad::add);
    for (const auto& g : m_da) m_bank.dA_cat() += g.leftCols(d_in);
    if (tb) {
      auto dB = m_bank.dB_stack();  // (E·d_out, r): dB_e(o, ρ) += Σ_blocks dB_catᵀ(e·r + ρ, o)
      for (const auto& g : m_dbt)
        for (Index e = 0; e < ne; ++e)
          dB.middleRows(e * d_out, d_out) += g.block(e * r, 0, r, d_out).transpose();
    }
    if (m_config.router_input == RouterInput::layer_input)
      m_router.backward(u, c.router, dgates, dx, InputGrad::add);
    else
      m_router.backward(u, c.router, dgates, du);
  }

  std::vector<Matrix<T>> m_dbt;  // backward's per-block dB_catᵀ (E·r, ≥ d_out), reused across calls
  std::vector<Matrix<T>> m_da;   // backward's per-block dA_cat (E·r, ≥ d_in), reused across calls
};

}  // namespace pemoe

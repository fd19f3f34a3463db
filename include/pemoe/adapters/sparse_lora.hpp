/// @file sparse_lora.hpp
/// @brief `SparseLoRAExperts`: top-k mixture of LoRA experts computing only the selected experts, by grouped
/// GEMM (MoLA, Gao et al. 2024, arXiv 2402.08562).
#pragma once

#include <algorithm>
#include <vector>

#include "pemoe/adapters/detail/routed_lora_layer.hpp"
#include "pemoe/core/detail/parallel_rows.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe {

/// What `SparseLoRAExperts` forward saves for backward (reused across calls to avoid reallocations).
template <class T>
struct SparseLoRAExpertsCache : detail::RoutedLoraCache<T> {
  int blocks = 1;              ///< token blocks (one per thread), each grouped on its own
  std::vector<Index> offsets;  ///< (blocks, E + 1): start of expert e's group of block b in `tokens`
  std::vector<Index> tokens;   ///< (N·k) token of each assignment, grouped by expert
  std::vector<T> weights;      ///< (N·k) gate weight of each assignment
  Matrix<T> h;                 ///< (N·k, r) x̃·A_eᵀ per assignment (before the gate)
};

/**
 * @brief Sparse top-k LoRA experts: @f$ y = x W_0^\top + b + s \sum_{e \in S(u)} g_e(u)\,
 * (\tilde x A_e^\top) B_e^\top @f$, S = the router's selected set (k experts per token), x̃ = dropout(x),
 * s = alpha/r. The default preset (`LoraExpertsConfig::mola`) is MoLA's: `topk_renorm`, k = 2, r = 8, alpha
 * 16, dropout 0.05, kaiming-uniform A and router, B = 0.
 *
 * Grouped GEMM (DESIGN §7): the N·k (token, expert) assignments are count-sorted by expert (tokens in
 * increasing order within a group, so results are deterministic); each expert's group is gathered into
 * contiguous rows, run through one GEMM pair (A_e then B_e, in chunks of `chunk_rows` rows so the gathered
 * rows and the partial outputs stay in cache), and scatter-added back with its gate weights. No per-token
 * GEMV, no atomics. Only the selected experts are computed: expert FLOPs are k/E of the soft `MoLoRA`'s.
 *
 * Parameters: as `MoLoRA` (`lora_A.weight` (E, r, d_in), `lora_B.weight` (E, d_out, r), `router.weight`).
 * Shapes: x (N, d_in) -> y (N, d_out). Cache: the router's, the sorted assignment list, H = x̃A_eᵀ per
 * assignment (N·k, r). Cost beyond the base: forward 2·N·k·r·(d_in + d_out), backward twice that.
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

  /// `chunk_rows`: rows of an expert's group per GEMM pair (the gathered rows and partial outputs stay in
  /// cache).
  SparseLoRAExperts(const LinearConfig& base, const LoraExpertsConfig& config, Index chunk_rows = 256)
      : Base("SparseLoRAExperts", base, config), m_chunk(chunk_rows) {
    PEMOE_CHECK_CONFIG(config.router.mode != GateMode::soft,
                       "SparseLoRAExperts: gate mode 'soft' selects no experts; use MoLoRA for soft merging");
    PEMOE_CHECK_CONFIG(chunk_rows > 0, "SparseLoRAExperts: chunk_rows must be positive");
  }

  /// Tokens routed to expert e by the last forward.
  static Index group_size(const Cache& cache, Index e) {
    const std::size_t stride = cache.offsets.size() / static_cast<std::size_t>(cache.blocks);
    Index n = 0;
    for (int b = 0; b < cache.blocks; ++b)
      n += cache.offsets[b * stride + e + 1] - cache.offsets[b * stride + e];
    return n;
  }

 private:
  using Base::m_bank;
  using Base::m_base;
  using Base::m_config;
  using Base::m_dropout;
  using Base::m_router;
  using Base::site;

  // Count-sort of the (token, expert) assignments by expert, separately in each token block [t0, t1) (whose
  // assignments occupy [t0·k, t1·k)); tokens stay in increasing order within a group.
  void group(Cache& c, int blocks) const {
    const Index n = c.gates.rows(), e = m_config.n_experts;
    const IndexMatrix& idx = c.router.topk_idx;
    const Index k = idx.cols();
    c.blocks = blocks;
    c.offsets.assign(static_cast<std::size_t>(blocks * (e + 1)), 0);
    c.tokens.resize(static_cast<std::size_t>(n * k));
    c.weights.resize(static_cast<std::size_t>(n * k));
    for (int b = 0; b < blocks; ++b) {
      const Index t0 = n * b / blocks, t1 = n * (b + 1) / blocks;
      Index* off = &c.offsets[static_cast<std::size_t>(b * (e + 1))];
      off[0] = t0 * k;
      for (Index t = t0; t < t1; ++t)
        for (Index j = 0; j < k; ++j) ++off[idx(t, j) + 1];
      for (Index i = 0; i < e; ++i) off[i + 1] += off[i];
      std::vector<Index> fill(off, off + e);
      for (Index t = t0; t < t1; ++t)
        for (Index j = 0; j < k; ++j) {
          const Index ex = idx(t, j), pos = fill[ex]++;
          c.tokens[pos] = t;
          c.weights[pos] = c.gates(t, ex);
        }
    }
  }

  void run_forward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, MatrixRef<T> y, Cache& c) {
    const Index n = x.rows(), d_in = m_base.config().d_in, d_out = m_base.config().d_out, r = m_config.r;
    const Index ne = m_config.n_experts;
    PEMOE_CHECK_SHAPE(x.cols() == d_in, site(), ": x has ", x.cols(), " features, layer expects ", d_in);
    PEMOE_CHECK_SHAPE(u.rows() == n, site(), ": router input has ", u.rows(), " rows, x has ", n);
    m_base.forward(x, y, c.base);
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
    const int blocks = detail::row_blocks(n, 64);
    group(c, blocks);
    c.h.resize(static_cast<Index>(c.tokens.size()), r);
    const T s = scaling();
    // Each thread owns a token block: its groups, GEMMs and scatter touch only its own rows of y.
    detail::parallel_rows(n, blocks, [&](int b, Index, Index) {
      const Index* off = &c.offsets[static_cast<std::size_t>(b * (ne + 1))];
      const Index cap = std::max<Index>(1, std::min(m_chunk, off[ne] - off[0]));
      Matrix<T> xg(cap, d_in), hg(cap, r), yg(cap, d_out);
      for (Index ex = 0; ex < ne; ++ex) {
        for (Index p0 = off[ex]; p0 < off[ex + 1]; p0 += m_chunk) {
          const Index m = std::min(m_chunk, off[ex + 1] - p0);
          auto X = xg.topRows(m);
          for (Index i = 0; i < m; ++i) X.row(i) = xs.row(c.tokens[p0 + i]);  // gather
          auto H = c.h.middleRows(p0, m);
          gemm<T>(Op::N, Op::T, T(1), X, m_bank.A(ex), T(0), H);  // (m, r)
          auto Hg = hg.topRows(m);
          for (Index i = 0; i < m; ++i) Hg.row(i) = c.weights[p0 + i] * H.row(i);
          auto Y = yg.topRows(m);
          gemm<T>(Op::N, Op::T, s, Hg, m_bank.B(ex), T(0), Y);                // (m, d_out)
          for (Index i = 0; i < m; ++i) y.row(c.tokens[p0 + i]) += Y.row(i);  // scatter-add
        }
      }
    });
  }

  void run_backward(ConstMatrixRef<T> x, ConstMatrixRef<T> u, const Cache& c, ConstMatrixRef<T> dy,
                    GradOut<T> dx, GradOut<T> du) {
    const Index n = x.rows(), d_in = m_base.config().d_in, d_out = m_base.config().d_out, r = m_config.r;
    const Index ne = m_config.n_experts;
    PEMOE_CHECK_SHAPE(c.gates.rows() == n && c.h.rows() == static_cast<Index>(c.tokens.size()), site(),
                      ": the cache holds ", c.gates.rows(), " tokens, x has ", n,
                      " (did forward run on this x?)");
    m_base.backward(x, c.base, dy, dx);
    const bool dropped = c.x_dropped.size() != 0;
    const ConstMatrixRef<T> xs = dropped ? ConstMatrixRef<T>(c.x_dropped) : x;
    const T s = scaling();
    Matrix<T> dgates = Matrix<T>::Zero(n, ne);
    const bool ta = m_bank.a_trainable(), tb = m_bank.b_trainable();
    const int blocks = c.blocks;
    // Per-block expert gradients (blocks > 1), reduced in block order afterwards: deterministic, no atomics.
    std::vector<Matrix<T>> dA(blocks > 1 && ta ? blocks : 0), dB(blocks > 1 && tb ? blocks : 0);
    for (auto& g : dA) g.setZero(ne * r, d_in);
    for (auto& g : dB) g.setZero(ne * d_out, r);
    detail::parallel_rows(n, blocks, [&](int b, Index, Index) {
      const Index* off = &c.offsets[static_cast<std::size_t>(b * (ne + 1))];
      const Index cap = std::max<Index>(1, std::min(m_chunk, off[ne] - off[0]));
      Matrix<T> dyg(cap, d_out), hg(cap, r), dh(cap, r), xg(cap, d_in), dxg(cap, d_in);
      for (Index ex = 0; ex < ne; ++ex) {
        for (Index p0 = off[ex]; p0 < off[ex + 1]; p0 += m_chunk) {
          const Index m = std::min(m_chunk, off[ex + 1] - p0);
          auto dY = dyg.topRows(m);
          for (Index i = 0; i < m; ++i) dY.row(i) = dy.row(c.tokens[p0 + i]);
          const auto H = c.h.middleRows(p0, m);
          auto Hg = hg.topRows(m);
          for (Index i = 0; i < m; ++i) Hg.row(i) = c.weights[p0 + i] * H.row(i);
          if (tb) {
            T* gb = blocks > 1 ? dB[b].data() : m_bank.dB_stack().data();
            MatrixMap<T> g(gb + ex * d_out * r, d_out, r);
            gemm<T>(Op::T, Op::N, s, dY, Hg, T(1), g);
          }
          auto dH = dh.topRows(m);
          gemm<T>(Op::N, Op::N, s, dY, m_bank.B(ex), T(0), dH);  // dL/dHg (m, r)
          for (Index i = 0; i < m; ++i) {
            dgates(c.tokens[p0 + i], ex) = dH.row(i).dot(H.row(i));
            dH.row(i) *= c.weights[p0 + i];  // dL/dH
          }
          if (ta) {
            auto X = xg.topRows(m);
            for (Index i = 0; i < m; ++i) X.row(i) = xs.row(c.tokens[p0 + i]);
            T* ga = blocks > 1 ? dA[b].data() : m_bank.dA_cat().data();
            MatrixMap<T> g(ga + ex * r * d_in, r, d_in);
            gemm<T>(Op::T, Op::N, T(1), dH, X, T(1), g);
          }
          if (dx) {
            auto dX = dxg.topRows(m);
            gemm<T>(Op::N, Op::N, T(1), dH, m_bank.A(ex), T(0), dX);
            for (Index i = 0; i < m; ++i) {
              const Index t = c.tokens[p0 + i];
              auto row = dX.middleRows(i, 1);
              if (dropped) m_dropout.apply_mask_rows(c.dropout, t, row);
              dx->row(t) += row;
            }
          }
        }
      }
    });
    for (const auto& g : dA) m_bank.dA_cat() += g;
    for (const auto& g : dB) m_bank.dB_stack() += g;
    if (m_config.router_input == RouterInput::layer_input)
      m_router.backward(u, c.router, dgates, dx, InputGrad::add);
    else
      m_router.backward(u, c.router, dgates, du);
  }

  Index m_chunk;
};

}  // namespace pemoe

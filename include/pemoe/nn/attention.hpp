/// @file attention.hpp
/// @brief `CausalSelfAttention`: GPT-2's multi-head self-attention (fused q|k|v projection, causal and
/// key-padding masks, attention and residual dropout) with a hand-written backward.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "pemoe/core/detail/parallel_rows.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/nn/dropout.hpp"
#include "pemoe/nn/linear.hpp"

namespace pemoe {

/// Configuration of a `CausalSelfAttention` (names follow HF `GPT2Config`).
struct AttentionConfig {
  Index d_model = 0;           ///< model width (GPT-2 `n_embd`)
  Index n_heads = 0;           ///< heads (GPT-2 `n_head`); must divide d_model
  bool causal = true;          ///< position t attends to positions ≤ t only
  double attn_dropout = 0.0;   ///< dropout on the attention probabilities (GPT-2 `attn_pdrop`)
  double resid_dropout = 0.0;  ///< dropout on the output projection (GPT-2 `resid_pdrop`)
  bool bias = true;            ///< biases on c_attn and c_proj (GPT-2 has them)
  bool trainable = true;       ///< declare the projections trainable (adapters freeze them)

  /// d_model / n_heads.
  Index head_dim() const { return n_heads > 0 ? d_model / n_heads : 0; }
};

/**
 * @brief Multi-head self-attention as in GPT-2 (Vaswani et al. 2017, arXiv 1706.03762; Radford et al. 2019;
 * HF `GPT2Attention`, eager path).
 *
 * For each sequence b and head h (head_dim D = d_model / H, columns h·D … h·D+D−1 of each of q, k, v):
 * @f[ [q\,|\,k\,|\,v] = x W_{attn}^\top + b_{attn}, \quad
 *     S = q_{bh} k_{bh}^\top / \sqrt{D} + M, \quad P = \mathrm{softmax}_{row}(S), \quad
 *     c_{bh} = \mathrm{drop}(P)\, v_{bh}, \quad y = \mathrm{drop}(c\, W_{proj}^\top + b_{proj}) @f]
 * M is −∞ above the diagonal (when `causal`: position t never sees t+1) and on keys the padding mask marks 0.
 * The softmax subtracts the row maximum and runs in T. A row whose keys are all masked gets probabilities
 * 0 (so a zero context and y = the c_proj bias), never NaN. (HF adds `finfo.min` instead of −∞: identical
 * for every row with at least one visible key; a fully masked row there attends uniformly.)
 *
 * **Batch layout.** x is (B·T, d_model), sequence b in rows b·T … b·T+T−1. Call `set_batch(B, T, key_mask)`
 * before `forward` (and again whenever B, T or the mask change); the contract `forward(x, y, cache)` then
 * throws `ShapeError` when x.rows() ≠ B·T, and `ConfigError` when `set_batch` was never called. The cache
 * records the layout used, so `backward` needs nothing else. `key_mask` is per (b, t), row-major (B·T),
 * 1 = real token, 0 = padding (HF `attention_mask`), or empty for no padding.
 *
 * Parameters (HF names): `<prefix>.c_attn.weight` (3·d_model, d_model) and `.bias` (3·d_model), output
 * columns q | k | v; `<prefix>.c_proj.weight` (d_model, d_model) and `.bias`. pemoe's `Linear` stores weights
 * (out, in); HF's `Conv1D` stores them (in, out), so a GPT-2 checkpoint's weights are transposed on load.
 *
 * Dropout masks are counter-based (`Dropout`) and regenerated in backward; the attention mask element
 * (b, h, i, j) is element ((b·H + h)·T + i, j) of a (B·H·T, T) call. Streams: `<prefix>.attn_dropout`,
 * `<prefix>.resid_dropout`.
 *
 * Cache: q|k|v (B·T, 3·d_model), the probabilities P before dropout (B·H·T, T), the context before c_proj
 * (B·T, d_model). All products go through `gemm` on per-(b, h) strided views; the (b, h) pairs run in
 * parallel (each with its own serial products), so results do not depend on the thread count.
 * Cost: forward 8·N·d² + 4·B·T²·d flops (N = B·T); backward about twice that; memory B·H·T² for P.
 * @tparam T scalar type.
 * @tparam Proj the projection layer of `c_attn` and `c_proj`: `Linear<T>`, or any layer on the contract
 *   constructible from a `LinearConfig` (models use `LinearSite<T>`, so that adapters can wrap the
 * projections).
 */
template <class T, class Proj = Linear<T>>
class CausalSelfAttention {
 public:
  using Scalar = T;
  /// What forward saves for backward.
  struct Cache {
    Index batch = 0;                     ///< B of the forward call
    Index seq_len = 0;                   ///< T of the forward call
    std::vector<std::int64_t> key_mask;  ///< (B·T) 1 = real, 0 = padding; empty: no padding
    Matrix<T> qkv;                       ///< (B·T, 3·d_model) = c_attn(x): q | k | v
    Matrix<T> probs;                     ///< (B·H·T, T) softmax of (b, h) in rows (b·H + h)·T …
    Matrix<T>
        ctx;  ///< (B·T, d_model) heads merged, before c_proj; empty when c_proj's backward does not read it
    typename Proj::Cache c_attn, c_proj;
    typename Dropout<T>::Cache attn_drop, resid_drop;
  };

  explicit CausalSelfAttention(const AttentionConfig& config = {})
      : m_config(checked(config)),
        m_c_attn(LinearConfig{config.d_model, 3 * config.d_model, config.bias, config.trainable}),
        m_c_proj(LinearConfig{config.d_model, config.d_model, config.bias, config.trainable}),
        m_attn_drop(config.attn_dropout),
        m_resid_drop(config.resid_dropout) {}

  /// Declares `<prefix>.c_attn` and `<prefix>.c_proj` (initialised like `nn.Linear`) and seeds the dropouts.
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_store = &store;
    m_name = prefix;
    m_c_attn.register_params(store, prefix + ".c_attn", rng);
    m_c_proj.register_params(store, prefix + ".c_proj", rng);
    m_attn_drop.register_params(store, prefix + ".attn_dropout", rng);
    m_resid_drop.register_params(store, prefix + ".resid_dropout", rng);
  }

  /**
   * @brief Sets the layout of the next forward calls: `batch` sequences of `seq_len` tokens, and the key
   * padding mask (B·T values, 1 = real token, 0 = padding; empty = none).
   *
   * Throws `ConfigError` for a non-positive B or T or a mask value other than 0/1, `ShapeError` for a mask of
   * the wrong length.
   */
  void set_batch(Index batch, Index seq_len, std::vector<std::int64_t> key_mask = {}) {
    PEMOE_CHECK_CONFIG(batch > 0 && seq_len > 0, site(), ": set_batch needs positive B and T, got B=", batch,
                       " T=", seq_len);
    PEMOE_CHECK_SHAPE(key_mask.empty() || static_cast<Index>(key_mask.size()) == batch * seq_len, site(),
                      ": key_mask has ", key_mask.size(), " values, expected B·T = ", batch * seq_len,
                      " (or none)");
    for (std::size_t i = 0; i < key_mask.size(); ++i)
      PEMOE_CHECK_CONFIG(key_mask[i] == 0 || key_mask[i] == 1, site(), ": key_mask[", i, "] is ", key_mask[i],
                         "; expected 0 (padding) or 1 (token)");
    m_batch = batch;
    m_seq_len = seq_len;
    m_key_mask = std::move(key_mask);
  }

  /// y = resid_drop(c_proj(attention(c_attn(x)))) with the layout of `set_batch`.
  /// x: (B·T, d_model) -> y: (B·T, d_model)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& cache) {
    check_bound();
    PEMOE_CHECK_CONFIG(m_batch > 0, site(), ": call set_batch(B, T) before forward");
    const Index d = m_config.d_model, B = m_batch, S = m_seq_len, H = m_config.n_heads;
    const Index n = B * S;
    PEMOE_CHECK_SHAPE(x.cols() == d, site(), ": x has ", x.cols(), " features, layer expects ", d);
    PEMOE_CHECK_SHAPE(x.rows() == n, site(), ": x has ", x.rows(), " rows, set_batch(", B, ", ", S,
                      ") expects B·T = ", n);
    check_shape(site(), "y", y, n, d);
    check_no_alias(site(), x, y);
    cache.batch = B;
    cache.seq_len = S;
    cache.key_mask = m_key_mask;

    cache.qkv.resize(n, 3 * d);
    m_c_attn.forward(x, cache.qkv, cache.c_attn);

    // Scores and softmax per (b, h), written straight into the cached probabilities.
    cache.probs.resize(B * H * S, S);
    for_each_head(B * H, [&](Index bh) { scores_softmax(cache, bh); });

    // Context c_bh = drop(P_bh)·v_bh into the head's columns of ctx.
    Matrix<T> dropped;
    if (m_attn_drop.active()) {
      dropped.resize(cache.probs.rows(), S);
      m_attn_drop.forward(cache.probs, dropped, cache.attn_drop);
    } else {
      cache.attn_drop = typename Dropout<T>::Cache{};
    }
    const Matrix<T>& p = m_attn_drop.active() ? dropped : cache.probs;
    // the context is kept only when c_proj's backward reads it (else it lives in a scratch buffer)
    const bool keep = m_c_proj.backward_needs_input();
    Matrix<T>& ctx = keep ? cache.ctx : detail::unkept_activation<T, detail::UnkeptSlot::attention_context>();
    if (!keep) cache.ctx.resize(0, 0);
    ctx.resize(n, d);
    const Index D = m_config.head_dim();
    for_each_head(B * H, [&](Index bh) {
      const Index b = bh / H, h = bh % H;
      product_pv(p.data() + bh * S * S, cache.qkv.data() + b * S * 3 * d + 2 * d + h * D, 3 * d, S, D, T(1),
                 &ctx(b * S, h * D), d);
    });

    m_c_proj.forward(ctx, y, cache.c_proj);
    m_resid_drop.forward(y, y, cache.resid_drop);
  }

  /// Gradients of c_proj and c_attn (added); dx written. Uses the layout saved in the cache.
  /// x: (B·T, d_model), dy: (B·T, d_model) -> dx: (B·T, d_model)
  void backward(ConstMatrixRef<T> x, const Cache& cache, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    check_bound();
    const Index d = m_config.d_model, B = cache.batch, S = cache.seq_len, H = m_config.n_heads;
    const Index D = m_config.head_dim(), n = B * S;
    check_shape(site(), "x", x, n, d);
    check_shape(site(), "dy", dy, n, d);
    if (dx) check_shape(site(), "dx", *dx, n, d);
    check_shape(site(), "cache.qkv (did forward run on this x?)", cache.qkv, n, 3 * d);
    check_shape(site(), "cache.probs", cache.probs, B * H * S, S);
    const bool ctx_kept = cache.ctx.rows() == n;
    if (ctx_kept) check_shape(site(), "cache.ctx", cache.ctx, n, d);

    // Through the residual dropout and c_proj.
    Matrix<T> dproj;
    if (cache.resid_drop.active) {
      dproj.resize(n, d);
      m_resid_drop.backward(dy, cache.resid_drop, dy, dproj);
    }
    const ConstMatrixRef<T> g = cache.resid_drop.active ? ConstMatrixRef<T>(dproj) : dy;
    bool attn_grads = true;  // an adapted projection may train even when its base is frozen
    if constexpr (std::is_same_v<Proj, Linear<T>>)
      attn_grads = m_store->trainable(m_c_attn.weight_id()) ||
                   (m_config.bias && m_store->trainable(m_c_attn.bias_id()));
    auto proj_backward = [&](GradOut<T> dctx) {
      if (ctx_kept)
        m_c_proj.backward(cache.ctx, cache.c_proj, g, dctx);
      else
        m_c_proj.backward_without_input(cache.c_proj, g, dctx);
    };
    if (!dx && !attn_grads) {
      proj_backward(std::nullopt);
      return;
    }
    Matrix<T> dctx(n, d);
    proj_backward(dctx);

    // Per (b, h): dv = drop(P)ᵀ·dc, dP = drop'(dc·vᵀ), dS = P ⊙ (dP − rowsum(P ⊙ dP)), dq = s·dS·k,
    // dk = s·dSᵀ·q (s = 1/√D).
    Matrix<T> dqkv(n, 3 * d);
    const T scale = T(1) / std::sqrt(T(D));
    for_each_head(B * H, [&](Index bh) {
      const Index b = bh / H, h = bh % H;
      const auto P = cache.probs.middleRows(bh * S, S);
      const auto q = cache.qkv.block(b * S, h * D, S, D);
      const auto k = cache.qkv.block(b * S, d + h * D, S, D);
      const auto v = cache.qkv.block(b * S, 2 * d + h * D, S, D);
      const auto dc = dctx.block(b * S, h * D, S, D);
      Matrix<T> dp(S, S);
      T* dq = &dqkv(b * S, h * D);
      T* dk = dq + d;
      T* dv = dq + 2 * d;
      if (cache.attn_drop.active) {
        Matrix<T> pd = P;  // drop(P), regenerated
        m_attn_drop.apply_mask_rows(cache.attn_drop, bh * S, pd);
        product_ptv(pd.data(), dc.data(), dctx.outerStride(), S, D, T(1), dv, 3 * d);
      } else {
        product_ptv(P.data(), dc.data(), dctx.outerStride(), S, D, T(1), dv, 3 * d);
      }
      gemm<T>(Op::N, Op::T, T(1), dc, v, T(0), dp);
      m_attn_drop.apply_mask_rows(cache.attn_drop, bh * S, dp);
      for (Index i = 0; i < S; ++i) {
        const T dot = (P.row(i).array() * dp.row(i).array()).sum();
        dp.row(i) = (P.row(i).array() * (dp.row(i).array() - dot)).matrix();
      }
      product_pv(dp.data(), k.data(), 3 * d, S, D, scale, dq, 3 * d);
      product_ptv(dp.data(), q.data(), 3 * d, S, D, scale, dk, 3 * d);
    });

    m_c_attn.backward(x, cache.c_attn, dqkv, dx);
  }

  /// Switches both dropouts.
  void set_training(bool on) {
    m_attn_drop.set_training(on);
    m_resid_drop.set_training(on);
  }

  /// The fused q|k|v projection d_model -> 3·d_model.
  Proj& c_attn() { return m_c_attn; }
  const Proj& c_attn() const { return m_c_attn; }
  /// The output projection d_model -> d_model.
  Proj& c_proj() { return m_c_proj; }
  const Proj& c_proj() const { return m_c_proj; }
  Dropout<T>& attn_dropout() { return m_attn_drop; }
  Dropout<T>& resid_dropout() { return m_resid_drop; }
  /// B, T and the key mask of the next forward (0, 0, {} before the first `set_batch`).
  Index batch() const { return m_batch; }
  Index seq_len() const { return m_seq_len; }
  const std::vector<std::int64_t>& key_mask() const { return m_key_mask; }
  const AttentionConfig& config() const { return m_config; }
  /// The parameter prefix, used to name this layer in error messages.
  const std::string& name() const { return m_name; }

 private:
  static AttentionConfig checked(const AttentionConfig& c) {
    PEMOE_CHECK_CONFIG(c.d_model > 0 && c.n_heads > 0,
                       "CausalSelfAttention: d_model and n_heads must be positive, got d_model=", c.d_model,
                       " n_heads=", c.n_heads);
    PEMOE_CHECK_CONFIG(c.d_model % c.n_heads == 0, "CausalSelfAttention: d_model ", c.d_model,
                       " is not a multiple of n_heads ", c.n_heads, " (head_dim = d_model / n_heads)");
    return c;
  }
  std::string site() const { return "CausalSelfAttention '" + m_name + "'"; }
  void check_bound() const {
    PEMOE_CHECK_CONFIG(m_store != nullptr,
                       "CausalSelfAttention: call register_params() before forward/backward");
  }

  // C (S, D) = alpha·G·V for one head: G (S, S) row-major (probabilities or their gradient), V (S, D) with
  // row stride ldv, C with row stride ldc (overwritten). With a causal mask G is lower triangular, and the
  // register-blocked kernel skips its zero upper half (the same bits; half the work): faster than `gemm` at
  // a head's sizes (64 × 64 × 64, causal: 2.2 against 4.8 µs on one AVX-512 core).
  void product_pv(const T* g, const T* v, Index ldv, Index S, Index D, T alpha, T* c, Index ldc) const {
    detail::skinny_ab(g, S, v, ldv, S, S, D, detail::AxpbyOut<T>{c, ldc, alpha, T(0)}, m_config.causal);
  }
  // C (S, D) = alpha·Gᵀ·V for one head (dv = Pᵀ·dc, dk = dSᵀ·q), the same operands and the same skipping.
  void product_ptv(const T* g, const T* v, Index ldv, Index S, Index D, T alpha, T* c, Index ldc) const {
    detail::skinny_atb(g, S, v, ldv, S, S, D, detail::AxpbyOut<T>{c, ldc, alpha, T(0)}, m_config.causal);
  }

  // Runs f(bh) for bh in [0, count), the pairs split over the threads (each pair's products run serially).
  template <class F>
  static void for_each_head(Index count, F&& f) {
    detail::parallel_rows(count, detail::row_blocks(count, 1), [&](int, Index b0, Index b1) {
      for (Index bh = b0; bh < b1; ++bh) f(bh);
    });
  }

  // P_bh = softmax(q·kᵀ/√D + M) into rows bh·T … of cache.probs; a row with no visible key is all zeros.
  void scores_softmax(Cache& cache, Index bh) const {
    const Index d = m_config.d_model, H = m_config.n_heads, D = m_config.head_dim(), S = cache.seq_len;
    const Index b = bh / H, h = bh % H;
    auto P = cache.probs.middleRows(bh * S, S);
    const T scale = T(1) / std::sqrt(T(D));
    gemm<T>(Op::N, Op::T, scale, cache.qkv.block(b * S, h * D, S, D), cache.qkv.block(b * S, d + h * D, S, D),
            T(0), P);
    const bool padded = !cache.key_mask.empty();
    const std::int64_t* keep = padded ? cache.key_mask.data() + b * S : nullptr;
    constexpr T kNegInf = -std::numeric_limits<T>::infinity();
    for (Index i = 0; i < S; ++i) {
      const Index visible = m_config.causal ? i + 1 : S;  // keys 0 … visible−1 may be seen
      auto row = P.row(i);
      row.tail(S - visible).setZero();
      auto seg = row.head(visible);
      if (padded)
        for (Index j = 0; j < visible; ++j)
          if (keep[j] == 0) seg(j) = kNegInf;
      const T m = seg.maxCoeff();
      if (m == kNegInf) {  // every key masked: zeros, not NaN
        seg.setZero();
        continue;
      }
      seg = (seg.array() - m).exp().matrix();
      if (padded)  // exp(−∞) is not exactly 0 in every SIMD exp: mask explicitly
        for (Index j = 0; j < visible; ++j)
          if (keep[j] == 0) seg(j) = T(0);
      seg /= seg.sum();
    }
  }

  AttentionConfig m_config;
  Proj m_c_attn, m_c_proj;
  Dropout<T> m_attn_drop, m_resid_drop;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
  Index m_batch = 0, m_seq_len = 0;
  std::vector<std::int64_t> m_key_mask;
};

}  // namespace pemoe

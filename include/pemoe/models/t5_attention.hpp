/// @file t5_attention.hpp
/// @brief T5's attention (Raffel et al. 2020, JMLR 21(140)): `T5RelativePositionBias` (bucketed relative
/// position bias) and `T5Attention` (separate q, k, v, o projections without bias, unscaled logits, an
/// additive position bias, self- or cross-attention), exact to Hugging Face's `T5Attention`, with a
/// hand-written backward.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/core/detail/parallel_rows.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/models/linear_site.hpp"
#include "pemoe/nn/dropout.hpp"
#include "pemoe/nn/embedding.hpp"

namespace pemoe {

/**
 * @brief T5's relative position bucket of `relative_position` = key position − query position (HF
 * `T5Attention._relative_position_bucket`).
 *
 * Bidirectional (encoder): half of the `num_buckets` buckets are for keys after the query (offset nb/2), and
 * n = |relative_position|. Unidirectional (decoder): n = max(−relative_position, 0) (keys after the query all
 * fall in bucket 0; the causal mask hides them anyway). With m = nb'/2 (nb' the buckets of one side):
 * n < m is its own bucket; larger n goes to m + ⌊log(n/m) / log(max_distance/m) · (nb' − m)⌋, at most nb'
 * − 1. The logarithm is taken in float32, as PyTorch does, so the buckets agree at their boundaries.
 */
inline Index t5_relative_position_bucket(Index relative_position, bool bidirectional, Index num_buckets,
                                         Index max_distance) {
  Index bucket = 0;
  Index n = relative_position;
  if (bidirectional) {
    num_buckets /= 2;
    if (n > 0) bucket += num_buckets;
    n = n < 0 ? -n : n;
  } else {
    n = n < 0 ? -n : 0;
  }
  const Index max_exact = num_buckets / 2;
  if (n < max_exact) return bucket + n;
  const float ratio = std::log(float(n) / float(max_exact)) /
                      static_cast<float>(std::log(double(max_distance) / double(max_exact))) *
                      float(num_buckets - max_exact);
  // (finite for every configuration T5Config accepts; guarded so that no float-to-integer cast overflows)
  Index large =
      !(ratio < float(num_buckets)) ? num_buckets - 1 : max_exact + static_cast<Index>(std::max(ratio, 0.0f));
  if (large > num_buckets - 1) large = num_buckets - 1;
  return bucket + large;
}

/// Configuration of a `T5RelativePositionBias`.
struct T5RelativeBiasConfig {
  Index n_heads = 0;          ///< attention heads
  Index num_buckets = 32;     ///< HF `relative_attention_num_buckets`
  Index max_distance = 128;   ///< HF `relative_attention_max_distance`
  bool bidirectional = true;  ///< encoder: true; decoder: false
  double init_std = 1.0;      ///< weight ~ N(0, init_std²) (HF: d_model^−1/2)
  bool trainable = true;      ///< declare the table trainable
};

/**
 * @brief T5's learned relative position bias: a (num_buckets, heads) table (HF
 * `relative_attention_bias`, an `nn.Embedding`), looked up at the bucket of each (query i, key j):
 * @f$ \beta_h(i, j) = W[\mathrm{bucket}(j - i), h] @f$. Owned by the first layer of a stack and shared by all
 * of its layers; each layer adds its gradient into one dβ, and `backward` scatters dβ into dW.
 *
 * Parameter: `<prefix>.weight` (num_buckets, H). Shapes: forward(Tq, Tk) -> bias (H·Tq, Tk), head h in rows
 * h·Tq … h·Tq + Tq − 1.
 */
template <class T>
class T5RelativePositionBias {
 public:
  using Scalar = T;
  struct Cache {
    Index tq = 0, tk = 0;
    std::vector<std::int64_t> buckets;  ///< (Tq·Tk) bucket of (i, j), row-major
    typename Embedding<T>::Cache emb;
  };

  explicit T5RelativePositionBias(const T5RelativeBiasConfig& c = {})
      : m_config(c), m_table(EmbeddingConfig{c.num_buckets, c.n_heads, c.init_std, c.trainable}) {
    PEMOE_CHECK_CONFIG(
        c.n_heads > 0 && c.num_buckets >= 2 && c.max_distance > 0,
        "T5RelativePositionBias: n_heads, num_buckets (>= 2) and max_distance must be positive");
  }

  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_table.register_params(store, prefix, rng);
  }
  void set_training(bool /*on*/) {}

  /// bias (H·Tq, Tk) for a query of Tq positions over Tk keys (query position i, key position j).
  void forward(Index tq, Index tk, Matrix<T>& bias, Cache& c) {
    const Index H = m_config.n_heads;
    c.tq = tq;
    c.tk = tk;
    c.buckets.resize(std::size_t(tq * tk));
    for (Index i = 0; i < tq; ++i)
      for (Index j = 0; j < tk; ++j)
        c.buckets[std::size_t(i * tk + j)] = t5_relative_position_bucket(
            j - i, m_config.bidirectional, m_config.num_buckets, m_config.max_distance);
    Matrix<T> rows(tq * tk, H);
    m_table.forward(c.buckets, rows, c.emb);
    bias.resize(H * tq, tk);
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < tq; ++i)
        for (Index j = 0; j < tk; ++j) bias(h * tq + i, j) = rows(i * tk + j, h);
  }

  /// The bias of the one query position i over keys 0 … tk − 1: bias (H, tk), row h equal to row h·Tq + i of
  /// `forward(Tq, tk)` for any Tq > i. O(H·tk): a cached decoder's step. Nothing is kept for backward.
  void forward_row(Index i, Index tk, Matrix<T>& bias) {
    const Index H = m_config.n_heads;
    std::vector<std::int64_t> buckets(static_cast<std::size_t>(tk));
    for (Index j = 0; j < tk; ++j)
      buckets[std::size_t(j)] = t5_relative_position_bucket(j - i, m_config.bidirectional,
                                                            m_config.num_buckets, m_config.max_distance);
    Matrix<T> rows(tk, H);
    typename Embedding<T>::Cache ec;
    m_table.forward(buckets, rows, ec);
    bias = rows.transpose();
  }

  /// dW[bucket(j − i), h] += dbias(h·Tq + i, j).   dbias: (H·Tq, Tk)
  void backward(const Cache& c, ConstMatrixRef<T> dbias) {
    const Index H = m_config.n_heads;
    check_shape("T5RelativePositionBias", "dbias", dbias, H * c.tq, c.tk);
    Matrix<T> rows(c.tq * c.tk, H);
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < c.tq; ++i)
        for (Index j = 0; j < c.tk; ++j) rows(i * c.tk + j, h) = dbias(h * c.tq + i, j);
    m_table.backward(c.buckets, c.emb, rows);
  }

  Embedding<T>& table() { return m_table; }
  ParamId weight_id() const { return m_table.weight_id(); }
  const T5RelativeBiasConfig& config() const { return m_config; }

 private:
  T5RelativeBiasConfig m_config;
  Embedding<T> m_table;
};

/// Configuration of a `T5Attention`.
struct T5AttentionConfig {
  Index d_model = 0;      ///< model width
  Index n_heads = 0;      ///< heads H
  Index d_kv = 0;         ///< width of one head (inner = H·d_kv, may differ from d_model)
  bool causal = false;    ///< query i sees keys j ≤ i only (decoder self-attention)
  double dropout = 0.0;   ///< dropout on the attention probabilities (HF `dropout_rate`)
  bool trainable = true;  ///< declare the projections trainable

  Index inner() const { return n_heads * d_kv; }
};

/**
 * @brief Multi-head attention as in T5 (Raffel et al. 2020; HF `T5Attention`, eager path), self- or
 * cross-attention.
 *
 * With x_q (B·Tq, d) the queries' input and x_kv (B·Tk, d) the keys' input (x_q itself for self-attention,
 * the final encoder output for cross-attention), for each sequence b and head h (columns h·d_kv … of the
 * inner width):
 * @f[ q = x_q W_q^\top,\ k = x_{kv} W_k^\top,\ v = x_{kv} W_v^\top, \quad
 *     S_{bh} = q_{bh} k_{bh}^\top + \beta_h + M_b, \quad P = \mathrm{softmax}_{row}(S), \quad
 *     y = [\mathrm{drop}(P_{bh}) v_{bh}]_h\, W_o^\top @f]
 * The logits are **not** scaled by 1/√d_kv (T5 folds that into the initialisation of W_q). β is the
 * relative position bias (H·Tq, Tk) of the stack (`T5RelativePositionBias`), or none (cross-attention).
 * M is −∞ on keys the padding mask marks 0 and, when `causal`, above the diagonal. HF adds `finfo.min`
 * instead: identical for every row with a visible key; a row with none gets probabilities 0 here.
 *
 * Parameters (HF names): `<prefix>.q.weight` (inner, d), `.k.weight`, `.v.weight` (inner, d), `.o.weight`
 * (d, inner); all four are `LinearSite`s (no bias), so adapters can be injected at q, k, v and o.
 * Call `set_batch(B, Tq, Tk, key_mask)` before `forward`; key_mask is (B·Tk), 1 = token, 0 = padding, or
 * empty. Cache: q, k, v, the probabilities before dropout (B·H·Tq, Tk) and the merged context (B·Tq, inner).
 * @tparam T scalar type.
 */
template <class T>
class T5Attention {
 public:
  using Scalar = T;
  struct Cache {
    Index batch = 0, tq = 0, tk = 0;
    std::vector<std::int64_t> key_mask;  ///< (B·Tk) or empty
    bool has_bias = false;
    Matrix<T> q, k, v;  ///< (B·Tq, inner), (B·Tk, inner), (B·Tk, inner)
    Matrix<T> probs;    ///< (B·H·Tq, Tk), row (b·H + h)·Tq + i
    Matrix<T> ctx;      ///< (B·Tq, inner)
    typename LinearSite<T>::Cache cq, ck, cv, co;
    typename Dropout<T>::Cache drop;
  };

  explicit T5Attention(const T5AttentionConfig& c = {})
      : m_config(checked(c)),
        m_q(LinearConfig{c.d_model, c.inner(), false, c.trainable}),
        m_k(LinearConfig{c.d_model, c.inner(), false, c.trainable}),
        m_v(LinearConfig{c.d_model, c.inner(), false, c.trainable}),
        m_o(LinearConfig{c.inner(), c.d_model, false, c.trainable}),
        m_drop(c.dropout) {}

  /// Declares `<prefix>.q`, `.k`, `.v`, `.o` and seeds the dropout stream `<prefix>.dropout`.
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_store = &store;
    m_name = prefix;
    m_q.register_params(store, prefix + ".q", rng);
    m_k.register_params(store, prefix + ".k", rng);
    m_v.register_params(store, prefix + ".v", rng);
    m_o.register_params(store, prefix + ".o", rng);
    m_drop.register_params(store, prefix + ".dropout", rng);
  }

  /// Layout of the next forward calls: B sequences, Tq queries and Tk keys each; key padding (B·Tk) or none.
  void set_batch(Index batch, Index tq, Index tk, std::vector<std::int64_t> key_mask = {}) {
    PEMOE_CHECK_CONFIG(batch > 0 && tq > 0 && tk > 0, site(), ": set_batch needs positive B, Tq, Tk");
    PEMOE_CHECK_SHAPE(key_mask.empty() || Index(key_mask.size()) == batch * tk, site(), ": key_mask has ",
                      key_mask.size(), " values, expected B·Tk = ", batch * tk, " (or none)");
    for (std::size_t i = 0; i < key_mask.size(); ++i)
      PEMOE_CHECK_CONFIG(key_mask[i] == 0 || key_mask[i] == 1, site(), ": key_mask[", i, "] is ", key_mask[i],
                         "; expected 0 (padding) or 1 (token)");
    PEMOE_CHECK_CONFIG(!m_config.causal || tq == tk, site(), ": causal attention needs Tq = Tk");
    m_batch = batch;
    m_tq = tq;
    m_tk = tk;
    m_key_mask = std::move(key_mask);
  }

  /// y = o(attention(q(xq), k(xkv), v(xkv)) + bias).   xq: (B·Tq, d), xkv: (B·Tk, d), bias: (H·Tq, Tk) or
  /// null -> y: (B·Tq, d)
  void forward(ConstMatrixRef<T> xq, ConstMatrixRef<T> xkv, const Matrix<T>* bias, MatrixRef<T> y, Cache& c) {
    PEMOE_CHECK_CONFIG(m_store != nullptr, site(), ": call register_params() before forward");
    PEMOE_CHECK_CONFIG(m_batch > 0, site(), ": call set_batch before forward");
    const Index B = m_batch, Tq = m_tq, Tk = m_tk, H = m_config.n_heads, D = m_config.d_kv;
    const Index d = m_config.d_model, inner = m_config.inner();
    check_shape(site(), "xq", xq, B * Tq, d);
    check_shape(site(), "xkv", xkv, B * Tk, d);
    check_shape(site(), "y", y, B * Tq, d);
    if (bias) check_shape(site(), "bias", *bias, H * Tq, Tk);
    c.batch = B;
    c.tq = Tq;
    c.tk = Tk;
    c.key_mask = m_key_mask;
    c.has_bias = bias != nullptr;
    c.q.resize(B * Tq, inner);
    c.k.resize(B * Tk, inner);
    c.v.resize(B * Tk, inner);
    m_q.forward(xq, c.q, c.cq);
    m_k.forward(xkv, c.k, c.ck);
    m_v.forward(xkv, c.v, c.cv);
    c.probs.resize(B * H * Tq, Tk);
    for_each_head(B * H, [&](Index bh) { scores_softmax(c, bias, bh); });
    Matrix<T> dropped;
    if (m_drop.active()) {
      dropped.resize(c.probs.rows(), Tk);
      m_drop.forward(c.probs, dropped, c.drop);
    } else {
      c.drop = typename Dropout<T>::Cache{};
    }
    const Matrix<T>& p = m_drop.active() ? dropped : c.probs;
    c.ctx.resize(B * Tq, inner);
    for_each_head(B * H, [&](Index bh) {
      const Index b = bh / H, h = bh % H;
      gemm<T>(Op::N, Op::N, T(1), p.middleRows(bh * Tq, Tq), c.v.block(b * Tk, h * D, Tk, D), T(0),
              c.ctx.block(b * Tq, h * D, Tq, D));
    });
    m_o.forward(c.ctx, y, c.co);
  }

  /// Keys and values kept for incremental decoding (inference only): k, v (B·capacity, inner), sequence b in
  /// rows b·capacity …, `len` positions filled; `key_mask` (B·capacity) or empty.
  struct KVCache {
    Matrix<T> k, v;
    Index batch = 0, capacity = 0, len = 0;
    std::vector<std::int64_t> key_mask;
  };

  /// Self-attention decoding: an empty cache for up to `capacity` positions of B sequences.
  void begin_self(Index batch, Index capacity, KVCache& kv) const {
    PEMOE_CHECK_CONFIG(batch > 0 && capacity > 0, site(), ": begin_self needs positive B and capacity");
    kv.batch = batch;
    kv.capacity = capacity;
    kv.len = 0;
    kv.k.resize(batch * capacity, m_config.inner());
    kv.v.resize(batch * capacity, m_config.inner());
    kv.key_mask.clear();
  }

  /// Cross-attention decoding: k and v of the encoder output xkv (B·Tk, d), computed once; key padding
  /// (B·Tk) or none.
  void begin_cross(ConstMatrixRef<T> xkv, Index batch, std::vector<std::int64_t> key_mask, KVCache& kv) {
    PEMOE_CHECK_CONFIG(m_store != nullptr, site(), ": call register_params() before decoding");
    PEMOE_CHECK_CONFIG(batch > 0 && xkv.rows() % batch == 0, site(), ": begin_cross: ", xkv.rows(),
                       " encoder rows are not B = ", batch, " sequences");
    const Index tk = xkv.rows() / batch;
    PEMOE_CHECK_SHAPE(key_mask.empty() || Index(key_mask.size()) == batch * tk, site(), ": key_mask has ",
                      key_mask.size(), " values, expected B·Tk = ", batch * tk, " (or none)");
    check_shape(site(), "xkv", xkv, batch * tk, m_config.d_model);
    kv.batch = batch;
    kv.capacity = kv.len = tk;
    kv.k.resize(batch * tk, m_config.inner());
    kv.v.resize(batch * tk, m_config.inner());
    typename LinearSite<T>::Cache ck, cv;
    m_k.forward(xkv, kv.k, ck);
    m_v.forward(xkv, kv.v, cv);
    kv.key_mask = std::move(key_mask);
  }

  /**
   * @brief One query position per sequence: x (B, d) -> y (B, d). Self-attention (`append`) first appends
   * k(x), v(x) at position `len` and attends to positions 0 … len (the causal row); cross-attention attends
   * to the cached encoder keys. `bias` (H, visible keys) is the position bias of this query (or null). The
   * same scores, masking and softmax as `forward`, one row at a time; no dropout (the model must be in eval
   * mode), nothing kept for backward.
   */
  void step(ConstMatrixRef<T> x, KVCache& kv, bool append, const Matrix<T>* bias, MatrixRef<T> y) {
    const Index B = kv.batch, H = m_config.n_heads, D = m_config.d_kv, inner = m_config.inner();
    PEMOE_CHECK_CONFIG(B > 0, site(), ": step before begin_self / begin_cross");
    check_shape(site(), "x", x, B, m_config.d_model);
    check_shape(site(), "y", y, B, m_config.d_model);
    Matrix<T> q(B, inner);
    typename LinearSite<T>::Cache cq, co;
    m_q.forward(x, q, cq);
    if (append) {
      PEMOE_CHECK_CONFIG(kv.len < kv.capacity, site(), ": the decoding cache is full (", kv.capacity,
                         " positions)");
      Matrix<T> k(B, inner), v(B, inner);
      typename LinearSite<T>::Cache ck, cv;
      m_k.forward(x, k, ck);
      m_v.forward(x, v, cv);
      for (Index b = 0; b < B; ++b) {
        kv.k.row(b * kv.capacity + kv.len) = k.row(b);
        kv.v.row(b * kv.capacity + kv.len) = v.row(b);
      }
      ++kv.len;
    }
    const Index tk = kv.len;
    if (bias) check_shape(site(), "bias", *bias, H, tk);
    constexpr T kNegInf = -std::numeric_limits<T>::infinity();
    Matrix<T> ctx = Matrix<T>::Zero(B, inner);
    RowVector<T> sc(tk);
    for (Index b = 0; b < B; ++b) {
      const std::int64_t* keep = kv.key_mask.empty() ? nullptr : kv.key_mask.data() + b * kv.capacity;
      for (Index h = 0; h < H; ++h) {
        sc.noalias() = q.row(b).segment(h * D, D) * kv.k.block(b * kv.capacity, h * D, tk, D).transpose();
        if (bias) sc += bias->row(h);
        if (keep)
          for (Index j = 0; j < tk; ++j)
            if (keep[j] == 0) sc(j) = kNegInf;
        const T m = sc.maxCoeff();
        if (m == kNegInf) continue;  // no visible key: a zero row, as in forward
        sc = (sc.array() - m).exp().matrix();
        if (keep)
          for (Index j = 0; j < tk; ++j)
            if (keep[j] == 0) sc(j) = T(0);
        sc /= sc.sum();
        ctx.row(b).segment(h * D, D).noalias() = sc * kv.v.block(b * kv.capacity, h * D, tk, D);
      }
    }
    m_o.forward(ctx, y, co);
  }

  /**
   * @brief Adds the gradients of q, k, v, o; writes dxq (B·Tq, d) and dxkv (B·Tk, d) (for self-attention
   * the caller adds the two); adds Σ_b dS_bh into `dbias` (H·Tq, Tk) when given (and forward had a bias).
   */
  void backward(ConstMatrixRef<T> xq, ConstMatrixRef<T> xkv, const Cache& c, ConstMatrixRef<T> dy,
                MatrixRef<T> dxq, MatrixRef<T> dxkv, Matrix<T>* dbias = nullptr) {
    const Index B = c.batch, Tq = c.tq, Tk = c.tk, H = m_config.n_heads, D = m_config.d_kv;
    const Index d = m_config.d_model, inner = m_config.inner();
    check_shape(site(), "dy", dy, B * Tq, d);
    check_shape(site(), "dxq", dxq, B * Tq, d);
    check_shape(site(), "dxkv", dxkv, B * Tk, d);
    check_shape(site(), "cache.probs (did forward run?)", c.probs, B * H * Tq, Tk);
    Matrix<T> dctx(B * Tq, inner);
    m_o.backward(c.ctx, c.co, dy, dctx);
    Matrix<T> dq(B * Tq, inner), dk(B * Tk, inner), dv(B * Tk, inner);
    const bool want_bias = dbias != nullptr && c.has_bias;
    Matrix<T> ds_all;
    if (want_bias) ds_all.resize(B * H * Tq, Tk);
    // Per (b, h): dv = drop(P)ᵀ·dc, dP = drop'(dc·vᵀ), dS = P ⊙ (dP − rowsum(P ⊙ dP)), dq = dS·k, dk = dSᵀ·q.
    for_each_head(B * H, [&](Index bh) {
      const Index b = bh / H, h = bh % H;
      const auto P = c.probs.middleRows(bh * Tq, Tq);
      const auto dc = dctx.block(b * Tq, h * D, Tq, D);
      Matrix<T> ds(Tq, Tk);
      if (c.drop.active) {
        Matrix<T> pd = P;
        m_drop.apply_mask_rows(c.drop, bh * Tq, pd);
        gemm<T>(Op::T, Op::N, T(1), pd, dc, T(0), dv.block(b * Tk, h * D, Tk, D));
      } else {
        gemm<T>(Op::T, Op::N, T(1), P, dc, T(0), dv.block(b * Tk, h * D, Tk, D));
      }
      gemm<T>(Op::N, Op::T, T(1), dc, c.v.block(b * Tk, h * D, Tk, D), T(0), ds);
      m_drop.apply_mask_rows(c.drop, bh * Tq, ds);
      for (Index i = 0; i < Tq; ++i) {
        const T dot = (P.row(i).array() * ds.row(i).array()).sum();
        ds.row(i) = (P.row(i).array() * (ds.row(i).array() - dot)).matrix();
      }
      gemm<T>(Op::N, Op::N, T(1), ds, c.k.block(b * Tk, h * D, Tk, D), T(0), dq.block(b * Tq, h * D, Tq, D));
      gemm<T>(Op::T, Op::N, T(1), ds, c.q.block(b * Tq, h * D, Tq, D), T(0), dk.block(b * Tk, h * D, Tk, D));
      if (want_bias) ds_all.middleRows(bh * Tq, Tq) = ds;
    });
    if (want_bias) {
      check_shape(site(), "dbias", *dbias, H * Tq, Tk);
      for (Index b = 0; b < B; ++b)  // fixed order: results do not depend on the thread count
        *dbias += ds_all.middleRows(b * H * Tq, H * Tq);
    }
    m_q.backward(xq, c.cq, dq, dxq);
    Matrix<T> tmp(B * Tk, d);
    m_k.backward(xkv, c.ck, dk, dxkv);
    m_v.backward(xkv, c.cv, dv, tmp);
    dxkv += tmp;
  }

  void set_training(bool on) {
    m_q.set_training(on);
    m_k.set_training(on);
    m_v.set_training(on);
    m_o.set_training(on);
    m_drop.set_training(on);
  }

  LinearSite<T>& q() { return m_q; }
  LinearSite<T>& k() { return m_k; }
  LinearSite<T>& v() { return m_v; }
  LinearSite<T>& o() { return m_o; }
  Dropout<T>& dropout() { return m_drop; }
  const T5AttentionConfig& config() const { return m_config; }
  const std::string& name() const { return m_name; }

 private:
  static T5AttentionConfig checked(const T5AttentionConfig& c) {
    PEMOE_CHECK_CONFIG(c.d_model > 0 && c.n_heads > 0 && c.d_kv > 0,
                       "T5Attention: d_model, n_heads and d_kv must be positive");
    return c;
  }
  std::string site() const { return "T5Attention '" + m_name + "'"; }

  template <class F>
  static void for_each_head(Index count, F&& f) {
    detail::parallel_rows(count, detail::row_blocks(count, 1), [&](int, Index b0, Index b1) {
      for (Index bh = b0; bh < b1; ++bh) f(bh);
    });
  }

  // P_bh = softmax(q·kᵀ + β_h + M) into rows bh·Tq … of c.probs; a row with no visible key is all zeros.
  void scores_softmax(Cache& c, const Matrix<T>* bias, Index bh) const {
    const Index H = m_config.n_heads, D = m_config.d_kv, Tq = c.tq, Tk = c.tk;
    const Index b = bh / H, h = bh % H;
    auto P = c.probs.middleRows(bh * Tq, Tq);
    gemm<T>(Op::N, Op::T, T(1), c.q.block(b * Tq, h * D, Tq, D), c.k.block(b * Tk, h * D, Tk, D), T(0), P);
    if (bias) P += bias->middleRows(h * Tq, Tq);
    const std::int64_t* keep = c.key_mask.empty() ? nullptr : c.key_mask.data() + b * Tk;
    constexpr T kNegInf = -std::numeric_limits<T>::infinity();
    for (Index i = 0; i < Tq; ++i) {
      const Index visible = m_config.causal ? i + 1 : Tk;
      auto row = P.row(i);
      row.tail(Tk - visible).setZero();
      auto seg = row.head(visible);
      if (keep)
        for (Index j = 0; j < visible; ++j)
          if (keep[j] == 0) seg(j) = kNegInf;
      const T m = seg.maxCoeff();
      if (m == kNegInf) {
        seg.setZero();
        continue;
      }
      seg = (seg.array() - m).exp().matrix();
      if (keep)
        for (Index j = 0; j < visible; ++j)
          if (keep[j] == 0) seg(j) = T(0);
      seg /= seg.sum();
    }
  }

  T5AttentionConfig m_config;
  LinearSite<T> m_q, m_k, m_v, m_o;
  Dropout<T> m_drop;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
  Index m_batch = 0, m_tq = 0, m_tk = 0;
  std::vector<std::int64_t> m_key_mask;
};

}  // namespace pemoe

// IWYU pragma: private, include pemoe/adapters/sparse_lora.hpp instead
/// @file selected_rows.hpp
/// @brief Kernels for a tile of tokens that selected the same rows of a small stacked matrix: what tokens
/// routed to the same k of E LoRA experts need of A_cat (E·r, d_in) and B_catᵀ (E·r, d_out), without
/// gathering the tokens' rows into per-expert copies.
///
/// A grouped GEMM over (token, expert) assignments gathers each token's x and dy rows once per selected
/// expert and scatter-adds k partial (d_out) outputs back; when k·r is a few dozen, those copies cost more
/// than the products. Here the tokens are grouped by their whole selected set instead (E = 8, k = 2: 28
/// sets), and a tile of TT tokens of one set reads the set's k·r rows once for all TT tokens, addressing the
/// tokens' own rows of x, y, dy and dx through pointers (`SparseLoRAExperts`, DESIGN §7).
///
/// Vectorised with Eigen's packet primitives, like the skinny kernels (core/detail/skinny_gemm.hpp). A
/// token's results do not depend on the tile it is in: its dots sum packet by packet then lane by lane, and
/// a gradient row adds the tokens' terms one token after the other.
#pragma once

#include <Eigen/Core>
#include <algorithm>

#include "pemoe/core/config.hpp"
#include "pemoe/core/detail/skinny_gemm.hpp"

namespace pemoe::detail {

/// Tokens per tile of the selected-row kernels.
inline constexpr int kSelectedTile = 4;

/// Leading dimension for a matrix whose rows the kernels read side by side: d rounded up to a cache line,
/// plus one line. Rows of 3072 floats (12 KB) would all start in the same L1 set (its index repeats every
/// 4 KB), so the 16 selected rows and their 16 gradient rows would overflow its 12 ways.
template <class T>
Index selected_rows_ld(Index d) {
  constexpr Index line = Index(64 / sizeof(T));
  return (d + line - 1) / line * line + line;
}

/**
 * @brief For TT tokens t: y_t[0, n) += Σ_{p < count} c[t·ldc + p] · R[row[p]][0, n) (R row-major, leading
 * dimension ldr); with kAdd = false, y_t = Σ … (y is only written). TT × U packets of the outputs stay in
 * registers while the count rows stream past once per tile; each output element adds the rows in the order
 * p = 0, 1, …
 */
template <int TT, class T, bool kAdd = true>
void add_selected_rows(const T* R, Index ldr, const Index* row, Index count, const T* c, Index ldc, Index n,
                       T* const* y) {
  namespace ei = Eigen::internal;
  using P = typename Simd<T>::Packet;
  constexpr Index w = Simd<T>::width;
  constexpr int U = Simd<T>::wide_file ? 4 : 2;  // packets per token and step
  Index o = 0;
  for (; o + U * w <= n; o += U * w) {
    P acc[TT][U];
    PEMOE_UNROLL
    for (int t = 0; t < TT; ++t) {
      PEMOE_UNROLL
      for (int u = 0; u < U; ++u) acc[t][u] = kAdd ? ei::ploadu<P>(y[t] + o + u * w) : ei::pset1<P>(T(0));
    }
    for (Index p = 0; p < count; ++p) {
      const T* r = R + row[p] * ldr + o;
      P rv[U];
      PEMOE_UNROLL
      for (int u = 0; u < U; ++u) rv[u] = ei::ploadu<P>(r + u * w);
      PEMOE_UNROLL
      for (int t = 0; t < TT; ++t) {
        const P cv = ei::pset1<P>(c[t * ldc + p]);
        PEMOE_UNROLL
        for (int u = 0; u < U; ++u) acc[t][u] = ei::pmadd(cv, rv[u], acc[t][u]);
      }
    }
    PEMOE_UNROLL
    for (int t = 0; t < TT; ++t) {
      PEMOE_UNROLL
      for (int u = 0; u < U; ++u) ei::pstoreu(y[t] + o + u * w, acc[t][u]);
    }
  }
  for (; o + w <= n; o += w) {
    P acc[TT];
    PEMOE_UNROLL
    for (int t = 0; t < TT; ++t) acc[t] = kAdd ? ei::ploadu<P>(y[t] + o) : ei::pset1<P>(T(0));
    for (Index p = 0; p < count; ++p) {
      const P rv = ei::ploadu<P>(R + row[p] * ldr + o);
      PEMOE_UNROLL
      for (int t = 0; t < TT; ++t) acc[t] = ei::pmadd(ei::pset1<P>(c[t * ldc + p]), rv, acc[t]);
    }
    PEMOE_UNROLL
    for (int t = 0; t < TT; ++t) ei::pstoreu(y[t] + o, acc[t]);
  }
  for (; o < n; ++o) {
    PEMOE_UNROLL
    for (int t = 0; t < TT; ++t) {
      T a = kAdd ? y[t][o] : T(0);
      for (Index p = 0; p < count; ++p) a += c[t * ldc + p] * R[row[p] * ldr + o];
      y[t][o] = a;
    }
  }
}

/// The body of `dot_and_accumulate_selected_rows` for one block of PB rows (`valid` of them real; the rest
/// repeat the last real row and are dropped), with what it computes fixed at compile time.
template <int TT, int PB, bool kDots, bool kGrad, class T>
void dot_and_accumulate_row_block(const T* const* v, Index n, const T* const* r, T* const* g, int valid,
                                  const T* c, Index ldc, T* dots, Index ldd) {
  namespace ei = Eigen::internal;
  using P = typename Simd<T>::Packet;
  constexpr Index w = Simd<T>::width;
  P acc[TT][PB];
  zero_block(acc);
  T cg[TT][PB];  // the gradient weights of the block, dropped rows zero (they are not written either)
  PEMOE_UNROLL
  for (int t = 0; t < TT; ++t) {
    PEMOE_UNROLL
    for (int q = 0; q < PB; ++q) cg[t][q] = kGrad && q < valid ? c[t * ldc + q] : T(0);
  }
  Index o = 0;
  for (; o + w <= n; o += w) {
    P vv[TT];
    PEMOE_UNROLL
    for (int t = 0; t < TT; ++t) vv[t] = ei::ploadu<P>(v[t] + o);
    PEMOE_UNROLL
    for (int q = 0; q < PB; ++q) {
      if (kDots) {
        const P rv = ei::ploadu<P>(r[q] + o);
        PEMOE_UNROLL
        for (int t = 0; t < TT; ++t) acc[t][q] = ei::pmadd(vv[t], rv, acc[t][q]);
      }
      if (kGrad && q < valid) {
        P gv = ei::ploadu<P>(g[q] + o);
        PEMOE_UNROLL
        for (int t = 0; t < TT; ++t) gv = ei::pmadd(ei::pset1<P>(cg[t][q]), vv[t], gv);
        ei::pstoreu(g[q] + o, gv);
      }
    }
  }
  for (int q = 0; q < valid; ++q) {
    if (kDots) {
      PEMOE_UNROLL
      for (int t = 0; t < TT; ++t) {
        T s = lane_sum<T>(acc[t][q]);
        for (Index e = o; e < n; ++e) s += v[t][e] * r[q][e];
        dots[t * ldd + q] += s;
      }
    }
    if (kGrad)
      for (Index e = o; e < n; ++e) {
        T gv = g[q][e];
        PEMOE_UNROLL
        for (int t = 0; t < TT; ++t) gv += cg[t][q] * v[t][e];
        g[q][e] = gv;
      }
  }
}

/**
 * @brief One pass over the TT tokens' rows v_t[0, n) for `count` selected rows p:
 * - dots[t·ldd + p] += Σ_o v_t[o]·R[row[p]][o] (when `dots` is given);
 * - G[row[p]][o] += Σ_t c[t·ldc + p]·v_t[o], token after token (when `G` is given; a gradient).
 *
 * Rows go in blocks of PB, whose TT × PB dot accumulators stay in registers; the tokens' packets are read
 * once per block.
 */
template <int TT, class T>
void dot_and_accumulate_selected_rows(const T* const* v, Index n, const T* R, Index ldr, const Index* row,
                                      Index count, T* dots, Index ldd, T* G, Index ldg, const T* c,
                                      Index ldc) {
  constexpr int PB = Simd<T>::wide_file ? 4 : 2;  // selected rows per block
  for (Index p0 = 0; p0 < count; p0 += PB) {
    const int valid = int(std::min<Index>(PB, count - p0));
    const T* r[PB];
    T* g[PB];
    PEMOE_UNROLL
    for (int q = 0; q < PB; ++q) {
      const Index p = p0 + std::min(q, valid - 1);
      r[q] = dots ? R + row[p] * ldr : nullptr;
      g[q] = G ? G + row[p] * ldg : nullptr;
    }
    T* d = dots ? dots + p0 : nullptr;
    const T* cp = c ? c + p0 : nullptr;
    if (dots && G)
      dot_and_accumulate_row_block<TT, PB, true, true>(v, n, r, g, valid, cp, ldc, d, ldd);
    else if (dots)
      dot_and_accumulate_row_block<TT, PB, true, false>(v, n, r, g, valid, cp, ldc, d, ldd);
    else if (G)
      dot_and_accumulate_row_block<TT, PB, false, true>(v, n, r, g, valid, cp, ldc, d, ldd);
  }
}

}  // namespace pemoe::detail

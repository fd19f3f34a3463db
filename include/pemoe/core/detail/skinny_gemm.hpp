// IWYU pragma: private, include pemoe/core/gemm.hpp instead
/// @file skinny_gemm.hpp
/// @brief Register-blocked kernels for the products with one extent of at most `kSkinnyMax` (E experts, a
/// LoRA rank): the router logits (t, d)·(d, E), the MoV merge (t, E)·(E, d) and the outer-product gradients
/// (E, t)·(t, d).
///
/// Eigen's GEMM packs both operands into blocks on every call; when one extent is E = 8 the packing of the
/// (t, d) operand costs about as much as the product, and the micro-kernel (48 × 4 on AVX-512) runs mostly
/// empty. These kernels read the large operand once, straight from memory, and keep the small extent in
/// registers. `gemm` (core/gemm.hpp) routes such shapes here, so every layer gets them through the one seam.
///
/// Vectorised with Eigen's packet primitives (the SIMD level the translation unit is compiled for: SSE2,
/// AVX2, AVX-512, NEON, or scalar). Every output element is summed in an order fixed by the shapes alone (not
/// by the row blocking or the thread count), so results are the same bits for any split.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "pemoe/core/config.hpp"
#include "pemoe/core/detail/parallel_rows.hpp"

namespace pemoe::detail {

/// Products whose small extent is at most this go to the skinny kernels.
inline constexpr Index kSkinnyMax = 16;

/// The SIMD packet of T and its register budget.
template <class T>
struct Simd {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  static constexpr Index width = Eigen::internal::unpacket_traits<Packet>::size;
  static constexpr bool wide_file = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32;
};

/// Writes `C(i, j) = alpha·v + beta·C(i, j)` (C not read when beta = 0, as BLAS).
template <class T>
struct AxpbyOut {
  using Packet = typename Simd<T>::Packet;
  T* c;
  Index ldc;
  T alpha, beta;

  void packet(Index i, Index j, const Packet& v) const {
    namespace ei = Eigen::internal;
    T* p = c + i * ldc + j;
    Packet r = ei::pmul(ei::pset1<Packet>(alpha), v);
    if (beta != T(0)) r = ei::pmadd(ei::pset1<Packet>(beta), ei::ploadu<Packet>(p), r);
    ei::pstoreu(p, r);
  }
  void scalar(Index i, Index j, T v) const {
    T* p = c + i * ldc + j;
    *p = beta != T(0) ? alpha * v + beta * *p : alpha * v;
  }
};

/// Writes `C(i, j) = S(i, j)·v`: the product scales another matrix on its way out (MoV: y = h ⊙ (G·L)).
template <class T>
struct ScaledOut {
  using Packet = typename Simd<T>::Packet;
  const T* s;
  Index lds;
  T* c;
  Index ldc;

  void packet(Index i, Index j, const Packet& v) const {
    namespace ei = Eigen::internal;
    ei::pstoreu(c + i * ldc + j, ei::pmul(ei::ploadu<Packet>(s + i * lds + j), v));
  }
  void scalar(Index i, Index j, T v) const { c[i * ldc + j] = s[i * lds + j] * v; }
};

/// Writes `C(j, i) = alpha·v + beta·C(j, i)`: the kernel computes Cᵀ (a packet becomes a column of C).
template <class T>
struct TransposedAxpbyOut {
  using Packet = typename Simd<T>::Packet;
  AxpbyOut<T> c;

  void packet(Index i, Index j, const Packet& v) const {
    T lanes[Simd<T>::width];
    Eigen::internal::pstoreu(lanes, v);
    PEMOE_UNROLL
    for (Index l = 0; l < Simd<T>::width; ++l) c.scalar(j + l, i, lanes[l]);
  }
  void scalar(Index i, Index j, T v) const { c.scalar(j, i, v); }
};

/// Sum of a packet's lanes, left to right (not Eigen's `predux`, whose AVX-512 double version trips GCC 12's
/// -Wuninitialized inside the intrinsics headers).
template <class T>
inline T lane_sum(const typename Simd<T>::Packet& v) {
  T lanes[Simd<T>::width];
  Eigen::internal::pstoreu(lanes, v);
  T s = lanes[0];
  PEMOE_UNROLL
  for (Index l = 1; l < Simd<T>::width; ++l) s += lanes[l];
  return s;
}

/// Sets an R × C block of packet accumulators to zero.
template <class P, int R, int C>
inline void zero_block(P (&acc)[R][C]) {
  PEMOE_UNROLL
  for (int r = 0; r < R; ++r) {
    PEMOE_UNROLL
    for (int c = 0; c < C; ++c) acc[r][c] = Eigen::internal::pset1<P>(0);
  }
}

/// Threads for `units` independent pieces of `work_per_unit` multiply-adds each (1 inside a parallel region).
inline int skinny_blocks(Index units, Index work_per_unit) {
  constexpr Index kMinWork = Index(1) << 17;  // multiply-adds per thread below which threads cost more
  const Index min_units = std::max<Index>(1, kMinWork / std::max<Index>(1, work_per_unit));
  return row_blocks(units, min_units);
}

// ---- C (m, n) = A (m, k) · B (n, k)ᵀ, n small: row dot products ----------------------------------------

/// R rows of A against C rows of B: R·C dot products of length k, each summed lane-wise then reduced.
template <int R, int C, class T, class Out>
inline void abt_block(const T* A, Index lda, const T* B, Index ldb, Index k, Index i0, Index j0,
                      const Out& out) {
  namespace ei = Eigen::internal;
  using P = typename Simd<T>::Packet;
  constexpr Index W = Simd<T>::width;
  P acc[R][C];
  zero_block(acc);
  Index p = 0;
  for (; p + W <= k; p += W) {
    P b[C];
    PEMOE_UNROLL
    for (int c = 0; c < C; ++c) b[c] = ei::ploadu<P>(B + c * ldb + p);
    PEMOE_UNROLL
    for (int r = 0; r < R; ++r) {
      const P a = ei::ploadu<P>(A + r * lda + p);
      PEMOE_UNROLL
      for (int c = 0; c < C; ++c) acc[r][c] = ei::pmadd(a, b[c], acc[r][c]);
    }
  }
  PEMOE_UNROLL
  for (int r = 0; r < R; ++r) {
    PEMOE_UNROLL
    for (int c = 0; c < C; ++c) {
      T s = lane_sum<T>(acc[r][c]);
      for (Index q = p; q < k; ++q) s += A[r * lda + q] * B[c * ldb + q];
      out.scalar(i0 + r, j0 + c, s);
    }
  }
}

/// `out(i, j, Σ_p A(i, p)·B(j, p))` for i < m, j < n.   A: (m, k) stride lda, B: (n, k) stride ldb
template <class T, class Out>
void skinny_abt(const T* A, Index lda, const T* B, Index ldb, Index m, Index n, Index k, const Out& out) {
  constexpr int R = Simd<T>::wide_file ? 4 : 2, C = 4;
  auto rows = [&](Index i0, Index i1) {
    for (Index i = i0; i < i1; i += R) {
      const bool full_r = i + R <= i1;
      for (Index j = 0; j < n; j += C) {
        const bool full_c = j + C <= n;
        if (full_r && full_c) {
          abt_block<R, C>(A + i * lda, lda, B + j * ldb, ldb, k, i, j, out);
        } else if (full_c) {
          for (Index ii = i; ii < i1; ++ii)
            abt_block<1, C>(A + ii * lda, lda, B + j * ldb, ldb, k, ii, j, out);
        } else {
          for (Index ii = i; ii < std::min(i + R, i1); ++ii)
            for (Index jj = j; jj < n; ++jj)
              abt_block<1, 1>(A + ii * lda, lda, B + jj * ldb, ldb, k, ii, jj, out);
        }
      }
    }
  };
  parallel_rows(m, skinny_blocks(m, n * k), [&](int, Index i0, Index i1) { rows(i0, i1); });
}

// ---- C (m, n) = G (m, q) · B (q, n), q small: rows mixed from q rows of B --------------------------------

/// R rows × J packets of C: Σ_p G(i, p)·B(p, j..), p in order.
template <int R, int J, class T, class Out>
inline void ab_block(const T* G, Index ldg, const T* B, Index ldb, Index q, Index i0, Index j0,
                     const Out& out) {
  namespace ei = Eigen::internal;
  using P = typename Simd<T>::Packet;
  constexpr Index W = Simd<T>::width;
  P acc[R][J];
  zero_block(acc);
  for (Index p = 0; p < q; ++p) {
    P b[J];
    PEMOE_UNROLL
    for (int c = 0; c < J; ++c) b[c] = ei::ploadu<P>(B + p * ldb + j0 + c * W);
    PEMOE_UNROLL
    for (int r = 0; r < R; ++r) {
      const P g = ei::pset1<P>(G[(i0 + r) * ldg + p]);
      PEMOE_UNROLL
      for (int c = 0; c < J; ++c) acc[r][c] = ei::pmadd(g, b[c], acc[r][c]);
    }
  }
  PEMOE_UNROLL
  for (int r = 0; r < R; ++r) {
    PEMOE_UNROLL
    for (int c = 0; c < J; ++c) out.packet(i0 + r, j0 + c * W, acc[r][c]);
  }
}

/// `out(i, j, Σ_p G(i, p)·B(p, j))` for i < m, j < n.   G: (m, q) stride ldg, B: (q, n) stride ldb
///
/// With `lower` G is lower triangular (G(i, p) = 0 for p > i: causal attention probabilities), and a block of
/// rows i … i + R − 1 sums p < i + R only (in the packet columns): the skipped terms are exact zeros, so the
/// result is the same bits.
template <class T, class Out>
void skinny_ab(const T* G, Index ldg, const T* B, Index ldb, Index m, Index q_all, Index n, const Out& out,
               bool lower = false) {
  constexpr Index W = Simd<T>::width;
  constexpr int R = Simd<T>::wide_file ? 8 : 4, J = 2;  // 8 × 2 measured best of 4×4, 2×8, 6×3 on AVX-512
  auto rows = [&](Index i0, Index i1) {
    for (Index i = i0; i < i1; i += R) {
      const Index r = std::min<Index>(R, i1 - i);
      const Index q = lower ? std::min(q_all, i + r) : q_all;
      Index j = 0;
      for (; j + J * W <= n; j += J * W) {
        if (r == R)
          ab_block<R, J>(G, ldg, B, ldb, q, i, j, out);
        else
          for (Index ii = i; ii < i + r; ++ii) ab_block<1, J>(G, ldg, B, ldb, q, ii, j, out);
      }
      for (; j + W <= n; j += W)
        if (r == R)
          ab_block<R, 1>(G, ldg, B, ldb, q, i, j, out);
        else
          for (Index ii = i; ii < i + r; ++ii) ab_block<1, 1>(G, ldg, B, ldb, q, ii, j, out);
      // The last columns sum every p even when G is lower triangular: GCC -O3 compiles this scalar loop
      // differently for another bound, and the skipped form came out 1 ulp apart.
      for (; j < n; ++j)
        for (Index ii = i; ii < i + r; ++ii) {
          T s(0);
          for (Index p = 0; p < q_all; ++p) s += G[ii * ldg + p] * B[p * ldb + j];
          out.scalar(ii, j, s);
        }
    }
  };
  parallel_rows(m, skinny_blocks(m, n * q_all), [&](int, Index i0, Index i1) { rows(i0, i1); });
}

// ---- C (q, n) = G (m, q)ᵀ · A (m, n), q small: outer products summed over m rows
// ----------------------------

/// P rows × J packets of C over rows [i0, i1): acc = S (or 0 when `first`) + Σ_i G(i, p0 + p)·A(i, j..), i in
/// order; written to S, or to `out` when `last`.
template <int P, int J, class T, class Out>
inline void atb_block(const T* G, Index ldg, const T* A, Index lda, Index i0, Index i1, Index p0, Index j0,
                      T* S, Index lds, bool first, bool last, const Out& out) {
  namespace ei = Eigen::internal;
  using Pk = typename Simd<T>::Packet;
  constexpr Index W = Simd<T>::width;
  Pk acc[P][J];
  PEMOE_UNROLL
  for (int p = 0; p < P; ++p) {
    PEMOE_UNROLL
    for (int c = 0; c < J; ++c)
      acc[p][c] = first ? ei::pset1<Pk>(T(0)) : ei::ploadu<Pk>(S + (p0 + p) * lds + j0 + c * W);
  }
  for (Index i = i0; i < i1; ++i) {
    Pk a[J];
    PEMOE_UNROLL
    for (int c = 0; c < J; ++c) a[c] = ei::ploadu<Pk>(A + i * lda + j0 + c * W);
    PEMOE_UNROLL
    for (int p = 0; p < P; ++p) {
      const Pk g = ei::pset1<Pk>(G[i * ldg + p0 + p]);
      PEMOE_UNROLL
      for (int c = 0; c < J; ++c) acc[p][c] = ei::pmadd(g, a[c], acc[p][c]);
    }
  }
  PEMOE_UNROLL
  for (int p = 0; p < P; ++p) {
    PEMOE_UNROLL
    for (int c = 0; c < J; ++c) {
      if (last)
        out.packet(p0 + p, j0 + c * W, acc[p][c]);
      else
        ei::pstoreu(S + (p0 + p) * lds + j0 + c * W, acc[p][c]);
    }
  }
}

/// `out(p, j, Σ_i G(i, p)·A(i, j))` for p < q, j < n.   G: (m, q) stride ldg, A: (m, n) stride lda
///
/// The rows are walked in blocks of `kRowBlock` (partial sums kept in a (q, n) scratch): a column walk over
/// thousands of rows would touch a new page per row and thrash the TLB. With `lower` G is lower triangular
/// (G(i, p) = 0 for i < p), and the outputs p0 … of a block sum rows i ≥ p0 only (the same bits).
template <class T, class Out>
void skinny_atb(const T* G, Index ldg, const T* A, Index lda, Index m, Index q, Index n, const Out& out,
                bool lower = false) {
  constexpr Index W = Simd<T>::width, kRowBlock = 64;
  constexpr int PB = Simd<T>::wide_file ? 8 : 4, J = 2;
  std::vector<T> scratch(m > kRowBlock ? static_cast<std::size_t>(q * n) : 0);
  T* S = scratch.data();
  // Columns are split over threads in whole packets: each element has one owner and one summation order.
  const Index packets = (n + W - 1) / W;
  auto cols = [&](Index c0, Index c1) {  // packet columns [c0, c1)
    const Index j_end = std::min(n, c1 * W);
    for (Index i0 = 0; i0 < std::max<Index>(m, 1); i0 += kRowBlock) {
      const Index i1 = std::min(m, i0 + kRowBlock);
      const bool first = i0 == 0, last = i1 >= m;
      for (Index p0 = 0; p0 < q; p0 += PB) {
        const Index pb = std::min<Index>(PB, q - p0);
        // rows before p0 hold zeros for every output of this block when G is lower triangular (a row block
        // wholly before p0 then only passes its partial sums on)
        const Index is = lower ? std::min(i1, std::max(i0, p0)) : i0;
        Index j = c0 * W;
        for (; j + J * W <= j_end; j += J * W) {
          if (pb == PB)
            atb_block<PB, J>(G, ldg, A, lda, is, i1, p0, j, S, n, first, last, out);
          else
            for (Index p = p0; p < p0 + pb; ++p)
              atb_block<1, J>(G, ldg, A, lda, is, i1, p, j, S, n, first, last, out);
        }
        for (; j + W <= j_end; j += W)
          for (Index p = p0; p < p0 + pb; ++p)
            atb_block<1, 1>(G, ldg, A, lda, is, i1, p, j, S, n, first, last, out);
        for (; j < j_end; ++j)
          for (Index p = p0; p < p0 + pb; ++p) {
            T s = first ? T(0) : S[p * n + j];  // every row, as for the last columns of skinny_ab
            for (Index i = i0; i < i1; ++i) s += G[i * ldg + p] * A[i * lda + j];
            if (last)
              out.scalar(p, j, s);
            else
              S[p * n + j] = s;
          }
      }
    }
  };
  parallel_rows(packets, skinny_blocks(packets, W * m * q), [&](int, Index c0, Index c1) { cols(c0, c1); });
}

}  // namespace pemoe::detail

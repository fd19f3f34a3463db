/// @file gemm.hpp
/// @brief The one seam through which every matrix product in pemoe goes.
///
/// `gemm(op_a, op_b, alpha, A, B, beta, C)` computes `C = alpha·op(A)·op(B) + beta·C` over row-major
/// views, BLAS-style. The default backend is Eigen's GEMM (header-only, multi-threaded by OpenMP
/// when enabled). A different backend (oneDNN, cuBLAS) plugs in here without touching any layer;
/// no layer calls Eigen's product directly.
///
/// Products with one extent of at most `detail::kSkinnyMax` (16: E experts, a LoRA rank; the other
/// extents any) go to pemoe's own register-blocked kernels (detail/skinny_gemm.hpp), which read the large
/// operand once instead of packing it. Measured with AVX-512, against Eigen's GEMM: the dot-product and
/// outer-product shapes (t, d)·(d, 8) and (8, t)·(t, d) run 1.5-3.4× faster; the mix shape (t, 8)·(8, d) runs
/// at the same speed alone, and faster inside MoV, where the result is scaled on its way out and never
/// stored.
///
/// With `PEMOE_WITH_DNNL` (the CMake target `pemoe::dnnl`) the other f32 products go to oneDNN matmul
/// primitives, cached per shape (core/dnnl/matmul.hpp); `set_gemm_backend` switches back to Eigen at run
/// time (benchmarks compare both in one process). Double precision always runs on Eigen (oneDNN has no
/// f64 matmul), and so does a product called from inside an OpenMP parallel region. Inside a
/// `GemmPrecisionScope(GemmPrecision::bf16)` those oneDNN products round their operands to bf16 (f32
/// accumulation), as PyTorch's autocast does.
///
/// Speed depends on the compiler flags of the translation unit that instantiates it: with
/// `-march=native` on AVX-512 machines Eigen's fp32 GEMM is 4-5× faster than with the default SSE2.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <type_traits>

#include "pemoe/core/config.hpp"
#include "pemoe/core/detail/skinny_gemm.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/profile.hpp"
#include "pemoe/core/tensor.hpp"
#ifdef PEMOE_WITH_DNNL
#include "pemoe/core/dnnl/bf16_speed.hpp"
#include "pemoe/core/dnnl/matmul.hpp"
#include "pemoe/core/dnnl/matmul_bf16.hpp"
#endif

namespace pemoe {

/// Whether a `gemm` operand is used as stored or transposed.
enum class Op { N, T };

/// The engine of `gemm`'s large f32 products.
enum class GemmBackend {
  eigen,  ///< Eigen's GEMM (header-only; the default without oneDNN)
  dnnl    ///< oneDNN matmul primitives (needs `PEMOE_WITH_DNNL`; the default with it)
};

/// Whether this build has the oneDNN backend (`PEMOE_WITH_DNNL`, CMake target `pemoe::dnnl`).
constexpr bool have_dnnl() {
#ifdef PEMOE_WITH_DNNL
  return true;
#else
  return false;
#endif
}

namespace detail {
inline std::atomic<GemmBackend>& gemm_backend_state() {
  static std::atomic<GemmBackend> b{have_dnnl() ? GemmBackend::dnnl : GemmBackend::eigen};
  return b;
}
}  // namespace detail

/// The backend `gemm` uses now.
inline GemmBackend gemm_backend() {
  return detail::gemm_backend_state().load(std::memory_order_relaxed);
}

/// Chooses the backend of `gemm`'s large f32 products for the whole process; throws `ConfigError` for
/// `GemmBackend::dnnl` in a build without oneDNN.
inline void set_gemm_backend(GemmBackend b) {
  PEMOE_CHECK_CONFIG(b != GemmBackend::dnnl || have_dnnl(), "set_gemm_backend: ", detail::kNoDnnlBackend,
                     ", or keep GemmBackend::eigen");
  detail::gemm_backend_state().store(b, std::memory_order_relaxed);
}

/// "eigen" or "dnnl".
inline const char* gemm_backend_name(GemmBackend b) {
  return b == GemmBackend::dnnl ? "dnnl" : "eigen";
}

/// The precision of `gemm`'s large f32 products on the calling thread.
enum class GemmPrecision {
  f32,  ///< f32 operands (the default)
  bf16  ///< operands rounded to bf16, f32 accumulation and output (`GemmPrecisionScope`)
};

namespace detail {
inline GemmPrecision& gemm_precision_state() {
  thread_local GemmPrecision p = GemmPrecision::f32;
  return p;
}
}  // namespace detail

/// The precision `gemm` uses on this thread now.
inline GemmPrecision gemm_precision() {
  return detail::gemm_precision_state();
}

/**
 * @brief While alive, this thread's large f32 `gemm` products (those that run on oneDNN) take bf16-rounded
 * operands with f32 accumulation: pemoe's counterpart of PyTorch's `torch.autocast("cpu",
 * dtype=torch.bfloat16)` for the products of adapters and other unpacked weights.
 *
 * Frozen weights packed by `pack_frozen` / `Linear::pack` keep their pack's dtype; the small-extent products
 * (routers, ranks ≤ 16: the skinny kernels), double precision and the Eigen backend stay as they are; so do
 * the parameters, their gradients and the optimizer, which are f32. Scopes nest and restore the previous
 * precision when they end. Constructing a bf16 scope throws `ConfigError` without oneDNN or on a CPU without
 * bf16 units, and warns once (stderr) when this CPU runs bf16 slower than f32 (core/dnnl/bf16_speed.hpp).
 */
class GemmPrecisionScope {
 public:
  explicit GemmPrecisionScope(GemmPrecision p) : m_previous(gemm_precision()) {
    if (p == GemmPrecision::bf16) {
#ifdef PEMOE_WITH_DNNL
      PEMOE_CHECK_CONFIG(dnnl_backend::cpu_has_bf16(),
                         "GemmPrecisionScope(bf16): ", dnnl_backend::bf16_unavailable_reason(),
                         " (keep GemmPrecision::f32)");
      dnnl_backend::warn_once_if_bf16_slow();
#else
      throw ConfigError(detail::concat("GemmPrecisionScope(bf16): ", detail::kNoDnnlBackend,
                                       ", or keep GemmPrecision::f32"));
#endif
    }
    detail::gemm_precision_state() = p;
  }
  ~GemmPrecisionScope() {
    detail::gemm_precision_state() = m_previous;
  }
  GemmPrecisionScope(const GemmPrecisionScope&) = delete;
  GemmPrecisionScope& operator=(const GemmPrecisionScope&) = delete;

 private:
  GemmPrecision m_previous;
};

namespace detail {

/// The skinny-kernel dispatch of `gemm`: returns false (nothing done) when no extent is small.
template <class T>
bool skinny(Op op_a, Op op_b, T alpha, ConstMatrixRef<T> A, ConstMatrixRef<T> B, T beta, MatrixRef<T> C,
            Index m, Index n, Index k) {
  constexpr Index S = kSkinnyMax;
  const AxpbyOut<T> out{C.data(), C.outerStride(), alpha, beta};
  const T* a = A.data();
  const T* b = B.data();
  const Index lda = A.outerStride(), ldb = B.outerStride();
  if (op_a == Op::N && op_b == Op::T && n <= S) {  // (m, k)·(n, k)ᵀ: dot products (router logits, x·Aᵀ)
    skinny_abt(a, lda, b, ldb, m, n, k, out);
  } else if (op_a == Op::N && op_b == Op::N && k <= S) {  // (m, q)·(q, n): rows mixed (MoV merge, h·A)
    skinny_ab(a, lda, b, ldb, m, k, n, out);
  } else if (op_a == Op::T && op_b == Op::N && m <= S) {  // (k, q)ᵀ·(k, n): outer products (dW_g, dA)
    skinny_atb(a, lda, b, ldb, k, m, n, out);
  } else if (op_a == Op::T && op_b == Op::N && n <= S) {  // (k, m)ᵀ·(k, q) = ((k, q)ᵀ·(k, m))ᵀ (dB)
    skinny_atb(b, ldb, a, lda, k, n, m, TransposedAxpbyOut<T>{out});
  } else if (op_a == Op::N && op_b == Op::N && n <= S) {  // (m, k)·(k, q): Bᵀ is small, dot products (dy·B)
    const Matrix<T> bt = B.transpose();
    skinny_abt(a, lda, bt.data(), k, m, n, k, out);
  } else if (op_a == Op::N && op_b == Op::T && k <= S) {  // (m, q)·(n, q)ᵀ: Bᵀ is small, rows mixed (h·Bᵀ)
    const Matrix<T> bt = B.transpose();
    skinny_ab(a, lda, bt.data(), n, m, k, n, out);
  } else {
    return false;
  }
  return true;
}

/// Products of at most this many multiply-adds (m·n·k) stay on Eigen under the oneDNN backend: measured on
/// one AVX-512 core, a (32, 64)·(64, 32) product takes 1.3 µs on Eigen and 2.5 µs through a oneDNN matmul
/// (its per-call cost), (64, 64)·(64, 64) 3.8 against 4.3 µs; from (96, 64)·(64, 96) on oneDNN is faster.
/// These are attention's per-head products at short sequences. Inside GPT-2 training at T = 64 the rule
/// measured neutral (paired runs 284 / 283 and 288 / 286 tokens/s): it pays off only for shorter sequences.
inline constexpr double kDnnlMinWork = 64.0 * 64.0 * 64.0;

}  // namespace detail

/**
 * @brief `C = alpha·op(A)·op(B) + beta·C` on row-major views.
 *
 * Shapes: op(A): (m, k), op(B): (k, n), C: (m, n). `beta == 0` overwrites C (NaN in C is not
 * propagated), as BLAS does. C must not share memory with A or B (the product would read what it has
 * already overwritten): throws `ShapeError` when it does, and on mismatched extents.
 * Cost: 2·m·n·k flops.
 */
template <class T>
void gemm(Op op_a, Op op_b, T alpha, ConstMatrixRef<T> A, ConstMatrixRef<T> B, T beta, MatrixRef<T> C) {
  const Index m = op_a == Op::N ? A.rows() : A.cols();
  const Index ka = op_a == Op::N ? A.cols() : A.rows();
  const Index kb = op_b == Op::N ? B.rows() : B.cols();
  const Index n = op_b == Op::N ? B.cols() : B.rows();
  PEMOE_CHECK_SHAPE(ka == kb && C.rows() == m && C.cols() == n, "gemm: op(A) is (", m, ", ", ka,
                    "), op(B) is (", kb, ", ", n, "), C is (", C.rows(), ", ", C.cols(), ")");
  PEMOE_CHECK_SHAPE(!detail::views_overlap(C, A) && !detail::views_overlap(C, B),
                    "gemm: the output C shares memory with an input (A or B); pass a separate output buffer");
  // Profiled (when a profile::Session is active) as "gemm", "gemm_skinny" for the small-extent products
  // of adapters and routers, or "gemm_bf16" under a bf16 `GemmPrecisionScope`.
  const bool small = std::min({m, n, ka}) <= detail::kSkinnyMax;
  // the f32 products oneDNN runs unless a skinny kernel takes them (Eigen: double, the Eigen backend, OpenMP
  // regions, products of at most kDnnlMinWork multiply-adds)
  const bool on_dnnl = std::is_same_v<T, float> && have_dnnl() && gemm_backend() == GemmBackend::dnnl &&
                       !profile::detail::in_parallel() &&
                       double(m) * double(n) * double(ka) > detail::kDnnlMinWork;
  const bool bf16 = on_dnnl && gemm_precision() == GemmPrecision::bf16;
  const profile::Scope scope(small ? "gemm_skinny" : bf16 ? "gemm_bf16" : "gemm");
  if (m == 0 || n == 0 || ka == 0) {
    if (beta == T(0))
      C.setZero();
    else
      C *= beta;
    return;
  }
  if (detail::skinny(op_a, op_b, alpha, A, B, beta, C, m, n, ka)) return;
#ifdef PEMOE_WITH_DNNL
  if constexpr (std::is_same_v<T, float>) {
    if (on_dnnl) {
      if (bf16 && dnnl_backend::gemm_bf16(op_a == Op::T, op_b == Op::T, alpha, A, B, beta, C)) return;
      if (dnnl_backend::gemm_f32(op_a == Op::T, op_b == Op::T, alpha, A, B, beta, C)) return;
    }
  }
#endif
  auto run = [&](const auto& product) {
    if (beta == T(0)) {
      C.noalias() = alpha * product;
    } else {
      if (beta != T(1)) C *= beta;
      C.noalias() += alpha * product;
    }
  };
  if (op_a == Op::N && op_b == Op::N)
    run(A * B);
  else if (op_a == Op::N && op_b == Op::T)
    run(A * B.transpose());
  else if (op_a == Op::T && op_b == Op::N)
    run(A.transpose() * B);
  else
    run(A.transpose() * B.transpose());
}

}  // namespace pemoe

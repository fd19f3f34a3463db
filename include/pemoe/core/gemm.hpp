/// @file gemm.hpp
/// @brief The one seam through which every matrix product in pemoe goes.
///
/// `gemm(op_a, op_b, alpha, A, B, beta, C)` computes `C = alpha·op(A)·op(B) + beta·C` over row-major
/// views, BLAS-style. The default backend is Eigen's GEMM (header-only, multi-threaded by OpenMP
/// when enabled). A different backend (oneDNN, cuBLAS) plugs in here without touching any layer;
/// no layer calls Eigen's product directly.
///
/// Speed depends on the compiler flags of the translation unit that instantiates it: with
/// `-march=native` on AVX-512 machines Eigen's fp32 GEMM is 4-5× faster than with the default SSE2.
#pragma once

#include <Eigen/Core>

#include "pemoe/core/error.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe {

/// Whether a `gemm` operand is used as stored or transposed.
enum class Op { N, T };

/**
 * @brief `C = alpha·op(A)·op(B) + beta·C` on row-major views.
 *
 * Shapes: op(A): (m, k), op(B): (k, n), C: (m, n). `beta == 0` overwrites C (NaN in C is not
 * propagated), as BLAS does. Throws `ShapeError` on mismatched extents.
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
  if (m == 0 || n == 0 || ka == 0) {
    if (beta == T(0))
      C.setZero();
    else
      C *= beta;
    return;
  }
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

/// @file matmul_bf16.hpp
/// @brief `gemm_bf16`: an f32 product computed from bf16-rounded operands with f32 accumulation (oneDNN),
/// the product `GemmPrecision::bf16` (core/gemm.hpp) sends here.
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

#include <cstddef>

#include "pemoe/core/dnnl/bf16_operands.hpp"
#include "pemoe/core/dnnl/matmul.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe::dnnl_backend {

/**
 * @brief `C = alpha·op(bf16(A))·op(bf16(B)) + beta·C`: A and B rounded to bf16 (to nearest even), the
 * products accumulated and C written in f32.
 *
 * This is what PyTorch's `torch.autocast("cpu", dtype=torch.bfloat16)` does to a linear layer's product,
 * except that the output stays f32 (autocast returns bf16). Same contract as `gemm_f32` (row-major views,
 * op(A) (m, k), op(B) (k, n), C (m, n), `beta == 0` overwrites C; the caller has checked the extents). Each
 * operand is rounded as stored into a per-thread buffer (one pass over it; transposes stay strides), and
 * the matmul primitive is cached per shape like the f32 ones. Returns false, having done nothing, when
 * oneDNN has only its reference implementation for these strides: the caller then runs the product in f32.
 */
inline bool gemm_bf16(bool trans_a, bool trans_b, float alpha, ConstMatrixRef<float> A,
                      ConstMatrixRef<float> B, float beta, MatrixRef<float> C) {
  using dt = dnnl::memory::data_type;
  const Index m = C.rows(), n = C.cols();
  const Index k = trans_a ? A.rows() : A.cols();
  MatmulKey key = make_key();
  key.m = m;
  key.n = n;
  key.k = k;
  // the rounded copies are contiguous row-major (A.rows(), A.cols()) and (B.rows(), B.cols())
  key.a_rs = trans_a ? 1 : A.cols();
  key.a_cs = trans_a ? A.cols() : 1;
  key.b_rs = trans_b ? 1 : B.cols();
  key.b_cs = trans_b ? B.cols() : 1;
  key.c_rs = C.outerStride();
  key.a_dt = key.b_dt = static_cast<int>(dt::bf16);
  key.c_dt = static_cast<int>(dt::f32);
  key.alpha = alpha;
  key.beta = beta;
  const CachedMatmul& mm = MatmulCache::instance().get(key, [&] {
    const dnnl::matmul::desc d(strided_desc(m, k, key.a_rs, key.a_cs, dt::bf16),
                               strided_desc(k, n, key.b_rs, key.b_cs, dt::bf16),
                               strided_desc(m, n, key.c_rs, 1, dt::f32));
    return dnnl::matmul::primitive_desc(d, matmul_attr(alpha, beta), engine());
  });
  if (mm.reference) return false;
  auto* a16 = thread_buffer<Eigen::bfloat16, kBf16LeftOperand>(static_cast<std::size_t>(A.rows() * A.cols()));
  auto* b16 =
      thread_buffer<Eigen::bfloat16, kBf16RightOperand>(static_cast<std::size_t>(B.rows() * B.cols()));
  round_to_bf16(A, a16);
  round_to_bf16(B, b16);
  execute(mm, a16, b16, C.data());
  return true;
}

}  // namespace pemoe::dnnl_backend

/// @file bf16_operands.hpp
/// @brief f32 operands rounded to bf16 on their way into a oneDNN product, in per-thread buffers.
#pragma once

#include <Eigen/Core>
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cstddef>
#include <memory>

#include "pemoe/core/tensor.hpp"

namespace pemoe::dnnl_backend {

/// The per-thread scratch buffers of bf16 and packed products (`thread_buffer`'s slots).
enum BufferSlot : int {
  kBf16LeftOperand,   ///< the left operand rounded to bf16
  kBf16RightOperand,  ///< the right operand rounded to bf16 (`gemm_bf16`)
  kContiguousLeft,    ///< an f32 left operand copied contiguous (reference-loop avoidance)
  kContiguousOutput,  ///< the product before it is added into a strided output (reference-loop avoidance)
};

/// This thread's buffer in `Slot` of `elements` values of T (grown on demand, never shrunk).
template <class T, int Slot>
T* thread_buffer(std::size_t elements) {
  thread_local std::unique_ptr<T[]> buf;
  thread_local std::size_t size = 0;
  if (elements > size) {
    buf.reset(new T[elements]);
    size = elements;
  }
  return buf.get();
}

/**
 * @brief dst (rows·cols, row-major, contiguous) = `a` rounded to bf16, to nearest even (as Eigen's
 * `bfloat16(float)` and PyTorch's `.to(torch.bfloat16)`).
 *
 * Compiled with AVX512-BF16 (`-march=native` on such a CPU) it converts 32 values per instruction
 * (`vcvtne2ps2bf16`), 2-5× faster than the scalar conversion; the result is the same bits.
 */
inline void round_to_bf16(ConstMatrixRef<float> a, Eigen::bfloat16* dst) {
  const Index rows = a.rows(), cols = a.cols();
  for (Index i = 0; i < rows; ++i) {
    const float* s = a.data() + i * a.outerStride();
    Eigen::bfloat16* d = dst + i * cols;
    Index j = 0;
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    for (; j + 32 <= cols; j += 32) {
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + j + 16), _mm512_loadu_ps(s + j));
      _mm512_storeu_si512(static_cast<void*>(d + j), (__m512i)v);
    }
#endif
    for (; j < cols; ++j) d[j] = Eigen::bfloat16(s[j]);
  }
}

}  // namespace pemoe::dnnl_backend

// IWYU pragma: private, include the adapter headers instead
/// @file parallel_rows.hpp
/// @brief `detail::parallel_rows`: a static split of a row range over the OpenMP threads (serial without
/// OpenMP or inside a parallel region), so per-thread partial sums reduce in a fixed order.
#pragma once

#include <exception>

#include "pemoe/core/config.hpp"

namespace pemoe::detail {

/// Number of blocks `parallel_rows` splits `n` rows into (1 when serial).
inline int row_blocks(Index n, Index min_rows_per_thread = 16) {
#ifdef _OPENMP
  if (omp_in_parallel()) return 1;
  const Index by_size = n / (min_rows_per_thread > 0 ? min_rows_per_thread : 1);
  const int t = omp_get_max_threads();
  return by_size < 1 ? 1 : (by_size < t ? int(by_size) : t);
#else
  (void)n;
  (void)min_rows_per_thread;
  return 1;
#endif
}

/**
 * @brief Calls `f(block, begin, end)` for `blocks` contiguous, equal-sized (±1) ranges of [0, n), one per
 * thread. Block b always gets the same range for the same (n, blocks), so results that depend on the split
 * (per-block partial sums reduced in block order) are the same bits for the same thread count.
 */
template <class F>
void parallel_rows(Index n, int blocks, F&& f) {
  if (blocks <= 1) {
    f(0, Index(0), n);
    return;
  }
#ifdef _OPENMP
  // An exception must not leave an OpenMP region: keep the first one and rethrow it after the region.
  std::exception_ptr error;
#pragma omp parallel for schedule(static, 1) num_threads(blocks)
  for (int b = 0; b < blocks; ++b) {
    try {
      f(b, n * b / blocks, n * (b + 1) / blocks);
    } catch (...) {
#pragma omp critical(pemoe_parallel_rows_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
#else
  for (int b = 0; b < blocks; ++b) f(b, n * b / blocks, n * (b + 1) / blocks);
#endif
}

}  // namespace pemoe::detail

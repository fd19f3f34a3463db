/// @file dropout.hpp
/// @brief Inverted dropout with a counter-based mask (same bits for any thread count).
#pragma once

#include <string>

#include "pemoe/core/error.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe {

/**
 * @brief Inverted dropout: in training @f$ y = x \odot m / (1-p) @f$, @f$ m_{ij} \sim \mathrm{Bernoulli}(1-p)
 * @f$; the identity in evaluation or when p = 0.
 *
 * The mask of forward call c, element i, is draw i of the child stream `c` of the layer's rng, so the
 * result does not depend on threads. `set_call_counter()` replays a call (gradient checks do this).
 * Shapes: x (N, d) -> y (N, d). Cache: `mask` (N, d), holding 0 or 1/(1-p); empty when inactive.
 */
template <class T>
class Dropout {
 public:
  struct Cache {
    Matrix<T> mask;  ///< (N, d) scale per element, empty when dropout did nothing
  };

  explicit Dropout(double p = 0.0, Rng rng = Rng(0)) : m_p(p), m_rng(rng) {
    PEMOE_CHECK_CONFIG(p >= 0.0 && p < 1.0, "Dropout: p must be in [0, 1), got ", p);
  }

  void set_training(bool on) { m_training = on; }
  bool training() const { return m_training; }
  /// Whether forward will drop anything.
  bool active() const { return m_training && m_p > 0.0; }
  double p() const { return m_p; }
  void seed(Rng rng) { m_rng = rng; }
  std::uint64_t call_counter() const { return m_calls; }
  void set_call_counter(std::uint64_t c) { m_calls = c; }

  /// y = x ⊙ mask (y may alias x).   x: (N, d) -> y: (N, d)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& cache) {
    check_shape("Dropout", "y", y, x.rows(), x.cols());
    if (!active()) {
      cache.mask.resize(0, 0);
      if (y.data() != x.data()) y = x;
      return;
    }
    const Rng call = m_rng.split(m_calls++);
    const T scale = T(1.0 / (1.0 - m_p));
    cache.mask.resize(x.rows(), x.cols());
    T* m = cache.mask.data();
    const Index n = x.size();
    for (Index i = 0; i < n; ++i) m[i] = call.uniform_at(static_cast<std::uint64_t>(i)) < m_p ? T(0) : scale;
    y = x.cwiseProduct(cache.mask);
  }

  /// dx = dy ⊙ mask.
  void backward(const Cache& cache, ConstMatrixRef<T> dy, MatrixRef<T> dx) const {
    if (cache.mask.size() == 0) {
      if (dx.data() != dy.data()) dx = dy;
    } else {
      dx = dy.cwiseProduct(cache.mask);
    }
  }

 private:
  double m_p;
  Rng m_rng;
  bool m_training = false;
  std::uint64_t m_calls = 0;
};

}  // namespace pemoe

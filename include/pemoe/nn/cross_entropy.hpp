/// @file cross_entropy.hpp
/// @brief `CrossEntropy`: softmax cross-entropy over logits (N, V) with integer targets and an ignore index,
/// the language-modelling loss of GPT-2 and T5.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "pemoe/core/detail/parallel_rows.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe {

/// Configuration of a `CrossEntropy` loss.
struct CrossEntropyConfig {
  std::int64_t ignore_index = -100;  ///< targets equal to this are skipped (PyTorch / HF label padding)
};

/**
 * @brief Mean softmax cross-entropy (PyTorch `F.cross_entropy(logits, targets, ignore_index=-100)`, the loss
 * of HF `GPT2LMHeadModel` and `T5ForConditionalGeneration`).
 *
 * With @f$ \mathrm{lse}_i = \log\sum_v e^{z_{iv}} @f$ (max-subtracted, in T) and the set K of rows whose
 * target is not the ignore index:
 * @f$ L = \frac{1}{|K|}\sum_{i\in K} (\mathrm{lse}_i - z_{i,t_i}) @f$, accumulated in double.
 * Gradient: @f$ \partial L/\partial z_{iv} = (\mathrm{softmax}(z_i)_v - [v = t_i]) / |K| @f$ for i ∈ K, and 0
 * for ignored rows.
 *
 * **All targets ignored** (|K| = 0): the loss is 0 and the gradient is zero everywhere (PyTorch returns NaN,
 * 0/0; pemoe returns 0 so that a batch made only of padding leaves training finite and the parameters
 * unchanged).
 *
 * A target outside [0, V) that is not the ignore index throws `ShapeError` naming the position and the value.
 * Shapes: logits (N, V), targets (N) -> loss (scalar); backward writes dlogits (N, V), which may be the
 * logits buffer itself (in place, saving an (N, V) buffer: each row is read before it is overwritten). Cache:
 * the log-sum-exp per row (N) and |K|, not the (N, V) softmax, which backward recomputes. Cost: forward one
 * exp per logit plus a max and a sum per row; backward one exp per logit. Rows in parallel; the loss is
 * summed per thread block and reduced in block order (same thread count, same bits).
 *
 * Not a layer in the sense of `is_layer_v`: it ends the graph (returns a scalar, takes integer targets).
 * @tparam T scalar type.
 */
template <class T>
class CrossEntropy {
 public:
  using Scalar = T;
  /// What forward saves for backward.
  struct Cache {
    Vector<T> lse;    ///< (N) log Σ exp(z_i) of each row (0 for ignored rows)
    Index count = 0;  ///< |K|, the number of rows not ignored
    Index vocab = 0;  ///< V of the forward call
  };

  explicit CrossEntropy(const CrossEntropyConfig& config = {}) : m_config(config) {}

  /// The mean loss over non-ignored rows (0 when every target is ignored).   logits: (N, V), targets: (N)
  double forward(ConstMatrixRef<T> logits, const std::vector<std::int64_t>& targets, Cache& cache) const {
    const Index n = logits.rows(), v = logits.cols();
    check_targets(logits, targets);
    cache.lse.resize(n);
    cache.vocab = v;
    const int blocks = detail::row_blocks(n);
    std::vector<double> partial(static_cast<std::size_t>(blocks), 0.0);
    std::vector<Index> counted(static_cast<std::size_t>(blocks), 0);
    detail::parallel_rows(n, blocks, [&](int b, Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i) {
        const std::int64_t t = targets[static_cast<std::size_t>(i)];
        if (t == m_config.ignore_index) {
          cache.lse(i) = T(0);
          continue;
        }
        const auto z = logits.row(i).array();
        const T m = z.maxCoeff();
        const T lse = m + std::log((z - m).exp().sum());
        cache.lse(i) = lse;
        partial[static_cast<std::size_t>(b)] += static_cast<double>(lse) - static_cast<double>(z(t));
        ++counted[static_cast<std::size_t>(b)];
      }
    });
    double total = 0.0;
    Index count = 0;
    for (std::size_t b = 0; b < partial.size(); ++b) {  // block order: same bits for the same thread count
      total += partial[b];
      count += counted[b];
    }
    cache.count = count;
    return count == 0 ? 0.0 : total / static_cast<double>(count);
  }

  /// dlogits = dloss·(softmax(z) − onehot(t))/|K|, zero rows for ignored targets (and everywhere when |K| =
  /// 0). logits: (N, V), targets: (N) -> dlogits: (N, V) (written, never read; may be `logits` itself)
  void backward(ConstMatrixRef<T> logits, const std::vector<std::int64_t>& targets, const Cache& cache,
                MatrixRef<T> dlogits, double dloss = 1.0) const {
    const Index n = logits.rows(), v = logits.cols();
    check_targets(logits, targets);
    PEMOE_CHECK_SHAPE(cache.lse.size() == n && cache.vocab == v, site(), ": the cache is for (",
                      cache.lse.size(), ", ", cache.vocab, ") logits, backward got (", n, ", ", v,
                      ") (did forward run on these logits?)");
    check_shape(site(), "dlogits", dlogits, n, v);
    const bool in_place = dlogits.data() == logits.data() && dlogits.outerStride() == logits.outerStride();
    PEMOE_CHECK_SHAPE(in_place || !detail::views_overlap(logits, dlogits), site(),
                      ": dlogits partly overlaps logits; pass a separate buffer or the logits buffer itself");
    const T scale = cache.count == 0 ? T(0) : T(dloss / static_cast<double>(cache.count));
    detail::parallel_rows(n, detail::row_blocks(n), [&](int, Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i) {
        const std::int64_t t = targets[static_cast<std::size_t>(i)];
        if (t == m_config.ignore_index || scale == T(0)) {
          dlogits.row(i).setZero();
          continue;
        }
        const T zt = logits(i, static_cast<Index>(t));  // read before an in-place row is overwritten
        dlogits.row(i) = ((logits.row(i).array() - cache.lse(i)).exp() * scale).matrix();
        dlogits(i, static_cast<Index>(t)) = (std::exp(zt - cache.lse(i)) - T(1)) * scale;
      }
    });
  }

  std::int64_t ignore_index() const { return m_config.ignore_index; }
  const CrossEntropyConfig& config() const { return m_config; }

 private:
  static std::string site() { return "CrossEntropy"; }

  void check_targets(ConstMatrixRef<T> logits, const std::vector<std::int64_t>& targets) const {
    const Index n = logits.rows(), v = logits.cols();
    PEMOE_CHECK_SHAPE(static_cast<Index>(targets.size()) == n, site(), ": ", targets.size(), " targets for ",
                      n, " rows of logits");
    PEMOE_CHECK_SHAPE(v > 0, site(), ": logits have no columns (V = 0)");
    for (std::size_t i = 0; i < targets.size(); ++i) {
      const std::int64_t t = targets[i];
      PEMOE_CHECK_SHAPE(t == m_config.ignore_index || (t >= 0 && t < v), site(), ": target ", t,
                        " at position ", i, " is outside [0, ", v, ") and is not the ignore index ",
                        m_config.ignore_index);
    }
  }

  CrossEntropyConfig m_config;
};

}  // namespace pemoe

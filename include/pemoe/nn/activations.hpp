/// @file activations.hpp
/// @brief Parameter-free element-wise activations on the layer contract: `GELU` (tanh approximation, HF
/// "gelu_new", or the exact erf form, HF "gelu") and `ReLU`.
#pragma once

#include <cmath>
#include <string>

#include "pemoe/core/detail/parallel_rows.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe {

/// Which GELU formula `GELU` computes.
enum class GeluKind {
  tanh,  ///< 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))): HF "gelu_new" (GPT-2, T5 v1.1 "gated-gelu")
  erf,   ///< 0.5·x·(1 + erf(x/√2)), the exact GELU: HF "gelu" (BERT)
};

/**
 * @brief The `GeluKind` of a Hugging Face `activation_function` / `hidden_act` / `dense_act_fn` name:
 * "gelu_new", "gelu_pytorch_tanh" and "gelu_fast" are the tanh form, "gelu" the erf form.
 *
 * Throws `ConfigError` naming the unknown activation (e.g. "relu" is not a GELU: use `ReLU`).
 */
inline GeluKind gelu_kind_from_hf(const std::string& name) {
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return GeluKind::tanh;
  if (name == "gelu") return GeluKind::erf;
  throw ConfigError("GELU: unknown Hugging Face activation '" + name +
                    "'; expected gelu_new, gelu_pytorch_tanh, gelu_fast or gelu");
}

/**
 * @brief Gaussian error linear unit (Hendrycks & Gimpel 2016, arXiv 1606.08415), element-wise.
 *
 * - `GeluKind::tanh` (default, GPT-2): @f$ y = \tfrac12 x \bigl(1 + \tanh u\bigr) @f$,
 *   @f$ u = \sqrt{2/\pi}\,(x + 0.044715\,x^3) @f$ (HF `NewGELUActivation`, "gelu_new");
 *   @f$ y' = \tfrac12(1 + \tanh u) + \tfrac12 x (1 - \tanh^2 u)\sqrt{2/\pi}(1 + 3\cdot0.044715\,x^2) @f$.
 * - `GeluKind::erf`: @f$ y = \tfrac12 x (1 + \mathrm{erf}(x/\sqrt2)) = x\,\Phi(x) @f$ (HF `GELUActivation`,
 *   "gelu", PyTorch `F.gelu`); @f$ y' = \Phi(x) + x\,\varphi(x) @f$.
 *
 * No parameters: `register_params` declares nothing and only records the prefix for error messages.
 * Shapes: x (N, d) -> y (N, d); y must not alias x (backward reads x). Cache: nothing (backward recomputes
 * from x). Cost: one tanh (or erf) per element in forward, and again in backward.
 * @tparam T scalar type.
 */
template <class T>
class GELU {
 public:
  using Scalar = T;
  /// GELU saves nothing: backward recomputes u from x.
  struct Cache {};

  explicit GELU(GeluKind kind = GeluKind::tanh) : m_kind(kind) {}

  /// Declares nothing; records `prefix` to name the layer in errors.
  void register_params(ParamStore<T>& /*store*/, const std::string& prefix, Rng& /*rng*/) { m_name = prefix; }
  void set_training(bool /*on*/) {}

  /// y = gelu(x).   x: (N, d) -> y: (N, d)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& /*cache*/) {
    check_shape(site(), "y", y, x.rows(), x.cols());
    check_no_alias(site(), x, y);
    const Index n = x.rows();
    detail::parallel_rows(n, detail::row_blocks(n), [&](int, Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i) {
        const auto xr = x.row(i).array();
        if (m_kind == GeluKind::tanh) {
          y.row(i) =
              (T(0.5) * xr * (T(1) + (T(kSqrt2OverPi) * (xr + T(kCubic) * xr.cube())).tanh())).matrix();
        } else {
          for (Index j = 0; j < x.cols(); ++j) {
            const T v = x(i, j);
            y(i, j) = T(0.5) * v * (T(1) + std::erf(v * T(kSqrtHalf)));
          }
        }
      }
    });
  }

  /// dx = dy ⊙ gelu'(x) (no parameter gradients).   x: (N, d), dy: (N, d) -> dx: (N, d)
  void backward(ConstMatrixRef<T> x, const Cache& /*cache*/, ConstMatrixRef<T> dy,
                GradOut<T> dx = std::nullopt) const {
    check_shape(site(), "dy", dy, x.rows(), x.cols());
    if (!dx) return;
    check_shape(site(), "dx", *dx, x.rows(), x.cols());
    const Index n = x.rows(), d = x.cols();
    detail::parallel_rows(n, detail::row_blocks(n), [&](int, Index i0, Index i1) {
      RowVector<T> t(d);  // tanh u of one row
      for (Index i = i0; i < i1; ++i) {
        const auto xr = x.row(i).array();
        if (m_kind == GeluKind::tanh) {
          t = (T(kSqrt2OverPi) * (xr + T(kCubic) * xr.cube())).tanh().matrix();
          const auto ta = t.array();
          dx->row(i) = (dy.row(i).array() *
                        (T(0.5) * (T(1) + ta) + T(0.5) * xr * (T(1) - ta.square()) * T(kSqrt2OverPi) *
                                                    (T(1) + T(3 * kCubic) * xr.square())))
                           .matrix();
        } else {
          for (Index j = 0; j < d; ++j) {
            const T v = x(i, j);
            const T cdf = T(0.5) * (T(1) + std::erf(v * T(kSqrtHalf)));
            const T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * v * v);
            (*dx)(i, j) = dy(i, j) * (cdf + v * pdf);
          }
        }
      }
    });
  }

  GeluKind kind() const { return m_kind; }
  /// The prefix given to `register_params` (names the layer in errors).
  const std::string& name() const { return m_name; }

 private:
  static constexpr double kSqrt2OverPi = 0.79788456080286535588;  // √(2/π)
  static constexpr double kCubic = 0.044715;
  static constexpr double kSqrtHalf = 0.70710678118654752440;    // 1/√2
  static constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1/√(2π)

  std::string site() const { return "GELU '" + m_name + "'"; }

  GeluKind m_kind;
  std::string m_name;
};

/**
 * @brief Rectified linear unit @f$ y = \max(x, 0) @f$, element-wise (T5 v1.0's feed-forward activation,
 * HF "relu"); @f$ dx = dy \odot [x > 0] @f$ (0 at x = 0, as PyTorch).
 *
 * No parameters. Shapes: x (N, d) -> y (N, d). y may alias x (in place): backward tests x > 0, and
 * max(x, 0) > 0 exactly where x > 0, so the overwritten input still gives the right mask.
 * Cost: one compare per element forward and backward.
 * @tparam T scalar type.
 */
template <class T>
class ReLU {
 public:
  using Scalar = T;
  /// ReLU saves nothing: backward reads x (or y, if forward ran in place).
  struct Cache {};

  /// Declares nothing; records `prefix` to name the layer in errors.
  void register_params(ParamStore<T>& /*store*/, const std::string& prefix, Rng& /*rng*/) { m_name = prefix; }
  void set_training(bool /*on*/) {}

  /// y = max(x, 0) (y may alias x).   x: (N, d) -> y: (N, d)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& /*cache*/) {
    check_shape(site(), "y", y, x.rows(), x.cols());
    const Index n = x.rows();
    detail::parallel_rows(n, detail::row_blocks(n), [&](int, Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i) y.row(i) = x.row(i).cwiseMax(T(0));
    });
  }

  /// dx = dy ⊙ [x > 0] (x may be forward's in-place output).   x: (N, d), dy: (N, d) -> dx: (N, d)
  void backward(ConstMatrixRef<T> x, const Cache& /*cache*/, ConstMatrixRef<T> dy,
                GradOut<T> dx = std::nullopt) const {
    check_shape(site(), "dy", dy, x.rows(), x.cols());
    if (!dx) return;
    check_shape(site(), "dx", *dx, x.rows(), x.cols());
    const Index n = x.rows();
    detail::parallel_rows(n, detail::row_blocks(n), [&](int, Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i)
        dx->row(i) = (x.row(i).array() > T(0)).select(dy.row(i).array(), T(0)).matrix();
    });
  }

  /// The prefix given to `register_params` (names the layer in errors).
  const std::string& name() const { return m_name; }

 private:
  std::string site() const { return "ReLU '" + m_name + "'"; }
  std::string m_name;
};

}  // namespace pemoe

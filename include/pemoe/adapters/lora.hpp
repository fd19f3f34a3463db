/// @file lora.hpp
/// @brief `LoRA`: a low-rank update beside a frozen `Linear` (Hu et al. 2021, arXiv 2106.09685),
/// PEFT-compatible.
#pragma once

#include <cmath>
#include <string>

#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/nn/dropout.hpp"
#include "pemoe/nn/linear.hpp"

namespace pemoe {

/// How LoRA's A and B are initialised (B is always zero, so the adapter starts as the identity).
enum class LoraInit {
  peft,      ///< A ~ kaiming-uniform(a=√5) = U(±1/√d_in) (HF PEFT `init_lora_weights=True`, MoLA)
  gaussian,  ///< A ~ N(0, init_std²) (for-ai MoLoRA / MoV code: std 0.02)
};

/// Configuration of a LoRA adapter (defaults are HF PEFT's `LoraConfig`).
struct LoraConfig {
  Index r = 8;                     ///< rank
  double alpha = 8.0;              ///< scaling numerator (PEFT `lora_alpha`)
  double dropout = 0.0;            ///< dropout on the adapter's input (PEFT `lora_dropout`)
  bool use_rslora = false;         ///< scale by alpha/√r instead of alpha/r (Kalajievic 2023)
  LoraInit init = LoraInit::peft;  ///< initialisation of A
  double init_std = 0.02;          ///< std of A for `LoraInit::gaussian`
  bool base_trainable = false;     ///< also train the wrapped linear (normally frozen)

  /// The factor s multiplying B·A: alpha/r, or alpha/√r with rsLoRA.
  double scaling() const {
    return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / double(r);
  }
};

/**
 * @brief LoRA around a `Linear`: @f$ y = x W^\top + b + s\,(\mathrm{dropout}(x) A^\top) B^\top @f$,
 * @f$ s = \alpha / r @f$ (or @f$ \alpha/\sqrt r @f$ with rsLoRA).
 *
 * Parameters (PEFT names): `<prefix>.weight` `(d_out, d_in)` and `<prefix>.bias` (the base, frozen by
 * default, named as in the Hugging Face checkpoint so pretrained weights load unchanged),
 * `<prefix>.lora_A.weight` `(r, d_in)`, `<prefix>.lora_B.weight` `(d_out, r)`.
 *
 * Shapes: x (N, d_in) -> y (N, d_out). Cache: `h = dropout(x)·Aᵀ` (N, r), dropout(x) (N, d_in) when dropout
 * is active (the mask itself is regenerated in backward). Cost beyond the base layer: forward 2·N·r·(d_in +
 * d_out), backward twice that (+ N·d_in for dropout).
 *
 * `merge()` adds s·B·A into the base weight (inference; forward then skips the branch); `unmerge()`
 * subtracts it again, restoring the weight to float rounding. Backward on a merged layer throws.
 */
template <class T>
class LoRA {
 public:
  using Scalar = T;
  struct Cache {
    typename Linear<T>::Cache base;
    typename Dropout<T>::Cache dropout;
    Matrix<T> x_dropped;  ///< (N, d_in), only when dropout is active
    Matrix<T> h;          ///< (N, r) = dropout(x)·Aᵀ
  };

  LoRA(const LinearConfig& base, const LoraConfig& config)
      : m_base(with_trainable(base, config)), m_config(config) {
    PEMOE_CHECK_CONFIG(config.r > 0, "LoRA: rank r must be positive, got ", config.r);
    m_dropout = Dropout<T>(config.dropout);
  }

  /// Declares the base linear and `lora_A`/`lora_B`; A per `LoraConfig::init`, B zeros.
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_base.register_params(store, prefix, rng);
    m_store = &store;
    m_name = prefix;
    const Index d_in = m_base.config().d_in, d_out = m_base.config().d_out, r = m_config.r;
    m_a = store.add(prefix + ".lora_A.weight", {r, d_in});
    m_b = store.add(prefix + ".lora_B.weight", {d_out, r});
    Rng ra = rng.split(prefix + ".lora_A.weight");
    if (m_config.init == LoraInit::peft)
      ra.fill_kaiming_uniform(store.value(m_a), r * d_in, d_in);
    else
      ra.fill_normal(store.value(m_a), r * d_in, 0.0, m_config.init_std);
    m_dropout.seed(rng.split(prefix + ".lora_dropout"));
  }

  /// y = x·Wᵀ + b + s·(dropout(x)·Aᵀ)·Bᵀ.   x: (N, d_in) -> y: (N, d_out)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& cache) {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "LoRA: call register_params() before forward/backward");
    PEMOE_CHECK_SHAPE(x.cols() == m_base.config().d_in, site(), ": x has ", x.cols(),
                      " features, layer expects ", m_base.config().d_in);
    check_shape(site(), "y", y, x.rows(), m_base.config().d_out);
    check_no_alias(site(), x, y);
    if (m_merged) {
      m_base.forward(x, y, cache.base);
      return;
    }
    const Index n = x.rows();
    cache.h.resize(n, m_config.r);
    if (m_dropout.active()) {
      cache.x_dropped.resize(n, x.cols());
      m_dropout.forward(x, cache.x_dropped, cache.dropout);
      gemm<T>(Op::N, Op::T, T(1), cache.x_dropped, lora_A(), T(0), cache.h);
    } else {
      cache.x_dropped.resize(0, 0);
      gemm<T>(Op::N, Op::T, T(1), x, lora_A(), T(0), cache.h);
    }
    // y = s·h·Bᵀ, then the base product adds x·Wᵀ + b in its epilogue: y is written once and read once
    // (inside the base GEMM), where base-then-adapter would read and write it again
    gemm<T>(Op::N, Op::T, scaling(), cache.h, lora_B(), T(0), y);
    m_base.forward(x, y, cache.base, Output::add);
  }

  /// dB += s·dyᵀ·h, dA += (s·dy·B)ᵀ·dropout(x); dx = dy·W + dropoutᵀ((s·dy·B)·A).
  /// x: (N, d_in), dy: (N, d_out) -> dx: (N, d_in)
  void backward(ConstMatrixRef<T> x, const Cache& cache, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    PEMOE_CHECK_CONFIG(!m_merged, "LoRA '", m_name,
                       "': backward on a merged adapter; call unmerge() before training");
    const Index n = x.rows();
    check_shape(site(), "x", x, -1, m_base.config().d_in);
    check_shape(site(), "dy", dy, n, m_base.config().d_out);
    if (dx) check_shape(site(), "dx", *dx, n, m_base.config().d_in);
    check_shape(site(), "cache.h (did forward run on this x?)", cache.h, n, m_config.r);
    if (m_store->trainable(m_b))
      gemm<T>(Op::T, Op::N, scaling(), dy, cache.h, T(1), m_store->grad_matrix(m_b));
    const bool need_dh = m_store->trainable(m_a) || dx.has_value();
    if (!need_dh) {
      m_base.backward(x, cache.base, dy, dx);
      return;
    }
    Matrix<T> dh(n, m_config.r);  // (N, r) = s·dy·B
    gemm<T>(Op::N, Op::N, scaling(), dy, lora_B(), T(0), dh);
    const bool dropped = cache.x_dropped.size() != 0;
    if (m_store->trainable(m_a))
      gemm<T>(Op::T, Op::N, T(1), dh, dropped ? ConstMatrixRef<T>(cache.x_dropped) : x, T(1),
              m_store->grad_matrix(m_a));
    if (dx) {  // dx = dropoutᵀ(dh·A), then the base product adds dy·W in its epilogue (as in forward)
      gemm<T>(Op::N, Op::N, T(1), dh, lora_A(), T(0), *dx);
      if (dropped) m_dropout.apply_mask_rows(cache.dropout, 0, *dx);
    }
    m_base.backward(x, cache.base, dy, dx, InputGrad::add);
  }

  void set_training(bool on) { m_dropout.set_training(on); }

  /// s·B·A, the update LoRA adds to the base weight.   -> (d_out, d_in)
  Matrix<T> delta_weight() const {
    Matrix<T> d(m_base.config().d_out, m_base.config().d_in);
    gemm<T>(Op::N, Op::N, scaling(), lora_B(), lora_A(), T(0), d);
    return d;
  }
  /// W += s·B·A; forward then costs only the base GEMM. Throws if already merged.
  void merge() {
    PEMOE_CHECK_CONFIG(!m_merged, "LoRA '", m_name, "': merge() called twice");
    m_base.weight() += delta_weight();
    m_merged = true;
  }
  /// W -= s·B·A. Throws if not merged.
  void unmerge() {
    PEMOE_CHECK_CONFIG(m_merged, "LoRA '", m_name, "': unmerge() without a previous merge()");
    m_base.weight() -= delta_weight();
    m_merged = false;
  }
  bool merged() const { return m_merged; }

  T scaling() const { return static_cast<T>(m_config.scaling()); }
  MatrixMap<T> lora_A() const { return m_store->matrix(m_a); }  ///< (r, d_in)
  MatrixMap<T> lora_B() const { return m_store->matrix(m_b); }  ///< (d_out, r)
  ParamId lora_A_id() const { return m_a; }
  ParamId lora_B_id() const { return m_b; }
  Linear<T>& base() { return m_base; }
  const Linear<T>& base() const { return m_base; }
  Dropout<T>& dropout() { return m_dropout; }
  const LoraConfig& config() const { return m_config; }
  const std::string& name() const { return m_name; }

 private:
  static LinearConfig with_trainable(LinearConfig base, const LoraConfig& config) {
    base.trainable = config.base_trainable;
    return base;
  }
  std::string site() const { return "LoRA '" + m_name + "'"; }

  Linear<T> m_base;
  LoraConfig m_config;
  Dropout<T> m_dropout;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
  ParamId m_a = 0, m_b = 0;
  bool m_merged = false;
};

}  // namespace pemoe

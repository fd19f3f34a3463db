/// @file linear.hpp
/// @brief `Linear`: y = x·Wᵀ + b with the weight stored `(d_out, d_in)` like PyTorch.
#pragma once

#include <memory>
#include <string>

#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/core/weight_pack.hpp"

namespace pemoe {

/// Configuration of a `Linear` layer.
struct LinearConfig {
  Index d_in = 0;         ///< input features
  Index d_out = 0;        ///< output features
  bool bias = true;       ///< add a bias vector `(d_out)`
  bool trainable = true;  ///< declare weight and bias trainable (adapters declare their base frozen)
};

/**
 * @brief Fully connected layer @f$ y = x W^\top + b @f$ (PyTorch `nn.Linear`).
 *
 * Parameters: `<prefix>.weight` `(d_out, d_in)`, `<prefix>.bias` `(d_out)`; initialised like
 * `nn.Linear` (kaiming-uniform(a=√5) weight, bias U(±1/√d_in)), names as in Hugging Face checkpoints.
 * Shapes: x `(N, d_in)` → y `(N, d_out)`. Cost: forward 2·N·d_in·d_out flops, backward the same for `dx`
 * and again for `dW` when the weight is trainable.
 *
 * A frozen weight can be packed once (`pack`, core/weight_pack.hpp: oneDNN's blocked layout, f32 or bf16);
 * forward and the `dx` product then run on the pack. Pack after the weight has its final values (a pack
 * is a copy: changing the weight later needs `pack` again, which `merge_and_unload` of the models does).
 * @tparam T scalar type.
 */
template <class T>
class Linear {
 public:
  using Scalar = T;
  /// Linear needs nothing saved: backward uses x and dy only.
  struct Cache {};

  explicit Linear(const LinearConfig& config = {}) : m_config(config) {
    PEMOE_CHECK_CONFIG(config.d_in > 0 && config.d_out > 0,
                       "Linear: d_in and d_out must be positive, got d_in=", config.d_in,
                       " d_out=", config.d_out);
  }

  /// Declares `<prefix>.weight` (and `<prefix>.bias`) and initialises them like `nn.Linear`.
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_store = &store;
    m_name = prefix;
    m_weight = store.add(prefix + ".weight", {m_config.d_out, m_config.d_in}, m_config.trainable);
    Rng r = rng.split(prefix + ".weight");
    r.fill_kaiming_uniform(store.value(m_weight), m_config.d_out * m_config.d_in, m_config.d_in);
    if (m_config.bias) {
      m_bias = store.add(prefix + ".bias", {m_config.d_out}, m_config.trainable);
      const double bound = 1.0 / std::sqrt(static_cast<double>(m_config.d_in));
      rng.split(prefix + ".bias").fill_uniform(store.value(m_bias), m_config.d_out, -bound, bound);
    }
  }

  /// Binds to parameters `<prefix>.weight` (and `.bias`) already in `store` (declared by another layer,
  /// e.g. the base of an adapter being unloaded) instead of declaring new ones; checks their shapes.
  void bind(ParamStore<T>& store, const std::string& prefix) {
    m_store = &store;
    m_name = prefix;
    m_weight = store.id(prefix + ".weight");
    PEMOE_CHECK_SHAPE(store.entry(m_weight).shape == Shape({m_config.d_out, m_config.d_in}), site(),
                      ": bound weight has shape ", shape_string(store.entry(m_weight).shape));
    if (m_config.bias) m_bias = store.id(prefix + ".bias");
  }

  /// y = x·Wᵀ + b, or y += x·Wᵀ + b with `Output::add` (the product accumulates into y in its epilogue).
  /// x: (N, d_in) -> y: (N, d_out)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& /*cache*/, Output mode = Output::write) {
    check_bound();
    PEMOE_CHECK_SHAPE(x.cols() == m_config.d_in, site(), ": x has ", x.cols(), " features, layer expects ",
                      m_config.d_in);
    check_shape(site(), "y", y, x.rows(), m_config.d_out);
    check_no_alias(site(), x, y);
    const T beta = mode == Output::add ? T(1) : T(0);
    if (m_pack) {  // the bias is added in the packed product's epilogue (no second pass over y)
      check_pack();
      m_pack->forward(x, y, m_config.bias ? bias().data() : nullptr, beta);
      return;
    }
    product(x, y, beta);
    if (m_config.bias) y.rowwise() += bias().row(0);
  }

  /// dW += dyᵀ·x, db += Σ_rows dy (when trainable); dx = dy·W, or dx += dy·W with `InputGrad::add`.
  /// x: (N, d_in), dy: (N, d_out) -> dx: (N, d_in)
  void backward(ConstMatrixRef<T> x, const Cache& /*cache*/, ConstMatrixRef<T> dy,
                GradOut<T> dx = std::nullopt, InputGrad mode = InputGrad::write) {
    check_bound();
    check_shape(site(), "x", x, -1, m_config.d_in);
    check_shape(site(), "dy", dy, x.rows(), m_config.d_out);
    if (m_store->trainable(m_weight)) {  // the first product after zero_grad overwrites (no zero fill)
      const T beta = m_store->first_write_beta(m_weight);
      gemm<T>(Op::T, Op::N, T(1), dy, x, beta, m_store->grad_matrix_unfilled(m_weight));
    }
    if (m_config.bias && m_store->trainable(m_bias)) m_store->grad_matrix(m_bias) += dy.colwise().sum();
    if (dx) {
      check_shape(site(), "dx", *dx, x.rows(), m_config.d_in);
      input_grad(dy, *dx, mode == InputGrad::add ? T(1) : T(0));
    }
  }

  /// Whether `backward` reads the input x: only for the weight gradient. With a frozen weight the backward
  /// needs dy alone (db = Σ dy, dx = dy·W), so a model need not keep x (`backward_without_input`).
  bool backward_needs_input() const {
    check_bound();
    return m_store->trainable(m_weight);
  }
  /// `backward` of a layer whose input was not kept: db += Σ_rows dy (when trainable); dx = dy·W.
  /// `ConfigError` when the weight trains (its gradient needs x).   dy: (N, d_out) -> dx: (N, d_in)
  void backward_without_input(const Cache& /*cache*/, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    PEMOE_CHECK_CONFIG(
        !backward_needs_input(), site(),
        ": the weight trains, so backward needs the forward's input x (it was not kept; was the "
        "weight made trainable between forward and backward?)");
    check_shape(site(), "dy", dy, -1, m_config.d_out);
    if (m_config.bias && m_store->trainable(m_bias)) m_store->grad_matrix(m_bias) += dy.colwise().sum();
    if (dx) {
      check_shape(site(), "dx", *dx, dy.rows(), m_config.d_in);
      input_grad(dy, *dx);
    }
  }

  void set_training(bool /*on*/) {}

  /// Packs the frozen weight for forward and `dx` (see core/weight_pack.hpp) in `layout`; `ConfigError` when
  /// the weight is trainable or packing is not available here (no oneDNN, or bf16 on a CPU without bf16
  /// units).
  void pack(PackDtype dtype, PackLayout layout = PackLayout::blocked) {
    check_bound();
    PEMOE_CHECK_CONFIG(!m_store->trainable(m_weight), site(),
                       ": only a frozen weight can be packed (its values must not change); freeze it first");
    m_pack = make_weight_pack<T>(weight(), dtype, layout);
  }
  /// y = x·Wᵀ + beta·y without the bias, on the pack when there is one (adapters that scale the base output
  /// while it is in cache call this on panels).   x (N, d_in) -> y (N, d_out)
  void product(ConstMatrixRef<T> x, MatrixRef<T> y, T beta = T(0)) const {
    if (m_pack) {
      check_pack();
      m_pack->forward(x, y, nullptr, beta);
    } else {
      gemm<T>(Op::N, Op::T, T(1), x, weight(), beta, y);
    }
  }
  /// dx = dy·W + beta·dx, on the pack when there is one.   dy (N, d_out) -> dx (N, d_in)
  void input_grad(ConstMatrixRef<T> dy, MatrixRef<T> dx, T beta = T(0)) const {
    if (m_pack) {
      check_pack();
      m_pack->backward_input(dy, dx, beta);
    } else {
      gemm<T>(Op::N, Op::N, T(1), dy, weight(), beta, dx);
    }
  }
  /// Drops the pack: products use the weight in the store again.
  void unpack() { m_pack.reset(); }
  /// The pack, or null.
  const WeightPack<T>* packed() const { return m_pack.get(); }

  /// The weight `(d_out, d_in)`.
  MatrixMap<T> weight() const { return m_store->matrix(m_weight); }
  /// The bias as a row `(1, d_out)`; only when `config().bias`.
  MatrixMap<T> bias() const { return m_store->matrix(m_bias); }
  ParamId weight_id() const { return m_weight; }
  ParamId bias_id() const { return m_bias; }
  const LinearConfig& config() const { return m_config; }
  /// The store holding the parameters (after `register_params` or `bind`).
  ParamStore<T>* store() const { return m_store; }
  /// The parameter prefix, used to name this layer in error messages.
  const std::string& name() const { return m_name; }

 private:
  std::string site() const { return "Linear '" + m_name + "'"; }
  void check_bound() const {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "Linear: call register_params() before forward/backward");
  }
  void check_pack() const {
    PEMOE_CHECK_CONFIG(!m_store->trainable(m_weight), site(),
                       ": the weight was made trainable after it was packed; call unpack() (or pack() again "
                       "after freezing it)");
  }

  LinearConfig m_config;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
  ParamId m_weight = 0;
  ParamId m_bias = 0;
  std::shared_ptr<const WeightPack<T>> m_pack;  // shared: copies of the layer share one pack
};

}  // namespace pemoe

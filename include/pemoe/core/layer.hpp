/// @file layer.hpp
/// @brief The layer contract every pemoe layer follows ("autodiff-light"), stated as a C++17 trait.
///
/// There is no autograd graph. A layer is a value type with a hand-written backward pass and these members
/// (`T` is the layer's `Scalar`):
///
/// <table>
/// <tr><th>member</th><th>what it does</th></tr>
/// <tr><td>`using Scalar = T;` and `struct Cache`</td>
///     <td>the scalar type, and what forward saves for backward (named fields: `h`, `gate_probs`,
///     `topk_idx`, ...)</td></tr>
/// <tr><td>`register_params(ParamStore<T>&, prefix, Rng&)`</td>
///     <td>declares its parameters by dotted name (`prefix + ".lora_A.weight"`) and initialises them from
///     the rng</td></tr>
/// <tr><td>`forward(x, y, cache)` (non-const)</td>
///     <td>writes `y`, which the caller allocates with the right shape (checked: `ShapeError` naming the
///     layer), and saves in `cache` exactly what backward needs</td></tr>
/// <tr><td>`backward(x, cache, dy, dx = std::nullopt)`</td>
///     <td>**adds** parameter gradients into the store's gradient arena (`dW +=`, so two backward calls
///     give twice the gradient); **writes** `dx` (never reads it), or skips the input gradient when
///     `dx` is `std::nullopt`; frozen parameters get no gradient. Checks the shapes of `x`, `dy` and
///     `dx`.</td></tr>
/// <tr><td>`set_training(bool)`</td>
///     <td>dropout, router noise and jitter act only in training</td></tr>
/// </table>
///
/// A backward that must *add* into its input gradient (a router whose input is also the adapted layer's
/// input, so its dL/du joins the layer's dL/dx) says so explicitly with `InputGrad::add`; that is the only
/// name for it in pemoe. `is_layer_v<L>` checks the signatures; every layer's test `static_assert`s it.
///
/// Shapes: activations are row-major `(N tokens, features)`. Composite layers call their children's
/// forward in order and their backward in reverse. Auxiliary losses (balance, z-loss) add their gradient
/// inside the router's backward, scaled by their coefficient. A layer that reads `x` again in backward
/// refuses a `y` that aliases `x` (the in-place forward would destroy what backward needs).
///
/// Workspace policy (the same for every layer): the caller owns the buffers a call writes (`y`, `dx`); the
/// `Cache` owns every activation backward needs (resized on each forward, so one cache reused across steps
/// allocates once); scratch that lives only within a call is local, or a layer member when it is large and
/// reused (MoV's dL/dh). Dropout masks are never stored: backward regenerates them from the counter-based
/// rng.
///
/// Layers hold a pointer to their `ParamStore` and the `ParamId`s of their parameters, so a copied layer
/// shares parameters with the original (like a PyTorch module reference), never a stale view.
#pragma once

#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "pemoe/core/error.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe {

template <class T>
class ParamStore;
class Rng;

/// Optional writable output of a backward pass: bind a `Matrix`, a `Map` or a row block, or pass
/// `std::nullopt` (the default) to skip computing the input gradient.
template <class T>
using GradOut = std::optional<MatrixRef<T>>;

/// Whether a backward writes its input gradient (the contract's default) or adds into it (explicit).
enum class InputGrad {
  write,  ///< dx = ...   (the layer never reads dx)
  add,    ///< dx += ...  (the caller's dx already holds another path's gradient)
};

/// Whether a forward writes its output (the contract's default) or adds into it (explicit; a frozen `Linear`
/// under an adapter adds the base product onto the adapter's term inside its GEMM's epilogue, which saves the
/// pass over y that `y += adapter` would make).
enum class Output {
  write,  ///< y = ...
  add,    ///< y += ...
};

namespace detail {

/// Which unkept activation a scratch buffer holds (`unkept_activation`).
enum class UnkeptSlot { attention_context, mlp_hidden };

/**
 * @brief This thread's scratch matrix for an activation a model computes but does not keep for backward:
 * the input of a frozen, unadapted linear, whose backward needs dy alone (`backward_needs_input()` false).
 * One buffer per slot and thread, reused by every layer (its size changes only with the batch), instead of
 * one per layer in the cache (GPT-2 at B·T = 256: 47 MB less held from forward to backward).
 */
template <class T, UnkeptSlot Slot>
Matrix<T>& unkept_activation() {
  thread_local Matrix<T> m;
  return m;
}

template <class L, class = void>
struct is_layer_impl : std::false_type {};

template <class L>
struct is_layer_impl<
    L, std::void_t<typename L::Scalar, typename L::Cache,
                   decltype(std::declval<L&>().register_params(
                       std::declval<ParamStore<typename L::Scalar>&>(), std::declval<const std::string&>(),
                       std::declval<Rng&>())),
                   decltype(std::declval<L&>().forward(std::declval<ConstMatrixRef<typename L::Scalar>>(),
                                                       std::declval<MatrixRef<typename L::Scalar>>(),
                                                       std::declval<typename L::Cache&>())),
                   decltype(std::declval<L&>().backward(std::declval<ConstMatrixRef<typename L::Scalar>>(),
                                                        std::declval<const typename L::Cache&>(),
                                                        std::declval<ConstMatrixRef<typename L::Scalar>>(),
                                                        std::declval<GradOut<typename L::Scalar>>())),
                   decltype(std::declval<L&>().backward(std::declval<ConstMatrixRef<typename L::Scalar>>(),
                                                        std::declval<const typename L::Cache&>(),
                                                        std::declval<ConstMatrixRef<typename L::Scalar>>())),
                   decltype(std::declval<L&>().set_training(true))>>
    : std::bool_constant<
          std::is_void_v<decltype(std::declval<L&>().forward(
              std::declval<ConstMatrixRef<typename L::Scalar>>(),
              std::declval<MatrixRef<typename L::Scalar>>(), std::declval<typename L::Cache&>()))> &&
          std::is_void_v<decltype(std::declval<L&>().backward(
              std::declval<ConstMatrixRef<typename L::Scalar>>(), std::declval<const typename L::Cache&>(),
              std::declval<ConstMatrixRef<typename L::Scalar>>(),
              std::declval<GradOut<typename L::Scalar>>()))> &&
          std::is_default_constructible_v<typename L::Cache>> {};

}  // namespace detail

/// True when `L` follows the layer contract (see the file comment): `Scalar`, `Cache`, `register_params`,
/// a non-const `forward(x, y, cache)` returning void, `backward(x, cache, dy[, dx])` returning void, and
/// `set_training(bool)`.
template <class L>
inline constexpr bool is_layer_v = detail::is_layer_impl<L>::value;

/// Throws `ShapeError` "<site>: y aliases x; ..." when a layer that reads x in backward is asked to write y
/// over it.
template <class X, class Y>
void check_no_alias(const std::string& site, const Eigen::DenseBase<X>& x, const Eigen::DenseBase<Y>& y) {
  PEMOE_CHECK_SHAPE(!detail::views_overlap(x, y), site,
                    ": the output y shares memory with the input x, which backward reads again; "
                    "give forward a separate output buffer");
}

}  // namespace pemoe

/// @file layer.hpp
/// @brief The layer contract every pemoe layer follows ("autodiff-light"), and its small helpers.
///
/// There is no autograd graph. A layer is a value type with a hand-written backward pass:
///
/// | member | what it does |
/// |---|---|
/// | `register_params(ParamStore<T>&, prefix, Rng&)` | declares its parameters by dotted name (`prefix +
/// ".lora_A.weight"`) and initialises them from the rng | | `forward(x, y, cache)` | writes `y` (the caller
/// allocates it with the right shape) and saves in `cache` exactly what backward needs | | `backward(x,
/// cache, dy, dx)` | **accumulates** parameter gradients (`dW +=`) into the store's gradient arena,
/// **writes** `dx`; `dx` is optional (`std::nullopt` skips the input gradient); frozen parameters get no
/// gradient | | `set_training(bool)` | dropout, router noise and jitter only act in training |
///
/// Shapes: activations are row-major `(N tokens, features)`. Each layer has a `Cache` struct with named
/// fields (`h`, `gate_probs`, `topk_idx`, ...). Composite layers call their children's forward in order and
/// their backward in reverse. Auxiliary losses (balance, z-loss) add their gradient inside the router's
/// backward, scaled by their coefficient.
///
/// Layers hold a pointer to their `ParamStore` and the `ParamId`s of their parameters, so a copied layer
/// shares parameters with the original (like a PyTorch module reference), never a stale view.
#pragma once

#include <optional>

#include "pemoe/core/tensor.hpp"

namespace pemoe {

/// Optional writable output of a backward pass: bind a `Matrix`, a `Map` or a row block, or pass
/// `std::nullopt` (the default) to skip computing the input gradient.
template <class T>
using GradOut = std::optional<MatrixRef<T>>;

}  // namespace pemoe

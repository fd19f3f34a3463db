/// @file clip.hpp
/// @brief Global-norm gradient clipping over a `ParamStore`'s gradient arena (PyTorch `clip_grad_norm_`).
#pragma once

#include <cmath>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"

namespace pemoe {

/**
 * @brief Scales every gradient by min(1, max_norm / (‖g‖₂ + 1e-6)), ‖g‖₂ over all trainable parameters
 * together (PyTorch `torch.nn.utils.clip_grad_norm_`, its 1e-6 included). Returns the norm before clipping.
 * A non-finite norm throws `NumericError` (a NaN/Inf gradient should stop training, not be scaled).
 * Cost: two passes over the gradient arena; the sum is accumulated in double.
 */
template <class T>
double clip_grad_norm(ParamStore<T>& store, double max_norm) {
  PEMOE_CHECK_CONFIG(max_norm > 0.0, "clip_grad_norm: max_norm must be positive, got ", max_norm);
  auto& g = store.grads();
  double sq = 0.0;
  for (const T v : g) sq += double(v) * double(v);
  const double norm = std::sqrt(sq);
  PEMOE_CHECK_AS(NumericError, std::isfinite(norm), "clip_grad_norm: the gradient norm is ", norm,
                 " (a NaN or Inf gradient)");
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0)
    for (T& v : g) v = static_cast<T>(double(v) * coef);
  return norm;
}

}  // namespace pemoe

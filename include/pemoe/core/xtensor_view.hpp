/// @file xtensor_view.hpp
/// @brief Zero-copy N-d `xt::adapt` views over pemoe's buffers and parameters (MPO cores, stacked experts).
///
/// Kept apart from core/tensor.hpp so that headers which need only 2-D Eigen views do not pull in xtensor.
#pragma once

#include <cstddef>
#include <vector>
#include <xtensor/xadapt.hpp>

#include "pemoe/core/param_store.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe {

/// Zero-copy N-d view of `shape` over `data` (row-major), for MPO cores and other N-d parameters.
template <class T>
auto adapt(T* data, const Shape& shape) {
  std::vector<std::size_t> s(shape.begin(), shape.end());
  return xt::adapt(data, static_cast<std::size_t>(shape_size(shape)), xt::no_ownership(), s);
}

/// A parameter's values as an N-d view with its declared shape.
template <class T>
auto tensor_view(ParamStore<T>& store, ParamId id) {
  return adapt(store.value(id), store.entry(id).shape);
}

}  // namespace pemoe

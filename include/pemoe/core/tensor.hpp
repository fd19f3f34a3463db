/// @file tensor.hpp
/// @brief Row-major matrix types and zero-copy views (`Eigen::Map`, `xt::adapt`) over pemoe's buffers.
///
/// Activations are row-major `(tokens, features)`, parameters are stored as PyTorch stores them
/// (a linear weight is `(d_out, d_in)`). Every view here aliases memory; none copies.
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include "pemoe/core/config.hpp"
#include "pemoe/core/error.hpp"

namespace pemoe {

/// Row-major dynamic matrix, the storage of every activation in pemoe.
template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// Row vector (one token, or a bias).
template <class T>
using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic, Eigen::RowMajor>;
/// Column vector.
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;
/// Mutable row-major view over memory pemoe does not own.
template <class T>
using MatrixMap = Eigen::Map<Matrix<T>>;
/// Read-only row-major view.
template <class T>
using ConstMatrixMap = Eigen::Map<const Matrix<T>>;
/// Function argument for a read-only matrix: binds a `Matrix`, a `Map` or a row block without a copy.
template <class T>
using ConstMatrixRef = Eigen::Ref<const Matrix<T>>;
/// Function argument for a writable matrix: binds a `Matrix`, a `Map` or a row block.
template <class T>
using MatrixRef = Eigen::Ref<Matrix<T>>;

/**
 * @brief A `std::vector` whose buffer starts on an `EIGEN_MAX_ALIGN_BYTES` boundary (64 bytes with AVX-512).
 *
 * Eigen's vectorised loops over a `Map` peel scalar iterations up to the first aligned address, so a sum
 * or an `a * b + c` over memory at another offset rounds differently. Buffers that outlive one call (the
 * parameter and gradient arenas) use it so that the same program gives the same bits whatever else the
 * process allocated before (a resumed run, another heap layout).
 */
template <class T>
using AlignedVector = std::vector<T, Eigen::aligned_allocator<T>>;

/// Shape of an N-d tensor (row-major, last index fastest).
using Shape = std::vector<Index>;

/// Number of elements of a shape (1 for the empty shape of a scalar). Throws `ShapeError` on a negative
/// extent or when the product does not fit in `Index` (a zero extent anywhere gives 0, whatever the others).
inline Index shape_size(const Shape& shape) {
  Index n = 1;
  bool overflow = false;
  for (Index d : shape) {
    PEMOE_CHECK_SHAPE(d >= 0, "shape_size: negative extent ", d);
    if (d == 0) return 0;
    if (n > std::numeric_limits<Index>::max() / d) overflow = true;
    n = overflow ? n : n * d;
  }
  PEMOE_CHECK_SHAPE(!overflow, "shape_size: the element count of a shape with ", shape.size(),
                    " extents overflows a 64-bit index");
  return n;
}

/// "(a, b, c)" for messages.
inline std::string shape_string(const Shape& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + ")";
}

/// Throws `ShapeError` "<site>: <what> is (r, c), expected (rows, cols)" unless `m` has that shape.
/// A negative `rows` or `cols` accepts any extent along that axis.
template <class Derived>
void check_shape(const std::string& site, const char* what, const Eigen::DenseBase<Derived>& m, Index rows,
                 Index cols) {
  const bool ok = (rows < 0 || m.rows() == rows) && (cols < 0 || m.cols() == cols);
  PEMOE_CHECK_SHAPE(ok, site, ": ", what, " is (", m.rows(), ", ", m.cols(), "), expected (",
                    rows < 0 ? std::string("any") : std::to_string(rows), ", ",
                    cols < 0 ? std::string("any") : std::to_string(cols), ")");
}

namespace detail {

/// Whether two views share any memory (half-open address ranges of their whole extents).
template <class A, class B>
bool views_overlap(const Eigen::DenseBase<A>& a, const Eigen::DenseBase<B>& b) {
  if (a.size() == 0 || b.size() == 0) return false;
  const auto* a0 = reinterpret_cast<const char*>(a.derived().data());
  const auto* b0 = reinterpret_cast<const char*>(b.derived().data());
  using SA = typename A::Scalar;
  using SB = typename B::Scalar;
  const auto* a1 =
      a0 + sizeof(SA) * static_cast<std::size_t>((a.rows() - 1) * a.derived().outerStride() + a.cols());
  const auto* b1 =
      b0 + sizeof(SB) * static_cast<std::size_t>((b.rows() - 1) * b.derived().outerStride() + b.cols());
  return a0 < b1 && b0 < a1;
}

}  // namespace detail

}  // namespace pemoe

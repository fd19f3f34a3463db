/// @file error.hpp
/// @brief pemoe's exceptions and the `PEMOE_CHECK` macro.
///
/// Every error a user can cause (a shape, a configuration, a file) is thrown as a subclass of
/// `pemoe::Error` whose message names the site (usually the layer's parameter prefix), what was
/// expected and what was found, e.g.
/// `LoRA 'h.0.attn.c_attn': x has 700 features, layer expects 768`.
/// Library code never calls `exit()`.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace pemoe {

/// Base class of every exception pemoe throws.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// A tensor has the wrong shape for the operation (names the site, the expected and the actual shape).
class ShapeError : public Error {
 public:
  explicit ShapeError(const std::string& what) : Error(what) {}
};

/// A configuration value is invalid or two values contradict each other.
class ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& what) : Error(what) {}
};

/// A file could not be read or written, or its content is malformed.
class IoError : public Error {
 public:
  explicit IoError(const std::string& what) : Error(what) {}
};

/// A numerical problem the caller must know about (NaN/Inf input, a singular matrix).
class NumericError : public Error {
 public:
  explicit NumericError(const std::string& what) : Error(what) {}
};

namespace detail {

/// Concatenates any streamable values into one string.
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

}  // namespace detail
}  // namespace pemoe

/// Throws `ErrorType` (a `pemoe::Error` subclass) with the streamed message when `cond` is false.
/// Usage: `PEMOE_CHECK_AS(pemoe::ShapeError, x.cols() == d_in, "LoRA '", name, "': x has ", x.cols(),
/// " features, layer expects ", d_in);`
#define PEMOE_CHECK_AS(ErrorType, cond, ...)                            \
  do {                                                                  \
    if (!(cond)) throw ErrorType(::pemoe::detail::concat(__VA_ARGS__)); \
  } while (false)

/// Throws `pemoe::Error` with the streamed message when `cond` is false.
#define PEMOE_CHECK(cond, ...) PEMOE_CHECK_AS(::pemoe::Error, cond, __VA_ARGS__)

/// Throws `pemoe::ShapeError` with the streamed message when `cond` is false.
#define PEMOE_CHECK_SHAPE(cond, ...) PEMOE_CHECK_AS(::pemoe::ShapeError, cond, __VA_ARGS__)

/// Throws `pemoe::ConfigError` with the streamed message when `cond` is false.
#define PEMOE_CHECK_CONFIG(cond, ...) PEMOE_CHECK_AS(::pemoe::ConfigError, cond, __VA_ARGS__)

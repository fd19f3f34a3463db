/// @file dtype.hpp
/// @brief Element types of stored tensors (the safetensors dtype names) and conversions between them,
/// including IEEE half (F16), bfloat16 (BF16) and the two 8-bit float formats.
///
/// Every conversion here is exact where the target can hold the value and rounds to nearest-even
/// otherwise (float → F16 / BF16), the same as PyTorch's `.half()` / `.bfloat16()`. F16 and BF16 go
/// through `Eigen::half` and `Eigen::bfloat16` (no hand-written rounding).
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "pemoe/core/error.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "pemoe's safetensors I/O assumes a little-endian host (the format is little-endian)"
#endif

namespace pemoe {

/**
 * @brief Element type of a stored tensor, named as in the safetensors format.
 *
 * Every type here can be read, copied unchanged and written; conversion to a C++ arithmetic type
 * (`SafetensorsFile::to_vector<T>`) is defined for all of them (`BOOL` reads as 0/1, the float formats
 * are decoded exactly, integers are `static_cast`).
 */
enum class Dtype {
  BOOL,     ///< 1 byte, 0 or 1
  U8,       ///< uint8
  I8,       ///< int8
  F8_E5M2,  ///< 8-bit float, 5 exponent bits, 2 mantissa bits (with inf/NaN)
  F8_E4M3,  ///< 8-bit float "E4M3FN": 4 exponent bits, 3 mantissa bits, no inf, NaN = S.1111.111
  I16,      ///< int16
  U16,      ///< uint16
  F16,      ///< IEEE 754 binary16
  BF16,     ///< bfloat16 (the upper half of a float)
  I32,      ///< int32
  U32,      ///< uint32
  F32,      ///< float
  I64,      ///< int64
  U64,      ///< uint64
  F64,      ///< double
};

/// Every dtype, in the order above (for listing them in messages).
inline constexpr Dtype all_dtypes[] = {Dtype::BOOL, Dtype::U8,  Dtype::I8,  Dtype::F8_E5M2, Dtype::F8_E4M3,
                                       Dtype::I16,  Dtype::U16, Dtype::F16, Dtype::BF16,    Dtype::I32,
                                       Dtype::U32,  Dtype::F32, Dtype::I64, Dtype::U64,     Dtype::F64};

/// The safetensors name of `d` ("F32", "BF16", ...).
inline const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::BOOL:
      return "BOOL";
    case Dtype::U8:
      return "U8";
    case Dtype::I8:
      return "I8";
    case Dtype::F8_E5M2:
      return "F8_E5M2";
    case Dtype::F8_E4M3:
      return "F8_E4M3";
    case Dtype::I16:
      return "I16";
    case Dtype::U16:
      return "U16";
    case Dtype::F16:
      return "F16";
    case Dtype::BF16:
      return "BF16";
    case Dtype::I32:
      return "I32";
    case Dtype::U32:
      return "U32";
    case Dtype::F32:
      return "F32";
    case Dtype::I64:
      return "I64";
    case Dtype::U64:
      return "U64";
    case Dtype::F64:
      return "F64";
  }
  return "?";
}

/// Bytes per element of `d`.
inline std::size_t dtype_size(Dtype d) {
  switch (d) {
    case Dtype::BOOL:
    case Dtype::U8:
    case Dtype::I8:
    case Dtype::F8_E5M2:
    case Dtype::F8_E4M3:
      return 1;
    case Dtype::I16:
    case Dtype::U16:
    case Dtype::F16:
    case Dtype::BF16:
      return 2;
    case Dtype::I32:
    case Dtype::U32:
    case Dtype::F32:
      return 4;
    case Dtype::I64:
    case Dtype::U64:
    case Dtype::F64:
      return 8;
  }
  return 0;
}

/// Whether `d` is a floating-point format.
inline bool dtype_is_float(Dtype d) {
  return d == Dtype::F8_E5M2 || d == Dtype::F8_E4M3 || d == Dtype::F16 || d == Dtype::BF16 ||
         d == Dtype::F32 || d == Dtype::F64;
}

/// "BOOL, U8, ..., F64" for messages.
inline std::string dtype_list() {
  std::string s;
  for (Dtype d : all_dtypes) s += std::string(s.empty() ? "" : ", ") + dtype_name(d);
  return s;
}

/// Parses a safetensors dtype name; returns false (and leaves `out` unchanged) for an unknown one.
inline bool parse_dtype(const std::string& name, Dtype& out) {
  for (Dtype d : all_dtypes)
    if (name == dtype_name(d)) {
      out = d;
      return true;
    }
  return false;
}

/// The dtype that stores a C++ type unchanged: `dtype_of<float>() == Dtype::F32`.
template <class T>
constexpr Dtype dtype_of() {
  static_assert(std::is_arithmetic_v<T>, "dtype_of<T>: T must be an arithmetic type");
  if constexpr (std::is_same_v<T, bool>)
    return Dtype::BOOL;
  else if constexpr (std::is_floating_point_v<T>) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "dtype_of<T>: only float and double have a dtype");
    return sizeof(T) == 4 ? Dtype::F32 : Dtype::F64;
  } else if constexpr (std::is_signed_v<T>) {
    if constexpr (sizeof(T) == 1)
      return Dtype::I8;
    else if constexpr (sizeof(T) == 2)
      return Dtype::I16;
    else if constexpr (sizeof(T) == 4)
      return Dtype::I32;
    else
      return Dtype::I64;
  } else {
    if constexpr (sizeof(T) == 1)
      return Dtype::U8;
    else if constexpr (sizeof(T) == 2)
      return Dtype::U16;
    else if constexpr (sizeof(T) == 4)
      return Dtype::U32;
    else
      return Dtype::U64;
  }
}

/// IEEE half bits → float (exact; subnormals, inf and NaN preserved). Uses `Eigen::half`.
inline float half_to_float(std::uint16_t h) {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(h));
}

/// float → IEEE half bits, rounding to nearest-even; overflow gives ±inf, NaN stays a (quiet) NaN with its
/// sign. Uses `Eigen::half` (F16C instructions where the build enables them, else Eigen's portable code).
inline std::uint16_t float_to_half(float f) {
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(f));
}

/// bfloat16 bits → float (exact). Uses `Eigen::bfloat16`.
inline float bf16_to_float(std::uint16_t b) {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::bfloat16>(b));
}

/// float → bfloat16 bits, rounding to nearest-even (overflow gives ±inf); NaN becomes the quiet NaN
/// 0x7fc0 / 0xffc0 (its sign kept). Uses `Eigen::bfloat16`.
inline std::uint16_t float_to_bf16(float f) {
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::bfloat16(f));
}

/// F8_E5M2 bits → float (exact: it is the upper byte of a half).
inline float f8e5m2_to_float(std::uint8_t b) {
  return half_to_float(static_cast<std::uint16_t>(b << 8));
}

/// F8_E4M3 ("E4M3FN": bias 7, no infinities, NaN = S.1111.111) bits → float (exact).
inline float f8e4m3_to_float(std::uint8_t b) {
  const int e = (b >> 3) & 0xf;
  const int m = b & 0x7;
  const float sign = (b & 0x80) ? -1.0f : 1.0f;
  if (e == 15 && m == 7) return std::numeric_limits<float>::quiet_NaN();
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), -9);
  return sign * std::ldexp(static_cast<float>(8 + m), e - 10);
}

namespace detail {

/// `x` as `T`; for an integer `T` a float is truncated and saturated (NaN gives 0) instead of being
/// undefined behaviour out of range.
template <class T, class F>
T convert_float(F x) {
  if constexpr (std::is_floating_point_v<T> || std::is_same_v<T, bool>) {
    return static_cast<T>(x);
  } else {
    if (std::isnan(x)) return T(0);
    if (x <= static_cast<F>(std::numeric_limits<T>::lowest())) return std::numeric_limits<T>::lowest();
    if (x >= static_cast<F>(std::numeric_limits<T>::max())) return std::numeric_limits<T>::max();
    return static_cast<T>(x);
  }
}

/// Reads one element of dtype `d` at `p` (little-endian, unaligned-safe) as `T`.
template <class T>
T load_element(const unsigned char* p, Dtype d) {
  auto get = [p](auto tag) {
    decltype(tag) v;
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  switch (d) {
    case Dtype::BOOL:
      return static_cast<T>(p[0] != 0);
    case Dtype::U8:
      return static_cast<T>(p[0]);
    case Dtype::I8:
      return static_cast<T>(get(std::int8_t{}));
    case Dtype::F8_E5M2:
      return convert_float<T>(f8e5m2_to_float(p[0]));
    case Dtype::F8_E4M3:
      return convert_float<T>(f8e4m3_to_float(p[0]));
    case Dtype::I16:
      return static_cast<T>(get(std::int16_t{}));
    case Dtype::U16:
      return static_cast<T>(get(std::uint16_t{}));
    case Dtype::F16:
      return convert_float<T>(half_to_float(get(std::uint16_t{})));
    case Dtype::BF16:
      return convert_float<T>(bf16_to_float(get(std::uint16_t{})));
    case Dtype::I32:
      return static_cast<T>(get(std::int32_t{}));
    case Dtype::U32:
      return static_cast<T>(get(std::uint32_t{}));
    case Dtype::F32:
      return convert_float<T>(get(float{}));
    case Dtype::I64:
      return static_cast<T>(get(std::int64_t{}));
    case Dtype::U64:
      return static_cast<T>(get(std::uint64_t{}));
    case Dtype::F64:
      return convert_float<T>(get(double{}));
  }
  return T{};
}

/// Writes `v` as one element of dtype `d` at `p` (little-endian; float formats round to nearest-even).
template <class T>
void store_element(unsigned char* p, Dtype d, T v) {
  auto put = [p](auto x) { std::memcpy(p, &x, sizeof x); };
  switch (d) {
    case Dtype::BOOL:
      p[0] = v != T(0) ? 1 : 0;
      return;
    case Dtype::U8:
      p[0] = static_cast<std::uint8_t>(v);
      return;
    case Dtype::I8:
      put(static_cast<std::int8_t>(v));
      return;
    case Dtype::F8_E5M2:
    case Dtype::F8_E4M3:
      throw ConfigError(std::string("writing ") + dtype_name(d) +
                        " is not supported; write F16, BF16 or F32");
    case Dtype::I16:
      put(static_cast<std::int16_t>(v));
      return;
    case Dtype::U16:
      put(static_cast<std::uint16_t>(v));
      return;
    case Dtype::F16:
      put(float_to_half(static_cast<float>(v)));
      return;
    case Dtype::BF16:
      put(float_to_bf16(static_cast<float>(v)));
      return;
    case Dtype::I32:
      put(static_cast<std::int32_t>(v));
      return;
    case Dtype::U32:
      put(static_cast<std::uint32_t>(v));
      return;
    case Dtype::F32:
      put(static_cast<float>(v));
      return;
    case Dtype::I64:
      put(static_cast<std::int64_t>(v));
      return;
    case Dtype::U64:
      put(static_cast<std::uint64_t>(v));
      return;
    case Dtype::F64:
      put(static_cast<double>(v));
      return;
  }
}

}  // namespace detail
}  // namespace pemoe

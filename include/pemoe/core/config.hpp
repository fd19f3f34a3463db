/// @file config.hpp
/// @brief Compile-time configuration of pemoe: the index type and the macros a user may define.
///
/// Configuration flows only through the `#ifndef`-defaulted macros of this file and through
/// INTERFACE compile definitions on the `pemoe::pemoe` target (e.g. `PEMOE_WITH_OPENMP`).
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

/// Unrolls the loop that follows completely (its trip count is a compile-time constant): the register-blocked
/// kernels (core/detail/skinny_gemm.hpp, adapters/detail/selected_rows.hpp) keep their accumulator arrays in
/// registers only once their loops are unrolled, which GCC does by itself at -O3 but not at -O2 (CMake's
/// RelWithDebInfo): measured 2.4-3.3x slower at -O2 without it (router and LoRA products, GCC 12, AVX-512).
#if defined(__clang__)
#define PEMOE_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define PEMOE_UNROLL _Pragma("GCC unroll 32")
#else
#define PEMOE_UNROLL
#endif

namespace pemoe {

/// Signed index type for sizes and loops; the same as Eigen's default `Eigen::Index`.
using Index = std::ptrdiff_t;

/// Number of threads pemoe's own loops and Eigen's GEMM use (1 without OpenMP).
inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace detail {
/// What a request for the oneDNN backend (`set_gemm_backend`, a bf16 `GemmPrecisionScope`, a weight pack) is
/// told in a build without `PEMOE_WITH_DNNL`.
inline constexpr const char* kNoDnnlBackend =
    "this build has no oneDNN backend: link the CMake target pemoe::dnnl (Debian: apt-get install "
    "libdnnl-dev)";
}  // namespace detail

}  // namespace pemoe

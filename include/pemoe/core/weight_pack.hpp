/// @file weight_pack.hpp
/// @brief `WeightPack`: a frozen weight reordered once for the two products a frozen linear layer needs.
///
/// A frozen `Linear` (the base of every adapter) computes y = x·Wᵀ forward and dx = dy·W backward with
/// the same W (d_out, d_in) at every step. A fast GEMM reorders ("packs") W into its blocked layout on every
/// call; a `WeightPack` does it once, in f32 or in bf16 (inputs rounded to bf16, products accumulated in
/// f32), and serves both products from the packed copies: two reordered copies (`PackLayout::blocked`,
/// fastest), or in bf16 one plain copy read through strides (`PackLayout::single`, half the memory, rows that
/// can be gathered). The oneDNN backend provides it
/// (core/dnnl/packed_weight.hpp, `PEMOE_WITH_DNNL`); `make_weight_pack` says what is missing elsewhere.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "pemoe/core/config.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/tensor.hpp"
#ifdef PEMOE_WITH_DNNL
#include "pemoe/core/dnnl/bf16_speed.hpp"
#include "pemoe/core/dnnl/packed_weight.hpp"
#endif

namespace pemoe {

/// The element type of a packed weight.
enum class PackDtype {
  f32,  ///< exact: the same products as the unpacked weight, up to summation order
  bf16  ///< inputs and weight rounded to bfloat16 (8-bit mantissa), f32 accumulation; needs bf16 units, and
        ///< is faster than f32 only where they outrun the f32 units (AMX; see core/dnnl/bf16_speed.hpp)
};

/// How a pack holds W: the speed of its products against its memory.
enum class PackLayout {
  blocked,  ///< two copies of W, each reordered for one product (fastest; f32: 8 bytes an element, bf16: 4)
  single    ///< bf16 only: one plain row-major copy read by both products (2 bytes an element; its rows can
          ///< be gathered, so a tied embedding's lookup can read it); some products are slower, see the bench
};

/// "blocked" or "single".
inline const char* pack_layout_name(PackLayout l) {
  return l == PackLayout::single ? "single" : "blocked";
}

/// "f32" or "bf16".
inline const char* pack_dtype_name(PackDtype d) {
  return d == PackDtype::bf16 ? "bf16" : "f32";
}

/// Parses "f32" / "bf16" (ConfigError naming the allowed values otherwise).
inline PackDtype pack_dtype_from_string(const std::string& s) {
  if (s == "f32") return PackDtype::f32;
  if (s == "bf16") return PackDtype::bf16;
  throw ConfigError("unknown packed weight dtype '" + s + "'; allowed: f32, bf16");
}

/**
 * @brief A frozen weight W (d_out, d_in), packed for y = x·Wᵀ and dx = dy·W.
 *
 * Shapes: forward x (N, d_in) → y (N, d_out); backward_input dy (N, d_out) → dx (N, d_in). Any N.
 * Cost: 2·N·d_in·d_out flops per product; memory `bytes()` (two packed copies: 8 bytes an element in f32,
 * 4 in bf16, i.e. a bf16 pack is the size of the f32 weight it can replace).
 */
template <class T>
class WeightPack {
 public:
  virtual ~WeightPack() = default;
  /// y = x·Wᵀ (+ b when `bias` points at d_out values) + beta·y, the bias and beta·y added in the product's
  /// epilogue (beta = 0 overwrites y).
  virtual void forward(ConstMatrixRef<T> x, MatrixRef<T> y, const T* bias = nullptr, T beta = T(0)) const = 0;
  /// dx = dy·W + beta·dx.
  virtual void backward_input(ConstMatrixRef<T> dy, MatrixRef<T> dx, T beta) const = 0;
  /// The unpacked weight (d_out, d_in) (exact in f32; the bf16-rounded weight in bf16).
  virtual Matrix<T> unpack() const = 0;
  /// Row `o` of W (d_in values, exactly as the products see it) into `out`; `PackLayout::single` only
  /// (`ConfigError` otherwise).
  virtual void gather_row(Index o, T* out) const = 0;
  /// Bytes held by the packed copies.
  virtual std::size_t bytes() const = 0;
  virtual PackDtype dtype() const = 0;
  virtual PackLayout layout() const = 0;
  virtual Index d_out() const = 0;
  virtual Index d_in() const = 0;
};

/// Whether `make_weight_pack` can make a pack of `dtype` here (oneDNN built in; bf16 also needs a CPU with
/// AVX512-BF16 or AMX units). `why`, when given, receives the reason when not.
template <class T>
bool weight_pack_available(PackDtype dtype, std::string* why = nullptr) {
  auto no = [&](const std::string& reason) {
    if (why) *why = reason;
    return false;
  };
  if constexpr (!std::is_same_v<T, float>) {
    (void)dtype;
    return no("packed weights are f32 or bf16; this model computes in double (use float)");
  } else {
#ifdef PEMOE_WITH_DNNL
    if (dtype == PackDtype::bf16 && !dnnl_backend::cpu_has_bf16())
      return no(dnnl_backend::bf16_unavailable_reason());
    return true;
#else
    (void)dtype;
    return no(detail::kNoDnnlBackend);
#endif
  }
}

/// Packs the frozen weight W (d_out, d_in) in `layout`; throws `ConfigError` with the reason where
/// `weight_pack_available` says no, and for an f32 `PackLayout::single` (a plain f32 copy is W itself).
/// The first bf16 pack of a process times one bf16 and one f32 product (about 20 ms) and prints a warning
/// on stderr when bf16 is the slower here (core/dnnl/bf16_speed.hpp: AVX512-BF16 without AMX on Intel).
template <class T>
std::shared_ptr<const WeightPack<T>> make_weight_pack(ConstMatrixRef<T> W, PackDtype dtype,
                                                      PackLayout layout = PackLayout::blocked) {
  std::string why;
  PEMOE_CHECK_CONFIG(weight_pack_available<T>(dtype, &why), "cannot pack a weight as ",
                     pack_dtype_name(dtype), ": ", why);
  PEMOE_CHECK_CONFIG(layout == PackLayout::blocked || dtype == PackDtype::bf16,
                     "the single-copy pack layout is bf16 only (an f32 copy would duplicate the weight); "
                     "use PackLayout::blocked for f32");
#ifdef PEMOE_WITH_DNNL
  if constexpr (std::is_same_v<T, float>) {
    if (dtype == PackDtype::bf16) dnnl_backend::warn_once_if_bf16_slow();
    struct Pack final : WeightPack<float> {
      Pack(ConstMatrixRef<float> w, bool bf16, PackLayout l)
          : packed(w, bf16, 256,
                   l == PackLayout::single ? dnnl_backend::PackedWeight::Layout::single
                                           : dnnl_backend::PackedWeight::Layout::blocked) {}
      void forward(ConstMatrixRef<float> x, MatrixRef<float> y, const float* bias,
                   float beta) const override {
        packed.forward(x, y, bias, beta);
      }
      void backward_input(ConstMatrixRef<float> dy, MatrixRef<float> dx, float beta) const override {
        packed.backward_input(dy, dx, beta);
      }
      Matrix<float> unpack() const override { return packed.unpack(); }
      void gather_row(Index o, float* out) const override { packed.gather_row(o, out); }
      PackLayout layout() const override {
        return packed.layout() == dnnl_backend::PackedWeight::Layout::single ? PackLayout::single
                                                                             : PackLayout::blocked;
      }
      std::size_t bytes() const override { return packed.bytes(); }
      PackDtype dtype() const override { return packed.bf16() ? PackDtype::bf16 : PackDtype::f32; }
      Index d_out() const override { return packed.d_out(); }
      Index d_in() const override { return packed.d_in(); }
      dnnl_backend::PackedWeight packed;
    };
    return std::make_shared<const Pack>(W, dtype == PackDtype::bf16, layout);
  }
#endif
  (void)W;
  (void)layout;
  return nullptr;  // unreachable: weight_pack_available said no above
}

}  // namespace pemoe

/// @file bf16_speed.hpp
/// @brief Whether bf16 products are actually faster than f32 on this CPU: measured once per process.
///
/// Having bf16 instructions does not make bf16 fast. On an Intel Xeon (family 6, model 207) booted without
/// AMX, oneDNN 2.6 dispatches to avx512_core_bf16 and runs a packed bf16 product of GPT-2's shapes at 60-83
/// GFLOP/s on one core, where its f32 product runs at 130-170 (bench/results/2026-12-03-intel-xeon-no-amx-
/// sitting7.md): half the speed. With AMX the same products run at 600-1100 GFLOP/s, on an AMD EPYC
/// (Zen 5, avx512_bf16) at about 2× f32. The instruction set alone cannot tell these apart, so pemoe times
/// one product of each dtype the first time a bf16 pack is made, and warns (once, on stderr) when bf16 is
/// not faster: the bf16 pack still saves memory, but the user who chose it for speed must know. One product
/// does not decide for a whole model: on that no-AMX Xeon a bf16 backbone trained GPT-2-124M at 0.56× its f32
/// speed but T5-small (fewer rows per weight) at 1.14× (bench/results/2026-12-04-intel-xeon-no-amx-*), so the
/// warning says to time the model both ways.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <string>

#include "pemoe/core/dnnl/matmul.hpp"
#include "pemoe/core/dnnl/packed_weight.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe::dnnl_backend {

/// The speed of one packed product, (256, 768)·(768, 768) forward, in each dtype on this thread count.
struct Bf16Speed {
  double bf16_gflops = 0.0;
  double f32_gflops = 0.0;
  /// bf16 speed over f32 speed (0 when unmeasured).
  double ratio() const { return f32_gflops > 0.0 ? bf16_gflops / f32_gflops : 0.0; }
};

namespace detail {

/// GFLOP/s of `pack`'s forward product at 256 rows: the best of 5 timed calls after one warm-up.
inline double packed_forward_gflops(const PackedWeight& pack, ConstMatrixRef<float> x, MatrixRef<float> y) {
  pack.forward(x, y);
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    pack.forward(x, y);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * double(x.rows()) * double(pack.d_in()) * double(pack.d_out()) / best * 1e-9;
}

}  // namespace detail

/// Times a packed (256, 768)·(768, 768) product in bf16 and in f32 (about 20 ms). Call `bf16_speed()` for
/// the process's measurement; this measures again.
inline Bf16Speed measure_bf16_speed() {
  const Index n = 256, d = 768;
  Matrix<float> W(d, d), x(n, d), y(n, d);
  // deterministic values of unit scale; no RNG needed for a timing
  for (Index i = 0; i < d; ++i)
    for (Index j = 0; j < d; ++j) W(i, j) = float((i * 7 + j * 13) % 97) / 97.0f - 0.5f;
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < d; ++j) x(i, j) = float((i * 11 + j * 5) % 89) / 89.0f - 0.5f;
  Bf16Speed s;
  s.f32_gflops = detail::packed_forward_gflops(PackedWeight(W, false), x, y);
  s.bf16_gflops = detail::packed_forward_gflops(PackedWeight(W, true), x, y);
  return s;
}

/// This process's measurement (`measure_bf16_speed`, taken at the first call; thread-safe).
inline const Bf16Speed& bf16_speed() {
  static const Bf16Speed s = measure_bf16_speed();
  return s;
}

/// The warning for a bf16 speed measurement: empty when bf16 is at least as fast as f32, otherwise what was
/// measured and what to do.
inline std::string bf16_speed_warning(const Bf16Speed& s, const std::string& isa) {
  if (s.ratio() >= 1.0) return {};
  std::ostringstream os;
  os.precision(0);
  os << std::fixed << "pemoe: warning: bf16 products are slower than f32 on this CPU (oneDNN ISA " << isa
     << ": " << s.bf16_gflops << " GFLOP/s in bf16 against " << s.f32_gflops
     << " in f32 for a packed (256, 768) x (768, 768) product, measured just now). A bf16 pack still "
        "halves the weights' memory; where speed matters, time your model both ways (PackDtype::f32): on "
        "one such CPU GPT-2-124M trained at 0.56x its f32 speed in bf16, T5-small at 1.14x (its products "
        "have fewer rows per weight). bf16 pays off most with AMX units or on CPUs whose bf16 units outrun "
        "their f32 ones.";
  return os.str();
}

/// Prints `bf16_speed_warning` for this process's measurement on stderr, the first time only; returns the
/// warning (empty when bf16 is faster here).
inline const std::string& warn_once_if_bf16_slow() {
  static const std::string message = [] {
    std::string m = bf16_speed_warning(bf16_speed(), isa_name());
    if (!m.empty()) std::fprintf(stderr, "%s\n", m.c_str());
    return m;
  }();
  return message;
}

}  // namespace pemoe::dnnl_backend

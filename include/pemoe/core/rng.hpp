/// @file rng.hpp
/// @brief A seeded, counter-based random number generator whose output never depends on threads.
///
/// `Rng` is SplitMix64 used as a counter-based generator: draw number `i` of stream `key` is
/// `mix64(key + (i+1)·γ)`, γ = 0x9E3779B97F4A7C15 (Steele, Lea, Flood 2014, "Fast splittable
/// pseudorandom number generators"). Because every draw is a pure function of (key, i), a parallel
/// loop that draws element `i` at counter `i` gives the same bits for any thread count, and `split()`
/// derives independent child streams (one per layer, one per purpose) from a name or a number.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "pemoe/core/config.hpp"

namespace pemoe {

/// Counter-based pseudo-random generator (SplitMix64 keyed streams); see the file comment.
class Rng {
 public:
  /// A stream seeded with `seed`.
  explicit Rng(std::uint64_t seed = 0) : m_key(mix64(seed ^ 0x6A09E667F3BCC909ULL)) {}

  /// An independent child stream identified by `stream` (the parent's counter is not advanced).
  Rng split(std::uint64_t stream) const {
    return Rng(Key{mix64(m_key ^ mix64(stream + 0xBB67AE8584CAA73BULL))});
  }
  /// An independent child stream identified by a name (e.g. a parameter's dotted name).
  Rng split(const std::string& name) const {
    std::uint64_t h = 0xCBF29CE484222325ULL;  // FNV-1a
    for (unsigned char c : name) h = (h ^ c) * 0x100000001B3ULL;
    return split(h);
  }

  /// The next 64 random bits of this stream.
  std::uint64_t next_u64() { return bits_at(m_counter++); }
  /// Draw number `i` of this stream without touching the counter (for parallel, thread-count-free fills).
  std::uint64_t bits_at(std::uint64_t i) const { return mix64(m_key + (i + 1) * kGamma); }

  /// Uniform double in [0, 1) with 53 random bits.
  double uniform() { return to_unit(next_u64()); }
  /// Uniform double in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  /// Uniform in [0, 1) at counter `i` (see `bits_at`).
  double uniform_at(std::uint64_t i) const { return to_unit(bits_at(i)); }
  /// Standard normal draw (Box–Muller on two uniforms).
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  /// Normal draw with mean `mean` and standard deviation `stddev`.
  double normal(double mean, double stddev) { return mean + stddev * normal(); }
  /// Bernoulli draw: true with probability `p`.
  bool bernoulli(double p) { return uniform() < p; }
  /// Uniform integer in [0, n).
  std::uint64_t below(std::uint64_t n) { return n ? next_u64() % n : 0; }

  /// How many draws this stream has made.
  std::uint64_t counter() const { return m_counter; }
  /// Rewind or skip the stream to draw number `c`.
  void set_counter(std::uint64_t c) { m_counter = c; }

  /// Fills `n` values with U[lo, hi).
  template <class T>
  void fill_uniform(T* out, Index n, double lo, double hi) {
    for (Index i = 0; i < n; ++i) out[i] = static_cast<T>(uniform(lo, hi));
  }
  /// Fills `n` values with N(mean, stddev²).
  template <class T>
  void fill_normal(T* out, Index n, double mean, double stddev) {
    for (Index i = 0; i < n; ++i) out[i] = static_cast<T>(normal(mean, stddev));
  }
  /// PyTorch's `kaiming_uniform_(w, a)` for a weight with `fan_in` inputs:
  /// U(±b), b = gain·√(3/fan_in), gain = √(2/(1+a²)). With a = √5 (nn.Linear's default) b = 1/√fan_in.
  template <class T>
  void fill_kaiming_uniform(T* out, Index n, Index fan_in, double a = std::sqrt(5.0)) {
    const double gain = std::sqrt(2.0 / (1.0 + a * a));
    const double bound = gain * std::sqrt(3.0 / static_cast<double>(fan_in));
    fill_uniform(out, n, -bound, bound);
  }

  /// The Weyl step between consecutive counters' states (the golden ratio in 64 bits).
  static constexpr std::uint64_t kGamma = 0x9E3779B97F4A7C15ULL;
  /// The state draw i mixes, key + (i + 1)·γ: `bits_at(i) == mix64(counter_state(i))`, and draw i + 1's state
  /// is this plus `kGamma` (a hot loop adds instead of multiplying).
  std::uint64_t counter_state(std::uint64_t i) const { return m_key + (i + 1) * kGamma; }

  /// The SplitMix64 finaliser (a bijection on 64-bit words with full avalanche).
  static constexpr std::uint64_t mix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

 private:
  struct Key {
    std::uint64_t value;
  };
  explicit Rng(Key k) : m_key(k.value) {}
  static double to_unit(std::uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

  std::uint64_t m_key;
  std::uint64_t m_counter = 0;
};

}  // namespace pemoe

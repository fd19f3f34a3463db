/// @file profile.hpp
/// @brief An opt-in wall-clock breakdown by kind of work (GEMM, attention, LayerNorm, ...), for benchmarks.
///
/// Nothing is timed unless a `profile::Totals` is installed with `profile::Session`; then each
/// `profile::Scope` adds its wall time to the bucket it names. Only scopes opened outside OpenMP parallel
/// regions count, so per-thread work inside a parallel loop is never added twice. Scopes nest: a bucket's
/// time excludes the time of scopes opened inside it, so the buckets add up to the timed total.
#pragma once

#include <chrono>
#include <map>
#include <string>

#include "pemoe/core/config.hpp"

namespace pemoe::profile {

/// Accumulated seconds per bucket (exclusive of nested scopes).
struct Totals {
  std::map<std::string, double> seconds;
  double total() const {
    double t = 0;
    for (const auto& kv : seconds) t += kv.second;
    return t;
  }
};

namespace detail {
struct State {
  Totals* totals = nullptr;
  const char* current = nullptr;
  std::chrono::steady_clock::time_point since;
};
inline State& state() {
  static State s;
  return s;
}
inline bool in_parallel() {
#ifdef _OPENMP
  return omp_in_parallel();
#else
  return false;
#endif
}
}  // namespace detail

/// Times everything between its construction and destruction into `totals` (bucket "other" outside scopes).
class Session {
 public:
  explicit Session(Totals& totals) {
    auto& s = detail::state();
    s.totals = &totals;
    s.current = "other";
    s.since = std::chrono::steady_clock::now();
  }
  ~Session() {
    auto& s = detail::state();
    s.totals->seconds[s.current] +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - s.since).count();
    s.totals = nullptr;
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
};

/// Charges the time until its destruction to `bucket` (a string literal), then returns to the enclosing one.
class Scope {
 public:
  explicit Scope(const char* bucket) {
    auto& s = detail::state();
    if (!s.totals || detail::in_parallel()) return;
    m_active = true;
    switch_to(bucket);
  }
  ~Scope() {
    if (m_active) switch_to(m_prev);
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void switch_to(const char* bucket) {
    auto& s = detail::state();
    const auto now = std::chrono::steady_clock::now();
    s.totals->seconds[s.current] += std::chrono::duration<double>(now - s.since).count();
    if (!m_prev) m_prev = s.current;
    s.current = bucket;
    s.since = now;
  }
  bool m_active = false;
  const char* m_prev = nullptr;
};

}  // namespace pemoe::profile

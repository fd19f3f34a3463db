// Shared helpers of pemoe's benchmarks: random inputs, the GFLOP/s counter, the SIMD context line, the
// timing loop of a training step.
#pragma once

#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <Eigen/Core>
#include <fstream>
#include <string>

#include "pemoe/core/config.hpp"
#ifdef PEMOE_WITH_DNNL
#include "pemoe/core/dnnl/bf16_speed.hpp"
#endif
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/profile.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe::bench {

/// (rows, cols) float matrix with N(0, 1) entries.
inline Matrix<float> random_matrix(Index rows, Index cols, std::uint64_t seed) {
  Matrix<float> m(rows, cols);
  Rng rng(seed);
  rng.fill_normal(m.data(), m.size(), 0.0, 1.0);
  return m;
}

/// Reports `flops` per iteration as a GFLOP/s rate.
inline void set_gflops(benchmark::State& state, double flops) {
  state.counters["GFLOPS"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.counters["GFLOPS"].value /= 1e9;
}

/// Peak resident memory of this process so far, MB.
inline double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;
}

/**
 * @brief Times a training step: 2 warm-up steps (allocations, first touch), the benchmark's iterations, then
 * one more step under the profiler whose scopes become the counters `t_<scope>` (share of the step). Sets
 * `tokens_per_s` from `tokens_per_step` and `peak_rss_MB`.
 */
template <class Step>
void time_training_step(benchmark::State& state, Step&& step, double tokens_per_step) {
  for (int i = 0; i < 2; ++i) step();
  for (auto _ : state) step();
  profile::Totals totals;
  {
    const profile::Session session(totals);
    step();
  }
  const double t = totals.total();
  for (const auto& kv : totals.seconds) state.counters["t_" + kv.first] = kv.second / t;
  state.counters["tokens_per_s"] =
      benchmark::Counter(tokens_per_step, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_rss_MB"] = peak_rss_mb();
}

/// Adds the SIMD level Eigen was compiled with and the thread count to the benchmark's context.
inline void add_context() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line))
    if (line.rfind("model name", 0) == 0) {
      benchmark::AddCustomContext("cpu", line.substr(line.find(':') + 2));
      break;
    }
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("threads", std::to_string(max_threads()));
  benchmark::AddCustomContext("gemm_backend", gemm_backend_name(gemm_backend()));
#ifdef PEMOE_WITH_DNNL
  benchmark::AddCustomContext("dnnl_isa", dnnl_backend::isa_name());
  if (dnnl_backend::cpu_has_bf16()) {  // bf16 units are not always faster than f32 ones: say which here
    const dnnl_backend::Bf16Speed s = dnnl_backend::bf16_speed();
    benchmark::AddCustomContext("bf16_vs_f32_GFLOPs", std::to_string(int(s.bf16_gflops)) + " vs " +
                                                          std::to_string(int(s.f32_gflops)));
  }
#endif
}

}  // namespace pemoe::bench

/// The `main` of every pemoe benchmark: Google Benchmark's, plus the SIMD/thread context line.
#define PEMOE_BENCHMARK_MAIN()                                        \
  int main(int argc, char** argv) {                                   \
    benchmark::Initialize(&argc, argv);                               \
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1; \
    pemoe::bench::add_context();                                      \
    benchmark::RunSpecifiedBenchmarks();                              \
    benchmark::Shutdown();                                            \
    return 0;                                                         \
  }

// Shared helpers of pemoe's benchmarks: random inputs, the GFLOP/s counter, the SIMD context line.
#pragma once

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <fstream>
#include <string>

#include "pemoe/core/config.hpp"
#include "pemoe/core/gemm.hpp"
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

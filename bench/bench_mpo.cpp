// MPO decomposition and application (MPOE / MPOP), float.
//
//   BM_Decompose/rows/cols/max_bond    TT-SVD + symmetric gauge of a (rows, cols) weight (PyTorch (out, in));
//                                      T5-base wi 3072×768 ([4,4,8,6,4]×[3,4,4,4,4]) and T5-large /
//                                      GPT-2-medium 4096×1024 ([4,4,8,8,4]×[4,4,4,4,4]); max_bond 0 = full
//                                      rank. Label: the SVD backend ("lapack" with pemoe::lapack, else
//                                      "eigen"). The peer is TensorLy's tensor_train_matrix, one thread.
//   BM_DenseGemm/N/rows/cols           y = x·Wᵀ with the dense W through pemoe::gemm (the baseline)
//   BM_ApplyRebuild/N/rows/cols/chi    y = x·Wᵀ, W rebuilt from the cores every call (the MPOE forward)
//   BM_ApplyContraction/N/rows/cols/chi  x contracted through the cores, W never formed
// GFLOPS counters use each path's own FLOP count (mpo_apply_cost); "model_*_gflop" report the model's
// totals per call so the paths can be compared at equal work; "auto_picks_contraction" is the FLOP model's
// choice. Contraction cases whose largest intermediate would exceed 1.5 GB are skipped.
#include <limits>

#include "bench_common.hpp"
#include "pemoe/mpo/contract.hpp"
#include "pemoe/mpo/decompose.hpp"
#include "pemoe/mpo/reconstruct.hpp"

using namespace pemoe;

namespace {

MpoShape shape_for(Index rows, Index cols) {
  if (rows == 3072 && cols == 768) return MpoShape{{4, 4, 8, 6, 4}, {3, 4, 4, 4, 4}};
  if (rows == 4096 && cols == 1024) return MpoShape{{4, 4, 8, 8, 4}, {4, 4, 4, 4, 4}};
  return propose_mpo_shape(rows, cols, 5, true);
}

TruncationPolicy policy(Index chi) {
  TruncationPolicy p;
  if (chi > 0) p.max_bond = chi;
  return p;
}

void BM_Decompose(benchmark::State& state) {
  const Index rows = state.range(0), cols = state.range(1), chi = state.range(2);
  const Matrix<float> W = bench::random_matrix(rows, cols, 1);
  const MpoShape s = shape_for(rows, cols);
  Index params = 0;
  for (auto _ : state) {
    const Mpo<float> m = decompose<float>(W, s, policy(chi));
    params = m.num_params();
    benchmark::DoNotOptimize(m.cores.data());
  }
  state.counters["mpo_params"] = double(params);
  state.counters["dense_params"] = double(rows * cols);
  state.SetLabel(decompose_uses_lapack() ? "lapack" : "eigen");
}

Mpo<float> make_mpo(Index rows, Index cols, Index chi) {
  return decompose<float>(bench::random_matrix(rows, cols, 2), shape_for(rows, cols), policy(chi));
}

void BM_DenseGemm(benchmark::State& state) {
  const Index n = state.range(0), rows = state.range(1), cols = state.range(2);
  const Matrix<float> x = bench::random_matrix(n, cols, 3), W = bench::random_matrix(rows, cols, 4);
  Matrix<float> y(n, rows);
  for (auto _ : state) {
    gemm<float>(Op::N, Op::T, 1.0f, x, W, 0.0f, y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  bench::set_gflops(state, 2.0 * double(n) * double(rows) * double(cols));
}

void report_model(benchmark::State& state, const MpoApplyCost& c) {
  state.counters["model_rebuild_gflop"] = c.rebuild_flops / 1e9;
  state.counters["model_contraction_gflop"] = c.contraction_flops / 1e9;
  state.counters["model_dense_gflop"] = c.dense_flops / 1e9;
  state.counters["model_contraction_Mmoved"] = c.contraction_moved / 1e6;
  state.counters["auto_picks_contraction"] = c.best == MpoApplyPath::contraction ? 1 : 0;
}

void BM_ApplyRebuild(benchmark::State& state) {
  const Index n = state.range(0), rows = state.range(1), cols = state.range(2), chi = state.range(3);
  const Mpo<float> m = make_mpo(rows, cols, chi);
  const Matrix<float> x = bench::random_matrix(n, cols, 3);
  Matrix<float> y(n, rows);
  for (auto _ : state) {
    mpo_apply_by_rebuild<float>(x, m, y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const MpoApplyCost c = mpo_apply_cost(m, n);
  report_model(state, c);
  bench::set_gflops(state, c.rebuild_flops);
}

void BM_ApplyContraction(benchmark::State& state) {
  const Index n = state.range(0), rows = state.range(1), cols = state.range(2), chi = state.range(3);
  const Mpo<float> m = make_mpo(rows, cols, chi);
  // largest intermediate: N·Π_{m≤k} i_m·d_{k+1}·Π_{m>k} j_m floats
  const auto d = m.bond_dims();
  double biggest = 0, ip = 1;
  for (Index k = 0; k < m.n_cores(); ++k) {
    ip *= double(m.shape.row_modes[k]);
    double jr = 1;
    for (Index q = k + 1; q < m.n_cores(); ++q) jr *= double(m.shape.col_modes[q]);
    biggest = std::max(biggest, double(n) * ip * double(d[std::size_t(k + 1)]) * jr * sizeof(float));
  }
  const MpoApplyCost c = mpo_apply_cost(m, n);
  if (biggest > 1.5e9 || c.contraction_flops > 4e11) {
    state.SkipWithError("contraction skipped: intermediate > 1.5 GB or > 400 GFLOP");
    for (auto _ : state) {
    }
    return;
  }
  const Matrix<float> x = bench::random_matrix(n, cols, 3);
  Matrix<float> y(n, rows);
  for (auto _ : state) {
    mpo_apply_by_contraction<float>(x, m, y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  report_model(state, c);
  bench::set_gflops(state, c.contraction_flops);
}

}  // namespace

BENCHMARK(BM_Decompose)
    ->ArgNames({"rows", "cols", "max_bond"})
    ->Args({3072, 768, 0})
    ->Args({3072, 768, 64})
    ->Args({4096, 1024, 0})
    ->Args({4096, 1024, 64})
    ->Unit(benchmark::kMillisecond);

BENCHMARK(BM_DenseGemm)
    ->ArgNames({"N", "rows", "cols"})
    ->Args({64, 3072, 768})
    ->Args({2048, 3072, 768})
    ->Unit(benchmark::kMillisecond);

#define PEMOE_MPO_APPLY_ARGS                  \
  ArgNames({"N", "rows", "cols", "max_bond"}) \
      ->Args({64, 3072, 768, 0})              \
      ->Args({2048, 3072, 768, 0})            \
      ->Args({64, 3072, 768, 64})             \
      ->Args({2048, 3072, 768, 64})           \
      ->Args({64, 3072, 768, 8})              \
      ->Args({2048, 3072, 768, 8})            \
      ->Unit(benchmark::kMillisecond)

BENCHMARK(BM_ApplyRebuild)->PEMOE_MPO_APPLY_ARGS;
BENCHMARK(BM_ApplyContraction)->PEMOE_MPO_APPLY_ARGS;

PEMOE_BENCHMARK_MAIN()

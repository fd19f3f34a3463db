// Linear and LoRA forward+backward against the plain Eigen GEMM of the same shape.
//
// Args: (N tokens, d_in, d_out, r). Every case runs forward + backward of one layer on fixed inputs.
//   BM_EigenGemm      plain Eigen, no pemoe: y = x·Wᵀ and dx = dy·W            (the baseline)
//   BM_LinearFrozen   pemoe Linear, frozen weight: forward + dx                 (same FLOPs as the baseline)
//   BM_LinearTrain    pemoe Linear, trainable weight: forward + dx + dW
//   BM_LoRA           pemoe LoRA around a frozen Linear: forward + dx + dA + dB
// FLOPs (multiply-add = 2): dense forward 2·N·d_in·d_out, dx the same, dW the same;
// LoRA adds 2·N·r·(3·d_in + 3·d_out): see lora_extra_flops().
// The target: BM_LoRA ≤ 1.25 × BM_LinearFrozen at the same shape (its extra FLOPs are ~3 %).
#include "bench_common.hpp"
#include "pemoe/adapters/lora.hpp"
#include "pemoe/nn/linear.hpp"

using namespace pemoe;

namespace {

double dense_flops(double n, double din, double dout) {
  return 2.0 * n * din * dout;
}
// forward: h = x·Aᵀ (2·N·r·d_in), y += h·Bᵀ (2·N·r·d_out);
// backward: dB = dyᵀ·h (2·N·r·d_out), dh = dy·B (2·N·r·d_out), dA = dhᵀ·x (2·N·r·d_in), dx += dh·A
// (2·N·r·d_in).
double lora_extra_flops(double n, double din, double dout, double r) {
  return 2.0 * n * r * (3 * din + 3 * dout);
}

void BM_EigenGemm(benchmark::State& state) {
  const Index n = state.range(0), din = state.range(1), dout = state.range(2);
  const Matrix<float> x = bench::random_matrix(n, din, 1), w = bench::random_matrix(dout, din, 2),
                      dy = bench::random_matrix(n, dout, 3);
  Matrix<float> y(n, dout), dx(n, din);
  for (auto _ : state) {
    y.noalias() = x * w.transpose();
    dx.noalias() = dy * w;
    benchmark::DoNotOptimize(y.data());
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  bench::set_gflops(state, 2 * dense_flops(n, din, dout));
}

void run_linear(benchmark::State& state, bool trainable) {
  const Index n = state.range(0), din = state.range(1), dout = state.range(2);
  ParamStore<float> store;
  Rng rng(1);
  Linear<float> layer({din, dout, false, trainable});
  layer.register_params(store, "fc", rng);
  const Matrix<float> x = bench::random_matrix(n, din, 1), dy = bench::random_matrix(n, dout, 3);
  Matrix<float> y(n, dout), dx(n, din);
  Linear<float>::Cache cache;
  for (auto _ : state) {
    layer.forward(x, y, cache);
    layer.backward(x, cache, dy, dx);
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  bench::set_gflops(state, (trainable ? 3 : 2) * dense_flops(n, din, dout));
}
void BM_LinearFrozen(benchmark::State& state) {
  run_linear(state, false);
}
void BM_LinearTrain(benchmark::State& state) {
  run_linear(state, true);
}

void BM_LoRA(benchmark::State& state) {
  const Index n = state.range(0), din = state.range(1), dout = state.range(2), r = state.range(3);
  ParamStore<float> store;
  Rng rng(1);
  LoraConfig config;
  config.r = r;
  config.alpha = 16;
  LoRA<float> layer({din, dout, false}, config);
  layer.register_params(store, "fc", rng);
  rng.fill_normal(layer.lora_B().data(), layer.lora_B().size(), 0.0, 0.02);
  const Matrix<float> x = bench::random_matrix(n, din, 1), dy = bench::random_matrix(n, dout, 3);
  Matrix<float> y(n, dout), dx(n, din);
  LoRA<float>::Cache cache;
  layer.set_training(true);
  for (auto _ : state) {
    store.zero_grad();
    layer.forward(x, y, cache);
    layer.backward(x, cache, dy, dx);
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  bench::set_gflops(state, 2 * dense_flops(n, din, dout) + lora_extra_flops(n, din, dout, r));
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"N", "d_in", "d_out", "r"});
  b->Args({512, 768, 768, 8});
  b->Args({2048, 768, 3072, 8});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_EigenGemm)->Apply(shapes);
BENCHMARK(BM_LinearFrozen)->Apply(shapes);
BENCHMARK(BM_LinearTrain)->Apply(shapes);
BENCHMARK(BM_LoRA)->Apply(shapes);

PEMOE_BENCHMARK_MAIN()

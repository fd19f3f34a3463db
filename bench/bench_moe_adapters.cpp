// MoE adapters forward+backward beside the frozen dense layer of the same shape, in the same binary.
//
// Args: (N tokens, d_in, d_out, E experts, r rank). Every case runs forward + backward of one layer on fixed
// inputs; the base linear is frozen (no dW) everywhere, so the baseline is
//   BM_Dense        pemoe Linear, frozen: y = x·Wᵀ, dx = dy·W                      4·N·d_in·d_out flops
// and each adapter's ratio to it (same N, d_in, d_out) is its overhead:
//   BM_LoRA         rank r                                   target (lead's bench) ≤ 1.25×
//   BM_MoLoRA       soft, all E experts, rank-E·r form       target ≤ 1.6× at E = 8, r = 8
//   BM_SparseTop2   top-2 of E renormalised, tiles of tokens  target ≤ 1.35× (expert FLOPs k/E of soft's)
//   BM_MoV          E vectors on the linear's output, router on that output (reference), target ≤ 1.1×
//   BM_IA3          one vector on the linear's output        target ≤ 1.1×
// Run `--benchmark_filter=paired:1` for the ratios alone (each iteration paired with the dense layer).
// FLOPs counted (multiply-add = 2; elementwise work not counted):
//   dense       4·N·d_in·d_out
//   LoRA rank q 2·N·q·(3·d_in + 3·d_out)      (h, y, dB, dh, dA, dx)
//   router      6·N·d_u·E                     (logits, dW_g, du)
//   MoLoRA      dense + LoRA(q = E·r) + router(d_u = d_in)
//   sparse      dense + LoRA(q = k·r) + router(d_u = d_in)
//   MoV         dense + 8·N·E·d_out (merge, dL, dgates, merge again) + router(d_u = d_out)
//   IA3         dense
#include <algorithm>
#include <chrono>
#include <vector>

#include "bench_common.hpp"
#include "pemoe/adapters/ia3.hpp"
#include "pemoe/adapters/lora.hpp"
#include "pemoe/adapters/molora.hpp"
#include "pemoe/adapters/mov.hpp"
#include "pemoe/adapters/sparse_lora.hpp"
#include "pemoe/nn/linear.hpp"

using namespace pemoe;

namespace {

struct Shape5 {
  Index n, din, dout, e, r;
  explicit Shape5(const benchmark::State& s)
      : n(s.range(0)), din(s.range(1)), dout(s.range(2)), e(s.range(3)), r(s.range(4)) {}
  double dense() const { return 4.0 * double(n) * double(din) * double(dout); }
  double lora(double q) const { return 2.0 * double(n) * q * (3.0 * double(din) + 3.0 * double(dout)); }
  double router(double du) const { return 6.0 * double(n) * du * double(e); }
};

// Runs forward + backward of `layer` on fixed inputs. With a 6th argument of 1 (the `paired` registrations)
// every iteration also runs the frozen dense layer of the same shape, in alternating order, and the counter
// `ratio` is the median over iterations of adapter time / dense time: a slow phase of a shared machine hits
// both sides of a pair, so the median ratio is far steadier than the ratio of two separate runs.
template <class Layer>
void run(benchmark::State& state, ParamStore<float>& store, Layer& layer, double flops) {
  const Shape5 s(state);
  const Matrix<float> x = bench::random_matrix(s.n, s.din, 1), dy = bench::random_matrix(s.n, s.dout, 3);
  Matrix<float> y(s.n, s.dout), dx(s.n, s.din);
  typename Layer::Cache cache;
  layer.set_training(true);
  auto step = [&] {
    store.zero_grad();
    layer.forward(x, y, cache);
    layer.backward(x, cache, dy, dx);
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  };
  if (state.range(5) == 0) {
    for (auto _ : state) step();
    bench::set_gflops(state, flops);
    return;
  }
  ParamStore<float> dense_store;
  Rng rng(1);
  Linear<float> dense({s.din, s.dout, false, /*trainable=*/false});
  dense.register_params(dense_store, "fc", rng);
  Linear<float>::Cache dense_cache;
  auto dense_step = [&] {
    dense.forward(x, y, dense_cache);
    dense.backward(x, dense_cache, dy, dx);
    benchmark::ClobberMemory();
  };
  auto seconds = [](auto& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  step();
  dense_step();
  std::vector<double> ratios;
  for (auto _ : state) {
    double a = 0, d = 0;
    if (ratios.size() % 2 == 1) {  // alternate which side runs first
      d = seconds(dense_step);
      a = seconds(step);
    } else {
      a = seconds(step);
      d = seconds(dense_step);
    }
    state.SetIterationTime(a);
    ratios.push_back(a / d);
  }
  std::sort(ratios.begin(), ratios.end());
  const auto at = [&](double q) { return ratios[static_cast<std::size_t>(q * double(ratios.size() - 1))]; };
  state.counters["ratio"] = at(0.5);
  state.counters["ratio_q25"] = at(0.25);
  state.counters["ratio_q75"] = at(0.75);
}

// Non-zero B so that no product is trivially skipped by the data.
void fill(ParamStore<float>& store, ParamId id) {
  Rng rng(7);
  rng.fill_normal(store.value(id), store.entry(id).size, 0.0, 0.02);
}

void BM_Dense(benchmark::State& state) {
  const Shape5 s(state);
  ParamStore<float> store;
  Rng rng(1);
  Linear<float> layer({s.din, s.dout, false, /*trainable=*/false});
  layer.register_params(store, "fc", rng);
  run(state, store, layer, s.dense());
}

void BM_LoRA(benchmark::State& state) {
  const Shape5 s(state);
  ParamStore<float> store;
  Rng rng(1);
  LoRA<float> layer({s.din, s.dout, false}, LoraConfig{s.r, 16.0});
  layer.register_params(store, "fc", rng);
  fill(store, layer.lora_B_id());
  run(state, store, layer, s.dense() + s.lora(double(s.r)));
}

void BM_MoLoRA(benchmark::State& state) {
  const Shape5 s(state);
  ParamStore<float> store;
  Rng rng(1);
  MoLoRA<float> layer({s.din, s.dout, false}, LoraExpertsConfig::for_ai(s.e, s.r));
  layer.register_params(store, "fc", rng);
  fill(store, layer.experts().B_id());
  run(state, store, layer, s.dense() + s.lora(double(s.e * s.r)) + s.router(double(s.din)));
}

void BM_SparseTop2(benchmark::State& state) {
  const Shape5 s(state);
  ParamStore<float> store;
  Rng rng(1);
  auto cfg = LoraExpertsConfig::mola(s.e, 2, s.r);
  cfg.dropout = 0.0;  // the same maths as the soft case
  SparseLoRAExperts<float> layer({s.din, s.dout, false}, cfg);
  layer.register_params(store, "fc", rng);
  fill(store, layer.experts().B_id());
  run(state, store, layer, s.dense() + s.lora(2.0 * double(s.r)) + s.router(double(s.din)));
}

void BM_MoV(benchmark::State& state) {
  const Shape5 s(state);
  ParamStore<float> store;
  Rng rng(1);
  MoV<float> layer(LinearConfig{s.din, s.dout, false}, MoVConfig::for_ai(s.e));
  layer.register_params(store, "fc", rng);
  run(state, store, layer,
      s.dense() + 8.0 * double(s.n) * double(s.e) * double(s.dout) + s.router(double(s.dout)));
}

void BM_IA3(benchmark::State& state) {
  const Shape5 s(state);
  ParamStore<float> store;
  Rng rng(1);
  IA3<float> layer(LinearConfig{s.din, s.dout, false});
  layer.register_params(store, "fc", rng);
  run(state, store, layer, s.dense());
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"N", "d_in", "d_out", "E", "r", "paired"});
  b->Args({512, 768, 768, 8, 8, 0});
  b->Args({2048, 768, 3072, 8, 8, 0});
  b->Args({4096, 1024, 1024, 16, 4, 0});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

// The same shapes, each iteration paired with the dense layer (see `run`), 25 pairs per shape.
void paired(benchmark::internal::Benchmark* b) {
  b->ArgNames({"N", "d_in", "d_out", "E", "r", "paired"});
  b->Args({512, 768, 768, 8, 8, 1});
  b->Args({2048, 768, 3072, 8, 8, 1});
  b->Args({4096, 1024, 1024, 16, 4, 1});
  b->Iterations(25)->Unit(benchmark::kMillisecond)->UseManualTime();
}

}  // namespace

BENCHMARK(BM_Dense)->Apply(shapes);
BENCHMARK(BM_LoRA)->Apply(shapes);
BENCHMARK(BM_MoLoRA)->Apply(shapes);
BENCHMARK(BM_SparseTop2)->Apply(shapes);
BENCHMARK(BM_MoV)->Apply(shapes);
BENCHMARK(BM_IA3)->Apply(shapes);
BENCHMARK(BM_LoRA)->Apply(paired);
BENCHMARK(BM_MoLoRA)->Apply(paired);
BENCHMARK(BM_SparseTop2)->Apply(paired);
BENCHMARK(BM_MoV)->Apply(paired);
BENCHMARK(BM_IA3)->Apply(paired);

PEMOE_BENCHMARK_MAIN()

// GPT-2-124M-shaped training throughput (B = 4, T = 64, fp32, AdamW lr 1e-4, dropout 0.1 active, random
// init), the same work as ../shared/peers/hf_gpt2_bench.py: config a (full fine-tuning) and config d (frozen
// backbone + soft MoLoRA, E = 8, r = 8, on c_attn and c_fc). Run both beside the peer in one sitting:
//
//   OMP_NUM_THREADS=1 ./build/bench/pemoe_bench_gpt2 --benchmark_filter='config:d'
//   OMP_NUM_THREADS=1 python3 ../shared/peers/hf_gpt2_bench.py --mode train --config d --threads 1
//
// Counters: tokens/s, GFLOP/s (model FLOPs of a step, formula in `step_flops`), peak RSS of the process (run
// one config per process to read it per config), and the share of one step's time per kind of work
// (`t_<bucket>`, from core/profile.hpp, measured on one extra profiled step).
//
// Variants (the name's last part): `eigen` (Eigen's GEMM), `dnnl` (oneDNN matmul primitives), and for config
// d `dnnl_packed_f32` / `dnnl_packed_bf16` (the frozen backbone and tied head packed once, GPT2::pack_frozen;
// bf16 only on CPUs with bf16 units). `dnnl_packed_bf16` is the bf16-only backbone a user asking for bf16
// runs (release_f32: one plain bf16 copy per weight, the f32 weights dropped); `dnnl_packed_bf16_keep_f32`
// keeps the f32 backbone beside blocked bf16 packs (the fastest products, the most memory);
// `dnnl_packed_bf16_autocast` is the bf16-only backbone with the step in a bf16 `GemmPrecisionScope`, so the
// MoLoRA expert products run in bf16 too, as the peer's autocast runs them. The peer's bf16 figure:
// hf_gpt2_bench.py --bf16.
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "pemoe/core/profile.hpp"
#include "pemoe/models/gpt2.hpp"
#include "pemoe/train/adamw.hpp"

using namespace pemoe;

namespace {

constexpr Index kB = 4, kT = 64;

// Model FLOPs of one training step (multiply-add = 2), N = B·T tokens. Forward: per token 2·P_lin (P_lin =
// 12·L·d², the block weights) + 2·d·V (the tied head) + 4·L·T·d (q·kᵀ and P·v; the causal half is not
// subtracted). Backward: attention always 2× its forward (two products per product); weight products 1×
// (input gradients) plus 1× for the weight gradients when the backbone trains. MoLoRA at c_attn and c_fc: per
// token and site 2·E·r·(d_in + d_out) + 2·d_in·E (router) forward, 3× that in a step.
double step_flops(const GPT2Config& c, bool full, Index E, Index r) {
  const double N = double(kB * kT), L = double(c.n_layer), d = double(c.n_embd), V = double(c.vocab_size);
  const double weights = N * (2.0 * 12.0 * L * d * d + 2.0 * d * V), attn = N * 4.0 * L * double(kT) * d;
  if (full) return 3.0 * (weights + attn);
  const double e = double(E), rr = double(r);
  const double sites =
      N * L * ((2.0 * e * rr * (d + 3 * d) + 2.0 * d * e) + (2.0 * e * rr * (d + 4 * d) + 2.0 * d * e));
  return 2.0 * weights + 3.0 * attn + 3.0 * sites;
}

// full: config a (full fine-tuning); otherwise config d (frozen backbone + MoLoRA E8 r8 on c_attn, c_fc).
// pack: 0 none, 1 f32, 2 bf16 (bf16-only backbone), 3 bf16 blocked packs beside the f32 backbone.
// autocast: the step runs in a bf16 GemmPrecisionScope (the MoLoRA expert products in bf16, as the peer's
// torch.autocast runs them).
void BM_GPT2Train(benchmark::State& state, bool full, GemmBackend backend, int pack, bool autocast) {
  set_gemm_backend(backend);
  GPT2Config cfg;  // GPT-2 124M, dropout 0.1
  auto model = std::make_unique<GPT2<float>>(cfg);
  const Index E = 8, r = 8;
  if (!full) {
    AdapterSpec spec;
    spec.kind = AdapterKind::molora;
    spec.experts = LoraExpertsConfig::for_ai(E, r);
    TargetModules t;
    t.names = {"c_attn", "c_fc"};
    model->inject(spec, t);
  }
  ParamStore<float> store;
  Rng rng(0);
  model->register_params(store, rng);
  if (pack) model->pack_frozen(pack == 1 ? PackDtype::f32 : PackDtype::bf16, pack == 2);
  model->set_training(true);
  model->set_batch(kB, kT);
  AdamWConfig oc;
  oc.lr = 1e-4;
  AdamW<float> opt(oc);
  std::vector<std::int64_t> ids(std::size_t(kB * kT));
  Rng data(1);
  for (auto& v : ids) v = std::int64_t(data.below(std::uint64_t(cfg.vocab_size)));
  typename GPT2<float>::Cache cache;
  auto step = [&]() {
    const GemmPrecisionScope precision(autocast ? GemmPrecision::bf16 : GemmPrecision::f32);
    model->forward(ids, ids, cache);
    store.zero_grad();
    model->backward_over_logits(cache);  // as a training loop that does not read the logits after it
    const profile::Scope s("optimizer");
    opt.step(store);
  };
  bench::time_training_step(state, step, double(kB * kT));
  bench::set_gflops(state, step_flops(cfg, full, E, r));
  state.counters["trainable_M"] = double(store.num_trainable()) / 1e6;
}

}  // namespace

const int registered = [] {
  struct Variant {
    const char* name;
    bool full;
    GemmBackend backend;
    int pack;
    bool autocast;
  };
  const Variant variants[] = {
      {"config_d_frozen_molora/eigen", false, GemmBackend::eigen, 0, false},
      {"config_d_frozen_molora/dnnl", false, GemmBackend::dnnl, 0, false},
      {"config_d_frozen_molora/dnnl_packed_f32", false, GemmBackend::dnnl, 1, false},
      {"config_d_frozen_molora/dnnl_packed_bf16", false, GemmBackend::dnnl, 2, false},
      {"config_d_frozen_molora/dnnl_packed_bf16_autocast", false, GemmBackend::dnnl, 2, true},
      {"config_d_frozen_molora/dnnl_packed_bf16_keep_f32", false, GemmBackend::dnnl, 3, false},
      {"config_a_full/eigen", true, GemmBackend::eigen, 0, false},
      {"config_a_full/dnnl", true, GemmBackend::dnnl, 0, false}};
  for (const Variant& v : variants) {
    if (v.backend == GemmBackend::dnnl && !have_dnnl()) continue;
    if (v.pack && !weight_pack_available<float>(v.pack == 1 ? PackDtype::f32 : PackDtype::bf16)) continue;
    benchmark::RegisterBenchmark(
        (std::string("BM_GPT2Train/") + v.name).c_str(),
        [v](benchmark::State& st) { BM_GPT2Train(st, v.full, v.backend, v.pack, v.autocast); })
        ->Unit(benchmark::kMillisecond)
        ->Iterations(8);
  }
  return 0;
}();

PEMOE_BENCHMARK_MAIN()

// T5 v1.1-small-shaped training throughput (6 + 6 layers, d_model 512, 8 heads × 64, d_ff 1024 gated-GELU,
// vocab 32128, untied head; B = 8, source 64, target 16 tokens, the last quarter of the last source row
// padded; fp32, AdamW lr 1e-4, dropout 0.1 active, random init): the same work as
// ../shared/peers/hf_t5_bench.py. Config a: full fine-tuning; config c: frozen backbone + MoV, E = 10, at the
// reference placement (`T5::inject_mov`: k and v of every attention per head, the FFN intermediate). Run
// beside the peer in one sitting, one config per process:
//
//   OMP_NUM_THREADS=1 ./build/bench/pemoe_bench_t5 --benchmark_filter='config_c'
//   python3 ../shared/peers/hf_t5_bench.py --mode train --config c --threads 1
//
// The peer's MoV routes k and v per token on the whole (H·d_kv) vector and scales the gated product
// gelu(x Wi0) ⊙ x Wi1; pemoe routes per token and head (the reference code's MoVAttention) and scales
// gelu(x Wi0) with its router on it (MlpBlock.intermediate_conv): the same FLOPs to within the router's.
// Counters: tokens/s (source + target tokens, as the peer's tok_s), trainable parameters, peak RSS, and the
// share of one step's time per kind of work (`t_<bucket>`, core/profile.hpp).
//
// Variants (the name's last part): `eigen`, `dnnl` (oneDNN matmul primitives), and for config c
// `dnnl_packed_f32` (the frozen backbone and the head packed once, T5::pack_frozen) and `dnnl_packed_bf16`
// (a bf16-only frozen backbone, bf16 operands with f32 accumulation; only on CPUs with bf16 units; the
// peer's bf16 figure: hf_t5_bench.py --bf16).
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "pemoe/core/profile.hpp"
#include "pemoe/models/t5.hpp"
#include "pemoe/train/adamw.hpp"

using namespace pemoe;

namespace {

constexpr Index kB = 8, kS = 64, kT = 16, kExperts = 10;

T5Config small_t5() {
  T5Config c;
  c.vocab_size = 32128;
  c.d_model = 512;
  c.d_kv = 64;
  c.num_heads = 8;
  c.d_ff = 1024;
  c.num_layers = 6;
  c.num_decoder_layers = 6;
  c.relative_attention_num_buckets = 32;
  c.relative_attention_max_distance = 128;
  c.dropout_rate = 0.1;
  c.feed_forward_proj = "gated-gelu";
  c.tie_word_embeddings = false;
  c.scale_decoder_outputs = false;
  return c;
}

// pack: 0 none, 1 the frozen backbone packed in f32, 2 a bf16-only frozen backbone (T5::pack_frozen).
void BM_T5Train(benchmark::State& state, bool full, GemmBackend backend, int pack) {
  set_gemm_backend(backend);
  const T5Config cfg = small_t5();
  auto model = std::make_unique<T5<float>>(cfg);
  if (!full) model->inject_mov(MoVConfig::for_ai(kExperts));
  ParamStore<float> store;
  Rng rng(0);
  model->register_params(store, rng);
  if (pack) model->pack_frozen(pack == 1 ? PackDtype::f32 : PackDtype::bf16, pack == 2);
  model->set_training(true);
  std::vector<std::int64_t> src(std::size_t(kB * kS)), labels(std::size_t(kB * kT));
  std::vector<std::int64_t> src_mask(src.size(), 1);
  Rng data(1);
  for (auto& v : src) v = 2 + std::int64_t(data.below(std::uint64_t(cfg.vocab_size - 2)));
  for (auto& v : labels) v = 2 + std::int64_t(data.below(std::uint64_t(cfg.vocab_size - 2)));
  for (Index t = kS - kS / 4; t < kS; ++t) {  // the last quarter of the last row is padding
    src[std::size_t((kB - 1) * kS + t)] = cfg.pad_token_id;
    src_mask[std::size_t((kB - 1) * kS + t)] = 0;
  }
  model->set_batch(kB, kS, kT, src_mask);
  AdamWConfig oc;
  oc.lr = 1e-4;
  AdamW<float> opt(oc);
  typename T5<float>::Cache cache;
  auto step = [&]() {
    model->forward(src, labels, cache);
    store.zero_grad();
    model->backward(cache);
    const profile::Scope s("optimizer");
    opt.step(store);
  };
  bench::time_training_step(state, step, double(kB * (kS + kT)));
  state.counters["trainable_M"] = double(store.num_trainable()) / 1e6;
}

}  // namespace

const int registered = [] {
  struct Variant {
    const char* name;
    bool full;
    GemmBackend backend;
    int pack;
  };
  const Variant variants[] = {{"config_c_frozen_mov/eigen", false, GemmBackend::eigen, 0},
                              {"config_c_frozen_mov/dnnl", false, GemmBackend::dnnl, 0},
                              {"config_c_frozen_mov/dnnl_packed_f32", false, GemmBackend::dnnl, 1},
                              {"config_c_frozen_mov/dnnl_packed_bf16", false, GemmBackend::dnnl, 2},
                              {"config_a_full/eigen", true, GemmBackend::eigen, 0},
                              {"config_a_full/dnnl", true, GemmBackend::dnnl, 0}};
  for (const Variant& v : variants) {
    if (v.backend == GemmBackend::dnnl && !have_dnnl()) continue;
    if (v.pack && !weight_pack_available<float>(v.pack == 1 ? PackDtype::f32 : PackDtype::bf16)) continue;
    benchmark::RegisterBenchmark((std::string("BM_T5Train/") + v.name).c_str(),
                                 [v](benchmark::State& st) { BM_T5Train(st, v.full, v.backend, v.pack); })
        ->Unit(benchmark::kMillisecond)
        ->Iterations(8);
  }
  return 0;
}();

PEMOE_BENCHMARK_MAIN()

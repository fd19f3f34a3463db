// Guide docs/guides/gpt2_training.md: a small GPT-2 with MoLoRA experts injected PEFT-style at c_attn and
// c_fc, trained with the Trainer (gradient accumulation, clipping, warm-up + cosine schedule, expert load).
// ctest runs this program and compares its output with the guide.
#include <pemoe/models/gpt2.hpp>
#include <pemoe/train/adamw.hpp>
#include <pemoe/train/trainer.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

using namespace pemoe;

int main() {
  // A 2-layer GPT-2 (random frozen backbone here; load_gpt2 reads a Hugging Face directory instead).
  GPT2Config gcfg;
  gcfg.n_layer = 2;
  gcfg.n_head = 2;
  gcfg.n_embd = 32;
  gcfg.vocab_size = 64;
  gcfg.n_positions = 32;
  gcfg.resid_pdrop = gcfg.embd_pdrop = gcfg.attn_pdrop = 0.0;
  GPT2<double> gpt(gcfg);

  // MoLoRA (4 experts of rank 4, soft router) on every c_attn and c_fc: PEFT's target_modules semantics.
  AdapterSpec spec;
  spec.kind = AdapterKind::molora;
  spec.experts = LoraExpertsConfig::for_ai(/*n_experts=*/4, /*r=*/4);
  TargetModules targets;
  targets.names = {"c_attn", "c_fc"};
  for (const auto& site : gpt.inject(spec, targets)) std::printf("adapter at %s\n", site.c_str());
  ParamStore<double> params;
  Rng rng(43);
  gpt.register_params(params, rng);  // Hugging Face names; only adapters and routers are trainable
  // A random GPT-2 (token embeddings of std 0.02, tied to the head) predicts almost uniformly whatever its
  // hidden state; a pretrained one would not. Give the toy's tokens distinct embeddings instead.
  Matrix<double> wte(64, 32);
  rng.fill_normal(wte.data(), wte.size(), 0.0, 0.15);
  params.set("transformer.wte.weight", wte);
  std::printf("parameters: %ld, trainable: %ld\n", long(params.num_values()), long(params.num_trainable()));

  // Data: sequences following t -> (5t + 3) mod 64 from a random start; B = 4 sequences of T = 16 tokens.
  const Index B = 4, T = 16;
  gpt.set_batch(B, T);
  gpt.set_training(true);
  auto batch = [&](long step, long micro) {
    Rng r(1000 * std::uint64_t(step) + std::uint64_t(micro));  // a pure function of (step, micro)
    std::vector<std::int64_t> ids(std::size_t(B * T));
    for (Index b = 0; b < B; ++b) {
      std::int64_t t = std::int64_t(r.below(64));
      for (Index i = 0; i < T; ++i, t = (5 * t + 3) % 64) ids[std::size_t(b * T + i)] = t;
    }
    return ids;
  };

  AdamWConfig ocfg;
  ocfg.lr = 5e-2;
  AdamW<double> opt(ocfg);
  ScheduleConfig scfg;
  scfg.kind = ScheduleKind::cosine;
  scfg.warmup_steps = 5;
  scfg.total_steps = 60;
  TrainerOptions topt;
  topt.total_steps = 60;
  topt.grad_accum = 2;       // 2 micro-batches of 4 sequences per optimizer step
  topt.max_grad_norm = 1.0;  // clip the global gradient norm
  topt.log_every = 10;
  topt.progress = ProgressMode::off;  // on a terminal: one line with loss, lr, tokens/s and ETA
  GPT2<double>::Cache cache;
  TrainerCallbacks cb;
  cb.micro_batch = [&](long step, long micro) {
    const std::vector<std::int64_t> ids = batch(step, micro);
    const double loss = gpt.forward(ids, ids, cache);  // labels = ids: HF shifts them inside
    gpt.backward(cache);                               // adds the gradients of this micro-batch
    return MicroBatchResult{loss, double(ids.size())};
  };
  cb.expert_load = [&] {
    std::vector<ExpertLoad> load;
    for (Index l = 0; l < gcfg.n_layer; ++l) {
      const Router<double>* router = gpt.block(l).c_fc().router();
      const auto* rc = LinearSite<double>::router_cache(cache.blocks[std::size_t(l)].fc);
      load.push_back({"h." + std::to_string(l) + ".mlp.c_fc", expert_load(*router, *rc)});
    }
    return load;
  };
  StepRecord last;
  cb.on_log = [&](const StepRecord& r) {
    std::printf("step %2ld  loss %.4f  lr %.2e  |g| %.3f\n", r.step, r.loss, r.lr, r.grad_norm);
    last = r;
  };
  Trainer<double> trainer(params, opt, Schedule(scfg), topt, cb);
  const TrainSummary summary = trainer.train();
  std::printf("%ld steps, %.0f tokens\n", summary.step, summary.tokens);
  for (const auto& l : last.expert_load) {
    std::printf("expert load %s:", l.layer.c_str());
    for (double v : l.load) std::printf(" %.2f", v);
    std::printf("\n");
  }
  return summary.last_loss < 0.5 * std::log(64.0) ? 0 : 1;
}

// A whole tiny GPT-2 against central differences, plain and with every adapter kind injected at every linear
// site (LoRA, IA3, MoV, MoLoRA, sparse top-2 with a MoLA allocation), aux losses on; only adapter parameters
// train when an adapter is injected; dropout and router jitter in training are replayed bit for bit.
#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "pemoe/models/gpt2.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace {

GPT2Config tiny() {
  GPT2Config c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 16;  // head_dim 8
  c.vocab_size = 23;
  c.n_positions = 8;
  c.resid_pdrop = c.embd_pdrop = c.attn_pdrop = 0.0;
  return c;
}

struct Batch {
  Index B = 2, T = 5;
  std::vector<std::int64_t> ids{3, 17, 0, 22, 9, 4, 4, 11, 20, 1};
  std::vector<std::int64_t> labels{3, 17, -100, 22, 9, 4, 4, 11, -100, -100};
};

// Central differences of the loss at a seeded random subset of each trainable tensor's entries; returns the
// worst relative error (floor 1e-3) and where.
double gradcheck_model(GPT2<double>& m, ParamStore<double>& s, const Batch& b, std::string& where) {
  typename GPT2<double>::Cache c;
  m.set_batch(b.B, b.T);
  m.forward(b.ids, b.labels, c);
  s.zero_grad();
  m.backward(c);
  const auto g = s.grads();
  Rng pick(5);
  double worst = 0;
  for (const auto& e : s.entries()) {
    if (!e.trainable) continue;
    for (int q = 0; q < 12; ++q) {
      const Index i = Index(pick.below(std::uint64_t(e.size)));
      double& v = s.values()[std::size_t(e.offset + i)];
      const double saved = v, h = 1e-5;
      v = saved + h;
      const double lp = m.forward(b.ids, b.labels, c);
      v = saved - h;
      const double lm = m.forward(b.ids, b.labels, c);
      v = saved;
      const double num = (lp - lm) / (2 * h), ana = g[std::size_t(e.grad_offset + i)];
      const double err = std::abs(num - ana) / std::max({std::abs(num), std::abs(ana), 1e-3});
      if (err > worst) {
        worst = err;
        where = e.name + "[" + std::to_string(i) + "] analytic " + std::to_string(ana) + " numeric " +
                std::to_string(num);
      }
    }
  }
  return worst;
}

AdapterSpec spec_of(AdapterKind kind) {
  AdapterSpec s;
  s.kind = kind;
  s.lora.r = 4;
  s.lora.alpha = 8;
  s.mov = MoVConfig::for_ai(3);
  s.mov.router.aux.z_coef = 1e-2;
  if (kind == AdapterKind::sparse) {
    s.experts = LoraExpertsConfig::mola(4, 2, 2);
    s.experts.dropout = 0.0;
  } else {
    s.experts = LoraExpertsConfig::for_ai(3, 2);
  }
  s.experts.router.aux.balance_coef = 1e-2;
  s.experts.router.aux.z_coef = 1e-2;
  return s;
}

// Config d of the benchmark on the tiny model: MoLoRA at c_attn and c_fc only, every parameter randomised;
// only the adapters train.
struct ConfigD {
  GPT2<double> m{tiny()};
  ParamStore<double> s;
  std::size_t sites = 0;  // adapted sites
  ConfigD() {
    TargetModules t;
    t.names = {"c_attn", "c_fc"};
    sites = m.inject(spec_of(AdapterKind::molora), t).size();
    Rng rng(1);
    m.register_params(s, rng);
    testing::randomize_params(s, 2, 0.3);
  }
};

}  // namespace

TEST_CASE("GPT-2 gradients pass central differences, plain and with every adapter kind at every site") {
  for (AdapterKind kind : {AdapterKind::none, AdapterKind::lora, AdapterKind::ia3, AdapterKind::mov,
                           AdapterKind::molora, AdapterKind::sparse}) {
    CAPTURE(adapter_kind_name(kind));
    GPT2<double> m(tiny());
    if (kind != AdapterKind::none) {
      TargetModules all;
      all.all_linear = true;
      // MoLA ▽-style allocation for the sparse kind: more experts in the upper layer
      const auto hit = m.inject(
          spec_of(kind), all, kind == AdapterKind::sparse ? std::vector<Index>{3, 4} : std::vector<Index>{});
      CHECK(hit.size() == 8);
    }
    ParamStore<double> s;
    Rng rng(1);
    m.register_params(s, rng);
    testing::randomize_params(s, 2, 0.3);
    for (const auto& e : s.entries()) {  // only adapters and routers train once an adapter is injected
      INFO(e.name);
      CHECK(e.trainable == (kind == AdapterKind::none || !GPT2<double>::is_backbone(e.name)));
    }
    if (kind == AdapterKind::sparse) {
      CHECK(s.entry(s.id("transformer.h.0.mlp.c_fc.router.weight")).shape[0] == 3);
      CHECK(s.entry(s.id("transformer.h.1.mlp.c_fc.router.weight")).shape[0] == 4);
    }
    std::string where;
    const double worst = gradcheck_model(m, s, Batch{}, where);
    INFO("worst " << worst << " at " << where);
    CHECK(worst < 1e-5);
  }
}

TEST_CASE(
    "GPT-2 with frozen embeddings skips the first block's input gradient; the gradients are unchanged") {
  // config d: only MoLoRA trains. Nothing needs the gradient of block 0's input (the embeddings are frozen),
  // so block 0 computes neither it nor c_attn's input gradient; the adapters' gradients must be the bits they
  // are when a trainable wpe makes the whole chain run.
  ConfigD d;
  auto& m = d.m;
  auto& s = d.s;
  const Batch b;
  m.set_batch(b.B, b.T);
  typename GPT2<double>::Cache c;
  auto adapter_grads = [&] {
    m.forward(b.ids, b.labels, c);
    s.zero_grad();
    m.backward(c);
    std::vector<double> out;
    for (const auto& e : s.entries())
      if (e.name.find("lora_") != std::string::npos || e.name.find("router") != std::string::npos) {
        const double* g = s.grads().data() + e.grad_offset;
        out.insert(out.end(), g, g + e.size);
      }
    return out;
  };
  const auto skipped = adapter_grads();
  REQUIRE(!skipped.empty());
  s.set_trainable_if([](const auto& e) { return e.name == "transformer.wpe.weight"; }, true);
  const auto full = adapter_grads();
  CHECK(skipped == full);
  // block 0's ln_1 trainable with frozen embeddings: ln_1's gradient needs c_attn's input gradient, but not
  // the block's input gradient
  s.set_trainable_if([](const auto& e) { return e.name == "transformer.wpe.weight"; }, false);
  s.set_trainable_if([](const auto& e) { return e.name == "transformer.h.0.ln_1.weight"; }, true);
  std::string where;
  const double worst = gradcheck_model(m, s, b, where);
  INFO("worst " << worst << " at " << where);
  CHECK(worst < 1e-5);
}

TEST_CASE("GPT-2 with frozen, unadapted projections keeps no input for them and passes central differences") {
  // MoLoRA at c_attn and c_fc only (config d of the benchmark): the two c_proj sites are frozen plain
  // linears, whose backward needs dy alone, so the context and gelu(f) are not kept in the cache
  ConfigD d;
  CHECK(d.sites == 4);
  auto& m = d.m;
  auto& s = d.s;
  const Batch b;
  m.set_batch(b.B, b.T);
  typename GPT2<double>::Cache c;
  m.forward(b.ids, b.labels, c);
  for (const auto& blk : c.blocks) {
    CHECK(blk.g.size() == 0);
    CHECK(blk.attn.ctx.size() == 0);
    CHECK(blk.f.rows() == b.B * b.T);  // GELU's backward reads f
  }
  std::string where;
  const double worst = gradcheck_model(m, s, b, where);
  INFO("worst " << worst << " at " << where);
  CHECK(worst < 1e-5);
  // a projection made trainable after forward: its backward needs the input that was not kept
  s.set_trainable_if([](const auto& e) { return e.name == "transformer.h.1.mlp.c_proj.weight"; }, true);
  CHECK_THROWS_WITH(m.backward(c), Catch::Contains("needs the forward's input x"));
  m.forward(b.ids, b.labels, c);  // now it is kept
  CHECK(c.blocks[1].g.rows() == b.B * b.T);
  CHECK(c.blocks[0].g.size() == 0);
  CHECK_NOTHROW(m.backward(c));
}

TEST_CASE(
    "GPT-2 with a padding mask: padded keys are ignored and padded tokens stay out of router statistics") {
  GPT2<double> m(tiny());
  TargetModules all;
  all.all_linear = true;
  m.inject(spec_of(AdapterKind::molora), all);
  ParamStore<double> s;
  Rng rng(1);
  m.register_params(s, rng);
  testing::randomize_params(s, 2, 0.3);
  Batch b;
  b.labels = {3, 17, 0, 22, -100, 4, 4, 11, -100, -100};
  const std::vector<std::int64_t> mask{1, 1, 1, 1, 0, 1, 1, 1, 0, 0};  // right padding
  m.set_batch(b.B, b.T, mask);
  typename GPT2<double>::Cache c1, c2;
  const double l1 = m.forward(b.ids, b.labels, c1);
  auto ids = b.ids;
  ids[4] = 7;  // change padded tokens only
  ids[8] = 2;
  ids[9] = 19;
  const double l2 = m.forward(ids, b.labels, c2);
  CHECK(l1 == l2);  // loss, aux losses included, does not see the padding
  for (Index r : {0, 1, 2, 3, 5, 6, 7}) CHECK(c1.logits.row(r) == c2.logits.row(r));
}

TEST_CASE("GPT-2 in training: dropout and router jitter replay from the rng counters") {
  GPT2Config cfg = tiny();
  cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.2;
  GPT2<double> m(cfg);
  TargetModules all;
  all.all_linear = true;
  AdapterSpec spec = spec_of(AdapterKind::molora);
  spec.experts.dropout = 0.1;
  spec.experts.router.jitter = 0.05;
  m.inject(spec, all);
  ParamStore<double> s;
  Rng rng(1);
  m.register_params(s, rng);
  m.set_training(true);
  Batch b;
  m.set_batch(b.B, b.T);
  const auto counters = m.rng_counters();
  typename GPT2<double>::Cache c;
  const double l1 = m.forward(b.ids, b.labels, c);
  const double l2 = m.forward(b.ids, b.labels, c);
  CHECK(l1 != l2);  // fresh masks
  m.set_rng_counters(counters);
  CHECK(m.forward(b.ids, b.labels, c) == l1);  // replayed exactly
  CHECK_THROWS_AS(m.set_rng_counters({1, 2}), ConfigError);
  // and the gradient of a training step (masks regenerated in backward) passes central differences
  m.set_rng_counters(counters);
  std::string where;
  // each loss evaluation must see the same masks: replay the counters before every forward
  typename GPT2<double>::Cache cc;
  m.forward(b.ids, b.labels, cc);
  s.zero_grad();
  m.backward(cc);
  const auto g = s.grads();
  double worst = 0;
  Rng pick(3);
  for (const auto& e : s.entries()) {
    if (!e.trainable) continue;
    for (int q = 0; q < 6; ++q) {
      const Index i = Index(pick.below(std::uint64_t(e.size)));
      double& v = s.values()[std::size_t(e.offset + i)];
      const double saved = v;
      v = saved + 1e-5;
      m.set_rng_counters(counters);
      const double lp = m.forward(b.ids, b.labels, cc);
      v = saved - 1e-5;
      m.set_rng_counters(counters);
      const double lm = m.forward(b.ids, b.labels, cc);
      v = saved;
      const double num = (lp - lm) / 2e-5, ana = g[std::size_t(e.grad_offset + i)];
      worst = std::max(worst, std::abs(num - ana) / std::max({std::abs(num), std::abs(ana), 1e-3}));
    }
  }
  CHECK(worst < 1e-5);
}

TEST_CASE("GPT-2 merge_and_unload: LoRA and IA3 fold into the weights with the same logits; MoE refuses") {
  for (AdapterKind kind : {AdapterKind::lora, AdapterKind::ia3}) {
    CAPTURE(adapter_kind_name(kind));
    GPT2<double> m(tiny());
    TargetModules all;
    all.all_linear = true;
    m.inject(spec_of(kind), all);
    ParamStore<double> s;
    Rng rng(1);
    m.register_params(s, rng);
    testing::randomize_params(s, 2, 0.3);
    Batch b;
    m.set_batch(b.B, b.T);
    typename GPT2<double>::Cache c1, c2;
    m.forward(b.ids, {}, c1);
    m.merge_and_unload();
    for (auto& [name, site] : m.linear_sites()) CHECK(site->kind() == AdapterKind::none);
    m.forward(b.ids, {}, c2);
    CHECK(testing::max_abs_diff(c1.logits, c2.logits) < 1e-10);
  }
  // MoLoRA on c_fc beside LoRA on c_attn: refused before anything is merged (the LoRA sites stay LoRA)
  GPT2<double> m(tiny());
  TargetModules attn, fc;
  attn.names = {"c_attn"};
  fc.names = {"c_fc"};
  m.inject(spec_of(AdapterKind::lora), attn);
  m.inject(spec_of(AdapterKind::molora), fc);
  ParamStore<double> s;
  Rng rng(1);
  m.register_params(s, rng);
  CHECK_THROWS_WITH(m.merge_and_unload(), Catch::Contains("molora") && Catch::Contains("c_fc"));
  Index lora_sites = 0;
  for (auto& [name, site] : m.linear_sites()) lora_sites += site->kind() == AdapterKind::lora ? 1 : 0;
  CHECK(lora_sites == tiny().n_layer);
}

TEST_CASE("GPT-2 with MPOE banks (GELU experts with biases, scale_by_prob gate) passes central differences") {
  GPT2<double> m(tiny());
  MpoeConfig mc;
  mc.n_experts = 3;
  mc.n_cores = 3;
  mc.scale_by_prob = true;  // the straight-through gate p/sg(p) has no derivative differences can see
  mc.aux.balance_coef = 1e-2;
  m.use_mpoe(mc);
  ParamStore<double> s;
  Rng rng(1);
  m.register_params(s, rng);
  testing::randomize_params(s, 2, 0.3);
  std::string where;
  const double worst = gradcheck_model(m, s, Batch{}, where);
  INFO("worst " << worst << " at " << where);
  CHECK(worst < 1e-5);
  // an expert bank routes each token: it cannot be merged into one weight
  CHECK_THROWS_WITH(m.merge_and_unload(), Catch::Contains("MPOE"));
}

TEST_CASE("GPT-2 backward_over_logits: the same gradients bit for bit, the logits become their gradient") {
  // full fine-tuning (every weight, the tied head's included, gets a gradient) with a −100 label
  ParamStore<float> s;
  Rng rng(3);
  GPT2<float> m(tiny());
  m.register_params(s, rng);
  const Batch b;
  m.set_batch(b.B, b.T);
  typename GPT2<float>::Cache c;
  m.forward(b.ids, b.labels, c);
  s.zero_grad();
  m.backward(c);
  const AlignedVector<float> kept = s.grads();
  const Matrix<float> logits = c.logits;
  m.forward(b.ids, b.labels, c);
  CHECK(c.logits == logits);
  s.zero_grad();
  m.backward_over_logits(c);
  REQUIRE(s.grads().size() == kept.size());
  CHECK(std::equal(kept.begin(), kept.end(), s.grads().begin()));
  // the buffer now holds dloss/dlogits: each counted row sums to 0, the row of the ignored label is 0
  CHECK(c.logits_hold_gradient);
  CHECK(c.logits.row(0).sum() == Approx(0.0).margin(1e-6));
  CHECK(c.logits.row(1).isZero());  // position 1 predicts label 2 = −100
  CHECK(c.logits != logits);
  CHECK_THROWS_WITH(m.backward(c), Catch::Contains("run forward again"));
  m.forward(b.ids, b.labels, c);  // a new forward makes the cache usable again
  CHECK_FALSE(c.logits_hold_gradient);
  CHECK_NOTHROW(m.backward(c));
}

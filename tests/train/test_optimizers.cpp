// SGD, Adafactor, AdamW, the schedules and gradient clipping against trajectories computed by PyTorch and
// Hugging Face transformers (tests/data/train/make_fixtures.py), including a parameter without a gradient.
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "pemoe/io/safetensors.hpp"
#include "pemoe/train/adafactor.hpp"
#include "pemoe/train/adamw.hpp"
#include "pemoe/train/clip.hpp"
#include "pemoe/train/param_groups.hpp"
#include "pemoe/train/schedule.hpp"
#include "pemoe/train/sgd.hpp"

using namespace pemoe;

namespace {

// One step signature for the three optimizers: step(store, update, keep_moments_of_skipped, lr_mult); a
// floating-point third argument (the old SGD/Adafactor lr_mult position) does not compile.
template <class O, class Third, class = void>
struct steps_with : std::false_type {};
template <class O, class Third>
struct steps_with<O, Third,
                  std::void_t<decltype(std::declval<O&>().step(std::declval<ParamStore<double>&>(),
                                                               std::declval<const std::vector<bool>&>(),
                                                               std::declval<Third>()))>> : std::true_type {};
static_assert(steps_with<AdamW<double>, bool>::value && !steps_with<AdamW<double>, double>::value);
static_assert(steps_with<SGD<double>, bool>::value && !steps_with<SGD<double>, double>::value);
static_assert(steps_with<Adafactor<double>, bool>::value && !steps_with<Adafactor<double>, float>::value);

const SafetensorsFile& fixture() {
  static const SafetensorsFile f = SafetensorsFile::load(PEMOE_TEST_DATA_DIR "/train/optimizers.safetensors");
  return f;
}
const std::vector<std::string> kParams = {"w", "experts", "b"};
constexpr int kSteps = 5;

// A store holding the fixture's three parameters at their initial values.
void fill(ParamStore<double>& s) {
  for (const auto& p : kParams) {
    const auto& info = fixture().info("init." + p);
    const ParamId id = s.add(p, info.shape);
    fixture().copy_to("init." + p, s.value(id), info.numel());
  }
}

// Runs `step(store, update)` over the fixture's gradients and compares every parameter after every step.
void follow(const std::string& name,
            const std::function<void(ParamStore<double>&, const std::vector<bool>&)>& step,
            double tol = 1e-12) {
  ParamStore<double> s;
  fill(s);
  for (int k = 0; k < kSteps; ++k) {
    std::vector<bool> update(kParams.size(), true);
    for (std::size_t i = 0; i < kParams.size(); ++i) {
      const std::string key = "grad." + std::to_string(k) + "." + kParams[i];
      const ParamId id = s.id(kParams[i]);
      if (k == 2 && kParams[i] == "b") {  // no gradient at this step in the reference
        update[i] = false;
        std::fill(s.grad(id), s.grad(id) + s.entry(id).size, std::nan(""));  // must not be read
      } else {
        fixture().copy_to(key, s.grad(id), s.entry(id).size);
      }
    }
    step(s, update);
    for (const auto& p : kParams) {
      const auto want = fixture().to_vector<double>(name + "." + std::to_string(k) + "." + p);
      const double* got = s.value(s.id(p));
      for (std::size_t i = 0; i < want.size(); ++i) {
        INFO(name << " step " << k << " " << p << "[" << i << "]");
        REQUIRE(got[i] == Approx(want[i]).epsilon(tol).margin(tol));
      }
    }
  }
}

}  // namespace

TEST_CASE("SGD follows torch.optim.SGD (momentum, dampening, weight decay, Nesterov, a skipped parameter)") {
  SGDConfig a;
  a.lr = 0.1;
  a.momentum = 0.9;
  a.dampening = 0.1;
  a.weight_decay = 0.01;
  SGD<double> sgd(a);
  follow("sgd_momentum", [&](ParamStore<double>& s, const std::vector<bool>& u) { sgd.step(s, u); });
  SGDConfig n;
  n.lr = 0.05;
  n.momentum = 0.8;
  n.nesterov = true;
  SGD<double> nest(n);
  follow("sgd_nesterov", [&](ParamStore<double>& s, const std::vector<bool>& u) { nest.step(s, u); });
  CHECK(nest.steps(2) == kSteps - 1);  // b skipped once
  CHECK_THROWS_AS(SGD<double>([] {
                    SGDConfig c;
                    c.nesterov = true;
                    return c;
                  }()),
                  ConfigError);
}

TEST_CASE("Adafactor follows transformers' Adafactor (relative step; constant lr with beta1 and decay)") {
  Adafactor<double> rel;
  follow("adafactor_relative", [&](ParamStore<double>& s, const std::vector<bool>& u) { rel.step(s, u); });
  CHECK(rel.state()[1].row.size() == 2 * 3);  // (2, 3, 4): factored over the last two axes, batch 2
  CHECK(rel.state()[1].col.size() == 2 * 4);
  CHECK(rel.state()[2].v.size() == 6);  // a vector keeps the full second moment
  CHECK(rel.state()[2].step == kSteps - 1);
  AdafactorConfig c = AdafactorConfig::constant(3e-3);
  c.beta1 = 0.9;
  c.weight_decay = 0.01;
  Adafactor<double> con(c);
  follow("adafactor_constant", [&](ParamStore<double>& s, const std::vector<bool>& u) { con.step(s, u); });
}

TEST_CASE("AdamW follows torch.optim.AdamW, skipping a parameter without a gradient as PyTorch does") {
  AdamWConfig c;
  c.lr = 0.01;
  c.weight_decay = 0.05;
  AdamW<double> opt(c);
  follow("adamw", [&](ParamStore<double>& s, const std::vector<bool>& u) { opt.step(s, u); });
}

TEST_CASE("AdamW with parameter groups and a schedule follows torch.optim.AdamW param_groups + LambdaLR") {
  AdamWConfig c;
  c.lr = 0.01;
  c.weight_decay = 0.05;
  ParamGroups groups;
  groups.add("experts", [](const std::string& n) { return n == "experts"; }, {0.5, -1.0});
  groups.add("no_decay", [](const std::string& n) { return n == "b"; }, {1.0, 0.0});
  AdamW<double> opt(c, groups);
  ScheduleConfig sc;
  sc.kind = ScheduleKind::linear;
  sc.warmup_steps = 2;
  sc.total_steps = 7;
  const Schedule sched(sc);
  long k = 0;
  follow("adamw_groups", [&](ParamStore<double>& s, const std::vector<bool>& u) {
    opt.step(s, u, true, sched(k));
    ++k;
  });
  CHECK(opt.groups().group_of("experts") == "experts");
  CHECK(opt.step_count(2) == kSteps - 1);  // b skipped once
  ParamStore<double> s;
  fill(s);
  CHECK_THROWS_WITH(opt.step(s, {}, true, -1.0), Catch::Contains("lr_mult must be finite and >= 0, got -1"));
}

TEST_CASE("SGD and Adafactor: keep_moments_of_skipped = false advances the state but not the value") {
  auto check = [](auto& opt, auto&& state_of) {
    ParamStore<double> s;
    fill(s);
    for (const auto& p : kParams) fixture().copy_to("grad.0." + p, s.grad(s.id(p)), s.entry(s.id(p)).size);
    const auto before = s.values();
    opt.step(s, {false, true, false}, false, 1.0);
    for (ParamId p : {ParamId(0), ParamId(2)})
      for (Index i = 0; i < s.entry(p).size; ++i) CHECK(s.value(p)[i] == before[s.entry(p).offset + i]);
    CHECK(s.value(1)[0] != before[s.entry(1).offset]);
    CHECK(state_of(opt, 0) == 1);
    opt.step(s, {false, true, true}, true, 1.0);  // kept: w's count stays
    CHECK(state_of(opt, 0) == 1);
    CHECK(state_of(opt, 1) == 2);
    CHECK_THROWS_WITH(opt.step(s, {true}), Catch::Contains("update mask has 1 flags, the store 3"));
  };
  SGDConfig sc;
  sc.lr = 0.1;
  sc.momentum = 0.9;
  SGD<double> sgd(sc);
  check(sgd, [](const SGD<double>& o, std::size_t i) { return o.steps(i); });
  CHECK(sgd.momentum_buffer()[0] != 0.0);
  Adafactor<double> ada;
  check(ada, [](const Adafactor<double>& o, std::size_t i) { return o.state()[i].step; });
  CHECK(!ada.state()[0].row.empty());
}

TEST_CASE("Schedules equal transformers.get_scheduler's multipliers (warm-up 5, total 30)") {
  for (const std::string kind : {"constant", "constant_with_warmup", "linear", "cosine", "inverse_sqrt"}) {
    ScheduleConfig c;
    c.kind = ScheduleConfig::parse(kind);
    c.warmup_steps = 5;
    c.total_steps = 30;
    const Schedule sched(c);
    const auto want = fixture().to_vector<double>("schedule." + kind);
    for (std::size_t s = 0; s < want.size(); ++s) {
      INFO(kind << " step " << s);
      CHECK(sched(long(s)) == Approx(want[s]).epsilon(1e-14).margin(1e-15));
    }
  }
  CHECK_THROWS_WITH(ScheduleConfig::parse("cosin"), Catch::Contains("allowed: constant"));
}

TEST_CASE("clip_grad_norm equals torch.nn.utils.clip_grad_norm_; a NaN gradient is an error") {
  ParamStore<double> s;
  fill(s);
  for (const auto& p : kParams) fixture().copy_to("grad.0." + p, s.grad(s.id(p)), s.entry(s.id(p)).size);
  const double norm = clip_grad_norm(s, 0.5);
  CHECK(norm == Approx(fixture().to_vector<double>("clip.norm")[0]).epsilon(1e-14));
  for (const auto& p : kParams) {
    const auto want = fixture().to_vector<double>("clip.grad." + p);
    for (std::size_t i = 0; i < want.size(); ++i) CHECK(s.grad(s.id(p))[i] == Approx(want[i]).epsilon(1e-14));
  }
  s.grads()[3] = std::nan("");
  CHECK_THROWS_AS(clip_grad_norm(s, 1.0), NumericError);
}

TEST_CASE("ParamGroups: no decay on biases and norms, a router learning-rate scale, first match wins") {
  const ParamGroups g = ParamGroups::standard(0.1);
  CHECK(g.group_of("transformer.h.0.attn.c_attn.bias") == "no_decay");
  CHECK(g.group_of("transformer.h.0.ln_1.weight") == "no_decay");
  CHECK(g.group_of("encoder.block.0.layer.0.layer_norm.weight") == "no_decay");
  CHECK(g.group_of("transformer.h.0.mlp.c_fc.router.weight") == "router");
  CHECK(g.options_for("transformer.h.0.mlp.c_fc.router.weight").lr_scale == 0.1);
  CHECK(g.group_of("transformer.h.0.attn.c_attn.lora_A.weight") == "default");
  CHECK(g.options_for("transformer.h.0.attn.c_attn.bias").weight_decay == 0.0);
}

// train/adamw.hpp (+ train/gradient_mask.hpp): AdamW against a double-precision reference of
// torch.optim.AdamW's documented algorithm, per-parameter step counts (PyTorch's treatment of a parameter
// without a gradient), state access, MPOE's gradient mask on a real MpoeFfn, errors.
#include <catch2/catch.hpp>
#include <cmath>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "pemoe/adapters/mpoe.hpp"
#include "pemoe/core/param_select.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/train/adamw.hpp"
#include "pemoe/train/gradient_mask.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace {

// torch.optim.AdamW (amsgrad=False, maximize=False) as its documentation writes it, in double, for one
// parameter that has a gradient this step:
//   t ← t + 1;  θ ← θ − γλθ;  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
//   m̂ = m / (1 − β1^t);  v̂ = v / (1 − β2^t);  θ ← θ − γ·m̂ / (√v̂ + ε)
// A parameter without a gradient (None) is skipped entirely: no t, m, v or θ change.
struct RefParam {
  long t = 0;
  std::vector<double> m, v;
};

void reference_adamw_step(const AdamWConfig& c, std::vector<double>& theta, const std::vector<double>& g,
                          RefParam& st) {
  if (st.m.empty()) {
    st.m.assign(theta.size(), 0.0);
    st.v.assign(theta.size(), 0.0);
  }
  st.t += 1;
  for (std::size_t i = 0; i < theta.size(); ++i) {
    theta[i] = theta[i] - c.lr * c.weight_decay * theta[i];
    st.m[i] = c.beta1 * st.m[i] + (1 - c.beta1) * g[i];
    st.v[i] = c.beta2 * st.v[i] + (1 - c.beta2) * g[i] * g[i];
    const double m_hat = st.m[i] / (1 - std::pow(c.beta1, double(st.t)));
    const double v_hat = st.v[i] / (1 - std::pow(c.beta2, double(st.t)));
    theta[i] = theta[i] - c.lr * m_hat / (std::sqrt(v_hat) + c.eps);
  }
}

double rel_diff(double a, double b) {
  return std::abs(a - b) / std::max(1e-300, std::max(std::abs(a), std::abs(b)));
}

std::vector<double> values_of(const ParamStore<double>& s, ParamId id) {
  const auto& e = s.entry(id);
  return std::vector<double>(s.values().begin() + e.offset, s.values().begin() + e.offset + e.size);
}
std::vector<double> grads_of(const ParamStore<double>& s, ParamId id) {
  const auto& e = s.entry(id);
  return std::vector<double>(s.grads().begin() + e.grad_offset, s.grads().begin() + e.grad_offset + e.size);
}

MpoeConfig small_mpoe(Index n_experts) {
  MpoeConfig c;
  c.d_model = 8;  // [2,2,2]
  c.d_ff = 12;    // [2,3,2]
  c.n_experts = n_experts;
  c.n_cores = 3;
  return c;
}

}  // namespace

TEST_CASE(
    "AdamW equals torch.optim.AdamW's algorithm (double reference): values, moments, per-parameter steps") {
  AdamWConfig cfg;
  cfg.lr = 0.01;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.99;
  cfg.eps = 1e-6;
  cfg.weight_decay = 0.1;
  ParamStore<double> s;
  const ParamId a = s.add("a.weight", {3, 4});
  const ParamId b = s.add("b.mpo.central", {5});
  const ParamId c = s.add("c.frozen", {2, 2}, false);
  const ParamId d = s.add("d.bias", {6});
  testing::randomize_params(s, 1);
  const std::vector<double> c0 = values_of(s, c);
  std::vector<std::vector<double>> theta = {values_of(s, a), values_of(s, b), values_of(s, c),
                                            values_of(s, d)};
  std::vector<RefParam> ref(4);
  AdamW<double> opt(cfg);
  // step k skips b on {2, 3, 4, 7} (as the gradient mask does) and d on {0, 1} (before its first update)
  const std::set<int> skip_b = {2, 3, 4, 7}, skip_d = {0, 1};
  Rng rng(2);
  for (int k = 0; k < 12; ++k) {
    rng.fill_normal(s.grads().data(), s.num_trainable(), 0.0, 1.0 + k);  // gradients of growing scale
    std::vector<bool> update(4, true);
    update[b] = !skip_b.count(k);
    update[d] = !skip_d.count(k);
    for (ParamId p : {a, b, d})
      if (update[p]) reference_adamw_step(cfg, theta[p], grads_of(s, p), ref[p]);
    const std::vector<double> d_before = values_of(s, d);
    opt.step(s, update);
    INFO("step " << k);
    CHECK(opt.steps() == k + 1);
    for (ParamId p : {a, b, d}) {
      CHECK(opt.step_count(p) == ref[p].t);
      const auto v = values_of(s, p);
      for (std::size_t i = 0; i < v.size(); ++i) CHECK(rel_diff(v[i], theta[p][i]) < 1e-13);
      const auto& st = opt.state(p);
      REQUIRE(st.exp_avg.size() == ref[p].m.size());
      for (std::size_t i = 0; i < ref[p].m.size(); ++i) {
        CHECK(rel_diff(st.exp_avg[i], ref[p].m[i]) < 1e-13);
        CHECK(rel_diff(st.exp_avg_sq[i], ref[p].v[i]) < 1e-13);
      }
    }
    if (k == 2) {
      // d's first update is its own step 1: bias correction makes |m̂ / √v̂| = 1, so every value moves by
      // lr·(1 ± ε-terms) beyond the decay (with the optimizer's step count 3 it would move by ≈ 0.64·lr)
      const auto v = values_of(s, d);
      for (std::size_t i = 0; i < v.size(); ++i)
        CHECK(std::abs(v[i] - d_before[i] * (1 - cfg.lr * cfg.weight_decay)) == Approx(cfg.lr).epsilon(1e-3));
    }
  }
  CHECK(opt.step_count(a) == 12);
  CHECK(opt.step_count(b) == 8);
  CHECK(opt.step_count(d) == 10);
  CHECK(opt.step_count(c) == 0);  // frozen: no gradient, no state, no decay
  CHECK(opt.state(c).exp_avg.empty());
  CHECK(values_of(s, c) == c0);
}

TEST_CASE("AdamW with MPOE's GradientMask on an MpoeFfn: central tensors move only on unmasked steps") {
  for (bool mask_moments : {true, false}) {
    DYNAMIC_SECTION("mask_moments " << mask_moments) {
      ParamStore<double> s;
      Rng rng(1);
      MpoeFfn<double> bank(small_mpoe(3));
      bank.register_params(s, "ffn", rng);
      GradientMaskConfig mcfg;
      mcfg.p_b = 0.5;
      mcfg.mask_moments = mask_moments;
      GradientMask mask(mcfg, Rng(3));
      AdamWConfig cfg;
      cfg.lr = 1e-2;
      cfg.weight_decay = 0.05;
      AdamW<double> opt(cfg);
      const ParamId centrals[2] = {bank.central_id(0), bank.central_id(1)};
      // a reference of the first central tensor alone, updated exactly when the mask lets it (own count)
      std::vector<double> theta = values_of(s, centrals[0]);
      RefParam ref;
      const auto x = testing::random_matrix(12, 8, 4);
      MpoeFfn<double>::Cache cache;
      Matrix<double> y(12, 8);
      int masked = 0, unmasked = 0;
      for (int step = 0; step < 24; ++step) {
        s.zero_grad();
        bank.forward(x, y, cache);
        bank.backward(x, cache, y);  // L = ½‖y‖²
        const auto before = s.values();
        std::vector<AdamW<double>::ParamState> state_before;
        for (ParamId p : centrals) state_before.push_back(opt.state(p));
        const auto update = mask.next(s);
        for (std::size_t p = 0; p < update.size(); ++p)
          REQUIRE(update[p] == (!mask.masked() || (p != centrals[0] && p != centrals[1])));
        if (!mask.masked()) {
          reference_adamw_step(cfg, theta, grads_of(s, centrals[0]), ref);
        } else if (!mask_moments) {  // moments absorb the gradient; the value (and its decay) does not move
          std::vector<double> frozen = theta;
          reference_adamw_step(cfg, frozen, grads_of(s, centrals[0]), ref);
        }
        opt.step(s, update, mask.keep_moments_of_skipped());
        (mask.masked() ? masked : unmasked) += 1;
        INFO("step " << step << (mask.masked() ? " (masked)" : " (unmasked)"));
        for (int w = 0; w < 2; ++w) {
          const auto& e = s.entry(centrals[w]);
          bool changed = false;
          for (Index i = 0; i < e.size; ++i)
            changed = changed || s.values()[e.offset + i] != before[e.offset + i];
          CHECK(changed == !mask.masked());
          const auto& st = opt.state(centrals[w]);
          if (mask.masked() && mask_moments) {
            CHECK(st.step == state_before[w].step);
            CHECK(st.exp_avg == state_before[w].exp_avg);
            CHECK(st.exp_avg_sq == state_before[w].exp_avg_sq);
          } else {
            CHECK(st.step == state_before[w].step + 1);
            CHECK(st.exp_avg != state_before[w].exp_avg);
          }
        }
        CHECK(opt.step_count(centrals[0]) == ref.t);
        const auto v = values_of(s, centrals[0]);
        for (std::size_t i = 0; i < v.size(); ++i) CHECK(rel_diff(v[i], theta[i]) < 1e-12);
        // every other trainable parameter (auxiliary tensors, router) is updated on every step
        for (std::size_t p = 0; p < s.size(); ++p)
          if (p != centrals[0] && p != centrals[1] && s.trainable(p)) CHECK(opt.step_count(p) == step + 1);
      }
      CHECK(masked > 0);
      CHECK(unmasked > 0);
      CHECK(opt.step_count(centrals[1]) == (mask_moments ? unmasked : masked + unmasked));
    }
  }
}

TEST_CASE("AdamW: state survives set_trainable, set_state restores it, keep_moments_of_skipped, errors") {
  SECTION("a parameter frozen for a while keeps its state and resumes its own count") {
    ParamStore<double> s;
    const ParamId a = s.add("a", {4});
    const ParamId b = s.add("b", {3});
    testing::randomize_params(s, 5);
    AdamW<double> opt;
    Rng rng(6);
    auto step = [&] {
      rng.fill_normal(s.grads().data(), s.num_trainable(), 0.0, 1.0);
      opt.step(s);
    };
    for (int k = 0; k < 3; ++k) step();
    const auto b_state = opt.state(b);
    const auto b_values = values_of(s, b);
    set_trainable(s, "^b$", false);  // the gradient arena is re-laid; the optimizer state is keyed by id
    for (int k = 0; k < 2; ++k) step();
    CHECK(opt.step_count(a) == 5);
    CHECK(opt.step_count(b) == 3);
    CHECK(values_of(s, b) == b_values);
    CHECK(opt.state(b).exp_avg == b_state.exp_avg);
    set_trainable(s, "^b$", true);
    step();
    CHECK(opt.step_count(a) == 6);
    CHECK(opt.step_count(b) == 4);
  }
  SECTION("set_state: a copied state continues identically") {
    ParamStore<float> s1, s2;
    s1.add("w", {2, 5});
    s2.add("w", {2, 5});
    testing::randomize_params(s1, 7);
    testing::randomize_params(s2, 7);
    AdamW<float> o1, o2;
    Rng rng(8);
    for (int k = 0; k < 3; ++k) {
      rng.fill_normal(s1.grads().data(), 10, 0.0, 1.0);
      o1.step(s1);
    }
    s2.values() = s1.values();
    o2.set_state(0, o1.state(0));
    rng.fill_normal(s1.grads().data(), 10, 0.0, 1.0);
    s2.grads() = s1.grads();
    o1.step(s1);
    o2.step(s2);
    CHECK(s1.values() == s2.values());
    CHECK(o2.step_count(0) == 4);
    AdamW<float>::ParamState bad;
    bad.step = 2;  // a count without moments
    CHECK_THROWS_AS(o2.set_state(0, bad), ConfigError);
    AdamW<float>::ParamState wrong_size{1, std::vector<float>(3), std::vector<float>(3)};
    o2.set_state(0, wrong_size);
    CHECK_THROWS_WITH(o2.step(s2), Catch::Contains("parameter 'w' has 10 values, its optimizer state 3"));
  }
  SECTION("keep_moments_of_skipped = false: moments and count advance, the value does not") {
    ParamStore<double> s;
    s.add("w", {3});
    testing::randomize_params(s, 9);
    AdamW<double> opt;
    std::fill(s.grads().begin(), s.grads().end(), 0.5);
    const auto before = s.values();
    opt.step(s, {false}, false);
    CHECK(s.values() == before);
    CHECK(opt.step_count(0) == 1);
    CHECK(opt.state(0).exp_avg[0] == Approx(0.05));
    opt.step(s, {false}, true);
    CHECK(opt.step_count(0) == 1);
  }
  SECTION("errors: a mask of the wrong length, another store, bad hyper-parameters") {
    ParamStore<double> s;
    s.add("w", {3});
    s.add("v", {2});
    AdamW<double> opt;
    CHECK_THROWS_WITH(opt.step(s, {true}), "AdamW: the update mask has 1 flags, the store 2 parameters");
    opt.step(s);
    ParamStore<double> other;
    other.add("w", {3});
    CHECK_THROWS_AS(opt.step(other), ConfigError);
    ParamStore<double> resized;
    resized.add("w", {4});
    resized.add("v", {2});
    CHECK_THROWS_AS(opt.step(resized), ConfigError);
    opt.reset();
    CHECK_NOTHROW(opt.step(resized));
    CHECK(opt.state(7).step == 0);  // never seen: the empty state
    CHECK(opt.state(7).exp_avg.empty());
    AdamWConfig bad;
    bad.beta2 = 1.0;
    CHECK_THROWS_AS(AdamW<double>(bad), ConfigError);
  }
}

TEST_CASE("AdamW<float> stores float moments (as PyTorch for float32 parameters) and follows the reference") {
  static_assert(std::is_same<decltype(AdamW<float>::ParamState::exp_avg), std::vector<float>>::value,
                "a float parameter's moments are float: 8 bytes of state per scalar, not 16");
  AdamWConfig cfg;
  cfg.lr = 0.003;
  cfg.beta2 = 0.98;
  cfg.weight_decay = 0.05;
  // 37: not a multiple of any vector width; 2,500: two full chunks of the vectorised update (1,024) and a
  // tail, each element updated once
  for (const Index n : {Index(37), Index(2500)}) {
    ParamStore<float> s;
    s.add("w", {n});
    testing::randomize_params(s, 3);
    std::vector<double> theta(s.values().begin(), s.values().end());
    RefParam ref;
    AdamW<float> opt(cfg);
    Rng rng(4);
    for (int k = 0; k < 20; ++k) {
      rng.fill_normal(s.grads().data(), n, 0.0, 1.0);
      reference_adamw_step(cfg, theta, std::vector<double>(s.grads().begin(), s.grads().end()), ref);
      opt.step(s);
    }
    // the float run computes in float (as PyTorch); after 20 steps values and moments stay within a few
    // float ulps of the double reference relative to the step scale (lr), and the moments within float
    // rounding of the gradients' scale (1): absolutely, as a first moment can average to nearly 0
    for (std::size_t i = 0; i < theta.size(); ++i) {
      CHECK(std::abs(double(s.values()[i]) - theta[i]) < 1e-6 + 1e-5 * std::abs(theta[i]));
      CHECK(std::abs(double(opt.state(0).exp_avg[i]) - ref.m[i]) < 1e-6 + 1e-5 * std::abs(ref.m[i]));
      CHECK(std::abs(double(opt.state(0).exp_avg_sq[i]) - ref.v[i]) < 1e-6 + 1e-5 * std::abs(ref.v[i]));
    }
  }
}

TEST_CASE("AdamW with ParamGroups::standard: router rate scale, no decay on biases and norms, lr_mult") {
  ParamStore<double> s;
  const ParamId w = s.add("h.0.mlp.c_fc.lora_A.weight", {4});
  const ParamId r = s.add("h.0.mlp.c_fc.router.weight", {4});
  const ParamId b = s.add("h.0.mlp.c_fc.bias", {4});
  const ParamId n = s.add("h.0.ln_1.weight", {4});
  testing::randomize_params(s, 3);
  std::fill(s.grads().begin(), s.grads().end(), 0.25);
  const auto before = s.values();
  AdamWConfig c;
  c.lr = 0.01;
  c.weight_decay = 0.1;
  AdamW<double> opt(c, ParamGroups::standard(0.5));
  opt.step(s, {}, true, 0.5);  // first step: |m̂/√v̂| ≈ 1, so w moves by ≈ η = lr·lr_mult·scale after decay
  auto moved = [&](ParamId p, double eta, double wd) {
    const auto& e = s.entry(p);
    for (Index i = 0; i < e.size; ++i) {
      const double w0 = before[std::size_t(e.offset + i)];
      CHECK(s.values()[std::size_t(e.offset + i)] == Approx(w0 * (1 - eta * wd) - eta).epsilon(1e-6));
    }
  };
  moved(w, 0.005, 0.1);
  moved(r, 0.0025, 0.1);
  moved(b, 0.005, 0.0);
  moved(n, 0.005, 0.0);
}

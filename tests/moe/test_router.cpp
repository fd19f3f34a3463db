// moe/router.hpp, moe/topk.hpp, moe/aux_loss.hpp: gate modes against naive loops, ties, aux losses and
// their gradients, the layer collector, NaN handling.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <numeric>
#include <vector>

#include "pemoe/moe/aux_loss.hpp"
#include "pemoe/moe/router.hpp"
#include "pemoe/moe/topk.hpp"
#include "support/distribution.hpp"
#include "support/gradcheck.hpp"
#include "support/helpers.hpp"
#include "support/moe_cases.hpp"

using namespace pemoe;

namespace {

std::vector<double> naive_softmax(const std::vector<double>& z) {
  double m = *std::max_element(z.begin(), z.end()), s = 0;
  std::vector<double> p(z.size());
  for (std::size_t i = 0; i < z.size(); ++i) s += std::exp(z[i] - m);
  for (std::size_t i = 0; i < z.size(); ++i) p[i] = std::exp(z[i] - m) / s;
  return p;
}

// Indices of the k largest, ties to the lower index (a stable sort by decreasing value).
std::vector<Index> naive_topk(const std::vector<double>& v, Index k) {
  std::vector<Index> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](Index a, Index b) { return v[a] > v[b]; });
  idx.resize(static_cast<std::size_t>(k));
  return idx;
}

// Gates of one token computed from scratch (no noise).
std::vector<double> naive_gates(const std::vector<double>& z, GateMode mode, Index k, bool st) {
  const auto p = naive_softmax(z);
  std::vector<double> g(z.size(), 0.0);
  switch (mode) {
    case GateMode::soft:
      g = p;
      break;
    case GateMode::topk_mask:
      for (Index i : naive_topk(p, k)) g[i] = p[i];
      break;
    case GateMode::topk_renorm:
    case GateMode::noisy_topk: {
      double s = 0;
      for (Index i : naive_topk(p, k)) s += p[i];
      for (Index i : naive_topk(p, k)) g[i] = p[i] / s;
      break;
    }
    case GateMode::switch_top1: {
      const Index i = naive_topk(p, 1)[0];
      g[i] = st ? 1.0 : p[i];
      break;
    }
  }
  return g;
}

struct RouterFixture {
  ParamStore<double> store;
  Router<double> router;
  RouterFixture(RouterConfig cfg, std::uint64_t seed = 5) : router(cfg) {
    Rng rng(seed);
    router.register_params(store, "blk.router", rng);
    testing::randomize_params(store, seed + 1, 0.6);
  }
};

RouterConfig cfg_of(GateMode mode, Index d, Index e, Index k) {
  RouterConfig c;
  c.d_in = d;
  c.n_experts = e;
  c.mode = mode;
  c.top_k = k;
  return c;
}

}  // namespace

TEST_CASE("topk_row: decreasing order, exact ties go to the lowest index") {
  const double v[] = {1.0, 3.0, 3.0, 2.0, 3.0, -1.0};
  Index out[4];
  topk_row(v, 6, 4, out);
  CHECK(out[0] == 1);
  CHECK(out[1] == 2);
  CHECK(out[2] == 4);
  CHECK(out[3] == 3);
  const double all_equal[] = {0.5, 0.5, 0.5, 0.5};
  topk_row(all_equal, 4, 2, out);
  CHECK(out[0] == 0);
  CHECK(out[1] == 1);
  Rng rng(3);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<double> r(9);
    for (auto& x : r) x = double(rng.below(4));  // many ties
    const Index k = 1 + Index(rng.below(9));
    std::vector<Index> got(static_cast<std::size_t>(k));
    topk_row(r.data(), 9, k, got.data());
    CHECK(got == naive_topk(r, k));
  }
}

TEST_CASE("softmax_row is max-subtracted: finite for huge logits, returns the log-sum-exp") {
  const float z[] = {1000.f, 999.f, -1000.f};
  float p[3];
  const float lse = softmax_row(z, 3, p);
  CHECK(std::isfinite(p[0]));
  CHECK(p[0] == Approx(1.0 / (1.0 + std::exp(-1.0))));
  CHECK(p[2] == 0.0f);
  CHECK(lse == Approx(1000.0 + std::log(1.0 + std::exp(-1.0))));
}

TEST_CASE("Router forward equals naive gates for every mode (eval, no noise)") {
  for (GateMode mode : testing::all_gate_modes()) {
    for (bool st : {false, true}) {
      if (st && mode != GateMode::switch_top1) continue;
      INFO(testing::gate_name(mode) << " st=" << st);
      auto cfg = cfg_of(mode, 6, 5, 2);
      cfg.straight_through = st;
      cfg.bias = true;
      RouterFixture f(cfg);
      const auto u = testing::random_matrix(7, 6, 8);
      Matrix<double> g(7, 5);
      Router<double>::Cache c;
      f.router.forward(u, g, c);
      const Matrix<double> W = f.router.weight();
      const Matrix<double> b = f.store.matrix(f.router.bias_id());
      for (Index t = 0; t < 7; ++t) {
        std::vector<double> z(5);
        for (Index e = 0; e < 5; ++e) {
          z[e] = b(0, e);
          for (Index j = 0; j < 6; ++j) z[e] += u(t, j) * W(e, j);
        }
        const auto ref = naive_gates(z, mode, 2, st);
        for (Index e = 0; e < 5; ++e) CHECK(g(t, e) == Approx(ref[e]).epsilon(1e-12).margin(1e-15));
        const auto sel = naive_topk(z, cfg.selected());
        for (Index j = 0; j < cfg.selected(); ++j) CHECK(c.topk_idx(t, j) == sel[j]);
      }
    }
  }
}

TEST_CASE("topk_renorm equals a softmax over the kept logits; topk_mask keeps the unrenormalised probs") {
  RouterFixture r(cfg_of(GateMode::topk_renorm, 8, 6, 3));
  RouterFixture m(cfg_of(GateMode::topk_mask, 8, 6, 3));
  m.store.values() = r.store.values();  // same gate weights
  const auto u = testing::random_matrix(20, 8, 1);
  Matrix<double> gr(20, 6), gm(20, 6);
  Router<double>::Cache cr, cm;
  r.router.forward(u, gr, cr);
  m.router.forward(u, gm, cm);
  for (Index t = 0; t < 20; ++t) {
    // softmax(KeepTopK(z)) with −∞ outside the kept set
    Matrix<double> z = cr.logits.row(t);
    double mx = -INFINITY, s = 0;
    for (Index j = 0; j < 3; ++j) mx = std::max(mx, z(0, cr.topk_idx(t, j)));
    for (Index j = 0; j < 3; ++j) s += std::exp(z(0, cr.topk_idx(t, j)) - mx);
    for (Index j = 0; j < 3; ++j) {
      const Index e = cr.topk_idx(t, j);
      CHECK(gr(t, e) == Approx(std::exp(z(0, e) - mx) / s).epsilon(1e-12));
      CHECK(gm(t, e) == Approx(cm.probs(t, e)).epsilon(1e-12));
    }
    CHECK(gr.row(t).sum() == Approx(1.0));
    CHECK(gm.row(t).sum() < 1.0);
    CHECK((gr.row(t).array() != 0).count() == 3);
  }
}

TEST_CASE("Router: exact ties select the lowest index in every mode") {
  for (GateMode mode : testing::all_gate_modes()) {
    INFO(testing::gate_name(mode));
    RouterFixture f(cfg_of(mode, 3, 4, 2));
    f.router.weight().setZero();  // every logit equal: a 4-way tie
    Matrix<double> u = testing::random_matrix(3, 3, 2), g(3, 4);
    Router<double>::Cache c;
    f.router.forward(u, g, c);
    for (Index t = 0; t < 3; ++t) {
      CHECK(c.topk_idx(t, 0) == 0);
      if (c.topk_idx.cols() > 1) CHECK(c.topk_idx(t, 1) == 1);
      if (mode == GateMode::soft) {
        CHECK(g(t, 3) == Approx(0.25));
      } else {
        CHECK(g(t, 0) > 0);
        CHECK(g(t, 2) == 0);
        CHECK(g(t, 3) == 0);
      }
    }
  }
}

TEST_CASE("Router gradients (gates + aux losses + router weights) pass the checker for every mode") {
  // (The straight-through switch gate has no true derivative to compare with; it is checked against its
  // definition in the next test case.)
  struct Variant {
    const char* what;
    bool jitter, bias, training;
  };
  for (GateMode mode : testing::all_gate_modes()) {
    for (const Variant& v : {Variant{"plain", false, false, true}, Variant{"bias+jitter", true, true, true},
                             Variant{"eval", false, false, false}}) {
      DYNAMIC_SECTION(testing::gate_name(mode) << " / " << v.what) {
        auto cfg = cfg_of(mode, 5, 4, 2);
        cfg.bias = v.bias;
        cfg.jitter = v.jitter ? 0.1 : 0.0;
        cfg.aux.balance_coef = 0.3;
        cfg.aux.z_coef = 0.2;
        cfg.aux.importance_coef = 0.4;
        cfg.aux.load_coef = 0.5;
        RouterFixture f(cfg);
        f.router.set_training(v.training);
        Router<double>::Cache c;
        const auto r = testing::gradcheck(
            f.store, testing::random_matrix(6, 5, 3),
            [&](const Matrix<double>& x, Matrix<double>& y) {
              y.resize(x.rows(), 4);
              f.router.set_call_counter(0);  // the same noise / jitter on every evaluation
              f.router.forward(x, y, c);
              return f.router.aux_loss(c);
            },
            [&](const Matrix<double>& x, const Matrix<double>& dy, Matrix<double>& dx) {
              f.router.backward(x, c, dy, dx);
            });
        INFO(r.report());
        CHECK(r.ok(1e-6));
        CHECK(r.checked ==
              2 * (30 + f.store.num_trainable()));  // central differences + the twice-backward check
        if (mode == GateMode::noisy_topk && v.training) CHECK(c.load_prob.size() == 24);
      }
    }
  }
}

TEST_CASE("switch_top1 straight-through: value 1, gradient of p_S / stop_grad(p_S)") {
  // The ST gate has value 1 (zero true derivative), so it is checked against its definition: its backward
  // with dL/dg equals the value-p gate's backward with dL/dg / p_S.
  auto cfg = cfg_of(GateMode::switch_top1, 5, 4, 1);
  cfg.straight_through = true;
  RouterFixture st(cfg);
  cfg.straight_through = false;
  RouterFixture vp(cfg);
  vp.store.values() = st.store.values();
  auto u = testing::random_matrix(6, 5, 3);
  auto dg = testing::random_matrix(6, 4, 4);
  Matrix<double> g1(6, 4), g2(6, 4), du1(6, 5), du2(6, 5);
  Router<double>::Cache c1, c2;
  st.router.forward(u, g1, c1);
  vp.router.forward(u, g2, c2);
  Matrix<double> dg2 = dg;
  for (Index t = 0; t < 6; ++t) {
    CHECK(g1.row(t).sum() == 1.0);
    CHECK(g1(t, c1.topk_idx(t, 0)) == 1.0);
    dg2(t, c2.topk_idx(t, 0)) /= c2.probs(t, c2.topk_idx(t, 0));
  }
  st.router.backward(u, c1, dg, du1);
  vp.router.backward(u, c2, dg2, du2);
  CHECK(du1.norm() > 0);
  CHECK(testing::max_abs_diff(du1, du2) < 1e-12);
  for (std::size_t i = 0; i < st.store.grads().size(); ++i)
    CHECK(st.store.grads()[i] == Approx(vp.store.grads()[i]).margin(1e-12));
}

TEST_CASE("Router aux-loss gradient alone: each loss checked separately with zero dgates") {
  struct L {
    const char* what;
    double AuxLossConfig::*coef;
    GateMode mode;
  };
  for (const L& l : {L{"balance", &AuxLossConfig::balance_coef, GateMode::topk_renorm},
                     L{"z", &AuxLossConfig::z_coef, GateMode::soft},
                     L{"importance", &AuxLossConfig::importance_coef, GateMode::noisy_topk},
                     L{"load", &AuxLossConfig::load_coef, GateMode::noisy_topk}}) {
    SECTION(l.what) {
      auto cfg = cfg_of(l.mode, 4, 5, 2);
      cfg.aux.*(l.coef) = 1.0;
      RouterFixture f(cfg);
      f.router.set_training(true);
      Router<double>::Cache c;
      Matrix<double> x = testing::random_matrix(8, 4, 7);
      // loss = aux only: forward returns it, and y is made zero so Σ R⊙y = 0
      const auto r = testing::gradcheck(
          f.store, x,
          [&](const Matrix<double>& xx, Matrix<double>& y) {
            Matrix<double> g(xx.rows(), 5);
            f.router.set_call_counter(0);
            f.router.forward(xx, g, c);
            y = Matrix<double>::Zero(xx.rows(), 5);
            return f.router.aux_loss(c);
          },
          [&](const Matrix<double>& xx, const Matrix<double>&, Matrix<double>& dx) {
            f.router.backward(xx, c, Matrix<double>::Zero(xx.rows(), 5), dx);
          });
      INFO(r.report());
      CHECK(r.ok(1e-6));
      CHECK(c.aux.weighted > 0);
      f.router.set_call_counter(0);
      Matrix<double> g(8, 5), dx(8, 4);
      f.store.zero_grad();
      f.router.forward(x, g, c);
      f.router.backward(x, c, Matrix<double>::Zero(8, 5), dx);
      CHECK(dx.norm() > 0);  // the aux loss alone moves the input and the weights
    }
  }
}

TEST_CASE("Switch balance loss: both f normalisations, uniform minimum, for-ai constant") {
  // 4 tokens, 2 experts, k = 1
  Matrix<double> p(4, 2);
  p << 0.9, 0.1, 0.8, 0.2, 0.3, 0.7, 0.6, 0.4;
  IndexMatrix idx(4, 1);
  idx << 0, 0, 1, 0;
  RowVector<double> d;
  const double P0 = (0.9 + 0.8 + 0.3 + 0.6) / 4, P1 = 1 - P0;
  const double la = switch_balance_loss<double>(p, idx, BalanceNorm::per_assignment, &d);
  CHECK(la == Approx(2 * (0.75 * P0 + 0.25 * P1)));
  CHECK(d(0) == Approx(2 * 0.75 / 4));
  // top-2 of 3 experts: per_token_slot is k× per_assignment
  Matrix<double> p3 = testing::random_matrix(6, 3, 4).cwiseAbs();
  for (Index t = 0; t < 6; ++t) p3.row(t) /= p3.row(t).sum();
  IndexMatrix i2(6, 2);
  for (Index t = 0; t < 6; ++t) topk_row(&p3(t, 0), 3, 2, &i2(t, 0));
  const double a = switch_balance_loss<double>(p3, i2, BalanceNorm::per_assignment);
  const double s = switch_balance_loss<double>(p3, i2, BalanceNorm::per_token_slot);
  CHECK(s == Approx(2 * a));
  // uniform routing reaches the minimum 1 (per assignment)
  Matrix<double> pu = Matrix<double>::Constant(4, 4, 0.25);
  IndexMatrix iu(4, 1);
  iu << 0, 1, 2, 3;
  CHECK(switch_balance_loss<double>(pu, iu, BalanceNorm::per_assignment) == Approx(1.0));
  CHECK(switch_balance_loss<double>(p3, i2, BalanceNorm::forai_constant) == Approx(3.0));
  CHECK(switch_balance_loss<double>(p, idx, BalanceNorm::forai_constant) == Approx(2.0));
}

TEST_CASE("for-ai constant balance loss has zero gradient through the softmax") {
  auto cfg = cfg_of(GateMode::topk_mask, 4, 3, 2);
  cfg.aux.balance_coef = 1.0;
  cfg.aux.balance_norm = BalanceNorm::forai_constant;
  RouterFixture f(cfg);
  Router<double>::Cache c;
  auto u = testing::random_matrix(5, 4, 2);
  Matrix<double> g(5, 3), du(5, 4);
  f.router.forward(u, g, c);
  CHECK(c.aux.balance == Approx(3.0));
  f.router.backward(u, c, Matrix<double>::Zero(5, 3), du);
  CHECK(du.cwiseAbs().maxCoeff() < 1e-14);
}

TEST_CASE("z-loss and CV² against direct formulas") {
  auto z = testing::random_matrix(5, 4, 9, 2.0);
  double ref = 0;
  for (Index t = 0; t < 5; ++t) {
    double s = 0;
    for (Index j = 0; j < 4; ++j) s += std::exp(z(t, j));
    ref += std::log(s) * std::log(s);
  }
  CHECK(router_z_loss<double>(z) == Approx(ref / 5));
  RowVector<double> v(4);
  v << 1, 2, 3, 6;
  const double mu = 3, var = (4 + 1 + 0 + 9) / 3.0;
  RowVector<double> g;
  CHECK(cv_squared<double>(v, &g) == Approx(var / (mu * mu)));
  for (Index i = 0; i < 4; ++i) {  // central differences
    RowVector<double> a = v, b = v;
    a(i) += 1e-6;
    b(i) -= 1e-6;
    CHECK(g(i) == Approx((cv_squared<double>(a) - cv_squared<double>(b)) / 2e-6).epsilon(1e-6));
  }
  RowVector<double> one(1);
  one << 5;
  CHECK(cv_squared<double>(one) == 0.0);
}

TEST_CASE("AuxLossCollector sums or averages across layers; gradients follow the reduction") {
  for (LayerReduction red : {LayerReduction::sum, LayerReduction::mean}) {
    AuxLossCollector col(red);
    auto cfg = cfg_of(GateMode::topk_renorm, 4, 3, 2);
    cfg.aux.balance_coef = 0.5;
    cfg.aux.z_coef = 0.1;
    RouterFixture a(cfg, 1), b(cfg, 2);
    a.router.set_collector(&col);
    b.router.set_collector(&col);
    auto u = testing::random_matrix(6, 4, 3);
    Matrix<double> g(6, 3);
    Router<double>::Cache ca, cb;
    a.router.forward(u, g, ca);
    b.router.forward(u, g, cb);
    REQUIRE(col.records().size() == 2);
    CHECK(col.records()[0].site == "blk.router");
    const double s = ca.aux.weighted + cb.aux.weighted;
    const double w = red == LayerReduction::sum ? 1.0 : 0.5;
    CHECK(col.total() == Approx(s * w));
    CHECK(col.balance() == Approx((ca.aux.balance + cb.aux.balance) * w));
    CHECK(col.z() == Approx((ca.aux.z + cb.aux.z) * w));
    CHECK(a.router.aux_loss(ca) == Approx(ca.aux.weighted * w));
    // the gradient scales with the layer weight
    Matrix<double> du(6, 4);
    a.router.backward(u, ca, Matrix<double>::Zero(6, 3), du);
    const Matrix<double> du_w = du;
    a.router.set_collector(nullptr);
    a.router.backward(u, ca, Matrix<double>::Zero(6, 3), du);
    CHECK(testing::max_abs_diff(du_w, w * du) < 1e-14);
    col.reset();
    CHECK(col.total() == 0.0);
  }
}

TEST_CASE("Noisy top-k: noise only in training, replayable, zero-init weights, load estimator in [0, 1]") {
  auto cfg = cfg_of(GateMode::noisy_topk, 6, 5, 2);
  ParamStore<double> s;
  Router<double> r(cfg);
  Rng rng(1);
  r.register_params(s, "l.router", rng);
  CHECK(s.contains("l.router.noise.weight"));
  CHECK(s.matrix(r.noise_weight_id()).isZero());
  testing::randomize_params(s, 3);
  auto u = testing::random_matrix(10, 6, 4);
  Matrix<double> g0(10, 5), g1(10, 5), g2(10, 5);
  Router<double>::Cache c;
  r.forward(u, g0, c);
  CHECK(c.noise.size() == 0);
  CHECK(testing::max_abs_diff(c.noisy_logits, c.logits) == 0.0);
  r.set_training(true);
  r.set_call_counter(7);
  r.forward(u, g1, c);
  CHECK(c.noise.size() == 50);
  CHECK(testing::max_abs_diff(c.noisy_logits, c.logits) > 0.0);
  CHECK(c.load_prob.minCoeff() >= 0.0);
  CHECK(c.load_prob.maxCoeff() <= 1.0);
  r.set_call_counter(7);
  r.forward(u, g2, c);
  CHECK(testing::max_abs_diff(g1, g2) == 0.0);
  r.forward(u, g2, c);  // next call: new noise
  CHECK(testing::max_abs_diff(g1, g2) > 0.0);
}

TEST_CASE("Router: panel forward/backward equals the whole call") {
  auto cfg = cfg_of(GateMode::noisy_topk, 5, 4, 2);
  cfg.aux.load_coef = 0.3;
  cfg.aux.balance_coef = 0.2;
  RouterFixture f(cfg);
  f.router.set_training(true);
  auto u = testing::random_matrix(9, 5, 1);
  Matrix<double> g(9, 4), gp(9, 4), du(9, 5), dup(9, 5);
  auto dg = testing::random_matrix(9, 4, 2);
  Router<double>::Cache c, cp;
  f.router.forward(u, g, c);
  f.store.zero_grad();
  f.router.backward(u, c, dg, du);
  const auto grads = f.store.grads();
  f.router.set_call_counter(0);
  f.router.begin_forward(9, cp);
  for (Index r0 = 0; r0 < 9; r0 += 4) {
    const Index n = std::min<Index>(4, 9 - r0);
    f.router.forward_rows(u.middleRows(r0, n), r0, gp.middleRows(r0, n), cp);
  }
  f.router.finish_forward(cp);
  CHECK(testing::max_abs_diff(g, gp) == 0.0);
  f.store.zero_grad();
  for (Index r0 = 0; r0 < 9; r0 += 4) {
    const Index n = std::min<Index>(4, 9 - r0);
    f.router.backward_rows(u.middleRows(r0, n), r0, cp, dg.middleRows(r0, n),
                           MatrixRef<double>(dup.middleRows(r0, n)));
  }
  CHECK(testing::max_abs_diff(du, dup) < 1e-14);
  for (std::size_t i = 0; i < grads.size(); ++i) CHECK(grads[i] == Approx(f.store.grads()[i]).margin(1e-14));
}

TEST_CASE("Router: NaN input throws NumericError naming the router; config errors") {
  RouterFixture f(cfg_of(GateMode::topk_renorm, 4, 3, 2));
  auto u = testing::random_matrix(3, 4, 1);
  u(1, 2) = NAN;
  Matrix<double> g(3, 3);
  Router<double>::Cache c;
  try {
    f.router.forward(u, g, c);
    FAIL("no throw");
  } catch (const NumericError& e) {
    CHECK_THAT(e.what(), Catch::Contains("Router 'blk.router'") && Catch::Contains("token 1"));
  }
  ParamStore<double> s;
  Rng rng(1);
  Router<double> bad(cfg_of(GateMode::topk_renorm, 4, 3, 4));
  CHECK_THROWS_AS(bad.register_params(s, "x", rng), ConfigError);
  Matrix<double> u5(3, 5);
  CHECK_THROWS_AS(f.router.forward(u5, g, c), ShapeError);
}

TEST_CASE("Router init presets: N(0, 0.02), kaiming-uniform, no bias by default") {
  auto cfg = cfg_of(GateMode::soft, 256, 16, 1);
  ParamStore<float> s;
  Rng rng(2);
  Router<float> a(cfg);
  a.register_params(s, "a.router", rng);
  CHECK(s.size() == 1);
  CHECK(s.entry(a.weight_id()).shape == Shape{16, 256});
  // Kolmogorov-Smirnov against the exact CDF at alpha = 1e-3 (4096 draws), and the look-alikes it rejects
  using testing::normal_cdf;
  using testing::uniform_cdf;
  auto ks = [&s](ParamId id, const std::function<double(double)>& cdf) {
    const auto& e = s.entry(id);
    return testing::ks_statistic(testing::sample_of(s.values().data() + e.offset, e.size), cdf) /
           testing::ks_critical(std::size_t(e.size));  // < 1: accepted
  };
  CHECK(ks(a.weight_id(), normal_cdf(0, 0.02)) < 1);
  CHECK(ks(a.weight_id(), normal_cdf(0, 0.024)) > 1);
  CHECK(ks(a.weight_id(), uniform_cdf(-0.02 * std::sqrt(3.0), 0.02 * std::sqrt(3.0))) > 1);  // same std
  cfg.init_std = 0.1;
  Router<float> a2(cfg);
  a2.register_params(s, "a2.router", rng);
  CHECK(ks(a2.weight_id(), normal_cdf(0, 0.1)) < 1);
  cfg.init = RouterInit::kaiming_uniform;
  Router<float> b(cfg);
  b.register_params(s, "b.router", rng);
  CHECK(ks(b.weight_id(), uniform_cdf(-1.0 / 16, 1.0 / 16)) < 1);  // U(±1/√d_in)
  CHECK(ks(b.weight_id(), uniform_cdf(-1.1 / 16, 1.1 / 16)) > 1);
  CHECK(ks(b.weight_id(), normal_cdf(0, 1.0 / 16 / std::sqrt(3.0))) > 1);
  cfg.init = RouterInit::zeros;
  Router<float> z(cfg);
  z.register_params(s, "z.router", rng);
  CHECK(s.matrix(z.weight_id()).isZero());
}

TEST_CASE(
    "Balance groups pool the routers of a layer (MoLA): value of the concatenated logits, exact gradients") {
  for (BalanceNorm norm : {BalanceNorm::per_assignment, BalanceNorm::per_token_slot}) {
    AuxLossCollector col(LayerReduction::sum);
    auto cfg = cfg_of(GateMode::topk_renorm, 4, 5, 2);
    cfg.aux.balance_coef = 0.7;
    cfg.aux.balance_norm = norm;
    cfg.aux.z_coef = 0.1;
    cfg.balance_group = "layers.0";
    ParamStore<double> s;
    Rng rng(3);
    Router<double> q(cfg), v(cfg);
    q.register_params(s, "layers.0.q.router", rng);
    v.register_params(s, "layers.0.v.router", rng);
    testing::randomize_params(s, 4, 0.8);
    q.set_collector(&col);
    v.set_collector(&col);
    Router<double>::Cache cq, cv;
    // the checked input stacks the two routers' inputs: rows 0-5 go to q, rows 6-12 to v
    auto forward = [&](const Matrix<double>& x, Matrix<double>& y) {
      col.reset();
      y.resize(13, 5);
      q.forward(x.topRows(6), y.topRows(6), cq);
      v.forward(x.bottomRows(7), y.bottomRows(7), cv);
      return col.total();
    };
    const auto x = testing::random_matrix(13, 4, 9);
    Matrix<double> y;
    forward(x, y);
    // the pooled value is the balance loss of the concatenated probabilities and selections
    Matrix<double> probs(13, 5);
    probs << cq.probs, cv.probs;
    IndexMatrix idx(13, 2);
    idx << cq.topk_idx, cv.topk_idx;
    const double pooled = switch_balance_loss<double>(probs, idx, norm);
    CHECK(col.group_balance("layers.0") == Approx(pooled).epsilon(1e-12));
    CHECK(col.balance() == Approx(pooled).epsilon(1e-12));
    CHECK(col.total() == Approx(0.7 * pooled + 0.1 * (cq.aux.z + cv.aux.z)).epsilon(1e-12));
    CHECK(pooled != Approx(cq.aux.balance + cv.aux.balance));  // pooling is not the sum of per-router losses
    const auto r = testing::gradcheck(
        s, x, forward, [&](const Matrix<double>& xx, const Matrix<double>& dy, Matrix<double>& dx) {
          q.backward(xx.topRows(6), cq, dy.topRows(6), MatrixRef<double>(dx.topRows(6)));
          v.backward(xx.bottomRows(7), cv, dy.bottomRows(7), MatrixRef<double>(dx.bottomRows(7)));
        });
    INFO(r.report());
    CHECK(r.ok(1e-6));
    // a router with another E cannot join the group
    auto other = cfg;
    other.n_experts = 4;
    Router<double> w(other);
    w.register_params(s, "layers.0.k.router", rng);
    w.set_collector(&col);
    Router<double>::Cache cw;
    Matrix<double> gw(3, 4);
    CHECK_THROWS_AS(w.forward(testing::random_matrix(3, 4, 1), gw, cw), ConfigError);
  }
}

// adapters/mov.hpp and adapters/ia3.hpp: forward against output-mixed loops (MoV merged == mixed), identity
// at init, attention sites (per token and head), gradients for every gate mode and router input, panels,
// errors.
#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "pemoe/adapters/ia3.hpp"
#include "pemoe/adapters/mov.hpp"
#include "support/distribution.hpp"
#include "support/gradcheck.hpp"
#include "support/helpers.hpp"
#include "support/moe_cases.hpp"
#include "support/raw_reference.hpp"

using namespace pemoe;

namespace {

// Output-mixed MoV: y[n, h, :] = Σ_e g[n(,h), e] · (a[n, h, :] ⊙ L[h, e, :]), every scaled copy formed. The
// vectors are read by raw index from store.values(): `<p>.mov_scaling` is (E, d) at one head, (H, E, d/H)
// otherwise (the same flat layout: L[(h·E + e)·d_head + j]).
Matrix<double> naive_mov_mixed(const ParamStore<double>& s, const std::string& p, const Matrix<double>& a,
                               const Matrix<double>& gates, Index heads, Index E) {
  const Index n = a.rows(), d = a.cols(), dh = d / heads, hg = gates.rows() / n;
  const double* L = testing::raw_param(s, p + ".mov_scaling", heads == 1 ? Shape{E, d} : Shape{heads, E, dh});
  Matrix<double> y = Matrix<double>::Zero(n, d);
  for (Index t = 0; t < n; ++t)
    for (Index h = 0; h < heads; ++h)
      for (Index e = 0; e < E; ++e) {
        const double g = gates(t * hg + (hg == 1 ? 0 : h), e);
        for (Index j = 0; j < dh; ++j) y(t, h * dh + j) += g * a(t, h * dh + j) * L[(h * E + e) * dh + j];
      }
  return y;
}

Matrix<double> linear_out(const Matrix<double>& x, Linear<double>& lin) {
  Matrix<double> h = x * lin.weight().transpose();
  if (lin.config().bias) h.rowwise() += lin.bias().row(0);
  return h;
}

// (N·H, d_head) view of an (N, H·d_head) activation.
Matrix<double> per_head(const Matrix<double>& a, Index heads) {
  return Eigen::Map<const Matrix<double>>(a.data(), a.rows() * heads, a.cols() / heads);
}

}  // namespace

TEST_CASE("MoV: names and shapes at FFN and attention sites, for-ai init") {
  ParamStore<float> s;
  Rng rng(1);
  MoV<float> ffn(LinearConfig{16, 40, false}, MoVConfig::for_ai(30));
  ffn.register_params(s, "block.0.layer.1.DenseReluDense.wo", rng);
  CHECK(s.entry(ffn.scaling_id()).name == "block.0.layer.1.DenseReluDense.wo.mov_scaling");
  CHECK(s.entry(ffn.scaling_id()).shape == Shape{30, 40});
  CHECK(s.entry(ffn.router().weight_id()).shape == Shape{30, 40});  // router reads the activation
  CHECK(ffn.scaling_vectors().isOnes());
  {  // router init N(0, 0.02²), by Kolmogorov-Smirnov against the exact CDF (alpha = 1e-3)
    const auto& e = s.entry(s.id("block.0.layer.1.DenseReluDense.wo.router.weight"));
    const auto w = testing::sample_of(s.values().data() + e.offset, e.size);
    const double crit = testing::ks_critical(w.size());
    CHECK(testing::ks_statistic(w, testing::normal_cdf(0, 0.02)) < crit);
    CHECK(testing::ks_statistic(w, testing::normal_cdf(0, 0.026)) >
          crit);  // told apart from a 30 % wider one
  }
  MoV<float> att(24, MoVConfig::for_ai(5, 4));  // K at an attention site: (N, 4 heads, 6)
  att.register_params(s, "attn.k", rng);
  CHECK(s.entry(att.scaling_id()).shape == Shape{4, 5, 6});
  CHECK(s.entry(att.router().weight_id()).shape == Shape{5, 6});  // one kernel shared across heads
  CHECK(s.num_trainable() == 30 * 40 + 30 * 40 + 4 * 5 * 6 + 5 * 6);
}

TEST_CASE("MoV merged == output-mixed, for every gate mode, FFN and attention sites, every router input") {
  for (GateMode mode : testing::all_gate_modes()) {
    for (Index heads : {1, 3}) {
      for (RouterInput in : {RouterInput::activation, RouterInput::layer_input, RouterInput::external}) {
        INFO(testing::gate_name(mode) << " heads " << heads << " input " << int(in));
        MoVConfig cfg;
        cfg.n_experts = 4;
        cfg.heads = heads;
        cfg.router = testing::router_case(mode, 2);
        cfg.router_input = in;
        cfg.router.d_in = 5;
        cfg.panel_rows = 3;
        ParamStore<double> s;
        Rng rng(2);
        MoV<double> m(LinearConfig{7, 12, true}, cfg);
        m.register_params(s, "fc", rng);
        testing::randomize_params(s, 3);
        const auto x = testing::random_matrix(8, 7, 4);
        const auto u = testing::random_matrix(8 * heads, 5, 5);
        Matrix<double> y(8, 12);
        MoV<double>::Cache c;
        if (in == RouterInput::external)
          m.forward(x, u, y, c);
        else
          m.forward(x, y, c);
        const Matrix<double> a = testing::raw_linear(s, "fc", x, 12);
        const Matrix<double> ru = in == RouterInput::activation    ? per_head(a, heads)
                                  : in == RouterInput::layer_input ? x
                                                                   : u;
        const Matrix<double> g = testing::raw_router_gates(s, "fc.router", ru, 4, mode, 2);
        CHECK(testing::max_abs_diff(c.gates, g) < 1e-13);
        CHECK(testing::max_abs_diff(y, naive_mov_mixed(s, "fc", a, g, heads, 4)) < 1e-12);
      }
    }
  }
}

TEST_CASE("MoV with all vectors 1 is the identity for any router (standalone) / the base linear") {
  for (GateMode mode : testing::all_gate_modes()) {
    INFO(testing::gate_name(mode));
    MoVConfig cfg;
    cfg.n_experts = 5;
    cfg.heads = 2;
    cfg.router = testing::router_case(mode, 3);
    ParamStore<double> s;
    Rng rng(2);
    MoV<double> m(10, cfg);
    m.register_params(s, "v", rng);
    m.router().weight() = testing::random_matrix(5, 5, 9, 3.0);  // a far-from-uniform router
    m.set_training(true);                                        // noise and all
    const auto x = testing::random_matrix(6, 10, 4);
    Matrix<double> y(6, 10);
    MoV<double>::Cache c;
    m.forward(x, y, c);
    if (mode == GateMode::topk_mask || mode == GateMode::switch_top1) {
      // these gates do not sum to 1 (no renormalisation): y = x · Σg, still exact per token-head
      for (Index t = 0; t < 6; ++t)
        for (Index h = 0; h < 2; ++h)
          CHECK(testing::max_abs_diff(y.block(t, h * 5, 1, 5),
                                      c.gates.row(t * 2 + h).sum() * x.block(t, h * 5, 1, 5)) < 1e-14);
    } else {
      CHECK(testing::max_abs_diff(y, x) < 1e-14);
    }
  }
  ParamStore<double> s;
  Rng rng(2);
  MoV<double> m(LinearConfig{6, 9, true}, MoVConfig::for_ai(4));
  m.register_params(s, "fc", rng);
  const auto x = testing::random_matrix(5, 6, 4);
  Matrix<double> y(5, 9);
  MoV<double>::Cache c;
  m.forward(x, y, c);
  CHECK(testing::max_abs_diff(y, testing::raw_linear(s, "fc", x, 9)) < 1e-14);
}

TEST_CASE("MoV gradients pass the checker: every gate mode × router input × FFN/attention site") {
  for (GateMode mode : testing::all_gate_modes()) {
    for (Index heads : {1, 2}) {
      for (RouterInput in : {RouterInput::activation, RouterInput::layer_input, RouterInput::external}) {
        for (bool base : {true, false}) {
          if (in == RouterInput::layer_input && !base) continue;
          DYNAMIC_SECTION(testing::gate_name(mode)
                          << " heads " << heads << " input " << int(in) << " base " << base) {
            MoVConfig cfg;
            cfg.n_experts = 4;
            cfg.heads = heads;
            cfg.router = testing::router_case(mode, 2);
            cfg.router_input = in;
            cfg.router.d_in = 3;
            cfg.router.jitter = in == RouterInput::activation ? 0.1 : 0.0;
            cfg.base_trainable = true;
            cfg.panel_rows = 4;
            ParamStore<double> s;
            Rng rng(2);
            std::optional<MoV<double>> m;
            if (base)
              m.emplace(LinearConfig{5, 8, true}, cfg);
            else
              m.emplace(8, cfg);
            m->register_params(s, "fc", rng);
            testing::randomize_params(s, 3, 0.6);
            m->set_training(true);
            const Index d_in = base ? 5 : 8;
            MoV<double>::Cache c;
            testing::GradcheckResult r;
            testing::GradcheckOptions opt;
            opt.h = 1e-5;  // with h = 1e-6 the round-off of L (~1e-15 / 2h) alone reaches 1e-6 here
            if (in != RouterInput::external) {
              r = testing::gradcheck(
                  s, testing::random_matrix(7, d_in, 4),
                  [&](const Matrix<double>& x, Matrix<double>& y) {
                    y.resize(x.rows(), 8);
                    m->router().set_call_counter(0);
                    m->forward(x, y, c);
                    return m->aux_loss(c);
                  },
                  [&](const Matrix<double>& x, const Matrix<double>& dy, Matrix<double>& dx) {
                    m->backward(x, c, dy, dx);
                  },
                  opt);
            } else {
              const auto x = testing::random_matrix(7, d_in, 4);
              r = testing::gradcheck(
                  s, testing::random_matrix(7 * heads, 3, 6),
                  [&](const Matrix<double>& u, Matrix<double>& y) {
                    y.resize(7, 8);
                    m->router().set_call_counter(0);
                    m->forward(x, u, y, c);
                    return m->aux_loss(c);
                  },
                  [&](const Matrix<double>& u, const Matrix<double>& dy, Matrix<double>& du) {
                    Matrix<double> dx(7, d_in);
                    m->backward(x, u, c, dy, dx, du);
                  },
                  opt);
            }
            INFO(r.report());
            CHECK(r.ok(1e-6));
            CHECK(r.checked > s.num_trainable());
          }
        }
      }
    }
  }
}

TEST_CASE("MoV: panel size does not change results; a batch of one token (E = 1 and 3)") {
  MoVConfig cfg;
  cfg.n_experts = 3;
  cfg.router = testing::router_case(GateMode::noisy_topk, 2);
  ParamStore<double> s;
  Rng rng(2);
  MoV<double> m(LinearConfig{6, 10, true}, cfg);
  m.register_params(s, "fc", rng);
  testing::randomize_params(s, 3);
  m.set_training(true);
  const auto x = testing::random_matrix(11, 6, 4);
  const auto dy = testing::random_matrix(11, 10, 5);
  Matrix<double> y1(11, 10), y2(11, 10), dx1(11, 6), dx2(11, 6);
  MoV<double>::Cache c;
  m.forward(x, y1, c);
  m.backward(x, c, dy, dx1);
  const auto g1 = s.grads();
  MoVConfig cfg2 = cfg;
  cfg2.panel_rows = 2;
  MoV<double> m2(LinearConfig{6, 10, true}, cfg2);
  ParamStore<double> s2;
  m2.register_params(s2, "fc", rng);
  s2.values() = s.values();
  m2.set_training(true);
  m2.forward(x, y2, c);
  m2.backward(x, c, dy, dx2);
  CHECK(testing::max_abs_diff(y1, y2) < 1e-13);
  CHECK(testing::max_abs_diff(dx1, dx2) < 1e-13);
  for (std::size_t i = 0; i < g1.size(); ++i) CHECK(g1[i] == Approx(s2.grads()[i]).margin(1e-12));
  // One token. With E = 1 the gate is the constant 1: the router's gate gradient is zero on both sides (only
  // the z-loss moves it), so that case checks the vectors and dx, not the router; E = 3 (k = 2) checks the
  // router with a single token too.
  for (Index experts : {1, 3}) {
    MoVConfig one;
    one.n_experts = experts;
    one.router = testing::router_case(GateMode::topk_renorm, experts == 1 ? 1 : 2);
    ParamStore<double> s3;
    MoV<double> m3(LinearConfig{4, 5, true}, one);
    m3.register_params(s3, "fc", rng);
    testing::randomize_params(s3, 1);
    const auto r = testing::gradcheck(
        s3, testing::random_matrix(1, 4, 2),
        [&](const Matrix<double>& xx, Matrix<double>& y) {
          y.resize(1, 5);
          m3.forward(xx, y, c);
          return m3.aux_loss(c);
        },
        [&](const Matrix<double>& xx, const Matrix<double>& d, Matrix<double>& dx) {
          m3.backward(xx, c, d, dx);
        });
    INFO("E = " << experts << ": " << r.report());
    CHECK(r.ok(1e-6));
  }
}

TEST_CASE("MoV errors: NaN names the layer's router, wrong shapes name the layer") {
  ParamStore<float> s;
  Rng rng(1);
  MoV<float> m(LinearConfig{8, 12, true}, MoVConfig::for_ai(3, 2));
  m.register_params(s, "enc.0.attn.v", rng);
  Matrix<float> x = Matrix<float>::Ones(2, 8), y(2, 12);
  x(1, 0) = NAN;
  MoV<float>::Cache c;
  CHECK_THROWS_WITH(m.forward(x, y, c), Catch::Contains("Router 'enc.0.attn.v.router'"));
  Matrix<float> x9(2, 9);
  CHECK_THROWS_WITH(m.forward(x9, y, c), "MoV 'enc.0.attn.v': x has 9 features, layer expects 8");
  CHECK_THROWS_AS(MoV<float>(10, MoVConfig::for_ai(3, 4)), ConfigError);  // 10 not divisible by 4 heads
  MoVConfig li = MoVConfig::for_ai(3);
  li.router_input = RouterInput::layer_input;
  CHECK_THROWS_AS(MoV<float>(10, li), ConfigError);  // no layer to take the input of
  MoVConfig neg = MoVConfig::for_ai(3);
  neg.panel_rows = -1;
  CHECK_THROWS_WITH(MoV<float>(10, neg), Catch::Contains("panel_rows must be 0 (whole call) or positive"));
}

// ---- IA3 ----------------------------------------------------------------------------------------

TEST_CASE("IA3: ones init (identity), PEFT name, forward against loops in the three placements") {
  ParamStore<double> s;
  Rng rng(1);
  IA3<double> out(LinearConfig{6, 9, true});
  out.register_params(s, "h.0.attn.c_attn", rng);
  CHECK(s.entry(out.scale_id()).name == "h.0.attn.c_attn.ia3_l");
  CHECK(s.entry(out.scale_id()).shape == Shape{9});
  CHECK(out.scale().isOnes());
  CHECK(s.num_trainable() == 9);
  IA3Config ffc;
  ffc.feedforward = true;
  ffc.panel_rows = 2;
  IA3<double> ff(LinearConfig{6, 9, true}, ffc);
  ff.register_params(s, "h.0.mlp.c_proj", rng);
  CHECK(s.entry(ff.scale_id()).shape == Shape{6});
  IA3<double> alone(6);
  alone.register_params(s, "k", rng);
  const auto x = testing::random_matrix(5, 6, 2);
  Matrix<double> y(5, 9), ya(5, 6);
  IA3<double>::Cache c;
  out.forward(x, y, c);
  CHECK(testing::max_abs_diff(y, linear_out(x, out.base())) < 1e-14);
  testing::randomize_params(s, 4);
  out.forward(x, y, c);
  const Matrix<double> h = linear_out(x, out.base());
  for (Index n = 0; n < 5; ++n)
    for (Index o = 0; o < 9; ++o) CHECK(y(n, o) == Approx(h(n, o) * out.scale()(0, o)).epsilon(1e-13));
  ff.forward(x, y, c);
  Matrix<double> xs = x;
  for (Index n = 0; n < 5; ++n)
    for (Index i = 0; i < 6; ++i) xs(n, i) *= ff.scale()(0, i);
  CHECK(testing::max_abs_diff(y, linear_out(xs, ff.base())) < 1e-12);
  alone.forward(x, ya, c);
  for (Index n = 0; n < 5; ++n)
    for (Index i = 0; i < 6; ++i) CHECK(ya(n, i) == x(n, i) * alone.scale()(0, i));
}

TEST_CASE("IA3 gradients pass the checker (output, feedforward, standalone; frozen and trainable base)") {
  for (int placement = 0; placement < 3; ++placement)
    for (bool base_trainable : {false, true})
      for (Index ntok : {7, 4}) {  // frozen output placement: N > d_in scales W, N <= d_in scales dy
        if (placement == 2 && base_trainable) continue;
        DYNAMIC_SECTION("placement " << placement << " base_trainable " << base_trainable << " N " << ntok) {
          ParamStore<double> s;
          Rng rng(1);
          IA3Config cfg;
          cfg.feedforward = placement == 1;
          cfg.base_trainable = base_trainable;
          cfg.panel_rows = 3;
          std::optional<IA3<double>> l;
          if (placement == 2)
            l.emplace(6);
          else
            l.emplace(LinearConfig{6, 4, true}, cfg);
          l->register_params(s, "fc", rng);
          testing::randomize_params(s, 2);
          const Index d_out = placement == 2 ? 6 : 4;
          IA3<double>::Cache c;
          const auto r = testing::gradcheck(
              s, testing::random_matrix(ntok, 6, 3),
              [&](const Matrix<double>& x, Matrix<double>& y) {
                y.resize(x.rows(), d_out);
                l->forward(x, y, c);
                return 0.0;
              },
              [&](const Matrix<double>& x, const Matrix<double>& dy, Matrix<double>& dx) {
                l->backward(x, c, dy, dx);
              });
          INFO(r.report());
          CHECK(r.ok(1e-6));
          CHECK(r.checked ==
                2 * (ntok * 6 + s.num_trainable()));  // central differences + the twice-backward check
        }
      }
}

TEST_CASE("IA3: NaN in the input propagates to the same output entries (documented; no router to check)") {
  ParamStore<double> s;
  Rng rng(1);
  IA3<double> l(4);
  l.register_params(s, "k", rng);
  Matrix<double> x = testing::random_matrix(2, 4, 1), y(2, 4);
  x(1, 2) = NAN;
  IA3<double>::Cache c;
  l.forward(x, y, c);
  CHECK(std::isnan(y(1, 2)));
  CHECK((y.row(0).array() == y.row(0).array()).all());
}

TEST_CASE("MoV and IA3: row blocks over threads give the same result as one thread") {
  MoVConfig cfg;
  cfg.n_experts = 4;
  cfg.heads = 2;
  cfg.router = testing::router_case(GateMode::topk_renorm, 2);
  cfg.panel_rows = 96;
  ParamStore<double> s;
  Rng rng(2);
  MoV<double> m(LinearConfig{6, 10, true}, cfg);
  m.register_params(s, "fc", rng);
  IA3<double> ia(LinearConfig{6, 10, true});
  ia.register_params(s, "ia", rng);
  testing::randomize_params(s, 3);
  const auto x = testing::random_matrix(300, 6, 4);
  const auto dy = testing::random_matrix(300, 10, 5);
  auto run = [&](int threads, Matrix<double>& y, Matrix<double>& dx, Matrix<double>& yi, Matrix<double>& dxi,
                 AlignedVector<double>& grads) {
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    MoV<double>::Cache c;
    IA3<double>::Cache ci;
    s.zero_grad();
    m.forward(x, y, c);
    m.backward(x, c, dy, dx);
    ia.forward(x, yi, ci);
    ia.backward(x, ci, dy, dxi);
    grads = s.grads();
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
  };
  Matrix<double> y1(300, 10), y3(300, 10), dx1(300, 6), dx3(300, 6), yi1(300, 10), yi3(300, 10), dxi1(300, 6),
      dxi3(300, 6);
  AlignedVector<double> g1, g3;
  run(1, y1, dx1, yi1, dxi1, g1);
  run(3, y3, dx3, yi3, dxi3, g3);
  CHECK(testing::max_abs_diff(y1, y3) < 1e-12);
  CHECK(testing::max_abs_diff(dx1, dx3) < 1e-12);
  CHECK(testing::max_abs_diff(yi1, yi3) < 1e-12);
  CHECK(testing::max_abs_diff(dxi1, dxi3) < 1e-12);
  for (std::size_t i = 0; i < g1.size(); ++i) CHECK(g1[i] == Approx(g3[i]).margin(1e-10));
  const Matrix<double> a = testing::raw_linear(s, "fc", x, 10);
  const Matrix<double> g =
      testing::raw_router_gates(s, "fc.router", per_head(a, 2), 4, GateMode::topk_renorm, 2);
  CHECK(testing::max_abs_diff(y3, naive_mov_mixed(s, "fc", a, g, 2, 4)) < 1e-11);
}

// adapters/molora.hpp and adapters/sparse_lora.hpp: forward against per-expert loops, equivalences
// (E = 1 == LoRA, sparse k = E == soft), gradients for every gate mode, corner cases, errors.
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "pemoe/adapters/lora.hpp"
#include "pemoe/adapters/molora.hpp"
#include "pemoe/adapters/sparse_lora.hpp"
#include "support/distribution.hpp"
#include "support/gradcheck.hpp"
#include "support/helpers.hpp"
#include "support/moe_cases.hpp"
#include "support/raw_reference.hpp"

using namespace pemoe;

namespace {

// y = x Wᵀ + b + s Σ_e g_e (x A_eᵀ) B_eᵀ with every expert's output formed (the papers' form). The
// parameters are read by raw index from store.values() as their PEFT layout says: `<p>.weight` (d_out, d_in),
// `<p>.bias` (d_out), `<p>.lora_A.weight` (E, r, d_in), `<p>.lora_B.weight` (E, d_out, r); nothing comes
// from the layer's accessors.
Matrix<double> naive_mixture(const ParamStore<double>& s, const std::string& p, const Matrix<double>& x,
                             const Matrix<double>& gates, Index d_out, Index r, double scaling) {
  const Index N = x.rows(), d_in = x.cols(), E = gates.cols();
  const double* A = testing::raw_param(s, p + ".lora_A.weight", {E, r, d_in});
  const double* B = testing::raw_param(s, p + ".lora_B.weight", {E, d_out, r});
  Matrix<double> y = testing::raw_linear(s, p, x, d_out);
  for (Index n = 0; n < N; ++n)
    for (Index o = 0; o < d_out; ++o)
      for (Index e = 0; e < E; ++e) {
        if (gates(n, e) == 0.0) continue;
        double oe = 0;
        for (Index j = 0; j < r; ++j) {
          double h = 0;
          for (Index i = 0; i < d_in; ++i) h += x(n, i) * A[(e * r + j) * d_in + i];
          oe += h * B[(e * d_out + o) * r + j];
        }
        y(n, o) += scaling * gates(n, e) * oe;
      }
  return y;
}

LoraExpertsConfig experts_case(Index E, Index r, GateMode mode, Index k) {
  LoraExpertsConfig c;
  c.n_experts = E;
  c.r = r;
  c.alpha = 2.0 * double(r);
  c.router = testing::router_case(mode, k);
  return c;
}

template <class Layer>
testing::GradcheckResult check_layer(ParamStore<double>& s, Layer& l, const Matrix<double>& x, Index d_out,
                                     const testing::GradcheckOptions& opt = {}) {
  typename Layer::Cache c;
  return testing::gradcheck(
      s, x,
      [&](const Matrix<double>& xx, Matrix<double>& y) {
        y.resize(xx.rows(), d_out);
        l.router().set_call_counter(0);
        l.dropout().set_call_counter(0);
        l.forward(xx, y, c);
        return l.aux_loss(c);
      },
      [&](const Matrix<double>& xx, const Matrix<double>& dy, Matrix<double>& dx) {
        l.backward(xx, c, dy, dx);
      },
      opt);
}

// The router input u (n, d_u) is the checked input; the experts' input x (n, d_in) is fixed.
template <class Layer>
testing::GradcheckResult check_external_router(ParamStore<double>& s, Layer& l, Index n, Index d_in,
                                               Index d_u, Index d_out,
                                               const testing::GradcheckOptions& opt = {}) {
  const auto x = testing::random_matrix(n, d_in, 12);
  typename Layer::Cache c;
  return testing::gradcheck(
      s, testing::random_matrix(n, d_u, 13),
      [&](const Matrix<double>& u, Matrix<double>& y) {
        y.resize(n, d_out);
        l.router().set_call_counter(0);
        l.forward(x, u, y, c);
        return l.aux_loss(c);
      },
      [&](const Matrix<double>& u, const Matrix<double>& dy, Matrix<double>& du) {
        Matrix<double> dx(n, d_in);
        l.backward(x, u, c, dy, dx, du);
      },
      opt);
}

// Runs layers a and b forward and backward on the same x and dy (d_out outputs); checks that y and dx agree
// within tol.
template <class A, class B>
void check_same_outputs(A& a, B& b, const Matrix<double>& x, const Matrix<double>& dy, double tol) {
  const Index n = x.rows(), d_in = x.cols(), d_out = dy.cols();
  Matrix<double> y1(n, d_out), y2(n, d_out), dx1(n, d_in), dx2(n, d_in);
  typename A::Cache c1;
  typename B::Cache c2;
  a.forward(x, y1, c1);
  b.forward(x, y2, c2);
  CHECK(testing::max_abs_diff(y1, y2) < tol);
  a.backward(x, c1, dy, dx1);
  b.backward(x, c2, dy, dx2);
  CHECK(testing::max_abs_diff(dx1, dx2) < tol);
}

}  // namespace

TEST_CASE("MoLoRA: names, stacked shapes, for-ai and MoLA presets") {
  ParamStore<float> s;
  Rng rng(1);
  MoLoRA<float> m({64, 48, true}, LoraExpertsConfig::for_ai(10, 4));
  m.register_params(s, "h.0.attn.q", rng);
  CHECK(s.entry(m.experts().A_id()).name == "h.0.attn.q.lora_A.weight");
  CHECK(s.entry(m.experts().A_id()).shape == Shape{10, 4, 64});
  CHECK(s.entry(m.experts().B_id()).shape == Shape{10, 48, 4});
  CHECK(s.entry(m.router().weight_id()).name == "h.0.attn.q.router.weight");
  CHECK(s.entry(m.router().weight_id()).shape == Shape{10, 64});
  CHECK(s.num_trainable() == 10 * 4 * (64 + 48) + 10 * 64);
  CHECK(m.scaling() == 4.0f);
  CHECK(m.experts().B_stack().isZero());
  // initialisation, by Kolmogorov-Smirnov against the exact CDF (alpha = 1e-3): A ~ N(0, 0.02²), router too
  auto ks = [&s](const std::string& name, const std::function<double(double)>& cdf) {
    const auto& e = s.entry(s.id(name));
    return testing::ks_statistic(testing::sample_of(s.values().data() + e.offset, e.size), cdf) /
           testing::ks_critical(std::size_t(e.size));  // < 1: accepted
  };
  CHECK(ks("h.0.attn.q.lora_A.weight", testing::normal_cdf(0, 0.02)) < 1);
  CHECK(ks("h.0.attn.q.lora_A.weight", testing::normal_cdf(0, 0.025)) >
        1);  // a 25 % wider normal is told apart
  CHECK(ks("h.0.attn.q.lora_A.weight", testing::uniform_cdf(-0.02 * std::sqrt(3.0), 0.02 * std::sqrt(3.0))) >
        1);
  CHECK(ks("h.0.attn.q.router.weight", testing::normal_cdf(0, 0.02)) < 1);
  CHECK(m.router().config().mode == GateMode::soft);
  const auto mola = LoraExpertsConfig::mola();
  CHECK(mola.r == 8);
  CHECK(mola.alpha == 16.0);
  CHECK(mola.scaling() == 2.0);
  CHECK(mola.dropout == 0.05);
  CHECK(mola.router.mode == GateMode::topk_renorm);
  CHECK(mola.router.top_k == 2);
  SparseLoRAExperts<float> sp({64, 48, true}, mola);
  sp.register_params(s, "h.0.attn.k", rng);
  // kaiming-uniform(√5): U(±1/√64), for A and the router
  CHECK(ks("h.0.attn.k.lora_A.weight", testing::uniform_cdf(-1.0 / 8, 1.0 / 8)) < 1);
  CHECK(ks("h.0.attn.k.lora_A.weight", testing::uniform_cdf(-1.15 / 8, 1.15 / 8)) > 1);
  CHECK(ks("h.0.attn.k.lora_A.weight", testing::normal_cdf(0, 1.0 / 8 / std::sqrt(3.0))) > 1);
  CHECK(ks("h.0.attn.k.router.weight", testing::uniform_cdf(-1.0 / 8, 1.0 / 8)) < 1);
}

TEST_CASE("MoLoRA forward equals per-expert outputs mixed by the router, for every gate mode") {
  for (GateMode mode : testing::all_gate_modes()) {
    INFO(testing::gate_name(mode));
    ParamStore<double> s;
    Rng rng(2);
    MoLoRA<double> m({7, 5, true}, experts_case(4, 3, mode, 2));
    m.register_params(s, "fc", rng);
    testing::randomize_params(s, 3);
    auto x = testing::random_matrix(6, 7, 4);
    Matrix<double> y(6, 5);
    MoLoRA<double>::Cache c;
    m.forward(x, y, c);
    const Matrix<double> g = testing::raw_router_gates(s, "fc.router", x, 4, mode, 2);
    CHECK(testing::max_abs_diff(c.gates, g) < 1e-13);
    CHECK(testing::max_abs_diff(y, naive_mixture(s, "fc", x, g, 5, 3, 2.0)) < 1e-12);
  }
}

TEST_CASE("SparseLoRAExperts forward equals the selected experts mixed, for every selecting gate mode") {
  for (GateMode mode : testing::all_gate_modes()) {
    if (mode == GateMode::soft) continue;
    INFO(testing::gate_name(mode));
    ParamStore<double> s;
    Rng rng(2);
    SparseLoRAExperts<double> m({7, 5, true}, experts_case(5, 3, mode, 2));
    m.register_params(s, "fc", rng);
    testing::randomize_params(s, 3);
    auto x = testing::random_matrix(11, 7, 4);
    Matrix<double> y(11, 5);
    SparseLoRAExperts<double>::Cache c;
    m.forward(x, y, c);
    const Matrix<double> g = testing::raw_router_gates(s, "fc.router", x, 5, mode, 2);
    CHECK(testing::max_abs_diff(c.gates, g) < 1e-13);
    CHECK(testing::max_abs_diff(y, naive_mixture(s, "fc", x, g, 5, 3, 2.0)) < 1e-12);
    Index assigned = 0;
    for (Index e = 0; e < 5; ++e) assigned += SparseLoRAExperts<double>::group_size(c, e);
    CHECK(assigned == 11 * m.router().config().selected());
  }
}

TEST_CASE("MoLoRA with E = 1 equals LoRA with the same A and B") {
  ParamStore<double> s1, s2;
  Rng rng(5);
  LoraExpertsConfig c = experts_case(1, 3, GateMode::soft, 1);
  c.router.aux = {};
  MoLoRA<double> m({6, 4, true}, c);
  m.register_params(s1, "fc", rng);
  testing::randomize_params(s1, 6);
  LoRA<double> l({6, 4, true}, LoraConfig{3, c.alpha});
  l.register_params(s2, "fc", rng);
  l.base().weight() = m.base().weight();
  l.base().bias() = m.base().bias();
  l.lora_A() = m.experts().A_cat();
  l.lora_B() = m.experts().B(0);
  check_same_outputs(m, l, testing::random_matrix(5, 6, 7), testing::random_matrix(5, 4, 8), 1e-13);
  CHECK(testing::max_abs_diff(MatrixMap<double>(s1.grad(m.experts().A_id()), 3, 6),
                              MatrixMap<double>(s2.grad(l.lora_A_id()), 3, 6)) < 1e-13);
  CHECK(testing::max_abs_diff(MatrixMap<double>(s1.grad(m.experts().B_id()), 4, 3),
                              MatrixMap<double>(s2.grad(l.lora_B_id()), 4, 3)) < 1e-13);
  CHECK(MatrixMap<double>(s1.grad(m.router().weight_id()), 1, 6).isZero());  // a gate of constant 1
}

TEST_CASE("SparseLoRAExperts with k = E (topk_renorm) equals soft MoLoRA, forward and backward") {
  struct Size {
    Index e, r, d_in, d_out, n;
  };
  // The second size selects E·r = 512 rows per token (128 register blocks of rows), and d_out = 100 ends in
  // a partial packet step and scalar columns at any SIMD width (d_in = 37 likewise).
  for (const Size z : {Size{4, 2, 6, 5, 9}, Size{16, 32, 37, 100, 13}}) {
    DYNAMIC_SECTION("E " << z.e << " r " << z.r << " d_in " << z.d_in << " d_out " << z.d_out) {
      ParamStore<double> s1, s2;
      Rng rng(5);
      auto cs = experts_case(z.e, z.r, GateMode::topk_renorm, z.e);
      auto cm = experts_case(z.e, z.r, GateMode::soft, 1);
      cs.router.aux = {};
      cm.router.aux = {};
      SparseLoRAExperts<double> sp({z.d_in, z.d_out, true}, cs);
      MoLoRA<double> so({z.d_in, z.d_out, true}, cm);
      sp.register_params(s1, "fc", rng);
      so.register_params(s2, "fc", rng);
      testing::randomize_params(s1, 9);
      s2.values() = s1.values();
      check_same_outputs(sp, so, testing::random_matrix(z.n, z.d_in, 1),
                         testing::random_matrix(z.n, z.d_out, 2), 1e-12);
      REQUIRE(s1.grads().size() == s2.grads().size());
      for (std::size_t i = 0; i < s1.grads().size(); ++i)
        CHECK(s1.grads()[i] == Approx(s2.grads()[i]).margin(1e-12));
    }
  }
}

TEST_CASE("MoLoRA gradients (experts, router, aux losses, dx) pass the checker for every gate mode") {
  for (GateMode mode : testing::all_gate_modes()) {
    for (int variant = 0; variant < 3;
         ++variant) {  // 0 plain, 1 dropout + trainable base, 2 external router input
      DYNAMIC_SECTION(testing::gate_name(mode) << " variant " << variant) {
        auto cfg = experts_case(4, 2, mode, 2);
        if (variant == 1) {
          cfg.dropout = 0.3;
          cfg.base_trainable = true;
        }
        if (variant == 2) {
          cfg.router_input = RouterInput::external;
          cfg.router.d_in = 3;
        }
        ParamStore<double> s;
        Rng rng(8);
        MoLoRA<double> m({6, 5, true}, cfg);
        m.register_params(s, "fc", rng);
        testing::randomize_params(s, 10, 0.6);
        m.set_training(true);
        const auto x = testing::random_matrix(7, 6, 11);
        testing::GradcheckResult r;
        if (variant != 2) {
          r = check_layer(s, m, x, 5);
        } else {
          r = check_external_router(s, m, 7, 6, 3, 5);
        }
        INFO(r.report());
        CHECK(r.ok(1e-6));
        CHECK(r.checked > s.num_trainable());
      }
    }
  }
}

TEST_CASE("SparseLoRAExperts gradients pass the checker for every selecting gate mode") {
  for (GateMode mode : testing::all_gate_modes()) {
    if (mode == GateMode::soft) continue;
    for (int variant = 0; variant < 3; ++variant) {  // 0 plain, 1 dropout + trainable base, 2 external router
      DYNAMIC_SECTION(testing::gate_name(mode) << " variant " << variant) {
        auto cfg = experts_case(5, 2, mode, 2);
        if (variant == 1) {
          cfg.dropout = 0.3;
          cfg.base_trainable = true;
        }
        if (variant == 2) {
          cfg.router_input = RouterInput::external;
          cfg.router.d_in = 3;
        }
        ParamStore<double> s;
        Rng rng(8);
        SparseLoRAExperts<double> m({6, 5, true}, cfg);
        m.register_params(s, "fc", rng);
        testing::randomize_params(s, 10, 0.6);
        m.set_training(true);
        // h = 1e-5: with the default 1e-6 the rounding of the two losses (about 1e-15) divided by 2h is
        // 1e-9, the size of |analytic − numeric| a 1e-6 tolerance allows for gradients near 1e-3; the
        // truncation error h²·f'''/6 stays far below it.
        testing::GradcheckOptions opt;
        opt.h = 1e-5;
        testing::GradcheckResult r;
        if (variant != 2) {
          r = check_layer(s, m, testing::random_matrix(9, 6, 11), 5, opt);
        } else {
          r = check_external_router(s, m, 9, 6, 3, 5, opt);
        }
        INFO(r.report());
        CHECK(r.ok(1e-6));
      }
    }
  }
}

TEST_CASE("SparseLoRAExperts corner cases: an expert with no token, E = 1, r = 1, one token, exact ties") {
  SECTION("expert 3 receives no token: zero gradient, still passes the checker") {
    auto cfg = experts_case(4, 2, GateMode::topk_renorm, 2);
    cfg.router.bias = true;
    ParamStore<double> s;
    Rng rng(1);
    SparseLoRAExperts<double> m({5, 4, true}, cfg);
    m.register_params(s, "fc", rng);
    testing::randomize_params(s, 2);
    s.matrix(m.router().bias_id())(0, 3) = -50.0;  // never in the top-2
    SparseLoRAExperts<double>::Cache c;
    const auto x = testing::random_matrix(6, 5, 3);
    Matrix<double> y(6, 4);
    m.forward(x, y, c);
    CHECK(SparseLoRAExperts<double>::group_size(c, 3) == 0);
    const auto r = check_layer(s, m, x, 4);
    INFO(r.report());
    CHECK(r.ok(1e-6));
    s.zero_grad();
    m.forward(x, y, c);
    m.backward(x, c, testing::random_matrix(6, 4, 9));
    CHECK(MatrixMap<double>(s.grad(m.experts().A_id()), 8, 5).middleRows(6, 2).isZero());
    CHECK(MatrixMap<double>(s.grad(m.experts().B_id()), 16, 2).middleRows(12, 4).isZero());
  }
  SECTION("E = 1, k = 1, r = 1") {
    // Not a router check: with one expert the gate is the constant 1, so the gate part of the router's
    // gradient is zero on both sides (only the z-loss moves the router). This checks the expert path and dx
    // at the smallest sizes; the router is checked with E >= 2 above.
    ParamStore<double> s;
    Rng rng(1);
    SparseLoRAExperts<double> m({5, 4, true}, experts_case(1, 1, GateMode::topk_renorm, 1));
    m.register_params(s, "fc", rng);
    testing::randomize_params(s, 2);
    const auto x = testing::random_matrix(3, 5, 3);
    Matrix<double> y(3, 4);
    SparseLoRAExperts<double>::Cache c;
    m.forward(x, y, c);
    CHECK(c.gates.isOnes());
    CHECK(testing::max_abs_diff(
              y, naive_mixture(s, "fc", x,
                               testing::raw_router_gates(s, "fc.router", x, 1, GateMode::topk_renorm, 1), 4,
                               1, 2.0)) < 1e-12);
    const auto r = check_layer(s, m, x, 4);
    INFO(r.report());
    CHECK(r.ok(1e-6));
  }
  SECTION("a batch of one token") {
    for (GateMode mode : testing::all_gate_modes()) {
      if (mode == GateMode::soft) continue;
      ParamStore<double> s;
      Rng rng(1);
      SparseLoRAExperts<double> m({5, 4, true}, experts_case(3, 2, mode, 2));
      m.register_params(s, "fc", rng);
      testing::randomize_params(s, 2);
      const auto r = check_layer(s, m, testing::random_matrix(1, 5, 3), 4);
      INFO(testing::gate_name(mode) << ": " << r.report());
      CHECK(r.ok(1e-6));
    }
  }
  SECTION("exact ties: zero router weights select experts 0 and 1 for every token") {
    ParamStore<double> s;
    Rng rng(1);
    SparseLoRAExperts<double> m({5, 4, true}, experts_case(4, 2, GateMode::topk_renorm, 2));
    m.register_params(s, "fc", rng);
    testing::randomize_params(s, 2);
    m.router().weight().setZero();
    const auto x = testing::random_matrix(5, 5, 3);
    Matrix<double> y(5, 4);
    SparseLoRAExperts<double>::Cache c;
    m.forward(x, y, c);
    CHECK(SparseLoRAExperts<double>::group_size(c, 0) == 5);
    CHECK(SparseLoRAExperts<double>::group_size(c, 1) == 5);
    CHECK(SparseLoRAExperts<double>::group_size(c, 2) == 0);
    CHECK((c.gates.leftCols(2).array() == 0.5).all());
    const Matrix<double> g = testing::raw_router_gates(s, "fc.router", x, 4, GateMode::topk_renorm, 2);
    CHECK(c.gates == g);
    CHECK(testing::max_abs_diff(y, naive_mixture(s, "fc", x, g, 4, 2, 2.0)) < 1e-12);
  }
}

TEST_CASE("MoLoRA corner cases: r = 1, k = E for topk modes, one token") {
  for (GateMode mode : {GateMode::topk_mask, GateMode::topk_renorm, GateMode::noisy_topk}) {
    ParamStore<double> s;
    Rng rng(1);
    MoLoRA<double> m({4, 3, true}, experts_case(3, 1, mode, 3));
    m.register_params(s, "fc", rng);
    testing::randomize_params(s, 2);
    m.set_training(true);
    const auto r = check_layer(s, m, testing::random_matrix(1, 4, 3), 3);
    INFO(testing::gate_name(mode) << ": " << r.report());
    CHECK(r.ok(1e-6));
  }
}

TEST_CASE("MoE adapters: NaN input is a NumericError naming the layer; config and shape errors") {
  ParamStore<float> s;
  Rng rng(1);
  MoLoRA<float> m({8, 4, true}, LoraExpertsConfig::for_ai(3, 2));
  m.register_params(s, "h.2.mlp.wi", rng);
  SparseLoRAExperts<float> sp({8, 4, true}, LoraExpertsConfig::mola(3, 2, 2));
  sp.register_params(s, "h.2.mlp.wo", rng);
  Matrix<float> x = Matrix<float>::Ones(3, 8), y(3, 4);
  x(2, 5) = NAN;
  MoLoRA<float>::Cache c;
  SparseLoRAExperts<float>::Cache cs;
  CHECK_THROWS_WITH(m.forward(x, y, c),
                    Catch::Contains("Router 'h.2.mlp.wi.router'") && Catch::Contains("token 2"));
  CHECK_THROWS_AS(sp.forward(x, y, cs), NumericError);
  Matrix<float> x7(3, 7);
  CHECK_THROWS_WITH(m.forward(x7, y, c), "MoLoRA 'h.2.mlp.wi': x has 7 features, layer expects 8");
  LoraExpertsConfig soft = LoraExpertsConfig::for_ai(3, 2);
  CHECK_THROWS_AS(SparseLoRAExperts<float>({8, 4, true}, soft), ConfigError);
  soft.router_input = RouterInput::activation;
  CHECK_THROWS_AS(MoLoRA<float>({8, 4, true}, soft), ConfigError);
  auto topk = LoraExpertsConfig::mola(3, 4);
  SparseLoRAExperts<float> bad({8, 4, true}, topk);
  CHECK_THROWS_AS(bad.register_params(s, "bad", rng), ConfigError);
}

TEST_CASE("SparseLoRAExperts: token blocks over threads give the same result as one block") {
  ParamStore<double> s;
  Rng rng(4);
  auto cfg = experts_case(6, 3, GateMode::topk_renorm, 2);
  SparseLoRAExperts<double> m({10, 7, true}, cfg);
  m.register_params(s, "fc", rng);
  testing::randomize_params(s, 5);
  const auto x = testing::random_matrix(400, 10, 6);
  const auto dy = testing::random_matrix(400, 7, 7);
  auto run = [&](int threads, Matrix<double>& y, Matrix<double>& dx, AlignedVector<double>& grads,
                 int& blocks) {
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    SparseLoRAExperts<double>::Cache c;
    s.zero_grad();
    m.forward(x, y, c);
    m.backward(x, c, dy, dx);
    grads = s.grads();
    blocks = c.blocks;
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
  };
  Matrix<double> y1(400, 7), y3(400, 7), dx1(400, 10), dx3(400, 10);
  AlignedVector<double> g1, g3;
  int b1 = 0, b3 = 0;
  run(1, y1, dx1, g1, b1);
  run(3, y3, dx3, g3, b3);
  CHECK(b1 == 1);
#ifdef _OPENMP
  CHECK(b3 == 3);
#endif
  CHECK(testing::max_abs_diff(y1, y3) < 1e-12);
  CHECK(testing::max_abs_diff(dx1, dx3) < 1e-12);
  for (std::size_t i = 0; i < g1.size(); ++i) CHECK(g1[i] == Approx(g3[i]).margin(1e-11));
  const Matrix<double> g = testing::raw_router_gates(s, "fc.router", x, 6, GateMode::topk_renorm, 2);
  CHECK(testing::max_abs_diff(y3, naive_mixture(s, "fc", x, g, 7, 3, 2.0)) < 1e-11);
}

TEMPLATE_TEST_CASE(
    "Selected-row kernels equal the naive sums; tiles of 1 to 4 tokens give each token its own bits", "",
    float, double) {
  // n: below a packet, a packet and a tail, several 4-packet steps and a tail; count: below, at and above a
  // register block of rows (2 or 4); distinct rows in a scattered order, as a token's selected set has.
  const Index kRows = 19;
  for (const Index n : {Index(1), Index(7), Index(37), Index(100)})
    for (const Index count : {Index(1), Index(3), Index(5), Index(16)}) {
      INFO("n " << n << " count " << count);
      const Index ld = detail::selected_rows_ld<TestType>(n);
      REQUIRE(ld >= n);
      Matrix<TestType> R = Matrix<TestType>::Zero(kRows, ld);
      R.leftCols(n) = testing::random_matrix<TestType>(kRows, n, 21);
      const Matrix<TestType> V = testing::random_matrix<TestType>(4, n, 22);
      const Matrix<TestType> c = testing::random_matrix<TestType>(4, count, 23);
      std::vector<Index> row(static_cast<std::size_t>(count));
      for (Index p = 0; p < count; ++p) row[static_cast<std::size_t>(p)] = (3 * p + 1) % kRows;
      const Matrix<TestType> Y0 = testing::random_matrix<TestType>(4, n, 24);
      // naive: Y += c·R_sel, dots = V·R_selᵀ, G_sel += cᵀ·V
      Matrix<TestType> R_sel(count, n);
      for (Index p = 0; p < count; ++p) R_sel.row(p) = R.row(row[static_cast<std::size_t>(p)]).leftCols(n);
      const Matrix<TestType> y_want = Y0 + c * R_sel, dots_want = V * R_sel.transpose();
      Matrix<TestType> g_want = Matrix<TestType>::Zero(kRows, n);
      for (Index p = 0; p < count; ++p)
        g_want.row(row[static_cast<std::size_t>(p)]) += c.col(p).transpose() * V;
      const TestType tol = std::is_same<TestType, float>::value ? TestType(1e-4) : TestType(1e-12);

      Matrix<TestType> y4 = Y0, y1 = Y0, dots4 = Matrix<TestType>::Zero(4, count), dots1 = dots4;
      Matrix<TestType> g4 = Matrix<TestType>::Zero(kRows, ld), g1 = g4;
      TestType* yp[4];
      const TestType* vp[4];
      for (int t = 0; t < 4; ++t) {
        yp[t] = &y4(t, 0);
        vp[t] = &V(t, 0);
      }
      detail::add_selected_rows<4, TestType>(R.data(), ld, row.data(), count, c.data(), count, n, yp);
      detail::dot_and_accumulate_selected_rows<4, TestType>(
          vp, n, R.data(), ld, row.data(), count, dots4.data(), count, g4.data(), ld, c.data(), count);
      {  // the same work as tiles of 3 and 1 tokens, and of 2 and 2
        Matrix<TestType> y31 = Y0, y22 = Y0, d31 = Matrix<TestType>::Zero(4, count), d22 = d31;
        Matrix<TestType> g31 = Matrix<TestType>::Zero(kRows, ld), g22 = g31;
        TestType* y31p[4] = {&y31(0, 0), &y31(1, 0), &y31(2, 0), &y31(3, 0)};
        TestType* y22p[4] = {&y22(0, 0), &y22(1, 0), &y22(2, 0), &y22(3, 0)};
        detail::add_selected_rows<3, TestType>(R.data(), ld, row.data(), count, c.data(), count, n, y31p);
        detail::add_selected_rows<1, TestType>(R.data(), ld, row.data(), count, &c(3, 0), count, n, y31p + 3);
        detail::add_selected_rows<2, TestType>(R.data(), ld, row.data(), count, c.data(), count, n, y22p);
        detail::add_selected_rows<2, TestType>(R.data(), ld, row.data(), count, &c(2, 0), count, n, y22p + 2);
        detail::dot_and_accumulate_selected_rows<3, TestType>(
            vp, n, R.data(), ld, row.data(), count, d31.data(), count, g31.data(), ld, c.data(), count);
        detail::dot_and_accumulate_selected_rows<1, TestType>(
            vp + 3, n, R.data(), ld, row.data(), count, &d31(3, 0), count, g31.data(), ld, &c(3, 0), count);
        detail::dot_and_accumulate_selected_rows<2, TestType>(
            vp, n, R.data(), ld, row.data(), count, d22.data(), count, g22.data(), ld, c.data(), count);
        detail::dot_and_accumulate_selected_rows<2, TestType>(
            vp + 2, n, R.data(), ld, row.data(), count, &d22(2, 0), count, g22.data(), ld, &c(2, 0), count);
        CHECK(y31 == y4);
        CHECK(y22 == y4);
        CHECK(d31 == dots4);
        CHECK(d22 == dots4);
        CHECK(g31 == g4);
        CHECK(g22 == g4);
      }
      for (int t = 0; t < 4; ++t) {  // the same work one token at a time
        TestType* y = &y1(t, 0);
        const TestType* v = &V(t, 0);
        detail::add_selected_rows<1, TestType>(R.data(), ld, row.data(), count, &c(t, 0), count, n, &y);
        detail::dot_and_accumulate_selected_rows<1, TestType>(
            &v, n, R.data(), ld, row.data(), count, &dots1(t, 0), count, g1.data(), ld, &c(t, 0), count);
      }
      CHECK(testing::max_abs_diff(y4, y_want) < tol);
      CHECK(testing::max_abs_diff(dots4, dots_want) < tol);
      CHECK(testing::max_abs_diff(Matrix<TestType>(g4.leftCols(n)), g_want) < tol);
      CHECK(g4.rightCols(ld - n).isZero());  // the padding is never written
      CHECK(y4 == y1);
      CHECK(dots4 == dots1);
      CHECK(g4 == g1);

      Matrix<TestType> only_dots = Matrix<TestType>::Zero(4, count),
                       only_g = Matrix<TestType>::Zero(kRows, ld);
      detail::dot_and_accumulate_selected_rows<4, TestType>(vp, n, R.data(), ld, row.data(), count,
                                                            only_dots.data(), count, nullptr, 0, nullptr, 0);
      detail::dot_and_accumulate_selected_rows<4, TestType>(vp, n, R.data(), ld, row.data(), count, nullptr,
                                                            0, only_g.data(), ld, c.data(), count);
      CHECK(only_dots == dots4);
      CHECK(only_g == g4);

      // write-only form: y's old contents (NaN here) are never read, y = c·R_sel
      Matrix<TestType> y_write = Matrix<TestType>::Constant(4, n, std::numeric_limits<TestType>::quiet_NaN());
      TestType* ywp[4] = {&y_write(0, 0), &y_write(1, 0), &y_write(2, 0), &y_write(3, 0)};
      detail::add_selected_rows<4, TestType, false>(R.data(), ld, row.data(), count, c.data(), count, n, ywp);
      CHECK(y_write.allFinite());
      CHECK(testing::max_abs_diff(y_write, Matrix<TestType>(c * R_sel)) < tol);
    }
}

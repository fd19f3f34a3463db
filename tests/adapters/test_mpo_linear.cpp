// adapters/mpo_linear.hpp: names and shapes, forward against a naive loop, exact load_dense, gradients
// (all cores, frozen subsets, truncated, padded), errors.
#include <catch2/catch.hpp>
#include <cmath>

#include "pemoe/adapters/mpo_linear.hpp"
#include "pemoe/core/param_select.hpp"
#include "pemoe/mpo/reconstruct.hpp"
#include "support/gradcheck.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace {
MpoLinearConfig small_config() {
  MpoLinearConfig c;
  c.d_in = 8;
  c.d_out = 12;
  c.shape = MpoShape{{2, 3, 2}, {2, 2, 2}};
  return c;
}
}  // namespace

TEST_CASE("MpoLinear: parameter names, shapes, nn.Linear-like init") {
  ParamStore<float> s;
  Rng rng(1);
  MpoLinear<float> l(small_config());
  l.register_params(s, "h.0.mlp.c_fc", rng);
  CHECK(s.entry(l.core_id(0)).name == "h.0.mlp.c_fc.mpo.core_0");
  CHECK(s.entry(l.core_id(0)).shape == Shape{1, 2, 2, 4});
  CHECK(s.entry(l.core_id(1)).shape == Shape{4, 3, 2, 4});
  CHECK(s.entry(l.core_id(2)).shape == Shape{4, 2, 2, 1});
  CHECK(l.central_id() == l.core_id(1));
  CHECK(s.contains("h.0.mlp.c_fc.bias"));
  CHECK(s.num_trainable() == 16 + 96 + 16 + 12);
  const Matrix<float> W = l.weight();
  CHECK(W.cwiseAbs().maxCoeff() <= 1.0f / std::sqrt(8.0f) + 1e-5f);  // kaiming-uniform(√5) bound, exact MPO
  CHECK(W.cwiseAbs().maxCoeff() > 0.2f);
  // T5-base sizes: the proposed shape and the counts of spec §1.5 (no store needed)
  MpoLinearConfig t5;
  t5.d_in = 768;
  t5.d_out = 3072;
  MpoLinear<float> big(t5);
  CHECK(big.config().shape == (MpoShape{{4, 4, 8, 6, 4}, {3, 4, 4, 4, 4}}));
  CHECK(big.config().shape.num_params(big.bond_dims()) == 2544016);
  MpoLinearConfig frozen = small_config();
  frozen.frozen_cores = {1};
  ParamStore<float> s2;
  MpoLinear<float> lf(frozen);
  lf.register_params(s2, "fc", rng);
  CHECK_FALSE(s2.trainable(lf.central_id()));
  CHECK(s2.num_trainable() == 16 + 16 + 12);
}

TEST_CASE("MpoLinear forward equals x·reconstruct(cores)ᵀ + b as a loop; load_dense is exact") {
  ParamStore<double> s;
  Rng rng(2);
  MpoLinear<double> l(small_config());
  l.register_params(s, "fc", rng);
  testing::randomize_params(s, 3);
  const Matrix<double> W = reconstruct(l.to_mpo());
  const Matrix<double> b = s.matrix(l.bias_id());
  const auto x = testing::random_matrix(5, 8, 4);
  Matrix<double> y(5, 12);
  MpoLinear<double>::Cache c;
  l.forward(x, y, c);
  Matrix<double> ref(5, 12);
  for (Index n = 0; n < 5; ++n)
    for (Index o = 0; o < 12; ++o) {
      double acc = b(0, o);
      for (Index i = 0; i < 8; ++i) acc += x(n, i) * W(o, i);
      ref(n, o) = acc;
    }
  CHECK(testing::max_abs_diff(y, ref) < 1e-12);
  const auto W2 = testing::random_matrix(12, 8, 5);
  CHECK(l.load_dense(W2) == 0.0);
  CHECK(testing::max_abs_diff(l.weight(), W2) < 1e-12);
  ParamStore<float> sf;
  MpoLinear<float> lf(small_config());
  lf.register_params(sf, "fc", rng);
  const Matrix<float> W2f = W2.cast<float>();
  lf.load_dense(W2f);
  CHECK(testing::max_abs_diff(lf.weight(), W2f) < 1e-5);
}

TEST_CASE("MpoLinear gradients pass the checker in double (all cores, frozen subsets, truncated, padded)") {
  struct Case {
    const char* what;
    MpoLinearConfig cfg;
    const char* freeze;  // regex frozen after registration, or nullptr
  };
  MpoLinearConfig central_frozen = small_config();
  central_frozen.frozen_cores = {1};
  MpoLinearConfig truncated = small_config();
  truncated.max_bond = 2;
  MpoLinearConfig padded;
  padded.d_in = 5;
  padded.d_out = 7;
  padded.n_cores = 3;
  padded.bias = false;
  MpoLinearConfig five;
  five.d_in = 8;
  five.d_out = 12;
  five.shape = MpoShape{{1, 2, 3, 2, 1}, {2, 1, 2, 1, 2}};
  for (const Case& cs :
       {Case{"all cores", small_config(), nullptr}, Case{"central frozen", central_frozen, nullptr},
        Case{"only the central trains", small_config(), R"(core_[02]|bias)"},
        Case{"max_bond 2", truncated, nullptr}, Case{"padded 7x5", padded, nullptr},
        Case{"five cores", five, nullptr}}) {
    SECTION(cs.what) {
      ParamStore<double> s;
      Rng rng(1);
      MpoLinear<double> l(cs.cfg);
      l.register_params(s, "fc", rng);
      testing::randomize_params(s, 9);
      if (cs.freeze) set_trainable(s, cs.freeze, false);
      MpoLinear<double>::Cache c;
      const Index din = cs.cfg.d_in, dout = cs.cfg.d_out;
      const auto r = testing::gradcheck(
          s, testing::random_matrix(4, din, 2),
          [&](const Matrix<double>& x, Matrix<double>& y) {
            y.resize(x.rows(), dout);
            l.forward(x, y, c);
            return 0.0;
          },
          [&](const Matrix<double>& x, const Matrix<double>& dy, Matrix<double>& dx) {
            l.backward(x, c, dy, dx);
          });
      INFO(r.report());
      CHECK(r.ok(1e-6));
      CHECK(r.checked ==
            2 * (4 * din + s.num_trainable()));  // central differences + the twice-backward check
    }
  }
}

TEST_CASE("MpoLinear errors name the site and the sizes") {
  ParamStore<float> s;
  Rng rng(3);
  MpoLinear<float> l(small_config());
  l.register_params(s, "h.0.mlp.c_fc", rng);
  Matrix<float> x(2, 7), y(2, 12);
  MpoLinear<float>::Cache c;
  try {
    l.forward(x, y, c);
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()) == "MpoLinear 'h.0.mlp.c_fc': x has 7 features, layer expects 8");
  }
  MpoLinearConfig bad = small_config();
  bad.shape = MpoShape{{2, 2, 2}, {2, 2, 2}};  // 8 rows cannot hold 12
  CHECK_THROWS_AS(MpoLinear<float>(bad), ConfigError);
  MpoLinearConfig badcore = small_config();
  badcore.frozen_cores = {3};
  CHECK_THROWS_AS(MpoLinear<float>(badcore), ConfigError);
  MpoLinear<float> unbound(small_config());
  CHECK_THROWS_AS(unbound.weight(), ConfigError);
}

TEST_CASE("MpoLinear outside training contracts x through small-bond cores; same output and gradients") {
  MpoLinearConfig cfg;
  cfg.d_in = 256;
  cfg.d_out = 256;
  cfg.shape = MpoShape{{8, 4, 8}, {8, 4, 8}};
  cfg.max_bond = 2;
  ParamStore<double> s;
  Rng rng(4);
  MpoLinear<double> l(cfg);
  l.register_params(s, "fc", rng);
  testing::randomize_params(s, 5);
  REQUIRE(mpo_apply_cost(cfg.shape, l.bond_dims(), 256, 256, 2).best == MpoApplyPath::contraction);
  const auto x = testing::random_matrix(2, 256, 6), dy = testing::random_matrix(2, 256, 7);
  Matrix<double> y_eval(2, 256), y_train(2, 256), dx_eval(2, 256), dx_train(2, 256);
  MpoLinear<double>::Cache ce, ct;
  CHECK_FALSE(l.training());
  l.forward(x, y_eval, ce);
  CHECK(ce.W.size() == 0);  // contracted, W never formed
  s.zero_grad();
  l.backward(x, ce, dy, dx_eval);
  const auto g_eval = s.grads();
  l.set_training(true);
  l.forward(x, y_train, ct);
  CHECK(ct.W.rows() == 256);
  s.zero_grad();
  l.backward(x, ct, dy, dx_train);
  CHECK(testing::max_abs_diff(y_eval, y_train) < 1e-10);
  CHECK(testing::max_abs_diff(dx_eval, dx_train) < 1e-10);
  for (std::size_t i = 0; i < g_eval.size(); ++i) CHECK(g_eval[i] == Approx(s.grads()[i]).margin(1e-10));
}

// Routers on real batches: padding kept out of the aux statistics by a token mask, expert load counted from
// the selected indices, and aux_loss() consistent with the collector.
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "pemoe/moe/aux_loss.hpp"
#include "pemoe/moe/router.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace {

RouterConfig config(GateMode mode, Index d, Index e, Index k) {
  RouterConfig rc;
  rc.d_in = d;
  rc.n_experts = e;
  rc.mode = mode;
  rc.top_k = k;
  rc.aux.balance_coef = 0.1;
  rc.aux.z_coef = 0.01;
  rc.aux.importance_coef = 0.05;
  rc.aux.load_coef = 0.05;
  return rc;
}

// Forward + backward with dL/dgates = 0, so the router's gradient is that of its aux losses alone.
struct Run {
  AuxLossValues aux;
  AlignedVector<double> grads;
  Matrix<double> du;
};
Run run(Router<double>& r, ParamStore<double>& s, const Matrix<double>& u) {
  Router<double>::Cache c;
  Matrix<double> g(u.rows(), r.config().n_experts), du(u.rows(), u.cols());
  r.forward(u, g, c);
  s.zero_grad();
  r.backward(u, c, Matrix<double>::Zero(u.rows(), r.config().n_experts), du);
  return {c.aux, s.grads(), du};
}

}  // namespace

TEST_CASE("Router token mask: padding changes neither the aux losses nor their gradients") {
  for (GateMode mode : {GateMode::soft, GateMode::topk_mask, GateMode::topk_renorm, GateMode::switch_top1}) {
    CAPTURE(int(mode));
    ParamStore<double> s;
    Rng rng(3);
    Router<double> r(config(mode, 12, 8, 2));
    r.register_params(s, "router", rng);
    testing::randomize_params(s, 4);
    const Matrix<double> real = testing::random_matrix(9, 12, 5);
    Matrix<double> padded(14, 12);  // the 9 real tokens with 5 padding rows (garbage) interleaved
    std::vector<std::uint8_t> mask(14, 1);
    const Matrix<double> junk = testing::random_matrix(5, 12, 6, 10.0);
    for (Index t = 0, i = 0, j = 0; t < 14; ++t) {
      const bool pad = t % 3 == 1;
      mask[std::size_t(t)] = pad ? 0 : 1;
      padded.row(t) = pad ? junk.row(j++) : real.row(i++);
    }
    const Run ref = run(r, s, real);
    r.set_token_mask(mask);
    const Run got = run(r, s, padded);
    r.clear_token_mask();
    CHECK(got.aux.balance == Approx(ref.aux.balance).epsilon(1e-13));
    CHECK(got.aux.z == Approx(ref.aux.z).epsilon(1e-13));
    CHECK(got.aux.importance == Approx(ref.aux.importance).epsilon(1e-13));
    CHECK(got.aux.load == Approx(ref.aux.load).epsilon(1e-13));
    CHECK(got.aux.weighted == Approx(ref.aux.weighted).epsilon(1e-13));
    REQUIRE(got.grads.size() == ref.grads.size());
    for (std::size_t i = 0; i < ref.grads.size(); ++i)
      CHECK(got.grads[i] == Approx(ref.grads[i]).margin(1e-13));
    for (Index t = 0, i = 0; t < 14; ++t) {
      if (mask[std::size_t(t)])
        CHECK(testing::max_abs_diff(got.du.row(t), ref.du.row(i++)) < 1e-13);
      else
        CHECK(got.du.row(t).isZero());  // no aux gradient reaches a padding token
    }
    // Without the mask the padding does shift the statistics (so the test above can fail).
    const Run unmasked = run(r, s, padded);
    CHECK(std::abs(unmasked.aux.weighted - ref.aux.weighted) > 1e-6);
  }
}

TEST_CASE("Router token mask: per-head rows inherit their token's flag; a wrong length is a ShapeError") {
  ParamStore<double> s;
  Rng rng(3);
  Router<double> r(config(GateMode::topk_renorm, 6, 4, 2));
  r.register_params(s, "router", rng);
  const Matrix<double> u = testing::random_matrix(12, 6, 2);  // 4 tokens × 3 heads
  r.set_token_mask({1, 0, 1, 1});
  Router<double>::Cache c;
  Matrix<double> g(12, 4);
  r.forward(u, g, c);
  CHECK(c.n_valid == 9);
  CHECK(c.valid.segment(3, 3).isZero());
  r.set_token_mask({1, 0, 1, 1, 1});
  CHECK_THROWS_AS(r.forward(u, g, c), ShapeError);
}

TEST_CASE("Router load counts the selected experts, even when a selected gate underflows to zero") {
  // logits = bias: expert 1 is always in the top-2 but its probability exp(-800) is exactly 0 in double.
  RouterConfig rc = config(GateMode::topk_mask, 4, 3, 2);
  rc.bias = true;
  ParamStore<double> s;
  Rng rng(1);
  Router<double> r(rc);
  r.register_params(s, "router", rng);
  s.matrix(r.weight_id()).setZero();
  s.matrix(r.bias_id()) << 0.0, -800.0, -900.0;
  Router<double>::Cache c;
  Matrix<double> g(5, 3);
  r.forward(testing::random_matrix(5, 4, 1), g, c);
  CHECK(g.col(1).isZero());  // the selected gate is 0 ...
  RowVector<double> load(3);
  load << 5, 5, 0;  // ... but expert 1 is selected by every token
  CHECK(c.aux.load == Approx(cv_squared<double>(load)).epsilon(1e-14));
  RowVector<double> by_gate(3);
  by_gate << 5, 0, 0;
  CHECK(c.aux.load != Approx(cv_squared<double>(by_gate)));
}

TEST_CASE("Router aux_loss(): the routers' values add up to the collector's total (sum and mean, groups)") {
  for (LayerReduction red : {LayerReduction::sum, LayerReduction::mean}) {
    AuxLossCollector col(red);
    ParamStore<double> s;
    Rng rng(2);
    std::vector<Router<double>> routers;
    for (int i = 0; i < 4; ++i) {
      RouterConfig rc = config(GateMode::topk_renorm, 6, 4, 2);
      rc.balance_group = i < 3 ? "layers.0" : "";  // three pooled, one alone
      routers.emplace_back(rc);
    }
    for (int i = 0; i < 4; ++i) {
      routers[std::size_t(i)].register_params(s, "r" + std::to_string(i), rng);
      routers[std::size_t(i)].set_collector(&col);
    }
    testing::randomize_params(s, 3);
    std::vector<Router<double>::Cache> caches(4);
    col.reset();
    for (int i = 0; i < 4; ++i) {
      Matrix<double> g(7 + i, 4);
      routers[std::size_t(i)].forward(testing::random_matrix(7 + i, 6, 10 + i), g, caches[std::size_t(i)]);
    }
    double sum = 0.0;
    for (int i = 0; i < 4; ++i) sum += routers[std::size_t(i)].aux_loss(caches[std::size_t(i)]);
    CHECK(sum == Approx(col.total()).epsilon(1e-13));
    CHECK(col.total() > 0.0);
  }
}

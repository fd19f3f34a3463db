// nn/linear.hpp and nn/dropout.hpp: forward against naive loops, gradients against central differences.
#include <array>
#include <catch2/catch.hpp>

#include "pemoe/nn/dropout.hpp"
#include "pemoe/nn/linear.hpp"
#include "support/gradcheck.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

static_assert(is_layer_v<Linear<float>> && is_layer_v<Linear<double>>, "Linear follows the layer contract");
static_assert(is_layer_v<Dropout<float>> && is_layer_v<Dropout<double>>,
              "Dropout follows the layer contract");
static const testing::GradcheckOptions big_step = [] {
  testing::GradcheckOptions o;
  o.h = 1e-4;
  return o;
}();

static_assert(!is_layer_v<int> && !is_layer_v<ParamStore<float>>, "the trait rejects non-layers");

TEST_CASE("Linear forward equals the naive loop") {
  ParamStore<double> s;
  Rng rng(1);
  Linear<double> lin({5, 3, true});
  lin.register_params(s, "fc", rng);
  auto x = testing::random_matrix(4, 5, 2);
  Matrix<double> y(4, 3);
  Linear<double>::Cache c;
  lin.forward(x, y, c);
  Matrix<double> naive(4, 3);
  for (Index n = 0; n < 4; ++n)
    for (Index o = 0; o < 3; ++o) {
      double acc = lin.bias()(0, o);
      for (Index i = 0; i < 5; ++i) acc += x(n, i) * lin.weight()(o, i);
      naive(n, o) = acc;
    }
  CHECK(testing::max_abs_diff(y, naive) < 1e-12);
  CHECK(s.contains("fc.weight"));
  CHECK(s.entry(lin.weight_id()).shape == Shape{3, 5});
  CHECK(s.contains("fc.bias"));
}

TEST_CASE("Linear gradients (trainable weight and bias, dx) pass the checker in double") {
  // (6 -> 4) exercises the tails; (37 -> 48) over 33 rows fills whole SIMD blocks and the GEMM fallback.
  for (const auto& size : {std::array<Index, 3>{6, 4, 3}, std::array<Index, 3>{37, 48, 33}})
    for (bool bias : {true, false}) {
      const Index d_in = size[0], d_out = size[1],
                  rows = size[2];  // (lambdas cannot capture a structured binding in C++17)
      ParamStore<double> s;
      Rng rng(1);
      Linear<double> lin({d_in, d_out, bias});
      lin.register_params(s, "fc", rng);
      Linear<double>::Cache c;
      const auto r = testing::gradcheck(
          s, testing::random_matrix(rows, d_in, 5),
          [&](const Matrix<double>& x, Matrix<double>& y) {
            y.resize(x.rows(), d_out);
            lin.forward(x, y, c);
            return 0.0;
          },
          [&](const Matrix<double>& x, const Matrix<double>& dy, Matrix<double>& dx) {
            lin.backward(x, c, dy, dx);
          },
          big_step);  // the loss sums 33·48 terms: a larger step keeps rounding below the tolerance
      INFO(r.report());
      CHECK(r.ok(1e-6));
    }
}

TEST_CASE("Linear frozen: no gradient buffer, dx still correct; skipping dx works") {
  ParamStore<double> s;
  Rng rng(1);
  Linear<double> lin({6, 4, true, false});
  lin.register_params(s, "fc", rng);
  CHECK(s.num_trainable() == 0);
  auto x = testing::random_matrix(3, 6, 5), dy = testing::random_matrix(3, 4, 6);
  Matrix<double> y(3, 4), dx(3, 6);
  Linear<double>::Cache c;
  lin.forward(x, y, c);
  lin.backward(x, c, dy, dx);
  CHECK(testing::max_abs_diff(dx, dy * lin.weight()) < 1e-12);
  CHECK_NOTHROW(lin.backward(x, c, dy));
  // a frozen weight's backward needs dy alone: the same dx without x
  CHECK_FALSE(lin.backward_needs_input());
  Matrix<double> dx2(3, 6);
  lin.backward_without_input(c, dy, dx2);
  CHECK(dx2 == dx);
}

TEST_CASE("Linear backward_without_input: the bias gradient from dy alone; refused when the weight trains") {
  ParamStore<double> s;
  Rng rng(1);
  Linear<double> lin({5, 3, true, true});
  lin.register_params(s, "fc", rng);
  s.set_trainable_if([](const auto& e) { return e.name == "fc.weight"; }, false);  // only the bias trains
  const auto x = testing::random_matrix(4, 5, 7), dy = testing::random_matrix(4, 3, 8);
  Linear<double>::Cache c;
  Matrix<double> y(4, 3), dx(4, 5), dx2(4, 5);
  lin.forward(x, y, c);
  s.zero_grad();
  lin.backward(x, c, dy, dx);
  const AlignedVector<double> with_x = s.grads();
  s.zero_grad();
  lin.backward_without_input(c, dy, dx2);
  CHECK(s.grads() == with_x);
  CHECK(dx2 == dx);
  CHECK(testing::max_abs_diff(Matrix<double>(s.grad_matrix(lin.bias_id())),
                              Matrix<double>(dy.colwise().sum())) < 1e-14);
  s.set_trainable_if([](const auto& e) { return e.name == "fc.weight"; }, true);
  CHECK(lin.backward_needs_input());
  CHECK_THROWS_WITH(lin.backward_without_input(c, dy, dx2), Catch::Contains("needs the forward's input x"));
}

TEST_CASE("Linear shape errors name the layer and both sizes") {
  ParamStore<float> s;
  Rng rng(1);
  Linear<float> lin({768, 16});
  lin.register_params(s, "h.0.mlp.c_fc", rng);
  Matrix<float> x(2, 700), y(2, 16);
  Linear<float>::Cache c;
  try {
    lin.forward(x, y, c);
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()) == "Linear 'h.0.mlp.c_fc': x has 700 features, layer expects 768");
  }
  CHECK_THROWS_AS(Linear<float>({0, 3}), ConfigError);
  Matrix<float> x2(2, 768), dy(2, 16), dx_bad(3, 768), dy_bad(2, 15);
  lin.forward(x2, y, c);
  CHECK_THROWS_AS(lin.backward(x2, c, dy, dx_bad), ShapeError);
  CHECK_THROWS_AS(lin.backward(x2, c, dy_bad), ShapeError);
  CHECK_THROWS_AS(lin.backward(x, c, dy), ShapeError);  // x of the wrong width in backward
}

TEST_CASE("Linear refuses an output that aliases its input (backward reads x again)") {
  ParamStore<double> s;
  Rng rng(1);
  Linear<double> lin({8, 8, true});
  lin.register_params(s, "fc", rng);
  Matrix<double> x = testing::random_matrix(4, 8, 2);
  Linear<double>::Cache c;
  try {
    lin.forward(x, x, c);
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()).find("Linear 'fc'") == 0);
  }
}

TEST_CASE("Dropout gradient passes the checker (mask regenerated in backward)") {
  ParamStore<double> s;  // no parameters: only dx is checked
  Dropout<double> d(0.3, Rng(9));
  d.set_training(true);
  Dropout<double>::Cache c;
  testing::GradcheckOptions opt;
  opt.h = 1e-2;  // the map is linear in x: a large step is exact and keeps rounding out
  const auto r = testing::gradcheck(
      s, testing::random_matrix(33, 40, 5),
      [&](const Matrix<double>& x, Matrix<double>& y) {
        y.resize(x.rows(), x.cols());
        d.set_call_counter(0);
        d.forward(x, y, c);
        return 0.0;
      },
      [&](const Matrix<double>& x, const Matrix<double>& dy, Matrix<double>& dx) {
        d.backward(x, c, dy, dx);
      },
      opt);
  INFO(r.report());
  // 1e-8: the central difference of this linear map is exact for any step up to the rounding of the loss,
  // which the step of 1e-2 divides by 2e-2 instead of 2e-6: the worst entry (gradient 1.6e-3) is off by
  // 3.6e-10 relative (7.5e-11 with FMA), where the default step left 3.5e-6 from rounding alone
  CHECK(r.ok(1e-8));
}

TEST_CASE("Dropout's mask is the documented function of (seed, call, element), also for a block of rows") {
  // element e = i·d + j of call c reads draw e/2 of rng.split(c): its low 32 bits for even e, its high 32
  // bits for odd e, and is dropped when those bits·2⁻³² < p. d odd, so every other row starts on a high half.
  for (const double p : {0.1, 0.25, 0.5, 0.9}) {  // 0.25, 0.5: p·2³² is an integer (the boundary case)
    const Index n = 7, d = 13;
    Dropout<double> drop(p, Rng(11));
    drop.set_training(true);
    Dropout<double>::Cache c;
    const Matrix<double> x = Matrix<double>::Ones(n, d);
    Matrix<double> y(n, d);
    drop.forward(x, y, c);  // call 0
    drop.forward(x, y, c);  // call 1: the one checked
    const Rng call = Rng(11).split(1);
    long dropped = 0;
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j < d; ++j) {
        const auto e = static_cast<std::uint64_t>(i * d + j);
        const std::uint64_t bits = call.bits_at(e / 2);
        const std::uint64_t k = e % 2 == 0 ? (bits & 0xFFFFFFFFu) : (bits >> 32);
        const bool drop_it = static_cast<long double>(k) / 4294967296.0L < static_cast<long double>(p);
        dropped += drop_it;
        INFO("p " << p << " element (" << i << ", " << j << ")");
        CHECK(y(i, j) == (drop_it ? 0.0 : 1.0 / (1.0 - p)));
      }
    CHECK(dropped > 0);
    CHECK(dropped < n * d);
    // a block of rows starting at an odd element (row 3 · 13 = 39) gets the same mask as in the whole call
    Matrix<double> rows = Matrix<double>::Ones(3, d);
    drop.apply_mask_rows(c, 3, rows);
    CHECK(rows == y.middleRows(3, 3));
    CHECK(Rng(11).split(1).counter_state(5) + Rng::kGamma == Rng(11).split(1).counter_state(6));
    CHECK(Rng::mix64(call.counter_state(5)) == call.bits_at(5));
  }
}

TEST_CASE("Dropout: inverted scaling, identity in eval, rate, replayable, gradient uses the mask") {
  Dropout<double> d(0.25, Rng(3));
  Matrix<double> x = Matrix<double>::Ones(200, 50), y(200, 50);
  Dropout<double>::Cache c;
  d.forward(x, y, c);
  CHECK(y == x);  // eval mode
  d.set_training(true);
  d.forward(x, y, c);
  const double kept = (y.array() > 0).cast<double>().mean();
  CHECK(kept == Approx(0.75).margin(0.01));
  CHECK(y.maxCoeff() == Approx(1.0 / 0.75));
  Matrix<double> y2(200, 50);
  d.set_call_counter(0);
  d.forward(x, y2, c);
  CHECK(y2 == y);
  Matrix<double> dy = testing::random_matrix(200, 50, 4), dx(200, 50);
  d.backward(x, c, dy, dx);
  CHECK(testing::max_abs_diff(dx, dy.cwiseProduct(y)) < 1e-12);
  Matrix<double> dx_bad(10, 50);
  CHECK_THROWS_AS(d.backward(x, c, dy, dx_bad), ShapeError);
  CHECK_THROWS_AS(Dropout<double>(1.0), ConfigError);
}

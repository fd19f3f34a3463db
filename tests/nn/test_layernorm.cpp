// nn/layernorm.hpp: LayerNorm and RMSNorm against naive long-double loops, dx and parameter gradients against
// central differences at full SIMD blocks and tails, defaults and names, the two-pass variance, errors.
#include <array>
#include <catch2/catch.hpp>
#include <cmath>
#include <string>

#include "pemoe/nn/layernorm.hpp"
#include "support/gradcheck.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

static_assert(is_layer_v<LayerNorm<float>> && is_layer_v<LayerNorm<double>>,
              "LayerNorm follows the contract");
static_assert(is_layer_v<RMSNorm<float>> && is_layer_v<RMSNorm<double>>, "RMSNorm follows the contract");

namespace {

// LayerNorm (rms = false) or RMSNorm (rms = true) by plain loops in long double.
template <class T>
Matrix<double> naive_norm(const Matrix<T>& x, const T* w, const T* b, double eps, bool rms) {
  const Index n = x.rows(), d = x.cols();
  Matrix<double> y(n, d);
  for (Index i = 0; i < n; ++i) {
    long double mean = 0, var = 0;
    if (!rms) {
      for (Index j = 0; j < d; ++j) mean += x(i, j);
      mean /= d;
    }
    for (Index j = 0; j < d; ++j) var += (x(i, j) - mean) * (x(i, j) - mean);
    var /= d;
    const long double r = 1.0L / std::sqrt(var + static_cast<long double>(eps));
    for (Index j = 0; j < d; ++j)
      y(i, j) = static_cast<double>((x(i, j) - mean) * r * static_cast<long double>(w[j]) +
                                    (b ? static_cast<long double>(b[j]) : 0.0L));
  }
  return y;
}

template <class L>
testing::GradcheckResult check_norm(L& layer, ParamStore<double>& s, Index rows, Index d,
                                    std::uint64_t seed) {
  typename L::Cache c;
  testing::GradcheckOptions o;
  o.h = 1e-4;  // rounding of a loss over 33·40 terms stays ~1e-8 relative
  return testing::gradcheck(
      s, testing::random_matrix(rows, d, seed, 1.5),
      [&](const Matrix<double>& x, Matrix<double>& y) {
        y.resize(x.rows(), d);
        layer.forward(x, y, c);
        return 0.0;
      },
      [&](const Matrix<double>& x, const Matrix<double>& dy, Matrix<double>& dx) {
        layer.backward(x, c, dy, dx);
      },
      o);
}

constexpr std::array<std::array<Index, 2>, 2> kSizes{{{33, 40}, {5, 7}}};  // full SIMD blocks, tails

}  // namespace

TEST_CASE("LayerNorm: HF names, ones and zeros, eps 1e-5; forward equals the naive loop") {
  for (auto [rows, d] : kSizes) {
    ParamStore<double> s;
    Rng rng(1);
    LayerNorm<double> ln({d});
    ln.register_params(s, "h.0.ln_1", rng);
    CHECK(ln.config().eps == 1e-5);
    CHECK(s.entry(s.id("h.0.ln_1.weight")).shape == Shape{d});
    CHECK(s.entry(s.id("h.0.ln_1.bias")).shape == Shape{d});
    CHECK(ln.weight().isOnes());
    CHECK(ln.bias().isZero());
    testing::randomize_params(s, 2, 0.5);
    const Matrix<double> x = testing::random_matrix(rows, d, 3, 2.0);
    Matrix<double> y(rows, d);
    LayerNorm<double>::Cache c;
    ln.forward(x, y, c);
    CHECK(testing::max_abs_diff(y, naive_norm(x, ln.weight().data(), ln.bias().data(), 1e-5, false)) < 1e-13);
    CHECK(c.mean.size() == rows);
    CHECK(c.rstd.size() == rows);
  }
  // A hand-computed row: mean 2.5, variance 1.25.
  ParamStore<double> s;
  Rng rng(1);
  LayerNorm<double> ln({4});
  ln.register_params(s, "ln", rng);
  Matrix<double> x(1, 4), y(1, 4);
  x << 1, 2, 3, 4;
  LayerNorm<double>::Cache c;
  ln.forward(x, y, c);
  CHECK(y(0, 0) == Approx(-1.5 / std::sqrt(1.25 + 1e-5)).epsilon(1e-15));
  CHECK(y(0, 3) == Approx(1.5 / std::sqrt(1.25 + 1e-5)).epsilon(1e-15));
}

TEST_CASE("LayerNorm gradients (dx, weight, bias) pass the checker at full blocks and tails") {
  for (auto [rows, d] : kSizes) {
    ParamStore<double> s;
    Rng rng(1);
    LayerNorm<double> ln({d});
    ln.register_params(s, "ln", rng);
    testing::randomize_params(s, 4, 0.7);
    const auto r = check_norm(ln, s, rows, d, 5);
    INFO(rows << "x" << d << ": " << r.report());
    CHECK(r.ok(1e-6));
    CHECK(r.checked > 2 * d);
  }
}

TEST_CASE("LayerNorm statistics are two-pass: a large common offset keeps float accurate") {
  // Rows 1e4 + N(0, 1): a one-pass E[x²] − E[x]² in float loses every digit of the variance.
  ParamStore<float> s;
  Rng rng(1);
  LayerNorm<float> ln({64});
  ln.register_params(s, "ln", rng);
  Matrix<float> x = (testing::random_matrix(9, 64, 8).array() + 1e4).cast<float>().matrix(), y(9, 64);
  LayerNorm<float>::Cache c;
  ln.forward(x, y, c);
  CHECK(testing::max_abs_diff(y.cast<double>(),
                              naive_norm(x, ln.weight().data(), ln.bias().data(), 1e-5, false)) < 5e-3);
}

TEST_CASE("RMSNorm (T5LayerNorm): HF name, ones, eps 1e-6, no bias; forward equals the naive loop") {
  for (auto [rows, d] : kSizes) {
    ParamStore<double> s;
    Rng rng(1);
    RMSNorm<double> rms({d});
    rms.register_params(s, "encoder.final_layer_norm", rng);
    CHECK(rms.config().eps == 1e-6);
    CHECK(s.size() == 1);
    CHECK(s.entry(s.id("encoder.final_layer_norm.weight")).shape == Shape{d});
    CHECK(rms.weight().isOnes());
    testing::randomize_params(s, 2, 0.5);
    const Matrix<double> x = testing::random_matrix(rows, d, 3, 2.0);
    Matrix<double> y(rows, d);
    RMSNorm<double>::Cache c;
    rms.forward(x, y, c);
    CHECK(testing::max_abs_diff(y, naive_norm<double>(x, rms.weight().data(), nullptr, 1e-6, true)) < 1e-13);
  }
}

TEST_CASE("RMSNorm gradients (dx, weight) pass the checker at full blocks and tails; custom eps") {
  for (auto [rows, d] : kSizes) {
    ParamStore<double> s;
    Rng rng(1);
    NormConfig cfg{d};
    cfg.eps = 1e-3;
    RMSNorm<double> rms(cfg);
    CHECK(rms.config().eps == 1e-3);
    rms.register_params(s, "rms", rng);
    testing::randomize_params(s, 4, 0.7);
    const auto r = check_norm(rms, s, rows, d, 6);
    INFO(rows << "x" << d << ": " << r.report());
    CHECK(r.ok(1e-6));
  }
}

TEST_CASE("Norms frozen: no gradient buffers, dx still right; backward without dx") {
  ParamStore<double> s;
  Rng rng(1);
  NormConfig cfg{12};
  cfg.trainable = false;
  LayerNorm<double> ln(cfg);
  RMSNorm<double> rms(cfg);
  ln.register_params(s, "ln", rng);
  rms.register_params(s, "rms", rng);
  CHECK(s.num_trainable() == 0);
  const auto r1 = check_norm(ln, s, 6, 12, 1);
  INFO(r1.report());
  CHECK(r1.ok(1e-6));
  const auto r2 = check_norm(rms, s, 6, 12, 2);
  INFO(r2.report());
  CHECK(r2.ok(1e-6));
  Matrix<double> x = testing::random_matrix(3, 12, 1), y(3, 12);
  LayerNorm<double>::Cache c;
  ln.forward(x, y, c);
  CHECK_NOTHROW(ln.backward(x, c, y));
}

TEST_CASE("Norms check every buffer's shape and name the layer; refuse y aliasing x; bad configs") {
  ParamStore<float> s;
  Rng rng(1);
  LayerNorm<float> ln({16});
  RMSNorm<float> rms({16});
  ln.register_params(s, "h.3.ln_2", rng);
  rms.register_params(s, "decoder.block.0.layer.0.layer_norm", rng);
  Matrix<float> x(4, 16), y(4, 16), x_bad(4, 15), y_bad(3, 16), dx_bad(4, 17);
  x.setRandom();
  LayerNorm<float>::Cache c;
  try {
    ln.forward(x_bad, y, c);
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()) == "LayerNorm 'h.3.ln_2': x has 15 features, layer expects 16");
  }
  CHECK_THROWS_AS(ln.forward(x, y_bad, c), ShapeError);
  CHECK_THROWS_AS(ln.forward(x, x, c), ShapeError);
  ln.forward(x, y, c);
  CHECK_THROWS_AS(ln.backward(x, c, y, dx_bad), ShapeError);
  CHECK_THROWS_AS(ln.backward(x_bad, c, y, y), ShapeError);
  CHECK_THROWS_AS(ln.backward(x, c, y_bad, y), ShapeError);
  Matrix<float> x5(5, 16), dy5(5, 16);
  CHECK_THROWS_AS(ln.backward(x5, c, dy5), ShapeError);  // the cache is for 4 rows
  RMSNorm<float>::Cache rc;
  try {
    rms.forward(x, y_bad, rc);
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()).find("RMSNorm 'decoder.block.0.layer.0.layer_norm'") == 0);
  }
  CHECK_THROWS_AS(rms.forward(x, x, rc), ShapeError);
  rms.forward(x, y, rc);
  CHECK_THROWS_AS(rms.backward(x_bad, rc, y, y), ShapeError);
  CHECK_THROWS_AS(rms.backward(x, rc, y, dx_bad), ShapeError);
  CHECK_THROWS_AS(LayerNorm<float>({0}), ConfigError);
  NormConfig zero_eps{8};
  zero_eps.eps = 0.0;
  CHECK_THROWS_AS(RMSNorm<float>(zero_eps), ConfigError);
  LayerNorm<float> unbound({8});
  Matrix<float> x8(2, 8), y8(2, 8);
  CHECK_THROWS_AS(unbound.forward(x8, y8, c), ConfigError);
}

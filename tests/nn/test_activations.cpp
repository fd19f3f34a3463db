// nn/activations.hpp: GELU (tanh "gelu_new" and erf "gelu") and ReLU against naive long-double loops,
// dx against central differences, the contract's shape and alias checks.
#include <array>
#include <catch2/catch.hpp>
#include <cmath>
#include <string>

#include "pemoe/nn/activations.hpp"
#include "support/gradcheck.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

static_assert(is_layer_v<GELU<float>> && is_layer_v<GELU<double>>, "GELU follows the layer contract");
static_assert(is_layer_v<ReLU<float>> && is_layer_v<ReLU<double>>, "ReLU follows the layer contract");

namespace {

long double naive_gelu(long double x, GeluKind kind) {
  if (kind == GeluKind::tanh) {
    const long double c = std::sqrt(2.0L / 3.14159265358979323846264338327950288L);
    return 0.5L * x * (1.0L + std::tanh(c * (x + 0.044715L * x * x * x)));
  }
  return 0.5L * x * (1.0L + std::erf(x / std::sqrt(2.0L)));
}

// Largest |y − gelu(x)| / max(1, |gelu(x)|) against the long-double loop.
template <class T>
double gelu_error(const Matrix<T>& x, const Matrix<T>& y, GeluKind kind) {
  double worst = 0.0;
  for (Index i = 0; i < x.rows(); ++i)
    for (Index j = 0; j < x.cols(); ++j) {
      const long double ref = naive_gelu(static_cast<long double>(x(i, j)), kind);
      const long double err =
          std::abs(static_cast<long double>(y(i, j)) - ref) / std::max(1.0L, std::abs(ref));
      worst = std::max(worst, static_cast<double>(err));
    }
  return worst;
}

template <class L>
testing::GradcheckResult check_activation(L& layer, Index rows, Index cols, std::uint64_t seed) {
  ParamStore<double> s;  // no parameters: only dx is checked
  Rng rng(1);
  layer.register_params(s, "act", rng);
  typename L::Cache c;
  testing::GradcheckOptions o;
  o.h = 1e-5;  // the loss sums up to 33·40 terms: rounding ~ 1e-16·|L|/h, truncation ~ h²·gelu'''/6
  return testing::gradcheck(
      s, testing::random_matrix(rows, cols, seed, 2.0),
      [&](const Matrix<double>& x, Matrix<double>& y) {
        y.resize(x.rows(), x.cols());
        layer.forward(x, y, c);
        return 0.0;
      },
      [&](const Matrix<double>& x, const Matrix<double>& dy, Matrix<double>& dx) {
        layer.backward(x, c, dy, dx);
      },
      o);
}

}  // namespace

TEST_CASE("GELU forward equals the naive loop (tanh and erf), double and float, full blocks and tails") {
  for (GeluKind kind : {GeluKind::tanh, GeluKind::erf})
    for (auto [rows, cols] : {std::array<Index, 2>{33, 40}, std::array<Index, 2>{5, 7}}) {
      GELU<double> gd(kind);
      GELU<double>::Cache cd;
      const Matrix<double> x = testing::random_matrix(rows, cols, 3, 3.0);
      Matrix<double> y(rows, cols);
      gd.forward(x, y, cd);
      CHECK(gelu_error(x, y, kind) < 1e-15);

      GELU<float> gf(kind);
      GELU<float>::Cache cf;
      const Matrix<float> xf = x.cast<float>();
      Matrix<float> yf(rows, cols);
      gf.forward(xf, yf, cf);
      CHECK(gelu_error(xf, yf, kind) < 2e-6);
    }
}

TEST_CASE("GELU reference values: HF gelu_new(1) and gelu(1), and the HF activation names") {
  Matrix<double> x(1, 3), y(1, 3);
  x << 1.0, -1.0, 0.0;
  GELU<double> tanh_gelu(GeluKind::tanh), erf_gelu(GeluKind::erf);
  GELU<double>::Cache c;
  tanh_gelu.forward(x, y, c);
  CHECK(y(0, 0) == Approx(0.8411919906082768).epsilon(1e-15));
  CHECK(y(0, 1) == Approx(-0.15880800939172324).epsilon(1e-14));
  CHECK(y(0, 2) == 0.0);
  erf_gelu.forward(x, y, c);
  CHECK(y(0, 0) == Approx(0.8413447460685429).epsilon(1e-15));
  CHECK(y(0, 1) == Approx(-0.15865525393145707).epsilon(1e-14));
  CHECK(gelu_kind_from_hf("gelu_new") == GeluKind::tanh);
  CHECK(gelu_kind_from_hf("gelu_pytorch_tanh") == GeluKind::tanh);
  CHECK(gelu_kind_from_hf("gelu_fast") == GeluKind::tanh);
  CHECK(gelu_kind_from_hf("gelu") == GeluKind::erf);
  CHECK_THROWS_AS(gelu_kind_from_hf("relu"), ConfigError);
  CHECK(GELU<float>().kind() == GeluKind::tanh);  // GPT-2's is the default
}

TEST_CASE("GELU dx passes the checker (tanh and erf; full blocks and tails)") {
  for (GeluKind kind : {GeluKind::tanh, GeluKind::erf})
    for (auto [rows, cols] : {std::array<Index, 2>{33, 40}, std::array<Index, 2>{3, 5}}) {
      GELU<double> g(kind);
      const auto r = check_activation(g, rows, cols, 5);
      INFO((kind == GeluKind::tanh ? "tanh " : "erf ") << rows << "x" << cols << ": " << r.report());
      CHECK(r.ok(1e-6));
      CHECK(r.checked >= rows * cols);
    }
}

TEST_CASE("ReLU: forward, dx against the checker, in place") {
  for (auto [rows, cols] : {std::array<Index, 2>{33, 40}, std::array<Index, 2>{3, 5}}) {
    ReLU<double> relu;
    const auto r = check_activation(relu, rows, cols, 7);
    INFO(r.report());
    CHECK(r.ok(1e-6));
  }
  ReLU<double> relu;
  ReLU<double>::Cache c;
  const Matrix<double> x = testing::random_matrix(6, 9, 2), dy = testing::random_matrix(6, 9, 3);
  Matrix<double> y(6, 9), dx(6, 9);
  relu.forward(x, y, c);
  for (Index i = 0; i < 6; ++i)
    for (Index j = 0; j < 9; ++j) CHECK(y(i, j) == (x(i, j) > 0 ? x(i, j) : 0.0));
  relu.backward(x, c, dy, dx);
  Matrix<double> inplace = x, dx2(6, 9);
  relu.forward(inplace, inplace, c);  // y over x: backward then reads y, which has the same sign pattern
  CHECK(inplace == y);
  relu.backward(inplace, c, dy, dx2);
  CHECK(dx2 == dx);
  Matrix<double> zero = Matrix<double>::Zero(1, 2), d1 = Matrix<double>::Ones(1, 2), dz(1, 2);
  relu.backward(zero, c, d1, dz);
  CHECK(dz.isZero());  // derivative 0 at x = 0, as PyTorch
}

TEST_CASE("Activations check every buffer's shape and name the layer; GELU refuses y aliasing x") {
  ParamStore<float> s;
  Rng rng(1);
  GELU<float> g;
  g.register_params(s, "h.0.mlp.act", rng);
  CHECK(s.size() == 0);
  GELU<float>::Cache c;
  Matrix<float> x(4, 8), y_bad(4, 9), y(4, 8), dy_bad(3, 8), dx_bad(4, 7);
  x.setRandom();
  try {
    g.forward(x, y_bad, c);
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()) == "GELU 'h.0.mlp.act': y is (4, 9), expected (4, 8)");
  }
  CHECK_THROWS_AS(g.forward(x, x, c), ShapeError);
  g.forward(x, y, c);
  CHECK_THROWS_AS(g.backward(x, c, dy_bad, y), ShapeError);
  CHECK_THROWS_AS(g.backward(x, c, y, dx_bad), ShapeError);
  CHECK_NOTHROW(g.backward(x, c, y));
  ReLU<float> relu;
  relu.register_params(s, "act", rng);
  ReLU<float>::Cache rc;
  CHECK_THROWS_AS(relu.forward(x, y_bad, rc), ShapeError);
  CHECK_THROWS_AS(relu.backward(x, rc, dy_bad, y), ShapeError);
  CHECK_THROWS_AS(relu.backward(x, rc, y, dx_bad), ShapeError);
}

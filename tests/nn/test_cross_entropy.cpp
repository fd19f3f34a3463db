// nn/cross_entropy.hpp: the loss against a naive long-double loop with ignored (-100) targets and V = 37,
// dlogits against central differences, the all-ignored rule, in-place backward, target errors.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "pemoe/core/layer.hpp"
#include "pemoe/nn/cross_entropy.hpp"
#include "support/gradcheck.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

static_assert(!is_layer_v<CrossEntropy<float>>, "a loss ends the graph: scalar output, integer targets");

namespace {

// Random targets in [0, vocab), every `every`-th one replaced by the ignore index.
std::vector<std::int64_t> targets_with_ignored(Index n, Index vocab, Index every, std::uint64_t seed,
                                               std::int64_t ignore = -100) {
  Rng rng(seed);
  std::vector<std::int64_t> t(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i)
    t[static_cast<std::size_t>(i)] =
        i % every == 1 ? ignore : static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(vocab)));
  return t;
}

template <class T>
long double naive_loss(const Matrix<T>& z, const std::vector<std::int64_t>& t, std::int64_t ignore = -100) {
  long double total = 0;
  Index count = 0;
  for (Index i = 0; i < z.rows(); ++i) {
    const std::int64_t ti = t[static_cast<std::size_t>(i)];
    if (ti == ignore) continue;
    long double sum = 0;
    for (Index v = 0; v < z.cols(); ++v) sum += std::exp(static_cast<long double>(z(i, v)));
    total += std::log(sum) - static_cast<long double>(z(i, ti));
    ++count;
  }
  return count == 0 ? 0.0L : total / count;
}

}  // namespace

TEST_CASE("CrossEntropy forward equals the naive loop (V = 37, some -100 targets), double and float") {
  const Index n = 33, vocab = 37;
  const auto t = targets_with_ignored(n, vocab, 4, 2);
  const Matrix<double> z = testing::random_matrix(n, vocab, 3, 3.0);
  CrossEntropy<double> ce;
  CrossEntropy<double>::Cache c;
  const double loss = ce.forward(z, t, c);
  CHECK(std::abs(loss - static_cast<double>(naive_loss(z, t))) < 1e-13);
  CHECK(c.count == n - 8);  // rows 1, 5, …, 29 ignored
  CrossEntropy<float> cf;
  CrossEntropy<float>::Cache cfc;
  const Matrix<float> zf = z.cast<float>();
  CHECK(std::abs(cf.forward(zf, t, cfc) - static_cast<double>(naive_loss(zf, t))) < 1e-5);
  // Large logits: the max subtraction keeps float finite.
  const Matrix<float> big = (zf.array() * 1000.0f).matrix();
  const double lb = cf.forward(big, t, cfc);
  CHECK(std::isfinite(lb));
  CHECK(std::abs(lb - static_cast<double>(naive_loss(big.cast<double>().eval(), t))) < 1e-2);
}

TEST_CASE("CrossEntropy dlogits passes the checker (V = 37 and V = 64, ignored rows get zero)") {
  for (Index vocab : {Index(37), Index(64)}) {
    const Index n = 17;
    const auto t = targets_with_ignored(n, vocab, 3, 4);
    CrossEntropy<double> ce;
    CrossEntropy<double>::Cache c;
    ParamStore<double> s;
    testing::GradcheckOptions o;
    o.h = 1e-5;
    o.max_entries = 700;
    const auto r = testing::gradcheck(
        s, testing::random_matrix(n, vocab, 5, 2.0),
        [&](const Matrix<double>& z, Matrix<double>& y) {
          y.resize(1, 1);
          y(0, 0) = ce.forward(z, t, c);
          return 0.0;
        },
        [&](const Matrix<double>& z, const Matrix<double>& dy, Matrix<double>& dz) {
          ce.backward(z, t, c, dz, dy(0, 0));
        },
        o);
    INFO("V = " << vocab << ": " << r.report());
    CHECK(r.ok(1e-6));
    // Rows with an ignored target have a zero gradient; the others sum to zero (softmax minus one-hot).
    Matrix<double> z = testing::random_matrix(n, vocab, 6), dz(n, vocab);
    ce.forward(z, t, c);
    ce.backward(z, t, c, dz);
    for (Index i = 0; i < n; ++i) {
      if (t[static_cast<std::size_t>(i)] == -100)
        CHECK(dz.row(i).isZero(0.0));
      else
        CHECK(std::abs(dz.row(i).sum()) < 1e-15);
    }
  }
}

TEST_CASE("CrossEntropy: all targets ignored gives loss 0 and a zero gradient (documented rule)") {
  CrossEntropy<double> ce;
  CrossEntropy<double>::Cache c;
  const Matrix<double> z = testing::random_matrix(4, 37, 1);
  const std::vector<std::int64_t> t(4, -100);
  CHECK(ce.forward(z, t, c) == 0.0);
  CHECK(c.count == 0);
  Matrix<double> dz = Matrix<double>::Constant(4, 37, std::nan(""));  // written, never read
  ce.backward(z, t, c, dz);
  CHECK(dz.isZero(0.0));
}

TEST_CASE("CrossEntropy: configurable ignore index, dloss scaling, in-place backward") {
  CrossEntropyConfig cfg;
  cfg.ignore_index = 0;
  CrossEntropy<double> ce(cfg);
  CrossEntropy<double>::Cache c;
  const Matrix<double> z = testing::random_matrix(5, 37, 2);
  const std::vector<std::int64_t> t{0, 3, 0, 36, 7};
  CHECK(ce.forward(z, t, c) == Approx(static_cast<double>(naive_loss(z, t, 0))).epsilon(1e-14));
  CHECK(c.count == 3);
  Matrix<double> dz(5, 37), dz2(5, 37);
  ce.backward(z, t, c, dz);
  ce.backward(z, t, c, dz2, 2.5);
  CHECK(testing::max_abs_diff(dz2, 2.5 * dz) < 1e-15);
  Matrix<double> inplace = z;
  ce.backward(inplace, t, c, inplace);
  CHECK(inplace == dz);
  CHECK_THROWS_AS(ce.forward(z, {-100, 3, 0, 36, 7}, c), ShapeError);  // -100 is a target like any other here
}

TEST_CASE("CrossEntropy errors name the position and the value of a bad target; shapes are checked") {
  CrossEntropy<float> ce;
  CrossEntropy<float>::Cache c;
  Matrix<float> z(3, 37), dz(3, 37), dz_bad(3, 36);
  z.setRandom();
  try {
    ce.forward(z, {1, 37, 2}, c);
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()) ==
          "CrossEntropy: target 37 at position 1 is outside [0, 37) and is not the ignore index -100");
  }
  CHECK_THROWS_AS(ce.forward(z, {1, -1, 2}, c), ShapeError);
  CHECK_THROWS_AS(ce.forward(z, {1, 2}, c), ShapeError);
  ce.forward(z, {1, 2, -100}, c);
  CHECK_THROWS_AS(ce.backward(z, {1, 2, -100}, c, dz_bad), ShapeError);
  CHECK_THROWS_AS(ce.backward(z, {1, 2, 40}, c, dz), ShapeError);
  Matrix<float> z4(4, 37), dz4(4, 37);
  z4.setRandom();
  CHECK_THROWS_AS(ce.backward(z4, {1, 2, 3, 4}, c, dz4), ShapeError);  // the cache is for 3 rows
  Matrix<float> big(4, 37);
  big.setRandom();
  ce.forward(big.topRows(3), {1, 2, -100}, c);
  try {  // dlogits overlapping logits by two rows: neither separate nor in place
    ce.backward(big.topRows(3), {1, 2, -100}, c, big.bottomRows(3));
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()).find("overlaps") != std::string::npos);
  }
}

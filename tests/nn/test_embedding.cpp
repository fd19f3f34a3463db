// nn/embedding.hpp: the lookup against plain indexing, its scatter-add gradient (repeated ids, add semantics)
// against central differences, the tied LM head (logits, its dW and dh) against a naive loop and central
// differences, both uses accumulating into one weight gradient, the N(0, 0.02²) init, id errors.
#include <array>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "pemoe/nn/embedding.hpp"
#include "support/gradcheck.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

// Embedding takes integer ids, not an (N, d) matrix: it is deliberately not a layer in the trait's sense.
static_assert(!is_layer_v<Embedding<float>>, "Embedding's input is ids, not a matrix");

namespace {

std::vector<std::int64_t> random_ids(Index n, Index vocab, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(n));
  for (auto& id : ids) id = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(vocab)));
  return ids;
}

}  // namespace

TEST_CASE("Embedding: HF name and shape, N(0, 0.02^2) init, forward copies the id's row") {
  ParamStore<double> s;
  Rng rng(1);
  Embedding<double> wte({1000, 32});
  wte.register_params(s, "transformer.wte", rng);
  CHECK(s.entry(s.id("transformer.wte.weight")).shape == Shape{1000, 32});
  const auto w = wte.weight();
  const double mean = w.mean();
  const double sd = std::sqrt((w.array() - mean).square().mean());
  CHECK(std::abs(mean) < 1e-3);
  CHECK(sd == Approx(0.02).epsilon(0.02));
  const std::vector<std::int64_t> ids{5, 0, 999, 5, 17};
  Matrix<double> y(5, 32);
  Embedding<double>::Cache c;
  wte.forward(ids, y, c);
  for (Index i = 0; i < 5; ++i)
    for (Index j = 0; j < 32; ++j) CHECK(y(i, j) == w(ids[static_cast<std::size_t>(i)], j));
  CHECK(c.tokens == 5);
}

TEST_CASE("Embedding backward scatter-adds in token order: repeated ids, add semantics") {
  ParamStore<double> s;
  Rng rng(1);
  Embedding<double> e({7, 5});
  e.register_params(s, "emb", rng);
  const std::vector<std::int64_t> ids{3, 1, 3, 6, 3};
  Matrix<double> y(5, 5);
  Embedding<double>::Cache c;
  e.forward(ids, y, c);
  const Matrix<double> dy = testing::random_matrix(5, 5, 2);
  const Matrix<double> g0 = testing::random_matrix(7, 5, 3);
  s.grad_matrix(e.weight_id()) = g0;
  e.backward(ids, c, dy);
  Matrix<double> expect = g0;
  for (Index i = 0; i < 5; ++i) expect.row(ids[static_cast<std::size_t>(i)]) += dy.row(i);
  CHECK(testing::max_abs_diff(s.grad_matrix(e.weight_id()), expect) == 0.0);
  e.backward(ids, c, dy);  // a second backward adds again
  for (Index i = 0; i < 5; ++i) expect.row(ids[static_cast<std::size_t>(i)]) += dy.row(i);
  CHECK(testing::max_abs_diff(s.grad_matrix(e.weight_id()), expect) < 1e-15);
}

TEST_CASE("Embedding lookup gradient passes the checker (full blocks and tails)") {
  for (const auto& size : {std::array<Index, 3>{37, 40, 33}, std::array<Index, 3>{11, 5, 9}}) {
    const Index vocab = size[0], d = size[1],
                n = size[2];  // (not a structured binding: C++17 lambdas cannot capture one)
    ParamStore<double> s;
    Rng rng(1);
    Embedding<double> e({vocab, d});
    e.register_params(s, "wte", rng);
    const auto ids = random_ids(n, vocab, 4);
    Embedding<double>::Cache c;
    testing::GradcheckOptions o;
    o.check_input = false;  // ids are not differentiable; x is a placeholder
    const auto r = testing::gradcheck(
        s, Matrix<double>::Zero(n, 1),
        [&](const Matrix<double>&, Matrix<double>& y) {
          y.resize(n, d);
          e.forward(ids, y, c);
          return 0.0;
        },
        [&](const Matrix<double>&, const Matrix<double>& dy, Matrix<double>&) { e.backward(ids, c, dy); }, o);
    INFO(r.report());
    CHECK(r.ok(1e-7));
    CHECK(r.checked >= std::min<Index>(400, vocab * d));
  }
}

TEST_CASE("Tied LM head: logits = h·Wᵀ against the naive loop; dW and dh pass the checker (V = 37, 5)") {
  for (const auto& size : {std::array<Index, 3>{37, 40, 33}, std::array<Index, 3>{5, 3, 4}}) {
    const Index vocab = size[0], d = size[1],
                n = size[2];  // (not a structured binding: C++17 lambdas cannot capture one)
    ParamStore<double> s;
    Rng rng(1);
    Embedding<double> e({vocab, d});
    e.register_params(s, "wte", rng);
    testing::randomize_params(s, 2, 0.5);
    const Matrix<double> h = testing::random_matrix(n, d, 3);
    Matrix<double> out(n, vocab);
    e.logits(h, out);
    double worst = 0.0;
    for (Index i = 0; i < n; ++i)
      for (Index v = 0; v < vocab; ++v) {
        long double acc = 0;
        for (Index j = 0; j < d; ++j) acc += static_cast<long double>(h(i, j)) * e.weight()(v, j);
        worst = std::max(worst, std::abs(out(i, v) - static_cast<double>(acc)));
      }
    CHECK(worst < 1e-12);
    testing::GradcheckOptions o;
    o.h = 1e-5;
    const auto r = testing::gradcheck(
        s, h,
        [&](const Matrix<double>& x, Matrix<double>& y) {
          y.resize(x.rows(), vocab);
          e.logits(x, y);
          return 0.0;
        },
        [&](const Matrix<double>& x, const Matrix<double>& dy, Matrix<double>& dx) {
          e.logits_backward(x, dy, dx);
        },
        o);
    INFO(r.report());
    CHECK(r.ok(1e-6));
  }
}

TEST_CASE("Tied weight: lookup and LM head gradients add up in the one weight gradient") {
  // logits = (wte[ids] + x)·wteᵀ: W enters twice; x stands for everything between the two uses.
  const Index vocab = 37, d = 32, n = 10;
  ParamStore<double> s;
  Rng rng(1);
  Embedding<double> e({vocab, d});
  e.register_params(s, "wte", rng);
  testing::randomize_params(s, 5, 0.4);
  const auto ids = random_ids(n, vocab, 6);
  Embedding<double>::Cache c;
  Matrix<double> h;
  testing::GradcheckOptions o;
  o.h = 1e-5;
  const auto r = testing::gradcheck(
      s, testing::random_matrix(n, d, 7),
      [&](const Matrix<double>& x, Matrix<double>& y) {
        h.resize(n, d);
        e.forward(ids, h, c);
        h += x;
        y.resize(n, vocab);
        e.logits(h, y);
        return 0.0;
      },
      [&](const Matrix<double>&, const Matrix<double>& dy, Matrix<double>& dx) {
        e.logits_backward(h, dy, dx);  // dh = dx (h = wte[ids] + x)
        e.backward(ids, c, dx);
      },
      o);
  INFO(r.report());
  CHECK(r.ok(1e-6));
}

TEST_CASE("Embedding errors: an id outside the vocabulary names the position, the id and the vocab size") {
  ParamStore<float> s;
  Rng rng(1);
  Embedding<float> e({50, 8});
  e.register_params(s, "transformer.wte", rng);
  Matrix<float> y(3, 8);
  Embedding<float>::Cache c;
  try {
    e.forward({1, 2, 50}, y, c);
    FAIL("no throw");
  } catch (const ShapeError& err) {
    CHECK(std::string(err.what()) ==
          "Embedding 'transformer.wte': id 50 at position 2 is outside the vocabulary [0, 50)");
  }
  CHECK_THROWS_AS(e.forward({-1, 2, 3}, y, c), ShapeError);
  Matrix<float> y_bad(2, 8), y_bad2(3, 9);
  CHECK_THROWS_AS(e.forward({1, 2, 3}, y_bad, c), ShapeError);
  CHECK_THROWS_AS(e.forward({1, 2, 3}, y_bad2, c), ShapeError);
  e.forward({1, 2, 3}, y, c);
  CHECK_THROWS_AS(e.backward({1, 2}, c, y.topRows(2)), ShapeError);  // fewer ids than forward saw
  CHECK_THROWS_AS(e.backward({1, 2, 77}, c, y), ShapeError);
  CHECK_THROWS_AS(e.backward({1, 2, 3}, c, y_bad2), ShapeError);
  Matrix<float> h(3, 8), h_bad(3, 7), out(3, 50), out_bad(3, 49), dh_bad(2, 8);
  h.setRandom();
  CHECK_THROWS_AS(e.logits(h_bad, out), ShapeError);
  CHECK_THROWS_AS(e.logits(h, out_bad), ShapeError);
  e.logits(h, out);
  CHECK_THROWS_AS(e.logits_backward(h, out_bad), ShapeError);
  CHECK_THROWS_AS(e.logits_backward(h, out, dh_bad), ShapeError);
  CHECK_THROWS_AS(e.logits_backward(h_bad, out), ShapeError);
  CHECK_THROWS_AS(Embedding<float>({0, 8}), ConfigError);
  EmbeddingConfig frozen{50, 8};
  frozen.trainable = false;
  ParamStore<float> s2;
  Embedding<float> ef(frozen);
  ef.register_params(s2, "wpe", rng);
  CHECK(s2.num_trainable() == 0);
  ef.forward({1, 2, 3}, y, c);
  CHECK_NOTHROW(ef.backward({1, 2, 3}, c, y));
}

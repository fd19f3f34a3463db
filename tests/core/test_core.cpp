// core/: errors, ParamStore, Rng, tensor views, gemm.
#include <catch2/catch.hpp>
#include <cmath>
#include <set>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/core/xtensor_view.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

TEST_CASE("PEMOE_CHECK throws the requested subclass with the streamed message") {
  try {
    PEMOE_CHECK_SHAPE(700 == 768, "LoRA 'h.0.attn.c_attn': x has ", 700, " features, layer expects ", 768);
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()) == "LoRA 'h.0.attn.c_attn': x has 700 features, layer expects 768");
  }
  CHECK_THROWS_AS([] { PEMOE_CHECK_CONFIG(false, "x"); }(), ConfigError);
  CHECK_THROWS_AS([] { PEMOE_CHECK_AS(IoError, false, "x"); }(), IoError);
  CHECK_NOTHROW([] { PEMOE_CHECK(true, "never"); }());
}

TEST_CASE("ParamStore: one arena, names, shapes, stable order") {
  ParamStore<float> s;
  const ParamId a = s.add("h.0.attn.c_attn.weight", {6, 4}, false);
  const ParamId b = s.add("h.0.attn.c_attn.lora_A.weight", {2, 4});
  const ParamId c = s.add("h.0.attn.c_attn.lora_B.weight", {6, 2});
  REQUIRE(s.num_values() == 24 + 8 + 12);
  REQUIRE(s.num_trainable() == 8 + 12);
  CHECK(s.entry(b).offset == 24);
  CHECK(s.value(b) == s.values().data() + 24);
  CHECK(s.matrix(a).rows() == 6);
  CHECK(s.matrix(a).cols() == 4);
  CHECK(s.id("h.0.attn.c_attn.lora_B.weight") == c);
  std::vector<std::string> names;
  for (const auto& e : s.entries()) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"h.0.attn.c_attn.weight", "h.0.attn.c_attn.lora_A.weight",
                                          "h.0.attn.c_attn.lora_B.weight"});
  SECTION("frozen parameters have no gradient") {
    CHECK_THROWS_AS(s.grad(a), Error);
  }
  SECTION("unknown names and duplicates are clear errors") {
    try {
      s.id("h.0.attn.c_attn.lora_C.weight");
      FAIL("no throw");
    } catch (const ConfigError& e) {
      CHECK(std::string(e.what()).find("no parameter named 'h.0.attn.c_attn.lora_C.weight'") !=
            std::string::npos);
      CHECK(std::string(e.what()).find("lora_A.weight") != std::string::npos);
    }
    CHECK_THROWS_AS(s.add("h.0.attn.c_attn.weight", {1}), ConfigError);
    CHECK_THROWS_AS(s.add("zero", {0, 3}), ConfigError);
  }
  SECTION("zero_grad is one fill; set_trainable re-lays gradients and keeps surviving ones") {
    std::fill(s.grads().begin(), s.grads().end(), 3.0f);
    s.zero_grad();
    for (float g : s.grads()) CHECK(g == 0.0f);
    s.grad_matrix(c).setConstant(5.0f);
    CHECK(s.set_trainable("lora_A", false) == 1);
    CHECK(s.num_trainable() == 12);
    CHECK(s.grad_matrix(c)(0, 0) == 5.0f);
    CHECK(s.set_trainable("\\.weight$", true) == 3);
    CHECK(s.num_trainable() == 44);
    CHECK(s.grad_matrix(c)(5, 1) == 5.0f);
    CHECK(s.grad_matrix(a)(0, 0) == 0.0f);
    CHECK_THROWS_AS(s.set_trainable("router", true), ConfigError);
    CHECK_THROWS_AS(s.set_trainable("(", true), ConfigError);
  }
  SECTION("views alias the arena") {
    s.matrix(b)(1, 3) = 2.5f;
    CHECK(s.values()[24 + 7] == 2.5f);
    auto t = s.tensor(c);
    CHECK(t.shape()[0] == 6);
    t(5, 1) = 4.0f;
    CHECK(s.values()[32 + 11] == 4.0f);
  }
}

TEST_CASE("Rng: seeded, splittable, counter-based") {
  Rng a(42), b(42), c(43);
  const auto x = a.next_u64();
  CHECK(x == b.next_u64());
  CHECK(x != c.next_u64());
  Rng p(1);
  CHECK(p.split("h.0").next_u64() == p.split("h.0").next_u64());
  CHECK(p.split("h.0").next_u64() != p.split("h.1").next_u64());
  SECTION("draw i does not depend on the order draws are made in (thread-count independence)") {
    Rng r(9);
    std::vector<double> seq(100);
    for (auto& v : seq) v = r.uniform();
    for (int i = 99; i >= 0; --i)
      CHECK(r.uniform_at(static_cast<std::uint64_t>(i)) == seq[static_cast<std::size_t>(i)]);
  }
  SECTION("moments of the distributions") {
    Rng r(5);
    const int n = 200000;
    double su = 0, sn = 0, sn2 = 0, sb = 0;
    for (int i = 0; i < n; ++i) {
      const double u = r.uniform();
      REQUIRE(u >= 0.0);
      REQUIRE(u < 1.0);
      su += u;
      const double z = r.normal();
      sn += z;
      sn2 += z * z;
      sb += r.bernoulli(0.3);
    }
    CHECK(su / n == Approx(0.5).margin(0.005));
    CHECK(sn / n == Approx(0.0).margin(0.01));
    CHECK(sn2 / n == Approx(1.0).margin(0.02));
    CHECK(sb / n == Approx(0.3).margin(0.005));
    std::vector<float> w(3000);
    r.fill_kaiming_uniform(w.data(), 3000, 768);
    const float bound = 1.0f / std::sqrt(768.0f);
    float mx = 0;
    for (float v : w) mx = std::max(mx, std::abs(v));
    CHECK(mx <= bound);
    CHECK(mx > 0.95f * bound);
  }
}

TEST_CASE("gemm: all four transpose combinations against a naive loop, beta semantics") {
  const Index m = 5, k = 7, n = 3;
  auto A = testing::random_matrix<double>(m, k, 1), B = testing::random_matrix<double>(k, n, 2);
  Matrix<double> naive = Matrix<double>::Zero(m, n);
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j)
      for (Index l = 0; l < k; ++l) naive(i, j) += A(i, l) * B(l, j);
  Matrix<double> At = A.transpose(), Bt = B.transpose();
  Matrix<double> C(m, n);
  gemm<double>(Op::N, Op::N, 1.0, A, B, 0.0, C);
  CHECK(testing::max_abs_diff(C, naive) < 1e-12);
  gemm<double>(Op::T, Op::N, 1.0, At, B, 0.0, C);
  CHECK(testing::max_abs_diff(C, naive) < 1e-12);
  gemm<double>(Op::N, Op::T, 1.0, A, Bt, 0.0, C);
  CHECK(testing::max_abs_diff(C, naive) < 1e-12);
  gemm<double>(Op::T, Op::T, 2.0, At, Bt, -1.0, C);  // C = 2·naive − naive
  CHECK(testing::max_abs_diff(C, naive) < 1e-12);
  C.setConstant(NAN);
  gemm<double>(Op::N, Op::N, 1.0, A, B, 0.0, C);  // beta = 0 ignores C, as in BLAS
  CHECK(testing::max_abs_diff(C, naive) < 1e-12);
  Matrix<double> wrong(m, n + 1);
  CHECK_THROWS_AS(gemm<double>(Op::N, Op::N, 1.0, A, B, 0.0, wrong), ShapeError);
}

TEST_CASE("tensor views do not copy") {
  std::vector<float> buf(24);
  auto t = adapt(buf.data(), {2, 3, 4});
  t(1, 2, 3) = 7.0f;
  CHECK(buf[23] == 7.0f);
  MatrixMap<float> m(buf.data(), 6, 4);
  CHECK(m(5, 3) == 7.0f);
  CHECK(shape_string({2, 3}) == "(2, 3)");
  CHECK(shape_size({2, 3, 4}) == 24);
}

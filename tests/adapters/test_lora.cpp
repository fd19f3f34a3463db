// adapters/lora.hpp: forward against a naive loop, gradients, init, rsLoRA, merge/unmerge, errors.
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <string>

#include "pemoe/adapters/lora.hpp"
#include "support/distribution.hpp"
#include "support/gradcheck.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace {
// y = x Wᵀ + b + s (x Aᵀ) Bᵀ, written as loops.
Matrix<double> naive_lora(const Matrix<double>& x, const LoRA<double>& l) {
  const Matrix<double> W = l.base().weight(), A = l.lora_A(), B = l.lora_B();
  const Matrix<double> b = l.base().bias();
  Matrix<double> y(x.rows(), W.rows());
  for (Index n = 0; n < x.rows(); ++n)
    for (Index o = 0; o < W.rows(); ++o) {
      double acc = b(0, o);
      for (Index i = 0; i < x.cols(); ++i) acc += x(n, i) * W(o, i);
      for (Index k = 0; k < A.rows(); ++k) {
        double h = 0;
        for (Index i = 0; i < x.cols(); ++i) h += x(n, i) * A(k, i);
        acc += l.scaling() * h * B(o, k);
      }
      y(n, o) = acc;
    }
  return y;
}
}  // namespace

TEST_CASE("LoRA: PEFT init, names, zero update at init") {
  ParamStore<float> s;
  Rng rng(11);
  LoRA<float> l({64, 32, true}, LoraConfig{});
  l.register_params(s, "h.0.attn.c_attn", rng);
  CHECK(s.contains("h.0.attn.c_attn.weight"));
  CHECK(s.contains("h.0.attn.c_attn.bias"));
  CHECK(s.entry(l.lora_A_id()).name == "h.0.attn.c_attn.lora_A.weight");
  CHECK(s.entry(l.lora_A_id()).shape == Shape{8, 64});
  CHECK(s.entry(l.lora_B_id()).shape == Shape{32, 8});
  CHECK(s.num_trainable() == 8 * 64 + 32 * 8);  // the base is frozen
  CHECK(l.lora_B().isZero());
  // Initialisation by Kolmogorov-Smirnov against the exact CDFs (alpha = 1e-3): A and the base weight
  // kaiming-uniform(√5) = U(±1/√d_in), the base bias U(±1/√d_in) (nn.Linear); at 16384 draws the look-alikes
  // (a 10 % wider uniform, a normal of the same std) are rejected.
  using testing::normal_cdf;
  using testing::uniform_cdf;
  auto ks = [](const ParamStore<float>& st, const std::string& name,
               const std::function<double(double)>& cdf) {
    const auto& e = st.entry(st.id(name));
    return testing::ks_statistic(testing::sample_of(st.values().data() + e.offset, e.size), cdf) /
           testing::ks_critical(std::size_t(e.size));  // < 1: accepted
  };
  CHECK(ks(s, "h.0.attn.c_attn.lora_A.weight", uniform_cdf(-1.0 / 8, 1.0 / 8)) < 1);
  CHECK(ks(s, "h.0.attn.c_attn.weight", uniform_cdf(-1.0 / 8, 1.0 / 8)) < 1);
  CHECK(ks(s, "h.0.attn.c_attn.bias", uniform_cdf(-1.0 / 8, 1.0 / 8)) < 1);
  CHECK(l.scaling() == 1.0f);  // alpha 8 / r 8
  ParamStore<float> big;
  LoRA<float> wide({1024, 32, true}, LoraConfig{16, 16});
  wide.register_params(big, "w", rng);
  CHECK(ks(big, "w.lora_A.weight", uniform_cdf(-1.0 / 32, 1.0 / 32)) < 1);
  CHECK(ks(big, "w.lora_A.weight", uniform_cdf(-1.1 / 32, 1.1 / 32)) > 1);
  CHECK(ks(big, "w.lora_A.weight", normal_cdf(0, 1.0 / 32 / std::sqrt(3.0))) > 1);
  // gaussian: A ~ N(0, init_std²)
  LoRA<float> g({64, 32, true}, LoraConfig{4, 16, 0.0, false, LoraInit::gaussian});
  ParamStore<float> s2;
  g.register_params(s2, "q", rng);
  CHECK(ks(s2, "q.lora_A.weight", normal_cdf(0, 0.02)) < 1);
  CHECK(g.scaling() == 4.0f);
  LoraConfig gauss_big{16, 16, 0.0, false, LoraInit::gaussian};
  LoRA<float> gw({1024, 32, true}, gauss_big);
  gw.register_params(big, "gw", rng);
  CHECK(ks(big, "gw.lora_A.weight", normal_cdf(0, 0.02)) < 1);
  CHECK(ks(big, "gw.lora_A.weight", normal_cdf(0, 0.022)) > 1);
  CHECK(ks(big, "gw.lora_A.weight", uniform_cdf(-0.02 * std::sqrt(3.0), 0.02 * std::sqrt(3.0))) > 1);
  LoraConfig rs;
  rs.r = 16;
  rs.alpha = 16;
  rs.use_rslora = true;
  CHECK(rs.scaling() == Approx(4.0));
}

TEST_CASE("LoRA forward equals the naive loop") {
  ParamStore<double> s;
  Rng rng(1);
  LoRA<double> l({7, 5, true}, LoraConfig{3, 6.0});
  l.register_params(s, "fc", rng);
  testing::randomize_params(s, 9);
  auto x = testing::random_matrix(4, 7, 2);
  Matrix<double> y(4, 5);
  LoRA<double>::Cache c;
  l.forward(x, y, c);
  CHECK(testing::max_abs_diff(y, naive_lora(x, l)) < 1e-12);
}

TEST_CASE("LoRA gradients pass the checker in double (frozen base, trainable base, rsLoRA, r = 1, dropout)") {
  struct Case {
    const char* what;
    LoraConfig cfg;
  };
  LoraConfig base_trainable{3, 6.0};
  base_trainable.base_trainable = true;
  LoraConfig rslora{2, 4.0};
  rslora.use_rslora = true;
  LoraConfig dropout{3, 6.0, 0.3};
  for (const Case& cs :
       {Case{"frozen base", LoraConfig{3, 6.0}}, Case{"trainable base", base_trainable},
        Case{"rslora", rslora}, Case{"r = 1", LoraConfig{1, 2.0}}, Case{"dropout 0.3", dropout}}) {
    SECTION(cs.what) {
      ParamStore<double> s;
      Rng rng(1);
      LoRA<double> l({7, 5, true}, cs.cfg);
      l.register_params(s, "fc", rng);
      testing::randomize_params(s, 9);
      l.set_training(true);
      LoRA<double>::Cache c;
      const auto r = testing::gradcheck(
          s, testing::random_matrix(4, 7, 2),
          [&](const Matrix<double>& x, Matrix<double>& y) {
            y.resize(x.rows(), 5);
            l.dropout().set_call_counter(0);  // the same dropout mask on every evaluation
            l.forward(x, y, c);
            return 0.0;
          },
          [&](const Matrix<double>& x, const Matrix<double>& dy, Matrix<double>& dx) {
            l.backward(x, c, dy, dx);
          });
      INFO(r.report());
      CHECK(r.ok(1e-6));
      CHECK(r.checked == 2 * (28 + s.num_trainable()));  // central differences + the twice-backward check
    }
  }
}

TEST_CASE("LoRA merge/unmerge: same output, restores the base weight to float rounding") {
  ParamStore<float> s;
  Rng rng(3);
  LoRA<float> l({48, 40, true}, LoraConfig{8, 16.0});
  l.register_params(s, "fc", rng);
  testing::randomize_params(s, 4, 0.3);
  const Matrix<float> w0 = l.base().weight();
  auto x = testing::random_matrix<float>(6, 48, 5);
  Matrix<float> y(6, 40), ym(6, 40);
  LoRA<float>::Cache c;
  l.forward(x, y, c);
  l.merge();
  CHECK(l.merged());
  l.forward(x, ym, c);
  CHECK(testing::max_abs_diff(y, ym) < 1e-4);
  Matrix<float> dy(6, 40);
  CHECK_THROWS_AS(l.backward(x, c, dy), ConfigError);
  CHECK_THROWS_AS(l.merge(), ConfigError);
  l.unmerge();
  CHECK(testing::max_abs_diff(l.base().weight(), w0) < 1e-5);
  CHECK_THROWS_AS(l.unmerge(), ConfigError);
}

TEST_CASE("LoRA errors name the site and the sizes") {
  ParamStore<float> s;
  Rng rng(3);
  LoRA<float> l({768, 16, true}, LoraConfig{});
  l.register_params(s, "h.0.attn.c_attn", rng);
  Matrix<float> x(2, 700), y(2, 16);
  LoRA<float>::Cache c;
  try {
    l.forward(x, y, c);
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()) == "LoRA 'h.0.attn.c_attn': x has 700 features, layer expects 768");
  }
  CHECK_THROWS_AS(LoRA<float>({8, 8, true}, LoraConfig{0}), ConfigError);
  LoRA<float> unbound({8, 8, true}, LoraConfig{});
  Matrix<float> x8(1, 8), y8(1, 8);
  CHECK_THROWS_AS(unbound.forward(x8, y8, c), ConfigError);
}

TEST_CASE("LoRA training is deterministic: same seed, same bits (dropout included)") {
  auto train = [] {
    ParamStore<float> s;
    Rng rng(21);
    LoRA<float> l({32, 24, true}, LoraConfig{4, 8.0, 0.1});
    l.register_params(s, "fc", rng);
    l.set_training(true);
    LoRA<float>::Cache c;
    Matrix<float> y(16, 24), dx(16, 32);
    for (int step = 0; step < 5; ++step) {
      const Matrix<float> x = testing::random_matrix<float>(16, 32, 100 + std::uint64_t(step));
      l.forward(x, y, c);
      s.zero_grad();
      l.backward(x, c, y / float(y.size()), dx);  // the gradient of mean(y²)/2
      s.matrix(l.lora_B_id()) -= 0.5f * s.grad_matrix(l.lora_B_id());
      s.matrix(l.lora_A_id()) -= 0.5f * s.grad_matrix(l.lora_A_id());
    }
    return s.values();
  };
  const auto a = train(), b = train();
  for (float v : a) REQUIRE(std::isfinite(v));
  CHECK(a == b);
  CHECK(a != AlignedVector<float>(a.size(), 0.0f));
}

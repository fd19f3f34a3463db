// nn/attention.hpp: GPT-2 causal self-attention against an independent long-double loop (B = 2, T = 7,
// head_dim 12 and 20, causal or not, with key padding), every gradient against central differences (with and
// without dropout), exact causality (changing tokens after t never changes outputs at t), padding, errors.
#include <array>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "pemoe/nn/attention.hpp"
#include "support/gradcheck.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

static_assert(is_layer_v<CausalSelfAttention<float>> && is_layer_v<CausalSelfAttention<double>>,
              "CausalSelfAttention follows the layer contract");

namespace {

constexpr Index kB = 2, kT = 7;
// (n_heads, head_dim): d_model 36 and 40 (whole SIMD blocks), head_dim ≠ 64 and not a multiple of 8 or 16.
constexpr std::array<std::array<Index, 2>, 2> kHeads{{{3, 12}, {2, 20}}};
// Sequence 0 right-padded, sequence 1 left-padded: with the causal mask, rows 0 and 1 of sequence 1 see no
// key.
const std::vector<std::int64_t> kPadded{1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1};

/// y of GPT-2 attention by plain loops in long double, from the layer's parameters (no dropout).
template <class T>
Matrix<double> naive_attention(const CausalSelfAttention<T>& a, const Matrix<T>& x, Index B, Index S,
                               const std::vector<std::int64_t>& mask) {
  const Index d = a.config().d_model, H = a.config().n_heads, D = d / H, n = B * S;
  const auto wa = a.c_attn().weight(), ba = a.c_attn().bias(), wp = a.c_proj().weight(),
             bp = a.c_proj().bias();
  std::vector<std::vector<long double>> qkv(static_cast<std::size_t>(n), std::vector<long double>(3 * d));
  for (Index i = 0; i < n; ++i)
    for (Index o = 0; o < 3 * d; ++o) {
      long double acc = ba(0, o);
      for (Index j = 0; j < d; ++j) acc += static_cast<long double>(x(i, j)) * wa(o, j);
      qkv[i][o] = acc;
    }
  std::vector<std::vector<long double>> ctx(static_cast<std::size_t>(n), std::vector<long double>(d, 0.0L));
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index i = 0; i < S; ++i) {
        std::vector<long double> s(static_cast<std::size_t>(S));
        std::vector<bool> seen(static_cast<std::size_t>(S));
        long double m = -INFINITY;
        for (Index j = 0; j < S; ++j) {
          seen[j] = (!a.config().causal || j <= i) && (mask.empty() || mask[b * S + j] == 1);
          if (!seen[j]) continue;
          long double dot = 0;
          for (Index e = 0; e < D; ++e) dot += qkv[b * S + i][h * D + e] * qkv[b * S + j][d + h * D + e];
          s[j] = dot / std::sqrt(static_cast<long double>(D));
          m = std::max(m, s[j]);
        }
        long double z = 0;
        for (Index j = 0; j < S; ++j) z += seen[j] ? std::exp(s[j] - m) : 0.0L;
        for (Index j = 0; j < S; ++j) {
          if (!seen[j]) continue;
          const long double p = std::exp(s[j] - m) / z;
          for (Index e = 0; e < D; ++e) ctx[b * S + i][h * D + e] += p * qkv[b * S + j][2 * d + h * D + e];
        }
      }
  Matrix<double> y(n, d);
  for (Index i = 0; i < n; ++i)
    for (Index o = 0; o < d; ++o) {
      long double acc = bp(0, o);
      for (Index j = 0; j < d; ++j) acc += ctx[i][j] * wp(o, j);
      y(i, o) = static_cast<double>(acc);
    }
  return y;
}

template <class T>
CausalSelfAttention<T> make_attention(ParamStore<T>& s, Index heads, Index head_dim, bool causal = true,
                                      double p_attn = 0.0, double p_resid = 0.0) {
  AttentionConfig cfg;
  cfg.d_model = heads * head_dim;
  cfg.n_heads = heads;
  cfg.causal = causal;
  cfg.attn_dropout = p_attn;
  cfg.resid_dropout = p_resid;
  CausalSelfAttention<T> a(cfg);
  Rng rng(1);
  a.register_params(s, "h.0.attn", rng);
  testing::randomize_params(s, 2, 0.15);  // scores of a few units: softmax neither uniform nor one-hot
  return a;
}

testing::GradcheckResult check_attention(CausalSelfAttention<double>& a, ParamStore<double>& s,
                                         std::uint64_t seed) {
  CausalSelfAttention<double>::Cache c;
  const Index d = a.config().d_model;
  testing::GradcheckOptions o;
  o.h = 1e-4;  // the loss sums 14·40 terms; the k bias has an exactly zero gradient (softmax is
               // shift-invariant)
  o.max_entries = 250;
  return testing::gradcheck(
      s, testing::random_matrix(kB * kT, d, seed),
      [&](const Matrix<double>& x, Matrix<double>& y) {
        y.resize(x.rows(), d);
        a.attn_dropout().set_call_counter(0);  // replay the same dropout masks
        a.resid_dropout().set_call_counter(0);
        a.forward(x, y, c);
        return 0.0;
      },
      [&](const Matrix<double>& x, const Matrix<double>& dy, Matrix<double>& dx) {
        a.backward(x, c, dy, dx);
      },
      o);
}

}  // namespace

TEST_CASE("CausalSelfAttention: HF parameter names and shapes (pemoe's (out, in)); head_dim must divide") {
  auto s = ParamStore<float>::declaration_only();
  AttentionConfig cfg;
  cfg.d_model = 40;
  cfg.n_heads = 2;
  CausalSelfAttention<float> a(cfg);
  Rng rng(1);
  a.register_params(s, "transformer.h.0.attn", rng);
  REQUIRE(s.size() == 4);
  CHECK(s.entries()[0].name == "transformer.h.0.attn.c_attn.weight");
  CHECK(s.entries()[0].shape == Shape{120, 40});
  CHECK(s.entries()[1].name == "transformer.h.0.attn.c_attn.bias");
  CHECK(s.entries()[1].shape == Shape{120});
  CHECK(s.entries()[2].name == "transformer.h.0.attn.c_proj.weight");
  CHECK(s.entries()[2].shape == Shape{40, 40});
  CHECK(s.entries()[3].name == "transformer.h.0.attn.c_proj.bias");
  CHECK(cfg.head_dim() == 20);
  cfg.n_heads = 3;
  try {
    CausalSelfAttention<float> bad(cfg);
    FAIL("no throw");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()) ==
          "CausalSelfAttention: d_model 40 is not a multiple of n_heads 3 (head_dim = d_model / n_heads)");
  }
  cfg.n_heads = 0;
  CHECK_THROWS_AS(CausalSelfAttention<float>(cfg), ConfigError);
}

TEST_CASE("CausalSelfAttention forward equals the naive loop (B = 2, T = 7, head_dim 12 and 20)") {
  for (auto [heads, head_dim] : kHeads)
    for (bool causal : {true, false})
      for (const auto& mask : {std::vector<std::int64_t>{}, kPadded}) {
        ParamStore<double> s;
        auto a = make_attention(s, heads, head_dim, causal);
        const Index d = heads * head_dim;
        const Matrix<double> x = testing::random_matrix(kB * kT, d, 3);
        Matrix<double> y(kB * kT, d);
        CausalSelfAttention<double>::Cache c;
        a.set_batch(kB, kT, mask);
        a.forward(x, y, c);
        INFO("heads " << heads << " head_dim " << head_dim << " causal " << causal << " padded "
                      << !mask.empty());
        CHECK(testing::max_abs_diff(y, naive_attention(a, x, kB, kT, mask)) < 1e-12);
        CHECK(y.allFinite());
      }
  // float, against the long-double loop on the same float parameters
  ParamStore<float> sf;
  auto af = make_attention(sf, 2, 20);
  const Matrix<float> xf = testing::random_matrix<float>(kB * kT, 40, 4);
  Matrix<float> yf(kB * kT, 40);
  CausalSelfAttention<float>::Cache cf;
  af.set_batch(kB, kT, kPadded);
  af.forward(xf, yf, cf);
  CHECK(testing::max_abs_diff(yf.cast<double>(), naive_attention(af, xf, kB, kT, kPadded)) < 2e-5);
}

TEST_CASE("CausalSelfAttention gradients pass the checker: head_dim 12 and 20, causal, padded, non-causal") {
  for (auto [heads, head_dim] : kHeads) {
    struct Case {
      const char* name;
      bool causal;
      std::vector<std::int64_t> mask;
    };
    for (const Case& k : {Case{"causal", true, {}}, Case{"causal padded (fully masked rows)", true, kPadded},
                          Case{"bidirectional padded", false, kPadded}}) {
      ParamStore<double> s;
      auto a = make_attention(s, heads, head_dim, k.causal);
      a.set_batch(kB, kT, k.mask);
      const auto r = check_attention(a, s, 5);
      INFO(k.name << ", heads " << heads << " head_dim " << head_dim << ": " << r.report());
      CHECK(r.ok(1e-6));
      CHECK(r.checked > 1000);
    }
  }
}

TEST_CASE("CausalSelfAttention gradients with attention and residual dropout (masks regenerated)") {
  for (auto [heads, head_dim] : kHeads) {
    ParamStore<double> s;
    auto a = make_attention(s, heads, head_dim, true, 0.2, 0.1);
    a.set_training(true);
    a.set_batch(kB, kT, kPadded);
    const auto r = check_attention(a, s, 6);
    INFO("heads " << heads << " head_dim " << head_dim << ": " << r.report());
    CHECK(r.ok(1e-6));
    // Dropout is really on: training output differs from evaluation output.
    const Matrix<double> x = testing::random_matrix(kB * kT, heads * head_dim, 7);
    Matrix<double> yt(x.rows(), x.cols()), ye(x.rows(), x.cols());
    CausalSelfAttention<double>::Cache c;
    a.forward(x, yt, c);
    a.set_training(false);
    a.forward(x, ye, c);
    CHECK(testing::max_abs_diff(yt, ye) > 1e-3);
  }
}

TEMPLATE_TEST_CASE("CausalSelfAttention is exactly causal: tokens after t never change outputs at t", "",
                   float, double) {
  for (auto [heads, head_dim] : kHeads)
    for (bool training : {false, true}) {
      ParamStore<TestType> s;
      auto a = make_attention(s, heads, head_dim, true, 0.25, 0.1);
      a.set_training(training);
      a.set_batch(kB, kT);
      const Index d = heads * head_dim;
      const Matrix<TestType> x = testing::random_matrix<TestType>(kB * kT, d, 8);
      Matrix<TestType> y(kB * kT, d), y2(kB * kT, d);
      typename CausalSelfAttention<TestType>::Cache c;
      a.attn_dropout().set_call_counter(0);
      a.resid_dropout().set_call_counter(0);
      a.forward(x, y, c);
      for (Index t = 0; t + 1 < kT; ++t) {
        Matrix<TestType> x2 = x;
        for (Index b = 0; b < kB; ++b)  // every token after t, in both sequences
          x2.middleRows(b * kT + t + 1, kT - t - 1) =
              testing::random_matrix<TestType>(kT - t - 1, d, 100 + t, 5.0);
        a.attn_dropout().set_call_counter(0);
        a.resid_dropout().set_call_counter(0);
        a.forward(x2, y2, c);
        INFO("heads " << heads << " training " << training << " t " << t);
        for (Index b = 0; b < kB; ++b) {
          CHECK(y2.middleRows(b * kT, t + 1) == y.middleRows(b * kT, t + 1));  // bit for bit
          CHECK(y2.row(b * kT + t + 1) != y.row(b * kT + t + 1));
        }
      }
    }
}

TEST_CASE(
    "CausalSelfAttention padding: padded keys are never seen; a row with no visible key gives the bias") {
  for (bool causal : {true, false}) {
    ParamStore<double> s;
    auto a = make_attention(s, 3, 12, causal);
    a.set_batch(kB, kT, kPadded);
    const Matrix<double> x = testing::random_matrix(kB * kT, 36, 9);
    Matrix<double> y(kB * kT, 36), y2(kB * kT, 36);
    CausalSelfAttention<double>::Cache c;
    a.forward(x, y, c);
    Matrix<double> x2 = x;  // change every padded token
    for (Index i = 0; i < kB * kT; ++i)
      if (kPadded[static_cast<std::size_t>(i)] == 0) x2.row(i) = testing::random_matrix(1, 36, 50 + i, 4.0);
    a.forward(x2, y2, c);
    for (Index i = 0; i < kB * kT; ++i)
      if (kPadded[static_cast<std::size_t>(i)] == 1) CHECK(y2.row(i) == y.row(i));
    CHECK(y.allFinite());
    if (causal) {  // sequence 1, positions 0 and 1: padded and seeing no real key -> zero context
      CHECK(c.probs.middleRows(((1 * 3 + 0) * kT), 2).isZero(0.0));
      CHECK(y.row(kT + 0) == a.c_proj().bias().row(0));
      CHECK(y.row(kT + 1) == a.c_proj().bias().row(0));
    }
  }
  // A sequence made only of padding, bidirectional: every row of it is the c_proj bias, and backward is
  // finite.
  ParamStore<double> s;
  auto a = make_attention(s, 2, 20, false);
  std::vector<std::int64_t> mask(kB * kT, 1);
  for (Index t = 0; t < kT; ++t) mask[static_cast<std::size_t>(kT + t)] = 0;
  a.set_batch(kB, kT, mask);
  const Matrix<double> x = testing::random_matrix(kB * kT, 40, 10),
                       dy = testing::random_matrix(kB * kT, 40, 11);
  Matrix<double> y(kB * kT, 40), dx(kB * kT, 40);
  CausalSelfAttention<double>::Cache c;
  a.forward(x, y, c);
  for (Index t = 0; t < kT; ++t) CHECK(y.row(kT + t) == a.c_proj().bias().row(0));
  a.backward(x, c, dy, dx);
  CHECK(dx.allFinite());
}

TEST_CASE("CausalSelfAttention: backward uses the layout saved in the cache; frozen projections") {
  ParamStore<double> s;
  auto a = make_attention(s, 3, 12);
  a.set_batch(kB, kT, kPadded);
  const Matrix<double> x = testing::random_matrix(kB * kT, 36, 12),
                       dy = testing::random_matrix(kB * kT, 36, 13);
  Matrix<double> y(kB * kT, 36), dx1(kB * kT, 36), dx2(kB * kT, 36);
  CausalSelfAttention<double>::Cache c;
  a.forward(x, y, c);
  a.backward(x, c, dy, dx1);
  a.set_batch(1, kB * kT);  // the next forward's layout; this cache keeps its own
  a.backward(x, c, dy, dx2);
  CHECK(dx1 == dx2);

  ParamStore<double> sf;
  AttentionConfig cfg;
  cfg.d_model = 36;
  cfg.n_heads = 3;
  cfg.trainable = false;
  CausalSelfAttention<double> frozen(cfg);
  Rng rng(1);
  frozen.register_params(sf, "attn", rng);
  CHECK(sf.num_trainable() == 0);
  frozen.set_batch(kB, kT);
  const auto r = check_attention(frozen, sf, 14);
  INFO(r.report());
  CHECK(r.ok(1e-6));
  frozen.forward(x, y, c);
  CHECK_NOTHROW(frozen.backward(x, c, dy));  // nothing to compute
}

TEST_CASE("CausalSelfAttention errors: layout, mask, every buffer's shape, aliasing; they name the layer") {
  ParamStore<float> s;
  auto a = make_attention(s, 2, 20);
  const Matrix<float> x = testing::random_matrix<float>(kB * kT, 40, 1);
  Matrix<float> y(kB * kT, 40), y_bad(kB * kT, 41), dx_bad(kB * kT - 1, 40);
  CausalSelfAttention<float>::Cache c;
  CHECK_THROWS_AS(a.forward(x, y, c), ConfigError);  // no set_batch yet
  a.set_batch(2, 6);
  try {
    a.forward(x, y, c);
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()) ==
          "CausalSelfAttention 'h.0.attn': x has 14 rows, set_batch(2, 6) expects B·T = 12");
  }
  try {
    a.set_batch(2, 7, {1, 1, 1});
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()) ==
          "CausalSelfAttention 'h.0.attn': key_mask has 3 values, expected B·T = 14 (or none)");
  }
  std::vector<std::int64_t> two(kB * kT, 1);
  two[3] = 2;
  CHECK_THROWS_AS(a.set_batch(2, 7, two), ConfigError);
  CHECK_THROWS_AS(a.set_batch(0, 7), ConfigError);
  a.set_batch(kB, kT);
  CHECK_THROWS_AS(a.forward(x, y_bad, c), ShapeError);
  const Matrix<float> x_wide = testing::random_matrix<float>(kB * kT, 41, 1);
  CHECK_THROWS_AS(a.forward(x_wide, y, c), ShapeError);
  Matrix<float> xy = x;
  try {
    a.forward(xy, xy, c);
    FAIL("no throw");
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()).find("CausalSelfAttention 'h.0.attn'") == 0);
  }
  a.forward(x, y, c);
  CHECK_THROWS_AS(a.backward(x, c, y, dx_bad), ShapeError);
  CHECK_THROWS_AS(a.backward(x, c, y_bad), ShapeError);
  CHECK_THROWS_AS(a.backward(x_wide, c, y), ShapeError);
  CHECK_THROWS_AS(a.backward(x.topRows(kT), c, y.topRows(kT)), ShapeError);  // x of another layout
  CHECK_NOTHROW(a.backward(x, c, y));
}

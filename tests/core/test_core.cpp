// core/: errors, ParamStore (arena, neither copyable nor movable, exception-safe add, declaration-only mode,
// list_params, set by name, selection by predicate and regex), Rng (distributions by Kolmogorov–Smirnov),
// tensor views, gemm.
#include <algorithm>
#include <catch2/catch.hpp>
#include <fstream>
#if defined(__linux__)
#include <unistd.h>
#endif
#include <cmath>
#include <cstdlib>
#include <new>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "pemoe/adapters/lora.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/param_select.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/core/weight_pack.hpp"
#include "pemoe/core/xtensor_view.hpp"
#include "support/distribution.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

// ---- allocation-failure injection (for the exception-safety tests) ---------------------------------------
// Every allocation of this test binary goes through these replacements; they only fail while a test has armed
// them, on the n-th allocation from then on.
namespace {
thread_local long g_allocations_before_failure = -1;  // -1: never fail

void* checked_malloc(std::size_t n) {
  if (g_allocations_before_failure == 0) throw std::bad_alloc();
  if (g_allocations_before_failure > 0) --g_allocations_before_failure;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}

// Runs `f` with the n-th allocation failing; returns whether f completed (false: it threw std::bad_alloc).
template <class F>
bool run_failing_allocation(long n, F&& f) {
  g_allocations_before_failure = n;
  try {
    f();
  } catch (const std::bad_alloc&) {
    g_allocations_before_failure = -1;
    return false;
  }
  g_allocations_before_failure = -1;
  return true;
}
}  // namespace

void* operator new(std::size_t n) {
  return checked_malloc(n);
}
void* operator new[](std::size_t n) {
  return checked_malloc(n);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
// The nothrow forms too (Catch2 allocates with them): every form must pair with the deletes above, or
// AddressSanitizer reports an alloc-dealloc mismatch between its own new and this free.
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return checked_malloc(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return checked_malloc(n);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  std::free(p);
}

namespace {

// Everything observable about a store, for "unchanged" comparisons.
template <class T>
struct Snapshot {
  std::vector<std::string> names;
  std::vector<Shape> shapes;
  std::vector<Index> offsets, sizes, grad_offsets;
  std::vector<bool> trainable;
  AlignedVector<T> values, grads;
  Index num_values = 0, num_trainable = 0;

  explicit Snapshot(const ParamStore<T>& s)
      : values(s.values()), grads(s.grads()), num_values(s.num_values()), num_trainable(s.num_trainable()) {
    for (const auto& e : s.entries()) {
      names.push_back(e.name);
      shapes.push_back(e.shape);
      offsets.push_back(e.offset);
      sizes.push_back(e.size);
      grad_offsets.push_back(e.grad_offset);
      trainable.push_back(e.trainable);
    }
  }
  bool operator==(const Snapshot& o) const {
    return names == o.names && shapes == o.shapes && offsets == o.offsets && sizes == o.sizes &&
           grad_offsets == o.grad_offsets && trainable == o.trainable && values == o.values &&
           grads == o.grads && num_values == o.num_values && num_trainable == o.num_trainable;
  }
};

// A store with 4 parameters (so the 5th add must grow the entry table), values and gradients set.
template <class T>
void fill_four(ParamStore<T>& s) {
  s.add("encoder.block.0.layer.0.SelfAttention.q.weight", {4, 3});
  s.add("encoder.block.0.layer.0.SelfAttention.q.bias", {4}, false);
  s.add("encoder.block.0.layer.0.SelfAttention.k.weight", {2, 3});
  s.add("encoder.block.0.layer.0.SelfAttention.v.weight", {5, 3}, false);
  for (std::size_t i = 0; i < s.values().size(); ++i) s.values()[i] = T(i + 1);
  for (std::size_t i = 0; i < s.grads().size(); ++i) s.grads()[i] = T(-1.0 - double(i));
}

// A layer that counts the runs of its "expensive" initialisation (skipped when only declaring).
struct ProbeLayer {
  using Scalar = float;
  struct Cache {};
  int* expensive_runs = nullptr;
  void register_params(ParamStore<float>& s, const std::string& prefix, Rng& rng) {
    const ParamId w = s.add(prefix + ".weight", {300, 7});
    rng.fill_normal(s.value(w), 300 * 7, 0.0, 1.0);  // writes the whole parameter through value()
    const ParamId b = s.add(prefix + ".bias", {7}, false);
    s.matrix(b).setOnes();
    if (!s.declaring_only()) ++*expensive_runs;
  }
};

}  // namespace

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
    CHECK(set_trainable(s, "lora_A", false) == 1);
    CHECK(s.num_trainable() == 12);
    CHECK(s.grad_matrix(c)(0, 0) == 5.0f);
    CHECK(set_trainable(s, "\\.weight$", true) == 3);
    CHECK(s.num_trainable() == 44);
    CHECK(s.grad_matrix(c)(5, 1) == 5.0f);
    CHECK(s.grad_matrix(a)(0, 0) == 0.0f);
    const Snapshot<float> before(s);
    CHECK_THROWS_WITH(set_trainable(s, "router", true),
                      "ParamStore::set_trainable: pattern 'router' matches none of the 3 parameters");
    CHECK_THROWS_WITH(set_trainable(s, "(", true),
                      Catch::StartsWith("ParamStore::set_trainable: '(' is not a valid regex: "));
    CHECK(Snapshot<float>(s) == before);  // a failed selection changes nothing
    // the predicate form: any rule over the entry, zero matches is not an error
    CHECK(s.set_trainable_if([](const auto& e) { return e.shape.size() == 2 && e.shape[1] == 2; }, false) ==
          1);
    CHECK_FALSE(s.trainable(c));
    CHECK(s.trainable(b));
    CHECK(s.set_trainable_if([](const auto& e) { return e.name.empty(); }, false) == 0);
    CHECK(s.num_trainable() == 32);
  }
  SECTION("views alias the arena") {
    s.matrix(b)(1, 3) = 2.5f;
    CHECK(s.values()[24 + 7] == 2.5f);
    auto t = tensor_view(s, c);
    CHECK(t.shape()[0] == 6);
    t(5, 1) = 4.0f;
    CHECK(s.values()[32 + 11] == 4.0f);
  }
}

TEST_CASE("ParamStore is neither copyable nor movable (layers keep a pointer to it)") {
  STATIC_REQUIRE_FALSE(std::is_copy_constructible_v<ParamStore<float>>);
  STATIC_REQUIRE_FALSE(std::is_copy_assignable_v<ParamStore<float>>);
  STATIC_REQUIRE_FALSE(std::is_move_constructible_v<ParamStore<float>>);
  STATIC_REQUIRE_FALSE(std::is_move_assignable_v<ParamStore<float>>);
  STATIC_REQUIRE_FALSE(std::is_move_constructible_v<ParamStore<double>>);
  // the factory still works (guaranteed copy elision)
  auto d = ParamStore<float>::declaration_only();
  CHECK(d.declaring_only());
  CHECK_FALSE(ParamStore<float>().declaring_only());
}

TEST_CASE("ParamStore::add is exception-safe: a throwing add leaves the store exactly as it was") {
  for (bool declaring : {false, true}) {
    for (bool trainable : {true, false}) {
      DYNAMIC_SECTION((declaring ? "declaration-only" : "allocating")
                      << ", new parameter " << (trainable ? "trainable" : "frozen")) {
        std::optional<ParamStore<double>> opt;
        if (declaring)
          opt.emplace(DeclarationOnly{});
        else
          opt.emplace();
        ParamStore<double>& s = *opt;
        fill_four(s);
        const Snapshot<double> before(s);
        // errors found by validation
        CHECK_THROWS_AS(s.add("encoder.block.0.layer.0.SelfAttention.k.weight", {1}), ConfigError);
        CHECK_THROWS_AS(s.add("", {1}), ConfigError);
        CHECK_THROWS_AS(s.add("zero.extent", {3, 0}), ConfigError);
        CHECK_THROWS_AS(s.add("negative.extent", {-2, 3}), ConfigError);
        CHECK_THROWS_AS(s.add("overflow", {Index(1) << 32, Index(1) << 32}), ShapeError);
        if (!declaring)  // 2^62 values fit an Index but no vector: the arena cannot grow
          CHECK_THROWS_AS(s.add("too.big.for.a.vector", {Index(1) << 31, Index(1) << 31}, trainable),
                          std::length_error);
        CHECK(Snapshot<double>(s) == before);
        // every allocation add makes, failing in turn
        const std::string name = "decoder.block.0.layer.2.DenseReluDense.wi.lora_A.weight";
        int failures = 0;
        bool done = false;
        for (long n = 0; !done && n < 100; ++n) {
          ParamId id = 0;
          done = run_failing_allocation(n, [&] { id = s.add(name, {40, 50}, trainable); });
          if (done) {
            CHECK(id == 4);
            break;
          }
          ++failures;
          INFO("allocation " << n << " failed");
          REQUIRE(Snapshot<double>(s) == before);
          CHECK_FALSE(s.contains(name));
          CHECK(s.id("encoder.block.0.layer.0.SelfAttention.v.weight") == 3);
        }
        REQUIRE(done);
        CHECK(failures >= (declaring ? 3 : 5));  // name, shape, map node, entry table (+ the arenas)
        // the store works normally afterwards: the new parameter follows the old ones, in step
        CHECK(s.num_values() == before.num_values + 2000);
        CHECK(s.num_trainable() == before.num_trainable + (trainable ? 2000 : 0));
        CHECK(s.entry(4).offset == before.num_values);
        if (!declaring) {
          CHECK(Index(s.values().size()) == s.num_values());
          CHECK(Index(s.grads().size()) == s.num_trainable());
          CHECK(std::equal(before.values.begin(), before.values.end(), s.values().begin()));
          CHECK(std::equal(before.grads.begin(), before.grads.end(), s.grads().begin()));
          if (trainable) CHECK(s.entry(4).grad_offset == before.num_trainable);
        }
        // set_trainable_if is strongly safe too
        const Snapshot<double> after_add(s);
        bool relaid = false;
        for (long n = 0; !relaid && n < 20; ++n) {
          relaid =
              run_failing_allocation(n, [&] { s.set_trainable_if([](const auto&) { return true; }, true); });
          if (!relaid) REQUIRE(Snapshot<double>(s) == after_add);
        }
        CHECK(relaid);
        CHECK(s.num_trainable() == s.num_values());
      }
    }
  }
}

TEST_CASE("ParamStore declaration-only mode and list_params: names, shapes, flags, no arena") {
  auto d = ParamStore<float>::declaration_only();
  int runs = 0;
  ProbeLayer probe{&runs};
  Rng rng(1);
  probe.register_params(d, "mlp.fc", rng);
  CHECK(runs == 0);  // the expensive initialiser saw declaring_only()
  CHECK(d.size() == 2);
  CHECK(d.values().empty());
  CHECK(d.grads().empty());
  CHECK(d.num_values() == 2107);
  CHECK(d.num_trainable() == 2100);
  CHECK(d.entry(1).offset == 2100);
  CHECK(d.entry(0).grad_offset == 0);
  CHECK(d.value(0) == d.value(1));  // one shared scratch buffer
  d.zero_grad();
  set_trainable(d, "bias", true);
  CHECK(d.num_trainable() == 2107);
  CHECK(d.entry(1).grad_offset == 2100);
  const float w[7] = {};
  d.set("mlp.fc.bias", w, {7});  // checked, not stored
  CHECK_THROWS_AS(d.set("mlp.fc.bias", w, {6}), ShapeError);
  CHECK(d.values().empty());

  SECTION("list_params of a real layer: a copy is registered, the layer itself stays unbound") {
    LoRA<float> lora({64, 32, true}, LoraConfig{});
    const auto params = list_params(lora, "h.0.attn.c_attn");
    REQUIRE(params.size() == 4);
    CHECK(params[0].name == "h.0.attn.c_attn.weight");
    CHECK(params[0].shape == Shape{32, 64});
    CHECK_FALSE(params[0].trainable);
    CHECK(params[1].name == "h.0.attn.c_attn.bias");
    CHECK(params[1].shape == Shape{32});
    CHECK_FALSE(params[1].trainable);
    CHECK(params[2].name == "h.0.attn.c_attn.lora_A.weight");
    CHECK(params[2].shape == Shape{8, 64});
    CHECK(params[2].trainable);
    CHECK(params[3].name == "h.0.attn.c_attn.lora_B.weight");
    CHECK(params[3].shape == Shape{32, 8});
    CHECK(params[3].trainable);
    CHECK(lora.name().empty());  // the original was never registered
    // the same records as a real registration
    ParamStore<float> real;
    Rng r(3);
    lora.register_params(real, "h.0.attn.c_attn", r);
    REQUIRE(real.size() == params.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
      CHECK(real.entries()[i].name == params[i].name);
      CHECK(real.entries()[i].shape == params[i].shape);
      CHECK(real.entries()[i].trainable == params[i].trainable);
    }
  }
  SECTION("list_params of a layer with an expensive initialiser skips it") {
    const auto params = list_params(probe, "x");
    CHECK(runs == 0);
    REQUIRE(params.size() == 2);
    CHECK(params[0].name == "x.weight");
    CHECK(params[1].shape == Shape{7});
  }
}

TEST_CASE("ParamStore::set copies external weights by name, checking the shape") {
  ParamStore<double> s;
  s.add("enc.q.weight", {2, 3});
  s.add("enc.q.bias", {3}, false);
  s.add("enc.experts.lora_A.weight", {2, 2, 3});
  const std::vector<double> w = {1, 2, 3, 4, 5, 6};
  s.set("enc.q.weight", w.data(), {2, 3});
  CHECK(std::vector<double>(s.values().begin(), s.values().begin() + 6) == w);
  CHECK_THROWS_WITH(s.set("enc.q.weight", w.data(), {3, 2}),
                    "ParamStore::set: parameter 'enc.q.weight' has shape (2, 3), given (3, 2)");
  CHECK_THROWS_WITH(s.set("enc.q.bias", w.data(), {1, 3}),
                    "ParamStore::set: parameter 'enc.q.bias' has shape (3), given (1, 3)");
  CHECK_THROWS_AS(s.set("enc.k.weight", w.data(), {2, 3}), ConfigError);
  CHECK(std::vector<double>(s.values().begin(), s.values().begin() + 6) == w);  // failed sets wrote nothing
  SECTION("Eigen overload: the matrix() view, a 1-D parameter as a row or a column") {
    Matrix<double> m(2, 3);
    m << 6, 5, 4, 3, 2, 1;
    s.set("enc.q.weight", m);
    CHECK(s.matrix(0) == m);
    RowVector<double> row(3);
    row << 7, 8, 9;
    s.set("enc.q.bias", row);
    CHECK(s.values()[6] == 7);
    Vector<double> col(3);
    col << 10, 11, 12;
    s.set("enc.q.bias", col);
    CHECK(s.values()[8] == 12);
    Matrix<double> stacked = Matrix<double>::Constant(4, 3, 0.5);
    s.set("enc.experts.lora_A.weight", stacked);  // (2, 2, 3) viewed as (4, 3)
    CHECK(s.values()[9] == 0.5);
    CHECK_THROWS_WITH(
        s.set("enc.q.weight", Matrix<double>(m.transpose())),
        "ParamStore::set: parameter 'enc.q.weight' has shape (2, 3), viewed as a (2, 3) matrix; "
        "given a (3, 2) matrix");
    CHECK_THROWS_AS(s.set("enc.experts.lora_A.weight", Matrix<double>(2, 6)), ShapeError);
    CHECK(s.matrix(0) == m);
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
  SECTION("distributions: Kolmogorov-Smirnov against the exact CDFs (alpha = 1e-3), alternatives rejected") {
    using testing::ks_critical;
    using testing::ks_statistic;
    using testing::normal_cdf;
    using testing::uniform_cdf;
    Rng r(5);
    const int n = 100000;
    std::vector<double> u(n), z(n);
    double sb = 0;
    for (int i = 0; i < n; ++i) {
      u[std::size_t(i)] = r.uniform();
      z[std::size_t(i)] = r.normal();
      sb += r.bernoulli(0.3);
    }
    CHECK(*std::min_element(u.begin(), u.end()) >= 0.0);
    CHECK(*std::max_element(u.begin(), u.end()) < 1.0);
    const double crit = ks_critical(n);
    CHECK(ks_statistic(u, uniform_cdf(0, 1)) < crit);
    CHECK(ks_statistic(z, normal_cdf(0, 1)) < crit);
    CHECK(ks_statistic(z, normal_cdf(0, 1.05)) > crit);                           // 5 % off in std is seen
    CHECK(ks_statistic(z, uniform_cdf(-std::sqrt(3.0), std::sqrt(3.0))) > crit);  // same mean and std
    CHECK(ks_statistic(u, uniform_cdf(0, 1.01)) > crit);
    // Bernoulli(0.3): |mean − 0.3| within 3.29 σ (two-sided alpha = 1e-3)
    CHECK(std::abs(sb / n - 0.3) < 3.29 * std::sqrt(0.3 * 0.7 / n));
    // the initialisers: kaiming-uniform(a=√5) is U(±1/√fan_in), fill_normal is N(mean, std²)
    std::vector<float> w(20000);
    r.fill_kaiming_uniform(w.data(), Index(w.size()), 768);
    const double bound = 1.0 / std::sqrt(768.0);
    const auto ws = testing::sample_of(w.data(), Index(w.size()));
    CHECK(ks_statistic(ws, uniform_cdf(-bound, bound)) < ks_critical(w.size()));
    CHECK(ks_statistic(ws, uniform_cdf(-1.05 * bound, 1.05 * bound)) > ks_critical(w.size()));
    CHECK(ks_statistic(ws, normal_cdf(0, bound / std::sqrt(3.0))) > ks_critical(w.size()));
    r.fill_kaiming_uniform(w.data(), Index(w.size()), 100, 0.0);  // a = 0: bound √(6/fan_in)
    CHECK(ks_statistic(testing::sample_of(w.data(), Index(w.size())),
                       uniform_cdf(-std::sqrt(0.06), std::sqrt(0.06))) < ks_critical(w.size()));
    r.fill_normal(w.data(), Index(w.size()), 0.5, 0.02);
    CHECK(ks_statistic(testing::sample_of(w.data(), Index(w.size())), normal_cdf(0.5, 0.02)) <
          ks_critical(w.size()));
    r.fill_uniform(w.data(), Index(w.size()), -3.0, 1.0);
    CHECK(ks_statistic(testing::sample_of(w.data(), Index(w.size())), uniform_cdf(-3, 1)) <
          ks_critical(w.size()));
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

TEST_CASE("ParamStore::zero_grad is lazy: no fill, readers see zeros, a first writer overwrites") {
  ParamStore<double> s;
  const ParamId a = s.add("a", {2, 3}, true), f = s.add("f", {4}, false), b = s.add("b", {5}, true);
  (void)f;
  for (double& g : s.grads()) g = 9.0;  // stale values from a "previous step"
  s.zero_grad();
  // the arena still holds the stale values: zero_grad filled nothing
  CHECK(s.grad_matrix_unfilled(a)(0, 0) == 9.0);
  // a first writer is told to overwrite, once; it then owns the whole gradient
  CHECK(s.first_write_beta(a) == 0.0);
  CHECK(s.first_write_beta(a) == 1.0);
  s.grad_matrix_unfilled(a).setConstant(2.0);
  // any other access zero-fills first: b reads 0, then accumulates
  CHECK(s.grad(b)[4] == 0.0);
  s.grad_matrix(b).array() += 1.0;
  CHECK(s.first_write_beta(b) == 1.0);  // b was written (by the fill): later writers add
  for (double g : s.grads()) CHECK((g == 2.0 || g == 1.0));
  // grads() zero-fills every unwritten gradient, so a whole-arena reader never sees stale values
  for (double& g : s.grads()) g = 7.0;
  s.zero_grad();
  for (double g : s.grads()) CHECK(g == 0.0);
  // a parameter declared after zero_grad starts written (zeros); a relayout keeps zeros, not stale values
  for (double& g : s.grads()) g = 7.0;
  s.zero_grad();
  const ParamId c = s.add("c", {3}, true);
  CHECK(s.first_write_beta(c) == 1.0);
  s.set_trainable_if([](const auto& e) { return e.name == "f"; }, true);
  for (double g : s.grads()) CHECK(g == 0.0);
}

TEST_CASE("ParamStore lazy zeroing is safe when threads zero-fill different and the same gradients at once") {
  ParamStore<float> s;
  std::vector<ParamId> ids;
  for (int i = 0; i < 8; ++i) ids.push_back(s.add("p" + std::to_string(i), {1000}, true));
  for (int round = 0; round < 20; ++round) {
    for (float& g : s.grads()) g = 5.0f;
    s.zero_grad();
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        // each thread adds into its own gradients and reads a shared one (which one thread zero-fills)
        for (int i = t; i < 8; i += 4) s.grad_matrix(ids[std::size_t(i)]).array() += 1.0f;
        const float* shared = s.grad(ids[7]);
        (void)shared;
      });
    for (auto& th : threads) th.join();
    for (float g : s.grads()) REQUIRE(g == 1.0f);
  }
}

TEST_CASE("ParamStore::release_values_if drops frozen values, compacts the arena, and refuses reads after") {
  ParamStore<double> s;
  const ParamId a = s.add("a", {2, 3}, false), b = s.add("b", {4}, true), c = s.add("c", {3, 2}, false);
  for (std::size_t i = 0; i < s.values().size(); ++i) s.values()[i] = double(i);
  s.grad(b)[0] = 5;
  // a trainable parameter cannot be released, and a refused call changes nothing
  CHECK_THROWS_WITH(s.release_values_if([](const auto& e) { return e.name != "a"; }),
                    Catch::Contains("cannot release 'b': it is trainable"));
  CHECK(s.num_values() == 16);
  CHECK(s.release_values_if([](const auto& e) { return e.name == "a"; }) == 1);
  CHECK(s.num_values() == 10);
  CHECK(s.values().size() == 10);
  CHECK(s.entry(a).released);
  CHECK_THROWS_WITH(s.value(a), Catch::Contains("values of 'a' were released"));
  // the kept values moved with their entries; gradients untouched
  CHECK(s.value(b)[0] == 6);
  CHECK(s.value(c)[5] == 15);
  CHECK(s.grad(b)[0] == 5);
  // a parameter declared afterwards lands after the kept ones
  const ParamId d = s.add("d", {2}, true);
  CHECK(s.entry(d).offset == 10);
  CHECK(s.release_values_if([](const auto& e) { return e.name == "a"; }) == 0);  // already released
}

#if defined(__linux__)
namespace {
// this process's resident set and its peak since the last reset_peak_resident(), MB (/proc/self/status)
double status_mb(const std::string& field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) / 1024.0;
  return -1;
}
bool reset_peak_resident() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return bool(f);
}
}  // namespace

TEST_CASE("ParamStore::release_values_if compacts in place: no second arena, the freed pages leave") {
  // 128 MB of frozen values released, 64 MB kept after them: a compaction into a new arena would raise the
  // peak by the kept 64 MB; in place the kept values move down and the freed tail's pages are returned
  ParamStore<double> s;
  s.add("big", {16, 1024, 1024}, false);
  const ParamId kept = s.add("kept", {8, 1024, 1024}, false);
  std::fill(s.values().begin(), s.values().end(), 1.0);  // every page resident
  s.value(kept)[12345] = 7.0;
  const double before = status_mb("VmRSS");
  const bool peak_resettable = reset_peak_resident();
  CHECK(s.release_values_if([](const auto& e) { return e.name == "big"; }) == 1);
  const double after = status_mb("VmRSS"), peak = status_mb("VmHWM");
  INFO("resident " << before << " MB -> " << after << " MB, peak during the call " << peak << " MB");
  CHECK(before - after > 100.0);
  if (peak_resettable)
    CHECK(peak - before < 32.0);
  else
    WARN("/proc/self/clear_refs is not writable here: the peak during the call is not checked");
  CHECK(s.value(kept)[12345] == 7.0);
  CHECK(s.value(kept)[0] == 1.0);
  CHECK(s.entry(kept).offset == 0);
}
#endif

TEST_CASE(
    "Without oneDNN, every request for it is refused with the same fix (this binary has no pemoe::dnnl)") {
  REQUIRE_FALSE(have_dnnl());  // the role tests link pemoe::pemoe only; tests/dnnl covers the other build
  const auto says_how_to_fix =
      Catch::Matchers::Contains("no oneDNN backend: link the CMake target pemoe::dnnl");
  CHECK_THROWS_WITH(set_gemm_backend(GemmBackend::dnnl), says_how_to_fix);
  CHECK(gemm_backend() == GemmBackend::eigen);
  CHECK_THROWS_WITH(GemmPrecisionScope(GemmPrecision::bf16), says_how_to_fix);
  CHECK(gemm_precision() == GemmPrecision::f32);
  for (PackDtype dtype : {PackDtype::f32, PackDtype::bf16}) {
    std::string why;
    CHECK_FALSE(weight_pack_available<float>(dtype, &why));
    CHECK_THAT(why, says_how_to_fix);
    const Matrix<float> w = Matrix<float>::Ones(3, 4);
    CHECK_THROWS_WITH(make_weight_pack<float>(w, dtype), says_how_to_fix);
  }
}

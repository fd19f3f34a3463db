// Tests of MultiDatasetSampler (include/pemoe/data/sampler.hpp): the dataset frequencies follow the weights
// (chi-squared goodness of fit), epochs visit every index once, weights change mid-stream, and a saved state
// resumes the identical sequence.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "pemoe/data/sampler.hpp"

using Catch::Matchers::Contains;

namespace {

// Pearson's chi-squared statistic of `counts` against probabilities `p` (cells with p = 0 must have count 0
// and are left out).
double chi_squared(const std::vector<std::uint64_t>& counts, const std::vector<double>& p) {
  const double n = static_cast<double>(std::accumulate(counts.begin(), counts.end(), std::uint64_t{0}));
  double x2 = 0;
  for (std::size_t k = 0; k < counts.size(); ++k) {
    if (p[k] == 0) {
      CHECK(counts[k] == 0);
      continue;
    }
    const double e = n * p[k];
    x2 += (static_cast<double>(counts[k]) - e) * (static_cast<double>(counts[k]) - e) / e;
  }
  return x2;
}

// Upper 0.1% points of the chi-squared distribution (a correct sampler exceeds them with probability 1e-3).
constexpr double kChi2Crit999Df2 = 13.816;
constexpr double kChi2Crit999Df3 = 16.266;

std::vector<std::uint64_t> draw_counts(pemoe::MultiDatasetSampler& s, int n) {
  std::vector<std::uint64_t> c(s.num_datasets(), 0);
  for (int i = 0; i < n; ++i) ++c[static_cast<std::size_t>(s.next().dataset)];
  return c;
}

}  // namespace

TEST_CASE("MultiDatasetSampler: dataset frequencies fit the weights (chi-squared, 20000 draws)",
          "[sampler]") {
  pemoe::MultiDatasetSampler s({50, 30, 200, 7}, {1.0, 2.0, 3.0, 4.0}, 1234);
  CHECK(s.weights() == std::vector<double>{0.1, 0.2, 0.3, 0.4});
  const auto counts = draw_counts(s, 20000);
  CHECK(s.draws() == 20000);
  CHECK(s.draws_per_dataset() == counts);
  const double x2 = chi_squared(counts, s.weights());
  INFO("counts " << counts[0] << " " << counts[1] << " " << counts[2] << " " << counts[3] << ", chi2 " << x2);
  CHECK(x2 < kChi2Crit999Df3);
  // The test has power: the same counts against uniform weights, or against the weights reversed, fail it.
  CHECK(chi_squared(counts, {0.25, 0.25, 0.25, 0.25}) > 100 * kChi2Crit999Df3);
  CHECK(chi_squared(counts, {0.4, 0.3, 0.2, 0.1}) > 100 * kChi2Crit999Df3);
  // ... and so does a mild error in one weight (0.3/0.4 swapped to 0.32/0.38).
  CHECK(chi_squared(counts, {0.1, 0.2, 0.32, 0.38}) > kChi2Crit999Df3);
}

TEST_CASE("MultiDatasetSampler: every epoch of a dataset visits each index exactly once", "[sampler]") {
  const std::vector<pemoe::Index> sizes = {5, 7, 11, 1};
  pemoe::MultiDatasetSampler s(sizes, {1, 1, 2, 0.5}, 99);
  std::vector<std::vector<pemoe::Index>> seen(sizes.size());
  for (int i = 0; i < 3000; ++i) {
    const auto r = s.next();
    REQUIRE(r.dataset >= 0);
    REQUIRE(r.dataset < 4);
    REQUIRE(r.index >= 0);
    REQUIRE(r.index < sizes[static_cast<std::size_t>(r.dataset)]);
    seen[static_cast<std::size_t>(r.dataset)].push_back(r.index);
  }
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    const auto n = static_cast<std::size_t>(sizes[k]);
    const std::size_t epochs = seen[k].size() / n;
    REQUIRE(epochs >= 20);
    CHECK(s.epoch(k) == epochs);
    std::vector<pemoe::Index> identity(n);
    std::iota(identity.begin(), identity.end(), pemoe::Index{0});
    std::size_t changed = 0;
    for (std::size_t e = 0; e < epochs; ++e) {
      std::vector<pemoe::Index> epoch(seen[k].begin() + static_cast<std::ptrdiff_t>(e * n),
                                      seen[k].begin() + static_cast<std::ptrdiff_t>((e + 1) * n));
      if (e > 0 &&
          !std::equal(epoch.begin(), epoch.end(), seen[k].begin() + static_cast<std::ptrdiff_t>((e - 1) * n)))
        ++changed;
      std::sort(epoch.begin(), epoch.end());
      CHECK(epoch == identity);
    }
    // Reshuffled each epoch (for n > 1 consecutive epochs almost always differ).
    if (n > 2) CHECK(changed >= epochs / 2);
  }
}

TEST_CASE("MultiDatasetSampler: set_weights mid-stream changes the frequencies", "[sampler]") {
  pemoe::MultiDatasetSampler s({100, 100, 100, 100}, {1, 1, 1, 1}, 7);
  const auto first = draw_counts(s, 10000);
  CHECK(chi_squared(first, {0.25, 0.25, 0.25, 0.25}) < kChi2Crit999Df3);
  s.set_weights({6, 0, 1, 3});
  CHECK(s.weights() == std::vector<double>{0.6, 0.0, 0.1, 0.3});
  const auto second = draw_counts(s, 10000);
  CHECK(second[1] == 0);
  const double x2 = chi_squared(second, s.weights());
  INFO("second half chi2 " << x2);
  CHECK(x2 < kChi2Crit999Df2);
  CHECK(chi_squared(second, {0.25, 0.25, 0.25, 0.25}) > 100 * kChi2Crit999Df3);
  const auto total = s.draws_per_dataset();
  for (std::size_t k = 0; k < 4; ++k) CHECK(total[k] == first[k] + second[k]);
}

TEST_CASE("MultiDatasetSampler: state/restore resumes the identical sequence", "[sampler]") {
  pemoe::MultiDatasetSampler a({13, 4, 29}, {0.2, 0.5, 0.3}, 2024);
  for (int i = 0; i < 777; ++i) a.next();
  a.set_weights({1, 3, 1});
  for (int i = 0; i < 55; ++i) a.next();
  const auto st = a.state();
  std::vector<pemoe::SampleRef> expected;
  for (int i = 0; i < 600; ++i) {
    expected.push_back(a.next());
    if (i == 300) a.set_weights({0, 1, 2});
  }

  // A sampler built with another seed and weights, restored: same continuation (also via the flat form).
  for (const bool flat : {false, true}) {
    pemoe::MultiDatasetSampler b({13, 4, 29}, {1, 1, 1}, 5);
    for (int i = 0; i < 10; ++i) b.next();
    b.restore(flat ? pemoe::MultiDatasetSampler::State::from_flat(st.integers(), st.weights) : st);
    CHECK(b.draws() == st.draws);
    CHECK(b.weights() == st.weights);
    for (int i = 0; i < 600; ++i) {
      const auto r = b.next();
      REQUIRE(r.dataset == expected[static_cast<std::size_t>(i)].dataset);
      REQUIRE(r.index == expected[static_cast<std::size_t>(i)].index);
      if (i == 300) b.set_weights({0, 1, 2});
    }
    CHECK(b.draws_per_dataset() == a.draws_per_dataset());
  }
  // Same seed, same weights: same sequence from the start.
  pemoe::MultiDatasetSampler c({13, 4, 29}, {0.2, 0.5, 0.3}, 2024);
  pemoe::MultiDatasetSampler d({13, 4, 29}, {2, 5, 3}, 2024);
  for (int i = 0; i < 200; ++i) {
    const auto x = c.next();
    const auto y = d.next();
    REQUIRE(x.dataset == y.dataset);
    REQUIRE(x.index == y.index);
  }

  pemoe::MultiDatasetSampler wrong({13, 4}, {1, 1}, 1);
  CHECK_THROWS_AS(wrong.restore(st), pemoe::ConfigError);
  auto broken = st;
  broken.draws += 1;
  CHECK_THROWS_WITH(a.restore(broken), Contains("sum to"));
}

TEST_CASE("MultiDatasetSampler: bad weights are a ConfigError naming the index", "[sampler]") {
  using S = pemoe::MultiDatasetSampler;
  CHECK_THROWS_WITH(S({3, 3, 3}, {1, -0.5, 1}), Contains("weight 1 is -0.5"));
  CHECK_THROWS_WITH(S({3, 3, 3}, {1, 1, NAN}), Contains("weight 2 is nan"));
  CHECK_THROWS_WITH(S({3, 3, 3}, {1, INFINITY, 1}), Contains("weight 1 is inf"));
  CHECK_THROWS_WITH(S({3, 3, 3}, {0, 0, 0}), Contains("sum to 0"));
  CHECK_THROWS_WITH(S({3, 3}, {1, 1, 1}), Contains("3 weights for 2 datasets"));
  CHECK_THROWS_WITH(S({3, 0}, {1, 1}), Contains("dataset 1 is empty but has weight 1"));
  CHECK_THROWS_WITH(S({3, -2}, {1, 0}), Contains("dataset 1 has size -2"));
  CHECK_THROWS_AS(S({}, {}), pemoe::ConfigError);
  S ok({3, 0}, {1, 0}, 3);  // an empty dataset with weight 0 is fine
  for (int i = 0; i < 10; ++i) CHECK(ok.next().dataset == 0);
  CHECK_THROWS_WITH(ok.set_weights({1, -1}), Contains("weight 1 is -1"));
  CHECK(ok.weights() == std::vector<double>{1.0, 0.0});  // unchanged after the failed call
}

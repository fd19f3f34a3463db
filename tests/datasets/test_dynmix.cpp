// Tests of dynamic data mixing (include/pemoe/data/dynmix.hpp): the numeric oracle of
// specs/dynmix_meld.md §1.5 (Δ, w1, w2 from four datasets' gate loads, η = 10, c = 0.05, mean, uniform
// start), fed through the gate-load recorder from real router caches with padding; the weight floor and sum
// after every update; the empty-round rule; distances, criteria and the ~l2 reversal; the baseline policies;
// the JSON configuration and its errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "pemoe/data/dynmix.hpp"
#include "pemoe/data/sampler.hpp"
#include "pemoe/moe/router.hpp"

namespace dynmix_test {

using pemoe::DataMixer;
using pemoe::GateLoadRecorder;
using pemoe::Index;
using pemoe::MixingConfig;
using RCache = pemoe::Router<double>::Cache;

// The raw counts of spec §1.5 (4 datasets, 8 experts) and its expected values.
const std::vector<std::vector<int>> kCounts = {
    {10, 2, 3, 5, 0, 0, 1, 1}, {3, 3, 3, 3, 3, 3, 3, 3}, {0, 0, 8, 8, 0, 0, 0, 0}, {2, 4, 2, 4, 2, 4, 2, 4}};
const std::vector<double> kDelta = {0.376467, 0.283877, 0.472094, 0.297412};
const std::vector<double> kW1 = {0.225899, 0.097043, 0.567760, 0.109297};
const std::vector<double> kW2 = {0.132309, 0.032890, 0.796007, 0.038794};

// Top-2 selections (two distinct experts per token) whose per-expert counts are `counts` (even sum, max at
// most half the sum): repeatedly pair the two experts with the most selections left.
std::vector<std::pair<Index, Index>> pairs_with_counts(std::vector<int> counts) {
  std::vector<std::pair<Index, Index>> out;
  while (std::accumulate(counts.begin(), counts.end(), 0) > 0) {
    std::vector<Index> order(counts.size());
    std::iota(order.begin(), order.end(), Index{0});
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return counts[a] > counts[b]; });
    REQUIRE(counts[order[1]] > 0);
    --counts[order[0]];
    --counts[order[1]];
    out.emplace_back(order[0], order[1]);
  }
  return out;
}

// A router cache of `sel.size()` tokens selecting `sel` plus `pad` padding rows (valid 0) that select
// expert 0 twice (they must not count), E experts, probabilities uniform.
RCache make_cache(const std::vector<std::pair<Index, Index>>& sel, Index pad, Index e) {
  RCache c;
  const Index n = Index(sel.size()) + pad;
  c.n = n;
  c.probs = pemoe::Matrix<double>::Constant(n, e, 1.0 / double(e));
  c.topk_idx = pemoe::IndexMatrix::Zero(n, 2);
  c.valid = pemoe::Vector<double>::Zero(n);
  for (Index t = 0; t < Index(sel.size()); ++t) {
    c.topk_idx(t, 0) = sel[std::size_t(t)].first;
    c.topk_idx(t, 1) = sel[std::size_t(t)].second;
    c.valid(t) = 1.0;
  }
  return c;
}

// Records the §1.5 counts into `rec` as two batches per dataset over two MoE layers (layer 0: every token
// on experts 0 and 1, a decoy; layer 1, the last: the oracle counts), with padding rows in every batch.
void record_oracle(GateLoadRecorder& rec) {
  for (std::size_t d = 0; d < kCounts.size(); ++d) {
    const auto sel = pairs_with_counts(kCounts[d]);
    const std::size_t half = sel.size() / 2;
    const std::vector<std::vector<std::pair<Index, Index>>> batches = {
        {sel.begin(), sel.begin() + long(half)}, {sel.begin() + long(half), sel.end()}};
    for (const auto& b : batches) {
      const RCache last = make_cache(b, 3, 8);
      const RCache decoy = make_cache(std::vector<std::pair<Index, Index>>(b.size(), {0, 1}), 2, 8);
      REQUIRE(rec.record(d, std::vector<const RCache*>{&decoy, &last}));
    }
  }
}

MixingConfig config_of(const nlohmann::json& j) {
  return MixingConfig::from_json(j);
}

const std::vector<std::string> kNames = {"code", "math", "orca", "sharegpt"};
const std::vector<Index> kSizes = {100, 200, 300, 400};

// The ConfigError message of `j` (empty when it parses).
std::string config_error(const nlohmann::json& j) {
  try {
    (void)MixingConfig::from_json(j);
  } catch (const pemoe::ConfigError& e) {
    return e.what();
  }
  return "";
}

void check_simplex(const std::vector<double>& w, double c) {
  double sum = 0;
  for (const double x : w) {
    CHECK(x >= c / double(w.size()) - 1e-15);
    sum += x;
  }
  CHECK(sum == Approx(1.0).margin(1e-12));
}

// A model-like type: the adapter `record_gate_loads` only needs `router_caches(cache)`.
struct FakeModel {
  struct Cache {
    std::vector<RCache> layers;
  };
  std::vector<const RCache*> router_caches(const Cache& c) const {
    std::vector<const RCache*> v;
    for (const auto& l : c.layers) v.push_back(&l);
    return v;
  }
};

TEST_CASE("dynmix: the spec oracle (Δ, w1, w2) from pure scores and update", "[dynmix]") {
  std::vector<std::vector<double>> reps;
  for (const auto& row : kCounts) {
    const double total = std::accumulate(row.begin(), row.end(), 0.0);
    std::vector<double> o;
    for (const int x : row) o.push_back(x / total);
    reps.push_back(o);
  }
  const auto s = pemoe::redundancy_scores(reps, pemoe::MixDistance::l2, pemoe::MixCriterion::mean);
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(s.delta[i] == Approx(kDelta[i]).margin(1e-6));
    CHECK(s.pairwise[i][i] == 0.0);
  }
  const std::vector<double> w0(4, 0.25);
  const auto w1 = pemoe::multiplicative_update(w0, s.delta, 10.0, 0.05);
  const auto w2 = pemoe::multiplicative_update(w1, s.delta, 10.0, 0.05);
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(w1[i] == Approx(kW1[i]).margin(1e-6));
    CHECK(w2[i] == Approx(kW2[i]).margin(1e-6));
  }
}

TEST_CASE("dynmix: the spec oracle through the recorder and DataMixer (last layer, padding ignored)",
          "[dynmix]") {
  DataMixer mixer(config_of({{"eta", 10},
                             {"c", 0.05},
                             {"criterion", "mean"},
                             {"interval", 1},
                             {"eval_batches", 2},
                             {"initial_weights", "uniform"}}),
                  kNames, kSizes);
  GateLoadRecorder rec = mixer.make_recorder();
  REQUIRE(rec.max_batches() == 2);
  rec.begin_round();
  record_oracle(rec);
  for (std::size_t d = 0; d < 4; ++d) {
    CHECK_FALSE(rec.wants(d));
    const double total = std::accumulate(kCounts[d].begin(), kCounts[d].end(), 0.0);
    CHECK(rec.tokens(d) == long(total / 2));  // k = 2 selections per non-padding token
    for (std::size_t e = 0; e < 8; ++e) CHECK(rec.load(d, 1)[e] == double(kCounts[d][e]));
  }
  // A third batch is beyond eval_batches: ignored.
  const RCache extra = make_cache({{7, 6}}, 0, 8);
  CHECK_FALSE(rec.record(0, std::vector<const RCache*>{&extra, &extra}));
  CHECK(rec.load(0, 1)[7] == 1.0);

  CHECK(mixer.weights() == std::vector<double>(4, 0.25));
  REQUIRE(mixer.update(1, &rec));
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(mixer.last_scores().delta[i] == Approx(kDelta[i]).margin(1e-6));
    CHECK(mixer.weights()[i] == Approx(kW1[i]).margin(1e-6));
  }
  REQUIRE(mixer.update(2, &rec));
  for (std::size_t i = 0; i < 4; ++i) CHECK(mixer.weights()[i] == Approx(kW2[i]).margin(1e-6));

  // The sampler follows the new weights from the next draw on.
  pemoe::MultiDatasetSampler sampler(kSizes, std::vector<double>(4, 0.25), 3);
  sampler.set_weights(mixer.weights());
  std::vector<int> n(4, 0);
  for (int t = 0; t < 20000; ++t) ++n[std::size_t(sampler.next().dataset)];
  for (std::size_t i = 0; i < 4; ++i) CHECK(n[i] / 20000.0 == Approx(kW2[i]).margin(0.015));
}

TEST_CASE("dynmix: layer selection (all, list, negative) and the model adapter", "[dynmix]") {
  FakeModel model;
  FakeModel::Cache cache;
  cache.layers.push_back(make_cache({{0, 1}, {0, 1}}, 1, 4));
  cache.layers.push_back(make_cache({{2, 3}, {1, 3}}, 1, 4));
  GateLoadRecorder rec(2, 1);
  REQUIRE(pemoe::record_gate_loads(rec, 0, model, cache));
  FakeModel::Cache other;
  other.layers.push_back(make_cache({{2, 3}}, 0, 4));
  other.layers.push_back(make_cache({{2, 3}}, 0, 4));
  REQUIRE(pemoe::record_gate_loads(rec, 1, model, other));
  REQUIRE(rec.num_layers() == 2);

  const auto last = rec.representation(0, {1});
  CHECK(last == std::vector<double>{0.0, 0.25, 0.25, 0.5});
  const auto both = rec.representation(0, {0, 1});
  REQUIRE(both.size() == 8);
  CHECK(std::accumulate(both.begin(), both.end(), 0.0) == Approx(1.0));
  CHECK(both[0] == 0.25);  // layer 0: 0.5 on expert 0, scaled by 1/2

  DataMixer def(config_of({{"interval", 1}}), {"a", "b"}, {5, 5});
  CHECK(def.selected_layers(2) == std::vector<std::size_t>{1});
  DataMixer all(config_of({{"interval", 1}, {"layers", "all"}}), {"a", "b"}, {5, 5});
  CHECK(all.selected_layers(2) == std::vector<std::size_t>{0, 1});
  DataMixer list(config_of({{"interval", 1}, {"layers", {0, -1}}}), {"a", "b"}, {5, 5});
  CHECK(list.selected_layers(2) == std::vector<std::size_t>{0, 1});
  DataMixer bad(config_of({{"interval", 1}, {"layers", {5}}}), {"a", "b"}, {5, 5});
  CHECK_THROWS_WITH(bad.update(1, &rec), Catch::Contains("data.mixing.layers"));

  // A changed layer count is a shape error.
  FakeModel::Cache one;
  one.layers.push_back(make_cache({{0, 1}}, 0, 4));
  rec.begin_round();
  CHECK_THROWS_AS(pemoe::record_gate_loads(rec, 0, model, one), pemoe::ShapeError);
}

TEST_CASE("dynmix: soft routers record the mean gate probabilities", "[dynmix]") {
  RCache c = make_cache({{0, 1}, {0, 1}}, 1, 2);
  c.probs << 0.75, 0.25, 0.25, 0.75, 1.0, 0.0;  // the last row is padding
  GateLoadRecorder rec(1, 5, pemoe::GateLoadStatistic::mean_probs);
  rec.record(0, std::vector<const RCache*>{&c});
  CHECK(rec.tokens(0) == 2);
  CHECK(rec.representation(0, {0}) == std::vector<double>{0.5, 0.5});
}

TEST_CASE("dynmix: weights stay at or above c/|D| and sum to 1 after every update", "[dynmix]") {
  pemoe::Rng rng(11);
  for (const double c : {0.0, 0.05, 0.4, 1.0}) {
    for (const double eta : {0.0, 1.0, 10.0, 1000.0}) {
      std::vector<double> w(5, 0.2);
      for (int u = 0; u < 30; ++u) {
        std::vector<double> delta(5);
        for (double& x : delta) x = rng.uniform(0.0, 2.0);
        w = pemoe::multiplicative_update(w, delta, eta, c);
        check_simplex(w, c);
      }
    }
  }
  // Through the mixer, with random gate loads each round, and a zero initial weight.
  DataMixer mixer(
      config_of({{"interval", 3}, {"c", 0.1}, {"initial_weights", {{"a", 0}, {"b", 1}, {"c", 3}}}}),
      {"a", "b", "c"}, {4, 4, 4});
  CHECK(mixer.weights()[0] == 0.0);
  GateLoadRecorder rec = mixer.make_recorder();
  for (long step = 1; step <= 30; ++step) {
    if (!mixer.is_update_step(step)) {
      CHECK_FALSE(mixer.update(step, &rec));
      continue;
    }
    rec.begin_round();
    for (std::size_t d = 0; d < 3; ++d) {
      std::vector<std::pair<Index, Index>> sel;
      for (int t = 0; t < 6; ++t) sel.emplace_back(Index(rng.below(3)), 3 + Index(rng.below(3)));
      const RCache cache = make_cache(sel, 1, 6);
      while (rec.wants(d)) rec.record(d, std::vector<const RCache*>{&cache});
    }
    REQUIRE(mixer.update(step, &rec));
    check_simplex(mixer.weights(), 0.1);
  }
}

TEST_CASE("dynmix: a dataset with no tokens in a round follows the neutral rule", "[dynmix]") {
  DataMixer mixer(config_of({{"interval", 1}}), kNames, kSizes);
  GateLoadRecorder rec = mixer.make_recorder();
  rec.begin_round();
  for (std::size_t d = 0; d < 4; ++d) {
    // Dataset 2 sees only padding.
    const RCache cache = d == 2 ? make_cache({}, 4, 8) : make_cache(pairs_with_counts(kCounts[d]), 2, 8);
    rec.record(d, std::vector<const RCache*>{&cache});
  }
  CHECK(rec.tokens(2) == 0);
  CHECK(rec.representation(2, {0}).empty());
  REQUIRE(mixer.update(1, &rec));
  const auto& s = mixer.last_scores();
  CHECK_FALSE(s.present[2]);
  // The others: mean over the three present datasets; dataset 2: the mean of their scores.
  std::vector<std::vector<double>> three;
  for (const std::size_t d : {0, 1, 3}) three.push_back(rec.representation(d, {0}));
  const auto ref = pemoe::redundancy_scores(three);
  CHECK(s.delta[0] == Approx(ref.delta[0]));
  CHECK(s.delta[1] == Approx(ref.delta[1]));
  CHECK(s.delta[3] == Approx(ref.delta[2]));
  CHECK(s.delta[2] == Approx((ref.delta[0] + ref.delta[1] + ref.delta[2]) / 3));
  for (const double w : mixer.weights()) CHECK(std::isfinite(w));
  check_simplex(mixer.weights(), 0.05);

  // A round where nothing was recorded: Δ = 0, the weights only move toward uniform.
  const std::vector<double> before = mixer.weights();
  rec.begin_round();
  REQUIRE(mixer.update(2, &rec));
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(mixer.last_scores().delta[i] == 0.0);
    CHECK(mixer.weights()[i] == Approx(0.95 * before[i] + 0.05 / 4));
  }
}

TEST_CASE("dynmix: distances and criteria", "[dynmix]") {
  const std::vector<std::vector<double>> reps = {{1.0, 0.0, 0.0}, {0.5, 0.5, 0.0}, {0.0, 0.0, 1.0}};
  const double s2 = std::sqrt(0.5), s1 = std::sqrt(2.0), s3 = std::sqrt(1.5);
  using pemoe::MixCriterion;
  using pemoe::MixDistance;
  const auto mean = pemoe::redundancy_scores(reps, MixDistance::l2, MixCriterion::mean);
  CHECK(mean.delta[0] == Approx((s2 + s1) / 3));
  CHECK(mean.delta[1] == Approx((s2 + s3) / 3));
  CHECK(mean.delta[2] == Approx((s1 + s3) / 3));
  const auto mx = pemoe::redundancy_scores(reps, MixDistance::l2, MixCriterion::max);
  CHECK(mx.delta == std::vector<double>{s1, s3, s1});
  const auto mn = pemoe::redundancy_scores(reps, MixDistance::l2, MixCriterion::min);
  CHECK(mn.delta == std::vector<double>{0.0, 0.0, 0.0});
  // cos: 1 − agg of the similarities (self-similarity 1 included).
  const double c01 = 0.5 / std::sqrt(0.5);
  const auto cm = pemoe::redundancy_scores(reps, MixDistance::cos, MixCriterion::mean);
  CHECK(cm.pairwise[0][1] == Approx(c01));
  CHECK(cm.delta[0] == Approx(1.0 - (1.0 + c01 + 0.0) / 3));
  CHECK(cm.delta[2] == Approx(1.0 - 1.0 / 3));
  const auto cmax = pemoe::redundancy_scores(reps, MixDistance::cos, MixCriterion::max);
  for (const double d : cmax.delta) CHECK(d == Approx(0.0).margin(1e-15));
  const auto cmin = pemoe::redundancy_scores(reps, MixDistance::cos, MixCriterion::min);
  CHECK(cmin.delta[1] == Approx(1.0));
  // ~l2: the l2 scores with the ranking reversed (the largest goes to the smallest and back).
  const auto inv = pemoe::redundancy_scores(reps, MixDistance::inverse_l2, MixCriterion::mean);
  // l2 mean order: Δ1 < Δ0 < Δ2 (0.643 < 0.707 < 0.880): ranks 0 ↔ 2 swap, the middle stays.
  CHECK(inv.delta[1] == Approx(mean.delta[2]));
  CHECK(inv.delta[2] == Approx(mean.delta[1]));
  CHECK(inv.delta[0] == Approx(mean.delta[0]));
}

TEST_CASE("dynmix: baseline policies", "[dynmix]") {
  const std::vector<std::string> names = {"a", "b", "c"};
  const std::vector<Index> sizes = {10, 30, 60};
  DataMixer uni(config_of({{"policy", "uniform"}}), names, sizes);
  CHECK(uni.weights() == std::vector<double>(3, 1.0 / 3));
  CHECK_FALSE(uni.update(100));
  DataMixer size(config_of({{"policy", "datasize"}}), names, sizes);
  CHECK(size.weights()[0] == Approx(0.1));
  CHECK(size.weights()[2] == Approx(0.6));
  DataMixer fixed(config_of({{"policy", "static"}, {"initial_weights", {{"a", 1}, {"b", 1}, {"c", 2}}}}),
                  names, sizes);
  CHECK(fixed.weights() == std::vector<double>{0.25, 0.25, 0.5});
  CHECK_FALSE(fixed.is_update_step(100));

  // sequential: one-hot, rolled every K steps.
  DataMixer seq(config_of({{"policy", "sequential"}, {"interval", 5}}), names, sizes);
  CHECK(seq.weights() == std::vector<double>{1, 0, 0});
  CHECK_FALSE(seq.update(4));
  CHECK(seq.update(5));
  CHECK(seq.weights() == std::vector<double>{0, 1, 0});
  seq.update(10);
  CHECK(seq.weights() == std::vector<double>{0, 0, 1});
  seq.update(15);
  CHECK(seq.weights() == std::vector<double>{1, 0, 0});
  pemoe::MultiDatasetSampler sampler(sizes, seq.weights(), 1);
  seq.update(20);
  sampler.set_weights(seq.weights());
  for (int t = 0; t < 50; ++t) CHECK(sampler.next().dataset == 1);

  // random and random_onehot: reproducible from the seed, a pure function of the step (resumable).
  for (const char* policy : {"random", "random_onehot"}) {
    DataMixer r1(config_of({{"policy", policy}, {"interval", 2}}), names, sizes, 42);
    DataMixer r2(config_of({{"policy", policy}, {"interval", 2}}), names, sizes, 42);
    DataMixer other(config_of({{"policy", policy}, {"interval", 2}}), names, sizes, 43);
    bool differs = false;
    for (long step = 2; step <= 40; step += 2) {
      r1.update(step);
      if (step == 40) r2.update(step);  // jumps straight to the last interval
      other.update(step);
      check_simplex(r1.weights(), 0.0);
      if (std::string(policy) == "random_onehot")
        CHECK(std::count(r1.weights().begin(), r1.weights().end(), 1.0) == 1);
      differs = differs || r1.weights() != other.weights();
    }
    CHECK(r1.weights() == r2.weights());
    CHECK(differs);
  }
  DataMixer rnd(config_of({{"policy", "random"}}), names, sizes, 1);
  CHECK(rnd.weights() == std::vector<double>(3, 1.0 / 3));  // starts from the initial weights

  // ref_loss: Δ = eval loss − reference loss, η = 1 and c = 1e-4 by default.
  DataMixer ref(config_of({{"policy", "ref_loss"}, {"ref_loss", {{"a", 1.0}, {"b", 2.0}, {"c", 3.0}}}}),
                names, sizes);
  CHECK(ref.config().eta == 1.0);
  CHECK(ref.config().c == 1e-4);
  CHECK(ref.needs_eval_losses());
  CHECK_THROWS_AS(ref.update(100), pemoe::ConfigError);
  const std::vector<double> losses = {1.5, 2.0, 2.5};
  REQUIRE(ref.update(100, nullptr, &losses));
  CHECK(ref.last_scores().delta == std::vector<double>{0.5, 0.0, -0.5});
  const auto expect =
      pemoe::multiplicative_update(std::vector<double>(3, 1.0 / 3), {0.5, 0.0, -0.5}, 1.0, 1e-4);
  for (std::size_t i = 0; i < 3; ++i) CHECK(ref.weights()[i] == Approx(expect[i]));
  // A dataset without an eval loss (NaN) gets the mean Δ of the others.
  const std::vector<double> partial = {1.5, std::nan(""), 2.5};
  REQUIRE(ref.update(200, nullptr, &partial));
  CHECK(ref.last_scores().delta[1] == Approx(0.0));

  // gate_load without a recorder is refused; state/restore carries the weights.
  DataMixer dyn(config_of({{"interval", 1}}), names, sizes);
  CHECK_THROWS_WITH(dyn.update(1), Catch::Contains("gate loads"));
  DataMixer resumed(config_of({{"interval", 1}}), names, sizes);
  resumed.restore(expect);
  CHECK(resumed.state() == expect);
}

TEST_CASE("dynmix: configuration keys, defaults and errors naming the key", "[dynmix]") {
  const MixingConfig d = MixingConfig::from_json(nlohmann::json::object());
  CHECK(d.policy == pemoe::MixingPolicy::gate_load);
  CHECK(d.eta == 10.0);
  CHECK(d.c == 0.05);
  CHECK(d.distance == pemoe::MixDistance::l2);
  CHECK(d.criterion == pemoe::MixCriterion::mean);
  CHECK(d.interval == 100);
  CHECK(d.eval_batches == 5);
  CHECK(d.freeze_routers);
  CHECK(d.layers.empty());
  CHECK_FALSE(d.all_layers);

  const nlohmann::json full = {{"policy", "gate_load"},
                               {"eta", 5},
                               {"c", 0.2},
                               {"distance", "~l2"},
                               {"criterion", "max"},
                               {"statistic", "mean_probs"},
                               {"layers", {-1, 0}},
                               {"interval", 50},
                               {"eval_batches", 3},
                               {"initial_weights", {{"x", 1}, {"y", 2}}},
                               {"freeze_routers", false}};
  const MixingConfig m = MixingConfig::from_json(full);
  CHECK(m.distance == pemoe::MixDistance::inverse_l2);
  CHECK(m.criterion == pemoe::MixCriterion::max);
  CHECK(m.layers == std::vector<long>{-1, 0});
  CHECK(MixingConfig::from_json(m.to_json()).to_json() == m.to_json());
  CHECK(m.to_json()["distance"] == "~l2");

  CHECK_THAT(config_error({{"eta", -1}}), Catch::Contains("data.mixing.eta") && Catch::Contains("[0, inf)"));
  CHECK_THAT(config_error({{"c", 1.5}}), Catch::Contains("data.mixing.c") && Catch::Contains("[0, 1]"));
  CHECK_THAT(config_error({{"c", -0.1}}), Catch::Contains("data.mixing.c"));
  CHECK_THAT(config_error({{"criterion", "median"}}),
             Catch::Contains("data.mixing.criterion") && Catch::Contains("mean, max, min"));
  CHECK_THAT(config_error({{"policy", "doremi"}}),
             Catch::Contains("data.mixing.policy") && Catch::Contains("gate_load"));
  CHECK_THAT(config_error({{"distance", "l1"}}),
             Catch::Contains("data.mixing.distance") && Catch::Contains("~l2"));
  CHECK_THAT(config_error({{"etaa", 1}}), Catch::Contains("unknown key 'data.mixing.etaa'") &&
                                              Catch::Contains("did you mean 'data.mixing.eta'"));
  CHECK_THAT(config_error({{"interval", 0}}), Catch::Contains("data.mixing.interval"));
  CHECK_THAT(config_error({{"eval_batches", 1.5}}), Catch::Contains("data.mixing.eval_batches"));
  CHECK_THAT(config_error({{"layers", "first"}}), Catch::Contains("data.mixing.layers"));
  CHECK_THAT(config_error({{"initial_weights", {{"a", -1}}}}),
             Catch::Contains("data.mixing.initial_weights.a"));
  CHECK_THAT(config_error({{"policy", "ref_loss"}}), Catch::Contains("data.mixing.ref_loss"));
  CHECK_THAT(config_error({{"ref_loss", {{"a", 1}}}}), Catch::Contains("data.mixing.ref_loss"));
  CHECK_THAT(config_error({{"freeze_routers", 1}}), Catch::Contains("data.mixing.freeze_routers"));
  CHECK_THAT(config_error(nlohmann::json::array()), Catch::Contains("data.mixing"));

  // Dataset names are checked when the mixer sees the datasets.
  CHECK_THROWS_WITH(
      DataMixer(config_of({{"initial_weights", {{"code", 1}, {"maths", 1}}}}), {"code", "math"}, {1, 1}),
      Catch::Contains("data.mixing.initial_weights.maths"));
  CHECK_THROWS_WITH(DataMixer(config_of({{"initial_weights", {{"code", 1}}}}), {"code", "math"}, {1, 1}),
                    Catch::Contains("no entry for dataset 'math'"));
  MixingConfig bad;
  bad.eta = -2;
  CHECK_THROWS_WITH(DataMixer(bad, {"a"}, {1}), Catch::Contains("data.mixing.eta"));
}

}  // namespace dynmix_test

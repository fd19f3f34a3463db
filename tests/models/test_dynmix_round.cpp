// Tests of one dynamic-mixing round on a GPT-2 (include/pemoe/models/dynmix_round.hpp): probe batches,
// the gate loads recorded from a real sparse-LoRA-experts model with padded probes (counts = k × the
// non-padding tokens, equal to a recount from the router caches), the probe losses against mean_loss, a
// round that leaves the dropout streams alone, and the update only at the interval's steps.
#include <catch2/catch.hpp>

#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "pemoe/models/dynmix_round.hpp"
#include "pemoe/models/gpt2_hf.hpp"
#include "support/helpers.hpp"

namespace dynmix_round_test {

using namespace pemoe;

const std::string kTinyDir = std::string(PEMOE_TEST_DATA_DIR) + "/gpt2/tiny";

// A tiny GPT-2 (float) with top-2 LoRA experts at every linear site, random adapters, dropout on.
struct SparseGpt {
  ParamStore<float> store;
  std::unique_ptr<GPT2<float>> model;
  SparseGpt() {
    GPT2Config c = read_gpt2_config(kTinyDir);
    c.resid_pdrop = c.attn_pdrop = c.embd_pdrop = 0.1;
    model = std::make_unique<GPT2<float>>(c);
    AdapterSpec spec;
    spec.kind = AdapterKind::sparse;
    spec.experts = LoraExpertsConfig::mola(4, 2, 2);
    TargetModules all;
    all.all_linear = true;
    model->inject(spec, all);
    Rng rng(5);
    model->register_params(store, rng);
    testing::randomize_params(store, 6, 0.2);
    model->set_training(true);
  }
};

// Four datasets of examples of different lengths (so probe batches are padded), each drawing its tokens
// from its own part of the vocabulary (so the routers see them differently); dataset 3 is empty.
std::vector<std::vector<TokenizedExample>> four_datasets(Index vocab) {
  std::vector<std::vector<TokenizedExample>> out(4);
  Rng r(11);
  const std::uint64_t part = std::uint64_t(vocab) / 3;
  for (std::size_t d = 0; d < 3; ++d)
    for (int i = 0; i < 7; ++i) {
      TokenizedExample t;
      const int len = 3 + int(r.below(6));
      for (int k = 0; k < len; ++k) {
        t.ids.push_back(std::int64_t(d * part + r.below(part)));
        t.labels.push_back(k < 2 ? kIgnoreLabel : t.ids.back());
      }
      out[d].push_back(t);
    }
  return out;
}

TEST_CASE("dynmix round: probes take the first eval_batches batches of each dataset", "[dynmix]") {
  const auto data = four_datasets(50);
  const MixingProbes p = make_mixing_probes(data, 2, 3, 0);
  REQUIRE(p.size() == 4);
  REQUIRE(p[0].size() == 2);  // 7 examples, batch 3, at most 2 batches
  REQUIRE(p[3].empty());
  CHECK(p[0][0].batch == 3);
  CHECK(p[0][1].ids[0] == data[0][3].ids[0]);
  CHECK(make_mixing_probes(data, 5, 3, 0)[1].size() == 3);  // 3 + 3 + 1
  CHECK_THROWS_AS(make_mixing_probes(data, 0, 3, 0), ConfigError);
}

TEST_CASE("dynmix round: gate loads of padded probes are k x the non-padding tokens, rng untouched",
          "[dynmix]") {
  SparseGpt g;
  const auto data = four_datasets(g.model->config().vocab_size);
  const MixingProbes probes = make_mixing_probes(data, 2, 3, 0);
  const auto counters = g.model->rng_counters();
  GateLoadRecorder rec(4, 2, GateLoadStatistic::topk_counts);
  record_probe_gate_loads(*g.model, probes, rec);
  CHECK(g.model->rng_counters() == counters);

  // The non-padding tokens of each dataset's probes, and a recount of the last router's selections.
  for (std::size_t d = 0; d < 3; ++d) {
    long tokens = 0;
    for (const auto& b : probes[d])
      tokens += long(std::accumulate(b.attention_mask.begin(), b.attention_mask.end(), std::int64_t(0)));
    CHECK(rec.tokens(d) == tokens);
    CHECK(rec.batches(d) == 2);
    const std::size_t last = rec.num_layers() - 1;
    const auto& load = rec.load(d, last);
    CHECK(std::accumulate(load.begin(), load.end(), 0.0) == Approx(2.0 * double(tokens)));

    std::vector<double> recount(load.size(), 0.0);
    GPT2<float>::Cache cache;
    g.model->set_training(false);
    for (const auto& b : probes[d]) {
      forward_batch(*g.model, b, cache);
      const auto& rc = *g.model->router_caches(cache).back();
      for (Index t = 0; t < rc.topk_idx.rows(); ++t)
        if (b.attention_mask[std::size_t(t)] != 0)
          for (Index s = 0; s < rc.topk_idx.cols(); ++s) recount[std::size_t(rc.topk_idx(t, s))] += 1;
    }
    g.model->set_training(true);
    CHECK(recount == load);
  }
  CHECK(rec.tokens(3) == 0);  // the empty dataset: no batches, the neutral rule applies
  CHECK(rec.representation(3, {rec.num_layers() - 1}).empty());
}

TEST_CASE("dynmix round: probe losses equal mean_loss over the same examples", "[dynmix]") {
  SparseGpt g;
  const auto data = four_datasets(g.model->config().vocab_size);
  const MixingProbes probes = make_mixing_probes(data, 5, 3, 0);
  const std::vector<double> l = probe_losses(*g.model, probes);
  g.model->set_training(false);
  CHECK(l[0] == Approx(mean_loss(*g.model, data[0], 3, 0)).epsilon(1e-6));
  CHECK(l[1] == Approx(mean_loss(*g.model, data[1], 3, 0)).epsilon(1e-6));
  CHECK(l[2] == Approx(mean_loss(*g.model, data[2], 3, 0)).epsilon(1e-6));
  CHECK(std::isnan(l[3]));
}

TEST_CASE("dynmix round: the mixer updates only at multiples of the interval", "[dynmix]") {
  SparseGpt g;
  const auto data = four_datasets(g.model->config().vocab_size);
  const MixingProbes probes = make_mixing_probes(data, 2, 3, 0);
  MixingConfig mc;
  mc.interval = 4;
  mc.eval_batches = 2;
  DataMixer mixer(mc, {"a", "b", "c", "d"}, {7, 7, 7, 1});
  const std::vector<double> w0 = mixer.weights();
  GateLoadRecorder seen(4);
  CHECK_FALSE(mixing_round(mixer, *g.model, probes, 0, &seen));
  CHECK_FALSE(mixing_round(mixer, *g.model, probes, 3, &seen));
  CHECK(mixer.weights() == w0);
  CHECK(mixing_round(mixer, *g.model, probes, 4, &seen));
  CHECK(seen.num_layers() == g.model->routers().size());
  const auto& w = mixer.weights();
  CHECK(std::accumulate(w.begin(), w.end(), 0.0) == Approx(1.0).epsilon(1e-12));
  CHECK(w != w0);  // three datasets routed differently: the most distinct gains
  for (double x : w) CHECK(x >= mc.c / 4 - 1e-15);
  // The empty dataset took the mean Δ of the others (the neutral rule).
  const auto& s = mixer.last_scores();
  CHECK(s.delta[3] == Approx((s.delta[0] + s.delta[1] + s.delta[2]) / 3));
  // The distance matrix is symmetric with a zero diagonal.
  const std::vector<double> dist = gate_load_distances(seen, {seen.num_layers() - 1});
  REQUIRE(dist.size() == 16);
  CHECK(dist[1] == dist[4]);
  CHECK(dist[0] == 0);
  CHECK(dist[1] > 0);
}

TEST_CASE("dynmix round: gate-load mixing on a model without routers names the fix", "[dynmix]") {
  ParamStore<float> store;
  Rng rng(0);
  auto plain = load_gpt2<float>(kTinyDir, store, rng);
  const auto data = four_datasets(plain->config().vocab_size);
  GateLoadRecorder rec(4);
  try {
    record_probe_gate_loads(*plain, make_mixing_probes(data, 1, 2, 0), rec);
    FAIL("expected a ConfigError");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("MoE adapter") != std::string::npos);
  }
}

}  // namespace dynmix_round_test

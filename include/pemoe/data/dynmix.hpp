/// @file dynmix.hpp
/// @brief Dynamic data mixing for MoE fine-tuning (Zhu, Dong, Qu, Ruan, Chen, Cheng, "Dynamic Data Mixing
/// Maximizes Instruction Tuning for Mixture-of-Experts", arXiv 2406.11256, NAACL 2025): gate-load dataset
/// representations (`GateLoadRecorder`), their distances and redundancy scores (`redundancy_scores`), the
/// multiplicative-weights update of the sampling weights (`multiplicative_update`), and the mixing policies
/// of the paper and its baselines (`DataMixer`), configured from JSON (`MixingConfig::from_json`).
///
/// The loop, as in the paper's Algorithm 1 (every K optimizer steps, with the routers frozen):
/// @code
///   DataMixer mixer(MixingConfig::from_json(j), names, sizes, seed);
///   MultiDatasetSampler sampler(sizes, mixer.weights(), seed);
///   GateLoadRecorder rec = mixer.make_recorder();
///   for (long step = 1; step <= steps; ++step) {
///     train_step(sampler);                                   // draws follow the weights in force
///     if (mixer.is_update_step(step)) {
///       if (mixer.needs_gate_loads()) {
///         rec.begin_round();
///         for (int d = 0; d < D; ++d)                        // eval mode, first eval_batches dev batches
///           while (rec.wants(d)) { forward(dev batch of d); record_gate_loads(rec, d, model, cache); }
///       }
///       mixer.update(step, &rec);
///       sampler.set_weights(mixer.weights());                // effective from the next draw on
///     }
///   }
/// @endcode
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/core/config.hpp"
#include "pemoe/core/detail/edit_distance.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/rng.hpp"

namespace pemoe {

/// How a dataset's gate load is measured per MoE layer.
enum class GateLoadStatistic {
  topk_counts,  ///< count of non-padding tokens whose selected set contains expert e (the paper; default)
  mean_probs,   ///< mean router probability softmax(z)_e over non-padding tokens (for soft routers)
};

/// Distance between two dataset representations (see `redundancy_scores`).
enum class MixDistance {
  l2,          ///< δ_ij = ‖O_i − O_j‖₂ (the paper's default)
  cos,         ///< Δ_i = 1 − agg_j cos(O_i, O_j) (the aggregate is taken over the similarities)
  inverse_l2,  ///< "~l2": the l2 scores with their ranking reversed (the "inverse hypothesis" ablation)
};

/// How the row δ_i· of pairwise distances becomes one score Δ_i.
enum class MixCriterion {
  mean,  ///< Δ_i = (1/|D|) Σ_j δ_ij, the zero diagonal included (the paper's default)
  max,   ///< Δ_i = max_j δ_ij
  min,   ///< Δ_i = min_j δ_ij (0 for l2, because of the diagonal: the weights only drift to uniform)
};

/// Which weights a `DataMixer` produces.
enum class MixingPolicy {
  uniform,        ///< 1/|D| throughout
  datasize,       ///< static, proportional to the dataset sizes
  fixed,          ///< static, the configured initial weights throughout ("static" in JSON)
  random,         ///< starts from the initial weights; new uniform-random weights at every interval
  random_onehot,  ///< one-hot on a uniformly drawn dataset, redrawn every interval
  sequential,     ///< one-hot on dataset (s mod |D|) during interval s: the datasets one after another
  gate_load,      ///< the paper's dynamic mixing from gate-load redundancy
  ref_loss,       ///< DoReMi-like: Δ_i = eval_loss_i − ref_loss_i with the same update
};

// ---------------------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------------------

/**
 * @brief The configuration of data mixing, as `"data": {"mixing": {...}}` of a training config.
 *
 * | key | values (default) |
 * |---|---|
 * | policy | uniform, datasize, static, random, random_onehot, sequential, gate_load, ref_loss (gate_load) |
 * | eta | η ≥ 0 (10 for gate_load, 1 for ref_loss) |
 * | c | smoothing c in [0, 1] (0.05 for gate_load, 1e-4 for ref_loss) |
 * | distance | l2, cos, ~l2 (l2) |
 * | criterion | mean, max, min (mean) |
 * | statistic | topk_counts, mean_probs (topk_counts) |
 * | layers | "last", "all", or a list of MoE layer indices, negative ones from the end ("last") |
 * | interval | optimizer steps between updates, ≥ 1 (100) |
 * | eval_batches | dev batches per dataset and update, ≥ 1 (5) |
 * | initial_weights | "uniform" or a map {dataset name: weight ≥ 0} covering every dataset ("uniform") |
 * | ref_loss | ref_loss policy: a map {dataset name: reference loss} covering every dataset |
 * | freeze_routers | whether the caller should freeze the routers while mixing (true) |
 *
 * `freeze_routers` is advice to the trainer, which owns the parameters: the paper (`--freeze_gate`) freezes
 * every router so that routing moves only through the hidden states that feed the gate; in pemoe the router
 * parameters are the ones named `*.router.*`.
 */
struct MixingConfig {
  MixingPolicy policy = MixingPolicy::gate_load;                 ///< the policy
  double eta = 10.0;                                             ///< η, step size of the update
  double c = 0.05;                                               ///< c, smoothing toward uniform
  MixDistance distance = MixDistance::l2;                        ///< representation distance
  MixCriterion criterion = MixCriterion::mean;                   ///< aggregate of the distances
  GateLoadStatistic statistic = GateLoadStatistic::topk_counts;  ///< what the recorder measures
  bool all_layers = false;                                       ///< use every MoE layer (overrides `layers`)
  std::vector<long> layers;  ///< MoE layer indices, negative from the end; empty = the last layer
  long interval = 100;       ///< optimizer steps between updates (K)
  long eval_batches = 5;     ///< dev batches per dataset and update
  std::map<std::string, double> initial_weights;  ///< empty = uniform
  std::map<std::string, double> ref_loss;         ///< reference losses of the ref_loss policy
  bool freeze_routers = true;                     ///< advice to the trainer (see the struct comment)

  /// The JSON name of a policy.
  static const char* policy_name(MixingPolicy p) {
    switch (p) {
      case MixingPolicy::uniform:
        return "uniform";
      case MixingPolicy::datasize:
        return "datasize";
      case MixingPolicy::fixed:
        return "static";
      case MixingPolicy::random:
        return "random";
      case MixingPolicy::random_onehot:
        return "random_onehot";
      case MixingPolicy::sequential:
        return "sequential";
      case MixingPolicy::gate_load:
        return "gate_load";
      case MixingPolicy::ref_loss:
        return "ref_loss";
    }
    return "?";
  }

  /// Parses and validates `j` (an object; `path` is its key path in messages, e.g. "data.mixing"). Unknown
  /// keys, wrong types and values out of range throw `ConfigError` naming the full key and what is allowed.
  static MixingConfig from_json(const nlohmann::json& j, const std::string& path = "data.mixing");

  /// This configuration as JSON (the inverse of `from_json`).
  nlohmann::json to_json() const;
};

namespace detail {

inline std::string dynmix_key(const std::string& path, const std::string& k) {
  return path.empty() ? k : path + "." + k;
}

inline std::string dynmix_join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

template <class E>
E dynmix_choice(const nlohmann::json& j, const std::string& path, const std::string& k,
                const std::vector<std::pair<std::string, E>>& choices, E def) {
  if (!j.contains(k) || j[k].is_null()) return def;
  std::vector<std::string> names;
  for (const auto& c : choices) names.push_back(c.first);
  PEMOE_CHECK_CONFIG(j[k].is_string(), "config: '", dynmix_key(path, k), "' is ", j[k].dump(),
                     "; allowed values: ", dynmix_join(names));
  const std::string v = j[k].get<std::string>();
  for (const auto& c : choices)
    if (c.first == v) return c.second;
  throw ConfigError("config: '" + dynmix_key(path, k) + "' is \"" + v +
                    "\"; allowed values: " + dynmix_join(names));
}

inline double dynmix_number(const nlohmann::json& j, const std::string& path, const std::string& k,
                            double def, double lo, double hi, const std::string& range) {
  if (!j.contains(k) || j[k].is_null()) return def;
  const auto& v = j[k];
  PEMOE_CHECK_CONFIG(v.is_number(), "config: '", dynmix_key(path, k), "' is ", v.dump(),
                     "; allowed: a number in ", range);
  const double x = v.get<double>();
  PEMOE_CHECK_CONFIG(std::isfinite(x) && x >= lo && x <= hi, "config: '", dynmix_key(path, k), "' is ",
                     v.dump(), "; allowed: a number in ", range);
  return x;
}

inline long dynmix_integer(const nlohmann::json& v, const std::string& key, long lo) {
  const bool is_int =
      v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
  PEMOE_CHECK_CONFIG(is_int && v.get<double>() >= double(lo) && v.get<double>() < 9.0e18, "config: '", key,
                     "' is ", v.dump(), "; allowed: an integer >= ", lo);
  return long(v.get<double>());
}

inline std::map<std::string, double> dynmix_map(const nlohmann::json& v, const std::string& key,
                                                bool non_negative) {
  PEMOE_CHECK_CONFIG(v.is_object() && !v.empty(), "config: '", key,
                     "' must be a non-empty map {dataset name: number}, got ", v.dump());
  std::map<std::string, double> out;
  for (const auto& [name, x] : v.items()) {
    const bool ok =
        x.is_number() && std::isfinite(x.get<double>()) && (!non_negative || x.get<double>() >= 0);
    PEMOE_CHECK_CONFIG(ok, "config: '", key, ".", name, "' is ", x.dump(), "; allowed: a finite number",
                       non_negative ? " >= 0" : "");
    out[name] = x.get<double>();
  }
  return out;
}

}  // namespace detail

inline MixingConfig MixingConfig::from_json(const nlohmann::json& j, const std::string& path) {
  PEMOE_CHECK_CONFIG(j.is_object(), "config: '", path.empty() ? "(top level)" : path,
                     "' must be a JSON object, got ", j.dump());
  const std::vector<std::string> allowed{"policy",          "eta",       "c",
                                         "distance",        "criterion", "statistic",
                                         "layers",          "interval",  "eval_batches",
                                         "initial_weights", "ref_loss",  "freeze_routers"};
  for (const auto& [k, v] : j.items()) {
    (void)v;
    if (std::find(allowed.begin(), allowed.end(), k) != allowed.end()) continue;
    const std::string best = detail::closest_word(k, allowed, std::max<std::size_t>(2, k.size() / 3) + 1);
    throw ConfigError("config: unknown key '" + detail::dynmix_key(path, k) + "'" +
                      (best.empty() ? "" : " (did you mean '" + detail::dynmix_key(path, best) + "'?)") +
                      "; allowed keys of '" + path + "': " + detail::dynmix_join(allowed));
  }
  MixingConfig m;
  m.policy = detail::dynmix_choice<MixingPolicy>(j, path, "policy",
                                                 {{"uniform", MixingPolicy::uniform},
                                                  {"datasize", MixingPolicy::datasize},
                                                  {"static", MixingPolicy::fixed},
                                                  {"random", MixingPolicy::random},
                                                  {"random_onehot", MixingPolicy::random_onehot},
                                                  {"sequential", MixingPolicy::sequential},
                                                  {"gate_load", MixingPolicy::gate_load},
                                                  {"ref_loss", MixingPolicy::ref_loss}},
                                                 MixingPolicy::gate_load);
  const bool ref = m.policy == MixingPolicy::ref_loss;
  m.eta = detail::dynmix_number(j, path, "eta", ref ? 1.0 : 10.0, 0.0, std::numeric_limits<double>::max(),
                                "[0, inf)");
  m.c = detail::dynmix_number(j, path, "c", ref ? 1e-4 : 0.05, 0.0, 1.0, "[0, 1]");
  m.distance = detail::dynmix_choice<MixDistance>(
      j, path, "distance",
      {{"l2", MixDistance::l2}, {"cos", MixDistance::cos}, {"~l2", MixDistance::inverse_l2}},
      MixDistance::l2);
  m.criterion = detail::dynmix_choice<MixCriterion>(
      j, path, "criterion",
      {{"mean", MixCriterion::mean}, {"max", MixCriterion::max}, {"min", MixCriterion::min}},
      MixCriterion::mean);
  m.statistic = detail::dynmix_choice<GateLoadStatistic>(
      j, path, "statistic",
      {{"topk_counts", GateLoadStatistic::topk_counts}, {"mean_probs", GateLoadStatistic::mean_probs}},
      GateLoadStatistic::topk_counts);
  if (j.contains("layers") && !j["layers"].is_null()) {
    const auto& v = j["layers"];
    const std::string key = detail::dynmix_key(path, "layers");
    if (v.is_string()) {
      const std::string s = v.get<std::string>();
      PEMOE_CHECK_CONFIG(s == "last" || s == "all", "config: '", key, "' is \"", s,
                         "\"; allowed values: \"last\", \"all\", or a list of layer indices");
      m.all_layers = s == "all";
    } else {
      PEMOE_CHECK_CONFIG(v.is_array() && !v.empty(), "config: '", key, "' is ", v.dump(),
                         "; allowed values: \"last\", \"all\", or a non-empty list of layer indices");
      for (const auto& x : v) {
        const bool is_int =
            x.is_number_integer() || (x.is_number_float() && std::floor(x.get<double>()) == x.get<double>());
        PEMOE_CHECK_CONFIG(is_int && std::abs(x.get<double>()) < 1e9, "config: '", key, "' holds ", x.dump(),
                           "; allowed: integer layer indices (negative ones count from the end)");
        m.layers.push_back(long(x.get<double>()));
      }
    }
  }
  if (j.contains("interval") && !j["interval"].is_null())
    m.interval = detail::dynmix_integer(j["interval"], detail::dynmix_key(path, "interval"), 1);
  if (j.contains("eval_batches") && !j["eval_batches"].is_null())
    m.eval_batches = detail::dynmix_integer(j["eval_batches"], detail::dynmix_key(path, "eval_batches"), 1);
  if (j.contains("initial_weights") && !j["initial_weights"].is_null()) {
    const auto& v = j["initial_weights"];
    const std::string key = detail::dynmix_key(path, "initial_weights");
    if (v.is_string()) {
      PEMOE_CHECK_CONFIG(v.get<std::string>() == "uniform", "config: '", key, "' is ", v.dump(),
                         "; allowed: \"uniform\" or a map {dataset name: weight}");
    } else {
      m.initial_weights = detail::dynmix_map(v, key, true);
      double total = 0;
      for (const auto& kv : m.initial_weights) total += kv.second;
      PEMOE_CHECK_CONFIG(total > 0, "config: '", key, "' sums to ", total, "; allowed: weights not all 0");
    }
  }
  if (j.contains("ref_loss") && !j["ref_loss"].is_null())
    m.ref_loss = detail::dynmix_map(j["ref_loss"], detail::dynmix_key(path, "ref_loss"), false);
  PEMOE_CHECK_CONFIG(!ref || !m.ref_loss.empty(), "config: '", detail::dynmix_key(path, "ref_loss"),
                     "' is required by policy \"ref_loss\" (a map {dataset name: reference loss})");
  PEMOE_CHECK_CONFIG(ref || m.ref_loss.empty(), "config: '", detail::dynmix_key(path, "ref_loss"),
                     "' is only read by policy \"ref_loss\", not \"", policy_name(m.policy), "\"");
  if (j.contains("freeze_routers") && !j["freeze_routers"].is_null()) {
    PEMOE_CHECK_CONFIG(j["freeze_routers"].is_boolean(), "config: '",
                       detail::dynmix_key(path, "freeze_routers"), "' is ", j["freeze_routers"].dump(),
                       "; allowed values: true, false");
    m.freeze_routers = j["freeze_routers"].get<bool>();
  }
  return m;
}

inline nlohmann::json MixingConfig::to_json() const {
  nlohmann::json j;
  j["policy"] = policy_name(policy);
  j["eta"] = eta;
  j["c"] = c;
  j["distance"] = distance == MixDistance::l2 ? "l2" : distance == MixDistance::cos ? "cos" : "~l2";
  j["criterion"] = criterion == MixCriterion::mean ? "mean" : criterion == MixCriterion::max ? "max" : "min";
  j["statistic"] = statistic == GateLoadStatistic::topk_counts ? "topk_counts" : "mean_probs";
  if (all_layers)
    j["layers"] = "all";
  else if (layers.empty())
    j["layers"] = "last";
  else
    j["layers"] = layers;
  j["interval"] = interval;
  j["eval_batches"] = eval_batches;
  if (initial_weights.empty())
    j["initial_weights"] = "uniform";
  else
    j["initial_weights"] = initial_weights;
  if (!ref_loss.empty()) j["ref_loss"] = ref_loss;
  j["freeze_routers"] = freeze_routers;
  return j;
}

// ---------------------------------------------------------------------------------------------------------
// Gate-load recorder
// ---------------------------------------------------------------------------------------------------------

/**
 * @brief Accumulates, per dataset and per MoE layer, the gate load of a few evaluation batches.
 *
 * With `GateLoadStatistic::topk_counts` (the paper), load[d][l][e] is the number of non-padding tokens of
 * dataset d whose selected set at layer l (the router cache's `topk_idx`) contains expert e; the loads of a
 * layer add up to k × tokens. With `mean_probs` it is the sum of the router probabilities softmax(z)_e over
 * those tokens (a mean after `representation` normalises it), for soft routers whose selected set (the
 * argmax) says little. Padding rows (`valid` = 0) never count.
 *
 * The recorder takes router caches, not a model: `record(d, caches)` with one cache per MoE layer, in the
 * same order every call (for GPT-2, `record_gate_loads` passes `model.router_caches(cache)`). It records
 * at most `max_batches` calls per dataset and round (`wants(d)` says whether to run another batch);
 * `begin_round()` clears everything for the next update. Cost O(N·k) per layer and call (O(N·E) for
 * `mean_probs`); memory O(|D|·L·E).
 */
class GateLoadRecorder {
 public:
  /// A recorder for `n_datasets` datasets, at most `max_batches` batches each per round.
  explicit GateLoadRecorder(std::size_t n_datasets, long max_batches = 5,
                            GateLoadStatistic statistic = GateLoadStatistic::topk_counts)
      : m_max_batches(max_batches), m_statistic(statistic) {
    PEMOE_CHECK_CONFIG(n_datasets >= 1, "GateLoadRecorder: no datasets");
    PEMOE_CHECK_CONFIG(max_batches >= 1, "GateLoadRecorder: max_batches is ", max_batches, ", expected >= 1");
    m_load.resize(n_datasets);
    m_tokens.assign(n_datasets, 0);
    m_batches.assign(n_datasets, 0);
  }

  /// Clears the loads of every dataset (the layer count and expert counts stay fixed).
  void begin_round() {
    for (auto& d : m_load)
      for (auto& l : d) std::fill(l.begin(), l.end(), 0.0);
    std::fill(m_tokens.begin(), m_tokens.end(), 0);
    std::fill(m_batches.begin(), m_batches.end(), 0);
  }

  /// Whether dataset `d` has recorded fewer than `max_batches` batches this round.
  bool wants(std::size_t d) const { return m_batches.at(d) < m_max_batches; }

  /**
   * @brief Adds the gate loads of one batch of dataset `dataset`: `caches[l]` is the cache of MoE layer l
   * (a router's `Cache`: `topk_idx` (N, k), `probs` (N, E), `valid` (N) or empty). Ignored (returns false)
   * when the dataset already has `max_batches` batches this round. `ShapeError` when the layer count or a
   * layer's E differs from the first call, or an expert index is out of range.
   */
  template <class Cache>
  bool record(std::size_t dataset, const std::vector<const Cache*>& caches) {
    PEMOE_CHECK_SHAPE(dataset < m_load.size(), "GateLoadRecorder: dataset ", dataset, " of ", m_load.size());
    PEMOE_CHECK_SHAPE(!caches.empty(), "GateLoadRecorder: no router caches (a model without MoE layers?)");
    if (!wants(dataset)) return false;
    if (m_experts.empty()) {
      for (const auto* c : caches) {
        PEMOE_CHECK_SHAPE(c != nullptr && c->probs.cols() > 0, "GateLoadRecorder: an empty router cache");
        m_experts.push_back(c->probs.cols());
      }
      for (auto& d : m_load) {
        d.clear();
        for (const Index e : m_experts) d.emplace_back(std::size_t(e), 0.0);
      }
    }
    PEMOE_CHECK_SHAPE(caches.size() == m_experts.size(), "GateLoadRecorder: ", caches.size(),
                      " router caches, but the first call had ", m_experts.size());
    long tokens = -1;
    for (std::size_t l = 0; l < caches.size(); ++l) {
      const Cache& c = *caches[l];
      const Index e = m_experts[l];
      PEMOE_CHECK_SHAPE(c.probs.cols() == e, "GateLoadRecorder: layer ", l, " has ", c.probs.cols(),
                        " experts, the first call ", e);
      const bool masked = c.valid.size() != 0;
      std::vector<double>& load = m_load[dataset][l];
      long counted = 0;
      const Index n = m_statistic == GateLoadStatistic::topk_counts ? c.topk_idx.rows() : c.probs.rows();
      for (Index t = 0; t < n; ++t) {
        if (masked && c.valid(t) == 0) continue;
        ++counted;
        if (m_statistic == GateLoadStatistic::topk_counts) {
          for (Index s = 0; s < c.topk_idx.cols(); ++s) {
            const Index x = c.topk_idx(t, s);
            PEMOE_CHECK_SHAPE(x >= 0 && x < e, "GateLoadRecorder: layer ", l, " selected expert ", x, " of ",
                              e);
            load[std::size_t(x)] += 1.0;
          }
        } else {
          for (Index x = 0; x < e; ++x) load[std::size_t(x)] += double(c.probs(t, x));
        }
      }
      if (tokens < 0) tokens = counted;
    }
    m_tokens[dataset] += tokens;
    ++m_batches[dataset];
    return true;
  }

  /// Layer `layer`'s load vector (E) of dataset `d` this round (empty before the first record).
  const std::vector<double>& load(std::size_t d, std::size_t layer) const { return m_load.at(d).at(layer); }
  /// Non-padding tokens of dataset `d` recorded this round (of the first layer's cache).
  long tokens(std::size_t d) const { return m_tokens.at(d); }
  /// Batches of dataset `d` recorded this round.
  long batches(std::size_t d) const { return m_batches.at(d); }
  /// Number of datasets.
  std::size_t num_datasets() const { return m_load.size(); }
  /// Number of MoE layers (0 before the first record).
  std::size_t num_layers() const { return m_experts.size(); }
  /// The measured statistic.
  GateLoadStatistic statistic() const { return m_statistic; }
  /// Batches per dataset and round.
  long max_batches() const { return m_max_batches; }

  /**
   * @brief The representation O_d of dataset `d` over the layers `layers` (indices into the recorded
   * layers): the concatenation of each layer's normalised load, load[l] / Σ_e load[l][e], scaled by
   * 1/|layers| so that O_d sums to 1 (one layer: exactly the paper's Ô). Empty when the dataset has no
   * loads this round (see `redundancy_scores` for how such a dataset is treated).
   */
  std::vector<double> representation(std::size_t d, const std::vector<std::size_t>& layers) const {
    std::vector<double> out;
    for (const std::size_t l : layers) {
      PEMOE_CHECK_CONFIG(l < num_layers(), "GateLoadRecorder: layer ", l, " of ", num_layers());
      const auto& v = m_load.at(d)[l];
      const double total = std::accumulate(v.begin(), v.end(), 0.0);
      if (!(total > 0)) return {};
      for (const double x : v) out.push_back(x / total / double(layers.size()));
    }
    return out;
  }

 private:
  long m_max_batches;
  GateLoadStatistic m_statistic;
  std::vector<Index> m_experts;                          // E per layer
  std::vector<std::vector<std::vector<double>>> m_load;  // [dataset][layer][expert]
  std::vector<long> m_tokens;
  std::vector<long> m_batches;
};

/// Records one batch of a model that lists its router caches (GPT-2: `model.router_caches(cache)`, in the
/// order of `model.routers()`) into `rec` for dataset `dataset`; see `GateLoadRecorder::record`.
template <class Model, class ModelCache>
bool record_gate_loads(GateLoadRecorder& rec, std::size_t dataset, Model& model, const ModelCache& cache) {
  return rec.record(dataset, model.router_caches(cache));
}

// ---------------------------------------------------------------------------------------------------------
// Distances, scores, update
// ---------------------------------------------------------------------------------------------------------

/// The scores of one update, for logging and tests.
struct RedundancyScores {
  std::vector<std::vector<double>> pairwise;  ///< |D|×|D|: δ_ij (l2, ~l2) or cos(O_i, O_j) (cos); 0 if absent
  std::vector<double> delta;                  ///< Δ (|D|)
  std::vector<bool> present;                  ///< datasets with a representation this round
};

/**
 * @brief Redundancy scores Δ of the dataset representations `reps` (|D| vectors of one length; an empty
 * vector marks a dataset with no tokens this round).
 *
 * - l2: δ_ij = ‖O_i − O_j‖₂, Δ_i = agg_j δ_ij with agg = mean (over all datasets, the zero diagonal
 *   included), max or min.
 * - cos: s_ij = O_i·O_j / (‖O_i‖ ‖O_j‖), Δ_i = 1 − agg_j s_ij (self-similarity 1 included).
 * - ~l2: the l2 scores, then the value of the r-th smallest goes to the r-th largest (ranks by a stable
 *   sort: ties keep their index order), so the most redundant dataset gets the largest Δ.
 *
 * Empty-round rule: a dataset with no tokens (an empty representation) takes no part in the distances of
 * the others (agg runs over the present datasets only), and its own Δ is the mean Δ of the present ones,
 * so its weight moves only by the smoothing toward uniform. With no dataset present, Δ = 0 everywhere.
 * Nothing is divided by a zero count. O(|D|²·dim).
 */
inline RedundancyScores redundancy_scores(const std::vector<std::vector<double>>& reps,
                                          MixDistance distance = MixDistance::l2,
                                          MixCriterion criterion = MixCriterion::mean) {
  const std::size_t m = reps.size();
  RedundancyScores r;
  r.pairwise.assign(m, std::vector<double>(m, 0.0));
  r.delta.assign(m, 0.0);
  r.present.assign(m, false);
  std::size_t dim = 0, n_present = 0;
  for (std::size_t i = 0; i < m; ++i) {
    if (reps[i].empty()) continue;
    if (n_present == 0) dim = reps[i].size();
    PEMOE_CHECK_SHAPE(reps[i].size() == dim, "redundancy_scores: dataset ", i, " has ", reps[i].size(),
                      " features, an earlier one ", dim);
    double norm = 0;
    for (const double x : reps[i]) norm += x * x;
    PEMOE_CHECK_AS(NumericError, std::isfinite(norm) && norm > 0, "redundancy_scores: dataset ", i,
                   " has a zero or non-finite representation");
    r.present[i] = true;
    ++n_present;
  }
  if (n_present == 0) return r;
  const bool cos = distance == MixDistance::cos;
  for (std::size_t i = 0; i < m; ++i) {
    if (!r.present[i]) continue;
    for (std::size_t j = 0; j < m; ++j) {
      if (!r.present[j]) continue;
      double v = 0;
      if (cos) {
        double dot = 0, ni = 0, nj = 0;
        for (std::size_t e = 0; e < dim; ++e) {
          dot += reps[i][e] * reps[j][e];
          ni += reps[i][e] * reps[i][e];
          nj += reps[j][e] * reps[j][e];
        }
        v = dot / (std::sqrt(ni) * std::sqrt(nj));
      } else {
        for (std::size_t e = 0; e < dim; ++e) v += (reps[i][e] - reps[j][e]) * (reps[i][e] - reps[j][e]);
        v = std::sqrt(v);
      }
      r.pairwise[i][j] = v;
    }
  }
  std::vector<std::size_t> idx;
  double delta_sum = 0;
  for (std::size_t i = 0; i < m; ++i) {
    if (!r.present[i]) continue;
    double agg = criterion == MixCriterion::max   ? -std::numeric_limits<double>::infinity()
                 : criterion == MixCriterion::min ? std::numeric_limits<double>::infinity()
                                                  : 0.0;
    for (std::size_t j = 0; j < m; ++j) {
      if (!r.present[j]) continue;
      const double v = r.pairwise[i][j];
      if (criterion == MixCriterion::mean)
        agg += v;
      else if (criterion == MixCriterion::max)
        agg = std::max(agg, v);
      else
        agg = std::min(agg, v);
    }
    if (criterion == MixCriterion::mean) agg /= double(n_present);
    r.delta[i] = cos ? 1.0 - agg : agg;
    idx.push_back(i);
    delta_sum += r.delta[i];
  }
  if (distance == MixDistance::inverse_l2) {
    std::vector<std::size_t> order = idx;
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return r.delta[a] < r.delta[b]; });
    std::vector<double> swapped(m, 0.0);
    for (std::size_t q = 0; q < order.size(); ++q) swapped[order[q]] = r.delta[order[order.size() - 1 - q]];
    for (const std::size_t i : idx) r.delta[i] = swapped[i];
  }
  const double neutral = delta_sum / double(n_present);
  for (std::size_t i = 0; i < m; ++i)
    if (!r.present[i]) r.delta[i] = neutral;
  return r;
}

/**
 * @brief The multiplicative-weights (exponentiated-gradient) step of the paper's Algorithm 1:
 * α = softmax(log w + η·Δ), w' = (1 − c)·α + c/|D|, w_new = w' / Σ w'.
 *
 * `w` must be ≥ 0 with a positive sum (a zero weight has log w = −∞ and keeps only the smoothing share
 * c/|D|), η ≥ 0, c in [0, 1], Δ finite. Every returned weight is ≥ c/|D| (up to one rounding) and they sum
 * to 1. The softmax subtracts the maximum, so large η·Δ cannot overflow. O(|D|).
 */
inline std::vector<double> multiplicative_update(const std::vector<double>& w,
                                                 const std::vector<double>& delta, double eta, double c) {
  const std::size_t m = w.size();
  PEMOE_CHECK_SHAPE(m >= 1 && delta.size() == m, "multiplicative_update: ", m, " weights and ", delta.size(),
                    " scores");
  PEMOE_CHECK_CONFIG(std::isfinite(eta) && eta >= 0, "multiplicative_update: eta is ", eta,
                     ", expected a finite value >= 0");
  PEMOE_CHECK_CONFIG(c >= 0 && c <= 1, "multiplicative_update: c is ", c, ", expected a value in [0, 1]");
  std::vector<double> a(m);
  double amax = -std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < m; ++i) {
    PEMOE_CHECK_CONFIG(std::isfinite(w[i]) && w[i] >= 0, "multiplicative_update: weight ", i, " is ", w[i],
                       ", expected a finite value >= 0");
    PEMOE_CHECK_AS(NumericError, std::isfinite(delta[i]), "multiplicative_update: score ", i, " is ",
                   delta[i]);
    a[i] = std::log(w[i]) + eta * delta[i];
    amax = std::max(amax, a[i]);
  }
  PEMOE_CHECK_CONFIG(amax > -std::numeric_limits<double>::infinity(),
                     "multiplicative_update: all weights are 0");
  double z = 0;
  for (double& x : a) z += (x = std::exp(x - amax));
  const double floor = c / double(m);
  double total = 0;
  for (double& x : a) total += (x = (1.0 - c) * (x / z) + floor);
  for (double& x : a) x /= total;
  return a;
}

// ---------------------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------------------

/**
 * @brief Produces the sampling weights of a `MultiDatasetSampler` under a `MixingPolicy` (the paper's
 * dynamic gate-load mixing and its baselines, `MixingConfig` documents the keys).
 *
 * Steps count completed optimizer steps; interval s is the steps [s·K, (s+1)·K), K = `interval`. The weights
 * before the first update are `weights()` after construction: uniform, ∝ sizes (datasize), the initial
 * weights (static, random, gate_load, ref_loss), one-hot on dataset 0 (sequential) or on a random dataset
 * (random_onehot). `update(step, ...)` at a step that is a positive multiple of K (`is_update_step`) computes
 * the weights of the next interval:
 * - gate_load: Δ = `redundancy_scores` of the recorder's representations (the configured layers), then
 *   `multiplicative_update(w, Δ, η, c)`;
 * - ref_loss: Δ_i = eval_loss_i − ref_loss_i (a non-finite eval loss follows the empty-round rule: the
 *   mean Δ of the others), then the same update;
 * - random: w_i = u_i / Σ u, u_i uniform in (0, 1]; random_onehot: a uniform dataset; sequential: dataset
 *   s mod |D|. These draw from `Rng(seed).split("dynmix")` at counter s, so they are a pure function of
 *   (seed, step): reproducible and resumable without extra state.
 * Hand the result to `MultiDatasetSampler::set_weights`: it applies from the next draw on. `state()` /
 * `restore()` carry the weights of the dynamic policies across a checkpoint.
 */
class DataMixer {
 public:
  /// A mixer over datasets `names` (unique) of sizes `sizes` (≥ 1 each); `seed` keys the random policies.
  /// `ConfigError` when a name of `initial_weights` or `ref_loss` is not a dataset, or a dataset is missing.
  DataMixer(MixingConfig config, std::vector<std::string> names, std::vector<Index> sizes,
            std::uint64_t seed = 0)
      : m_config(std::move(config)),
        m_names(std::move(names)),
        m_sizes(std::move(sizes)),
        m_rng(Rng(seed).split("dynmix")) {
    const std::size_t m = m_names.size();
    PEMOE_CHECK_CONFIG(m >= 1 && m_sizes.size() == m, "DataMixer: ", m, " dataset names and ", m_sizes.size(),
                       " sizes");
    for (std::size_t i = 0; i < m; ++i) {
      PEMOE_CHECK_CONFIG(m_sizes[i] >= 1, "DataMixer: dataset '", m_names[i], "' has size ", m_sizes[i],
                         ", expected >= 1");
      for (std::size_t j = 0; j < i; ++j)
        PEMOE_CHECK_CONFIG(m_names[j] != m_names[i], "DataMixer: dataset name '", m_names[i],
                           "' appears twice");
    }
    PEMOE_CHECK_CONFIG(std::isfinite(m_config.eta) && m_config.eta >= 0, "config: 'data.mixing.eta' is ",
                       m_config.eta, "; allowed: a number in [0, inf)");
    PEMOE_CHECK_CONFIG(m_config.c >= 0 && m_config.c <= 1, "config: 'data.mixing.c' is ", m_config.c,
                       "; allowed: a number in [0, 1]");
    PEMOE_CHECK_CONFIG(m_config.interval >= 1, "config: 'data.mixing.interval' is ", m_config.interval,
                       "; allowed: an integer >= 1");
    PEMOE_CHECK_CONFIG(m_config.eval_batches >= 1, "config: 'data.mixing.eval_batches' is ",
                       m_config.eval_batches, "; allowed: an integer >= 1");
    m_initial = by_name(m_config.initial_weights, "initial_weights", std::vector<double>(m, 1.0));
    const double total = std::accumulate(m_initial.begin(), m_initial.end(), 0.0);
    PEMOE_CHECK_CONFIG(total > 0, "config: 'data.mixing.initial_weights' sums to ", total,
                       "; allowed: weights not all 0");
    for (double& w : m_initial) w /= total;
    if (m_config.policy == MixingPolicy::ref_loss) {
      PEMOE_CHECK_CONFIG(!m_config.ref_loss.empty(),
                         "config: 'data.mixing.ref_loss' is required by policy \"ref_loss\"");
      m_ref = by_name(m_config.ref_loss, "ref_loss", {});
    }
    m_weights = weights_of_interval(0);
  }

  /// The configuration.
  const MixingConfig& config() const { return m_config; }
  /// The dataset names.
  const std::vector<std::string>& names() const { return m_names; }
  /// The weights in force (Σ = 1).
  const std::vector<double>& weights() const { return m_weights; }
  /// The configured initial weights, normalised (uniform unless `initial_weights` is a map).
  const std::vector<double>& initial_weights() const { return m_initial; }
  /// Whether `update(step)` changes the weights at this step (the policy is not static and step % K == 0).
  bool is_update_step(long step) const {
    const auto p = m_config.policy;
    const bool fixed = p == MixingPolicy::uniform || p == MixingPolicy::datasize || p == MixingPolicy::fixed;
    return !fixed && step > 0 && step % m_config.interval == 0;
  }
  /// Whether updates need a `GateLoadRecorder` (gate_load).
  bool needs_gate_loads() const { return m_config.policy == MixingPolicy::gate_load; }
  /// Whether updates need per-dataset eval losses (ref_loss).
  bool needs_eval_losses() const { return m_config.policy == MixingPolicy::ref_loss; }
  /// A recorder sized for this mixer (datasets, `eval_batches`, `statistic`).
  GateLoadRecorder make_recorder() const {
    return GateLoadRecorder(m_names.size(), m_config.eval_batches, m_config.statistic);
  }

  /// The recorder layers the configuration selects, given `n_layers` MoE layers (`ConfigError` naming
  /// `data.mixing.layers` for an index out of range).
  std::vector<std::size_t> selected_layers(std::size_t n_layers) const {
    PEMOE_CHECK_CONFIG(n_layers >= 1, "DataMixer: no MoE layers were recorded");
    std::vector<std::size_t> out;
    if (m_config.all_layers) {
      for (std::size_t l = 0; l < n_layers; ++l) out.push_back(l);
    } else if (m_config.layers.empty()) {
      out.push_back(n_layers - 1);
    } else {
      for (const long l : m_config.layers) {
        const long n = long(n_layers);
        PEMOE_CHECK_CONFIG(l >= -n && l < n, "config: 'data.mixing.layers' holds ", l, " but the model has ",
                           n, " MoE layers; allowed: 0..", n - 1, " or -", n, "..-1");
        out.push_back(std::size_t(l < 0 ? l + n : l));
      }
    }
    return out;
  }

  /**
   * @brief The update after optimizer step `step` (see the class comment). Returns false, changing nothing,
   * when `is_update_step(step)` is false. gate_load needs `loads` (after a recording round), ref_loss
   * `eval_losses` (|D| values); `ConfigError` when the needed one is missing.
   */
  bool update(long step, const GateLoadRecorder* loads = nullptr,
              const std::vector<double>* eval_losses = nullptr) {
    if (!is_update_step(step)) return false;
    const std::size_t m = m_names.size();
    switch (m_config.policy) {
      case MixingPolicy::gate_load: {
        PEMOE_CHECK_CONFIG(loads != nullptr, "DataMixer: policy \"gate_load\" needs the recorded gate loads");
        PEMOE_CHECK_CONFIG(loads->num_datasets() == m, "DataMixer: the recorder has ", loads->num_datasets(),
                           " datasets, the mixer ", m);
        std::vector<std::vector<double>> reps(m);
        if (loads->num_layers() > 0) {
          const auto layers = selected_layers(loads->num_layers());
          for (std::size_t d = 0; d < m; ++d) reps[d] = loads->representation(d, layers);
        }
        m_last = redundancy_scores(reps, m_config.distance, m_config.criterion);
        m_weights = multiplicative_update(m_weights, m_last.delta, m_config.eta, m_config.c);
        break;
      }
      case MixingPolicy::ref_loss: {
        PEMOE_CHECK_CONFIG(eval_losses != nullptr && eval_losses->size() == m,
                           "DataMixer: policy \"ref_loss\" needs ", m, " eval losses");
        RedundancyScores s;
        s.delta.assign(m, 0.0);
        s.present.assign(m, false);
        double sum = 0;
        std::size_t n = 0;
        for (std::size_t d = 0; d < m; ++d) {
          if (!std::isfinite((*eval_losses)[d])) continue;
          s.present[d] = true;
          s.delta[d] = (*eval_losses)[d] - m_ref[d];
          sum += s.delta[d];
          ++n;
        }
        for (std::size_t d = 0; d < m; ++d)
          if (!s.present[d]) s.delta[d] = n > 0 ? sum / double(n) : 0.0;
        m_last = std::move(s);
        m_weights = multiplicative_update(m_weights, m_last.delta, m_config.eta, m_config.c);
        break;
      }
      default:
        m_weights = weights_of_interval(std::uint64_t(step / m_config.interval));
        break;
    }
    return true;
  }

  /// The scores of the last gate_load or ref_loss update (empty before one).
  const RedundancyScores& last_scores() const { return m_last; }

  /// The state to checkpoint: the weights in force.
  std::vector<double> state() const { return m_weights; }
  /// Resumes from `state()` (|D| weights, ≥ 0, not all 0; normalised here unless they sum to 1 already).
  void restore(std::vector<double> weights) {
    PEMOE_CHECK_CONFIG(weights.size() == m_names.size(), "DataMixer::restore: ", weights.size(),
                       " weights for ", m_names.size(), " datasets");
    double total = 0;
    for (const double w : weights) {
      PEMOE_CHECK_CONFIG(std::isfinite(w) && w >= 0, "DataMixer::restore: weight ", w, ", expected >= 0");
      total += w;
    }
    PEMOE_CHECK_CONFIG(total > 0, "DataMixer::restore: the weights sum to 0");
    // Saved weights are already normalised: keep their bits (renormalising could move them by an ulp).
    if (std::abs(total - 1.0) > 1e-12)
      for (double& w : weights) w /= total;
    m_weights = std::move(weights);
  }

 private:
  std::vector<double> by_name(const std::map<std::string, double>& map, const std::string& key,
                              std::vector<double> def) const {
    if (map.empty()) return def;
    std::vector<double> out(m_names.size(), 0.0);
    for (const auto& [name, v] : map) {
      const auto it = std::find(m_names.begin(), m_names.end(), name);
      PEMOE_CHECK_CONFIG(it != m_names.end(), "config: 'data.mixing.", key, ".", name,
                         "' is not a dataset; allowed: ", detail::dynmix_join(m_names));
      out[std::size_t(it - m_names.begin())] = v;
    }
    for (const auto& n : m_names)
      PEMOE_CHECK_CONFIG(map.count(n) == 1, "config: 'data.mixing.", key, "' has no entry for dataset '", n,
                         "'");
    return out;
  }

  // The weights of interval s for the policies that do not look at the model.
  std::vector<double> weights_of_interval(std::uint64_t s) const {
    const std::size_t m = m_names.size();
    std::vector<double> w(m, 0.0);
    switch (m_config.policy) {
      case MixingPolicy::uniform:
        std::fill(w.begin(), w.end(), 1.0 / double(m));
        break;
      case MixingPolicy::datasize: {
        const double total = double(std::accumulate(m_sizes.begin(), m_sizes.end(), Index{0}));
        for (std::size_t i = 0; i < m; ++i) w[i] = double(m_sizes[i]) / total;
        break;
      }
      case MixingPolicy::random: {
        if (s == 0) return m_initial;
        Rng r = m_rng.split(s);
        double total = 0;
        for (double& x : w) total += (x = 1.0 - r.uniform());  // (0, 1]
        for (double& x : w) x /= total;
        break;
      }
      case MixingPolicy::random_onehot: {
        Rng r = m_rng.split(s);
        w[std::size_t(r.below(m))] = 1.0;
        break;
      }
      case MixingPolicy::sequential:
        w[std::size_t(s % m)] = 1.0;
        break;
      default:
        return m_initial;  // static, gate_load, ref_loss start from the initial weights
    }
    return w;
  }

  MixingConfig m_config;
  std::vector<std::string> m_names;
  std::vector<Index> m_sizes;
  Rng m_rng;
  std::vector<double> m_initial;
  std::vector<double> m_ref;
  std::vector<double> m_weights;
  RedundancyScores m_last;
};

}  // namespace pemoe

/// @file dynmix_round.hpp
/// @brief One round of dynamic data mixing on a GPT-2 during training (Zhu et al. 2024, arXiv 2406.11256):
/// run each dataset's probe batches in inference mode, record the gate loads (or the losses), and let the
/// `DataMixer` compute the weights of the next interval. Shared by `pemoe train` and the examples.
#pragma once

#include <cstdint>
#include <vector>

#include "pemoe/data/dynmix.hpp"
#include "pemoe/data/instruction.hpp"
#include "pemoe/data/packing.hpp"
#include "pemoe/models/gpt2.hpp"
#include "pemoe/models/lm_eval.hpp"

namespace pemoe {

/// The probe data of a mixing round: `probes[d]` are the batches of dataset d (at most `eval_batches`) that
/// every round reads, the same ones each time (the reference code re-reads the same dev prefix).
using MixingProbes = std::vector<std::vector<TokenBatch>>;

/**
 * @brief Probe batches for every dataset: the first `eval_batches`·`batch` examples of `examples[d]` (its
 * dev data), `batch` at a time, each batch right-padded with `pad_id` to its longest example. A dataset
 * with no examples gets no batches (the recorder's empty-round rule then applies to it).
 */
inline MixingProbes make_mixing_probes(const std::vector<std::vector<TokenizedExample>>& examples,
                                       long eval_batches, Index batch, std::int64_t pad_id) {
  PEMOE_CHECK_CONFIG(eval_batches >= 1 && batch >= 1, "make_mixing_probes: eval_batches ", eval_batches,
                     " and batch ", batch, " must be >= 1");
  MixingProbes probes(examples.size());
  for (std::size_t d = 0; d < examples.size(); ++d) {
    const auto& ex = examples[d];
    for (std::size_t i = 0; i < ex.size() && long(probes[d].size()) < eval_batches; i += std::size_t(batch)) {
      const std::vector<TokenizedExample> part(
          ex.begin() + long(i), ex.begin() + long(std::min(ex.size(), i + std::size_t(batch))));
      probes[d].push_back(pad_batch(part, 0, pad_id));
    }
  }
  return probes;
}

/// RAII: the model in inference mode with its dropout rng counters kept, so that a probe round changes
/// nothing of the training run but the mixing weights; back to training mode at the end.
template <class T>
class ProbeScope {
 public:
  explicit ProbeScope(GPT2<T>& model) : m_model(model), m_counters(model.rng_counters()) {
    m_model.set_training(false);
  }
  ~ProbeScope() {
    m_model.set_rng_counters(m_counters);
    m_model.set_training(true);
  }
  ProbeScope(const ProbeScope&) = delete;
  ProbeScope& operator=(const ProbeScope&) = delete;

 private:
  GPT2<T>& m_model;
  std::vector<std::uint64_t> m_counters;
};

/// The gate loads of `model` on `probes` (a fresh round of `recorder`): every probe batch of every dataset,
/// up to the recorder's `max_batches`. Leaves the model in training mode.
template <class T>
void record_probe_gate_loads(GPT2<T>& model, const MixingProbes& probes, GateLoadRecorder& recorder) {
  PEMOE_CHECK_CONFIG(probes.size() == recorder.num_datasets(), "record_probe_gate_loads: ", probes.size(),
                     " probe sets for ", recorder.num_datasets(), " datasets");
  PEMOE_CHECK_CONFIG(!model.routers().empty(),
                     "dynamic data mixing by gate load needs a model with MoE adapters (routers); this model "
                     "has none: use a MoE adapter (molora, sparse, mov, mpoe) or another mixing policy");
  ProbeScope<T> scope(model);
  recorder.begin_round();
  typename GPT2<T>::Cache cache;
  for (std::size_t d = 0; d < probes.size(); ++d)
    for (const TokenBatch& b : probes[d]) {
      if (!recorder.wants(d)) break;
      forward_batch(model, b, cache);
      record_gate_loads(recorder, d, model, cache);
    }
}

/// The mean loss of `model` on each dataset's probes (NaN for a dataset without probes: the ref_loss
/// policy's empty-round rule). Leaves the model in training mode.
template <class T>
std::vector<double> probe_losses(GPT2<T>& model, const MixingProbes& probes) {
  ProbeScope<T> scope(model);
  std::vector<double> out(probes.size(), std::numeric_limits<double>::quiet_NaN());
  typename GPT2<T>::Cache cache;
  for (std::size_t d = 0; d < probes.size(); ++d) {
    double sum = 0, n = 0;
    for (const TokenBatch& b : probes[d]) {
      const double k = predicted_tokens(b);
      if (k == 0) continue;
      sum += forward_batch(model, b, cache) * k;
      n += k;
    }
    if (n > 0) out[d] = sum / n;
  }
  return out;
}

/**
 * @brief The mixing step at the start of optimizer step `step` (completed steps): when
 * `mixer.is_update_step(step)`, measures what the policy needs on `probes` (gate loads with
 * `mixer.make_recorder()`, or the probe losses) and updates the mixer; returns whether the weights were
 * recomputed (then hand `mixer.weights()` to the sampler). `recorder`, if given, receives the round's gate
 * loads (for plots). Leaves the model in training mode; dropout streams are untouched, so a run resumed
 * from a checkpoint repeats the same rounds.
 */
template <class T>
bool mixing_round(DataMixer& mixer, GPT2<T>& model, const MixingProbes& probes, long step,
                  GateLoadRecorder* recorder = nullptr) {
  if (!mixer.is_update_step(step)) return false;
  if (mixer.needs_gate_loads()) {
    GateLoadRecorder rec = mixer.make_recorder();
    record_probe_gate_loads(model, probes, rec);
    mixer.update(step, &rec);
    if (recorder) *recorder = std::move(rec);
  } else if (mixer.needs_eval_losses()) {
    const std::vector<double> losses = probe_losses(model, probes);
    mixer.update(step, nullptr, &losses);
  } else {
    mixer.update(step);
  }
  return true;
}

/**
 * @brief The pairwise distance matrix (|D|×|D|, row-major) of the datasets' gate-load representations in
 * `recorder` at the layers `layers` (`redundancy_scores(...).pairwise` with `distance`): the picture of how
 * differently the router sees the datasets.
 */
inline std::vector<double> gate_load_distances(const GateLoadRecorder& recorder,
                                               const std::vector<std::size_t>& layers,
                                               MixDistance distance = MixDistance::l2) {
  const std::size_t m = recorder.num_datasets();
  std::vector<std::vector<double>> reps(m);
  for (std::size_t d = 0; d < m; ++d) reps[d] = recorder.representation(d, layers);
  const RedundancyScores s = redundancy_scores(reps, distance, MixCriterion::mean);
  std::vector<double> out;
  for (const auto& row : s.pairwise) out.insert(out.end(), row.begin(), row.end());
  return out;
}

}  // namespace pemoe

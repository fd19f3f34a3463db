/// @file sampler.hpp
/// @brief Seeded, resumable weighted sampling over several datasets (multi-task / data-mixing training).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "pemoe/core/config.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/rng.hpp"

namespace pemoe {

/// One draw of `MultiDatasetSampler`: example `index` of dataset `dataset`.
struct SampleRef {
  int dataset = 0;  ///< which dataset, 0..K-1
  Index index = 0;  ///< which example of it, 0..n_dataset-1
};

/// Weighted sampling over K datasets of sizes n_k with mixing weights w_k.
///
/// Draw number t picks dataset k with probability p_k = w_k / Σ_j w_j (inverse CDF of the uniform number
/// t of a counter-based `Rng` stream), then the next index of dataset k's current epoch: each dataset walks
/// through a random permutation of 0..n_k-1 (Fisher–Yates, from its own stream keyed by (seed, k, epoch)),
/// so within an epoch no index repeats, and a new permutation is drawn for each epoch.
///
/// `set_weights` may be called at any time (dynamic data mixing); the next draws follow the new weights.
/// Every draw is a pure function of (seed, t, the weights in force at draw t, the number of earlier draws
/// of dataset k), so `state()` / `restore()` resume the exact sequence. Weights must be finite, >= 0 and not
/// all 0; an empty dataset (n_k = 0) must have weight 0 (`ConfigError` naming the index and value).
///
/// Complexity: `next()` O(K) plus O(n_k) once per epoch of dataset k; memory O(Σ n_k).
class MultiDatasetSampler {
 public:
  /// Everything needed to resume: the seed, the number of draws, the draws of each dataset, the weights.
  /// `integers()` / `from_flat()` give it as one integer vector + one double vector (for a checkpoint).
  struct State {
    std::uint64_t seed = 0;                    ///< the construction seed
    std::uint64_t draws = 0;                   ///< draws made so far
    std::vector<std::uint64_t> dataset_draws;  ///< draws of each dataset so far (K)
    std::vector<double> weights;               ///< the weights in force (normalised, K)

    /// [seed, draws, dataset_draws...] as int64 (the seed's bits reinterpreted).
    std::vector<std::int64_t> integers() const {
      std::vector<std::int64_t> v{static_cast<std::int64_t>(seed), static_cast<std::int64_t>(draws)};
      for (const auto d : dataset_draws) v.push_back(static_cast<std::int64_t>(d));
      return v;
    }
    /// The inverse of (`integers()`, `weights`); `ConfigError` when the lengths disagree.
    static State from_flat(const std::vector<std::int64_t>& ints, const std::vector<double>& weights) {
      PEMOE_CHECK_CONFIG(ints.size() >= 2 && ints.size() - 2 == weights.size(),
                         "MultiDatasetSampler::State: ", ints.size(), " integers and ", weights.size(),
                         " weights, expected K + 2 and K");
      State s;
      s.seed = static_cast<std::uint64_t>(ints[0]);
      s.draws = static_cast<std::uint64_t>(ints[1]);
      for (std::size_t i = 2; i < ints.size(); ++i)
        s.dataset_draws.push_back(static_cast<std::uint64_t>(ints[i]));
      s.weights = weights;
      return s;
    }
  };

  /// A sampler over datasets of sizes `sizes` with weights `weights` (same length K >= 1), seeded by `seed`.
  MultiDatasetSampler(std::vector<Index> sizes, std::vector<double> weights, std::uint64_t seed = 0)
      : m_sizes(std::move(sizes)), m_seed(seed), m_rng(seed) {
    PEMOE_CHECK_CONFIG(!m_sizes.empty(), "MultiDatasetSampler: no datasets");
    for (std::size_t k = 0; k < m_sizes.size(); ++k) {
      PEMOE_CHECK_CONFIG(m_sizes[k] >= 0, "MultiDatasetSampler: dataset ", k, " has size ", m_sizes[k],
                         ", expected >= 0");
    }
    m_choice = m_rng.split("dataset choice");
    m_counts.assign(m_sizes.size(), 0);
    m_perm.resize(m_sizes.size());
    m_perm_epoch.assign(m_sizes.size(), ~std::uint64_t{0});
    set_weights(std::move(weights));
  }

  /// Number of datasets K.
  std::size_t num_datasets() const { return m_sizes.size(); }
  /// The dataset sizes n_k.
  const std::vector<Index>& sizes() const { return m_sizes; }

  /// Replaces the weights (K values, >= 0, finite, not all 0, 0 for an empty dataset; `ConfigError` naming
  /// the bad index and value). They are normalised to sum to 1. Takes effect at the next draw.
  void set_weights(std::vector<double> weights) {
    const double total = checked_total(weights);
    for (double& w : weights) w /= total;
    m_weights = std::move(weights);
  }

  /// The current weights, normalised (Σ = 1).
  const std::vector<double>& weights() const { return m_weights; }

  /// The next draw (see the class comment).
  SampleRef next() {
    const double u = m_choice.uniform_at(m_draws);
    std::size_t k = 0;
    std::size_t last_positive = 0;
    double cum = 0;
    bool found = false;
    for (std::size_t j = 0; j < m_weights.size(); ++j) {
      if (m_weights[j] <= 0) continue;
      last_positive = j;
      cum += m_weights[j];
      if (!found && u < cum) {
        k = j;
        found = true;
      }
    }
    if (!found) k = last_positive;  // u ≥ Σ p from rounding
    ++m_draws;
    const auto n = static_cast<std::uint64_t>(m_sizes[k]);
    const std::uint64_t c = m_counts[k]++;
    const std::vector<Index>& perm = permutation(k, c / n);
    return {static_cast<int>(k), perm[static_cast<std::size_t>(c % n)]};
  }

  /// Total draws so far.
  std::uint64_t draws() const { return m_draws; }
  /// Draws of each dataset so far.
  const std::vector<std::uint64_t>& draws_per_dataset() const { return m_counts; }
  /// The epoch dataset `k` is in (completed passes over it: draws_k / n_k).
  std::uint64_t epoch(std::size_t k) const {
    return m_sizes.at(k) > 0 ? m_counts.at(k) / static_cast<std::uint64_t>(m_sizes[k]) : 0;
  }

  /// The resumable state (see `State`).
  State state() const { return State{m_seed, m_draws, m_counts, m_weights}; }

  /// Resumes from `s` (a state of a sampler over datasets of the same sizes): the next draws are those the
  /// saved sampler would have made. `ConfigError` when K differs or the weights are invalid.
  void restore(const State& s) {
    PEMOE_CHECK_CONFIG(s.dataset_draws.size() == m_sizes.size(),
                       "MultiDatasetSampler::restore: the state has ", s.dataset_draws.size(),
                       " datasets, this sampler ", m_sizes.size());
    std::uint64_t sum = 0;
    for (const auto d : s.dataset_draws) sum += d;
    PEMOE_CHECK_CONFIG(sum == s.draws, "MultiDatasetSampler::restore: the per-dataset draws sum to ", sum,
                       " but the state says ", s.draws, " draws");
    // Saved weights are already normalised: keep their bits (renormalising could move a boundary by 1 ulp).
    const double total = checked_total(s.weights);
    if (std::abs(total - 1.0) <= 1e-12) {
      m_weights = s.weights;
    } else {
      set_weights(s.weights);
    }
    m_seed = s.seed;
    m_rng = Rng(m_seed);
    m_choice = m_rng.split("dataset choice");
    m_draws = s.draws;
    m_counts = s.dataset_draws;
    m_perm_epoch.assign(m_sizes.size(), ~std::uint64_t{0});
  }

 private:
  double checked_total(const std::vector<double>& weights) const {
    PEMOE_CHECK_CONFIG(weights.size() == m_sizes.size(), "MultiDatasetSampler: ", weights.size(),
                       " weights for ", m_sizes.size(), " datasets");
    double total = 0;
    for (std::size_t k = 0; k < weights.size(); ++k) {
      const double w = weights[k];
      PEMOE_CHECK_CONFIG(std::isfinite(w) && w >= 0, "MultiDatasetSampler: weight ", k, " is ", w,
                         ", expected a finite value >= 0");
      PEMOE_CHECK_CONFIG(w == 0 || m_sizes[k] > 0, "MultiDatasetSampler: dataset ", k,
                         " is empty but has weight ", w, "; give it weight 0");
      total += w;
    }
    PEMOE_CHECK_CONFIG(total > 0 && std::isfinite(total), "MultiDatasetSampler: the weights sum to ", total,
                       ", expected a finite sum > 0");
    return total;
  }

  // The permutation of dataset k in epoch `epoch` (cached; rebuilt when the epoch changes).
  const std::vector<Index>& permutation(std::size_t k, std::uint64_t epoch) {
    if (m_perm_epoch[k] != epoch) {
      std::vector<Index>& p = m_perm[k];
      p.resize(static_cast<std::size_t>(m_sizes[k]));
      std::iota(p.begin(), p.end(), Index{0});
      Rng r = m_rng.split(static_cast<std::uint64_t>(k)).split(epoch);
      for (std::size_t i = p.size(); i > 1; --i) {
        const auto j = static_cast<std::size_t>(r.below(i));
        std::swap(p[i - 1], p[j]);
      }
      m_perm_epoch[k] = epoch;
    }
    return m_perm[k];
  }

  std::vector<Index> m_sizes;
  std::uint64_t m_seed;
  Rng m_rng;
  Rng m_choice;
  std::vector<double> m_weights;
  std::uint64_t m_draws = 0;
  std::vector<std::uint64_t> m_counts;
  std::vector<std::vector<Index>> m_perm;
  std::vector<std::uint64_t> m_perm_epoch;
};

}  // namespace pemoe

/// @file gradient_mask.hpp
/// @brief `GradientMask`: MPOE's "unbalanced optimisation" — on a random fraction p_b of optimizer steps the
/// shared central tensors get no update (Gao et al., COLING 2022, arXiv 2203.01104, Fig. 1b).
#pragma once

#include <cstdint>
#include <regex>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_select.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"

namespace pemoe {

/// Configuration of a `GradientMask`.
struct GradientMaskConfig {
  /// Probability that a step masks the central tensors. **0.5 is a guess**: the paper's value was not
  /// retrieved (spec §2.6); `p_b = 1` is MPOE's `--tensor_learn` (central always frozen), `p_b = 0` no mask.
  double p_b = 0.5;
  /// On a masked step treat the central tensors as PyTorch's AdamW treats a parameter whose `.grad` is None:
  /// no moment update, no step-count increment, no weight decay (their bias correction later uses their own
  /// count). When false, the moments still absorb the step's gradient (and the count advances with them);
  /// only the value update, weight decay included, is skipped.
  bool mask_moments = true;
  /// Regex (std::regex_search) naming the shared central tensors; the default matches the central tensors
  /// of `MpoeFfn` (`<prefix>.wi.mpo.central`, `<prefix>.wo.mpo.central`).
  std::string pattern = R"(\.mpo\.central$)";
};

/**
 * @brief MPOE's gradient mask (spec §2.6, the rule as proposed there): once per optimizer step draw
 * u ~ U[0, 1) from a seeded `Rng`; if u < p_b the parameters matching `pattern` (the shared central tensors)
 * get no update this step; all other parameters (auxiliary tensors, routers) always update.
 *
 * Use with `AdamW::step(store, update_mask, keep_moments_of_skipped)`:
 * @code
 *   auto update = mask.next(store);                       // one draw per optimizer step
 *   adamw.step(store, update, mask.keep_moments_of_skipped());
 * @endcode
 * Deterministic: the k-th draw is `rng.uniform()` of the stream given at construction. Cost: one draw per
 * step plus a regex pass over the parameter names when the store's parameter count changes.
 */
class GradientMask {
 public:
  explicit GradientMask(const GradientMaskConfig& config = {}, Rng rng = Rng(0))
      : m_config(config), m_rng(rng) {
    PEMOE_CHECK_CONFIG(config.p_b >= 0.0 && config.p_b <= 1.0, "GradientMask: p_b must be in [0, 1], got ",
                       config.p_b);
    m_regex = compile_param_regex(config.pattern, "GradientMask");
  }

  /// Draws u for the next step; returns true when the central tensors are masked (u < p_b).
  bool draw() {
    m_masked = m_rng.uniform() < m_config.p_b;
    ++m_steps;
    if (m_masked) ++m_fired;
    return m_masked;
  }

  /// The per-parameter update flags for the last draw: false for parameters matching `pattern` when masked.
  /// Throws `ConfigError` if no parameter of the store matches (almost always a wrong pattern).
  template <class T>
  std::vector<bool> update_mask(const ParamStore<T>& store) {
    refresh(store);
    std::vector<bool> update(store.size(), true);
    if (m_masked)
      for (std::size_t i = 0; i < update.size(); ++i) update[i] = !m_match[i];
    return update;
  }

  /// `draw()` then `update_mask(store)`: call once per optimizer step.
  template <class T>
  std::vector<bool> next(const ParamStore<T>& store) {
    draw();
    return update_mask(store);
  }

  /// The `keep_moments_of_skipped` argument of `AdamW::step`.
  bool keep_moments_of_skipped() const { return m_config.mask_moments; }
  /// Whether the last draw masked the central tensors.
  bool masked() const { return m_masked; }
  /// Number of draws so far.
  std::uint64_t steps() const { return m_steps; }
  /// Number of masked steps so far.
  std::uint64_t fired() const { return m_fired; }
  const GradientMaskConfig& config() const { return m_config; }
  /// Whether parameter i of the last store seen matches the pattern.
  bool matches(std::size_t i) const { return i < m_match.size() && m_match[i]; }

 private:
  template <class T>
  void refresh(const ParamStore<T>& store) {
    if (m_match.size() == store.size()) return;
    m_match = match_params(store, m_regex);
    bool any = false;
    for (bool m : m_match) any = any || m;
    PEMOE_CHECK_CONFIG(any, "GradientMask: pattern '", m_config.pattern, "' matches none of the ",
                       store.size(), " parameters");
  }

  GradientMaskConfig m_config;
  Rng m_rng;
  std::regex m_regex;
  std::vector<bool> m_match;
  bool m_masked = false;
  std::uint64_t m_steps = 0, m_fired = 0;
};

}  // namespace pemoe

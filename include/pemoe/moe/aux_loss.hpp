/// @file aux_loss.hpp
/// @brief Router auxiliary losses (Switch load balance, router z-loss, CV² of importance and load),
/// their exact gradients, and `AuxLossCollector`, which sums or averages them across layers.
#pragma once

#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/moe/topk.hpp"

namespace pemoe {

/**
 * @brief How the dispatch fraction f of the Switch balance loss is normalised.
 *
 * With counts c_i = number of (token, slot) assignments to expert i among T tokens and k slots:
 * - `per_assignment`: f_i = c_i / (T·k), Σf = 1 (MoLA, arXiv 2402.08562; Switch when k = 1);
 * - `per_token_slot`: f_i = c_i / T, Σf = k (Hugging Face Mixtral `load_balancing_loss_func`), k× larger;
 * - `forai_constant`: the for-ai reference `_load_balancing_loss` without a mask (arXiv 2309.05444 code):
 *   L = E²·mean_i(mean_t p_{t,i}) = E whatever the routing, with zero gradient. Offered only to reproduce
 *   the reference; it does not balance anything.
 */
enum class BalanceNorm { per_assignment, per_token_slot, forai_constant };

/// Whether `AuxLossCollector` sums the per-layer losses (MoLA) or averages them (mean over recorded layers).
enum class LayerReduction { sum, mean };

/**
 * @brief Coefficients of the router auxiliary losses (all 0 = off, the MoV/MoLoRA reference).
 *
 * The router adds coef × value to the loss it reports and coef × gradient in its backward.
 * Usual values: Switch balance 1e-2 (Fedus et al. 2021, arXiv 2101.03961), MoLA 1e-3 summed over layers,
 * ST-MoE z-loss 1e-3 (Zoph et al. 2022, arXiv 2202.08906), Shazeer importance/load 1e-2 (arXiv 1701.06538).
 */
struct AuxLossConfig {
  double balance_coef = 0.0;                               ///< Switch load-balancing loss
  BalanceNorm balance_norm = BalanceNorm::per_assignment;  ///< normalisation of f
  double z_coef = 0.0;                                     ///< router z-loss
  double importance_coef = 0.0;                            ///< CV²(importance), importance_i = Σ_x G(x)_i
  double load_coef = 0.0;  ///< CV²(load), normal-CDF estimator for noisy top-k

  bool any() const { return balance_coef != 0 || z_coef != 0 || importance_coef != 0 || load_coef != 0; }
};

/// Values of the auxiliary losses of one router call (unweighted), and their coefficient-weighted sum.
struct AuxLossValues {
  double balance = 0.0;     ///< E·Σ f_i P_i (see `switch_balance_loss`)
  double z = 0.0;           ///< mean over counted tokens of lse(z(x))²
  double importance = 0.0;  ///< CV²(importance)
  double load = 0.0;        ///< CV²(load)
  double weighted = 0.0;    ///< Σ coef·value (before the collector's layer reduction; without the balance
                            ///< term when the router is in a balance group, whose pooled loss counts once)
  bool grouped = false;     ///< the balance term belongs to a pooled balance group
};

/**
 * @brief Switch load-balancing loss @f$ L = E \sum_i f_i P_i @f$, @f$ P_i = \frac1T \sum_t p_{t,i} @f$,
 * f from the router's selection (`topk_idx`, (T, k)) normalised by `norm` (see `BalanceNorm`).
 *
 * f is a count and has no gradient, so @f$ \partial L / \partial p_{t,i} = E f_i / T @f$ is the same for
 * every counted token: it is written to `dprobs_row` (1, E) when given. Minimum 1 (per_assignment) at uniform
 * routing. probs: (T, E), topk_idx: (T, k); `valid` (T) of 0/1, when given, restricts T, f and P to the
 * tokens marked 1 (padding excluded; T is then their count). Cost O(T·(E + k)).
 */
template <class T>
T switch_balance_loss(ConstMatrixRef<T> probs, const IndexMatrix& topk_idx, BalanceNorm norm,
                      RowVector<T>* dprobs_row = nullptr, const Vector<T>* valid = nullptr) {
  const Index rows = probs.rows(), e = probs.cols(), k = topk_idx.cols();
  PEMOE_CHECK_SHAPE(topk_idx.rows() == rows, "switch_balance_loss: topk_idx has ", topk_idx.rows(),
                    " rows, probs has ", rows);
  PEMOE_CHECK_SHAPE(!valid || valid->size() == rows, "switch_balance_loss: the mask has ",
                    valid ? valid->size() : 0, " entries, probs has ", rows, " rows");
  const Index n = valid ? static_cast<Index>(valid->sum()) : rows;
  RowVector<T> grad(e);
  T loss = T(0);
  if (n == 0) {
    if (dprobs_row) *dprobs_row = RowVector<T>::Zero(e);
    return loss;
  }
  const RowVector<T> P =
      (valid ? RowVector<T>(valid->transpose() * probs) : RowVector<T>(probs.colwise().sum())) / T(n);
  if (norm == BalanceNorm::forai_constant) {
    loss = T(e) * T(e) * P.mean();
    grad.setConstant(T(e) / T(n));  // d(E²·mean_i P_i)/dp_{t,i} = E²/(E·T)
  } else {
    RowVector<T> f = RowVector<T>::Zero(e);
    for (Index t = 0; t < rows; ++t)
      if (!valid || (*valid)(t) != T(0))
        for (Index j = 0; j < k; ++j) f(topk_idx(t, j)) += T(1);
    f /= norm == BalanceNorm::per_assignment ? T(n * k) : T(n);
    loss = T(e) * f.dot(P);
    grad = T(e) * f / T(n);
  }
  if (dprobs_row) *dprobs_row = grad;
  return loss;
}

/**
 * @brief Router z-loss (ST-MoE) @f$ L_z = \frac1T \sum_x \mathrm{lse}(z(x))^2 @f$ over logits (T, E);
 * @f$ \partial L_z/\partial z_j(x) = \frac{2}{T}\,\mathrm{lse}(x)\,\mathrm{softmax}(z(x))_j @f$, added times
 * `scale` to `dlogits` when given.
 */
template <class T>
T router_z_loss(ConstMatrixRef<T> logits, MatrixRef<T>* dlogits = nullptr, T scale = T(1)) {
  const Index n = logits.rows(), e = logits.cols();
  if (n == 0) return T(0);
  T sum = T(0);
  RowVector<T> row(e), p(e);
  for (Index t = 0; t < n; ++t) {
    row = logits.row(t);
    const T lse = softmax_row(row.data(), e, p.data());
    sum += lse * lse;
    if (dlogits) dlogits->row(t) += (scale * T(2) * lse / T(n)) * p;
  }
  return sum / T(n);
}

/**
 * @brief Squared coefficient of variation @f$ CV^2(v) = \mathrm{var}(v) / (\mathrm{mean}(v)^2 + 10^{-10})
 * @f$, var unbiased (÷(E−1)) as in Shazeer's reference port; 0 when E = 1. Writes dCV²/dv to `grad` when
 * given.
 */
template <class T>
T cv_squared(const RowVector<T>& v, RowVector<T>* grad = nullptr) {
  const Index e = v.size();
  if (e <= 1) {
    if (grad) *grad = RowVector<T>::Zero(e);
    return T(0);
  }
  const T mu = v.mean();
  const RowVector<T> c = v.array() - mu;
  const T var = c.squaredNorm() / T(e - 1);
  const T den = mu * mu + T(1e-10);
  if (grad) *grad = (T(2) / T(e - 1) * c.array() / den - var * T(2) * mu / (T(e) * den * den)).matrix();
  return var / den;
}

/**
 * @brief Collects the auxiliary losses of every router of a model during one step, for the loss and
 * for logging, and sums or averages them across layers.
 *
 * Routers given a collector (`Router::set_collector`) `record()` their values in forward; in backward they
 * scale their aux-loss gradients by `layer_weight()` (1 for `sum`, 1/L for `mean` over the L records of
 * the step), so the gradients are those of `total()`. Call `reset()` at the start of every step (after
 * the previous backward).
 *
 * Balance groups (`RouterConfig::balance_group`) reproduce MoLA's per-layer loss: the routers of one group
 * pool their assignment counts and probability sums (as if their logits were concatenated along the token
 * axis), the group's loss E·Σ f_i P_i is counted once in `total()`, and each router's balance gradient is
 * the pooled one. All routers of a group must share E, k, the normalisation and the coefficient.
 */
class AuxLossCollector {
 public:
  /// One router's record: its site name and values.
  struct Record {
    std::string site;
    AuxLossValues values;
  };

  explicit AuxLossCollector(LayerReduction reduction = LayerReduction::sum) : m_reduction(reduction) {}

  /// Forgets the step's records and balance groups (call at the start of every step).
  void reset() {
    m_records.clear();
    m_groups.clear();
  }
  /// Adds one router's values (its balance term excluded from `weighted` when it is in a balance group).
  void record(const std::string& site, const AuxLossValues& values) { m_records.push_back({site, values}); }
  LayerReduction reduction() const { return m_reduction; }
  /// Factor applied to each layer's loss and gradient: 1 (sum) or 1/L (mean over L records).
  double layer_weight() const {
    return m_reduction == LayerReduction::mean && !m_records.empty() ? 1.0 / double(m_records.size()) : 1.0;
  }
  /// The auxiliary loss to add to the task loss: reduction of the coefficient-weighted values, plus
  /// coef × the pooled balance loss of every balance group.
  double total() const {
    double g = 0.0;
    for (const auto& kv : m_groups) g += kv.second.coef * group_balance(kv.first);
    return reduce(&AuxLossValues::weighted) + g * layer_weight();
  }
  /// Reduced unweighted values, for logging (`balance` adds each group's pooled loss once).
  double balance() const {
    double g = 0.0;
    for (const auto& kv : m_groups) g += group_balance(kv.first);
    double own = 0.0;
    for (const auto& r : m_records)
      if (!r.values.grouped) own += r.values.balance;
    return (own + g) * layer_weight();
  }
  double z() const { return reduce(&AuxLossValues::z); }
  double importance() const { return reduce(&AuxLossValues::importance); }
  double load() const { return reduce(&AuxLossValues::load); }
  /// Every record of the step, in forward order.
  const std::vector<Record>& records() const { return m_records; }

  /// Pooled statistics of a balance group: the routers of one layer (MoLA concatenates the router logits of
  /// all adapted modules of a decoder layer before its balance loss).
  struct BalanceGroup {
    std::vector<double> counts;     ///< (E) (token, slot) assignments per expert, all routers of the group
    std::vector<double> prob_sums;  ///< (E) Σ_t p_{t,i}, all routers of the group
    double tokens = 0.0;            ///< T' = Σ routers' tokens
    Index k = 0;                    ///< slots per token
    BalanceNorm norm = BalanceNorm::per_assignment;
    double coef = 0.0;
    Index routers = 0;  ///< routers that added their statistics this step
  };
  /// Adds one router's counts and probability sums to `group` (E, k, norm and coef must agree).
  void add_balance_stats(const std::string& group, const std::vector<double>& counts,
                         const std::vector<double>& prob_sums, double tokens, Index k, BalanceNorm norm,
                         double coef) {
    auto it = m_groups.find(group);
    if (it == m_groups.end()) {
      m_groups.emplace(group, BalanceGroup{counts, prob_sums, tokens, k, norm, coef, 1});
      return;
    }
    BalanceGroup& g = it->second;
    PEMOE_CHECK_CONFIG(g.counts.size() == counts.size() && g.k == k && g.norm == norm && g.coef == coef,
                       "AuxLossCollector: balance group '", group, "' mixes routers with different E (",
                       g.counts.size(), " vs ", counts.size(), "), k, normalisation or coefficient");
    for (std::size_t i = 0; i < counts.size(); ++i) {
      g.counts[i] += counts[i];
      g.prob_sums[i] += prob_sums[i];
    }
    g.tokens += tokens;
    ++g.routers;
  }
  /// Pooled balance loss of a group: E·Σ f_i P_i over all its routers' tokens (see `switch_balance_loss`).
  double group_balance(const std::string& group) const {
    const BalanceGroup& g = group_at(group);
    const double e = double(g.counts.size());
    if (g.tokens == 0) return 0.0;
    double l = 0.0;
    for (std::size_t i = 0; i < g.counts.size(); ++i)
      l += g.norm == BalanceNorm::forai_constant ? e * g.prob_sums[i] / g.tokens
                                                 : e * f_of(g, i) * g.prob_sums[i] / g.tokens;
    return l;
  }
  /// dL_group/dp_{t,i} (the same for every token of every router of the group), unweighted.
  std::vector<double> group_balance_grad(const std::string& group) const {
    const BalanceGroup& g = group_at(group);
    const double e = double(g.counts.size());
    std::vector<double> d(g.counts.size(), 0.0);
    if (g.tokens == 0) return d;
    for (std::size_t i = 0; i < d.size(); ++i)
      d[i] = g.norm == BalanceNorm::forai_constant ? e / g.tokens : e * f_of(g, i) / g.tokens;
    return d;
  }
  /// The step's balance groups by name.
  const std::map<std::string, BalanceGroup>& groups() const { return m_groups; }

 private:
  static double f_of(const BalanceGroup& g, std::size_t i) {
    return g.counts[i] / (g.norm == BalanceNorm::per_assignment ? g.tokens * double(g.k) : g.tokens);
  }
  const BalanceGroup& group_at(const std::string& group) const {
    auto it = m_groups.find(group);
    PEMOE_CHECK(it != m_groups.end(), "AuxLossCollector: no balance group '", group,
                "' this step (did the routers' forward run after reset()?)");
    return it->second;
  }
  double reduce(double AuxLossValues::*field) const {
    double s = 0.0;
    for (const auto& r : m_records) s += r.values.*field;
    return s * layer_weight();
  }

  LayerReduction m_reduction;
  std::vector<Record> m_records;
  std::map<std::string, BalanceGroup> m_groups;
};

}  // namespace pemoe

/// @file aux_loss.hpp
/// @brief Router auxiliary losses (Switch load balance, router z-loss, CV² of importance and load),
/// their exact gradients, and `AuxLossCollector`, which sums or averages them across layers.
#pragma once

#include <cmath>
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
  double balance = 0.0;     ///< N·Σ f_i P_i
  double z = 0.0;           ///< mean_x lse(z(x))²
  double importance = 0.0;  ///< CV²(importance)
  double load = 0.0;        ///< CV²(load)
  double weighted = 0.0;    ///< Σ coef·value (before the collector's layer reduction)
};

/**
 * @brief Switch load-balancing loss @f$ L = E \sum_i f_i P_i @f$, @f$ P_i = \frac1T \sum_t p_{t,i} @f$,
 * f from the router's selection (`topk_idx`, (T, k)) normalised by `norm` (see `BalanceNorm`).
 *
 * f is a count and has no gradient, so @f$ \partial L / \partial p_{t,i} = E f_i / T @f$ is the same for
 * every token: it is written to `dprobs_row` (1, E) when given. Minimum 1 (per_assignment) at uniform
 * routing. probs: (T, E), topk_idx: (T, k). Cost O(T·(E + k)).
 */
template <class T>
T switch_balance_loss(ConstMatrixRef<T> probs, const IndexMatrix& topk_idx, BalanceNorm norm,
                      RowVector<T>* dprobs_row = nullptr) {
  const Index n = probs.rows(), e = probs.cols(), k = topk_idx.cols();
  PEMOE_CHECK_SHAPE(topk_idx.rows() == n, "switch_balance_loss: topk_idx has ", topk_idx.rows(),
                    " rows, probs has ", n);
  RowVector<T> grad(e);
  T loss = T(0);
  if (n == 0) {
    if (dprobs_row) *dprobs_row = RowVector<T>::Zero(e);
    return loss;
  }
  const RowVector<T> P = probs.colwise().sum() / T(n);
  if (norm == BalanceNorm::forai_constant) {
    loss = T(e) * T(e) * P.mean();
    grad.setConstant(T(e) / T(n));  // d(E²·mean_i P_i)/dp_{t,i} = E²/(E·T)
  } else {
    RowVector<T> f = RowVector<T>::Zero(e);
    for (Index t = 0; t < n; ++t)
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
 */
class AuxLossCollector {
 public:
  /// One router's record: its site name and values.
  struct Record {
    std::string site;
    AuxLossValues values;
  };

  explicit AuxLossCollector(LayerReduction reduction = LayerReduction::sum) : m_reduction(reduction) {}

  void reset() { m_records.clear(); }
  void record(const std::string& site, const AuxLossValues& values) { m_records.push_back({site, values}); }
  LayerReduction reduction() const { return m_reduction; }
  /// Factor applied to each layer's loss and gradient: 1 (sum) or 1/L (mean over L records).
  double layer_weight() const {
    return m_reduction == LayerReduction::mean && !m_records.empty() ? 1.0 / double(m_records.size()) : 1.0;
  }
  /// The auxiliary loss to add to the task loss: reduction of the coefficient-weighted values.
  double total() const { return reduce(&AuxLossValues::weighted); }
  /// Reduced unweighted values, for logging.
  double balance() const { return reduce(&AuxLossValues::balance); }
  double z() const { return reduce(&AuxLossValues::z); }
  double importance() const { return reduce(&AuxLossValues::importance); }
  double load() const { return reduce(&AuxLossValues::load); }
  /// Every record of the step, in forward order.
  const std::vector<Record>& records() const { return m_records; }

 private:
  double reduce(double AuxLossValues::*field) const {
    double s = 0.0;
    for (const auto& r : m_records) s += r.values.*field;
    return s * layer_weight();
  }

  LayerReduction m_reduction;
  std::vector<Record> m_records;
};

}  // namespace pemoe

/// @file router.hpp
/// @brief `Router`: a linear gate, a softmax and a gate mode (soft, top-k mask, top-k renormalised, noisy
/// top-k, Switch top-1) turning router inputs into per-expert gate weights, with auxiliary losses.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/moe/aux_loss.hpp"
#include "pemoe/moe/topk.hpp"

namespace pemoe {

/**
 * @brief How a router turns logits z (and p = softmax(z)) into gate weights g (zeros outside the selected
 * set S). Every top-k breaks exact ties towards the lowest expert index.
 */
enum class GateMode {
  soft,       ///< g = p, all experts (MoV / MoLoRA default, arXiv 2309.05444); S = argmax for balance counts
  topk_mask,  ///< g = p ⊙ 1[S], S = top-k of p, NO renormalisation (the for-ai reference `Router` quirk)
  topk_renorm,  ///< g_S = p_S / Σ_S p = softmax over the kept logits (MoLA arXiv 2402.08562, Mixtral)
  noisy_topk,   ///< Shazeer 2017 (arXiv 1701.06538): H = z + ε·(softplus(x W_noise) + 1e-2) in training,
                ///< g = softmax(KeepTopK(H, k))
  switch_top1,  ///< S = argmax p, g_S = p_S (Switch, arXiv 2101.03961); or the value-1 straight-through gate
                ///< p_S / stop_grad(p_S) with `RouterConfig::straight_through`
};

/// Initialisation of the gate (and noise) weight.
enum class RouterInit {
  normal,           ///< N(0, init_std²), for-ai MoV/MoLoRA (std 0.02)
  kaiming_uniform,  ///< U(±1/√d_in), nn.Linear default / MoLA
  zeros,            ///< zeros (Shazeer's noisy top-k: balanced at init)
};

/// What the router of an adapter reads (per site).
enum class RouterInput {
  activation,   ///< the adapted activation itself (MoV reference: the tensor being scaled)
  layer_input,  ///< the input of the adapted linear (MoLoRA / MoLA)
  external,     ///< a tensor the caller passes to forward/backward
};

/// Configuration of a `Router`.
struct RouterConfig {
  Index d_in = 0;                            ///< router input features (set by the owning adapter)
  Index n_experts = 0;                       ///< E (set by the owning adapter)
  GateMode mode = GateMode::soft;            ///< gate mode
  Index top_k = 2;                           ///< k of the top-k modes (ignored by soft and switch_top1)
  RouterInit init = RouterInit::normal;      ///< gate weight initialisation
  double init_std = 0.02;                    ///< std of `RouterInit::normal`
  bool bias = false;                         ///< gate bias `<prefix>.bias` (E)
  RouterInit bias_init = RouterInit::zeros;  ///< zeros, or kaiming_uniform = U(±1/√d_in) (nn.Linear's bias)
  double jitter = 0.0;            ///< ε of multiplicative input jitter u ⊙ U(1−ε, 1+ε), training only
  bool straight_through = false;  ///< switch_top1: gate value 1, gradient of p_S / p_S
  RouterInit noise_init = RouterInit::zeros;  ///< noisy_topk: `<prefix>.noise.weight` initialisation
  double noise_epsilon = 1e-2;                ///< noisy_topk: std = softplus(x W_noise) + noise_epsilon
  AuxLossConfig aux;                          ///< auxiliary loss coefficients (all off by default)
  /// Non-empty: with a collector, the balance loss is pooled over every router of this group (MoLA: the
  /// 7 adapted linears of one decoder layer, e.g. "layers.3") and counted once; empty: per router.
  std::string balance_group;
  bool trainable = true;  ///< declare the router weights trainable

  /// Experts selected per token (the columns of `topk_idx`): k for the top-k modes, 1 otherwise.
  Index selected() const {
    return (mode == GateMode::topk_mask || mode == GateMode::topk_renorm || mode == GateMode::noisy_topk)
               ? top_k
               : 1;
  }
};

/**
 * @brief Router layer: @f$ z = u W_g^\top (+ b) @f$, @f$ p = \mathrm{softmax}(z) @f$ (in T, max-subtracted),
 * gate weights g by `GateMode`, and auxiliary losses (`AuxLossConfig`) whose gradients are added in backward.
 *
 * Parameters: `<prefix>.weight` (E, d_in) (PyTorch layout), `<prefix>.bias` (E) if configured,
 * `<prefix>.noise.weight` (E, d_in) for noisy top-k. Owning adapters use the prefix `<site>.router`.
 *
 * Shapes: u (N, d_in) -> gates (N, E), dense with zeros outside the selected set; the cache holds logits,
 * probs, gates, `topk_idx` (N, k) and what the aux losses need. Backward takes dL/dgates (N, E), adds the
 * coefficient-weighted aux-loss gradients, backpropagates through the gate mode (the selection held fixed),
 * accumulates dW_g (and dW_noise, db) and writes dL/du (or adds it, with `InputGrad::add`).
 *
 * Padding: `set_token_mask` marks the tokens that count; masked tokens are still routed (their gates are
 * computed), but they take no part in the balance, z-loss, importance and load statistics nor in their
 * gradients, so padding never shifts the balance.
 * Cost: 2·N·d_in·E flops for the logits (twice for noisy top-k), O(N·E·k) for the selection.
 *
 * Rows are independent except for the aux-loss batch statistics, so adapters may run `forward_rows` /
 * `backward_rows` over row panels (to fuse the router with a GEMM while its output is in cache) between
 * `begin_forward` and `finish_forward`. Noise and jitter are drawn by a counter-based rng at (call, row,
 * column): the same bits for any panel size or thread count; `set_call_counter` replays a call.
 *
 * Non-finite logits (NaN/Inf in u or in the weights) throw `NumericError` naming the router and the token:
 * a top-k of NaN is meaningless, so pemoe refuses instead of propagating.
 */
template <class T>
class Router {
 public:
  using Scalar = T;
  /// What forward saves for backward (reused across calls to avoid reallocations).
  struct Cache {
    Index n = 0;             ///< rows of this call (tokens, or tokens × heads)
    Vector<T> valid;         ///< (N) 1 for rows that count in the aux statistics, 0 for padding; empty: all
    Index n_valid = 0;       ///< rows that count
    bool training = false;   ///< whether noise/jitter were active
    Matrix<T> jitter;        ///< (N, d_in) jitter multipliers, empty when inactive
    Matrix<T> u_jittered;    ///< (N, d_in) u ⊙ jitter, empty when inactive
    Matrix<T> logits;        ///< (N, E) clean logits z
    Matrix<T> probs;         ///< (N, E) softmax(z)
    Matrix<T> gates;         ///< (N, E) gate weights g
    IndexMatrix topk_idx;    ///< (N, k) selected experts, decreasing gate order, ties to the lower index
    Vector<T> lse;           ///< (N) log-sum-exp of z
    Matrix<T> noise_logits;  ///< (N, E) x W_noiseᵀ (noisy_topk)
    Matrix<T> noise;         ///< (N, E) ε ~ N(0, 1) (noisy_topk in training)
    Matrix<T> noisy_logits;  ///< (N, E) H (noisy_topk)
    IndexMatrix threshold_idx;  ///< (N, 2): experts holding the k-th and (k+1)-th largest H (load estimator)
    Matrix<T> load_prob;        ///< (N, E) P(x, i) of the load estimator (noisy_topk, training, k < E)
    RowVector<T> balance_grad;  ///< (E) dL_balance/dp_{t,i} (unweighted, same for every token)
    RowVector<T> importance_grad;  ///< (E) dCV²(importance)/dimportance
    RowVector<T> load_grad;        ///< (E) dCV²(load)/dload
    AuxLossValues aux;             ///< values of this call (unweighted, plus the weighted sum)
  };

  explicit Router(const RouterConfig& config = {}) : m_config(config) {}

  /// The mean routing probability of each expert over the rows of the forward that filled `cache`, padding
  /// (`valid` = 0) excluded: [e] = mean_t softmax(z)_{t,e}. For a soft mixture, the expert's share of the
  /// output; under top-k, the probability before the selection (`expert_load` has the selections' share).
  /// E zeros when no row counted. O(N·E).
  static std::vector<double> mean_probs(const Cache& cache) {
    std::vector<double> mean(static_cast<std::size_t>(cache.probs.cols()), 0.0);
    double counted = 0;
    for (Index t = 0; t < cache.probs.rows(); ++t) {
      if (cache.valid.size() != 0 && cache.valid(t) == T(0)) continue;
      for (Index j = 0; j < cache.probs.cols(); ++j) mean[std::size_t(j)] += double(cache.probs(t, j));
      counted += 1;
    }
    if (counted > 0)
      for (double& v : mean) v /= counted;
    return mean;
  }

  /// Checks the configuration (called by register_params, once E and d_in are known).
  void validate() const {
    const auto& c = m_config;
    PEMOE_CHECK_CONFIG(c.d_in > 0 && c.n_experts > 0,
                       "Router: d_in and n_experts must be positive, got d_in=", c.d_in,
                       " n_experts=", c.n_experts);
    PEMOE_CHECK_CONFIG(c.selected() >= 1 && c.selected() <= c.n_experts,
                       "Router: top_k must be in [1, E=", c.n_experts, "], got ", c.top_k);
    PEMOE_CHECK_CONFIG(c.jitter >= 0.0 && c.jitter < 1.0, "Router: jitter must be in [0, 1), got ", c.jitter);
    PEMOE_CHECK_CONFIG(c.noise_epsilon > 0.0, "Router: noise_epsilon must be positive");
  }

  /// Declares `<prefix>.weight` (+ `.bias`, `.noise.weight`) and initialises them per the config.
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    validate();
    m_store = &store;
    m_name = prefix;
    const Index e = m_config.n_experts, d = m_config.d_in;
    m_w = store.add(prefix + ".weight", {e, d}, m_config.trainable);
    init_weight(store.value(m_w), m_config.init, rng.split(prefix + ".weight"));
    if (m_config.bias) {
      m_b = store.add(prefix + ".bias", {e}, m_config.trainable);
      if (m_config.bias_init == RouterInit::kaiming_uniform) {
        const double bound = 1.0 / std::sqrt(static_cast<double>(d));
        rng.split(prefix + ".bias").fill_uniform(store.value(m_b), e, -bound, bound);
      }
    }
    if (m_config.mode == GateMode::noisy_topk) {
      m_wn = store.add(prefix + ".noise.weight", {e, d}, m_config.trainable);
      init_weight(store.value(m_wn), m_config.noise_init, rng.split(prefix + ".noise.weight"));
    }
    m_rng = rng.split(prefix + ".noise");
  }

  /// gates = gate_mode(u·Wᵀ).   u: (N, d_in) -> gates: (N, E)
  void forward(ConstMatrixRef<T> u, MatrixRef<T> gates, Cache& cache) {
    begin_forward(u.rows(), cache);
    check_shape(site(), "gates", gates, u.rows(), m_config.n_experts);
    forward_rows(u, 0, gates, cache);
    finish_forward(cache);
  }

  /// Prepares the cache for a call over n tokens (panel interface; see the class comment).
  void begin_forward(Index n, Cache& cache) const {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "Router: call register_params() before forward/backward");
    const Index e = m_config.n_experts, k = m_config.selected();
    cache.n = n;
    cache.training = m_training;
    if (m_mask.empty()) {
      cache.valid.resize(0);
      cache.n_valid = n;
    } else {
      const Index nm = static_cast<Index>(m_mask.size());
      PEMOE_CHECK_SHAPE(nm > 0 && n % nm == 0, site(), ": the token mask has ", nm,
                        " entries but the call has ", n, " rows (expected N or N·heads rows for N tokens)");
      const Index per = n / nm;  // rows per token (heads routed separately)
      cache.valid.resize(n);
      for (Index i = 0; i < n; ++i) cache.valid(i) = m_mask[static_cast<std::size_t>(i / per)] ? T(1) : T(0);
      cache.n_valid = static_cast<Index>(cache.valid.sum());
    }
    cache.logits.resize(n, e);
    cache.probs.resize(n, e);
    cache.gates.resize(n, e);
    cache.topk_idx.resize(n, k);
    cache.lse.resize(n);
    const bool jit = jitter_active();
    cache.jitter.resize(jit ? n : 0, jit ? m_config.d_in : 0);
    cache.u_jittered.resize(jit ? n : 0, jit ? m_config.d_in : 0);
    const bool noisy = m_config.mode == GateMode::noisy_topk;
    cache.noise_logits.resize(noisy ? n : 0, noisy ? e : 0);
    cache.noisy_logits.resize(noisy ? n : 0, noisy ? e : 0);
    const bool noise_on = noisy && m_training;
    cache.noise.resize(noise_on ? n : 0, noise_on ? e : 0);
    const bool est = load_estimator_active();
    cache.load_prob.resize(est ? n : 0, est ? e : 0);
    cache.threshold_idx.resize(est ? n : 0, est ? 2 : 0);
  }

  /// Rows [row0, row0 + u_rows.rows()) of a call: logits, softmax, selection, gates.
  /// u_rows: (n, d_in) -> gates_rows: (n, E)
  void forward_rows(ConstMatrixRef<T> u_rows, Index row0, MatrixRef<T> gates_rows, Cache& cache) const {
    const Index nr = u_rows.rows(), e = m_config.n_experts, d = m_config.d_in, k = m_config.selected();
    PEMOE_CHECK_SHAPE(u_rows.cols() == d, site(), ": router input has ", u_rows.cols(),
                      " features, router expects ", d);
    check_shape(site(), "gates", gates_rows, nr, e);
    PEMOE_CHECK(row0 >= 0 && row0 + nr <= cache.n, site(), ": rows [", row0, ", ", row0 + nr,
                ") outside the call's ", cache.n, " tokens");
    const Rng call = m_rng.split(m_calls);
    auto z = cache.logits.middleRows(row0, nr);
    if (cache.jitter.size() != 0) {
      const Rng jr = call.split(1);
      auto J = cache.jitter.middleRows(row0, nr);
      const T lo = T(1.0 - m_config.jitter), width = T(2.0 * m_config.jitter);
      for (Index i = 0; i < nr; ++i)
        for (Index j = 0; j < d; ++j)
          J(i, j) = lo + width * T(jr.uniform_at(static_cast<std::uint64_t>((row0 + i) * d + j)));
      cache.u_jittered.middleRows(row0, nr) = u_rows.cwiseProduct(J);
      gemm<T>(Op::N, Op::T, T(1), cache.u_jittered.middleRows(row0, nr), weight(), T(0), z);
      if (m_config.mode == GateMode::noisy_topk)
        gemm<T>(Op::N, Op::T, T(1), cache.u_jittered.middleRows(row0, nr), noise_weight(), T(0),
                cache.noise_logits.middleRows(row0, nr));
    } else {
      gemm<T>(Op::N, Op::T, T(1), u_rows, weight(), T(0), z);
      if (m_config.mode == GateMode::noisy_topk)
        gemm<T>(Op::N, Op::T, T(1), u_rows, noise_weight(), T(0), cache.noise_logits.middleRows(row0, nr));
    }
    if (m_config.bias) z.rowwise() += m_store->matrix(m_b).row(0);

    const Rng nrng = call.split(0);
    Index sel[kMaxStack];
    std::vector<Index> sel_heap;
    Index* idx = sel;
    if (k + 1 > kMaxStack) {
      sel_heap.resize(static_cast<std::size_t>(k + 1));
      idx = sel_heap.data();
    }
    for (Index i = 0; i < nr; ++i) {
      const Index t = row0 + i;
      T* zt = &cache.logits(t, 0);
      for (Index j = 0; j < e; ++j)
        PEMOE_CHECK_AS(NumericError, std::isfinite(zt[j]), site(), ": router logit of token ", t, ", expert ",
                       j, " is ", zt[j], " (the router input or weights contain NaN or Inf)");
      T* pt = &cache.probs(t, 0);
      cache.lse(t) = softmax_row(zt, e, pt);
      auto g = gates_rows.row(i);
      g.setZero();
      switch (m_config.mode) {
        case GateMode::soft:
          topk_row(zt, e, 1, idx);
          for (Index j = 0; j < e; ++j) g(j) = pt[j];
          break;
        case GateMode::topk_mask:
          topk_row(zt, e, k, idx);
          for (Index j = 0; j < k; ++j) g(idx[j]) = pt[idx[j]];
          break;
        case GateMode::topk_renorm:
          topk_row(zt, e, k, idx);
          softmax_selected(zt, idx, k, g);
          break;
        case GateMode::noisy_topk: {
          T* zn = &cache.noise_logits(t, 0);
          T* h = &cache.noisy_logits(t, 0);
          for (Index j = 0; j < e; ++j) {
            if (cache.training) {
              PEMOE_CHECK_AS(NumericError, std::isfinite(zn[j]), site(), ": noise logit of token ", t,
                             " is not finite");
              const std::uint64_t c = static_cast<std::uint64_t>(2 * (t * e + j));
              const double u1 = 1.0 - nrng.uniform_at(c), u2 = nrng.uniform_at(c + 1);
              const T eps = T(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
              cache.noise(t, j) = eps;
              h[j] = zt[j] + eps * (softplus(zn[j]) + T(m_config.noise_epsilon));
            } else {
              h[j] = zt[j];
            }
          }
          const bool est = cache.load_prob.size() != 0;
          topk_row(h, e, est ? k + 1 : k, idx);
          softmax_selected(h, idx, k, g);
          if (est) {
            cache.threshold_idx(t, 0) = idx[k - 1];
            cache.threshold_idx(t, 1) = idx[k];
            for (Index j = 0; j < e; ++j) {
              const T sd = softplus(zn[j]) + T(m_config.noise_epsilon);
              const T thr = is_selected(idx, k, j) ? h[idx[k]] : h[idx[k - 1]];
              cache.load_prob(t, j) = normal_cdf((zt[j] - thr) / sd);
            }
          }
          break;
        }
        case GateMode::switch_top1:
          topk_row(zt, e, 1, idx);
          g(idx[0]) = m_config.straight_through ? T(1) : pt[idx[0]];
          break;
      }
      for (Index j = 0; j < k; ++j) cache.topk_idx(t, j) = idx[j];
      cache.gates.row(t) = g;
    }
  }

  /// Computes the aux-loss values and batch statistics of the call, records them, advances the call counter.
  void finish_forward(Cache& cache) {
    const Index n = cache.n, e = m_config.n_experts;
    AuxLossValues& v = cache.aux;
    v = AuxLossValues{};
    const bool masked = cache.valid.size() != 0;
    const Index nv = cache.n_valid;
    v.balance = double(switch_balance_loss<T>(cache.probs, cache.topk_idx, m_config.aux.balance_norm,
                                              &cache.balance_grad, masked ? &cache.valid : nullptr));
    if (nv == 0)
      v.z = 0.0;
    else if (masked)
      v.z = double(cache.lse.array().square().matrix().dot(cache.valid) / T(nv));
    else
      v.z = double(cache.lse.array().square().sum() / T(nv));
    const RowVector<T> importance = masked ? RowVector<T>(cache.valid.transpose() * cache.gates)
                                           : RowVector<T>(cache.gates.colwise().sum());
    v.importance = double(cv_squared<T>(importance, &cache.importance_grad));
    RowVector<T> load = RowVector<T>::Zero(e);
    if (cache.load_prob.size() != 0) {
      load = masked ? RowVector<T>(cache.valid.transpose() * cache.load_prob)
                    : RowVector<T>(cache.load_prob.colwise().sum());
    } else {  // tokens whose selected set holds expert j (not gates > 0: a selected gate may underflow to 0)
      for (Index t = 0; t < n; ++t)
        if (!masked || cache.valid(t) != T(0))
          for (Index j = 0; j < cache.topk_idx.cols(); ++j) load(cache.topk_idx(t, j)) += T(1);
    }
    v.load = double(cv_squared<T>(load, &cache.load_grad));
    if (cache.load_prob.size() == 0) cache.load_grad.setZero();  // a count has no gradient
    const auto& a = m_config.aux;
    v.grouped = grouped();
    if (v.grouped) {
      std::vector<double> counts(static_cast<std::size_t>(e), 0.0), sums(static_cast<std::size_t>(e));
      for (Index t = 0; t < n; ++t)
        if (!masked || cache.valid(t) != T(0))
          for (Index j = 0; j < cache.topk_idx.cols(); ++j)
            counts[static_cast<std::size_t>(cache.topk_idx(t, j))] += 1;
      for (Index j = 0; j < e; ++j)
        sums[static_cast<std::size_t>(j)] =
            double(masked ? cache.probs.col(j).dot(cache.valid) : cache.probs.col(j).sum());
      m_collector->add_balance_stats(m_config.balance_group, counts, sums, double(nv), cache.topk_idx.cols(),
                                     a.balance_norm, a.balance_coef);
    }
    v.weighted = (v.grouped ? 0.0 : a.balance_coef * v.balance) + a.z_coef * v.z +
                 a.importance_coef * v.importance + a.load_coef * v.load;
    if (m_collector) m_collector->record(m_name, v);
    ++m_calls;
  }

  /**
   * The coefficient-weighted aux loss of the call, exactly what this router's backward differentiates.
   * Without a collector: Σ coef·value of this call. With one: this router's share of
   * `AuxLossCollector::total()` (its own terms times the layer weight, plus 1/R of its balance group's pooled
   * loss for the R routers of the group), so that once every forward of the step has run, the routers'
   * `aux_loss` values add up to `total()`.
   */
  double aux_loss(const Cache& cache) const {
    double own = cache.aux.weighted;
    if (cache.aux.grouped) {
      const auto& g = m_collector->groups().at(m_config.balance_group);
      own += g.coef * m_collector->group_balance(m_config.balance_group) / double(g.routers);
    }
    return own * layer_weight();
  }

  /// Marks which tokens count in the aux-loss statistics (1) and which are padding (0), for the following
  /// forward calls; a call of N tokens may have N·H rows (per-head routing), each head inheriting its
  /// token's flag. An empty mask counts every token (the default).
  void set_token_mask(std::vector<std::uint8_t> mask) { m_mask = std::move(mask); }
  /// Counts every token again.
  void clear_token_mask() { m_mask.clear(); }
  const std::vector<std::uint8_t>& token_mask() const { return m_mask; }

  /// Backward of a whole call: dL/du written (or added with `InputGrad::add`).
  /// u: (N, d_in), dgates: (N, E) -> du: (N, d_in)
  void backward(ConstMatrixRef<T> u, const Cache& cache, ConstMatrixRef<T> dgates,
                GradOut<T> du = std::nullopt, InputGrad mode = InputGrad::write) {
    PEMOE_CHECK_SHAPE(u.rows() == cache.n, site(), ": backward got ", u.rows(), " rows, forward had ",
                      cache.n);
    backward_rows(u, 0, cache, dgates, du, mode);
  }

  /// Per-thread destination of the router's parameter gradients (see `backward_rows`); `add_grads` reduces
  /// it.
  struct Grads {
    Matrix<T> weight;        ///< (E, d_in)
    Matrix<T> noise_weight;  ///< (E, d_in), noisy_topk only
    Matrix<T> bias;          ///< (1, E), with a bias only
  };
  /// Zeroed gradient buffers shaped like this router's parameters.
  Grads make_grads() const {
    Grads g;
    g.weight.setZero(m_config.n_experts, m_config.d_in);
    if (m_config.mode == GateMode::noisy_topk) g.noise_weight.setZero(m_config.n_experts, m_config.d_in);
    if (m_config.bias) g.bias.setZero(1, m_config.n_experts);
    return g;
  }
  /// Adds buffered gradients to the store (trainable parameters only).
  void add_grads(const Grads& g) {
    if (m_store->trainable(m_w)) m_store->grad_matrix(m_w) += g.weight;
    if (g.noise_weight.size() && m_store->trainable(m_wn)) m_store->grad_matrix(m_wn) += g.noise_weight;
    if (g.bias.size() && m_store->trainable(m_b)) m_store->grad_matrix(m_b) += g.bias;
  }

  /// Backward of rows [row0, row0 + n): accumulates dW_g (dW_noise, db) into the store, or into `grads` when
  /// given (so threads working on disjoint rows never share a destination), and writes/adds du_rows.
  void backward_rows(ConstMatrixRef<T> u_rows, Index row0, const Cache& cache, ConstMatrixRef<T> dgates_rows,
                     GradOut<T> du_rows = std::nullopt, InputGrad mode = InputGrad::write,
                     Grads* grads = nullptr) {
    const Index nr = u_rows.rows(), e = m_config.n_experts;
    const bool accumulate = mode == InputGrad::add;
    check_shape(site(), "u", u_rows, -1, m_config.d_in);
    check_shape(site(), "dgates", dgates_rows, nr, e);
    PEMOE_CHECK_SHAPE(row0 >= 0 && row0 + nr <= cache.n && cache.logits.rows() == cache.n, site(),
                      ": backward rows [", row0, ", ", row0 + nr, ") but the cache holds ", cache.n,
                      " tokens (did forward run on this input?)");
    Matrix<T> dz(nr, e), dzn;
    const bool noisy = m_config.mode == GateMode::noisy_topk;
    if (noisy) dzn.setZero(nr, e);
    logits_grad(cache, row0, dgates_rows, dz, noisy ? &dzn : nullptr);

    const bool jit = cache.jitter.size() != 0;
    auto uin = [&]() -> ConstMatrixRef<T> {
      return jit ? ConstMatrixRef<T>(cache.u_jittered.middleRows(row0, nr)) : u_rows;
    };
    if (m_store->trainable(m_w))
      gemm<T>(Op::T, Op::N, T(1), dz, uin(), T(1),
              grads ? MatrixRef<T>(grads->weight) : MatrixRef<T>(m_store->grad_matrix(m_w)));
    if (m_config.bias && m_store->trainable(m_b)) {
      if (grads)
        grads->bias += dz.colwise().sum();
      else
        m_store->grad_matrix(m_b) += dz.colwise().sum();
    }
    if (noisy && m_store->trainable(m_wn))
      gemm<T>(Op::T, Op::N, T(1), dzn, uin(), T(1),
              grads ? MatrixRef<T>(grads->noise_weight) : MatrixRef<T>(m_store->grad_matrix(m_wn)));
    if (!du_rows) return;
    check_shape(site(), "du", *du_rows, nr, m_config.d_in);
    if (!jit) {
      gemm<T>(Op::N, Op::N, T(1), dz, weight(), accumulate ? T(1) : T(0), *du_rows);
      if (noisy) gemm<T>(Op::N, Op::N, T(1), dzn, noise_weight(), T(1), *du_rows);
    } else {
      Matrix<T> duj(nr, m_config.d_in);
      gemm<T>(Op::N, Op::N, T(1), dz, weight(), T(0), duj);
      if (noisy) gemm<T>(Op::N, Op::N, T(1), dzn, noise_weight(), T(1), duj);
      if (accumulate)
        *du_rows += duj.cwiseProduct(cache.jitter.middleRows(row0, nr));
      else
        *du_rows = duj.cwiseProduct(cache.jitter.middleRows(row0, nr));
    }
  }

  /// dL/dz (and dL/dz_noise) of rows [row0, row0 + n) from dL/dgates plus the weighted aux-loss gradients.
  void logits_grad(const Cache& cache, Index row0, ConstMatrixRef<T> dgates_rows, MatrixRef<T> dz,
                   Matrix<T>* dzn) const {
    const Index nr = dgates_rows.rows(), e = m_config.n_experts, k = m_config.selected();
    const T lw = T(layer_weight());
    const auto& a = m_config.aux;
    const T cb = T(a.balance_coef) * lw, cz = T(a.z_coef) * lw, ci = T(a.importance_coef) * lw,
            cl = T(a.load_coef) * lw;
    const bool est = cache.load_prob.size() != 0 && cl != T(0);
    RowVector<T> balance_grad = cache.balance_grad;  // per router, or pooled over the balance group
    if (cb != T(0) && grouped()) {
      const auto g = m_collector->group_balance_grad(m_config.balance_group);
      for (Index j = 0; j < e; ++j) balance_grad(j) = T(g[static_cast<std::size_t>(j)]);
    }
    const bool noise_on = cache.noise.size() != 0;
    RowVector<T> dg(e), dp(e), dh(e);
    for (Index i = 0; i < nr; ++i) {
      const Index t = row0 + i;
      const auto p = cache.probs.row(t);
      const auto g = cache.gates.row(t);
      const Index* idx = &cache.topk_idx(t, 0);
      const bool counts = cache.valid.size() == 0 || cache.valid(t) != T(0);  // padding: no aux gradient
      dg = dgates_rows.row(i);
      if (ci != T(0) && counts) dg += ci * cache.importance_grad;  // importance_i = Σ_x g(x)_i
      dp.setZero();
      auto dzt = dz.row(i);
      dzt.setZero();
      switch (m_config.mode) {
        case GateMode::soft:
          dp = dg;
          break;
        case GateMode::topk_mask:
          for (Index j = 0; j < k; ++j) dp(idx[j]) = dg(idx[j]);
          break;
        case GateMode::switch_top1:
          dp(idx[0]) = m_config.straight_through ? dg(idx[0]) / p(idx[0]) : dg(idx[0]);
          break;
        case GateMode::topk_renorm:
          renorm_backward(g, dg, idx, k, dzt);
          break;
        case GateMode::noisy_topk: {
          dh.setZero();
          renorm_backward(g, dg, idx, k, dh);
          if (est && counts) {
            const T* zt = &cache.logits(t, 0);
            const T* zn = &cache.noise_logits(t, 0);
            const T* h = &cache.noisy_logits(t, 0);
            for (Index j = 0; j < e; ++j) {
              const T sd = softplus(zn[j]) + T(m_config.noise_epsilon);
              const Index ti = is_selected(idx, k, j) ? cache.threshold_idx(t, 1) : cache.threshold_idx(t, 0);
              const T aa = (zt[j] - h[ti]) / sd;
              const T c = cl * cache.load_grad(j) * normal_pdf(aa) / sd;  // dL/d(z_j) through P(x, j)
              dzt(j) += c;
              dh(ti) -= c;
              (*dzn)(i, j) -= c * aa * sigmoid(zn[j]);  // through the std of expert j
            }
          }
          dzt += dh;
          if (noise_on)
            for (Index j = 0; j < e; ++j)
              (*dzn)(i, j) += dh(j) * cache.noise(t, j) * sigmoid(cache.noise_logits(t, j));
          break;
        }
      }
      if (cb != T(0) && counts) dp += cb * balance_grad;
      const T pdp = p.dot(dp);
      dzt.array() += p.array() * (dp.array() - pdp);
      if (cz != T(0) && counts) dzt += (cz * T(2) * cache.lse(t) / T(cache.n_valid)) * p;
    }
  }

  void set_training(bool on) { m_training = on; }
  bool training() const { return m_training; }
  /// Routers with a collector record their aux values there and scale their gradients by its layer weight.
  void set_collector(AuxLossCollector* collector) { m_collector = collector; }
  AuxLossCollector* collector() const { return m_collector; }
  double layer_weight() const { return m_collector ? m_collector->layer_weight() : 1.0; }
  std::uint64_t call_counter() const { return m_calls; }
  void set_call_counter(std::uint64_t c) { m_calls = c; }

  MatrixMap<T> weight() const { return m_store->matrix(m_w); }         ///< (E, d_in)
  MatrixMap<T> noise_weight() const { return m_store->matrix(m_wn); }  ///< (E, d_in), noisy_topk only
  ParamId weight_id() const { return m_w; }
  ParamId noise_weight_id() const { return m_wn; }
  ParamId bias_id() const { return m_b; }
  const RouterConfig& config() const { return m_config; }
  const std::string& name() const { return m_name; }

 private:
  static constexpr Index kMaxStack = 64;

  std::string site() const { return "Router '" + m_name + "'"; }
  bool jitter_active() const { return m_training && m_config.jitter > 0.0; }
  bool grouped() const { return m_collector != nullptr && !m_config.balance_group.empty(); }
  bool load_estimator_active() const {
    return m_config.mode == GateMode::noisy_topk && m_training && m_config.top_k < m_config.n_experts;
  }
  static bool is_selected(const Index* idx, Index k, Index j) {
    for (Index q = 0; q < k; ++q)
      if (idx[q] == j) return true;
    return false;
  }
  // g_S = softmax(v_S), zeros elsewhere.
  template <class G>
  static void softmax_selected(const T* v, const Index* idx, Index k, G&& g) {
    const T m = v[idx[0]];  // the largest
    T s = T(0);
    for (Index j = 0; j < k; ++j) s += std::exp(v[idx[j]] - m);
    for (Index j = 0; j < k; ++j) g(idx[j]) = std::exp(v[idx[j]] - m) / s;
  }
  // d(softmax over S)/dv_S: dv_i = g_i (dg_i − Σ_S g_j dg_j) for i ∈ S.
  template <class G, class DG, class DV>
  static void renorm_backward(const G& g, const DG& dg, const Index* idx, Index k, DV&& dv) {
    T s = T(0);
    for (Index j = 0; j < k; ++j) s += g(idx[j]) * dg(idx[j]);
    for (Index j = 0; j < k; ++j) dv(idx[j]) += g(idx[j]) * (dg(idx[j]) - s);
  }
  void init_weight(T* w, RouterInit init, Rng r) const {
    const Index n = m_config.n_experts * m_config.d_in;
    if (init == RouterInit::normal)
      r.fill_normal(w, n, 0.0, m_config.init_std);
    else if (init == RouterInit::kaiming_uniform)
      r.fill_kaiming_uniform(w, n, m_config.d_in);
    else
      std::fill(w, w + n, T(0));
  }

  RouterConfig m_config;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
  ParamId m_w = 0, m_b = 0, m_wn = 0;
  Rng m_rng;
  std::uint64_t m_calls = 0;
  bool m_training = false;
  AuxLossCollector* m_collector = nullptr;
  std::vector<std::uint8_t> m_mask;
};

}  // namespace pemoe

/// @file trainer.hpp
/// @brief `Trainer`: the training loop shared by every model (GPT-2, T5, a single layer): gradient
/// accumulation, clipping, schedules, an update-mask hook (MPOE's gradient mask), periodic evaluation,
/// checkpoints with bit-identical resume, a metrics CSV (with per-expert router load) and a progress line.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/moe/router.hpp"
#include "pemoe/train/adafactor.hpp"
#include "pemoe/train/adamw.hpp"
#include "pemoe/train/checkpoint.hpp"
#include "pemoe/train/clip.hpp"
#include "pemoe/train/gradient_mask.hpp"
#include "pemoe/train/schedule.hpp"
#include "pemoe/train/sgd.hpp"

namespace pemoe {

/// What the micro-batch callback reports: the micro-batch's loss (for a mean loss: the mean over its
/// `tokens`) and how many tokens (or examples) it held, for tokens/s.
struct MicroBatchResult {
  double loss = 0.0;
  double tokens = 0.0;
};

/// What the update hook returns for one optimizer step: the per-parameter update flags (`store.size()`
/// entries, empty = update all) and the optimizers' `keep_moments_of_skipped` argument.
struct UpdateMask {
  std::vector<bool> update;
  bool keep_moments_of_skipped = true;
};

/// The per-expert load of one router (one layer): `load[e]` is the fraction of the selected
/// (token, slot) assignments of the last forward that went to expert e (sums to 1).
struct ExpertLoad {
  std::string layer;
  std::vector<double> load;
};

/**
 * @brief The per-expert load of a router's last forward: the fraction of the (token, slot) assignments in
 * `cache.topk_idx` (N, k) that chose each expert, padding tokens (`cache.valid` = 0) excluded. Returns E
 * zeros when no token counted. Cost O(N·k).
 */
template <class T>
std::vector<double> expert_load(const Router<T>& router, const typename Router<T>::Cache& cache) {
  const Index e = router.config().n_experts;
  std::vector<double> load(static_cast<std::size_t>(e), 0.0);
  const bool masked = cache.valid.size() != 0;
  double total = 0.0;
  for (Index t = 0; t < cache.topk_idx.rows(); ++t) {
    if (masked && cache.valid(t) == T(0)) continue;
    for (Index j = 0; j < cache.topk_idx.cols(); ++j) {
      const Index x = cache.topk_idx(t, j);
      PEMOE_CHECK_SHAPE(x >= 0 && x < e, "expert_load: router '", router.name(), "' selected expert ", x,
                        " of ", e, " (is the cache from another router?)");
      load[static_cast<std::size_t>(x)] += 1.0;
      total += 1.0;
    }
  }
  if (total > 0)
    for (double& v : load) v /= total;
  return load;
}

namespace detail {

template <class T>
const char* optimizer_name(const AdamW<T>&) {
  return "adamw";
}
template <class T>
const char* optimizer_name(const SGD<T>&) {
  return "sgd";
}
template <class T>
const char* optimizer_name(const Adafactor<T>&) {
  return "adafactor";
}

/// Whether `save_optimizer(c, opt, store, prefix)` exists (AdamW's form) rather than
/// `save_optimizer(c, opt, prefix)` (SGD's and Adafactor's).
template <class Opt, class T, class = void>
struct saves_with_store : std::false_type {};
template <class Opt, class T>
struct saves_with_store<Opt, T,
                        std::void_t<decltype(save_optimizer(
                            std::declval<Checkpoint&>(), std::declval<const Opt&>(),
                            std::declval<const ParamStore<T>&>(), std::declval<const std::string&>()))>>
    : std::true_type {};

}  // namespace detail

/**
 * @brief A non-owning handle to any optimizer with pemoe's step signature
 * `step(store, update, keep_moments_of_skipped, lr_mult)`, a `config().lr` and `save_optimizer` /
 * `load_optimizer` overloads (AdamW, SGD, Adafactor); the optimizer must outlive the handle.
 */
template <class T>
class OptimizerRef {
 public:
  /// Wraps `opt` (`AdamW<T>`, `SGD<T>`, `Adafactor<T>`, or an optimizer of your own, then named `name`).
  template <class Opt, class = std::enable_if_t<!std::is_same<std::decay_t<Opt>, OptimizerRef>::value>>
  OptimizerRef(Opt& opt)  // NOLINT: implicit, so that `Trainer(store, adamw, ...)` reads naturally
      : OptimizerRef(opt, detail::optimizer_name(opt)) {}
  /// Wraps `opt` under `name` (recorded in checkpoints; a resume with another optimizer is refused).
  template <class Opt>
  OptimizerRef(Opt& opt, std::string name) : m_name(std::move(name)) {
    Opt* o = &opt;
    m_step = [o](ParamStore<T>& s, const std::vector<bool>& u, bool keep, double mult) {
      o->step(s, u, keep, mult);
    };
    m_base_lr = [o] { return double(o->config().lr); };
    m_save = [o](Checkpoint& c, const ParamStore<T>& s, const std::string& prefix) {
      if constexpr (detail::saves_with_store<Opt, T>::value)
        save_optimizer(c, *o, s, prefix);
      else
        save_optimizer(c, *o, prefix);
    };
    m_load = [o](const Checkpoint& c, const ParamStore<T>& s, const std::string& prefix) {
      if constexpr (detail::saves_with_store<Opt, T>::value)
        load_optimizer(c, *o, s, prefix);
      else
        load_optimizer(c, *o, prefix);
    };
  }

  /// One update (see `AdamW::step`).
  void step(ParamStore<T>& store, const std::vector<bool>& update, bool keep_moments_of_skipped,
            double lr_mult) const {
    m_step(store, update, keep_moments_of_skipped, lr_mult);
  }
  /// The optimizer's base learning rate (before schedule and group scales).
  double base_lr() const { return m_base_lr(); }
  /// Puts the optimizer's state into `c` under `prefix` (`save_optimizer`).
  void save(Checkpoint& c, const ParamStore<T>& store, const std::string& prefix) const {
    m_save(c, store, prefix);
  }
  /// Restores the optimizer's state from `c` (`load_optimizer`).
  void load(const Checkpoint& c, const ParamStore<T>& store, const std::string& prefix) const {
    m_load(c, store, prefix);
  }
  /// "adamw", "sgd", "adafactor" or the name given (recorded in checkpoints).
  const std::string& name() const { return m_name; }

 private:
  std::string m_name;
  std::function<void(ParamStore<T>&, const std::vector<bool>&, bool, double)> m_step;
  std::function<double()> m_base_lr;
  std::function<void(Checkpoint&, const ParamStore<T>&, const std::string&)> m_save;
  std::function<void(const Checkpoint&, const ParamStore<T>&, const std::string&)> m_load;
};

/// How the trainer reports progress.
enum class ProgressMode {
  automatic,  ///< `terminal` when the stream is std::cout and stdout is a terminal, else `lines`
  terminal,   ///< one line rewritten in place with a carriage return after every step
  lines,      ///< a plain line every `print_every` steps (and after the last step), for pipes and logs
  off,        ///< nothing
};

/// The trainer's settings (every count is in optimizer steps unless stated otherwise).
struct TrainerOptions {
  long total_steps = 0;        ///< optimizer steps of the whole run (> 0); the schedule's horizon
  long grad_accum = 1;         ///< micro-batches per optimizer step (>= 1)
  double max_grad_norm = 0.0;  ///< `clip_grad_norm`'s max_norm over all trainable gradients; 0 = off
  long eval_every = 0;         ///< evaluate after every K-th step (needs the eval callback); 0 = never
  long checkpoint_every = 0;   ///< save `<checkpoint_dir>/checkpoint-<step>` after every K-th step; 0 = never
  std::string checkpoint_dir;  ///< where periodic checkpoints go (required when checkpoint_every > 0)
  long keep_checkpoints = 0;   ///< keep only the newest K periodic checkpoints; 0 = keep all
  bool save_frozen = false;    ///< also save frozen parameters (the backbone) in checkpoints
  std::string metrics_csv;     ///< metrics file (see `Trainer`); empty = none
  long log_every = 1;          ///< a metrics row (and `on_log`) every K steps, averaging the loss over them
  ProgressMode progress = ProgressMode::automatic;
  long print_every = 10;                  ///< `lines` mode: a line every K steps
  std::ostream* out = nullptr;            ///< progress stream; nullptr = std::cout
  std::vector<std::string> eval_metrics;  ///< eval keys besides "loss", written as `eval_<key>` columns
  std::function<double()> clock;          ///< seconds for tokens/s and ETA; empty = steady_clock

  /// Parses "auto", "terminal", "lines", "off"; `ConfigError` listing them otherwise.
  static ProgressMode parse_progress(const std::string& name) {
    if (name == "auto" || name == "automatic") return ProgressMode::automatic;
    if (name == "terminal") return ProgressMode::terminal;
    if (name == "lines") return ProgressMode::lines;
    if (name == "off") return ProgressMode::off;
    throw ConfigError("Trainer: unknown progress mode '" + name + "'; allowed: auto, terminal, lines, off");
  }
};

/// One logged row: the metrics of the steps since the previous row.
struct StepRecord {
  long step = 0;                        ///< optimizer steps done
  double loss = 0.0;                    ///< mean training loss of the row's steps
  double lr = 0.0;                      ///< base rate × schedule multiplier used by the last update
  double tokens_per_s = 0.0;            ///< tokens of the row's steps / their wall time
  double grad_norm = 0.0;               ///< global gradient norm of the last step, before clipping
  double tokens = 0.0;                  ///< tokens of the row's steps
  std::map<std::string, double> eval;   ///< the eval callback's result when it ran at this step
  std::vector<ExpertLoad> expert_load;  ///< per-layer expert load of the last step's last forward
};

/// The user's side of the loop. Only `micro_batch` is required.
struct TrainerCallbacks {
  /// Computes the loss of micro-batch `micro` (0 ≤ micro < grad_accum) of optimizer step `step` (0-based)
  /// and **adds** its gradients into the store (the layer contract's backward); the trainer zeroes the
  /// gradients before the first micro-batch. For a mean loss, pass the gradient of that mean.
  std::function<MicroBatchResult(long step, long micro)> micro_batch;
  /// Evaluates after step `step` (1-based count of steps done) and returns named metrics; "loss" is the
  /// `eval_loss` column, other keys must be listed in `TrainerOptions::eval_metrics`. Switching the model
  /// to inference mode and back is the callback's job.
  std::function<std::map<std::string, double>(long step)> eval;
  /// Called once per optimizer step after accumulation and clipping, before the update: returns the update
  /// mask (MPOE's `GradientMask`, see `gradient_mask_hook`).
  std::function<UpdateMask(long step)> update_mask;
  /// Returns the per-layer expert load of the last forward (`expert_load(router, cache)` per router);
  /// called before evaluation on the steps that are logged.
  std::function<std::vector<ExpertLoad>()> expert_load;
  /// Adds state of your own to a checkpoint (rng call counters, a data cursor, a gradient mask's draws).
  std::function<void(Checkpoint&)> save_state;
  /// Restores what `save_state` wrote.
  std::function<void(const Checkpoint&)> load_state;
  /// Called with every logged row.
  std::function<void(const StepRecord&)> on_log;
};

/// An update hook drawing MPOE's gradient mask once per step (`GradientMask::next`); `mask` and `store` must
/// outlive the trainer. To resume bit-identically, save `mask.steps()` in `save_state` and replay that many
/// `draw()`s on a fresh mask in `load_state`.
template <class T>
std::function<UpdateMask(long)> gradient_mask_hook(GradientMask& mask, const ParamStore<T>& store) {
  return [&mask, &store](long) { return UpdateMask{mask.next(store), mask.keep_moments_of_skipped()}; };
}

/// What `Trainer::train` did.
struct TrainSummary {
  long step = 0;                                                     ///< optimizer steps done (all runs)
  long steps_run = 0;                                                ///< steps of this call
  double last_loss = std::numeric_limits<double>::quiet_NaN();       ///< loss of the last step
  double last_eval_loss = std::numeric_limits<double>::quiet_NaN();  ///< last eval "loss", NaN if none
  double tokens = 0.0;                                               ///< tokens of this call
  double seconds = 0.0;                                              ///< wall time of this call
};

/**
 * @brief The training loop, independent of the model: the model enters through callbacks.
 *
 * One optimizer step s (s = steps done so far, from 0):
 * 1. zero the gradients; call `micro_batch(s, i)` for i = 0 … A−1 (A = `grad_accum`), each adding the
 *    gradient of its own loss L_i into the store;
 * 2. scale the summed gradients by 1/A, so the step uses g = (1/A)·Σᵢ ∇L_i and the step loss is
 *    (1/A)·Σᵢ L_i. For a mean loss over micro-batches of equal size this **is** the gradient and loss of one
 *    batch of A times the size (the batch mean equals the mean of the micro-batch means); with unequal
 *    sizes it is the mean of the micro-batch means (Hugging Face's Trainer does the same);
 * 3. g_norm = ‖g‖₂ over all trainable gradients; with `max_grad_norm` > 0, `clip_grad_norm` (PyTorch's
 *    `clip_grad_norm_`; a NaN/Inf norm throws `NumericError`);
 * 4. `update_mask(s)` if given (else all parameters update);
 * 5. the optimizer's update with lr_mult = schedule(s) (Hugging Face's `LambdaLR` convention), so the rate
 *    of update s+1 is lr·λ(s); then s ← s+1;
 * 6. every `eval_every` steps `eval(s)`; every `log_every` steps, on evaluated steps and after the last step
 *    of `train()`: `expert_load()` (before the eval's forwards), then a metrics row and `on_log`;
 *    every `checkpoint_every` steps: a checkpoint `<checkpoint_dir>/checkpoint-<s>`.
 *
 * **Checkpoints** (`save_checkpoint` / `resume`, using `Checkpoint`): the trainable parameters (all of them
 * with `save_frozen`), the optimizer state under `opt.`, the step and token count, and whatever
 * `save_state` adds. Everything random in pemoe is a pure function of a seed and call counters, so
 * N steps + save + (fresh process) resume + N steps gives the same bits as 2N steps, provided the callbacks
 * are pure functions of (step, micro) plus the state `save_state` saves (e.g. the model's `rng_counters()`).
 *
 * **Metrics CSV** (`metrics_csv`): columns `step,loss,lr,tokens_per_s,grad_norm,eval_loss`, then
 * `eval_<key>` for `eval_metrics`, then `load.<layer>.<e>` for every layer and expert of the first row's
 * `expert_load()`; `eval_loss` and `eval_*` are empty on rows without evaluation. A fresh run (no resume)
 * writes the header into a new or truncated file; a resumed run keeps the file, drops its rows after the
 * resumed step (written after the checkpoint by the interrupted run) and appends without a second header
 * (`ConfigError` if the file's header differs).
 *
 * **Progress**: on a terminal one line `step 12/300  loss 2.3456  lr 3.0e-04  1234 tok/s  ETA 00:01:23`
 * rewritten in place (carriage return); in a pipe (or `ProgressMode::lines`) the same as plain lines every
 * `print_every` steps and after the last; evaluations print `eval step 12/300  loss 2.1000 ...` lines.
 */
template <class T>
class Trainer {
 public:
  /// A trainer over `store`'s trainable parameters; `store` and the optimizer must outlive it.
  /// `ConfigError` naming the option on an invalid setting.
  Trainer(ParamStore<T>& store, OptimizerRef<T> optimizer, Schedule schedule, TrainerOptions options,
          TrainerCallbacks callbacks)
      : m_store(store),
        m_opt(std::move(optimizer)),
        m_schedule(std::move(schedule)),
        m_o(std::move(options)),
        m_cb(std::move(callbacks)) {
    PEMOE_CHECK_CONFIG(m_o.total_steps > 0, "Trainer: total_steps must be > 0, got ", m_o.total_steps);
    PEMOE_CHECK_CONFIG(m_o.grad_accum >= 1, "Trainer: grad_accum must be >= 1, got ", m_o.grad_accum);
    PEMOE_CHECK_CONFIG(std::isfinite(m_o.max_grad_norm) && m_o.max_grad_norm >= 0,
                       "Trainer: max_grad_norm must be >= 0 (0 = no clipping), got ", m_o.max_grad_norm);
    PEMOE_CHECK_CONFIG(m_o.eval_every >= 0, "Trainer: eval_every must be >= 0 (0 = never), got ",
                       m_o.eval_every);
    PEMOE_CHECK_CONFIG(m_o.eval_every == 0 || m_cb.eval, "Trainer: eval_every = ", m_o.eval_every,
                       " needs an eval callback");
    PEMOE_CHECK_CONFIG(m_o.checkpoint_every >= 0, "Trainer: checkpoint_every must be >= 0 (0 = never), got ",
                       m_o.checkpoint_every);
    PEMOE_CHECK_CONFIG(m_o.checkpoint_every == 0 || !m_o.checkpoint_dir.empty(),
                       "Trainer: checkpoint_every = ", m_o.checkpoint_every, " needs a checkpoint_dir");
    PEMOE_CHECK_CONFIG(m_o.keep_checkpoints >= 0, "Trainer: keep_checkpoints must be >= 0 (0 = all), got ",
                       m_o.keep_checkpoints);
    PEMOE_CHECK_CONFIG(m_o.log_every >= 1, "Trainer: log_every must be >= 1, got ", m_o.log_every);
    PEMOE_CHECK_CONFIG(m_o.print_every >= 1, "Trainer: print_every must be >= 1, got ", m_o.print_every);
    PEMOE_CHECK_CONFIG(static_cast<bool>(m_cb.micro_batch), "Trainer: the micro_batch callback is required");
    for (const auto& k : m_o.eval_metrics)
      PEMOE_CHECK_CONFIG(!k.empty() && k != "loss" && k.find_first_of(",\n\"") == std::string::npos,
                         "Trainer: eval_metrics entry '", k,
                         "' is invalid (\"loss\" is implicit; no empty names, commas, quotes or newlines)");
    if (!m_o.clock) {
      m_o.clock = [] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
      };
    }
    m_out = m_o.out ? m_o.out : &std::cout;
    m_mode = m_o.progress;
    if (m_mode == ProgressMode::automatic)
      m_mode =
          (m_out == &std::cout && ::isatty(STDOUT_FILENO)) ? ProgressMode::terminal : ProgressMode::lines;
  }

  /**
   * @brief Trains from the current step up to step `until` (0 or more than `total_steps`: to
   * `total_steps`). Call again to continue; after `resume` it continues from the checkpoint's step.
   */
  TrainSummary train(long until = 0) {
    const long end = (until <= 0 || until > m_o.total_steps) ? m_o.total_steps : until;
    TrainSummary sum;
    const double t0 = m_o.clock();
    const long first = m_step;
    m_row_t0 = m_print_t0 = t0;
    m_row = Window{};
    m_print = Window{};
    while (m_step < end) {
      const long s = m_step;
      m_store.zero_grad();
      double loss = 0.0, tokens = 0.0;
      for (long i = 0; i < m_o.grad_accum; ++i) {
        const MicroBatchResult r = m_cb.micro_batch(s, i);
        loss += r.loss;
        tokens += r.tokens;
      }
      loss /= double(m_o.grad_accum);
      if (m_o.grad_accum > 1) {
        const double a = double(m_o.grad_accum);
        for (T& g : m_store.grads()) g = static_cast<T>(double(g) / a);
      }
      double norm;
      if (m_o.max_grad_norm > 0) {
        norm = clip_grad_norm(m_store, m_o.max_grad_norm);
      } else {
        double sq = 0.0;
        for (const T g : m_store.grads()) sq += double(g) * double(g);
        norm = std::sqrt(sq);
      }
      UpdateMask mask;
      if (m_cb.update_mask) mask = m_cb.update_mask(s);
      PEMOE_CHECK_CONFIG(mask.update.empty() || mask.update.size() == m_store.size(),
                         "Trainer: the update_mask callback returned ", mask.update.size(),
                         " flags, the store has ", m_store.size(), " parameters");
      const double mult = m_schedule(s);
      m_opt.step(m_store, mask.update, mask.keep_moments_of_skipped, mult);
      m_step = s + 1;
      m_tokens_seen += tokens;
      sum.tokens += tokens;
      sum.last_loss = loss;
      const double lr = m_opt.base_lr() * mult;
      m_row.add(loss, tokens);
      m_print.add(loss, tokens);

      const bool eval_now = m_o.eval_every > 0 && m_step % m_o.eval_every == 0;
      const bool log_row = m_step % m_o.log_every == 0 || m_step == end || eval_now;
      StepRecord rec;
      if (log_row && m_cb.expert_load) rec.expert_load = m_cb.expert_load();  // before eval's forwards
      if (eval_now) {
        rec.eval = m_cb.eval(m_step);
        for (const auto& kv : rec.eval)
          PEMOE_CHECK_CONFIG(kv.first == "loss" || std::find(m_o.eval_metrics.begin(), m_o.eval_metrics.end(),
                                                             kv.first) != m_o.eval_metrics.end(),
                             "Trainer: the eval callback returned metric '", kv.first,
                             "', which TrainerOptions::eval_metrics does not list (allowed: loss",
                             join_prefixed(m_o.eval_metrics, ", "), ")");
        const auto it = rec.eval.find("loss");
        if (it != rec.eval.end()) sum.last_eval_loss = it->second;
      }
      const double now = m_o.clock();
      if (log_row) {
        rec.step = m_step;
        rec.lr = lr;
        rec.grad_norm = norm;
        rec.loss = m_row.mean_loss();
        rec.tokens = m_row.tokens;
        rec.tokens_per_s = now > m_row_t0 ? m_row.tokens / (now - m_row_t0) : 0.0;
        write_csv_row(rec);
        if (m_cb.on_log) m_cb.on_log(rec);
        m_history.push_back(std::move(rec));
        m_row = Window{};
        m_row_t0 = now;
      }
      print_progress(m_step, lr, now, t0, first, end, eval_now ? m_history.back().eval : kNoEval);
      if (m_o.checkpoint_every > 0 && m_step % m_o.checkpoint_every == 0) save_periodic();
    }
    if (m_mode == ProgressMode::terminal && m_line_len > 0) {
      *m_out << '\n' << std::flush;
      m_line_len = 0;
    }
    if (m_csv) m_csv->flush();
    sum.step = m_step;
    sum.steps_run = m_step - first;
    sum.seconds = m_o.clock() - t0;
    return sum;
  }

  /// Writes a checkpoint of the current state into `dir` (see the class comment).
  void save_checkpoint(const std::string& dir) const {
    Checkpoint c;
    for (const auto& e : m_store.entries())
      if (!e.released && (e.trainable || m_o.save_frozen))
        c.put("param." + e.name, e.shape, m_store.values().data() + e.offset);
    m_opt.save(c, m_store, "opt.");
    c.meta()["step"] = m_step;
    c.meta()["trainer"] = {{"optimizer", m_opt.name()},    {"total_steps", m_o.total_steps},
                           {"grad_accum", m_o.grad_accum}, {"tokens_seen", m_tokens_seen},
                           {"base_lr", m_opt.base_lr()},   {"max_grad_norm", m_o.max_grad_norm}};
    if (m_cb.save_state) m_cb.save_state(c);
    c.save(dir);
  }

  /**
   * @brief Restores the state saved by `save_checkpoint(dir)`: trainable parameters (`IoError` naming a
   * missing one), frozen ones when present, the optimizer state, step and token count, then `load_state`.
   * `ConfigError` when the checkpoint was written with another optimizer.
   */
  void resume(const std::string& dir) {
    const Checkpoint c = Checkpoint::load(dir);
    PEMOE_CHECK_AS(IoError, c.meta().contains("trainer") && c.meta().contains("step"), "Trainer: '", dir,
                   "/checkpoint.json' has no trainer record (was it written by Trainer::save_checkpoint?)");
    const std::string opt = c.meta()["trainer"].value("optimizer", std::string());
    PEMOE_CHECK_CONFIG(opt == m_opt.name(), "Trainer: checkpoint '", dir, "' was written with optimizer '",
                       opt, "', this trainer uses '", m_opt.name(), "'");
    for (const auto& e : m_store.entries()) {
      const std::string key = "param." + e.name;
      if (e.released || (!e.trainable && !c.contains(key))) continue;
      PEMOE_CHECK_AS(IoError, c.contains(key), "Trainer: checkpoint '", dir, "' has no value for parameter '",
                     e.name, "' (saved from another model or adapter, or with other trainable parameters?)");
      c.get(key, m_store.values().data() + e.offset, e.size);
    }
    m_opt.load(c, m_store, "opt.");
    m_step = c.meta()["step"].get<long>();
    m_tokens_seen = c.meta()["trainer"].value("tokens_seen", 0.0);
    if (m_cb.load_state) m_cb.load_state(c);
    m_resumed = true;
    m_resumed_step = m_step;
    m_csv.reset();
    m_csv_header.clear();
  }

  /// The newest complete periodic checkpoint under `root` (`<root>/checkpoint-<step>` holding
  /// checkpoint.json), or "" when there is none.
  static std::string latest_checkpoint(const std::string& root) {
    long best = -1;
    std::string path;
    for (const auto& [step, p] : list_checkpoints(root))
      if (step > best) {
        best = step;
        path = p;
      }
    return path;
  }
  /// `resume(latest_checkpoint(checkpoint_dir))` when there is one; returns whether it resumed.
  bool resume_latest() {
    if (m_o.checkpoint_dir.empty()) return false;
    const std::string p = latest_checkpoint(m_o.checkpoint_dir);
    if (p.empty()) return false;
    resume(p);
    return true;
  }

  /// Optimizer steps done.
  long step() const { return m_step; }
  /// Tokens seen over all runs (restored by `resume`).
  double tokens_seen() const { return m_tokens_seen; }
  /// The learning rate of update `step + 1`: base rate × schedule(step).
  double lr_at(long step) const { return m_opt.base_lr() * m_schedule(step); }
  /// The rows logged by this object (not those of a run before `resume`).
  const std::vector<StepRecord>& history() const { return m_history; }
  const TrainerOptions& options() const { return m_o; }
  /// The progress mode in effect (`automatic` resolved).
  ProgressMode progress_mode() const { return m_mode; }

 private:
  inline static const std::map<std::string, double> kNoEval{};

  struct Window {
    double loss = 0.0, tokens = 0.0;
    long steps = 0;
    void add(double l, double t) {
      loss += l;
      tokens += t;
      ++steps;
    }
    double mean_loss() const { return steps > 0 ? loss / double(steps) : 0.0; }
  };

  static std::string join_prefixed(const std::vector<std::string>& v, const char* sep) {
    std::string s;
    for (const auto& x : v) s += sep + x;
    return s;
  }

  static std::vector<std::pair<long, std::string>> list_checkpoints(const std::string& root) {
    std::vector<std::pair<long, std::string>> v;
    std::error_code ec;
    if (!std::filesystem::is_directory(root, ec)) return v;
    for (const auto& d : std::filesystem::directory_iterator(root, ec)) {
      const std::string name = d.path().filename().string();
      const std::string pre = "checkpoint-";
      if (name.compare(0, pre.size(), pre) != 0 || name.size() == pre.size()) continue;
      const std::string digits = name.substr(pre.size());
      if (digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 18) continue;
      if (!std::filesystem::exists(d.path() / "checkpoint.json", ec)) continue;  // incomplete save
      v.push_back({std::stol(digits), d.path().string()});
    }
    std::sort(v.begin(), v.end());
    return v;
  }

  void save_periodic() {
    save_checkpoint(m_o.checkpoint_dir + "/checkpoint-" + std::to_string(m_step));
    if (m_o.keep_checkpoints <= 0) return;
    auto all = list_checkpoints(m_o.checkpoint_dir);
    const long extra = long(all.size()) - m_o.keep_checkpoints;
    for (long i = 0; i < extra; ++i) {
      std::error_code ec;
      std::filesystem::remove_all(all[std::size_t(i)].second, ec);
    }
  }

  static std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
  }
  static std::string num(double v) { return fmt("%.9g", v); }

  std::string header_for(const StepRecord& r) const {
    std::string h = "step,loss,lr,tokens_per_s,grad_norm,eval_loss";
    for (const auto& k : m_o.eval_metrics) h += ",eval_" + k;
    for (const auto& l : r.expert_load)
      for (std::size_t e = 0; e < l.load.size(); ++e) h += ",load." + l.layer + "." + std::to_string(e);
    return h;
  }

  // Opens the metrics file on the first row of this object: fresh run -> new file with the header;
  // resumed run -> keep the header and the rows up to the resumed step, append after them.
  void open_csv(const std::string& header) {
    const std::string& path = m_o.metrics_csv;
    std::error_code ec;
    const bool exists = std::filesystem::exists(path, ec) && std::filesystem::file_size(path, ec) > 0;
    if (m_resumed && exists) {
      std::ifstream in(path);
      std::string line, kept, old_header;
      std::getline(in, old_header);
      PEMOE_CHECK_CONFIG(old_header == header, "Trainer: metrics file '", path, "' has the columns '",
                         old_header, "', this run writes '", header,
                         "' (another model, adapter or eval_metrics?)");
      kept = old_header + "\n";
      bool dropped = false;
      while (std::getline(in, line)) {
        if (line.empty()) continue;
        const long step = std::atol(line.substr(0, line.find(',')).c_str());
        if (step <= m_resumed_step)
          kept += line + "\n";
        else
          dropped = true;
      }
      in.close();
      if (dropped) detail::write_durably(path, kept.data(), kept.size());
      m_csv = std::make_unique<std::ofstream>(path, std::ios::app);
    } else {
      const auto parent = std::filesystem::path(path).parent_path();
      if (!parent.empty()) std::filesystem::create_directories(parent, ec);
      m_csv = std::make_unique<std::ofstream>(path, std::ios::trunc);
      if (*m_csv) *m_csv << header << '\n';
    }
    PEMOE_CHECK_AS(IoError, static_cast<bool>(*m_csv), "Trainer: cannot write the metrics file '", path, "'");
    m_csv_header = header;
  }

  void write_csv_row(const StepRecord& r) {
    if (m_o.metrics_csv.empty()) return;
    const std::string header = header_for(r);
    if (!m_csv) open_csv(header);
    PEMOE_CHECK_CONFIG(header == m_csv_header, "Trainer: step ", r.step,
                       " has other metrics columns than the first row of '", m_o.metrics_csv, "' ('", header,
                       "' vs '", m_csv_header, "'): expert_load must return the same layers and experts");
    std::string line = std::to_string(r.step) + "," + num(r.loss) + "," + num(r.lr) + "," +
                       num(r.tokens_per_s) + "," + num(r.grad_norm) + ",";
    auto it = r.eval.find("loss");
    if (it != r.eval.end()) line += num(it->second);
    for (const auto& k : m_o.eval_metrics) {
      line += ",";
      auto jt = r.eval.find(k);
      if (jt != r.eval.end()) line += num(jt->second);
    }
    for (const auto& l : r.expert_load)
      for (double v : l.load) line += "," + num(v);
    *m_csv << line << '\n';
    m_csv->flush();
    PEMOE_CHECK_AS(IoError, static_cast<bool>(*m_csv), "Trainer: could not write to the metrics file '",
                   m_o.metrics_csv, "' (disk full?)");
  }

  static std::string clock_string(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "--:--:--";
    const long s = long(seconds + 0.5);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%02ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
    return buf;
  }

  void print_progress(long step, double lr, double now, double t0, long first, long end,
                      const std::map<std::string, double>& ev) {
    if (m_mode == ProgressMode::off) return;
    const bool line_due = m_mode == ProgressMode::terminal || step % m_o.print_every == 0 || step == end;
    if (line_due) {
      const double dt = now - m_print_t0;
      const double tps = dt > 0 ? m_print.tokens / dt : 0.0;
      const double per_step = (now - t0) / double(step - first);
      const std::string line = "step " + std::to_string(step) + "/" + std::to_string(m_o.total_steps) +
                               "  loss " + fmt("%.4f", m_print.mean_loss()) + "  lr " + fmt("%.1e", lr) +
                               "  " + fmt("%.0f", tps) + " tok/s  ETA " +
                               clock_string(per_step * double(m_o.total_steps - step));
      if (m_mode == ProgressMode::terminal) {
        const std::size_t pad = m_line_len > line.size() ? m_line_len - line.size() : 0;
        *m_out << '\r' << line << std::string(pad, ' ') << std::flush;
        m_line_len = line.size();
      } else {
        *m_out << line << '\n' << std::flush;
      }
      m_print = Window{};
      m_print_t0 = now;
    }
    if (!ev.empty()) {
      std::string line = "eval step " + std::to_string(step) + "/" + std::to_string(m_o.total_steps);
      auto it = ev.find("loss");
      if (it != ev.end()) line += "  loss " + fmt("%.4f", it->second);
      for (const auto& kv : ev)
        if (kv.first != "loss") line += "  " + kv.first + " " + fmt("%.4g", kv.second);
      if (m_mode == ProgressMode::terminal && m_line_len > 0) *m_out << '\n';
      *m_out << line << '\n' << std::flush;
      m_line_len = 0;
    }
  }

  ParamStore<T>& m_store;
  OptimizerRef<T> m_opt;
  Schedule m_schedule;
  TrainerOptions m_o;
  TrainerCallbacks m_cb;
  std::ostream* m_out = nullptr;
  ProgressMode m_mode = ProgressMode::lines;
  long m_step = 0;
  double m_tokens_seen = 0.0;
  bool m_resumed = false;
  long m_resumed_step = 0;  ///< the step `resume` restored (the metrics file keeps its rows up to it)
  std::unique_ptr<std::ofstream> m_csv;
  std::string m_csv_header;
  std::vector<StepRecord> m_history;
  Window m_row, m_print;
  double m_row_t0 = 0.0, m_print_t0 = 0.0;
  std::size_t m_line_len = 0;
};

}  // namespace pemoe

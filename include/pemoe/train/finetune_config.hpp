/// @file finetune_config.hpp
/// @brief The JSON configuration of a fine-tuning run (`pemoe train CONFIG.json`, `pemoe eval`): the
/// struct, a strict parser (every unknown key and every bad value is a `ConfigError` naming the full key
/// path and the allowed keys or values), and `apply_adapter`, which puts the configured adapter on a GPT-2.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/core/detail/edit_distance.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/data/dynmix.hpp"
#include "pemoe/data/instruction.hpp"
#include "pemoe/data/tasks.hpp"
#include "pemoe/models/adapter_json.hpp"
#include "pemoe/models/gpt2.hpp"
#include "pemoe/models/target_modules.hpp"
#include "pemoe/moe/mola_allocation.hpp"
#include "pemoe/train/gradient_mask.hpp"
#include "pemoe/train/schedule.hpp"

namespace pemoe {

/// One source of examples of a fine-tuning run: a JSON-lines file of instruction examples, or families of
/// pemoe's offline task suite (`tasks.hpp`).
struct FinetuneSource {
  std::string path;                ///< a JSON-lines file (`read_jsonl`); empty for a task source
  std::vector<std::string> tasks;  ///< task-suite families (one dataset each); empty for a file source
  double weight = 1.0;             ///< training: mixing weight of the source (a task source shares it evenly)
  long per_task = 0;  ///< task source: examples per family (0 = 2000 for training, 50 for evaluation)
};

/// The data of a run: what it trains on, what it evaluates on, and how examples become tokens.
struct FinetuneData {
  std::vector<FinetuneSource> train;      ///< mixed by `MultiDatasetSampler` with the sources' weights
  std::vector<FinetuneSource> eval;       ///< held-out loss and exact match
  LossOn loss_on = LossOn::response;      ///< "response" (prompt masked) or "all"
  std::string template_name = "compact";  ///< "compact" (`PromptTemplate{}`) or "alpaca"
  long max_length = 0;       ///< longest example in tokens (longer ones are skipped); 0 = n_positions
  long max_new_tokens = 16;  ///< longest generated answer for exact match
  /// Dynamic data mixing of the training datasets (`data.mixing`, see `MixingConfig`); unset = the sources'
  /// fixed weights. Every task family and every file is one dataset of the mixer, named as in the log.
  std::optional<MixingConfig> mixing;
  /// The template `template_name` names.
  PromptTemplate prompt_template() const {
    return template_name == "alpaca" ? PromptTemplate::alpaca() : PromptTemplate{};
  }
};

/// The adapter of a run (`type` decides which other fields are read; see `parse_finetune_config`).
struct FinetuneAdapter {
  std::string type = "lora";  ///< full, lora, ia3, mov, molora, sparse, mpoe
  AdapterSpec spec;           ///< lora, ia3, mov, molora, sparse
  TargetModules targets;      ///< the sites the adapter goes on (not for full and mpoe)
  TargetModules feedforward = GPT2<float>::default_feedforward();  ///< ia3, mov: PEFT feedforward_modules
  std::string mola_shape;  ///< sparse: experts per quarter of the layers (e.g. "2468"); empty = uniform
  Index experts = 4;       ///< mov, molora, sparse, mpoe: E
  double mask_p = 0.5;     ///< mpoe: probability that a step freezes the shared central tensors
};

/// The optimizer of a run.
struct FinetuneOptimizer {
  std::string name = "adamw";  ///< adamw, sgd, adafactor
  double lr = 1e-3;            ///< peak learning rate
  double weight_decay = 0.0;   ///< decoupled (adamw, adafactor) or L2 (sgd)
  double beta1 = 0.9;          ///< adamw
  double beta2 = 0.999;        ///< adamw
  double eps = 1e-8;           ///< adamw
  double momentum = 0.0;       ///< sgd
};

/**
 * @brief A fine-tuning run as `pemoe train CONFIG.json` reads it (every key is optional unless marked):
 *
 * | key | meaning |
 * |---|---|
 * | model (required) | Hugging Face GPT-2 directory; its tokenizer is `pemoe_tokenizer.json` (bytes) or
 * `vocab.json` + `merges.txt` | | output_dir (required) | the trained adapter (PEFT layout), metrics.csv,
 * eval.json, checkpoints/ | | seed | adapter initialisation, task suite, sampler (default 7) | | adapter |
 * {type, and the keys of that type: r, alpha, dropout, use_rslora, experts, top_k, mola_shape,
 * target_modules, feedforward_modules, router, mask_p} | | data | {train: [sources], eval: [sources],
 * loss_on, template, max_length, max_new_tokens, mixing}; a source is {path, weight} or {tasks, weight,
 * per_task}; mixing is a `MixingConfig` (dynamic data mixing) | | optimizer | {name: adamw, sgd or adafactor,
 * lr, weight_decay, betas, eps, momentum} | | schedule | {kind: constant, constant_with_warmup, linear,
 * cosine, inverse_sqrt; warmup_steps} | | steps, batch_size, grad_accum, max_grad_norm, eval_every,
 * log_every, eval_batch_size | the loop | | checkpoint | {every, keep}: periodic checkpoints in
 * output_dir/checkpoints | | resume | continue from the newest checkpoint in output_dir/checkpoints if there
 * is one |
 *
 * The per-type adapter keys: lora {r, alpha, dropout, use_rslora, target_modules}; ia3 {target_modules,
 * feedforward_modules}; mov {experts, target_modules, feedforward_modules, router}; molora {r, alpha,
 * dropout, experts, target_modules, router}; sparse {r, alpha, dropout, experts, top_k, mola_shape,
 * target_modules, router}; mpoe {experts, mask_p}; full has none.
 */
struct FinetuneConfig {
  std::string model;            ///< the pretrained model directory
  std::string output_dir;       ///< where the run writes
  std::uint64_t seed = 7;       ///< the seed of everything random
  FinetuneAdapter adapter;      ///< the adapter (or full fine-tuning)
  FinetuneData data;            ///< the data
  FinetuneOptimizer optimizer;  ///< the optimizer
  ScheduleConfig schedule;      ///< kind and warm-up (total_steps = `steps`)
  long steps = 100;             ///< optimizer steps
  long batch_size = 16;         ///< examples per micro-batch
  long grad_accum = 1;          ///< micro-batches per step
  double max_grad_norm = 1.0;   ///< gradient clipping (0 = off)
  long eval_every = 0;          ///< held-out loss every K steps (0 = only at the end)
  long log_every = 10;          ///< a metrics row every K steps
  long eval_batch_size = 64;    ///< rows per evaluation forward
  long checkpoint_every = 0;    ///< a checkpoint every K steps (0 = none)
  long checkpoint_keep = 0;     ///< keep the newest K checkpoints (0 = all)
  bool resume = false;          ///< resume from the newest checkpoint
  /// `precision.frozen_weights`: "f32" (the frozen weights as loaded), "packed_f32" (packed once for oneDNN:
  /// faster products, a second copy) or "bf16" (a bf16-only frozen backbone, `GPT2::pack_frozen(bf16, true)`)
  std::string frozen_weights = "f32";
  bool autocast_bf16 = false;  ///< `precision.autocast` "bf16": the other large products in bf16 (autocast)
  nlohmann::json raw;          ///< the JSON it was read from
};

namespace detail {

inline std::string join_words(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

/// Reads one JSON object of the config, remembering its key path for messages.
class ConfigObject {
 public:
  ConfigObject(const nlohmann::json& j, std::string path) : m_j(j), m_path(std::move(path)) {
    PEMOE_CHECK_CONFIG(j.is_object(), "config: '", m_path.empty() ? "(top level)" : m_path,
                       "' must be a JSON object, got ", j.dump());
  }
  /// `ConfigError` for the first key not in `allowed` (full key path, allowed keys, a close one).
  void only(const std::vector<std::string>& allowed, const std::string& note = "") const {
    for (const auto& [k, v] : m_j.items()) {
      if (std::find(allowed.begin(), allowed.end(), k) != allowed.end()) continue;
      const std::string best = closest_word(k, allowed, std::max<std::size_t>(2, k.size() / 3) + 1);
      throw ConfigError("config: unknown key '" + key(k) + "'" +
                        (best.empty() ? "" : " (did you mean '" + key(best) + "'?)") + "; allowed keys" +
                        (m_path.empty() ? "" : " of '" + m_path + "'") + note + ": " + join_words(allowed));
    }
  }
  bool has(const std::string& k) const { return m_j.contains(k) && !m_j[k].is_null(); }
  std::string key(const std::string& k) const { return m_path.empty() ? k : m_path + "." + k; }
  const nlohmann::json& at(const std::string& k) const { return m_j[k]; }
  ConfigObject object(const std::string& k) const { return ConfigObject(m_j[k], key(k)); }

  std::string str(const std::string& k, const std::string& def, const std::vector<std::string>& choices = {},
                  bool required = false) const {
    if (!has(k)) {
      PEMOE_CHECK_CONFIG(!required, "config: missing key '", key(k), "'");
      return def;
    }
    PEMOE_CHECK_CONFIG(m_j[k].is_string(), "config: '", key(k), "' must be a string, got ", m_j[k].dump());
    const std::string v = m_j[k].get<std::string>();
    PEMOE_CHECK_CONFIG(choices.empty() || std::find(choices.begin(), choices.end(), v) != choices.end(),
                       "config: '", key(k), "' is \"", v, "\"; allowed values: ", join_words(choices));
    PEMOE_CHECK_CONFIG(!required || !v.empty(), "config: '", key(k), "' must not be empty");
    return v;
  }
  long integer(const std::string& k, long def, long lo, long hi = std::numeric_limits<long>::max()) const {
    if (!has(k)) return def;
    const auto& v = m_j[k];
    const bool is_int =
        v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
    const std::string range = hi == std::numeric_limits<long>::max()
                                  ? "an integer >= " + std::to_string(lo)
                                  : "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
    PEMOE_CHECK_CONFIG(is_int, "config: '", key(k), "' is ", v.dump(), "; allowed: ", range);
    const double x = v.get<double>();
    PEMOE_CHECK_CONFIG(x >= double(lo) && x <= double(hi), "config: '", key(k), "' is ", v.dump(),
                       "; allowed: ", range);
    return long(x);
  }
  double number(const std::string& k, double def, double lo, double hi, const std::string& range) const {
    if (!has(k)) return def;
    const auto& v = m_j[k];
    PEMOE_CHECK_CONFIG(v.is_number(), "config: '", key(k), "' is ", v.dump(), "; allowed: a number in ",
                       range);
    const double x = v.get<double>();
    PEMOE_CHECK_CONFIG(std::isfinite(x) && x >= lo && x <= hi, "config: '", key(k), "' is ", v.dump(),
                       "; allowed: a number in ", range);
    return x;
  }
  bool boolean(const std::string& k, bool def) const {
    if (!has(k)) return def;
    PEMOE_CHECK_CONFIG(m_j[k].is_boolean(), "config: '", key(k), "' is ", m_j[k].dump(),
                       "; allowed values: true, false");
    return m_j[k].get<bool>();
  }
  std::vector<std::string> strings(const std::string& k) const {
    const auto& v = m_j[k];
    PEMOE_CHECK_CONFIG(v.is_array() && !v.empty(), "config: '", key(k),
                       "' must be a non-empty list of strings, got ", v.dump());
    std::vector<std::string> out;
    for (const auto& s : v) {
      PEMOE_CHECK_CONFIG(s.is_string(), "config: '", key(k), "' must be a list of strings, got ", v.dump());
      out.push_back(s.get<std::string>());
    }
    return out;
  }

 private:
  const nlohmann::json& m_j;
  std::string m_path;
};

inline TargetModules parse_targets(const ConfigObject& o, const std::string& k, TargetModules def) {
  if (!o.has(k)) return def;
  TargetModules t;
  if (o.at(k).is_string()) {
    const std::string s = o.at(k).get<std::string>();
    PEMOE_CHECK_CONFIG(!s.empty(), "config: '", o.key(k), "' must not be empty");
    if (s == "all-linear")
      t.all_linear = true;
    else
      t.regex = s;  // PEFT: a string is a full-match regular expression
  } else {
    t.names = o.strings(k);
  }
  return t;
}

inline std::vector<FinetuneSource> parse_sources(const nlohmann::json& j, const std::string& path,
                                                 bool train) {
  PEMOE_CHECK_CONFIG(j.is_array() && !j.empty(), "config: '", path,
                     "' must be a non-empty list of sources ({\"path\": ...} or {\"tasks\": [...]}), got ",
                     j.dump());
  std::vector<FinetuneSource> out;
  const std::vector<std::string> known = task_names();
  for (std::size_t i = 0; i < j.size(); ++i) {
    const ConfigObject o(j[i], path + "[" + std::to_string(i) + "]");
    FinetuneSource s;
    PEMOE_CHECK_CONFIG(o.has("path") != o.has("tasks"), "config: '", o.key(""),
                       "' needs exactly one of 'path' (a JSON-lines file) and 'tasks' (task-suite families)");
    if (o.has("path")) {
      o.only(train ? std::vector<std::string>{"path", "weight"} : std::vector<std::string>{"path"});
      s.path = o.str("path", "", {}, true);
    } else {
      o.only(train ? std::vector<std::string>{"tasks", "weight", "per_task"}
                   : std::vector<std::string>{"tasks", "per_task"});
      s.tasks = o.strings("tasks");
      for (const auto& t : s.tasks)
        PEMOE_CHECK_CONFIG(std::find(known.begin(), known.end(), t) != known.end(), "config: '",
                           o.key("tasks"), "' names \"", t, "\"; allowed values: ", join_words(known));
      s.per_task = o.integer("per_task", train ? 2000 : 50, 1);
    }
    if (train) s.weight = o.number("weight", 1.0, 0.0, std::numeric_limits<double>::max(), "[0, inf)");
    out.push_back(std::move(s));
  }
  if (train) {
    double total = 0;
    for (const auto& s : out) total += s.weight;
    PEMOE_CHECK_CONFIG(total > 0, "config: the weights of '", path, "' are all 0");
  }
  return out;
}

inline void parse_adapter(const ConfigObject& o, FinetuneAdapter& a) {
  const std::vector<std::string> types = {"full", "lora", "ia3", "mov", "molora", "sparse", "mpoe"};
  a.type = o.str("type", "", types, true);
  TargetModules all;
  all.all_linear = true;
  std::vector<std::string> keys = {"type"};
  const std::string& t = a.type;
  if (t == "lora") keys.insert(keys.end(), {"r", "alpha", "dropout", "use_rslora", "target_modules"});
  if (t == "ia3") keys.insert(keys.end(), {"target_modules", "feedforward_modules"});
  if (t == "mov") keys.insert(keys.end(), {"experts", "target_modules", "feedforward_modules", "router"});
  if (t == "molora")
    keys.insert(keys.end(), {"r", "alpha", "dropout", "experts", "target_modules", "router"});
  if (t == "sparse")
    keys.insert(keys.end(),
                {"r", "alpha", "dropout", "experts", "top_k", "mola_shape", "target_modules", "router"});
  if (t == "mpoe") keys.insert(keys.end(), {"experts", "mask_p"});
  o.only(keys, " (type " + t + ")");
  a.experts = o.integer("experts", 4, 1, 1024);
  const Index r = o.integer("r", t == "lora" ? 8 : 4, 1, 65536);
  const double dropout = o.number("dropout", t == "sparse" ? 0.05 : 0.0, 0.0, 0.999, "[0, 1)");
  auto router = [&](RouterConfig& rc) {
    if (!o.has("router")) return;
    try {
      router_from_json(o.at("router"), rc);
    } catch (const ConfigError& e) {
      throw ConfigError("config: '" + o.key("router") + "': " + e.what());
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError("config: '" + o.key("router") + "': " + e.what());
    }
  };
  if (t == "lora") {
    a.spec.kind = AdapterKind::lora;
    a.spec.lora.r = r;
    a.spec.lora.alpha = o.number("alpha", 2.0 * double(r), 0.0, 1e9, "[0, 1e9]");
    a.spec.lora.dropout = dropout;
    a.spec.lora.use_rslora = o.boolean("use_rslora", false);
    a.targets = parse_targets(o, "target_modules", all);
  } else if (t == "ia3" || t == "mov") {
    TargetModules def;
    def.names = {"c_attn", "mlp.c_proj"};  // PEFT's IA3 default for GPT-2
    a.targets = parse_targets(o, "target_modules", def);
    a.feedforward = parse_targets(o, "feedforward_modules", a.feedforward);
    a.spec.kind = t == "ia3" ? AdapterKind::ia3 : AdapterKind::mov;
    a.spec.mov.n_experts = a.experts;
    router(a.spec.mov.router);
  } else if (t == "molora" || t == "sparse") {
    a.targets = parse_targets(o, "target_modules", all);
    if (t == "molora") {
      a.spec.kind = AdapterKind::molora;
      a.spec.experts = LoraExpertsConfig::for_ai(a.experts, r);
    } else {
      a.spec.kind = AdapterKind::sparse;
      a.spec.experts = LoraExpertsConfig::mola(a.experts, o.integer("top_k", 2, 1, a.experts), r);
      a.mola_shape = o.str("mola_shape", "");
      PEMOE_CHECK_CONFIG(
          a.mola_shape.empty() ||
              (a.mola_shape.size() == 4 && a.mola_shape.find_first_not_of("0123456789") == std::string::npos),
          "config: '", o.key("mola_shape"), "' is \"", a.mola_shape,
          "\"; allowed: four digits, experts per quarter of the layers (e.g. \"2468\")");
    }
    a.spec.experts.alpha = o.number("alpha", 16.0, 0.0, 1e9, "[0, 1e9]");
    a.spec.experts.dropout = dropout;
    router(a.spec.experts.router);
  } else if (t == "mpoe") {
    a.mask_p = o.number("mask_p", 0.5, 0.0, 1.0, "[0, 1]");
  }
}

}  // namespace detail

/**
 * @brief Parses and validates a fine-tuning config (see `FinetuneConfig` for the keys). Every unknown key
 * is a `ConfigError` naming its full path (`adapter.rnak`), the allowed keys and a close one if any; every
 * bad value names the key, the value and the allowed values or range. Nothing is silently ignored.
 */
inline FinetuneConfig parse_finetune_config(const nlohmann::json& j) {
  using detail::ConfigObject;
  FinetuneConfig c;
  c.raw = j;
  const ConfigObject top(j, "");
  top.only({"model", "output_dir", "seed", "adapter", "data", "optimizer", "schedule", "steps", "batch_size",
            "grad_accum", "max_grad_norm", "eval_every", "log_every", "eval_batch_size", "checkpoint",
            "resume", "precision"});
  c.model = top.str("model", "", {}, true);
  c.output_dir = top.str("output_dir", "", {}, true);
  c.seed = std::uint64_t(top.integer("seed", 7, 0));
  PEMOE_CHECK_CONFIG(top.has("adapter"),
                     "config: missing key 'adapter' ({\"type\": ...}; types: full, lora, "
                     "ia3, mov, molora, sparse, mpoe)");
  detail::parse_adapter(top.object("adapter"), c.adapter);

  PEMOE_CHECK_CONFIG(top.has("data"), "config: missing key 'data' ({\"train\": [...], \"eval\": [...]})");
  const ConfigObject d = top.object("data");
  d.only({"train", "eval", "loss_on", "template", "max_length", "max_new_tokens", "mixing"});
  PEMOE_CHECK_CONFIG(d.has("train"), "config: missing key 'data.train'");
  c.data.train = detail::parse_sources(d.at("train"), "data.train", true);
  if (d.has("eval")) c.data.eval = detail::parse_sources(d.at("eval"), "data.eval", false);
  c.data.loss_on =
      d.str("loss_on", "response", {"response", "all"}) == "all" ? LossOn::all : LossOn::response;
  c.data.template_name = d.str("template", "compact", {"compact", "alpaca"});
  c.data.max_length = d.integer("max_length", 0, 0);
  c.data.max_new_tokens = d.integer("max_new_tokens", 16, 1);
  if (d.has("mixing")) c.data.mixing = MixingConfig::from_json(d.at("mixing"), "data.mixing");

  if (top.has("optimizer")) {
    const ConfigObject o = top.object("optimizer");
    FinetuneOptimizer& op = c.optimizer;
    op.name = o.str("name", "adamw", {"adamw", "sgd", "adafactor"});
    if (op.name == "adamw") o.only({"name", "lr", "weight_decay", "betas", "eps"}, " (name adamw)");
    if (op.name == "sgd") o.only({"name", "lr", "weight_decay", "momentum"}, " (name sgd)");
    if (op.name == "adafactor") o.only({"name", "lr", "weight_decay"}, " (name adafactor)");
    op.lr = o.number("lr", 1e-3, 0.0, 10.0, "[0, 10]");
    op.weight_decay = o.number("weight_decay", 0.0, 0.0, 10.0, "[0, 10]");
    op.eps = o.number("eps", 1e-8, 0.0, 1.0, "[0, 1]");
    op.momentum = o.number("momentum", 0.0, 0.0, 0.999999, "[0, 1)");
    if (o.has("betas")) {
      const auto& b = o.at("betas");
      const bool ok = b.is_array() && b.size() == 2 && b[0].is_number() && b[1].is_number() &&
                      b[0].get<double>() >= 0 && b[0].get<double>() < 1 && b[1].get<double>() >= 0 &&
                      b[1].get<double>() < 1;
      PEMOE_CHECK_CONFIG(ok, "config: 'optimizer.betas' is ", b.dump(),
                         "; allowed: two numbers in [0, 1), e.g. [0.9, 0.999]");
      op.beta1 = b[0].get<double>();
      op.beta2 = b[1].get<double>();
    }
  }
  if (top.has("schedule")) {
    const ConfigObject s = top.object("schedule");
    s.only({"kind", "warmup_steps"});
    c.schedule.kind = ScheduleConfig::parse(
        s.str("kind", "constant", {"constant", "constant_with_warmup", "linear", "cosine", "inverse_sqrt"}));
    c.schedule.warmup_steps = s.integer("warmup_steps", 0, 0);
  }
  c.steps = top.integer("steps", 100, 1);
  c.schedule.total_steps = c.steps;
  c.batch_size = top.integer("batch_size", 16, 1);
  c.grad_accum = top.integer("grad_accum", 1, 1);
  c.max_grad_norm = top.number("max_grad_norm", 1.0, 0.0, 1e30, "[0, inf) (0 = no clipping)");
  c.eval_every = top.integer("eval_every", 0, 0);
  c.log_every = top.integer("log_every", 10, 1);
  c.eval_batch_size = top.integer("eval_batch_size", 64, 1);
  if (top.has("checkpoint")) {
    const ConfigObject k = top.object("checkpoint");
    k.only({"every", "keep"});
    c.checkpoint_every = k.integer("every", 0, 0);
    c.checkpoint_keep = k.integer("keep", 0, 0);
  }
  c.resume = top.boolean("resume", false);
  if (top.has("precision")) {
    const ConfigObject p = top.object("precision");
    p.only({"frozen_weights", "autocast"});
    c.frozen_weights = p.str("frozen_weights", "f32", {"f32", "packed_f32", "bf16"});
    c.autocast_bf16 = p.str("autocast", "off", {"off", "bf16"}) == "bf16";
  }
  PEMOE_CHECK_CONFIG(c.eval_every == 0 || !c.data.eval.empty(), "config: 'eval_every' is ", c.eval_every,
                     " but 'data.eval' is empty");
  return c;
}

/// Reads `path` (JSON) and `parse_finetune_config`s it; `IoError` when the file cannot be read or is not
/// JSON.
inline FinetuneConfig read_finetune_config(const std::string& path) {
  std::ifstream in(path);
  PEMOE_CHECK_AS(IoError, static_cast<bool>(in), "config: cannot open '", path, "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in, nullptr, true, true);  // comments allowed
  } catch (const nlohmann::json::exception& e) {
    throw IoError("config: '" + path + "' is not valid JSON: " + e.what());
  }
  return parse_finetune_config(j);
}

/**
 * @brief Puts `a`'s adapter on `model` (before `register_params`): `inject` for the PEFT-style kinds (with
 * MoLA's per-layer expert counts for a sparse `mola_shape`), `use_mpoe` on every MLP for mpoe, nothing for
 * full fine-tuning. Returns the experts per layer (empty unless `mola_shape` is set).
 */
template <class T>
std::vector<Index> apply_adapter(GPT2<T>& model, const FinetuneAdapter& a) {
  std::vector<Index> per_layer;
  if (a.type == "mpoe") {
    MpoeConfig mc;
    mc.d_model = model.config().n_embd;
    mc.d_ff = model.config().inner();
    mc.n_experts = a.experts;
    mc.activation = model.config().activation_function;
    mc.bias = true;  // GPT-2's MLP has biases
    model.use_mpoe(mc);
  } else if (a.type != "full") {
    if (!a.mola_shape.empty())
      for (const LayerExperts& l : mola_allocation(a.mola_shape, model.config().n_layer,
                                                   a.spec.experts.router.top_k, a.spec.experts.r))
        per_layer.push_back(l.n_experts);
    model.inject(a.spec, a.targets, per_layer, a.feedforward);
  }
  return per_layer;
}

}  // namespace pemoe

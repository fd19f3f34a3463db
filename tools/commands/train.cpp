// `pemoe train CONFIG.json` and `pemoe eval CONFIG.json`: fine-tune a GPT-2 with an adapter from a JSON
// config (pemoe/train/finetune_config.hpp) and evaluate it: held-out loss and exact match per task family.
// The pipeline is that of examples/finetune_compare.cpp for one method.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "../cli.hpp"
#include "pemoe/data/bpe_tokenizer.hpp"
#include "pemoe/data/byte_tokenizer.hpp"
#include "pemoe/data/instruction.hpp"
#include "pemoe/data/packing.hpp"
#include "pemoe/data/sampler.hpp"
#include "pemoe/data/tasks.hpp"
#include "pemoe/io/safetensors.hpp"
#include "pemoe/models/dynmix_round.hpp"
#include "pemoe/models/gpt2_hf.hpp"
#include "pemoe/models/lm_eval.hpp"
#include "pemoe/train/adafactor.hpp"
#include "pemoe/train/adamw.hpp"
#include "pemoe/train/finetune_config.hpp"
#include "pemoe/train/gradient_mask.hpp"
#include "pemoe/train/sgd.hpp"
#include "pemoe/train/trainer.hpp"
#include "plot/dynmix_report.hpp"
#include "plot/plot.hpp"
#include "plot/routing_report.hpp"

namespace pemoe::cli {
namespace {

namespace fs = std::filesystem;

struct TrainOptions {
  std::string config, adapter, out, plots, progress = "auto";
  long stop_after = 0;
  bool base = false;
};

// The config, with its mistakes as usage errors (exit 2): the config is the command line of a run.
FinetuneConfig load_config(const std::string& path) {
  try {
    return read_finetune_config(path);
  } catch (const ConfigError& e) {
    throw UsageError(std::string(e.what()) + " (in '" + path + "')");
  }
}

// ---- data ------------------------------------------------------------------------------------------------

// A held-out set: one task family (exact match checked by the suite) or the rest of a file (loss only).
struct EvalSet {
  std::string name;  // the family, or the file
  bool checkable = false;
  std::vector<InstructionExample> examples;
  std::vector<TokenizedExample> tokens;
};

struct Data {
  std::vector<std::string> train_names;  // one per dataset of the sampler
  std::vector<std::vector<TokenizedExample>> train;
  std::vector<double> weights;
  // Per training dataset, the dev examples the mixer's probes read (data.mixing): a family's held-out
  // examples after those exact match reads (`mixing_probe_examples`), or the first examples of a file.
  std::vector<std::vector<TokenizedExample>> probe;
  std::vector<EvalSet> eval;
  long skipped = 0;  // examples longer than max_length
};

template <class Tok>
Data load_data(const FinetuneConfig& c, const GPT2Config& g, const Tok& tok, std::int64_t eos,
               bool with_train) {
  const PromptTemplate tmpl = c.data.prompt_template();
  const long max_len =
      c.data.max_length > 0 ? std::min<long>(c.data.max_length, g.n_positions) : g.n_positions;
  Data d;
  auto tokenize = [&](const std::vector<InstructionExample>& in, std::vector<InstructionExample>* kept) {
    std::vector<TokenizedExample> out;
    for (const auto& ex : in) {
      TokenizedExample t = tokenize_example(ex, tok, tmpl, c.data.loss_on, eos);
      if (long(t.ids.size()) > max_len) {
        ++d.skipped;
        continue;
      }
      out.push_back(std::move(t));
      if (kept) kept->push_back(ex);
    }
    return out;
  };
  std::map<std::string, long> train_per_task;  // the suite split of a family depends on its train size
  for (const auto& s : c.data.train)
    for (const auto& t : s.tasks) train_per_task[t] = s.per_task;
  std::map<std::string, long> eval_per_task;  // held-out examples of a family that exact match reads
  for (const auto& s : c.data.eval)
    for (const auto& t : s.tasks) eval_per_task[t] = std::max(eval_per_task[t], s.per_task);
  auto split = [&](const std::string& task, std::size_t eval_n) {
    TaskSuiteConfig suite;
    suite.seed = c.seed;
    suite.train_per_task = std::size_t(train_per_task.count(task) ? train_per_task[task] : 2000);
    suite.eval_per_task = std::max<std::size_t>(200, eval_n);
    return make_task(task, suite);
  };
  const long n_probe = c.data.mixing ? c.data.mixing->eval_batches * c.batch_size : 0;
  if (with_train) {
    for (const auto& s : c.data.train) {
      if (!s.path.empty()) {
        d.train_names.push_back(s.path);
        d.train.push_back(tokenize(read_jsonl(s.path), nullptr));
        d.weights.push_back(s.weight);
        d.probe.emplace_back(d.train.back().begin(),
                             d.train.back().begin() + std::min<long>(n_probe, long(d.train.back().size())));
      } else {
        for (const auto& t : s.tasks) {
          const TaskSplit sp = split(t, 0);
          d.train_names.push_back(t);
          d.train.push_back(tokenize(sp.train, nullptr));
          d.weights.push_back(s.weight / double(s.tasks.size()));
          d.probe.push_back(tokenize(
              mixing_probe_examples(sp, std::size_t(eval_per_task[t]), std::size_t(n_probe)), nullptr));
        }
      }
      for (std::size_t k = 0; k < d.train.size(); ++k)
        if (d.train[k].empty() && d.weights[k] > 0)
          throw ConfigError("data.train: '" + d.train_names[k] + "' has no example of at most " +
                            std::to_string(max_len) + " tokens (data.max_length)");
    }
  }
  const std::vector<std::string> known = task_names();
  for (const auto& s : c.data.eval) {
    if (!s.path.empty()) {
      std::map<std::string, EvalSet> groups;  // by the examples' task field
      for (const auto& ex : read_jsonl(s.path)) {
        const bool checkable = std::find(known.begin(), known.end(), ex.task) != known.end();
        EvalSet& e = groups[checkable ? ex.task : std::string()];
        e.name = checkable ? s.path + ":" + ex.task : s.path;
        e.checkable = checkable;
        e.examples.push_back(ex);
      }
      for (auto& [key, e] : groups) {
        std::vector<InstructionExample> kept;
        e.tokens = tokenize(e.examples, &kept);
        e.examples = std::move(kept);
        if (!e.tokens.empty()) d.eval.push_back(std::move(e));
      }
    } else {
      for (const auto& t : s.tasks) {
        const TaskSplit sp = split(t, std::size_t(s.per_task));
        EvalSet e;
        e.name = t;
        e.checkable = true;
        const std::vector<InstructionExample> first(
            sp.eval.begin(), sp.eval.begin() + long(std::min(sp.eval.size(), std::size_t(s.per_task))));
        e.tokens = tokenize(first, &e.examples);
        if (!e.tokens.empty()) d.eval.push_back(std::move(e));
      }
    }
  }
  return d;
}

// ---- evaluation ------------------------------------------------------------------------------------------

template <class Tok>
nlohmann::json evaluate(GPT2<float>& gpt, const FinetuneConfig& c, const Data& d, const Tok& tok,
                        std::int64_t eos) {
  gpt.set_training(false);
  nlohmann::json out = {{"tasks", nlohmann::json::object()}};
  std::vector<TokenizedExample> all;
  double em_sum = 0;
  long em_n = 0;
  for (const EvalSet& e : d.eval) {
    nlohmann::json r;
    r["examples"] = e.tokens.size();
    r["loss"] = mean_loss(gpt, e.tokens, Index(c.eval_batch_size), eos);
    all.insert(all.end(), e.tokens.begin(), e.tokens.end());
    if (e.checkable) {
      const std::vector<std::string> answers =
          greedy_answers(gpt, e.examples, tok, c.data.prompt_template(), eos, Index(c.data.max_new_tokens),
                         Index(c.eval_batch_size));
      const std::string family =
          e.name.substr(e.name.find(':') == std::string::npos ? 0 : e.name.rfind(':') + 1);
      double right = 0;
      for (std::size_t i = 0; i < answers.size(); ++i)
        right += check_answer(family, e.examples[i], answers[i]);
      const double em = 100.0 * right / double(answers.size());
      r["exact_match"] = em;
      em_sum += em;
      ++em_n;
    }
    out["tasks"][e.name] = r;
  }
  out["loss"] = all.empty() ? nlohmann::json(nullptr)
                            : nlohmann::json(mean_loss(gpt, all, Index(c.eval_batch_size), eos));
  out["mean_exact_match"] = em_n > 0 ? nlohmann::json(em_sum / double(em_n)) : nlohmann::json(nullptr);
  out["examples"] = all.size();
  return out;
}

// routing.png / expert_load.png of a MoE model on the eval sets (one row per set) into `dir`.
void write_routing(GPT2<float>& gpt, const Data& d, std::int64_t eos, const std::string& dir,
                   const std::string& title) {
  std::vector<std::string> names;
  std::vector<std::vector<TokenizedExample>> tokens;
  for (const EvalSet& e : d.eval) {
    names.push_back(e.name);
    tokens.push_back(e.tokens);
  }
  fs::create_directories(dir);
  if (plot::write_routing_report(gpt, names, tokens, eos, dir, title))
    std::cout << "routing plots: " << dir << "/routing.png, " << dir << "/expert_load.png\n";
}

void print_eval(const nlohmann::json& r) {
  char buf[160];
  for (const auto& [name, t] : r["tasks"].items()) {
    std::snprintf(buf, sizeof buf, "  %-24s %4ld examples  loss %.4f", name.c_str(),
                  t["examples"].get<long>(), t["loss"].get<double>());
    std::cout << buf;
    if (t.contains("exact_match")) {
      std::snprintf(buf, sizeof buf, "  exact match %5.1f%%", t["exact_match"].get<double>());
      std::cout << buf;
    }
    std::cout << "\n";
  }
  if (!r["loss"].is_null()) {
    std::snprintf(buf, sizeof buf, "eval loss %.4f", r["loss"].get<double>());
    std::cout << buf;
  }
  if (!r["mean_exact_match"].is_null()) {
    std::snprintf(buf, sizeof buf, "  mean exact match %.1f%%", r["mean_exact_match"].get<double>());
    std::cout << buf;
  }
  std::cout << "\n";
}

// ---- the model -------------------------------------------------------------------------------------------

// Calls f(tokenizer, eos) with the model directory's tokenizer: pemoe_tokenizer.json ({"type": "bytes"}) or
// vocab.json + merges.txt.
template <class F>
int with_tokenizer(const std::string& dir, F&& f) {
  const std::string p = dir + "/pemoe_tokenizer.json";
  if (fs::exists(p)) {
    std::ifstream in(p);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw RuntimeError("'" + p + "' is not valid JSON: " + e.what());
    }
    if (j.value("type", std::string()) != "bytes")
      throw RuntimeError("'" + p + "': type '" + j.value("type", std::string()) +
                         "' is not supported (bytes is)");
    const ByteTokenizer tok(j.value("special_tokens", std::vector<std::string>{"<|endoftext|>"}));
    const std::int64_t eos = j.contains("eos_token_id") ? j["eos_token_id"].get<std::int64_t>()
                                                        : std::int64_t(tok.special_id("<|endoftext|>"));
    return f(tok, eos);
  }
  if (fs::exists(dir + "/vocab.json") && fs::exists(dir + "/merges.txt")) {
    const Gpt2Tokenizer tok = Gpt2Tokenizer::from_directory(dir);
    return f(tok, std::int64_t(tok.eos_id()));
  }
  throw RuntimeError(
      "'" + dir +
      "' has no tokenizer: pemoe_tokenizer.json (byte-level) or vocab.json + merges.txt (GPT-2 BPE)");
}

PeftAdapterConfig peft_config(const FinetuneAdapter& a, const std::vector<Index>& per_layer) {
  PeftAdapterConfig p;
  p.spec = a.spec;
  p.targets = a.targets;
  p.feedforward = a.feedforward;
  p.experts_per_layer = per_layer;
  return p;
}

// Writes what was trained into `dir`: a PEFT adapter, the whole model (full), or the MPOE banks.
void save_trained(GPT2<float>& gpt, const FinetuneConfig& c, const std::vector<Index>& per_layer,
                  const std::string& dir) {
  if (c.adapter.type == "full") {
    save_gpt2(gpt, dir);
  } else if (c.adapter.type == "mpoe") {
    ParamStore<float>& store = *gpt.store();
    SafetensorsWriter w;
    w.set_metadata("format", "pt");
    for (const auto& e : store.entries())
      if (!GPT2<float>::is_backbone(e.name)) w.add(e.name, e.shape, store.value(store.id(e.name)));
    fs::create_directories(dir);
    w.save(dir + "/mpoe_model.safetensors");
  } else {
    save_peft_adapter(gpt, peft_config(c.adapter, per_layer), dir, c.model);
  }
}

// The config's `precision`: the frozen weights packed once (f32, or a bf16-only backbone), and the other
// large products in bf16 while `autocast` lives (a ConfigError, e.g. bf16 on a CPU without bf16 units, is the
// user's mistake: a usage error).
void apply_precision(GPT2<float>& gpt, const FinetuneConfig& c, std::optional<GemmPrecisionScope>& autocast) {
  try {
    if (c.frozen_weights != "f32") {
      const bool bf16 = c.frozen_weights == "bf16";
      const std::size_t bytes = gpt.pack_frozen(bf16 ? PackDtype::bf16 : PackDtype::f32, bf16);
      std::cout << "precision: frozen weights packed in " << (bf16 ? "bf16 (the f32 copies released)" : "f32")
                << ", " << (bytes + 500000) / 1000000 << " MB\n";
    }
    if (c.autocast_bf16) {
      autocast.emplace(GemmPrecision::bf16);
      std::cout << "precision: autocast bf16 (the other large products take bf16 operands, f32 "
                   "accumulation)\n";
    }
  } catch (const ConfigError& e) {
    throw UsageError(std::string("config 'precision': ") + e.what());
  }
}

// The model of the config with the weights trained into `dir` (none with `base`).
std::unique_ptr<GPT2<float>> load_trained(const FinetuneConfig& c, const std::string& dir, bool base,
                                          ParamStore<float>& store) {
  Rng rng(c.seed);
  if (base) return load_gpt2<float>(c.model, store, rng);
  if (fs::exists(dir + "/adapter_config.json")) return load_gpt2<float>(c.model, store, rng, dir);
  if (fs::exists(dir + "/mpoe_model.safetensors")) {
    auto gpt = std::make_unique<GPT2<float>>(read_gpt2_config(c.model));
    FinetuneAdapter a = c.adapter;
    a.type = "mpoe";
    apply_adapter(*gpt, a);
    gpt->register_params(store, rng);
    load_gpt2_weights(*gpt, c.model);
    const SafetensorsFile f = SafetensorsFile::load(dir + "/mpoe_model.safetensors");
    for (const auto& e : store.entries())
      if (!GPT2<float>::is_backbone(e.name)) {
        if (!f.contains(e.name))
          throw RuntimeError("'" + dir + "/mpoe_model.safetensors' has no tensor '" + e.name +
                             "' (trained with another adapter config?)");
        f.copy_to(e.name, store.value(store.id(e.name)), e.size);
      }
    return gpt;
  }
  if (fs::exists(dir + "/model.safetensors")) return load_gpt2<float>(dir, store, rng);  // full fine-tuning
  throw RuntimeError(
      "'" + dir +
      "' holds no trained model (adapter_config.json, mpoe_model.safetensors or model.safetensors); "
      "run 'pemoe train' first, or pass --adapter DIR or --base");
}

// Reads the step, loss and eval_loss columns of a metrics file (for the plot).
void read_curves(const std::string& path, plot::PlotSeries& train, plot::PlotSeries& eval) {
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line)) return;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream s(line);
    for (std::string x; std::getline(s, x, ',');) f.push_back(x);
    if (f.size() < 2) continue;
    train.x.push_back(std::stod(f[0]));
    train.y.push_back(std::stod(f[1]));
    if (f.size() > 5 && !f[5].empty()) {
      eval.x.push_back(std::stod(f[0]));
      eval.y.push_back(std::stod(f[5]));
    }
  }
}

// ---- train -----------------------------------------------------------------------------------------------

template <class Tok>
int train(const TrainOptions& o, const FinetuneConfig& c, const Tok& tok, std::int64_t eos) {
  const GPT2Config g = read_gpt2_config(c.model);
  const Data d = load_data(c, g, tok, eos, true);
  std::vector<Index> sizes;
  for (const auto& t : d.train) sizes.push_back(Index(t.size()));
  GPT2<float> gpt(g);
  const std::vector<Index> per_layer = apply_adapter(gpt, c.adapter);

  // Dynamic data mixing (data.mixing): the mixer's weights replace the sources' weights; each update reads
  // the same probe batches of every dataset. Its config is checked against the data and the adapter before
  // anything runs.
  std::unique_ptr<DataMixer> mixer;
  if (c.data.mixing) {
    try {  // the config's mistakes (a dataset name in initial_weights...) are usage errors
      mixer = std::make_unique<DataMixer>(*c.data.mixing, d.train_names, sizes, c.seed);
    } catch (const ConfigError& e) {
      throw UsageError(e.what());
    }
    if (mixer->needs_gate_loads() && gpt.routers().empty())
      throw UsageError("config: 'data.mixing.policy' is \"gate_load\" but adapter type \"" + c.adapter.type +
                       "\" has no router; use a MoE adapter (molora, sparse, mov, mpoe) or another policy");
  }

  for (std::size_t k = 0; k < d.train.size(); ++k)
    std::cout << "train " << d.train_names[k] << ": " << d.train[k].size() << " examples, weight "
              << d.weights[k] << "\n";
  if (d.skipped > 0) std::cout << d.skipped << " examples longer than max_length skipped\n";
  ParamStore<float> params;
  Rng rng(c.seed);
  gpt.register_params(params, rng);
  load_gpt2_weights(gpt, c.model);
  std::optional<GemmPrecisionScope> autocast;
  apply_precision(gpt, c, autocast);
  std::cout << "adapter " << c.adapter.type << ": " << params.num_trainable() << " trainable parameters of "
            << params.num_values() << "\n";

  MultiDatasetSampler sampler(sizes, d.weights, c.seed);
  MixingProbes probes;
  std::vector<std::pair<long, std::vector<double>>> weight_rows;  // (step, weights) for mixing_weights.csv
  if (mixer) {
    probes = make_mixing_probes(d.probe, c.data.mixing->eval_batches, Index(c.batch_size), eos);
    sampler.set_weights(mixer->weights());
    weight_rows.push_back({0, mixer->weights()});
    if (c.data.mixing->freeze_routers && !gpt.routers().empty()) {
      const std::size_t n = params.set_trainable_if(
          [](const auto& e) { return e.name.find(".router.") != std::string::npos; }, false);
      std::cout << "data.mixing: " << n
                << " router tensors frozen (freeze_routers; set it to false to train routers that start "
                   "untrained)\n";
    }
    std::cout << "data.mixing: policy " << MixingConfig::policy_name(c.data.mixing->policy) << ", every "
              << c.data.mixing->interval << " steps\n";
  }
  std::vector<TokenizedExample> eval_all;
  for (const auto& e : d.eval) eval_all.insert(eval_all.end(), e.tokens.begin(), e.tokens.end());
  GradientMaskConfig gm;
  gm.p_b = c.adapter.mask_p;
  auto mask = std::make_unique<GradientMask>(gm, Rng(c.seed).split("gradient mask"));

  GPT2<float>::Cache cache;
  TrainerCallbacks cb;
  cb.micro_batch = [&](long step, long micro) {  // consumes the sampler only: resumable from its state
    if (mixer && micro == 0 && mixing_round(*mixer, gpt, probes, step)) {
      sampler.set_weights(mixer->weights());
      weight_rows.push_back({step, mixer->weights()});
    }
    std::vector<TokenizedExample> rows;
    for (long b = 0; b < c.batch_size; ++b) {
      const SampleRef s = sampler.next();
      rows.push_back(d.train[std::size_t(s.dataset)][std::size_t(s.index)]);
    }
    const TokenBatch tb = pad_batch(rows, 0, eos);
    const double loss = forward_batch(gpt, tb, cache) + cache.aux_loss;
    gpt.backward_over_logits(cache);  // the logits are not read after backward
    return MicroBatchResult{loss, double(tb.num_tokens())};
  };
  if (!eval_all.empty())
    cb.eval = [&](long) {
      gpt.set_training(false);
      const double l = mean_loss(gpt, eval_all, Index(c.eval_batch_size), eos);
      gpt.set_training(true);
      return std::map<std::string, double>{{"loss", l}};
    };
  if (!gpt.routers().empty())  // metrics.csv gets every router's load on the logged step's batch
    cb.expert_load = [&] {
      const auto routers = gpt.routers();
      const auto caches = gpt.router_caches(cache);
      const auto mean = mean_routing(gpt, cache);
      std::vector<ExpertLoad> out;
      for (std::size_t i = 0; i < routers.size(); ++i) {
        const bool soft = routers[i].second->config().mode == GateMode::soft;  // soft: mean probability
        out.push_back({routers[i].first, soft ? mean[i] : expert_load(*routers[i].second, *caches[i])});
      }
      return out;
    };
  if (c.adapter.type == "mpoe")
    cb.update_mask = [&](long) { return UpdateMask{mask->next(params), mask->keep_moments_of_skipped()}; };
  cb.save_state = [&](Checkpoint& ck) {
    const MultiDatasetSampler::State s = sampler.state();
    ck.meta()["pemoe_train"] = {{"sampler_integers", s.integers()},
                                {"sampler_weights", s.weights},
                                {"rng_counters", gpt.rng_counters()},
                                {"gradient_mask_draws", mask->steps()}};
    if (mixer) {
      nlohmann::json rows = nlohmann::json::array();
      for (const auto& [step, w] : weight_rows) rows.push_back({{"step", step}, {"weights", w}});
      ck.meta()["pemoe_train"]["mixer_weights"] = mixer->state();
      ck.meta()["pemoe_train"]["mixing_history"] = rows;
    }
  };
  cb.load_state = [&](const Checkpoint& ck) {
    const auto& j = ck.meta().at("pemoe_train");
    sampler.restore(
        MultiDatasetSampler::State::from_flat(j.at("sampler_integers").get<std::vector<std::int64_t>>(),
                                              j.at("sampler_weights").get<std::vector<double>>()));
    gpt.set_rng_counters(j.at("rng_counters").get<std::vector<std::uint64_t>>());
    mask = std::make_unique<GradientMask>(gm, Rng(c.seed).split("gradient mask"));
    for (std::uint64_t i = 0, n = j.at("gradient_mask_draws").get<std::uint64_t>(); i < n; ++i) mask->draw();
    if (mixer) {
      if (!j.contains("mixer_weights"))
        throw RuntimeError(
            "the checkpoint was saved without data.mixing; resume with the config it was saved "
            "with, or start a new output_dir");
      mixer->restore(j.at("mixer_weights").get<std::vector<double>>());
      weight_rows.clear();
      for (const auto& r : j.at("mixing_history"))
        weight_rows.push_back({r.at("step").get<long>(), r.at("weights").get<std::vector<double>>()});
    }
  };

  TrainerOptions topt;
  topt.total_steps = c.steps;
  topt.grad_accum = c.grad_accum;
  topt.max_grad_norm = c.max_grad_norm;
  topt.eval_every = eval_all.empty() ? 0 : (c.eval_every > 0 ? c.eval_every : c.steps);
  topt.log_every = c.log_every;
  topt.print_every = c.log_every;
  topt.checkpoint_every = c.checkpoint_every;
  topt.checkpoint_dir = c.output_dir + "/checkpoints";
  topt.keep_checkpoints = c.checkpoint_keep;
  topt.metrics_csv = c.output_dir + "/metrics.csv";
  topt.progress = TrainerOptions::parse_progress(o.progress);
  fs::create_directories(c.output_dir);

  auto run = [&](auto& opt) {
    Trainer<float> trainer(params, opt, Schedule(c.schedule), topt, cb);
    if (c.resume && trainer.resume_latest())
      std::cout << "resumed from " << Trainer<float>::latest_checkpoint(topt.checkpoint_dir) << " (step "
                << trainer.step() << ")\n";
    gpt.set_training(true);
    const TrainSummary s = trainer.train(o.stop_after > 0 ? trainer.step() + o.stop_after : 0);
    gpt.set_training(false);
    return s;
  };
  TrainSummary sum;
  if (c.optimizer.name == "sgd") {
    SGDConfig oc;
    oc.lr = c.optimizer.lr;
    oc.momentum = c.optimizer.momentum;
    oc.weight_decay = c.optimizer.weight_decay;
    SGD<float> opt(oc, ParamGroups::standard());
    sum = run(opt);
  } else if (c.optimizer.name == "adafactor") {
    AdafactorConfig oc = AdafactorConfig::constant(c.optimizer.lr);
    oc.weight_decay = c.optimizer.weight_decay;
    Adafactor<float> opt(oc, ParamGroups::standard());
    sum = run(opt);
  } else {
    AdamWConfig oc;
    oc.lr = c.optimizer.lr;
    oc.weight_decay = c.optimizer.weight_decay;
    oc.beta1 = c.optimizer.beta1;
    oc.beta2 = c.optimizer.beta2;
    oc.eps = c.optimizer.eps;
    AdamW<float> opt(oc, ParamGroups::standard());
    sum = run(opt);
  }
  if (sum.step < c.steps) {
    std::cout << "stopped at step " << sum.step << " of " << c.steps
              << " (--stop-after); run again with \"resume\": true to continue from the last checkpoint\n";
    return 0;
  }

  save_trained(gpt, c, per_layer, c.output_dir);
  if (mixer) plot::write_mixing_report(gpt, *mixer, probes, weight_rows, c.steps, c.output_dir);
  plot::PlotSeries tr{"train", {}, {}}, ev{"eval", {}, {}};
  read_curves(topt.metrics_csv, tr, ev);
  plot::LinePlotOptions po;
  po.title = "pemoe train: " + c.adapter.type;
  po.x_label = "step";
  po.y_label = "loss";
  std::vector<plot::PlotSeries> curves{tr};
  if (!ev.x.empty()) curves.push_back(ev);
  plot::plot_lines(c.output_dir + "/loss", curves, po);
  std::cout << "saved to " << c.output_dir << "\n";
  if (!d.eval.empty()) {
    const nlohmann::json r = evaluate(gpt, c, d, tok, eos);
    std::ofstream(c.output_dir + "/eval.json") << r.dump(2) << "\n";
    print_eval(r);
    write_routing(gpt, d, eos, c.output_dir, "pemoe train: " + c.adapter.type);
  }
  return 0;
}

template <class Tok>
int eval(const TrainOptions& o, const FinetuneConfig& c, const Tok& tok, std::int64_t eos) {
  if (c.data.eval.empty()) throw UsageError("the config has no 'data.eval' sources to evaluate on");
  ParamStore<float> store;
  const std::string dir = o.adapter.empty() ? c.output_dir : o.adapter;
  auto gpt = load_trained(c, dir, o.base, store);
  std::optional<GemmPrecisionScope> autocast;
  apply_precision(*gpt, c, autocast);
  const Data d = load_data(c, gpt->config(), tok, eos, false);
  const nlohmann::json r = evaluate(*gpt, c, d, tok, eos);
  if (!o.out.empty()) std::ofstream(o.out) << r.dump(2) << "\n";
  std::cout << (o.base ? c.model + " (base)" : dir) << "\n";
  print_eval(r);
  if (!o.plots.empty()) write_routing(*gpt, d, eos, o.plots, "pemoe eval: " + dir);
  return 0;
}

const char* kFooter =
    "The config (JSON, comments allowed) names the model, the adapter, the data, the optimizer and the "
    "loop;\n"
    "see docs/guides/train_cli.md. An unknown key or a bad value is a usage error (exit 2) naming the key "
    "and\n"
    "the allowed keys or values.";

void setup_train(CLI::App& cmd) {
  auto o = std::make_shared<TrainOptions>();
  cmd.add_option("CONFIG", o->config, "the run's JSON config")->required()->type_name("CONFIG");
  cmd.add_option("--stop-after", o->stop_after,
                 "stop after K steps of this run, as if interrupted (no adapter or eval written); "
                 "continue later with \"resume\": true")
      ->type_name("K")
      ->check(integer_in(1, std::numeric_limits<long>::max()));
  cmd.add_option("--progress", o->progress, "progress display: auto, terminal, lines, off")
      ->type_name("MODE")
      ->check(one_of({"auto", "terminal", "lines", "off"}));
  cmd.footer(std::string(kFooter) +
             "\nWrites into output_dir: metrics.csv, checkpoints/, the trained adapter (PEFT layout; "
             "model.safetensors\n"
             "for full fine-tuning, mpoe_model.safetensors for mpoe), loss.csv/.png, eval.json; for a MoE "
             "adapter\n"
             "routing.png and expert_load.png; with data.mixing mixing_weights.csv/.png and "
             "gate_load_distance.csv/.png.");
  set_action(cmd, [o] {
    const FinetuneConfig c = load_config(o->config);
    return with_tokenizer(c.model, [&](const auto& tok, std::int64_t eos) { return train(*o, c, tok, eos); });
  });
}

void setup_eval(CLI::App& cmd) {
  auto o = std::make_shared<TrainOptions>();
  cmd.add_option("CONFIG", o->config, "the run's JSON config")->required()->type_name("CONFIG");
  cmd.add_option("--adapter", o->adapter, "the trained adapter directory (default: the config's output_dir)")
      ->type_name("DIR");
  cmd.add_flag("--base", o->base, "evaluate the pretrained model without the adapter")
      ->disable_flag_override();
  cmd.add_option("--out", o->out, "also write the results as JSON to FILE")->type_name("FILE");
  cmd.add_option(
         "--plots", o->plots,
         "for a MoE adapter, write the routing heatmap and expert load (routing.png, expert_load.png) "
         "into DIR")
      ->type_name("DIR");
  cmd.footer(std::string(kFooter) +
             "\nPrints the held-out loss of every eval set and the exact match of task-suite families.");
  set_action(cmd, [o] {
    const FinetuneConfig c = load_config(o->config);
    return with_tokenizer(c.model, [&](const auto& tok, std::int64_t eos) { return eval(*o, c, tok, eos); });
  });
}

[[maybe_unused]] const bool registered_train =
    register_command({"train", "fine-tune a GPT-2 with an adapter from a JSON config", setup_train});
[[maybe_unused]] const bool registered_eval = register_command(
    {"eval", "held-out loss and exact match of a trained adapter (JSON config)", setup_eval});

}  // namespace
}  // namespace pemoe::cli

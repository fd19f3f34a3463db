// pemoe example: fine-tune one frozen GPT-2 with every adapter method pemoe has, on the same data, for the
// same number of steps, from the same seed, and compare them (and with the model before fine-tuning).
//
// The model is the one examples/pretrain_gpt2.cpp saved (a byte-level GPT-2 that has seen text and the task
// families `upper` and `count`). It is fine-tuned on task families it has not seen (by default: addition,
// word reversal, letter sorting, and three ISO-code lookups) with, in turn:
//   base     no fine-tuning: the pretrained model as it is (how far from solved the tasks are)
//   full     full fine-tuning (every parameter)
//   lora     LoRA (Hu et al. 2021) at every linear site
//   ia3      (IA)³ (Liu et al. 2022) at PEFT's GPT-2 sites (c_attn, mlp.c_proj)
//   mov      MoV: a soft mixture of (IA)³ vectors (Zadouri et al. 2023) at the same sites
//   molora   MoLoRA: a soft mixture of LoRA experts (Zadouri et al. 2023) at every linear site
//   sparse   MoLA: top-2 LoRA experts with the ▽ allocation, more experts in higher layers (Gao et al. 2024)
//   mpoe     MPOE: the MLPs become MPO expert banks sharing their central tensors (Gao et al. 2022), Switch
//            top-1 routing, with the gradient mask on the central tensors
// It writes, under --out: results.md (the table), results.csv, <run>/metrics.csv (the Trainer's rows),
// loss_train.png and loss_eval.png (loss curves of every run), and for every MoE method <run>/routing.png
// (task × expert mean routing probability) and <run>/expert_load.png (per-layer expert load on the
// evaluation data).
//
// With --seeds 7,8,9 every run is repeated per seed (the seed draws the data, the adapters' initialisation
// and the sampling) and results.md adds the mean ± standard deviation over the seeds. With --mixing the
// task families are mixed by a data-mixing policy (dynamic gate-load mixing, Zhu et al. 2024, and its
// baselines; see pemoe/data/dynmix.hpp) instead of evenly; each run with a policy writes
// <run>/mixing_weights.png (the weights over training) and <run>/gate_load_distance.png.
//
//   ./build/examples/pemoe_finetune_compare --model runs/gpt2-tiny --out runs/compare   (about 9 minutes)
//   ./build/examples/pemoe_finetune_compare --model runs/gpt2-tiny --out runs/mixing --methods sparse
//       --mixing uniform,datasize,random,gate_load --seeds 7,8,9    (dynamic data mixing; one command line)
//   ./build/examples/pemoe_finetune_compare --help
#include <CLI/CLI.hpp>
#include <pemoe/data/byte_tokenizer.hpp>
#include <pemoe/data/dynmix.hpp>
#include <pemoe/data/instruction.hpp>
#include <pemoe/data/packing.hpp>
#include <pemoe/data/sampler.hpp>
#include <pemoe/data/tasks.hpp>
#include <pemoe/models/dynmix_round.hpp>
#include <pemoe/models/gpt2_hf.hpp>
#include <pemoe/models/lm_eval.hpp>
#include <pemoe/moe/mola_allocation.hpp>
#include <pemoe/train/adamw.hpp>
#include <pemoe/train/gradient_mask.hpp>
#include <pemoe/train/trainer.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "example_common.hpp"       // parse_method_rates
#include "plot/dynmix_report.hpp"   // the mixing weights and gate-load distance plots
#include "plot/plot.hpp"            // pemoe_plot (tools/plot): CSV + PNG
#include "plot/routing_report.hpp"  // task × expert routing heatmap, expert load
#include "results_table.hpp"        // results.md, results.csv

using namespace pemoe;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  // ---- 1. flags ----------------------------------------------------------------------------------------
  CLI::App app{"Fine-tune a frozen GPT-2 with every adapter method on held-out task families and compare."};
  std::string model_dir = "runs/gpt2-tiny", out_dir = "runs/compare";
  // Lists are comma-separated on the command line (--methods lora,molora).
  std::vector<std::string> methods = {"base", "full", "lora", "ia3", "mov", "molora", "sparse", "mpoe"};
  std::vector<std::string> tasks = {"add",          "reverse",       "sort",
                                    "country_code", "currency_code", "language_code"};
  std::vector<std::string> lr_list = {"full=5e-4",   "lora=5e-3",   "ia3=3e-2", "mov=3e-2",
                                      "molora=2e-3", "sparse=2e-3", "mpoe=1e-3"};
  long steps = 400, batch = 32, experts = 4, rank = 8, expert_rank = 4, top_k = 2, warmup = 20;
  long train_per_task = 2000, eval_per_task = 50, eval_every = 50, max_new_tokens = 16;
  std::string mola_shape = "2468";
  double mask_p = 0.5;
  std::vector<std::string> seeds = {"7"}, policies = {"uniform"};
  long mix_interval = 50, mix_eval_batches = 2;
  double mix_eta = 10.0, mix_c = 0.05;
  bool freeze_routers = false;
  std::string progress = "auto";
  app.add_option("--model", model_dir,
                 "the pretrained model (Hugging Face GPT-2 directory, byte-level vocabulary)")
      ->capture_default_str();
  app.add_option("--out", out_dir, "output directory")->capture_default_str();
  app.add_option(
         "--methods", methods,
         "methods to run, in order (base = no fine-tuning, full, lora, ia3, mov, molora, sparse, mpoe)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--tasks", tasks, "task families to fine-tune and evaluate on")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--lr", lr_list, "peak learning rate per method (method=value,...)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--steps", steps, "optimizer steps per method")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--batch", batch, "examples per step")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--warmup", warmup, "linear warm-up steps before the cosine decay")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--rank", rank, "LoRA rank")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--experts", experts, "experts per site (MoV, MoLoRA, MPOE)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--expert-rank", expert_rank, "rank of each LoRA expert (MoLoRA, sparse)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--top-k", top_k, "experts per token of the sparse mixture")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--mola-shape", mola_shape,
                 "experts of the sparse mixture per quarter of the layers (MoLA ▽: 2468)")
      ->capture_default_str();
  app.add_option("--mask-p", mask_p, "MPOE: probability that a step freezes the central tensors")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--train-per-task", train_per_task, "training examples per task family")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--eval-per-task", eval_per_task, "held-out examples per family for loss and exact match")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--eval-every", eval_every, "evaluate the loss every K steps (0 = only at the end)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--max-new-tokens", max_new_tokens, "longest generated answer")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option(
         "--seeds,--seed", seeds,
         "seeds (one run of every method per seed): the data, the adapters' initialisation, the sampler")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--mixing", policies,
                 "how the task families are mixed, one run per policy: uniform, datasize, random, "
                 "random_onehot, sequential, gate_load (dynamic mixing by the routers' gate loads)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--mix-interval", mix_interval, "steps between two updates of the mixing weights")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--mix-eval-batches", mix_eval_batches,
                 "probe batches per family at each update (held-out examples exact match does not use)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--mix-eta", mix_eta, "step size eta of the gate_load update")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--mix-c", mix_c, "smoothing c toward uniform of the gate_load update")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_flag("--freeze-routers", freeze_routers,
               "freeze the routers while mixing (as the paper does with pretrained routers; pemoe's adapter "
               "routers start untrained, so the default trains them)");
  app.add_option("--progress", progress, "progress display: auto, terminal, lines, off")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    const std::map<std::string, double> lr_of = examples::parse_method_rates(lr_list);
    for (const auto& p : policies) MixingConfig::from_json({{"policy", p}}, "--mixing");  // a clear error now
    for (const auto& x : seeds)
      if (x.find_first_not_of("0123456789") != std::string::npos)
        throw ConfigError("--seeds: '" + x + "' is not a non-negative integer");
    if (seeds.empty() || policies.empty()) throw ConfigError("--seeds and --mixing need at least one value");
    for (const auto& m : methods)
      if (m != "base" && !lr_of.count(m))
        throw ConfigError("--lr has no learning rate for method '" + m + "'");

    // ---- 2. the model and its tokenizer ------------------------------------------------------------------
    const GPT2Config gcfg = read_gpt2_config(model_dir);
    ByteTokenizer tok({"<|endoftext|>"});
    if (gcfg.vocab_size != Index(tok.vocab_size()))
      throw ConfigError("the model in '" + model_dir + "' has a vocabulary of " +
                        std::to_string(gcfg.vocab_size) +
                        " tokens; this example needs the byte-level model of pemoe_pretrain_gpt2 (257)");
    const std::int64_t eos = tok.special_id("<|endoftext|>");
    const PromptTemplate tmpl;
    fs::create_directories(out_dir);
    long backbone = 0;  // parameters of the pretrained model itself (counted without allocating them)
    {
      auto plan = ParamStore<float>::declaration_only();
      GPT2<float> plain(gcfg);
      Rng r(0);
      plain.register_params(plan, r);
      backbone = long(plan.num_values());
    }

    // ---- 3. one run per seed, method and mixing policy ---------------------------------------------------
    std::vector<examples::RunResult> results;
    std::vector<plot::PlotSeries> train_curves, eval_curves;
    for (const std::string& seed_text : seeds) {
      const std::uint64_t seed = std::stoull(seed_text);
      // 3a. data: the task families of this seed, tokenised once; the loss is on the answers only; the
      // mixing probes are held-out examples that exact match does not read
      TaskSuiteConfig suite;
      suite.seed = seed;
      suite.train_per_task = std::size_t(train_per_task);
      std::vector<std::vector<TokenizedExample>> train(tasks.size());  // per task family
      std::vector<std::vector<InstructionExample>> eval_ex(tasks.size());
      std::vector<std::vector<TokenizedExample>> eval_tok_of(tasks.size());
      std::vector<TokenizedExample> eval_tok;  // every family's
      std::vector<Index> train_sizes;
      std::vector<std::vector<TokenizedExample>> probe_ex(tasks.size());
      for (std::size_t k = 0; k < tasks.size(); ++k) {
        const TaskSplit split = make_task(tasks[k], suite);
        // Examples longer than the model's context cannot be trained or answered whole: they are left out,
        // and counted.
        std::size_t too_long = 0;
        for (const auto& ex : split.train) {
          TokenizedExample t = tokenize_example(ex, tok, tmpl, LossOn::response, eos);
          if (Index(t.ids.size()) > gcfg.n_positions)
            ++too_long;
          else
            train[k].push_back(std::move(t));
        }
        for (const auto& ex : split.eval) {
          if (eval_ex[k].size() == std::size_t(eval_per_task)) break;
          TokenizedExample t = tokenize_example(ex, tok, tmpl, LossOn::response, eos);
          if (Index(t.ids.size()) + max_new_tokens > gcfg.n_positions) {
            ++too_long;
            continue;
          }
          eval_ex[k].push_back(ex);
          eval_tok_of[k].push_back(std::move(t));
        }
        if (too_long > 0)
          std::printf("task %s: %zu examples left out, longer than the model's context of %ld tokens\n",
                      tasks[k].c_str(), too_long, long(gcfg.n_positions));
        eval_tok.insert(eval_tok.end(), eval_tok_of[k].begin(), eval_tok_of[k].end());
        train_sizes.push_back(Index(train[k].size()));
        for (const auto& ex : mixing_probe_examples(split, std::size_t(eval_per_task),
                                                    std::size_t(mix_eval_batches * batch))) {
          TokenizedExample t = tokenize_example(ex, tok, tmpl, LossOn::response, eos);
          if (Index(t.ids.size()) <= gcfg.n_positions) probe_ex[k].push_back(std::move(t));
        }
        std::printf("task %-14s %5zu train, %3zu eval   e.g. %s | %s -> %s\n", tasks[k].c_str(),
                    train[k].size(), eval_ex[k].size(), split.train[0].instruction.c_str(),
                    split.train[0].input.c_str(), split.train[0].output.c_str());
      }
      const MixingProbes probes = make_mixing_probes(probe_ex, mix_eval_batches, Index(batch), eos);
      for (const std::string& method : methods)
        for (const std::string& policy : method == "base" ? std::vector<std::string>{"uniform"} : policies) {
          // A run's name: the method, with the policy and the seed when several are compared.
          const std::string run = method + (policies.size() > 1 && method != "base" ? "_" + policy : "") +
                                  (seeds.size() > 1 ? "_s" + seed_text : "");
          std::printf("\n=== %s ===\n", run.c_str());
          // 3b. the model with the method's adapters, then the pretrained weights
          GPT2<float> gpt(gcfg);
          AdapterSpec spec;
          TargetModules targets;
          targets.all_linear = true;
          std::vector<Index> experts_per_layer;
          if (method == "lora") {
            spec.kind = AdapterKind::lora;
            spec.lora.r = rank;
            spec.lora.alpha = 2.0 * double(rank);
          } else if (method == "ia3" || method == "mov") {
            spec.kind = method == "ia3" ? AdapterKind::ia3 : AdapterKind::mov;
            spec.mov.n_experts = experts;
            targets.all_linear = false;
            targets.names = {"c_attn", "mlp.c_proj"};  // PEFT's IA3 default for GPT-2
          } else if (method == "molora") {
            spec.kind = AdapterKind::molora;
            spec.experts = LoraExpertsConfig::for_ai(experts, expert_rank);
          } else if (method == "sparse") {
            spec.kind = AdapterKind::sparse;
            spec.experts = LoraExpertsConfig::mola(experts, top_k, expert_rank);
            for (const LayerExperts& l : mola_allocation(mola_shape, gcfg.n_layer, top_k, expert_rank))
              experts_per_layer.push_back(l.n_experts);
          } else if (method == "mpoe") {
            MpoeConfig mc;
            mc.d_model = gcfg.n_embd;
            mc.d_ff = gcfg.inner();
            mc.n_experts = experts;
            mc.activation = gcfg.activation_function;
            mc.bias = true;  // GPT-2's MLP has biases
            gpt.use_mpoe(mc);
          } else if (method != "full" && method != "base") {
            throw ConfigError("unknown method '" + method +
                              "'; allowed: base, full, lora, ia3, mov, molora, sparse, mpoe");
          }
          if (spec.kind != AdapterKind::none) gpt.inject(spec, targets, experts_per_layer);
          ParamStore<float> params;
          Rng rng(seed);
          gpt.register_params(params, rng);
          load_gpt2_weights(gpt, model_dir);
          examples::RunResult res;
          res.run = run;
          res.method = method;
          res.policy = method == "base" ? "-" : policy;
          res.seed = seed;
          res.trainable = long(params.num_trainable());
          res.share = 100.0 * double(res.trainable) / double(backbone);
          if (method != "base")
            std::printf("trainable parameters: %ld (%.2f%% of the model's %ld)\n", res.trainable, res.share,
                        backbone);

          GPT2<float>::Cache cache;
          if (method == "base") {  // the pretrained model as it is: how far the tasks are from solved
            gpt.set_training(false);
            res.trainable = 0;
            res.share = 0;
            res.eval_loss = mean_loss(gpt, eval_tok, 4 * batch, eos);
          } else {
            // 3c. training: batches of B examples drawn from the families (evenly, or as the mixing policy
            // says), padded to the longest
            MixingConfig mcfg;
            mcfg.policy = MixingConfig::from_json({{"policy", policy}}, "--mixing").policy;
            mcfg.interval = mix_interval;
            mcfg.eval_batches = mix_eval_batches;
            mcfg.eta = mix_eta;
            mcfg.c = mix_c;
            mcfg.statistic = method == "sparse" || method == "mpoe" ? GateLoadStatistic::topk_counts
                                                                    : GateLoadStatistic::mean_probs;
            DataMixer mixer(mcfg, tasks, train_sizes, seed);
            if (mixer.needs_gate_loads() && gpt.routers().empty())
              throw ConfigError(
                  "--mixing gate_load needs a method with routers (mov, molora, sparse, mpoe), not '" +
                  method + "'");
            if (freeze_routers && policy != "uniform")
              params.set_trainable_if(
                  [](const auto& e) { return e.name.find(".router.") != std::string::npos; }, false);
            MultiDatasetSampler sampler(train_sizes, mixer.weights(), seed);
            std::vector<std::pair<long, std::vector<double>>> weight_rows{{0, mixer.weights()}};
            TrainerCallbacks cb;
            cb.micro_batch = [&](long step, long) {
              if (mixing_round(mixer, gpt, probes, step)) {
                sampler.set_weights(mixer.weights());
                weight_rows.push_back({step, mixer.weights()});
              }
              std::vector<TokenizedExample> rows;
              for (long b = 0; b < batch; ++b) {
                const SampleRef s = sampler.next();
                rows.push_back(train[std::size_t(s.dataset)][std::size_t(s.index)]);
              }
              const TokenBatch tb = pad_batch(rows, 0, eos);
              const double loss = forward_batch(gpt, tb, cache) + cache.aux_loss;
              gpt.backward_over_logits(cache);  // the logits are not read after backward
              return MicroBatchResult{loss, double(tb.num_tokens())};
            };
            cb.eval = [&](long) {
              gpt.set_training(false);
              const double l = mean_loss(gpt, eval_tok, 4 * batch, eos);
              gpt.set_training(true);
              return std::map<std::string, double>{{"loss", l}};
            };
            GradientMaskConfig gm;
            gm.p_b = mask_p;
            GradientMask mask(gm, Rng(seed).split("gradient mask"));
            if (method == "mpoe") cb.update_mask = gradient_mask_hook(mask, params);
            plot::PlotSeries train_curve{run, {}, {}}, eval_curve{run, {}, {}};
            cb.on_log = [&](const StepRecord& r) {
              train_curve.x.push_back(double(r.step));
              train_curve.y.push_back(r.loss);
              if (r.eval.count("loss")) {
                eval_curve.x.push_back(double(r.step));
                eval_curve.y.push_back(r.eval.at("loss"));
              }
            };
            AdamWConfig ocfg;
            ocfg.lr = lr_of.at(method);
            ocfg.weight_decay = method == "full" ? 0.01 : 0.0;
            AdamW<float> opt(ocfg, ParamGroups::standard());
            ScheduleConfig scfg;
            scfg.kind = ScheduleKind::cosine;
            scfg.warmup_steps = warmup;
            scfg.total_steps = steps;
            fs::create_directories(out_dir + "/" + run);
            TrainerOptions topt;
            topt.total_steps = steps;
            topt.max_grad_norm = 1.0;
            topt.eval_every = eval_every > 0 ? eval_every : steps;
            topt.log_every = std::max(1L, steps / 60);
            topt.metrics_csv = out_dir + "/" + run + "/metrics.csv";
            topt.progress = TrainerOptions::parse_progress(progress);
            gpt.set_training(true);
            Trainer<float> trainer(params, opt, Schedule(scfg), topt, cb);
            const TrainSummary summary = trainer.train();
            gpt.set_training(false);
            res.eval_loss = summary.last_eval_loss;
            res.tokens_per_s = summary.tokens / summary.seconds;
            train_curves.push_back(train_curve);
            eval_curves.push_back(eval_curve);
            if (policy != "uniform")
              plot::write_mixing_report(gpt, mixer, probes, weight_rows, steps, out_dir + "/" + run);
            gpt.set_training(false);
          }

          // 3d. exact match: greedy answers to the held-out prompts, checked by the task's own checker
          examples::add_exact_match(res, gpt, tasks, eval_ex, tok, tmpl, eos, Index(max_new_tokens),
                                    4 * batch);

          // 3e. routing: which experts each task family uses (mean routing probability on its eval examples),
          // and the load of every layer's MLP router (the CSV files have the numbers)
          plot::write_routing_report(gpt, tasks, eval_tok_of, eos, out_dir + "/" + run, run);
          results.push_back(res);
        }

    }  // seeds

    // ---- 4. the table and the plots --------------------------------------------------------------------
    const std::string md = examples::write_results(out_dir, tasks, results, seeds);
    plot::LinePlotOptions po;
    po.x_label = "step";
    po.y_label = "cross-entropy of the answers (nats / byte)";
    po.title = "fine-tuning: training loss";
    plot::plot_lines(out_dir + "/loss_train", train_curves, po);
    po.title = "fine-tuning: held-out loss";
    plot::plot_lines(out_dir + "/loss_eval", eval_curves, po);
    std::printf(
        "\n%s\ntable:  %s/results.md (and results.csv)\nplots:  %s/loss_train.png, %s/loss_eval.png, "
        "%s/<run>/routing.png, %s/<run>/expert_load.png; with --mixing: <run>/mixing_weights.png, "
        "<run>/gate_load_distance.png\n",
        md.c_str(), out_dir.c_str(), out_dir.c_str(), out_dir.c_str(), out_dir.c_str(), out_dir.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

// pemoe example: fine-tune a small T5 (encoder–decoder) on held-out task families with full fine-tuning,
// (IA)³, MoV and MoLoRA, on the same data, for the same number of steps, with the recipe of the MoV/MoLoRA
// paper (Zadouri et al. 2023), and compare them (and with the model before fine-tuning).
//
// Stage 1, the model: --model DIR takes a byte-level T5 directory (config.json + model.safetensors,
// vocabulary 258: bytes 0-255, <pad> = 256, </s> = 257). Without it, the example pretrains a tiny T5 v1.1
// itself (gated GELU, untied head; default 2 + 2 layers, width 128, 4 heads of 32) from scratch on
//   - English text as a prefix language model (T5 paper, section 3.3): the source is the first half of a
//     fortune cookie (Debian `fortunes`), the target its continuation;
//   - the task families `upper` and `count` as source -> target pairs, so the model knows the prompt format;
// and saves it under <out>/pretrained (a Hugging Face T5 directory that `transformers` loads).
//
// Stage 2 fine-tunes it on families it has not seen (addition, word reversal, letter sorting, three ISO-code
// lookups) with, in turn:
//   base     no fine-tuning: the pretrained model as it is
//   full     full fine-tuning (every parameter)
//   ia3      (IA)³ (Liu et al. 2022) at PEFT's T5 sites: k, v, and wo's input
//   mov      MoV: soft mixtures of (IA)³ vectors where the paper's code puts them: k and v of every attention
//            per head (router (d_kv, E) shared by the heads), and the feed-forward's intermediate activation
//   molora   MoLoRA: soft mixtures of rank-4 LoRA experts at q, k, v, o, wi_0, wi_1, wo, each router reading
//            the adapted layer's input
// with the paper's recipe: Adafactor (decay rate 0.8, no parameter scaling) at a constant rate, 3e-4 for the
// adapters and 1e-3 for full fine-tuning, batch 32, E = 10 experts.
//
// It writes, under --out: results.md (the table), results.csv, <run>/metrics.csv (the Trainer's rows),
// loss_train.png and loss_eval.png (every run's loss curves), and for MoV and MoLoRA <run>/routing.png
// (task × expert mean routing probability of each block's feed-forward router) and <run>/expert_load.png.
// With --seeds 7,8,9 every run is repeated per seed and results.md adds the mean ± standard deviation.
//
//   ./build/examples/pemoe_finetune_t5 --out runs/t5-compare                 (about 6 minutes on 2 cores)
//   ./build/examples/pemoe_finetune_t5 --model runs/t5-compare/pretrained --methods mov,molora --steps 800
//   ./build/examples/pemoe_finetune_t5 --help
#include <CLI/CLI.hpp>
#include <pemoe/data/byte_tokenizer.hpp>
#include <pemoe/data/instruction.hpp>
#include <pemoe/data/sampler.hpp>
#include <pemoe/data/seq2seq.hpp>
#include <pemoe/data/tasks.hpp>
#include <pemoe/models/t5_eval.hpp>
#include <pemoe/models/t5_hf.hpp>
#include <pemoe/train/adafactor.hpp>
#include <pemoe/train/adamw.hpp>  // ParamGroups
#include <pemoe/train/trainer.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "example_common.hpp"       // read_documents, parse_method_rates
#include "plot/plot.hpp"            // pemoe_plot (tools/plot): CSV + PNG
#include "plot/routing_report.hpp"  // task × expert routing heatmap, expert load
#include "results_table.hpp"        // results.md, results.csv

using namespace pemoe;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  // ---- 1. flags ----------------------------------------------------------------------------------------
  CLI::App app{
      "Fine-tune a small T5 with full fine-tuning, (IA)3, MoV and MoLoRA on held-out task families."};
  std::string model_dir, out_dir = "runs/t5-compare", corpus = "/usr/share/games/fortunes";
  std::vector<std::string> methods = {"base", "full", "ia3", "mov", "molora"};
  std::vector<std::string> tasks = {"add",          "reverse",       "sort",
                                    "country_code", "currency_code", "language_code"};
  std::vector<std::string> lr_list = {"full=1e-3", "ia3=3e-4", "mov=3e-4", "molora=3e-4"};
  std::vector<std::string> seeds = {"7"};
  long steps = 400, batch = 32, experts = 10, expert_rank = 4, eval_every = 50, max_new_tokens = 16;
  long train_per_task = 2000, eval_per_task = 50;
  // the pretraining of stage 1 (without --model)
  long pretrain_steps = 3000, d_model = 128, d_kv = 32, heads = 4, d_ff = 256, layers = 2, text_window = 64;
  double pretrain_lr = 1e-2, task_fraction = 0.3;
  std::string progress = "auto";
  app.add_option("--model", model_dir, "a byte-level T5 directory (empty: pretrain one first)");
  app.add_option("--out", out_dir, "output directory")->capture_default_str();
  app.add_option("--methods", methods, "methods to run, in order (base, full, ia3, mov, molora)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--tasks", tasks, "task families to fine-tune and evaluate on")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--lr", lr_list, "constant Adafactor rate per method (method=value,...)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--steps", steps, "optimizer steps per method")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--batch", batch, "pairs per step")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--experts", experts, "experts per site (MoV, MoLoRA)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--expert-rank", expert_rank, "rank of each LoRA expert (MoLoRA)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--train-per-task", train_per_task, "training pairs per task family")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--eval-per-task", eval_per_task, "held-out pairs per family for loss and exact match")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--eval-every", eval_every, "evaluate the loss every K steps (0 = only at the end)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--max-new-tokens", max_new_tokens, "longest generated answer")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--seeds,--seed", seeds, "seeds (one run of every method per seed)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--pretrain-steps", pretrain_steps, "stage 1: pretraining steps (without --model)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--pretrain-lr", pretrain_lr,
                 "stage 1: peak Adafactor rate, relative to each weight's RMS (cosine decay)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--corpus", corpus, "stage 1: a text file, or a directory of fortune files")
      ->capture_default_str();
  app.add_option("--task-fraction", task_fraction, "stage 1: fraction of the pairs from upper and count")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--text-window", text_window, "stage 1: longest source and target of a text pair, bytes")
      ->check(CLI::Range(4, 4096))
      ->capture_default_str();
  app.add_option("--d-model", d_model, "stage 1: model width")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--d-kv", d_kv, "stage 1: width of a head")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--heads", heads, "stage 1: attention heads")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--d-ff", d_ff, "stage 1: feed-forward width")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--layers", layers, "stage 1: blocks of the encoder and of the decoder")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--progress", progress, "progress display: auto, terminal, lines, off")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    const std::map<std::string, double> lr_of = examples::parse_method_rates(lr_list);
    for (const auto& m : methods) {
      if (m != "base" && m != "full" && m != "ia3" && m != "mov" && m != "molora")
        throw ConfigError("--methods: unknown method '" + m + "'; allowed: base, full, ia3, mov, molora");
      if (m != "base" && !lr_of.count(m)) throw ConfigError("--lr has no rate for method '" + m + "'");
    }
    for (const auto& x : seeds)
      if (x.empty() || x.find_first_not_of("0123456789") != std::string::npos)
        throw ConfigError("--seeds: '" + x + "' is not a non-negative integer");
    fs::create_directories(out_dir);

    // The vocabulary: one id per byte, then T5's <pad> (also the decoder start token) and </s>.
    ByteTokenizer tok({"<pad>", "</s>"});
    const std::int64_t pad = tok.special_id("<pad>"), eos = tok.special_id("</s>");
    const PromptTemplate tmpl;

    // ---- 2. stage 1: the pretrained model -----------------------------------------------------------------
    if (model_dir.empty()) {
      model_dir = out_dir + "/pretrained";
      std::printf("=== stage 1: pretraining a tiny T5 v1.1 -> %s ===\n", model_dir.c_str());
      // 2a. text pairs: the first half of a document -> its continuation (at most text_window bytes each)
      std::vector<Seq2SeqExample> text_pairs;
      for (const std::string& doc : examples::read_documents(corpus)) {
        if (doc.size() < 8) continue;
        const std::size_t half = std::min<std::size_t>(doc.size() / 2, std::size_t(text_window));
        Seq2SeqExample p;
        for (TokenId t : tok.encode(doc.substr(0, half))) p.source.push_back(t);
        for (TokenId t : tok.encode(doc.substr(half, std::size_t(text_window)))) p.target.push_back(t);
        p.source.push_back(eos);
        p.target.push_back(eos);
        text_pairs.push_back(std::move(p));
      }
      // 2b. the pretraining task families, as source -> target pairs
      TaskSuiteConfig suite;
      suite.seed = 1;
      std::vector<Seq2SeqExample> task_pairs, task_eval;
      for (const char* name : {"upper", "count"}) {
        const TaskSplit split = make_task(name, suite);
        for (const auto& ex : split.train) task_pairs.push_back(tokenize_seq2seq(ex, tok, tmpl, eos));
        for (const auto& ex : split.eval) task_eval.push_back(tokenize_seq2seq(ex, tok, tmpl, eos));
      }
      // every 20th text pair is held out
      std::vector<Seq2SeqExample> text_train, text_eval;
      for (std::size_t i = 0; i < text_pairs.size(); ++i)
        (i % 20 == 19 ? text_eval : text_train).push_back(text_pairs[i]);
      text_eval.resize(std::min<std::size_t>(text_eval.size(), 128));
      task_eval.resize(std::min<std::size_t>(task_eval.size(), 128));
      std::printf("text: %zu train / %zu eval pairs; tasks upper, count: %zu pairs (%.0f%% of a batch)\n",
                  text_train.size(), text_eval.size(), task_pairs.size(), 100 * task_fraction);

      // 2c. a fresh T5 v1.1, every parameter trainable
      T5Config c;
      c.vocab_size = Index(tok.vocab_size());
      c.d_model = d_model;
      c.d_kv = d_kv;
      c.num_heads = heads;
      c.d_ff = d_ff;
      c.num_layers = layers;
      c.feed_forward_proj = "gated-gelu";
      c.tie_word_embeddings = false;  // v1.1: separate lm_head, no rescaling
      c.scale_decoder_outputs = false;
      c.dropout_rate = 0.0;  // a short run on plenty of data
      c.pad_token_id = c.decoder_start_token_id = pad;
      c.eos_token_id = eos;
      T5<float> t5(c);
      ParamStore<float> params;
      Rng rng(1);
      t5.register_params(params, rng);
      std::printf(
          "T5 v1.1: %ld + %ld blocks, width %ld, %ld heads of %ld, d_ff %ld, vocabulary %ld: %.2f M "
          "parameters\n",
          layers, layers, d_model, heads, d_kv, d_ff, long(c.vocab_size), double(params.num_values()) / 1e6);

      // 2d. training: pairs drawn from text or tasks by a seeded sampler
      MultiDatasetSampler sampler({Index(text_train.size()), Index(task_pairs.size())},
                                  {1.0 - task_fraction, task_fraction}, 1);
      T5<float>::Cache cache;
      TrainerCallbacks cb;
      cb.micro_batch = [&](long, long) {
        std::vector<Seq2SeqExample> rows;
        for (long b = 0; b < batch; ++b) {
          const SampleRef s = sampler.next();
          rows.push_back(s.dataset == 0 ? text_train[std::size_t(s.index)]
                                        : task_pairs[std::size_t(s.index)]);
        }
        const Seq2SeqBatch b = pad_seq2seq(rows, pad);
        const double loss = forward_batch(t5, b, cache) + cache.aux_loss;
        t5.backward(cache);
        return MicroBatchResult{loss, double(b.num_source_tokens() + b.num_target_tokens())};
      };
      cb.eval = [&](long) {
        t5.set_training(false);
        std::map<std::string, double> m{{"loss", mean_loss(t5, text_eval, batch, pad)},
                                        {"task_loss", mean_loss(t5, task_eval, batch, pad)}};
        t5.set_training(true);
        return m;
      };
      std::vector<plot::PlotSeries> curves = {
          {"train", {}, {}}, {"eval text", {}, {}}, {"eval tasks", {}, {}}};
      cb.on_log = [&](const StepRecord& r) {
        curves[0].x.push_back(double(r.step));
        curves[0].y.push_back(r.loss);
        if (!r.eval.empty()) {
          curves[1].x.push_back(double(r.step));
          curves[1].y.push_back(r.eval.at("loss"));
          curves[2].x.push_back(double(r.step));
          curves[2].y.push_back(r.eval.at("task_loss"));
        }
      };
      // T5's own pretraining optimizer: Adafactor with updates relative to each weight's scale (the head
      // starts at N(0, 1) as Hugging Face initialises it; absolute AdamW steps shrink it far more slowly)
      AdafactorConfig ocfg;
      ocfg.lr = pretrain_lr;
      ocfg.relative_step = false;
      ocfg.scale_parameter = true;
      Adafactor<float> opt(ocfg, ParamGroups::standard());
      ScheduleConfig scfg;
      scfg.kind = ScheduleKind::cosine;
      scfg.warmup_steps = std::min(50L, pretrain_steps / 10);
      scfg.total_steps = pretrain_steps;
      fs::create_directories(model_dir);
      TrainerOptions topt;
      topt.total_steps = pretrain_steps;
      topt.max_grad_norm = 1.0;
      topt.eval_every = std::max(1L, pretrain_steps / 5);
      topt.eval_metrics = {"task_loss"};
      topt.log_every = std::max(1L, pretrain_steps / 100);
      topt.metrics_csv = model_dir + "/metrics.csv";
      topt.progress = TrainerOptions::parse_progress(progress);
      t5.set_training(true);
      Trainer<float> trainer(params, opt, Schedule(scfg), topt, cb);
      const TrainSummary summary = trainer.train();
      t5.set_training(false);
      save_t5(t5, model_dir);
      plot::LinePlotOptions po;
      po.title = "T5 pretraining loss";
      po.x_label = "step";
      po.y_label = "cross-entropy of the targets (nats / byte)";
      plot::plot_lines(model_dir + "/loss", curves, po);
      std::printf("pretrained: %ld steps, %.0f tokens/s, final eval loss %.4f (text), %s/loss.png\n",
                  summary.step, summary.tokens / summary.seconds, summary.last_eval_loss, model_dir.c_str());
    }
    const T5Config cfg = read_t5_config(model_dir);
    if (cfg.vocab_size != Index(tok.vocab_size()) || cfg.pad_token_id != pad || cfg.eos_token_id != eos)
      throw ConfigError("the model in '" + model_dir + "' has vocabulary " + std::to_string(cfg.vocab_size) +
                        ", pad " + std::to_string(cfg.pad_token_id) + ", eos " +
                        std::to_string(cfg.eos_token_id) +
                        "; this example needs a byte-level T5 (258, pad 256, eos 257), as its stage 1 makes");
    long backbone = 0;  // parameters of the pretrained model itself (counted without allocating them)
    {
      auto plan = ParamStore<float>::declaration_only();
      T5<float> plain(cfg);
      Rng r(0);
      plain.register_params(plan, r);
      backbone = long(plan.num_values());
    }

    // ---- 3. stage 2: one run per seed and method ----------------------------------------------------------
    std::vector<examples::RunResult> results;
    std::vector<plot::PlotSeries> train_curves, eval_curves;
    for (const std::string& seed_text : seeds) {
      const std::uint64_t seed = std::stoull(seed_text);
      // 3a. data: the task families of this seed as source -> target pairs
      TaskSuiteConfig suite;
      suite.seed = seed;
      suite.train_per_task = std::size_t(train_per_task);
      std::vector<std::vector<Seq2SeqExample>> train(tasks.size()), eval_of(tasks.size());
      std::vector<std::vector<InstructionExample>> eval_ex(tasks.size());
      std::vector<Seq2SeqExample> eval_all;
      std::vector<Index> train_sizes;
      for (std::size_t k = 0; k < tasks.size(); ++k) {
        const TaskSplit split = make_task(tasks[k], suite);
        for (const auto& ex : split.train) train[k].push_back(tokenize_seq2seq(ex, tok, tmpl, eos, int(k)));
        for (const auto& ex : split.eval) {
          if (eval_ex[k].size() == std::size_t(eval_per_task)) break;
          eval_ex[k].push_back(ex);
          eval_of[k].push_back(tokenize_seq2seq(ex, tok, tmpl, eos, int(k)));
        }
        eval_all.insert(eval_all.end(), eval_of[k].begin(), eval_of[k].end());
        train_sizes.push_back(Index(train[k].size()));
        std::printf("task %-14s %5zu train, %3zu eval   e.g. %s | %s -> %s\n", tasks[k].c_str(),
                    train[k].size(), eval_ex[k].size(), split.train[0].instruction.c_str(),
                    split.train[0].input.c_str(), split.train[0].output.c_str());
      }
      for (const std::string& method : methods) {
        const std::string run = method + (seeds.size() > 1 ? "_s" + seed_text : "");
        std::printf("\n=== %s ===\n", run.c_str());
        // 3b. the model with the method's adapters, then the pretrained weights
        T5<float> t5(cfg);
        if (method == "ia3") {  // PEFT's T5 default: k, v, and wo as a feed-forward module (its input scaled)
          AdapterSpec spec;
          spec.kind = AdapterKind::ia3;
          TargetModules targets;
          targets.names = {"k", "v", "wo"};
          t5.inject(spec, targets);
        } else if (method == "mov") {  // k, v per head, and the intermediate activation
          t5.inject_mov(MoVConfig::for_ai(experts));
        } else if (method == "molora") {  // every linear, the router on the layer's input
          AdapterSpec spec;
          spec.kind = AdapterKind::molora;
          spec.experts = LoraExpertsConfig::for_ai(experts, expert_rank);
          TargetModules targets;
          targets.names = {"q", "k", "v", "o", "wi_0", "wi_1", "wo"};
          t5.inject(spec, targets);
        }
        ParamStore<float> params;
        Rng rng(seed);
        t5.register_params(params, rng);
        load_t5_weights(t5, model_dir);
        examples::RunResult res;
        res.run = run;
        res.method = method;
        res.policy = method == "base" ? "-" : "uniform";
        res.seed = seed;
        res.trainable = method == "base" ? 0 : long(params.num_trainable());
        res.share = 100.0 * double(res.trainable) / double(backbone);
        if (method != "base")
          std::printf("trainable parameters: %ld (%.2f%% of the model's %ld)\n", res.trainable, res.share,
                      backbone);

        T5<float>::Cache cache;
        t5.set_training(false);
        if (method == "base") {
          res.eval_loss = mean_loss(t5, eval_all, 4 * batch, pad);
        } else {
          // 3c. training: batches of pairs drawn evenly from the families, padded to the longest
          MultiDatasetSampler sampler(train_sizes, std::vector<double>(tasks.size(), 1.0), seed);
          TrainerCallbacks cb;
          cb.micro_batch = [&](long, long) {
            std::vector<Seq2SeqExample> rows;
            for (long b = 0; b < batch; ++b) {
              const SampleRef s = sampler.next();
              rows.push_back(train[std::size_t(s.dataset)][std::size_t(s.index)]);
            }
            const Seq2SeqBatch b = pad_seq2seq(rows, pad);
            const double loss = forward_batch(t5, b, cache) + cache.aux_loss;
            t5.backward(cache);
            return MicroBatchResult{loss, double(b.num_source_tokens() + b.num_target_tokens())};
          };
          cb.eval = [&](long) {
            t5.set_training(false);
            const double l = mean_loss(t5, eval_all, 4 * batch, pad);
            t5.set_training(true);
            return std::map<std::string, double>{{"loss", l}};
          };
          plot::PlotSeries train_curve{run, {}, {}}, eval_curve{run, {}, {}};
          cb.on_log = [&](const StepRecord& r) {
            train_curve.x.push_back(double(r.step));
            train_curve.y.push_back(r.loss);
            if (r.eval.count("loss")) {
              eval_curve.x.push_back(double(r.step));
              eval_curve.y.push_back(r.eval.at("loss"));
            }
          };
          // the recipe: Adafactor, decay rate 0.8, constant rate, no parameter scaling, no warm-up
          Adafactor<float> opt(AdafactorConfig::constant(lr_of.at(method)), ParamGroups::standard());
          fs::create_directories(out_dir + "/" + run);
          TrainerOptions topt;
          topt.total_steps = steps;
          topt.eval_every = eval_every > 0 ? eval_every : steps;
          topt.log_every = std::max(1L, steps / 60);
          topt.metrics_csv = out_dir + "/" + run + "/metrics.csv";
          topt.progress = TrainerOptions::parse_progress(progress);
          t5.set_training(true);
          Trainer<float> trainer(params, opt, Schedule(ScheduleConfig{}), topt, cb);
          const TrainSummary summary = trainer.train();
          t5.set_training(false);
          res.eval_loss = summary.last_eval_loss;
          res.tokens_per_s = summary.tokens / summary.seconds;
          train_curves.push_back(train_curve);
          eval_curves.push_back(eval_curve);
        }

        // 3d. exact match: greedy answers to the held-out prompts (cached decoder), checked by the task
        examples::add_exact_match(res, t5, tasks, eval_ex, tok, tmpl, eos, Index(max_new_tokens), 4 * batch);
        // 3e. routing: which experts each family uses, and each feed-forward router's load
        plot::write_routing_report(t5, tasks, eval_of, pad, out_dir + "/" + run, run);
        results.push_back(res);
      }
    }

    // ---- 4. the table and the plots -----------------------------------------------------------------------
    const std::string md = examples::write_results(out_dir, tasks, results, seeds);
    plot::LinePlotOptions po;
    po.x_label = "step";
    po.y_label = "cross-entropy of the answers (nats / byte)";
    po.title = "T5 fine-tuning: training loss";
    plot::plot_lines(out_dir + "/loss_train", train_curves, po);
    po.title = "T5 fine-tuning: held-out loss";
    plot::plot_lines(out_dir + "/loss_eval", eval_curves, po);
    std::printf(
        "\n%s\ntable:  %s/results.md (and results.csv)\nplots:  %s/loss_train.png, %s/loss_eval.png, "
        "%s/<run>/routing.png, %s/<run>/expert_load.png\n",
        md.c_str(), out_dir.c_str(), out_dir.c_str(), out_dir.c_str(), out_dir.c_str(), out_dir.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

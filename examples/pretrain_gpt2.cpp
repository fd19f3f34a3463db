// pemoe example: pretrain a small byte-level GPT-2 from scratch on this CPU.
//
// The model (default: 4 layers, 4 heads, width 256, context 128; about 3.2 M parameters) reads bytes: token
// b in 0..255 is the byte b and 256 is <|endoftext|>. It learns from two sources mixed by a seeded sampler:
//   - English text: the fortune cookies of the Debian packages `fortunes` and `fortunes-min`;
//   - a part of pemoe's offline task suite (by default the families `upper` and `count`), so the model has
//     seen the prompt format "instruction\ninput\nanswer<|endoftext|>" before it is fine-tuned on the other
//     families (examples/finetune_compare.cpp).
// It saves a Hugging Face GPT-2 directory (config.json + model.safetensors) that `transformers` loads, the
// metrics (CSV) and the loss curves (PNG).
//
//   ./build/examples/pemoe_pretrain_gpt2 --out runs/gpt2-tiny            (about 8 minutes on 2 cores)
//   ./build/examples/pemoe_pretrain_gpt2 --help
#include <CLI/CLI.hpp>
#include <pemoe/data/byte_tokenizer.hpp>
#include <pemoe/data/instruction.hpp>
#include <pemoe/data/packing.hpp>
#include <pemoe/data/sampler.hpp>
#include <pemoe/data/tasks.hpp>
#include <pemoe/models/generate.hpp>
#include <pemoe/models/gpt2_hf.hpp>
#include <pemoe/models/lm_eval.hpp>
#include <pemoe/train/adamw.hpp>
#include <pemoe/train/trainer.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "example_common.hpp"  // read_documents
#include "plot/plot.hpp"       // pemoe_plot (tools/plot): CSV + PNG

using namespace pemoe;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  // ---- 1. flags ----------------------------------------------------------------------------------------
  CLI::App app{"Pretrain a small byte-level GPT-2 on fortune-cookie text plus part of pemoe's task suite."};
  std::string out_dir = "runs/gpt2-tiny", corpus = "/usr/share/games/fortunes", task_list = "upper,count";
  long steps = 2000, batch = 16, seq_len = 128, n_layer = 4, n_head = 4, n_embd = 256, warmup = 30;
  long eval_every = 200, eval_blocks = 32, train_per_task = 4000;
  double lr = 1e-3, weight_decay = 0.1, task_fraction = 0.25, max_grad_norm = 1.0;
  std::uint64_t seed = 1;
  std::string progress = "auto";
  app.add_option("--out", out_dir, "output directory (Hugging Face GPT-2 layout, metrics, plots)")
      ->capture_default_str();
  app.add_option("--corpus", corpus,
                 "a text file, or a directory of fortune files (documents separated by %)")
      ->capture_default_str();
  app.add_option("--tasks", task_list, "task families mixed into pretraining (comma-separated)")
      ->capture_default_str();
  app.add_option("--task-fraction", task_fraction, "fraction of the batch rows drawn from the tasks")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--train-per-task", train_per_task, "training examples generated per task family")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--steps", steps, "optimizer steps")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--batch", batch, "sequences per step")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seq-len", seq_len, "tokens per sequence (= n_positions)")
      ->check(CLI::Range(8, 1024))
      ->capture_default_str();
  app.add_option("--n-layer", n_layer, "transformer blocks")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--n-head", n_head, "attention heads")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--n-embd", n_embd, "model width (a multiple of --n-head)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--lr", lr, "peak learning rate (AdamW)")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--warmup", warmup, "linear warm-up steps before the cosine decay")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--weight-decay", weight_decay, "AdamW weight decay (not on biases and LayerNorms)")
      ->capture_default_str();
  app.add_option("--max-grad-norm", max_grad_norm, "gradient clipping (0 = off)")->capture_default_str();
  app.add_option("--eval-every", eval_every, "evaluate every K steps (0 = only at the end)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--eval-blocks", eval_blocks, "held-out blocks of each source in an evaluation")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--seed", seed, "seed of the initialisation, the data split and the sampler")
      ->capture_default_str();
  app.add_option("--progress", progress, "progress display: auto, terminal, lines, off")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (n_embd % n_head != 0) {
    std::fprintf(stderr, "error: --n-embd %ld is not a multiple of --n-head %ld\n", n_embd, n_head);
    return 2;
  }

  try {
    // ---- 2. the text corpus: documents, every 20th held out ----------------------------------------------
    std::vector<std::string> train_docs, eval_docs;
    for (const std::string& doc : examples::read_documents(corpus))
      if (doc.size() > 1)
        ((train_docs.size() + eval_docs.size()) % 20 == 19 ? eval_docs : train_docs).push_back(doc);

    // ---- 3. tokens: text documents end in <|endoftext|>, packed into blocks of seq_len --------------------
    ByteTokenizer tok({"<|endoftext|>"});
    const std::int64_t eos = tok.special_id("<|endoftext|>");
    auto text_blocks = [&](const std::vector<std::string>& docs) {
      std::vector<std::int64_t> stream;
      for (const auto& d : docs) {
        for (TokenId t : tok.encode(d)) stream.push_back(t);
        stream.push_back(eos);
      }
      return pack_text(stream, seq_len, PackTail::pad, eos);
    };
    const TokenBatch text_train = text_blocks(train_docs),
                     text_eval = text_blocks(eval_docs);  // rows = blocks

    // The pretraining task families: prompt and answer both supervised (it is pretraining).
    TaskSuiteConfig suite;
    suite.seed = seed;
    suite.train_per_task = std::size_t(train_per_task);
    std::vector<TokenizedExample> task_train_ex, task_eval_ex;
    std::stringstream names(task_list);
    for (std::string name; std::getline(names, name, ',');) {
      const TaskSplit split = make_task(name, suite);
      for (const auto& ex : split.train)
        task_train_ex.push_back(tokenize_example(ex, tok, PromptTemplate{}, LossOn::all, eos));
      for (const auto& ex : split.eval)
        task_eval_ex.push_back(tokenize_example(ex, tok, PromptTemplate{}, LossOn::all, eos));
    }
    const TokenBatch task_train = pack_sequences(task_train_ex, seq_len, PackTail::pad, eos);
    const TokenBatch task_eval = pack_sequences(task_eval_ex, seq_len, PackTail::pad, eos);
    std::printf("corpus: %zu + %zu documents -> %zu train / %zu eval blocks of %ld tokens\n",
                train_docs.size(), eval_docs.size(), long(text_train.batch), long(text_eval.batch), seq_len);
    std::printf("tasks %s: %ld train / %ld eval blocks; %.0f%% of the rows\n", task_list.c_str(),
                long(task_train.batch), long(task_eval.batch), 100 * task_fraction);

    // ---- 4. the model: a fresh GPT-2, every parameter trainable ------------------------------------------
    GPT2Config gcfg;
    gcfg.n_layer = n_layer;
    gcfg.n_head = n_head;
    gcfg.n_embd = n_embd;
    gcfg.n_positions = seq_len;
    gcfg.vocab_size = Index(tok.vocab_size());
    gcfg.bos_token_id = gcfg.eos_token_id = Index(eos);
    gcfg.resid_pdrop = gcfg.embd_pdrop = gcfg.attn_pdrop = 0.0;  // a short run on plenty of data
    GPT2<float> gpt(gcfg);
    ParamStore<float> params;
    Rng rng(seed);
    gpt.register_params(params, rng);
    std::printf("GPT-2: %ld layers, %ld heads, width %ld, context %ld, vocabulary %ld: %.2f M parameters\n",
                n_layer, n_head, n_embd, seq_len, long(gcfg.vocab_size), double(params.num_values()) / 1e6);

    // ---- 5. training: rows drawn from text or tasks by a seeded sampler ----------------------------------
    MultiDatasetSampler sampler({text_train.batch, task_train.batch}, {1.0 - task_fraction, task_fraction},
                                seed);
    GPT2<float>::Cache cache;
    TrainerCallbacks cb;
    cb.micro_batch = [&](long, long) {
      std::vector<Index> text_rows, task_rows;  // B blocks, each from the source the sampler draws
      for (long b = 0; b < batch; ++b) {
        const SampleRef s = sampler.next();
        (s.dataset == 0 ? text_rows : task_rows).push_back(s.index);
      }
      TokenBatch tb = take_rows(text_train, text_rows);
      const TokenBatch tasks = take_rows(task_train, task_rows);
      tb.batch += tasks.batch;
      tb.ids.insert(tb.ids.end(), tasks.ids.begin(), tasks.ids.end());
      tb.labels.insert(tb.labels.end(), tasks.labels.begin(), tasks.labels.end());
      tb.attention_mask.insert(tb.attention_mask.end(), tasks.attention_mask.begin(),
                               tasks.attention_mask.end());
      const double loss = forward_batch(gpt, tb, cache) + cache.aux_loss;
      gpt.backward_over_logits(cache);  // the logits are not read after backward
      return MicroBatchResult{loss, double(tb.ids.size())};
    };
    auto held_out = [&](const TokenBatch& blocks) {  // the first eval_blocks rows
      std::vector<Index> rows;
      for (Index r = 0; r < std::min<Index>(blocks.batch, eval_blocks); ++r) rows.push_back(r);
      return take_rows(blocks, rows);
    };
    const auto text_held = held_out(text_eval), task_held = held_out(task_eval);
    cb.eval = [&](long) {
      gpt.set_training(false);
      std::map<std::string, double> m{{"loss", mean_loss(gpt, text_held, batch)}};
      if (task_held.batch > 0) m["task_loss"] = mean_loss(gpt, task_held, batch);
      gpt.set_training(true);
      return m;
    };
    std::vector<plot::PlotSeries> curves = {{"train", {}, {}}, {"eval text", {}, {}}, {"eval tasks", {}, {}}};
    cb.on_log = [&](const StepRecord& r) {
      curves[0].x.push_back(double(r.step));
      curves[0].y.push_back(r.loss);
      if (!r.eval.empty()) {
        curves[1].x.push_back(double(r.step));
        curves[1].y.push_back(r.eval.at("loss"));
        if (r.eval.count("task_loss")) {
          curves[2].x.push_back(double(r.step));
          curves[2].y.push_back(r.eval.at("task_loss"));
        }
      }
    };

    ParamGroups groups = ParamGroups::standard();  // no weight decay on biases and LayerNorm weights
    AdamWConfig ocfg;
    ocfg.lr = lr;
    ocfg.weight_decay = weight_decay;
    ocfg.beta2 = 0.99;
    AdamW<float> opt(ocfg, groups);
    ScheduleConfig scfg;
    scfg.kind = ScheduleKind::cosine;
    scfg.warmup_steps = warmup;
    scfg.total_steps = steps;
    fs::create_directories(out_dir);
    TrainerOptions topt;
    topt.total_steps = steps;
    topt.max_grad_norm = max_grad_norm;
    topt.eval_every = eval_every > 0 ? eval_every : steps;
    topt.eval_metrics = {"task_loss"};
    topt.log_every = std::max(1L, steps / 100);
    topt.metrics_csv = out_dir + "/metrics.csv";
    topt.progress = TrainerOptions::parse_progress(progress);
    gpt.set_training(true);
    Trainer<float> trainer(params, opt, Schedule(scfg), topt, cb);
    const TrainSummary summary = trainer.train();
    gpt.set_training(false);

    // ---- 6. save: the Hugging Face directory, the tokenizer's description, the loss curves ----------------
    save_gpt2(gpt, out_dir);
    {
      std::ofstream t(out_dir + "/pemoe_tokenizer.json");
      t << "{\"type\": \"bytes\", \"special_tokens\": [\"<|endoftext|>\"], \"eos_token_id\": " << eos
        << "}\n";
    }
    plot::LinePlotOptions po;
    po.title = "pretraining loss";
    po.x_label = "step";
    po.y_label = "cross-entropy (nats / byte)";
    const plot::PlotFiles loss_png = plot::plot_lines(out_dir + "/loss", curves, po);

    // A greedy continuation, to see what it learnt.
    GenerateOptions g;
    g.max_new_tokens = std::min<Index>(80, seq_len - 8);
    g.eos_token_ids = {eos};
    const std::string prompt = "The ";
    const std::vector<TokenId> prompt_ids = tok.encode(prompt);
    const std::vector<std::int64_t> p(prompt_ids.begin(), prompt_ids.end());
    const auto gen = generate(gpt, {p}, g);
    std::vector<TokenId> gen_ids(gen[0].begin(), gen[0].end());
    std::printf("\nsample: \"%s%s\"\n", prompt.c_str(), tok.decode(gen_ids, true).c_str());
    std::printf("\n%ld steps, %.0f tokens in %.0f s (%.0f tokens/s); final train loss %.4f, eval loss %.4f\n",
                summary.step, summary.tokens, summary.seconds, summary.tokens / summary.seconds,
                summary.last_loss, summary.last_eval_loss);
    std::printf("model:   %s/ (config.json, model.safetensors)\nmetrics: %s\nplot:    %s\n", out_dir.c_str(),
                topt.metrics_csv.c_str(), loss_png.png.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

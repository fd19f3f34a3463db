// The results table of the fine-tuning comparisons (finetune_compare, finetune_t5): one row per run (method,
// mixing policy, seed) with its trainable parameters, held-out loss, exact match per task family and training
// speed, as Markdown and CSV, and with several seeds the mean ± standard deviation per method and policy.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/data/instruction.hpp"
#include "pemoe/data/tasks.hpp"

namespace pemoe::examples {

/// One fine-tuning run of a comparison.
struct RunResult {
  std::string run;           ///< the run's name (its directory under --out)
  std::string method;        ///< base (no fine-tuning), full, lora, ia3, mov, molora, ...
  std::string policy = "-";  ///< the data-mixing policy ("-" for base)
  std::uint64_t seed = 0;
  long trainable = 0;       ///< trainable parameters
  double share = 0;         ///< trainable parameters in % of the model's
  double eval_loss = 0;     ///< held-out loss after training
  double tokens_per_s = 0;  ///< training speed
  double mean_em = 0;       ///< mean exact match over the families, %
  std::vector<double> em;   ///< exact match per task family, %
};

/**
 * @brief Exact match of `model`'s greedy answers (`greedy_answers` of lm_eval.hpp or t5_eval.hpp, whichever
 * fits the model) to the held-out examples of each family, checked by the task's own checker: appends the
 * percentage per family to `res.em`, adds their mean to `res.mean_em` and prints a line per family.
 */
template <class Model, class Tokenizer>
void add_exact_match(RunResult& res, Model& model, const std::vector<std::string>& tasks,
                     const std::vector<std::vector<InstructionExample>>& eval_ex, const Tokenizer& tok,
                     const PromptTemplate& tmpl, std::int64_t eos, Index max_new_tokens, Index batch) {
  for (std::size_t k = 0; k < tasks.size(); ++k) {
    const std::vector<std::string> answers =
        greedy_answers(model, eval_ex[k], tok, tmpl, eos, max_new_tokens, batch);
    double right = 0;
    for (std::size_t i = 0; i < answers.size(); ++i)
      right += check_answer(tasks[k], eval_ex[k][i], answers[i]);
    res.em.push_back(answers.empty() ? 0.0 : 100.0 * right / double(answers.size()));
    res.mean_em += res.em.back() / double(tasks.size());
    if (!answers.empty())
      std::printf("  %-14s exact match %5.1f%%   e.g. %s -> \"%s\" (want \"%s\")\n", tasks[k].c_str(),
                  res.em.back(), eval_ex[k][0].input.c_str(), answers[0].c_str(),
                  eval_ex[k][0].output.c_str());
  }
}

/// "m ± s" of `v` (sample standard deviation) with `digits` decimals.
inline std::string mean_sd(const std::vector<double>& v, int digits = 1) {
  double m = 0, q = 0;
  for (double x : v) m += x / double(v.size());
  for (double x : v) q += (x - m) * (x - m);
  char b[64];
  std::snprintf(b, sizeof b, "%.*f ± %.*f", digits, m, digits,
                v.size() > 1 ? std::sqrt(q / double(v.size() - 1)) : 0.0);
  return b;
}

/**
 * @brief Writes `out_dir`/results.md and results.csv and returns the Markdown: a row per run; with more than
 * one seed, a second table of mean ± standard deviation over the seeds per (method, policy).
 */
inline std::string write_results(const std::string& out_dir, const std::vector<std::string>& tasks,
                                 const std::vector<RunResult>& results,
                                 const std::vector<std::string>& seeds) {
  std::ostringstream md;
  md << "| run | trainable params | % of model | eval loss |";
  for (const auto& t : tasks) md << " EM " << t << " |";
  md << " mean EM | train tokens/s |\n|---|---:|---:|---:|";
  for (std::size_t k = 0; k < tasks.size(); ++k) md << "---:|";
  md << "---:|---:|\n";
  std::ofstream csv(out_dir + "/results.csv");
  csv << "run,method,mixing,seed,trainable,percent,eval_loss";
  for (const auto& t : tasks) csv << ",em_" << t;
  csv << ",mean_em,tokens_per_s\n";
  char buf[128];
  for (const RunResult& r : results) {
    std::snprintf(buf, sizeof buf, "| %s | %ld | %.2f | %.4f |", r.run.c_str(), r.trainable, r.share,
                  r.eval_loss);
    md << buf;
    csv << r.run << "," << r.method << "," << r.policy << "," << r.seed << "," << r.trainable << ","
        << r.share << "," << r.eval_loss;
    for (double e : r.em) {
      std::snprintf(buf, sizeof buf, " %.1f |", e);
      md << buf;
      csv << "," << e;
    }
    if (r.method == "base")
      std::snprintf(buf, sizeof buf, " **%.1f** | - |\n", r.mean_em);
    else
      std::snprintf(buf, sizeof buf, " **%.1f** | %.0f |\n", r.mean_em, r.tokens_per_s);
    md << buf;
    csv << "," << r.mean_em << "," << r.tokens_per_s << "\n";
  }
  if (seeds.size() > 1) {
    md << "\nMean ± standard deviation over the seeds " << seeds.front() << " to " << seeds.back()
       << " (exact match in %, eval loss):\n\n";
    md << "| method | mixing |";
    for (const auto& t : tasks) md << " EM " << t << " |";
    md << " mean EM | eval loss |\n|---|---|";
    for (std::size_t k = 0; k < tasks.size(); ++k) md << "---:|";
    md << "---:|---:|\n";
    std::vector<std::pair<std::string, std::string>> groups;
    for (const RunResult& r : results)
      if (std::find(groups.begin(), groups.end(), std::make_pair(r.method, r.policy)) == groups.end())
        groups.push_back({r.method, r.policy});
    for (const auto& [method, policy] : groups) {
      std::vector<std::vector<double>> em(tasks.size());
      std::vector<double> mean_em, loss;
      for (const RunResult& r : results)
        if (r.method == method && r.policy == policy) {
          for (std::size_t k = 0; k < tasks.size(); ++k) em[k].push_back(r.em[k]);
          mean_em.push_back(r.mean_em);
          loss.push_back(r.eval_loss);
        }
      md << "| " << method << " | " << policy << " |";
      for (const auto& v : em) md << " " << mean_sd(v) << " |";
      md << " **" << mean_sd(mean_em) << "** | " << mean_sd(loss, 3) << " |\n";
    }
  }
  std::ofstream(out_dir + "/results.md") << md.str();
  return md.str();
}

}  // namespace pemoe::examples

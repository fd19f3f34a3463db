// `pemoe tasks --out DIR [--seed S] [--train N] [--eval N] [--tasks a,b,c] [--max-add-digits D]
// [--words FILE] [--iso-codes DIR]`: writes the offline task suite (data/tasks.hpp) as JSON lines,
// DIR/<task>.train.jsonl and DIR/<task>.eval.jsonl, and prints one row per task.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "../cli.hpp"
#include "../table.hpp"
#include "pemoe/data/instruction.hpp"
#include "pemoe/data/tasks.hpp"

namespace pemoe::cli {
namespace {

struct TasksOptions {
  std::string out, tasks;
  TaskSuiteConfig cfg;
};

// "a, b,c" -> {"a", "b", "c"}; every name must be a task family (`UsageError` naming the word otherwise).
std::vector<std::string> parse_tasks(const std::string& text) {
  const std::vector<std::string> known = task_names();
  if (text.empty()) return known;
  std::vector<std::string> names;
  for (const std::string& word : detail::split_words(text)) {
    if (std::find(known.begin(), known.end(), word) == known.end())
      throw UsageError("--tasks: unknown task '" + word + "'" + detail::suggestion(word, known));
    if (std::find(names.begin(), names.end(), word) == names.end()) names.push_back(word);
  }
  return names;
}

int run_tasks(const TasksOptions& o) {
  const std::vector<std::string> names = parse_tasks(o.tasks);
  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  if (ec) throw RuntimeError("cannot create the directory '" + o.out + "': " + ec.message());
  Table table({"task", "instruction", "items", "train", "eval", "example"},
              {false, false, true, true, true, false});
  std::size_t total_train = 0, total_eval = 0;
  for (const std::string& name : names) {
    const TaskSplit split = make_task(name, o.cfg);
    const std::string base = (std::filesystem::path(o.out) / name).string();
    write_jsonl(base + ".train.jsonl", split.train);
    write_jsonl(base + ".eval.jsonl", split.eval);
    const std::string items =
        is_lookup_task(name) ? thousands(static_cast<long long>(lookup_items(name, o.cfg).size())) : "-";
    std::string example;
    if (!split.eval.empty()) example = split.eval.front().input + " -> " + split.eval.front().output;
    table.add({name, task_instruction(name), items, thousands(static_cast<long long>(split.train.size())),
               thousands(static_cast<long long>(split.eval.size())), example});
    total_train += split.train.size();
    total_eval += split.eval.size();
  }
  table.total({"total (" + plural(names.size(), "task") + ")", "", "",
               thousands(static_cast<long long>(total_train)), thousands(static_cast<long long>(total_eval)),
               ""});
  std::cout << "wrote " << plural(2 * names.size(), "file") << " to '" << o.out << "' (seed " << o.cfg.seed
            << ")\n\n";
  table.print(std::cout);
  return 0;
}

void setup_tasks(CLI::App& cmd) {
  auto o = std::make_shared<TasksOptions>();
  cmd.add_option("--out", o->out, "the directory to write the jsonl files to (created if missing)")
      ->required()
      ->type_name("DIR");
  cmd.add_option("--seed", o->cfg.seed, "seed of every draw (default 1234)")->type_name("S");
  cmd.add_option("--train", o->cfg.train_per_task, "training examples per task (default 2000)")
      ->type_name("N")
      ->check(integer_in(0, 100000000));
  cmd.add_option("--eval", o->cfg.eval_per_task, "evaluation examples per task (default 200)")
      ->type_name("N")
      ->check(integer_in(0, 100000000));
  cmd.add_option("--tasks", o->tasks,
                 "comma-separated task names (default: all: " + detail::join(task_names(), ",") + ")")
      ->type_name("LIST");
  cmd.add_option("--max-add-digits", o->cfg.max_add_digits, "digits of the operands of 'add' (default 4)")
      ->type_name("D")
      ->check(integer_in(1, 18));
  cmd.add_option("--words", o->cfg.words_file,
                 "the word list (default /usr/share/dict/words, package wamerican)")
      ->type_name("FILE");
  cmd.add_option("--iso-codes", o->cfg.iso_codes_dir,
                 "the iso-codes JSON directory (default /usr/share/iso-codes/json, package iso-codes)")
      ->type_name("DIR");
  cmd.footer(
      "Writes DIR/<task>.train.jsonl and DIR/<task>.eval.jsonl for each task: one JSON object per line with\n"
      "the string fields instruction, input, output and task. Train and eval share no input; the same seed\n"
      "gives the same bytes on every machine. Look-up tasks (country_code, currency_code, language_code) "
      "put\n"
      "a fifth of their table (at most --eval items) in eval and repeat the rest to fill --train.");
  set_action(cmd, [o] { return run_tasks(*o); });
}

[[maybe_unused]] const bool registered_tasks = register_command(
    {"tasks", "write the offline task suite (exactly checkable tasks) as jsonl", setup_tasks});

}  // namespace
}  // namespace pemoe::cli

// The offline task suite (data/tasks.hpp): generators deterministic by seed, disjoint train / eval inputs,
// sizes as configured, checkers that accept the right answers and reject near misses, and missing data files
// reported with the Debian package to install.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "pemoe/data/tasks.hpp"

using namespace pemoe;

namespace {

// Small sizes keep the test fast; the word list and the iso-codes tables are the real Debian files.
TaskSuiteConfig small_config(std::uint64_t seed = 7) {
  TaskSuiteConfig cfg;
  cfg.seed = seed;
  cfg.train_per_task = 300;
  cfg.eval_per_task = 40;
  return cfg;
}

// Near misses of a right answer: each must be rejected.
std::vector<std::string> mutations(const std::string& right) {
  std::vector<std::string> out = {"", right + "x", "x" + right, right.substr(0, right.size() - 1)};
  // off by one in the last character (a digit stays a digit, a letter a letter)
  std::string m = right;
  char& c = m.back();
  c = (c == '9' || c == 'z' || c == 'Z') ? static_cast<char>(c - 1) : static_cast<char>(c + 1);
  out.push_back(m);
  // swap of the first two different characters
  for (std::size_t i = 1; i < right.size(); ++i) {
    if (right[i] != right[0]) {
      std::string s = right;
      std::swap(s[0], s[i]);
      out.push_back(s);
      break;
    }
  }
  // the case of one letter flipped
  for (std::size_t i = 0; i < right.size(); ++i) {
    const char ch = right[i];
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) {
      std::string s = right;
      s[i] = static_cast<char>(ch ^ 0x20);
      out.push_back(s);
      break;
    }
  }
  out.push_back(" " + right);  // leading space is not trimmed
  return out;
}

}  // namespace

TEST_CASE("tasks: families are listed in a stable order with distinct instructions", "[tasks]") {
  const std::vector<std::string> names = task_names();
  CHECK(names == std::vector<std::string>{"add", "reverse", "sort", "upper", "count", "country_code",
                                          "currency_code", "language_code"});
  std::set<std::string> instructions;
  for (const auto& n : names) {
    const std::string ins = task_instruction(n);
    CHECK(!ins.empty());
    CHECK(ins.size() <= 40);
    instructions.insert(ins);
  }
  CHECK(instructions.size() == names.size());
  CHECK(task_instruction("add") == "Add the numbers.");
  CHECK(is_lookup_task("country_code"));
  CHECK_FALSE(is_lookup_task("reverse"));
}

TEST_CASE("tasks: an unknown family is a ConfigError listing the known ones", "[tasks]") {
  try {
    make_task("addition", small_config());
    FAIL("no exception");
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    CHECK(what.find("'addition'") != std::string::npos);
    CHECK(what.find("add, reverse, sort, upper, count, country_code, currency_code, language_code") !=
          std::string::npos);
  }
  CHECK_THROWS_AS(task_instruction("nope"), ConfigError);
  InstructionExample ex{"x", "1+1", "2", "add"};
  CHECK_THROWS_AS(check_answer("nope", ex, "2"), ConfigError);
  CHECK_THROWS_AS(check_answer("reverse", ex, "2"), ConfigError);  // ex.task names another family
  TaskSuiteConfig bad = small_config();
  bad.max_add_digits = 0;
  CHECK_THROWS_AS(make_task("add", bad), ConfigError);
  bad = small_config();
  bad.lookup_eval_fraction = 1.0;
  CHECK_THROWS_AS(make_task("country_code", bad), ConfigError);
}

TEST_CASE("tasks: the computed answers", "[tasks]") {
  CHECK(task_answer("add", "4821+937") == "5758");
  CHECK(task_answer("add", "0+0") == "0");
  CHECK(task_answer("add", "999999999999999999+1") == "1000000000000000000");
  CHECK(task_answer("reverse", "planet") == "tenalp");
  CHECK(task_answer("sort", "planet") == "aelnpt");
  CHECK(task_answer("upper", "planet") == "PLANET");
  CHECK(task_answer("count", "planet") == "2");
  CHECK(task_answer("count", "rhythm") == "0");
  CHECK(task_answer("count", "queueing") == "5");
  CHECK_THROWS_AS(task_answer("add", "12-3"), ConfigError);
  CHECK_THROWS_AS(task_answer("add", "+3"), ConfigError);
  CHECK_THROWS_AS(task_answer("country_code", "Norway"), ConfigError);
}

TEST_CASE("tasks: the look-up tables", "[tasks]") {
  const auto countries = lookup_items("country_code");
  const auto currencies = lookup_items("currency_code");
  const auto languages = lookup_items("language_code");
  CHECK(countries.size() > 200);
  CHECK(currencies.size() > 120);
  CHECK(languages.size() > 300);
  auto code_of = [](const std::vector<LookupItem>& t, const std::string& name) {
    for (const auto& it : t)
      if (it.name == name) return it.code;
    return std::string("(none)");
  };
  CHECK(code_of(countries, "Norway") == "NOR");
  CHECK(code_of(currencies, "Swiss Franc") == "CHF");
  CHECK(code_of(languages, "German") == "deu");
  for (const auto* t : {&countries, &currencies, &languages}) {
    std::set<std::string> names;
    for (const auto& it : *t) {
      CHECK(it.name.size() <= 40);
      CHECK(it.code.size() == 3);
      CHECK(it.name.find(';') == std::string::npos);
      names.insert(it.name);
    }
    CHECK(names.size() == t->size());  // a name has one answer
  }
  CHECK_THROWS_AS(lookup_items("add"), ConfigError);
}

TEST_CASE("tasks: generation is deterministic by seed", "[tasks]") {
  for (const auto& name : task_names()) {
    INFO(name);
    const TaskSplit a = make_task(name, small_config(7));
    const TaskSplit b = make_task(name, small_config(7));
    const TaskSplit c = make_task(name, small_config(8));
    CHECK(a.train == b.train);
    CHECK(a.eval == b.eval);
    CHECK(write_jsonl_string(a.train) == write_jsonl_string(b.train));
    CHECK(a.train != c.train);
    CHECK(a.eval != c.eval);
  }
}

TEST_CASE("tasks: the first examples of seed 1234 are fixed", "[tasks]") {
  // Guards the draw order on every machine (the counter-based Rng, no std:: distribution). `add` depends on
  // nothing else; the other two also on the Debian 12 data (wamerican 2020.12.07, iso-codes 4.15).
  TaskSuiteConfig cfg;
  cfg.train_per_task = 3;
  cfg.eval_per_task = 3;
  const TaskSplit add = make_task("add", cfg);
  std::vector<std::string> eval_inputs, train_inputs;
  for (const auto& ex : add.eval) eval_inputs.push_back(ex.input);
  for (const auto& ex : add.train) train_inputs.push_back(ex.input);
  CHECK(eval_inputs == std::vector<std::string>{"6559+3897", "284+32", "4+16"});
  CHECK(train_inputs == std::vector<std::string>{"502+260", "68+643", "6+97"});
  CHECK(add.eval[0] == InstructionExample{"Add the numbers.", "6559+3897", "10456", "add"});
  CHECK(make_task("reverse", cfg).eval[0].input == "truncating");
  CHECK(make_task("country_code", cfg).eval[0] ==
        InstructionExample{"Give the ISO code of the country.", "Guinea", "GIN", "country_code"});
}

TEST_CASE("tasks: sizes as configured; eval does not depend on the train size", "[tasks]") {
  TaskSuiteConfig cfg = small_config();
  TaskSuiteConfig more = cfg;
  more.train_per_task = 2500;  // more than any look-up table: the items repeat
  for (const auto& name : task_names()) {
    INFO(name);
    const TaskSplit a = make_task(name, cfg);
    const TaskSplit b = make_task(name, more);
    CHECK(a.train.size() == cfg.train_per_task);
    CHECK(b.train.size() == more.train_per_task);
    std::size_t n_eval = cfg.eval_per_task;
    if (is_lookup_task(name))  // at most a fifth of the table
      n_eval = std::min(n_eval, lookup_items(name).size() / 5);
    CHECK(a.eval.size() == n_eval);
    CHECK(a.eval == b.eval);
    for (const auto& ex : a.train) {
      CHECK(ex.task == name);
      CHECK(ex.instruction == task_instruction(name));
      CHECK(ex.input.size() <= 40);
      CHECK(ex.output.size() <= 24);
      CHECK(!ex.output.empty());
    }
  }
  // The look-up tables are smaller than the default eval size: eval takes a fraction of the items.
  TaskSuiteConfig dflt;
  dflt.train_per_task = 10;
  const auto n_countries = lookup_items("country_code").size();
  const TaskSplit countries = make_task("country_code", dflt);
  CHECK(countries.eval.size() == static_cast<std::size_t>(0.2 * static_cast<double>(n_countries)));
  // With 1-digit operands there are only 100 sums: eval takes at most half of them.
  TaskSuiteConfig tiny = small_config();
  tiny.max_add_digits = 1;
  tiny.eval_per_task = 200;
  const TaskSplit add1 = make_task("add", tiny);
  CHECK(add1.eval.size() == 50);
  CHECK(add1.train.size() == tiny.train_per_task);
  // Zero of each is allowed.
  TaskSuiteConfig none = small_config();
  none.train_per_task = 0;
  none.eval_per_task = 0;
  for (const auto& name : task_names()) {
    const TaskSplit s = make_task(name, none);
    CHECK(s.train.empty());
    CHECK(s.eval.empty());
  }
}

TEST_CASE("tasks: train and eval share no input", "[tasks]") {
  TaskSuiteConfig cfg = small_config();
  cfg.train_per_task = 2500;
  for (const auto& name : task_names()) {
    INFO(name);
    const TaskSplit s = make_task(name, cfg);
    std::set<std::string> eval_inputs;
    for (const auto& ex : s.eval) eval_inputs.insert(ex.input);
    CHECK(eval_inputs.size() == s.eval.size());  // eval inputs are distinct
    for (const auto& ex : s.train) CHECK(eval_inputs.count(ex.input) == 0);
  }
  // Every look-up item is used: each one is in eval or in train.
  const TaskSplit langs = make_task("language_code", cfg);
  std::set<std::string> seen;
  for (const auto& ex : langs.train) seen.insert(ex.input);
  for (const auto& ex : langs.eval) seen.insert(ex.input);
  CHECK(seen.size() == lookup_items("language_code").size());
}

TEST_CASE("tasks: words follow the documented filter", "[tasks]") {
  const auto words = load_task_words(TaskSuiteConfig{}.words_file);
  CHECK(words.size() > 10000);
  for (const auto& w : words) {
    CHECK(w.size() >= 3);
    CHECK(w.size() <= 10);
    CHECK(std::all_of(w.begin(), w.end(), [](char c) { return c >= 'a' && c <= 'z'; }));
  }
}

TEST_CASE("tasks: the checker accepts every generated answer and rejects near misses", "[tasks]") {
  const TaskSuiteConfig cfg = small_config();
  for (const auto& name : task_names()) {
    INFO(name);
    const TaskSplit s = make_task(name, cfg);
    std::size_t rejected = 0, mutated = 0;
    for (const auto* part : {&s.train, &s.eval}) {
      for (const auto& ex : *part) {
        INFO(ex.input << " -> " << ex.output);
        CHECK(check_answer(name, ex, ex.output));
        CHECK(check_answer(ex, ex.output));
        CHECK(check_answer(name, ex, ex.output + "\n"));
        CHECK(check_answer(name, ex, ex.output + " \r\n\t"));
        for (const std::string& m : mutations(ex.output)) {
          if (m == ex.output) continue;  // e.g. a swap in "aa"
          ++mutated;
          if (!check_answer(name, ex, m))
            ++rejected;
          else
            FAIL_CHECK("accepted '" << m << "' for '" << ex.input << "' (right: '" << ex.output << "')");
        }
      }
    }
    CHECK(mutated > 0);
    CHECK(rejected == mutated);
  }
}

TEST_CASE("tasks: computed families check against the input, not the stored output", "[tasks]") {
  InstructionExample ex{"Add the numbers.", "4821+937", "5757", "add"};  // a corrupted output
  CHECK(check_answer(ex, "5758"));
  CHECK_FALSE(check_answer(ex, "5757"));
  InstructionExample rev{"Reverse the word.", "planet", "planet", "reverse"};
  CHECK(check_answer(rev, "tenalp"));
  CHECK_FALSE(check_answer(rev, "planet"));
  CHECK_FALSE(check_answer(rev, "TENALP"));
  InstructionExample up{"Write in capitals.", "planet", "", "upper"};
  CHECK(check_answer(up, "PLANET"));
  CHECK_FALSE(check_answer(up, "Planet"));
  // Look-up families compare with the table's code, case included.
  InstructionExample cc{"Give the ISO code of the country.", "Norway", "NOR", "country_code"};
  CHECK(check_answer(cc, "NOR\n"));
  CHECK_FALSE(check_answer(cc, "nor"));
  CHECK_FALSE(check_answer(cc, "NO"));
}

TEST_CASE("tasks: a missing data file names the file and the Debian package", "[tasks]") {
  TaskSuiteConfig cfg = small_config();
  cfg.words_file = "/nonexistent/pemoe/words";
  cfg.iso_codes_dir = "/nonexistent/pemoe/iso";
  auto message_of = [&](const std::string& task) {
    try {
      make_task(task, cfg);
    } catch (const IoError& e) {
      return std::string(e.what());
    }
    return std::string("(no IoError)");
  };
  const std::string words = message_of("reverse");
  CHECK(words.find("/nonexistent/pemoe/words") != std::string::npos);
  CHECK(words.find("apt-get install wamerican") != std::string::npos);
  const std::string iso = message_of("currency_code");
  CHECK(iso.find("/nonexistent/pemoe/iso/iso_4217.json") != std::string::npos);
  CHECK(iso.find("apt-get install iso-codes") != std::string::npos);
  CHECK_NOTHROW(make_task("add", cfg));  // add needs no file

  // A file that is there but holds no usable data.
  const std::string path = "pemoe_test_tasks_empty_words.txt";
  {
    std::ofstream out(path);
    out << "A\nab\nDon't\nelevenletter\n";
  }
  cfg.words_file = path;
  CHECK_THROWS_AS(make_task("sort", cfg), IoError);
  std::remove(path.c_str());
}

TEST_CASE("tasks: make_tasks concatenates the chosen families", "[tasks]") {
  const TaskSuiteConfig cfg = small_config();
  const TaskSplit both = make_tasks({"upper", "count"}, cfg);
  const TaskSplit upper = make_task("upper", cfg);
  const TaskSplit count = make_task("count", cfg);
  REQUIRE(both.train.size() == upper.train.size() + count.train.size());
  REQUIRE(both.eval.size() == upper.eval.size() + count.eval.size());
  CHECK(std::equal(upper.train.begin(), upper.train.end(), both.train.begin()));
  CHECK(std::equal(count.eval.begin(), count.eval.end(), both.eval.begin() + upper.eval.size()));
}

TEST_CASE("tasks: mixing probes are held-out examples exact match does not read, topped up from train",
          "[tasks]") {
  TaskSplit split;
  for (int i = 0; i < 5; ++i) split.train.push_back({"t", "train" + std::to_string(i), "x", ""});
  for (int i = 0; i < 4; ++i) split.eval.push_back({"t", "eval" + std::to_string(i), "x", ""});
  std::vector<InstructionExample> p = mixing_probe_examples(split, 2, 2);
  REQUIRE(p.size() == 2);
  CHECK(p[0].input == "eval2");
  CHECK(p[1].input == "eval3");
  p = mixing_probe_examples(split, 3, 4);  // one held-out example left: three from the start of train
  REQUIRE(p.size() == 4);
  CHECK(p[0].input == "eval3");
  CHECK(p[1].input == "train0");
  CHECK(p[3].input == "train2");
  CHECK(mixing_probe_examples(split, 10, 20).size() == 5);  // all of train, nothing else left
}

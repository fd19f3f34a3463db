/// @file tasks.hpp
/// @brief An offline suite of instruction tasks whose answers can be checked exactly: arithmetic and word
/// games computed by the program, and ISO code look-ups read from Debian's data packages.
///
/// Eight task families, each with its own short English instruction so that a router (or a human) can tell
/// them apart from the instruction alone. Inputs are at most 40 bytes and answers at most 19 bytes, so a
/// byte-level model with a 128-token context sees the instruction, the input and the answer together.
///
/// | family | instruction | input | output | source |
/// |---|---|---|---|---|
/// | `add` | Add the numbers. | `4821+937` | `5758` | computed (operands of 1 to `max_add_digits` digits) |
/// | `reverse` | Reverse the word. | `planet` | `tenalp` | word list (package `wamerican`) |
/// | `sort` | Sort the letters. | `planet` | `aelnpt` | word list |
/// | `upper` | Write in capitals. | `planet` | `PLANET` | word list |
/// | `count` | Count the vowels. | `planet` | `2` | word list (vowels: a, e, i, o, u) |
/// | `country_code` | Give the ISO code of the country. | `Norway` | `NOR` | ISO 3166-1 alpha-3 (package
/// `iso-codes`) | | `currency_code` | Give the currency code. | `Swiss Franc` | `CHF` | ISO 4217 alpha-3
/// (`iso-codes`) | | `language_code` | Give the language code. | `Swedish` | `swe` | ISO 639-2 alpha-3
/// (`iso-codes`) |
///
/// **Files.** The word list is `/usr/share/dict/words` (Debian package `wamerican`); its lowercase ASCII
/// words of 3 to 10 letters are used, in file order. The look-up tables are `iso_3166-1.json`,
/// `iso_4217.json` and `iso_639-2.json` in `/usr/share/iso-codes/json` (package `iso-codes`). Both paths are
/// fields of `TaskSuiteConfig`; a missing file is an `IoError` that names the file and the package to
/// install.
///
/// **Look-up tables.** An entry's name is its `common_name` when it has one, else its `name`. An entry is
/// kept when that name is printable ASCII of at most 40 bytes without `;`, `,` or `(` (so it is one simple
/// name, not a list of variants) and its `alpha_3` code is three ASCII letters; names that occur twice are
/// dropped (the answer must be unique). With the iso-codes of Debian 12 that leaves 230 countries, 166
/// currencies and 401 languages (`lookup_items` returns them). For the 20 languages with two ISO 639-2 codes
/// the answer is the terminology code, the file's `alpha_3` (`deu` for German, not the bibliographic `ger`).
///
/// **Splits.** Everything is a pure function of the seed and the data files: the counter-based `Rng`
/// (never a `std::` distribution, whose output is implementation-defined) draws from one stream per family
/// and purpose, so the same seed gives byte-identical examples on every machine. Train and eval never share
/// an input, and the eval set is drawn first from its own stream, so it does not change when
/// `train_per_task` does.
/// - `add`: eval is `eval_per_task` distinct random sums (at most half of all possible ones), train is
///   `train_per_task` random sums whose input is not in eval (train may repeat a sum).
/// - word families: the word list is shuffled; eval is its first `min(eval_per_task, words/2)` words, train
///   walks through the other words in shuffled order, reshuffling and starting again when it needs more.
/// - look-up families: the table is shuffled; eval is its first `min(eval_per_task, lookup_eval_fraction ·
///   items)` entries, train cycles through the others like the word families (so with the default 2000
///   train examples every country appears about 10 times). Tables are smaller than the defaults ask: all
///   their items are used. The eval entries are countries, currencies and languages never seen in training,
///   so these families are only partly learnable: an alpha-3 code is often the first letters of the name
///   (`Norway` → `NOR`, `Swiss Franc` → `CHF`, `Swedish` → `swe`), which is the structure a model can learn.
///
/// Which families pretrain a model and which fine-tune it is the caller's choice: `make_tasks` takes any
/// list of names (e.g. `upper` and `count` mixed into pretraining text, the rest held out for adapters).
///
/// **jsonl format.** A split is written one JSON object per line (`write_jsonl` of `instruction.hpp`), with
/// four string fields: `instruction` (the family's instruction), `input`, `output` (the exact answer) and
/// `task` (the family's name), e.g.
/// `{"instruction": "Add the numbers.", "input": "4821+937", "output": "5758", "task": "add"}`
/// (`write_jsonl` writes the keys in this order; a reader must not depend on it). `pemoe tasks --out DIR`
/// writes `DIR/<task>.train.jsonl` and `DIR/<task>.eval.jsonl` for every family.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/data/instruction.hpp"

namespace pemoe {

/// What the task suite generates and where it reads its data (see the file comment for the rules).
struct TaskSuiteConfig {
  /// Seed of every draw: same seed and same data files give byte-identical examples.
  std::uint64_t seed = 1234;
  /// Training examples per family (look-up families repeat their items to reach it).
  std::size_t train_per_task = 2000;
  /// Evaluation examples per family (fewer when the family has fewer distinct inputs, see the file comment).
  std::size_t eval_per_task = 200;
  /// `add`: each operand has 1 to `max_add_digits` digits (the count drawn uniformly); 1 to 18.
  int max_add_digits = 4;
  /// Look-up families: at most this fraction of the table goes to eval, in [0, 1).
  double lookup_eval_fraction = 0.2;
  /// The word list (Debian package `wamerican`).
  std::string words_file = "/usr/share/dict/words";
  /// The directory of the iso-codes JSON files (Debian package `iso-codes`).
  std::string iso_codes_dir = "/usr/share/iso-codes/json";
};

/// The training and evaluation examples of one family (or of several, concatenated by `make_tasks`).
struct TaskSplit {
  std::vector<InstructionExample> train;  ///< training examples, in generation order
  std::vector<InstructionExample> eval;   ///< evaluation examples; no input of `train` occurs here
};

/// One entry of a look-up table: the name the model sees and the code it must answer.
struct LookupItem {
  std::string name;  ///< e.g. "Norway"
  std::string code;  ///< e.g. "NOR"
};

namespace detail {

enum class TaskKind { add, reverse, sort, upper, count, lookup };

struct TaskFamily {
  const char* name;
  const char* instruction;
  TaskKind kind;
  const char* iso_file;  // look-up families: the file in iso_codes_dir and its top-level key
  const char* iso_key;
};

inline const std::vector<TaskFamily>& task_families() {
  static const std::vector<TaskFamily> families = {
      {"add", "Add the numbers.", TaskKind::add, nullptr, nullptr},
      {"reverse", "Reverse the word.", TaskKind::reverse, nullptr, nullptr},
      {"sort", "Sort the letters.", TaskKind::sort, nullptr, nullptr},
      {"upper", "Write in capitals.", TaskKind::upper, nullptr, nullptr},
      {"count", "Count the vowels.", TaskKind::count, nullptr, nullptr},
      {"country_code", "Give the ISO code of the country.", TaskKind::lookup, "iso_3166-1.json", "3166-1"},
      {"currency_code", "Give the currency code.", TaskKind::lookup, "iso_4217.json", "4217"},
      {"language_code", "Give the language code.", TaskKind::lookup, "iso_639-2.json", "639-2"},
  };
  return families;
}

inline const TaskFamily& task_family(const std::string& name) {
  std::string known;
  for (const TaskFamily& f : task_families()) {
    if (name == f.name) return f;
    known += (known.empty() ? "" : ", ") + std::string(f.name);
  }
  throw ConfigError(concat("tasks: unknown task '", name, "' (known: ", known, ")"));
}

/// The longest look-up name kept (bytes).
constexpr std::size_t kTaskMaxNameBytes = 40;

inline std::ifstream open_task_file(const std::string& path, const std::string& task, const char* package) {
  std::ifstream in(path, std::ios::binary);
  PEMOE_CHECK_AS(IoError, static_cast<bool>(in), "tasks: cannot open '", path, "' (data of task '", task,
                 "'); it comes with the Debian package ", package, ": apt-get install ", package);
  return in;
}

inline bool is_lower_word(std::string_view w) {
  if (w.size() < 3 || w.size() > 10) return false;
  return std::all_of(w.begin(), w.end(), [](char c) { return c >= 'a' && c <= 'z'; });
}

inline std::vector<std::string> load_task_words(const std::string& path, const std::string& task) {
  std::ifstream in = open_task_file(path, task, "wamerican");
  std::vector<std::string> words;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (is_lower_word(line)) words.push_back(line);
  }
  PEMOE_CHECK_AS(
      IoError, !words.empty(), "tasks: '", path,
      "' has no lowercase ASCII words of 3 to 10 letters (expected a word list such as the Debian ",
      "package wamerican's /usr/share/dict/words)");
  return words;
}

inline bool is_simple_name(std::string_view s) {
  if (s.empty() || s.size() > kTaskMaxNameBytes) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return c >= 0x20 && c <= 0x7E && c != ';' && c != ',' && c != '('; });
}

inline bool is_alpha3(std::string_view s) {
  return s.size() == 3 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
         });
}

inline std::vector<LookupItem> load_lookup(const TaskFamily& f, const std::string& dir) {
  const std::string path = dir + "/" + f.iso_file;
  std::ifstream in = open_task_file(path, f.name, "iso-codes");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw IoError(concat("tasks: '", path, "' is not valid JSON: ", e.what()));
  }
  PEMOE_CHECK_AS(IoError, doc.is_object() && doc.contains(f.iso_key) && doc[f.iso_key].is_array(), "tasks: '",
                 path, "' has no array \"", f.iso_key, "\" (expected an iso-codes JSON file)");
  std::vector<LookupItem> all;
  for (const nlohmann::json& e : doc[f.iso_key]) {
    if (!e.is_object()) continue;
    const char* key = e.contains("common_name") ? "common_name" : "name";
    if (!e.contains(key) || !e[key].is_string() || !e.contains("alpha_3") || !e["alpha_3"].is_string())
      continue;
    LookupItem item{e[key].get<std::string>(), e["alpha_3"].get<std::string>()};
    if (is_simple_name(item.name) && is_alpha3(item.code)) all.push_back(std::move(item));
  }
  std::vector<LookupItem> items;
  for (const LookupItem& it : all) {
    const auto n =
        std::count_if(all.begin(), all.end(), [&](const LookupItem& o) { return o.name == it.name; });
    if (n == 1) items.push_back(it);
  }
  PEMOE_CHECK_AS(IoError, !items.empty(), "tasks: '", path, "' has no usable entries for task '", f.name,
                 "'");
  return items;
}

/// Fisher–Yates with the counter-based generator (std::shuffle's draws are implementation-defined).
template <class T>
void task_shuffle(std::vector<T>& v, Rng& rng) {
  for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
}

/// The input string without trailing spaces, tabs, carriage returns and newlines.
inline std::string_view trim_trailing(std::string_view s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n' || s.back() == '\r' ||
                        s.back() == '\v' || s.back() == '\f'))
    s.remove_suffix(1);
  return s;
}

/// "A+B" with 1 to 18 decimal digits each -> A + B in decimal; nothing for another form.
inline std::optional<std::string> add_answer(std::string_view input) {
  const std::size_t plus = input.find('+');
  if (plus == std::string_view::npos) return std::nullopt;
  std::uint64_t sum = 0;
  for (std::string_view part : {input.substr(0, plus), input.substr(plus + 1)}) {
    if (part.empty() || part.size() > 18) return std::nullopt;
    std::uint64_t v = 0;
    for (char c : part) {
      if (c < '0' || c > '9') return std::nullopt;
      v = v * 10 + static_cast<std::uint64_t>(c - '0');
    }
    sum += v;
  }
  return std::to_string(sum);
}

/// The answer of a computed family (nothing for a look-up family or an `add` input of another form).
inline std::optional<std::string> computed_answer(TaskKind kind, std::string_view input) {
  std::string s(input);
  switch (kind) {
    case TaskKind::add:
      return add_answer(input);
    case TaskKind::reverse:
      std::reverse(s.begin(), s.end());
      return s;
    case TaskKind::sort:
      std::sort(s.begin(), s.end(),
                [](char a, char b) { return static_cast<unsigned char>(a) < static_cast<unsigned char>(b); });
      return s;
    case TaskKind::upper:
      for (char& c : s)
        if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
      return s;
    case TaskKind::count: {
      std::size_t n = 0;
      for (char c : input) {
        const char l = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
        n += (l == 'a' || l == 'e' || l == 'i' || l == 'o' || l == 'u') ? 1 : 0;
      }
      return std::to_string(n);
    }
    case TaskKind::lookup:
      break;
  }
  return std::nullopt;
}

/// A uniform operand of `digits` decimal digits (0..9 for one digit, no leading zero otherwise).
inline std::uint64_t draw_operand(Rng& rng, int max_digits) {
  const int digits = 1 + static_cast<int>(rng.below(static_cast<std::uint64_t>(max_digits)));
  if (digits == 1) return rng.below(10);
  std::uint64_t lo = 1;
  for (int i = 1; i < digits; ++i) lo *= 10;
  return lo + rng.below(9 * lo);
}

inline InstructionExample make_example(const TaskFamily& f, std::string input, std::string output) {
  InstructionExample ex;
  ex.instruction = f.instruction;
  ex.input = std::move(input);
  ex.output = std::move(output);
  ex.task = f.name;
  return ex;
}

/// Cycles through `pool` (already shuffled): the first pass in pool order, every later pass reshuffled.
template <class F>
void cycle_pool(std::vector<std::size_t> pool, std::size_t n, Rng rng, F&& emit) {
  for (std::size_t i = 0, pass = 0; i < n; ++pass) {
    if (pass > 0) task_shuffle(pool, rng);
    for (std::size_t j = 0; j < pool.size() && i < n; ++j, ++i) emit(pool[j]);
  }
}

inline TaskSplit make_add(const TaskFamily& f, const TaskSuiteConfig& cfg, const Rng& root) {
  // Distinct inputs: (10^D)^2 ordered pairs of operands of at most D digits; eval takes at most half.
  const int d = cfg.max_add_digits;
  const std::uint64_t space = d >= 9 ? ~std::uint64_t{0} : [&] {
    std::uint64_t p = 1;
    for (int i = 0; i < d; ++i) p *= 10;
    return p * p;
  }();
  const std::size_t n_eval = static_cast<std::size_t>(std::min<std::uint64_t>(cfg.eval_per_task, space / 2));
  auto draw = [&](Rng& rng) {
    const std::uint64_t a = draw_operand(rng, d);
    const std::uint64_t b = draw_operand(rng, d);
    return std::to_string(a) + "+" + std::to_string(b);
  };
  TaskSplit split;
  std::unordered_set<std::string> eval_inputs;
  Rng eval_rng = root.split("eval");
  while (split.eval.size() < n_eval) {
    std::string in = draw(eval_rng);
    if (!eval_inputs.insert(in).second) continue;
    std::string out = *add_answer(in);
    split.eval.push_back(make_example(f, std::move(in), std::move(out)));
  }
  Rng train_rng = root.split("train");
  while (split.train.size() < cfg.train_per_task) {
    std::string in = draw(train_rng);
    if (eval_inputs.count(in)) continue;
    std::string out = *add_answer(in);
    split.train.push_back(make_example(f, std::move(in), std::move(out)));
  }
  return split;
}

}  // namespace detail

/// The names of all task families in a fixed order: add, reverse, sort, upper, count, country_code,
/// currency_code, language_code.
inline std::vector<std::string> task_names() {
  std::vector<std::string> names;
  for (const detail::TaskFamily& f : detail::task_families()) names.emplace_back(f.name);
  return names;
}

/// The instruction of family `task` (e.g. "Add the numbers."); `ConfigError` listing the known names for an
/// unknown one. Every family's instruction is different.
inline std::string task_instruction(const std::string& task) {
  return detail::task_family(task).instruction;
}

/// True for the families answered from an iso-codes table (country_code, currency_code, language_code).
inline bool is_lookup_task(const std::string& task) {
  return detail::task_family(task).kind == detail::TaskKind::lookup;
}

/// The words the word families draw from: the lowercase ASCII words of 3 to 10 letters of `path`, in file
/// order (`IoError` naming the file and the package `wamerican` when it cannot be read).
inline std::vector<std::string> load_task_words(const std::string& path) {
  return detail::load_task_words(path, "reverse");
}

/// The table of look-up family `task` as read from `cfg.iso_codes_dir` (filtered as the file comment says),
/// in file order. `ConfigError` for a family that is not a look-up; `IoError` naming the file and the package
/// `iso-codes` when it cannot be read.
inline std::vector<LookupItem> lookup_items(const std::string& task, const TaskSuiteConfig& cfg = {}) {
  const detail::TaskFamily& f = detail::task_family(task);
  PEMOE_CHECK_CONFIG(f.kind == detail::TaskKind::lookup, "tasks: '", task, "' is not a look-up task");
  return detail::load_lookup(f, cfg.iso_codes_dir);
}

/// The exact answer of a computed family (add, reverse, sort, upper, count) for `input`: the sum, the
/// reversed bytes, the bytes in ascending order, ASCII capitals, or the number of vowels (a, e, i, o, u in
/// either case). `ConfigError` for a look-up family (their answers are in `lookup_items`) and for an `add`
/// input that is not two numbers of 1 to 18 digits joined by `+`.
inline std::string task_answer(const std::string& task, std::string_view input) {
  const detail::TaskFamily& f = detail::task_family(task);
  PEMOE_CHECK_CONFIG(f.kind != detail::TaskKind::lookup, "tasks: '", task,
                     "' is a look-up task; its answers are in lookup_items()");
  std::optional<std::string> a = detail::computed_answer(f.kind, input);
  PEMOE_CHECK_CONFIG(a.has_value(), "tasks: input '", input, "' of task '", task,
                     "' is not two numbers of 1 to 18 digits joined by '+'");
  return *a;
}

/**
 * @brief Generates the train and eval examples of family `task` (see the file comment for the splits).
 *
 * Deterministic in `cfg` and the data files; train and eval share no input; eval does not depend on
 * `train_per_task`. Sizes: train has `train_per_task` examples; eval has `eval_per_task`, or fewer when the
 * family has fewer distinct inputs to spare (`add` with few digits, the look-up tables). `ConfigError` for an
 * unknown name (listing the known ones) or an invalid `cfg`; `IoError` when a data file is missing (naming
 * the file and the Debian package to install). Cost: reads the family's data file once; O(examples).
 */
inline TaskSplit make_task(const std::string& task, const TaskSuiteConfig& cfg) {
  const detail::TaskFamily& f = detail::task_family(task);
  PEMOE_CHECK_CONFIG(cfg.max_add_digits >= 1 && cfg.max_add_digits <= 18,
                     "tasks: max_add_digits must be in [1, 18], got ", cfg.max_add_digits);
  PEMOE_CHECK_CONFIG(cfg.lookup_eval_fraction >= 0.0 && cfg.lookup_eval_fraction < 1.0,
                     "tasks: lookup_eval_fraction must be in [0, 1), got ", cfg.lookup_eval_fraction);
  const Rng root = Rng(cfg.seed).split(std::string("pemoe.tasks.") + f.name);
  if (f.kind == detail::TaskKind::add) return detail::make_add(f, cfg, root);

  // Word and look-up families: shuffle the items, eval is a prefix, train cycles through the rest.
  std::vector<std::string> inputs, outputs;
  std::size_t n_eval = 0;
  if (f.kind == detail::TaskKind::lookup) {
    for (LookupItem& it : detail::load_lookup(f, cfg.iso_codes_dir)) {
      inputs.push_back(std::move(it.name));
      outputs.push_back(std::move(it.code));
    }
    n_eval = std::min(cfg.eval_per_task, static_cast<std::size_t>(cfg.lookup_eval_fraction *
                                                                  static_cast<double>(inputs.size())));
  } else {
    inputs = detail::load_task_words(cfg.words_file, task);
    for (const std::string& w : inputs) outputs.push_back(*detail::computed_answer(f.kind, w));
    n_eval = std::min(cfg.eval_per_task, inputs.size() / 2);
  }
  std::vector<std::size_t> order(inputs.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  Rng item_rng = root.split("items");
  detail::task_shuffle(order, item_rng);

  TaskSplit split;
  split.eval.reserve(n_eval);
  for (std::size_t i = 0; i < n_eval; ++i)
    split.eval.push_back(detail::make_example(f, inputs[order[i]], outputs[order[i]]));
  std::vector<std::size_t> pool(order.begin() + static_cast<std::ptrdiff_t>(n_eval), order.end());
  PEMOE_CHECK_CONFIG(!pool.empty() || cfg.train_per_task == 0, "tasks: task '", task,
                     "' has no items left for training after ", n_eval, " eval items");
  split.train.reserve(cfg.train_per_task);
  detail::cycle_pool(std::move(pool), cfg.train_per_task, root.split("train"), [&](std::size_t k) {
    split.train.push_back(detail::make_example(f, inputs[k], outputs[k]));
  });
  return split;
}

/// The splits of the families `tasks`, concatenated in the order given (each family's train after the
/// previous family's train, likewise eval). The caller chooses which families pretrain and which fine-tune.
inline TaskSplit make_tasks(const std::vector<std::string>& tasks, const TaskSuiteConfig& cfg) {
  TaskSplit all;
  for (const std::string& t : tasks) {
    TaskSplit s = make_task(t, cfg);
    all.train.insert(all.train.end(), std::make_move_iterator(s.train.begin()),
                     std::make_move_iterator(s.train.end()));
    all.eval.insert(all.eval.end(), std::make_move_iterator(s.eval.begin()),
                    std::make_move_iterator(s.eval.end()));
  }
  return all;
}

/**
 * @brief Whether `answer` is the exact answer to example `ex` of family `task`.
 *
 * Trailing whitespace of `answer` (spaces, tabs, newlines) is ignored; everything else must match byte for
 * byte, case included. Computed families recompute the truth from `ex.input` (`task_answer`), so a wrong
 * `ex.output` cannot make a wrong answer pass; look-up families compare with `ex.output`, the table's code.
 * `ConfigError` for an unknown family, for `ex.task` naming another family, or for an `add` input of another
 * form. Cost: O(input + answer).
 */
inline bool check_answer(const std::string& task, const InstructionExample& ex, std::string_view answer) {
  const detail::TaskFamily& f = detail::task_family(task);
  PEMOE_CHECK_CONFIG(ex.task.empty() || ex.task == task, "tasks: checking an example of task '", ex.task,
                     "' as task '", task, "'");
  const std::string_view a = detail::trim_trailing(answer);
  if (f.kind == detail::TaskKind::lookup) return a == ex.output;
  return a == task_answer(task, ex.input);
}

/// `check_answer(ex.task, ex, answer)`.
inline bool check_answer(const InstructionExample& ex, std::string_view answer) {
  return check_answer(ex.task, ex, answer);
}

/**
 * @brief Dev examples of a family for dynamic data mixing's probes (`make_mixing_probes`): up to `n`
 * held-out examples after the first `used` (those exact match reads), topped up from the start of the
 * training split when the held-out split is too small (the look-up families). The router sees no example
 * whose answer is scored.
 */
inline std::vector<InstructionExample> mixing_probe_examples(const TaskSplit& split, std::size_t used,
                                                             std::size_t n) {
  const std::size_t from = std::min(used, split.eval.size());
  const std::size_t take = std::min(split.eval.size() - from, n);
  std::vector<InstructionExample> out(split.eval.begin() + long(from),
                                      split.eval.begin() + long(from + take));
  for (std::size_t i = 0; out.size() < n && i < split.train.size(); ++i) out.push_back(split.train[i]);
  return out;
}

}  // namespace pemoe

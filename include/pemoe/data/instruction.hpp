/// @file instruction.hpp
/// @brief Instruction-tuning data: Alpaca-style JSON-lines files, prompt templates, and the tokenised
/// (ids, labels) form with the loss restricted to the response.
#pragma once

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"

namespace pemoe {

/// One instruction-tuning sample in the Stanford Alpaca format (Taori et al. 2023, "Alpaca: A Strong,
/// Replicable Instruction-Following Model"): the model reads `instruction` (and `input` when it is not
/// empty) and is trained to answer `output`.
struct InstructionExample {
  std::string instruction;  ///< what to do ("Add the two numbers.")
  std::string input;        ///< optional context ("17 25"); empty when the sample has none
  std::string output;       ///< the target response ("42")
  std::string task;         ///< task-family name (e.g. "add"); empty when the file does not say

  /// Member-wise equality.
  friend bool operator==(const InstructionExample& a, const InstructionExample& b) {
    return a.instruction == b.instruction && a.input == b.input && a.output == b.output && a.task == b.task;
  }
  /// Member-wise inequality.
  friend bool operator!=(const InstructionExample& a, const InstructionExample& b) { return !(a == b); }
};

namespace detail {

/// "<name>, line <n>: <message>" as an `IoError`.
inline IoError jsonl_error(const std::string& name, std::size_t line, const std::string& message) {
  return IoError(concat(name, ", line ", line, ": ", message));
}

/// Parses one non-blank JSON line into an example (see `read_jsonl_string` for the rules).
inline InstructionExample parse_instruction_line(std::string_view line, const std::string& name,
                                                 std::size_t line_no) {
  static const char* const kFix = "; every line needs \"instruction\" and \"output\" strings";
  nlohmann::json j;
  std::set<std::string> keys;
  std::string duplicate;
  // Reject a key given twice in the top-level object (nlohmann keeps the last one silently).
  const nlohmann::json::parser_callback_t on_event = [&](int depth, nlohmann::json::parse_event_t event,
                                                         nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  try {
    j = nlohmann::json::parse(line.begin(), line.end(), on_event);
  } catch (const nlohmann::json::exception& e) {
    throw jsonl_error(name, line_no,
                      concat("not valid JSON (", e.what(),
                             "); each line must be one JSON object such as "
                             "{\"instruction\": \"...\", \"input\": \"...\", \"output\": \"...\"}"));
  }
  if (!j.is_object()) {
    throw jsonl_error(name, line_no,
                      concat("expected a JSON object, found a ", j.type_name(),
                             "; each line must be one object such as {\"instruction\": \"...\", \"output\": "
                             "\"...\"}"));
  }
  if (!duplicate.empty()) {
    throw jsonl_error(name, line_no, concat("\"", duplicate, "\" appears twice; give each key once"));
  }
  InstructionExample ex;
  const auto field = [&](const char* key, std::string& out, bool required) {
    const auto it = j.find(key);
    if (it == j.end()) {
      if (required) throw jsonl_error(name, line_no, concat("\"", key, "\" is missing", kFix));
      return;
    }
    if (!it->is_string()) {
      throw jsonl_error(name, line_no,
                        concat("\"", key, "\" is a ", it->type_name(),
                               ", expected a string (quote it, e.g. \"", key, "\": \"42\")"));
    }
    out = it->get<std::string>();
  };
  field("instruction", ex.instruction, true);
  field("input", ex.input, false);
  field("output", ex.output, true);
  field("task", ex.task, false);
  return ex;
}

}  // namespace detail

/// Parses JSON-lines text: one JSON object per line,
/// `{"instruction": "...", "input": "...", "output": "...", "task": "..."}`.
///
/// - `instruction` and `output` are required strings; `input` and `task` are optional strings (empty when
///   absent). Other keys are ignored (their values may be of any JSON type). A key given twice is an error.
/// - Blank lines (only spaces, tabs, `\r`) are skipped; `\r\n` line ends are accepted.
/// - Any other line that is not such an object — invalid JSON (including invalid UTF-8), not an object, a
///   required key missing, a known key whose value is not a string — throws `IoError`
///   `"<name>, line <n>: <what is wrong>; <how to fix it>"` (n counts from 1, blank lines included). No
///   sample is ever dropped silently.
///
/// `name` only labels the errors (a file name). Complexity: O(bytes).
inline std::vector<InstructionExample> read_jsonl_string(std::string_view text,
                                                         const std::string& name = "<string>") {
  std::vector<InstructionExample> out;
  std::size_t pos = 0;
  std::size_t line_no = 0;
  while (pos < text.size()) {
    std::size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    const std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    out.push_back(detail::parse_instruction_line(line, name, line_no));
  }
  return out;
}

/// Reads the JSON-lines file at `path` (rules of `read_jsonl_string`; errors name `path`). `IoError` when the
/// file cannot be read.
inline std::vector<InstructionExample> read_jsonl(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(detail::concat("cannot open JSON-lines file '", path, "'"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw IoError(detail::concat("cannot read JSON-lines file '", path, "'"));
  return read_jsonl_string(ss.str(), path);
}

/// The JSON-lines text of `examples`: one line per example, keys in the order instruction, input, output,
/// task (`task` only when non-empty), `", "` / `": "` separators as Python's `json.dumps`, non-ASCII text
/// written as UTF-8 (not `\u` escapes), each line ending in `\n`. `read_jsonl_string` of the result gives
/// `examples` back exactly, and writing that again gives the same bytes. `IoError` naming the example and the
/// field when a string is not valid UTF-8 (JSON cannot hold it).
inline std::string write_jsonl_string(const std::vector<InstructionExample>& examples) {
  std::string out;
  const auto put = [&](std::size_t i, const char* key, const std::string& value, bool first) {
    if (!first) out += ", ";
    out += '"';
    out += key;
    out += "\": ";
    try {
      out += nlohmann::json(value).dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
    } catch (const nlohmann::json::exception&) {
      throw IoError(detail::concat("write_jsonl: example ", i, " field \"", key,
                                   "\" is not valid UTF-8; JSON strings must be UTF-8 text"));
    }
  };
  for (std::size_t i = 0; i < examples.size(); ++i) {
    const InstructionExample& ex = examples[i];
    out += '{';
    put(i, "instruction", ex.instruction, true);
    put(i, "input", ex.input, false);
    put(i, "output", ex.output, false);
    if (!ex.task.empty()) put(i, "task", ex.task, false);
    out += "}\n";
  }
  return out;
}

/// Writes `examples` to `path` as JSON lines (format of `write_jsonl_string`). `IoError` naming the path when
/// it cannot be written.
inline void write_jsonl(const std::string& path, const std::vector<InstructionExample>& examples) {
  const std::string text = write_jsonl_string(examples);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw IoError(detail::concat("cannot open '", path, "' for writing"));
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.flush();
  if (!out) throw IoError(detail::concat("cannot write '", path, "'"));
}

/// How an example becomes text: the prompt (what the model reads) and the response (what it learns to say).
///
/// Templates hold placeholders `{instruction}`, `{input}`, `{output}`, `{task}`, replaced by the example's
/// fields (the substituted text is not scanned again, so a field may contain braces); `{{` and `}}` stand for
/// literal `{` and `}`. Any other `{...}` (an unknown name, an unclosed `{`) is a `ConfigError`.
///
/// The default is compact, for tiny byte-level models:
/// prompt = `instruction + "\n" + input + "\n"` (or `instruction + "\n"` when `input` is empty),
/// response = `output`. `alpaca()` gives the Stanford Alpaca template.
struct PromptTemplate {
  std::string prompt_with_input = "{instruction}\n{input}\n";  ///< prompt when `input` is not empty
  std::string prompt_no_input = "{instruction}\n";             ///< prompt when `input` is empty
  std::string response = "{output}";                           ///< the supervised text

  /// The Stanford Alpaca template (Taori et al. 2023, `PROMPT_DICT` of its `train.py`): a preamble,
  /// `### Instruction:`, `### Input:` (only with an input) and `### Response:`; the response is the output.
  static PromptTemplate alpaca() {
    PromptTemplate t;
    t.prompt_with_input =
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";
    t.prompt_no_input =
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:";
    t.response = "{output}";
    return t;
  }

  /// `tmpl` with its placeholders replaced by the fields of `ex` (`ConfigError` naming the template and the
  /// offending text for an unknown placeholder or an unclosed `{`).
  static std::string substitute(std::string_view tmpl, const InstructionExample& ex) {
    std::string out;
    out.reserve(tmpl.size() + ex.instruction.size() + ex.input.size() + ex.output.size());
    for (std::size_t i = 0; i < tmpl.size(); ++i) {
      const char c = tmpl[i];
      if (c == '}' && i + 1 < tmpl.size() && tmpl[i + 1] == '}') {
        out += '}';
        ++i;
      } else if (c != '{') {
        out += c;
      } else if (i + 1 < tmpl.size() && tmpl[i + 1] == '{') {
        out += '{';
        ++i;
      } else {
        const std::size_t close = tmpl.find('}', i + 1);
        PEMOE_CHECK_CONFIG(close != std::string_view::npos, "PromptTemplate '", tmpl,
                           "': unclosed '{' at byte ", i, "; write '{{' for a literal brace");
        const std::string_view key = tmpl.substr(i + 1, close - i - 1);
        if (key == "instruction") {
          out += ex.instruction;
        } else if (key == "input") {
          out += ex.input;
        } else if (key == "output") {
          out += ex.output;
        } else if (key == "task") {
          out += ex.task;
        } else {
          throw ConfigError(detail::concat("PromptTemplate '", tmpl, "': unknown placeholder '{", key,
                                           "}'; allowed: {instruction} {input} {output} {task}"));
        }
        i = close;
      }
    }
    return out;
  }

  /// The prompt of `ex` (`prompt_with_input` when `ex.input` is not empty, else `prompt_no_input`).
  std::string format_prompt(const InstructionExample& ex) const {
    return substitute(ex.input.empty() ? prompt_no_input : prompt_with_input, ex);
  }
  /// The response text of `ex`.
  std::string format_response(const InstructionExample& ex) const { return substitute(response, ex); }
};

/// Which tokens the language-model loss is computed on.
enum class LossOn {
  response,  ///< the response and the end token only (the prompt is masked with -100), as Alpaca
  all,       ///< every token, prompt included
};

/// Label of a token the loss ignores (PyTorch `CrossEntropyLoss(ignore_index=-100)`, Hugging Face).
inline constexpr std::int64_t kIgnoreLabel = -100;

/// A tokenised example: `ids` (length L) and `labels` (length L), where `labels[i] == ids[i]` on supervised
/// tokens and `kIgnoreLabel` (-100) elsewhere. Labels are NOT shifted: the model predicts `labels[i + 1]`
/// from position i, as Hugging Face's `GPT2LMHeadModel` shifts inside its loss.
struct TokenizedExample {
  std::vector<std::int64_t> ids;     ///< token ids, length L
  std::vector<std::int64_t> labels;  ///< ids or -100, length L
  int source = 0;                    ///< the dataset the example came from (an index chosen by the caller)
};

/// The prompt's token ids of `ex` under `tmpl` (what a generator is given at evaluation; the model should
/// continue it with the response and `eos`). `Tokenizer` needs `encode(std::string_view)` returning a vector
/// of integer ids (`ByteTokenizer`, `Gpt2Tokenizer`).
template <class Tokenizer>
std::vector<std::int64_t> prompt_ids(const InstructionExample& ex, const Tokenizer& tokenizer,
                                     const PromptTemplate& tmpl = {}) {
  const auto p = tokenizer.encode(tmpl.format_prompt(ex));
  return std::vector<std::int64_t>(p.begin(), p.end());
}

/// Tokenises `ex`: ids = encode(prompt) ++ encode(response) ++ [eos_id], the prompt and the response encoded
/// separately (a BPE merge never spans their boundary, so `prompt_ids` is always a prefix of `ids`).
/// With `LossOn::response` the labels are -100 on the prompt and equal the ids on the response and the eos;
/// with `LossOn::all` labels == ids. `eos_id` must be >= 0 (`ConfigError`). `source` is stored as given.
/// Complexity: that of the tokenizer on the text, O(L) more.
template <class Tokenizer>
TokenizedExample tokenize_example(const InstructionExample& ex, const Tokenizer& tokenizer,
                                  const PromptTemplate& tmpl, LossOn loss_on, std::int64_t eos_id,
                                  int source = 0) {
  PEMOE_CHECK_CONFIG(eos_id >= 0, "tokenize_example: eos_id is ", eos_id, ", expected a token id >= 0");
  const auto p = tokenizer.encode(tmpl.format_prompt(ex));
  const auto r = tokenizer.encode(tmpl.format_response(ex));
  TokenizedExample t;
  t.source = source;
  t.ids.reserve(p.size() + r.size() + 1);
  t.ids.insert(t.ids.end(), p.begin(), p.end());
  t.ids.insert(t.ids.end(), r.begin(), r.end());
  t.ids.push_back(eos_id);
  t.labels = t.ids;
  if (loss_on == LossOn::response) {
    for (std::size_t i = 0; i < p.size(); ++i) t.labels[i] = kIgnoreLabel;
  }
  return t;
}

/// `tokenize_example` of every example of `examples` (all with the same `source`).
template <class Tokenizer>
std::vector<TokenizedExample> tokenize_examples(const std::vector<InstructionExample>& examples,
                                                const Tokenizer& tokenizer, const PromptTemplate& tmpl,
                                                LossOn loss_on, std::int64_t eos_id, int source = 0) {
  std::vector<TokenizedExample> out;
  out.reserve(examples.size());
  for (const auto& ex : examples)
    out.push_back(tokenize_example(ex, tokenizer, tmpl, loss_on, eos_id, source));
  return out;
}

}  // namespace pemoe

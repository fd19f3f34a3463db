// Tests of the instruction-tuning data layer (include/pemoe/data/instruction.hpp): the JSON-lines reader
// and writer, prompt templates, and tokenisation with the loss on the response.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "pemoe/data/bpe_tokenizer.hpp"
#include "pemoe/data/byte_tokenizer.hpp"
#include "pemoe/data/instruction.hpp"

using Catch::Matchers::Contains;

namespace {

std::vector<std::int64_t> bytes_of(const std::string& s) {
  std::vector<std::int64_t> v;
  for (const char c : s) v.push_back(static_cast<unsigned char>(c));
  return v;
}

// The IoError message of reading `text` as file `name` (fails the test when nothing is thrown).
std::string error_of(const std::string& text, const std::string& name = "tasks/add.jsonl") {
  try {
    pemoe::read_jsonl_string(text, name);
  } catch (const pemoe::IoError& e) {
    return e.what();
  }
  FAIL("no IoError for: " << text);
  return "";
}

}  // namespace

TEST_CASE("read_jsonl_string parses Alpaca lines, optional input/task, blank lines, CRLF", "[instruction]") {
  const std::string text =
      "{\"instruction\": \"Add.\", \"input\": \"1 2\", \"output\": \"3\"}\n"
      "\n"
      "   \r\n"
      "{\"output\": \"hi\", \"instruction\": \"Greet.\", \"task\": \"greet\", \"extra\": [1, {\"a\": "
      "null}]}\r\n"
      "{\"instruction\": \"\", \"input\": \"\", \"output\": \"\"}";  // no final newline
  const auto v = pemoe::read_jsonl_string(text, "x.jsonl");
  REQUIRE(v.size() == 3);
  CHECK(v[0] == pemoe::InstructionExample{"Add.", "1 2", "3", ""});
  CHECK(v[1] == pemoe::InstructionExample{"Greet.", "", "hi", "greet"});
  CHECK(v[2] == pemoe::InstructionExample{"", "", "", ""});
  CHECK(pemoe::read_jsonl_string("").empty());
  CHECK(pemoe::read_jsonl_string("\n\n  \n").empty());
}

TEST_CASE("read_jsonl_string: every malformed line is an IoError naming the file, the line and the fix",
          "[instruction]") {
  const std::string ok = "{\"instruction\": \"a\", \"output\": \"b\"}\n";
  // Line numbers count blank lines: the bad line is line 4 in each case.
  const std::string prefix = ok + "\n" + ok;
  struct Case {
    std::string line;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"{\"instruction\": \"a\"}",
       "\"output\" is missing; every line needs \"instruction\" and \"output\" strings"},
      {"{\"output\": \"a\"}", "\"instruction\" is missing"},
      {"{\"instruction\": \"a\", \"output\": 42}", "\"output\" is a number, expected a string"},
      {"{\"instruction\": null, \"output\": \"x\"}", "\"instruction\" is a null, expected a string"},
      {"{\"instruction\": \"a\", \"input\": [\"x\"], \"output\": \"b\"}", "\"input\" is a array"},
      {"{\"instruction\": \"a\", \"output\": \"b\", \"task\": 3}", "\"task\" is a number"},
      {"[\"instruction\", \"output\"]", "expected a JSON object, found a array"},
      {"\"just a string\"", "expected a JSON object, found a string"},
      {"{\"instruction\": \"a\", \"output\": \"b\"", "not valid JSON"},
      {"{\"instruction\": \"a\", \"output\": \"b\"} {}", "not valid JSON"},
      {"{'instruction': 'a', 'output': 'b'}", "not valid JSON"},
      {"{\"instruction\": \"a\xff\", \"output\": \"b\"}", "not valid JSON"},
      {"{\"instruction\": \"a\", \"output\": \"b\", \"output\": \"c\"}", "\"output\" appears twice"},
  };
  for (const auto& c : cases) {
    INFO(c.line);
    const std::string msg = error_of(prefix + c.line + "\n" + ok);
    CHECK_THAT(msg, Contains("tasks/add.jsonl, line 4: ") && Contains(c.expected));
  }
  // The exact message of the example.
  CHECK(error_of("{\"instruction\": \"a\"}") ==
        "tasks/add.jsonl, line 1: \"output\" is missing; every line needs \"instruction\" and \"output\" "
        "strings");
  // An error on line 17 of a longer file.
  std::string long_text;
  for (int i = 0; i < 16; ++i) long_text += ok;
  long_text += "{\"instruction\": \"a\"}\n" + ok;
  CHECK_THAT(error_of(long_text), Contains("tasks/add.jsonl, line 17: \"output\" is missing"));
}

TEST_CASE("read_jsonl and write_jsonl round-trip files exactly", "[instruction]") {
  const std::vector<pemoe::InstructionExample> examples = {
      {"Translate to French.", "I \"love\" C++\\", "J'aime le C++ \xE2\x9C\x93", "translate"},
      {"Newlines\ninside\r\nand\ttabs", "", "ctrl \x01\x1F and NUL \0 end", ""},
      {"\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x98\x80", "{braces} / slash", "</script>", "unicode"},
      {"", "", "", ""},
  };
  // (the NUL byte above is cut by the const char* constructor; add one explicitly)
  auto ex = examples;
  ex[1].output += std::string("\0after", 6);

  const auto dir = std::filesystem::temp_directory_path() / "pemoe_test_datasets_instruction";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "roundtrip.jsonl").string();
  pemoe::write_jsonl(path, ex);
  const auto back = pemoe::read_jsonl(path);
  REQUIRE(back.size() == ex.size());
  for (std::size_t i = 0; i < ex.size(); ++i) CHECK(back[i] == ex[i]);

  // Writing what was read gives the same bytes.
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  CHECK(ss.str() == pemoe::write_jsonl_string(back));
  // Format: keys in order, task only when non-empty, UTF-8 kept verbatim.
  CHECK(pemoe::write_jsonl_string({{"a", "", "b", ""}}) ==
        "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n");
  CHECK_THAT(ss.str(), Contains("\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E"));
  CHECK_THAT(ss.str(), Contains("\"task\": \"translate\""));
  std::filesystem::remove_all(dir);

  CHECK_THROWS_AS(pemoe::read_jsonl("/nonexistent/dir/none.jsonl"), pemoe::IoError);
  CHECK_THROWS_WITH(pemoe::write_jsonl_string({{"ok", "", "bad \xC3", ""}}),
                    Contains("example 0") && Contains("\"output\" is not valid UTF-8"));
}

TEST_CASE("PromptTemplate substitutes placeholders and rejects unknown ones", "[instruction]") {
  const pemoe::InstructionExample with{"Add.", "1 2", "3", "add"};
  const pemoe::InstructionExample without{"Say hi.", "", "hi", ""};
  const pemoe::PromptTemplate def;
  CHECK(def.format_prompt(with) == "Add.\n1 2\n");
  CHECK(def.format_prompt(without) == "Say hi.\n");
  CHECK(def.format_response(with) == "3");

  const auto alpaca = pemoe::PromptTemplate::alpaca();
  CHECK(
      alpaca.format_prompt(with) ==
      "Below is an instruction that describes a task, paired with an input that provides further context. "
      "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n1 "
      "2\n\n### Response:");
  CHECK(alpaca.format_prompt(without) ==
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi.\n\n### Response:");

  pemoe::PromptTemplate t;
  t.prompt_with_input = "[{task}] {{literal}} {instruction}|{input}=";
  t.response = " {output}}}";
  CHECK(t.format_prompt(with) == "[add] {literal} Add.|1 2=");
  CHECK(t.format_response(with) == " 3}");
  // A field holding a placeholder is not substituted again.
  CHECK(t.format_prompt({"{output}", "{input}", "x", ""}) == "[] {literal} {output}|{input}=");

  t.prompt_no_input = "{instruction} {answer}";
  CHECK_THROWS_AS(t.format_prompt(without), pemoe::ConfigError);
  CHECK_THROWS_WITH(t.format_prompt(without), Contains("unknown placeholder '{answer}'"));
  t.prompt_no_input = "{instruction";
  CHECK_THROWS_WITH(t.format_prompt(without), Contains("unclosed '{'"));
}

TEST_CASE("tokenize_example with the byte tokenizer: ids and labels for both LossOn modes", "[instruction]") {
  const pemoe::ByteTokenizer tok({"<eos>"});
  const std::int64_t eos = tok.special_id("<eos>");
  REQUIRE(eos == 256);
  const pemoe::PromptTemplate tmpl;
  const pemoe::InstructionExample ex{"Add.", "1 2", "3", "add"};

  const std::vector<std::int64_t> prompt = bytes_of("Add.\n1 2\n");
  std::vector<std::int64_t> ids = prompt;
  ids.push_back('3');
  ids.push_back(eos);

  const auto r = pemoe::tokenize_example(ex, tok, tmpl, pemoe::LossOn::response, eos, 2);
  CHECK(r.ids == ids);
  CHECK(r.source == 2);
  std::vector<std::int64_t> labels(prompt.size(), -100);
  labels.push_back('3');
  labels.push_back(eos);
  CHECK(r.labels == labels);
  CHECK(pemoe::prompt_ids(ex, tok, tmpl) == prompt);

  const auto a = pemoe::tokenize_example(ex, tok, tmpl, pemoe::LossOn::all, eos);
  CHECK(a.ids == ids);
  CHECK(a.labels == ids);
  CHECK(a.source == 0);

  // No input, empty output: the eos alone is supervised.
  const auto e = pemoe::tokenize_example({"Hi", "", "", ""}, tok, tmpl, pemoe::LossOn::response, eos);
  CHECK(e.ids == std::vector<std::int64_t>{'H', 'i', '\n', eos});
  CHECK(e.labels == std::vector<std::int64_t>{-100, -100, -100, eos});

  // The Alpaca template: the prompt is the template's text.
  const auto al =
      pemoe::tokenize_example(ex, tok, pemoe::PromptTemplate::alpaca(), pemoe::LossOn::response, eos);
  const std::string alpaca_prompt = pemoe::PromptTemplate::alpaca().format_prompt(ex);
  REQUIRE(al.ids.size() == alpaca_prompt.size() + 2);
  CHECK(std::vector<std::int64_t>(al.ids.begin(),
                                  al.ids.begin() + static_cast<std::ptrdiff_t>(alpaca_prompt.size())) ==
        bytes_of(alpaca_prompt));
  CHECK(std::count(al.labels.begin(), al.labels.end(), -100) ==
        static_cast<std::ptrdiff_t>(alpaca_prompt.size()));

  const auto many = pemoe::tokenize_examples({ex, ex}, tok, tmpl, pemoe::LossOn::response, eos, 3);
  REQUIRE(many.size() == 2);
  CHECK(many[1].ids == ids);
  CHECK(many[1].source == 3);

  CHECK_THROWS_WITH(pemoe::tokenize_example(ex, tok, tmpl, pemoe::LossOn::all, -1), Contains("eos_id is -1"));
}

TEST_CASE("tokenize_example with the GPT-2 BPE fixture: ids are the concatenation of the parts",
          "[instruction]") {
  const auto tok = pemoe::Gpt2Tokenizer::from_directory(std::string(PEMOE_TEST_DATA_DIR) + "/tokenizer");
  const std::int64_t eos = tok.eos_id();
  const pemoe::PromptTemplate tmpl = pemoe::PromptTemplate::alpaca();
  const pemoe::InstructionExample ex{"Summarize the following text.",
                                     "The quick brown fox jumps over the lazy dog.", " A fox jumps.", ""};
  const auto p = tok.encode(tmpl.format_prompt(ex));
  const auto r = tok.encode(tmpl.format_response(ex));
  REQUIRE(!p.empty());
  REQUIRE(!r.empty());
  std::vector<std::int64_t> ids(p.begin(), p.end());
  ids.insert(ids.end(), r.begin(), r.end());
  ids.push_back(eos);

  const auto t = pemoe::tokenize_example(ex, tok, tmpl, pemoe::LossOn::response, eos);
  CHECK(t.ids == ids);
  REQUIRE(t.labels.size() == ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) CHECK(t.labels[i] == (i < p.size() ? -100 : ids[i]));
  CHECK(pemoe::prompt_ids(ex, tok, tmpl) == std::vector<std::int64_t>(p.begin(), p.end()));
  // The text decodes back to prompt + response + eos.
  const std::vector<pemoe::TokenId> ids32(t.ids.begin(), t.ids.end());
  CHECK(tok.decode(ids32) == tmpl.format_prompt(ex) + tmpl.format_response(ex) + "<|endoftext|>");
}

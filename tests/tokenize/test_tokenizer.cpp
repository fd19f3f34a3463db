// Tests of the byte-level and GPT-2 BPE tokenizers (include/pemoe/data/). The GPT-2 fixture in
// tests/data/tokenizer/ is a small byte-level BPE trained with Hugging Face `tokenizers` and the ids
// transformers' GPT2TokenizerFast gives for a set of texts (make_fixture.py writes them all).
#include <catch2/catch.hpp>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "pemoe/data/bpe_tokenizer.hpp"
#include "pemoe/data/byte_tokenizer.hpp"
#include "support/helpers.hpp"

namespace {

const std::string kDir = std::string(PEMOE_TEST_DATA_DIR) + "/tokenizer";

std::string random_bytes(std::mt19937& rng, std::size_t max_len) {
  std::uniform_int_distribution<std::size_t> len(0, max_len);
  std::uniform_int_distribution<int> byte(0, 255);
  std::string s(len(rng), '\0');
  for (char& c : s) c = static_cast<char>(byte(rng));
  return s;
}

// Random text biased towards what exercises the pre-tokenizer: ASCII letters, spaces, apostrophes,
// digits, multi-byte UTF-8, truncated UTF-8 and stray continuation bytes.
std::string random_texty(std::mt19937& rng, std::size_t max_len) {
  static const std::vector<std::string> atoms = {"a",
                                                 "Z",
                                                 " ",
                                                 "  ",
                                                 "\t",
                                                 "\n",
                                                 "\r\n",
                                                 "'",
                                                 "'s",
                                                 "'ll",
                                                 "7",
                                                 "42",
                                                 "!",
                                                 "...",
                                                 "\xC3\xA9",
                                                 "\xE6\x97\xA5",
                                                 "\xF0\x9F\x98\x80",
                                                 "\xCC\x81",
                                                 "\xC2\xA0",
                                                 "\xE3\x80\x80",
                                                 "\xC3",
                                                 "\xE6\x97",
                                                 "\x80",
                                                 "\xFF",
                                                 "\xC0\xAF",
                                                 "\xED\xA0\x80",
                                                 "<|endoftext|>",
                                                 "<|endo"};
  std::uniform_int_distribution<std::size_t> len(0, max_len);
  std::uniform_int_distribution<std::size_t> pick(0, atoms.size() - 1);
  std::string s;
  for (std::size_t k = len(rng); k > 0; --k) s += atoms[pick(rng)];
  return s;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const pemoe::IoError& e) {
    return e.what();
  }
  FAIL("expected a pemoe::IoError");
  return {};
}

}  // namespace

TEST_CASE("ByteTokenizer: ids are the bytes, special tokens follow 255", "[tokenize]") {
  const pemoe::ByteTokenizer tok({"<eos>", "<pad>"});
  CHECK(tok.vocab_size() == 258);
  CHECK(tok.special_id("<eos>") == 256);
  CHECK(tok.special_id("<pad>") == 257);
  CHECK_THROWS_AS(tok.special_id("<bos>"), pemoe::ConfigError);
  CHECK(tok.is_special(256));
  CHECK_FALSE(tok.is_special(255));
  const std::string s("a\x00\xff<eos>", 8);
  const auto ids = tok.encode(s);
  CHECK(ids == std::vector<pemoe::TokenId>{97, 0, 255, 60, 101, 111, 115, 62});
  CHECK(tok.decode({104, 105, 256}) == "hi<eos>");
  CHECK(tok.decode({104, 105, 256}, /*skip_special=*/true) == "hi");
  CHECK_THROWS_AS(tok.decode({258}), pemoe::ConfigError);
  CHECK_THROWS_AS(tok.decode({-1}), pemoe::ConfigError);
  CHECK_THROWS_AS(pemoe::ByteTokenizer({"x", "x"}), pemoe::ConfigError);
  CHECK_THROWS_AS(pemoe::ByteTokenizer({""}), pemoe::ConfigError);
}

TEST_CASE("ByteTokenizer: byte-exact round trip of random byte strings", "[tokenize]") {
  const pemoe::ByteTokenizer tok({"<eos>"});
  std::mt19937 rng(7);
  for (int k = 0; k < 500; ++k) {
    const std::string s = random_bytes(rng, 200);
    const auto ids = tok.encode(s);
    REQUIRE(ids.size() == s.size());
    for (const auto id : ids) REQUIRE((id >= 0 && id < 256));
    REQUIRE(tok.decode(ids) == s);
  }
}

TEST_CASE("Gpt2Tokenizer: matches transformers' GPT2TokenizerFast token for token", "[tokenize]") {
  const auto tok = pemoe::Gpt2Tokenizer::from_directory(kDir);
  CHECK(tok.vocab_size() == 600);
  CHECK(tok.num_merges() == 343);
  CHECK(tok.eos_id() == 0);
  const auto cases = nlohmann::json::parse(pemoe::testing::read_file(kDir + "/cases.json"));
  REQUIRE(cases.size() > 50);
  for (const auto& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    const auto expected = c.at("ids").get<std::vector<pemoe::TokenId>>();
    INFO("text: " << nlohmann::json(text).dump());
    CHECK(tok.encode(text) == expected);
    CHECK(tok.decode(expected) == text);
  }
  // Second pass: answered from the cache, same result.
  for (const auto& c : cases) {
    CHECK(tok.encode(c.at("text").get<std::string>()) == c.at("ids").get<std::vector<pemoe::TokenId>>());
  }
}

TEST_CASE("Gpt2Tokenizer: special tokens", "[tokenize]") {
  const auto tok = pemoe::Gpt2Tokenizer::from_directory(kDir);
  const auto eos = tok.eos_id();
  CHECK(tok.is_special(eos));
  CHECK(tok.encode("<|endoftext|>") == std::vector<pemoe::TokenId>{eos});
  const auto plain = tok.encode_ordinary("<|endoftext|>");
  CHECK(plain.size() > 1);
  CHECK(tok.decode(plain) == "<|endoftext|>");
  CHECK(tok.decode({tok.token_to_id("a"), eos}, /*skip_special=*/true) == "a");
  CHECK_THROWS_AS(tok.decode({600}), pemoe::ConfigError);
  CHECK_THROWS_AS(tok.id_to_token(-5), pemoe::ConfigError);
  // A special token not in the vocabulary is appended after the largest id.
  const auto tok2 = pemoe::Gpt2Tokenizer::from_directory(kDir, {"<|endoftext|>", "<|pad|>"});
  CHECK(tok2.vocab_size() == 601);
  CHECK(tok2.special_id("<|pad|>") == 600);
  CHECK(tok2.encode("x<|pad|><|endoftext|>") == std::vector<pemoe::TokenId>{tok.token_to_id("x"), 600, eos});
  CHECK_THROWS_AS(pemoe::Gpt2Tokenizer::from_directory(kDir, {"a", "a"}), pemoe::ConfigError);
}

TEST_CASE("Gpt2Tokenizer: byte-exact round trip of random byte strings, invalid UTF-8 included",
          "[tokenize]") {
  const auto tok = pemoe::Gpt2Tokenizer::from_directory(kDir);
  std::mt19937 rng(11);
  for (int k = 0; k < 1000; ++k) {
    const std::string s = (k % 2) ? random_bytes(rng, 120) : random_texty(rng, 40);
    const auto ids = tok.encode(s);
    REQUIRE(tok.decode(ids) == s);
    REQUIRE(tok.decode(tok.encode_ordinary(s)) == s);
  }
  // A long run of one class (no pre-token boundary) stays fast and exact.
  const std::string long_word(100000, 'e');
  CHECK(tok.decode(tok.encode(long_word)) == long_word);
}

TEST_CASE("Gpt2Tokenizer: malformed files are IoErrors naming the file and the line", "[tokenize]") {
  const std::string vocab = pemoe::testing::read_file(kDir + "/vocab.json");
  const std::string merges = pemoe::testing::read_file(kDir + "/merges.txt");
  const auto load = [](const std::string& v, const std::string& m) {
    return pemoe::Gpt2Tokenizer::from_strings(v, m, {"<|endoftext|>"}, "my/vocab.json", "my/merges.txt");
  };
  const auto contains = [](const std::string& s, const std::string& part) { return s.find(part) != s.npos; };

  std::string e = error_of([&] { load("{\n\"a\": 1,\n\"b\": x}", merges); });
  CHECK(contains(e, "my/vocab.json, line 3"));
  e = error_of([&] { load("{\"a\": 1.5}", merges); });
  CHECK(contains(e, "my/vocab.json, line 1"));
  e = error_of([&] { load("{\n\"a\": 1,\n\n\"a\": 2}", merges); });
  CHECK(contains(e, "my/vocab.json, line 4"));
  CHECK(contains(e, "twice"));
  e = error_of([&] { load("{\"a\": 1,\n \"b\": 1}", merges); });
  CHECK(contains(e, "my/vocab.json, line 2"));
  e = error_of([&] { load(vocab + "x", merges); });
  CHECK(contains(e, "my/vocab.json, line 1"));
  e = error_of([&] { load("{\"a\": 0}", merges); });  // lacks the byte tokens
  CHECK(contains(e, "my/vocab.json"));
  e = error_of([&] { load("{\"\\ud800\": 0}", merges); });
  CHECK(contains(e, "surrogate"));

  e = error_of([&] { load(vocab, "#version: 0.2\nĠ t\nĠt he extra\n"); });
  CHECK(contains(e, "my/merges.txt, line 3"));
  CHECK(contains(e, "two tokens"));
  e = error_of([&] { load(vocab, "#version: 0.2\nĠ\n"); });
  CHECK(contains(e, "my/merges.txt, line 2"));
  e = error_of([&] { load(vocab, "#version: 0.2\nĠ '\nq z\n"); });  // "qz" is no token
  CHECK(contains(e, "my/merges.txt, line 3"));
  CHECK(contains(e, "'qz' is not in the vocabulary"));
  e = error_of([&] { load(vocab, "Ġ '\nĠ '\n"); });
  CHECK(contains(e, "my/merges.txt, line 2"));
  e = error_of([&] { load(vocab, "#version: 0.2\nĠ nope\n"); });
  CHECK(contains(e, "'nope' is not in the vocabulary"));

  e = error_of([&] { pemoe::Gpt2Tokenizer::from_files(kDir + "/missing.json", kDir + "/merges.txt"); });
  CHECK(contains(e, "missing.json"));
}

TEST_CASE("Gpt2Tokenizer: corrupted files load or throw a named IoError, never crash", "[tokenize]") {
  const std::string vocab = pemoe::testing::read_file(kDir + "/vocab.json");
  const std::string merges = pemoe::testing::read_file(kDir + "/merges.txt");
  std::mt19937 rng(2024);
  const auto corrupt = [&](std::string s) {
    std::uniform_int_distribution<int> kind(0, 6);
    const int edits = std::uniform_int_distribution<int>(1, 3)(rng);
    for (int k = 0; k < edits; ++k) {
      const std::size_t at = std::uniform_int_distribution<std::size_t>(0, s.size())(rng);
      const char c = static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
      static const char interesting[] = "{}[]\":,\\ \n0123456789-.eu#";
      const char ci =
          interesting[std::uniform_int_distribution<std::size_t>(0, sizeof(interesting) - 2)(rng)];
      switch (kind(rng)) {
        case 0:
          s.insert(s.begin() + static_cast<std::ptrdiff_t>(at), c);
          break;
        case 1:
          s.insert(s.begin() + static_cast<std::ptrdiff_t>(at), ci);
          break;
        case 2:
          if (at < s.size()) s[at] = c;
          break;
        case 3:
          if (at < s.size()) s[at] = ci;
          break;
        case 4:
          s.erase(at, std::uniform_int_distribution<std::size_t>(1, 8)(rng));
          break;
        case 5:
          s.resize(at);
          break;
        default: {  // duplicate a random slice
          const std::size_t len = std::uniform_int_distribution<std::size_t>(1, 40)(rng);
          const std::size_t from = std::uniform_int_distribution<std::size_t>(0, s.size())(rng);
          s.insert(at, s.substr(from, len));
        }
      }
    }
    return s;
  };
  int loaded = 0, rejected = 0;
  for (int k = 0; k < 3000; ++k) {
    const bool which = k % 2 == 0;
    const std::string v = which ? corrupt(vocab) : vocab;
    const std::string m = which ? merges : corrupt(merges);
    try {
      const auto tok = pemoe::Gpt2Tokenizer::from_strings(v, m);
      ++loaded;
      const std::string text = random_texty(rng, 20);
      REQUIRE(tok.decode(tok.encode(text)) == text);
    } catch (const pemoe::IoError& e) {
      ++rejected;
      const std::string what = e.what();
      INFO(what);
      // A corrupted vocab.json can also surface as a merge of merges.txt whose token it lost.
      const bool named = what.find("vocab.json") != std::string::npos ||
                         (what.find("merges.txt, line ") != std::string::npos);
      REQUIRE(named);
      if (!which) REQUIRE(what.find("merges.txt, line ") != std::string::npos);
    }
  }
  CHECK(loaded > 20);
  CHECK(rejected > 100);
}

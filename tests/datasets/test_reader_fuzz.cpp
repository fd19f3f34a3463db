// Mutation fuzzing of the text readers: the JSON-lines instruction reader and the GPT-2 vocab.json /
// merges.txt loaders. Seeded byte mutations (flip, insert, delete, duplicate, truncate) of valid inputs must
// each either parse or throw a pemoe::Error with a non-empty message: never another exception, a crash
// (the sanitizer build checks memory errors) or a hang.
#include <catch2/catch.hpp>

#include <chrono>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "pemoe/core/rng.hpp"
#include "pemoe/data/bpe_tokenizer.hpp"
#include "pemoe/data/instruction.hpp"
#include "support/helpers.hpp"

namespace {

// Bytes that matter to the parsers: JSON syntax, escapes, digits, spaces, newlines, UTF-8 lead and
// continuation bytes, NUL.
constexpr char kInteresting[] = "{}[]\":,\\/ubnrtf0123456789-+.eE \t\r\n'#\xC3\xA9\xF0\x9F\x80\xBF\xFF";

// One to four random mutations of `s`.
std::string mutate(std::string s, pemoe::Rng& rng) {
  const int n = 1 + static_cast<int>(rng.below(4));
  for (int m = 0; m < n; ++m) {
    const auto pos = static_cast<std::size_t>(rng.below(s.size() + 1));
    const auto pick = [&]() -> char {
      if (rng.below(2) == 0) return static_cast<char>(rng.below(256));
      return kInteresting[rng.below(sizeof(kInteresting))];  // (includes the final NUL)
    };
    switch (rng.below(6)) {
      case 0:  // flip a bit
        if (pos < s.size()) s[pos] = static_cast<char>(s[pos] ^ (1 << rng.below(8)));
        break;
      case 1:  // replace a byte
        if (pos < s.size()) s[pos] = pick();
        break;
      case 2:  // insert a byte
        s.insert(s.begin() + static_cast<std::ptrdiff_t>(pos), pick());
        break;
      case 3:  // delete a run
        if (pos < s.size()) s.erase(pos, 1 + rng.below(8));
        break;
      case 4:  // duplicate a run
        if (pos < s.size()) s.insert(pos, s.substr(pos, 1 + rng.below(16)));
        break;
      default:  // truncate
        s.resize(pos);
        break;
    }
  }
  return s;
}

struct Outcome {
  int parsed = 0;
  int rejected = 0;
};

// Runs `parse` on `iterations` mutants of `seed_text`; every outcome is a parse or a pemoe::Error.
template <class Parse>
Outcome fuzz(const std::string& what, const std::string& seed_text, int iterations, std::uint64_t seed,
             Parse parse) {
  pemoe::Rng rng(seed);
  Outcome o;
  for (int it = 0; it < iterations; ++it) {
    const std::string input = mutate(seed_text, rng);
    try {
      parse(input);
      ++o.parsed;
    } catch (const pemoe::Error& e) {
      ++o.rejected;
      if (std::string(e.what()).empty())
        FAIL(what << " iteration " << it << ": pemoe::Error with an empty message");
    } catch (const std::exception& e) {
      FAIL(what << " iteration " << it << ": not a pemoe::Error: " << e.what());
    } catch (...) {
      FAIL(what << " iteration " << it << ": a non-std exception");
    }
  }
  return o;
}

}  // namespace

TEST_CASE("fuzz: mutated JSON-lines, vocab.json and merges.txt parse or throw pemoe::Error", "[fuzz]") {
  const auto start = std::chrono::steady_clock::now();
  const std::string jsonl =
      pemoe::write_jsonl_string({
          {"Add the numbers.", "17 25", "42", "add"},
          {"Reverse \"abc\".", "", "cba", "reverse"},
          {"Translate: caf\xC3\xA9 \xE2\x86\x92 English", "", "coffee\n\tshop \\o/ \xF0\x9F\x98\x80", ""},
      }) +
      "\n{\"instruction\": \"x\", \"output\": \"\\u00e9\\ud83d\\ude00\", \"extra\": {\"a\": [1, 2.5e3, "
      "null]}}\n";
  REQUIRE(pemoe::read_jsonl_string(jsonl).size() == 4);

  const std::string dir = std::string(PEMOE_TEST_DATA_DIR) + "/tokenizer";
  const std::string vocab = pemoe::testing::read_file(dir + "/vocab.json");
  const std::string merges = pemoe::testing::read_file(dir + "/merges.txt");
  REQUIRE_NOTHROW(pemoe::Gpt2Tokenizer::from_strings(vocab, merges));

  const Outcome j = fuzz("jsonl", jsonl, 4000, 1, [](const std::string& s) {
    for (const auto& ex : pemoe::read_jsonl_string(s, "fuzz.jsonl")) (void)ex;
  });
  // A loaded tokenizer must also encode and decode its round trip.
  const auto use = [](const pemoe::Gpt2Tokenizer& t) {
    const std::string text = "Hello world, it's 42 \xC3\xA9t\xC3\xA9!";
    const auto ids = t.encode(text);
    CHECK(t.decode(ids) == text);
  };
  const Outcome v = fuzz("vocab.json", vocab, 1500, 2,
                         [&](const std::string& s) { use(pemoe::Gpt2Tokenizer::from_strings(s, merges)); });
  const Outcome m = fuzz("merges.txt", merges, 1500, 3,
                         [&](const std::string& s) { use(pemoe::Gpt2Tokenizer::from_strings(vocab, s)); });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  WARN("fuzz: jsonl " << j.parsed << " parsed / " << j.rejected << " rejected; vocab.json " << v.parsed
                      << " / " << v.rejected << "; merges.txt " << m.parsed << " / " << m.rejected << "; "
                      << seconds << " s");
  // Both outcomes occur (the mutations are neither all harmless nor all fatal).
  CHECK(j.parsed > 0);
  CHECK(j.rejected > 0);
  CHECK(v.rejected > 0);
  CHECK(m.parsed > 0);
  CHECK(m.rejected > 0);
}

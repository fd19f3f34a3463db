// Tests of batching (include/pemoe/data/packing.hpp): right padding, packing of examples and of raw text.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "pemoe/data/byte_tokenizer.hpp"
#include "pemoe/data/instruction.hpp"
#include "pemoe/data/packing.hpp"

using Catch::Matchers::Contains;

namespace {

// Three examples of lengths 6, 3 and 9 with distinct ids and some -100 labels.
std::vector<pemoe::TokenizedExample> three_examples() {
  const pemoe::ByteTokenizer tok({"<eos>"});
  const std::int64_t eos = tok.special_id("<eos>");
  const pemoe::PromptTemplate tmpl;
  return {
      pemoe::tokenize_example({"ab", "", "xy", ""}, tok, tmpl, pemoe::LossOn::response, eos),  // 3 + 2 + 1
      pemoe::tokenize_example({"", "", "q", ""}, tok, tmpl, pemoe::LossOn::response, eos),     // 1 + 1 + 1
      pemoe::tokenize_example({"cd", "e", "uvwz", ""}, tok, tmpl, pemoe::LossOn::all, eos)};  // 5 + 4 + 1 - 1
}

std::vector<std::int64_t> row(const std::vector<std::int64_t>& v, const pemoe::TokenBatch& b,
                              pemoe::Index r) {
  return std::vector<std::int64_t>(v.begin() + r * b.seq_len, v.begin() + (r + 1) * b.seq_len);
}

}  // namespace

TEST_CASE("pad_batch right-pads to the longest example or to seq_len", "[packing]") {
  const auto ex = three_examples();
  REQUIRE(ex[0].ids.size() == 6);
  REQUIRE(ex[1].ids.size() == 3);
  REQUIRE(ex[2].ids.size() == 10);
  const std::int64_t pad = 7;

  for (const pemoe::Index seq_len : {pemoe::Index{0}, pemoe::Index{12}}) {
    const auto b = pemoe::pad_batch(ex, seq_len, pad);
    const pemoe::Index len = seq_len == 0 ? 10 : seq_len;
    CHECK(b.batch == 3);
    CHECK(b.seq_len == len);
    REQUIRE(b.ids.size() == static_cast<std::size_t>(3 * len));
    REQUIRE(b.labels.size() == b.ids.size());
    REQUIRE(b.attention_mask.size() == b.ids.size());
    for (pemoe::Index r = 0; r < 3; ++r) {
      const auto& e = ex[static_cast<std::size_t>(r)];
      const auto n = static_cast<pemoe::Index>(e.ids.size());
      const auto ids = row(b.ids, b, r);
      const auto labels = row(b.labels, b, r);
      const auto mask = row(b.attention_mask, b, r);
      for (pemoe::Index t = 0; t < len; ++t) {
        const auto i = static_cast<std::size_t>(t);
        if (t < n) {
          CHECK(ids[i] == e.ids[i]);
          CHECK(labels[i] == e.labels[i]);
          CHECK(mask[i] == 1);
        } else {
          CHECK(ids[i] == pad);
          CHECK(labels[i] == -100);
          CHECK(mask[i] == 0);
        }
      }
    }
    CHECK(b.num_tokens() == 19);
    CHECK(b.num_supervised() == 3 + 2 + 10);
  }
  CHECK(pemoe::pad_batch({}).batch == 0);
}

TEST_CASE("pad_batch: too long is an error unless truncate", "[packing]") {
  const auto ex = three_examples();
  CHECK_THROWS_AS(pemoe::pad_batch(ex, 8), pemoe::ConfigError);
  CHECK_THROWS_WITH(pemoe::pad_batch(ex, 8), Contains("example 2 has 10 tokens, longer than seq_len 8"));
  const auto b = pemoe::pad_batch(ex, 8, 0, true);
  CHECK(b.seq_len == 8);
  CHECK(row(b.ids, b, 2) == std::vector<std::int64_t>(ex[2].ids.begin(), ex[2].ids.begin() + 8));
  CHECK(row(b.attention_mask, b, 2) == std::vector<std::int64_t>(8, 1));
  CHECK_THROWS_AS(pemoe::pad_batch(ex, -1), pemoe::ConfigError);
  auto bad = ex;
  bad[1].labels.pop_back();
  CHECK_THROWS_AS(pemoe::pad_batch(bad), pemoe::ShapeError);
  CHECK_THROWS_WITH(pemoe::pad_batch(bad), Contains("example 1 has 3 ids but 2 labels"));
}

TEST_CASE("pack_sequences keeps every token, in order, with its label", "[packing]") {
  const auto ex = three_examples();  // 19 tokens in all
  std::vector<std::int64_t> ids, labels;
  for (const auto& e : ex) {
    ids.insert(ids.end(), e.ids.begin(), e.ids.end());
    labels.insert(labels.end(), e.labels.begin(), e.labels.end());
  }
  for (const pemoe::Index seq_len : {1, 4, 5, 19, 25}) {
    INFO("seq_len " << seq_len);
    const auto b = pemoe::pack_sequences(ex, seq_len, pemoe::PackTail::pad, 99);
    CHECK(b.seq_len == seq_len);
    CHECK(b.batch == (19 + seq_len - 1) / seq_len);
    REQUIRE(b.ids.size() == static_cast<std::size_t>(b.batch * seq_len));
    CHECK(std::vector<std::int64_t>(b.ids.begin(), b.ids.begin() + 19) == ids);
    CHECK(std::vector<std::int64_t>(b.labels.begin(), b.labels.begin() + 19) == labels);
    CHECK(b.num_tokens() == 19);
    for (std::size_t i = 19; i < b.ids.size(); ++i) {
      CHECK(b.ids[i] == 99);
      CHECK(b.labels[i] == -100);
      CHECK(b.attention_mask[i] == 0);
    }
    const auto d = pemoe::pack_sequences(ex, seq_len, pemoe::PackTail::drop);
    CHECK(d.batch == 19 / seq_len);
    CHECK(d.ids.size() == static_cast<std::size_t>(d.batch * seq_len));
    CHECK(std::vector<std::int64_t>(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(d.ids.size())) ==
          d.ids);
    CHECK(d.num_tokens() == d.batch * seq_len);
  }
  CHECK_THROWS_AS(pemoe::pack_sequences(ex, 0), pemoe::ConfigError);
  CHECK(pemoe::pack_sequences({}, 4).batch == 0);
}

TEST_CASE("pack_text cuts a raw stream with labels == ids", "[packing]") {
  std::vector<pemoe::TokenId> stream(23);
  for (std::size_t i = 0; i < stream.size(); ++i) stream[i] = static_cast<pemoe::TokenId>(i * 3 + 1);
  const auto b = pemoe::pack_text(stream, 8);
  CHECK(b.batch == 3);
  CHECK(b.seq_len == 8);
  for (std::size_t i = 0; i < 23; ++i) {
    CHECK(b.ids[i] == stream[i]);
    CHECK(b.labels[i] == stream[i]);
    CHECK(b.attention_mask[i] == 1);
  }
  CHECK(b.attention_mask[23] == 0);
  CHECK(b.labels[23] == -100);
  const auto d = pemoe::pack_text(stream, 8, pemoe::PackTail::drop);
  CHECK(d.batch == 2);
  CHECK(d.ids == d.labels);
  CHECK(d.num_supervised() == 16);
}

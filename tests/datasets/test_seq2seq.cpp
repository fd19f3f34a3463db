// Source–target pairs (include/pemoe/data/seq2seq.hpp): both sides end in the end token, padding is on the
// right with the pad id in the sources and −100 in the labels, the masks mark the tokens, and bad input is a
// named error.
#include <catch2/catch.hpp>
#include <vector>

#include "pemoe/data/byte_tokenizer.hpp"
#include "pemoe/data/seq2seq.hpp"

using namespace pemoe;

TEST_CASE("seq2seq: tokenised pairs end in eos, batches are right-padded with masks and −100 labels",
          "[data]") {
  const ByteTokenizer tok({"<pad>", "</s>"});
  const InstructionExample a{"up", "ab", "AB", "upper"}, b{"x", "", "long answer", "t"};
  const Seq2SeqExample pa = tokenize_seq2seq(a, tok, PromptTemplate{}, 257, 3);
  CHECK(pa.source == std::vector<std::int64_t>{'u', 'p', '\n', 'a', 'b', '\n', 257});
  CHECK(pa.target == std::vector<std::int64_t>{'A', 'B', 257});
  CHECK(pa.dataset == 3);
  const Seq2SeqExample pb = tokenize_seq2seq(b, tok, PromptTemplate{}, 257);
  CHECK(pb.source == std::vector<std::int64_t>{'x', '\n', 257});
  CHECK(pb.target.size() == 12);

  const Seq2SeqBatch batch = pad_seq2seq({pa, pb}, 256);
  CHECK(batch.batch == 2);
  CHECK(batch.src_len == 7);
  CHECK(batch.tgt_len == 12);
  CHECK(batch.input_ids ==
        std::vector<std::int64_t>{'u', 'p', '\n', 'a', 'b', '\n', 257, 'x', '\n', 257, 256, 256, 256, 256});
  CHECK(batch.attention_mask == std::vector<std::int64_t>{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0});
  std::vector<std::int64_t> want_labels{'A', 'B', 257};
  want_labels.resize(12, -100);
  want_labels.insert(want_labels.end(), pb.target.begin(), pb.target.end());
  CHECK(batch.labels == want_labels);
  CHECK(batch.num_source_tokens() == 10);
  CHECK(batch.num_target_tokens() == 15);
  CHECK(batch.source_padded());
  CHECK(batch.target_padded());
  std::vector<std::int64_t> want_mask(24, 0);
  for (int i = 0; i < 3; ++i) want_mask[std::size_t(i)] = 1;
  for (int i = 12; i < 24; ++i) want_mask[std::size_t(i)] = 1;
  CHECK(batch.decoder_attention_mask() == want_mask);
  const Seq2SeqBatch same = pad_seq2seq({pa, pa}, 256);
  CHECK_FALSE(same.source_padded());
  CHECK_FALSE(same.target_padded());

  CHECK_THROWS_AS(pad_seq2seq({}, 256), ConfigError);
  CHECK_THROWS_AS(pad_seq2seq({pa, Seq2SeqExample{{1}, {}, 0}}, 256), ConfigError);
  CHECK_THROWS_AS(tokenize_seq2seq(a, tok, PromptTemplate{}, -1), ConfigError);
}

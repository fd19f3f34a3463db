// T5 evaluation helpers (include/pemoe/models/t5_eval.hpp): forward_batch equals the model's own forward on
// the padded pairs, mean_loss over batches equals the loss of all pairs at once (token-weighted), greedy
// answers are the decoded greedy tokens up to the end token, and the routing means are per-router
// distributions over the experts.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "pemoe/data/byte_tokenizer.hpp"
#include "pemoe/models/t5_eval.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace t5_eval_test {

// A tiny byte-level T5 (vocabulary 258: bytes, <pad> 256, </s> 257), inner 6 != d_model 8.
T5Config byte_t5() {
  T5Config c;
  c.vocab_size = 258;
  c.d_model = 8;
  c.d_kv = 3;
  c.num_heads = 2;
  c.d_ff = 10;
  c.num_layers = 2;
  c.num_decoder_layers = 1;
  c.relative_attention_num_buckets = 8;
  c.relative_attention_max_distance = 12;
  c.dropout_rate = 0.0;
  c.feed_forward_proj = "gated-gelu";
  c.tie_word_embeddings = false;
  c.scale_decoder_outputs = false;
  c.pad_token_id = c.decoder_start_token_id = 256;
  c.eos_token_id = 257;
  return c;
}

std::vector<InstructionExample> some_examples() {
  return {{"upper", "ab", "AB", "t"},
          {"count the letters", "hello", "5", "t"},
          {"copy", "", "xyz!", "t"},
          {"reverse", "abc d", "d cba", "t"},
          {"x", "1", "one", "t"}};
}

}  // namespace t5_eval_test

using namespace t5_eval_test;

TEST_CASE("T5 eval: forward_batch, batched mean_loss and greedy answers agree with the model's own calls",
          "[t5]") {
  const T5Config cfg = byte_t5();
  T5<double> m(cfg);
  m.inject_mov(MoVConfig::for_ai(3));  // routers, so the routing statistics have something to show
  ParamStore<double> s;
  Rng rng(4);
  m.register_params(s, rng);
  testing::randomize_params(s, 7, 0.6);
  m.set_training(false);
  const ByteTokenizer tok({"<pad>", "</s>"});
  const PromptTemplate tmpl;
  const auto ex = some_examples();
  std::vector<Seq2SeqExample> pairs;
  for (const auto& e : ex) pairs.push_back(tokenize_seq2seq(e, tok, tmpl, 257));

  // forward_batch = set_batch with both masks + forward(src, labels)
  const Seq2SeqBatch all = pad_seq2seq(pairs, 256);
  T5<double>::Cache c, ref;
  const double loss_all = forward_batch(m, all, c);
  m.set_batch(all.batch, all.src_len, all.tgt_len, all.attention_mask, all.decoder_attention_mask());
  m.forward(all.input_ids, all.labels, ref);
  CHECK(loss_all == ref.lm_loss);
  CHECK(c.logits == ref.logits);

  // mean_loss in batches of 2 (padded to different lengths) = the loss of all five at once
  CHECK(std::abs(mean_loss(m, pairs, 2, 256) - loss_all) < 1e-12);
  CHECK(std::abs(mean_loss(m, pairs, 5, 256) - loss_all) < 1e-14);
  CHECK_THROWS_AS(mean_loss(m, pairs, 0, 256), ConfigError);

  // the routing means: one distribution over the experts per router
  const auto mean = mean_routing(m, c);
  REQUIRE(mean.size() == m.routers().size());
  for (const auto& r : mean) {
    double sum = 0;
    for (double v : r) sum += v;
    CHECK(std::abs(sum - 1.0) < 1e-12);
  }

  // greedy answers = generate's greedy tokens from the sources, cut at the end token, decoded
  const auto answers = greedy_answers(m, ex, tok, tmpl, 257, 6, 2);
  REQUIRE(answers.size() == ex.size());
  std::vector<std::vector<std::int64_t>> sources;
  for (const auto& p : pairs) sources.push_back(p.source);
  GenerateOptions g;
  g.max_new_tokens = 6;
  g.eos_token_ids = {257};
  const auto tokens = generate(m, sources, g);
  for (std::size_t i = 0; i < ex.size(); ++i) {
    std::vector<TokenId> ids;
    for (auto t : tokens[i]) {
      if (t == 257) break;
      ids.push_back(TokenId(t));
    }
    CHECK(answers[i] == tok.decode(ids, true));
  }
}

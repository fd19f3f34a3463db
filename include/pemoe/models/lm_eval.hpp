/// @file lm_eval.hpp
/// @brief Evaluating a GPT-2 on tokenised data: the mean next-token loss over many rows, greedy answers to
/// instruction prompts (exact-match accuracy), and the routing statistics of its MoE adapters (the mean
/// routing probability of every expert, per router). Shared by the examples and `pemoe eval`.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "pemoe/data/byte_tokenizer.hpp"  // TokenId
#include "pemoe/data/instruction.hpp"
#include "pemoe/data/packing.hpp"
#include "pemoe/models/generate.hpp"
#include "pemoe/models/gpt2.hpp"

namespace pemoe {

/// Rows `rows` of `data`, in that order, as a batch of their own (ids, labels, mask copied). O(rows · T).
inline TokenBatch take_rows(const TokenBatch& data, const std::vector<Index>& rows) {
  TokenBatch b;
  b.batch = Index(rows.size());
  b.seq_len = data.seq_len;
  const std::size_t T = std::size_t(data.seq_len);
  for (Index r : rows) {
    PEMOE_CHECK_SHAPE(r >= 0 && r < data.batch, "take_rows: row ", r, " of a batch of ", data.batch);
    const auto from = std::size_t(r) * T;
    b.ids.insert(b.ids.end(), data.ids.begin() + long(from), data.ids.begin() + long(from + T));
    b.labels.insert(b.labels.end(), data.labels.begin() + long(from), data.labels.begin() + long(from + T));
    b.attention_mask.insert(b.attention_mask.end(), data.attention_mask.begin() + long(from),
                            data.attention_mask.begin() + long(from + T));
  }
  return b;
}

/// Runs `model` (in its current mode) on `b` with its padding mask; returns the language-model loss (mean
/// cross-entropy over the predicted tokens, aux losses excluded) and leaves the activations in `cache`.
template <class T>
double forward_batch(GPT2<T>& model, const TokenBatch& b, typename GPT2<T>::Cache& cache) {
  const bool padded =
      std::find(b.attention_mask.begin(), b.attention_mask.end(), 0) != b.attention_mask.end();
  model.set_batch(b.batch, b.seq_len, padded ? b.attention_mask : std::vector<std::int64_t>{});
  model.forward(b.ids, b.labels, cache);
  return cache.lm_loss;
}

/// The number of tokens the loss of a forward over `b` is taken on (labels ≠ −100 after the shift).
inline double predicted_tokens(const TokenBatch& b) {
  double n = 0;
  for (Index r = 0; r < b.batch; ++r)
    for (Index t = 1; t < b.seq_len; ++t) n += b.labels[std::size_t(r * b.seq_len + t)] != kIgnoreLabel;
  return n;
}

/**
 * @brief The mean next-token cross-entropy (nats per predicted token, aux losses excluded) of `model` over
 * every row of `data`, run `batch` rows at a time: Σ_batches loss·n / Σ n with n the predicted tokens of a
 * batch, i.e. the loss of all rows at once. Run in the model's current mode (switch to inference first).
 */
template <class T>
double mean_loss(GPT2<T>& model, const TokenBatch& data, Index batch) {
  PEMOE_CHECK_CONFIG(batch > 0, "mean_loss: batch must be > 0, got ", batch);
  typename GPT2<T>::Cache cache;
  double sum = 0, count = 0;
  for (Index r0 = 0; r0 < data.batch; r0 += batch) {
    std::vector<Index> rows;
    for (Index r = r0; r < std::min(data.batch, r0 + batch); ++r) rows.push_back(r);
    const TokenBatch b = take_rows(data, rows);
    const double n = predicted_tokens(b);
    if (n == 0) continue;
    sum += forward_batch(model, b, cache) * n;
    count += n;
  }
  return count > 0 ? sum / count : 0.0;
}

/// `mean_loss` over examples of different lengths: each batch of `batch` examples right-padded with
/// `pad_id` to its longest example.
template <class T>
double mean_loss(GPT2<T>& model, const std::vector<TokenizedExample>& examples, Index batch,
                 std::int64_t pad_id) {
  PEMOE_CHECK_CONFIG(batch > 0, "mean_loss: batch must be > 0, got ", batch);
  typename GPT2<T>::Cache cache;
  double sum = 0, count = 0;
  for (std::size_t i = 0; i < examples.size(); i += std::size_t(batch)) {
    const std::vector<TokenizedExample> part(examples.begin() + long(i),
                                             examples.begin() + long(std::min(examples.size(), i + batch)));
    const TokenBatch b = pad_batch(part, 0, pad_id);
    const double n = predicted_tokens(b);
    if (n == 0) continue;
    sum += forward_batch(model, b, cache) * n;
    count += n;
  }
  return count > 0 ? sum / count : 0.0;
}

/**
 * @brief Greedy answers of `model` (in inference mode) to instruction examples: the prompt of each
 * (`prompt_ids` with `tmpl`) is completed with greedy decoding until `eos` or `max_new_tokens` (capped so
 * that prompt + answer fit in n_positions), `batch` prompts at a time; returns the decoded answers without
 * the eos. The model's own tokenizer `tok` must have `encode` and `decode`.
 */
template <class T, class Tokenizer>
std::vector<std::string> greedy_answers(GPT2<T>& model, const std::vector<InstructionExample>& examples,
                                        const Tokenizer& tok, const PromptTemplate& tmpl, std::int64_t eos,
                                        Index max_new_tokens, Index batch = 32) {
  PEMOE_CHECK_CONFIG(batch > 0, "greedy_answers: batch must be > 0, got ", batch);
  std::vector<std::string> answers;
  for (std::size_t i = 0; i < examples.size(); i += std::size_t(batch)) {
    std::vector<std::vector<std::int64_t>> prompts;
    Index longest = 0;
    for (std::size_t j = i; j < std::min(examples.size(), i + std::size_t(batch)); ++j) {
      prompts.push_back(prompt_ids(examples[j], tok, tmpl));
      longest = std::max(longest, Index(prompts.back().size()));
    }
    GenerateOptions g;
    g.max_new_tokens = std::max<Index>(0, std::min(max_new_tokens, model.config().n_positions - longest));
    g.eos_token_ids = {eos};
    for (const auto& out : generate(model, prompts, g)) {
      answers.push_back(decode_answer(tok, out, eos));
    }
  }
  return answers;
}

/**
 * @brief The mean routing probability of every expert of every router of `model` over the tokens of the
 * forward call that filled `cache` (padding excluded): entry [i][e] = mean over tokens t of
 * softmax(router logits)_{t,e} for router `model.routers()[i]`. For a soft mixture this is the expert's
 * share of the output; for top-k routing, the probability before the selection (see `expert_load` for the
 * share of the selections).
 */
template <class T>
std::vector<std::vector<double>> mean_routing(GPT2<T>& model, const typename GPT2<T>::Cache& cache) {
  std::vector<std::vector<double>> out;
  for (const auto* rc : model.router_caches(cache)) out.push_back(Router<T>::mean_probs(*rc));
  return out;
}

}  // namespace pemoe

/// @file t5_eval.hpp
/// @brief Evaluating a T5 on source–target pairs, as lm_eval.hpp does for GPT-2: the mean loss over many
/// pairs, greedy answers to instruction prompts (exact-match accuracy) and the mean routing probability of
/// every router of its MoE adapters. Shared by the examples and the command-line tool.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "pemoe/data/byte_tokenizer.hpp"  // TokenId
#include "pemoe/data/instruction.hpp"
#include "pemoe/data/seq2seq.hpp"
#include "pemoe/models/t5.hpp"
#include "pemoe/models/t5_generate.hpp"

namespace pemoe {

/// Runs `model` (in its current mode) on `b`, source and target padding masked; returns the language-model
/// loss (mean cross-entropy over the target tokens, aux losses excluded) and leaves the activations in
/// `cache`.
template <class T>
double forward_batch(T5<T>& model, const Seq2SeqBatch& b, typename T5<T>::Cache& cache) {
  model.set_batch(b.batch, b.src_len, b.tgt_len,
                  b.source_padded() ? b.attention_mask : std::vector<std::int64_t>{},
                  b.target_padded() ? b.decoder_attention_mask() : std::vector<std::int64_t>{});
  model.forward(b.input_ids, b.labels, cache);
  return cache.lm_loss;
}

/**
 * @brief The mean cross-entropy per target token (aux losses excluded) of `model` over `pairs`, `batch`
 * pairs at a time, each batch padded with `pad_id`: Σ loss·n / Σ n with n a batch's target tokens, i.e. the
 * loss of all pairs at once. Run in the model's current mode (switch to inference first).
 */
template <class T>
double mean_loss(T5<T>& model, const std::vector<Seq2SeqExample>& pairs, Index batch, std::int64_t pad_id) {
  PEMOE_CHECK_CONFIG(batch > 0, "mean_loss: batch must be > 0, got ", batch);
  typename T5<T>::Cache cache;
  double sum = 0, count = 0;
  for (std::size_t i = 0; i < pairs.size(); i += std::size_t(batch)) {
    const std::vector<Seq2SeqExample> part(
        pairs.begin() + long(i), pairs.begin() + long(std::min(pairs.size(), i + std::size_t(batch))));
    const Seq2SeqBatch b = pad_seq2seq(part, pad_id);
    const double n = double(b.num_target_tokens());
    if (n == 0) continue;
    sum += forward_batch(model, b, cache) * n;
    count += n;
  }
  return count > 0 ? sum / count : 0.0;
}

/**
 * @brief Greedy answers of `model` (in inference mode) to instruction examples: the source of each (the
 * prompt of `tmpl` followed by `eos`, as `tokenize_seq2seq` makes it) is decoded greedily with the cached
 * decoder until `eos` or `max_new_tokens`, `batch` sources at a time; returns the decoded answers without
 * the eos. `tok` must have `encode` and `decode` (`ByteTokenizer`).
 */
template <class T, class Tokenizer>
std::vector<std::string> greedy_answers(T5<T>& model, const std::vector<InstructionExample>& examples,
                                        const Tokenizer& tok, const PromptTemplate& tmpl, std::int64_t eos,
                                        Index max_new_tokens, Index batch = 32) {
  PEMOE_CHECK_CONFIG(batch > 0, "greedy_answers: batch must be > 0, got ", batch);
  std::vector<std::string> answers;
  GenerateOptions g;
  g.max_new_tokens = max_new_tokens;
  g.eos_token_ids = {eos};
  for (std::size_t i = 0; i < examples.size(); i += std::size_t(batch)) {
    std::vector<std::vector<std::int64_t>> sources;
    for (std::size_t j = i; j < std::min(examples.size(), i + std::size_t(batch)); ++j)
      sources.push_back(tokenize_seq2seq(examples[j], tok, tmpl, eos).source);
    for (const auto& out : generate(model, sources, g)) {
      answers.push_back(decode_answer(tok, out, eos));
    }
  }
  return answers;
}

/// The mean routing probability of every expert of every router of `model` (`routers()` order) over the
/// tokens of the forward that filled `cache`, padding excluded (`Router::mean_probs`).
template <class T>
std::vector<std::vector<double>> mean_routing(T5<T>& model, const typename T5<T>::Cache& cache) {
  std::vector<std::vector<double>> out;
  for (const auto* rc : model.router_caches(cache)) out.push_back(Router<T>::mean_probs(*rc));
  return out;
}

}  // namespace pemoe

/// @file seq2seq.hpp
/// @brief Source–target pairs for an encoder–decoder (T5): an instruction example tokenised as a source
/// (the prompt) and a target (the response), both ended by the end token as T5 ends every sequence with
/// `</s>`, and a batch of pairs right-padded the way Hugging Face's `DataCollatorForSeq2Seq` pads them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/tensor.hpp"  // Index
#include "pemoe/data/instruction.hpp"

namespace pemoe {

/// A tokenised source–target pair: `source` = encode(prompt) ++ [eos], `target` = encode(response) ++ [eos].
struct Seq2SeqExample {
  std::vector<std::int64_t> source;  ///< encoder input ids, length Ls ≥ 1
  std::vector<std::int64_t> target;  ///< the ids the decoder learns to produce, length Lt ≥ 1
  int dataset = 0;                   ///< the dataset the pair came from (an index chosen by the caller)
};

/// Tokenises `ex` with `tmpl`'s prompt as the source and its response as the target, each followed by
/// `eos_id` (≥ 0, `ConfigError` otherwise). `Tokenizer` needs `encode(std::string_view)` (e.g.
/// `ByteTokenizer`). O(text length).
template <class Tokenizer>
Seq2SeqExample tokenize_seq2seq(const InstructionExample& ex, const Tokenizer& tokenizer,
                                const PromptTemplate& tmpl, std::int64_t eos_id, int dataset = 0) {
  PEMOE_CHECK_CONFIG(eos_id >= 0, "tokenize_seq2seq: eos_id is ", eos_id, ", expected a token id >= 0");
  Seq2SeqExample s;
  s.dataset = dataset;
  for (auto t : tokenizer.encode(tmpl.format_prompt(ex))) s.source.push_back(std::int64_t(t));
  for (auto t : tokenizer.encode(tmpl.format_response(ex))) s.target.push_back(std::int64_t(t));
  s.source.push_back(eos_id);
  s.target.push_back(eos_id);
  return s;
}

/**
 * @brief A batch of B pairs, right-padded: sources to the longest source (Ts), targets to the longest
 * target (Tt). The decoder's inputs are not stored: the model makes them by shifting `labels` right with its
 * decoder start token (a −100 becomes the pad id, as Hugging Face's `_shift_right`).
 */
struct Seq2SeqBatch {
  Index batch = 0;                           ///< pairs
  Index src_len = 0;                         ///< Ts
  Index tgt_len = 0;                         ///< Tt
  std::vector<std::int64_t> input_ids;       ///< (B·Ts) source ids, pad id on padding
  std::vector<std::int64_t> attention_mask;  ///< (B·Ts) 1 on source tokens, 0 on padding
  std::vector<std::int64_t> labels;          ///< (B·Tt) target ids, −100 on padding (no loss)

  /// Target tokens the loss is taken on (labels ≠ −100).
  Index num_target_tokens() const {
    return Index(labels.size()) - Index(std::count(labels.begin(), labels.end(), kIgnoreLabel));
  }
  /// Source tokens (mask 1).
  Index num_source_tokens() const {
    return Index(std::count(attention_mask.begin(), attention_mask.end(), std::int64_t{1}));
  }
  /// Whether any source is padded (the encoder then needs the mask).
  bool source_padded() const { return num_source_tokens() != batch * src_len; }
  /// Whether any target is padded.
  bool target_padded() const { return num_target_tokens() != batch * tgt_len; }
  /// (B·Tt) 1 on target tokens, 0 on padding (Hugging Face's `decoder_attention_mask`). With right padding
  /// it changes no real position's output (padding comes after it, beyond the causal mask); routers leave
  /// the padding out of their statistics.
  std::vector<std::int64_t> decoder_attention_mask() const {
    std::vector<std::int64_t> m(labels.size());
    for (std::size_t i = 0; i < labels.size(); ++i) m[i] = labels[i] != kIgnoreLabel ? 1 : 0;
    return m;
  }
};

/// Pads `pairs` (non-empty, each with a non-empty source and target; `ConfigError` otherwise) into one
/// batch; `pad_id` fills the sources' padding. O(B·(Ts + Tt)).
inline Seq2SeqBatch pad_seq2seq(const std::vector<Seq2SeqExample>& pairs, std::int64_t pad_id) {
  PEMOE_CHECK_CONFIG(!pairs.empty(), "pad_seq2seq: no pairs (need at least one)");
  Seq2SeqBatch b;
  b.batch = Index(pairs.size());
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    PEMOE_CHECK_CONFIG(!pairs[i].source.empty() && !pairs[i].target.empty(), "pad_seq2seq: pair ", i,
                       " has an empty ", pairs[i].source.empty() ? "source" : "target");
    b.src_len = std::max(b.src_len, Index(pairs[i].source.size()));
    b.tgt_len = std::max(b.tgt_len, Index(pairs[i].target.size()));
  }
  for (const Seq2SeqExample& p : pairs) {
    for (Index t = 0; t < b.src_len; ++t) {
      const bool token = t < Index(p.source.size());
      b.input_ids.push_back(token ? p.source[std::size_t(t)] : pad_id);
      b.attention_mask.push_back(token ? 1 : 0);
    }
    for (Index t = 0; t < b.tgt_len; ++t)
      b.labels.push_back(t < Index(p.target.size()) ? p.target[std::size_t(t)] : kIgnoreLabel);
  }
  return b;
}

}  // namespace pemoe

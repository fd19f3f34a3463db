/// @file packing.hpp
/// @brief Batches of token sequences: right padding of examples, or packing of examples / raw text into
/// fixed-length blocks.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "pemoe/core/config.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/data/instruction.hpp"

namespace pemoe {

/// A batch of `batch` sequences of `seq_len` tokens, each array `batch · seq_len` long, row-major
/// (`ids[b · seq_len + t]` is token t of sequence b).
///
/// - `ids`: token ids (`pad_id` on padding);
/// - `labels`: the targets, unshifted (the model predicts `labels[b, t + 1]` at position t), -100 where no
///   loss is taken (prompt tokens, padding);
/// - `attention_mask`: 1 on real tokens, 0 on padding (Hugging Face convention).
struct TokenBatch {
  Index batch = 0;                           ///< number of sequences
  Index seq_len = 0;                         ///< tokens per sequence
  std::vector<std::int64_t> ids;             ///< batch · seq_len token ids
  std::vector<std::int64_t> labels;          ///< batch · seq_len labels (-100 = ignored)
  std::vector<std::int64_t> attention_mask;  ///< batch · seq_len, 1 = real token, 0 = padding

  /// Number of entries whose attention mask is 1.
  Index num_tokens() const {
    return static_cast<Index>(std::count(attention_mask.begin(), attention_mask.end(), std::int64_t{1}));
  }
  /// Number of labels that are not -100 (the tokens the loss is taken on).
  Index num_supervised() const {
    return static_cast<Index>(labels.size()) -
           static_cast<Index>(std::count(labels.begin(), labels.end(), kIgnoreLabel));
  }
};

/// What `pack_sequences` / `pack_text` do with the last, partial block.
enum class PackTail {
  pad,   ///< keep it, right-padded (labels -100, mask 0): no token is lost (default)
  drop,  ///< drop it (every block full, as Hugging Face's `group_texts`)
};

namespace detail {

inline void check_example(const TokenizedExample& ex, std::size_t i, const char* site) {
  PEMOE_CHECK_SHAPE(ex.ids.size() == ex.labels.size(), site, ": example ", i, " has ", ex.ids.size(),
                    " ids but ", ex.labels.size(), " labels");
}

inline TokenBatch blank_batch(Index batch, Index seq_len, std::int64_t pad_id) {
  TokenBatch b;
  b.batch = batch;
  b.seq_len = seq_len;
  const auto n = static_cast<std::size_t>(batch * seq_len);
  b.ids.assign(n, pad_id);
  b.labels.assign(n, kIgnoreLabel);
  b.attention_mask.assign(n, 0);
  return b;
}

}  // namespace detail

/// Right-pads `examples` into one batch, one row per example, in order.
///
/// `seq_len` = 0 uses the longest example's length; otherwise every row is `seq_len` long. Padding positions
/// get `pad_id`, label -100 and mask 0. An example longer than `seq_len` is a `ConfigError` naming its index,
/// its length and `seq_len`, unless `truncate` is true, which keeps its first `seq_len` tokens (the end of
/// the response, and its eos, are then lost). `ShapeError` when an example's ids and labels differ in
/// length; `ConfigError` for a negative `seq_len`. O(batch · seq_len).
inline TokenBatch pad_batch(const std::vector<TokenizedExample>& examples, Index seq_len = 0,
                            std::int64_t pad_id = 0, bool truncate = false) {
  PEMOE_CHECK_CONFIG(seq_len >= 0, "pad_batch: seq_len is ", seq_len,
                     ", expected >= 0 (0 = the longest example)");
  Index longest = 0;
  for (std::size_t i = 0; i < examples.size(); ++i) {
    detail::check_example(examples[i], i, "pad_batch");
    longest = std::max(longest, static_cast<Index>(examples[i].ids.size()));
  }
  const Index len = seq_len == 0 ? longest : seq_len;
  TokenBatch b = detail::blank_batch(static_cast<Index>(examples.size()), len, pad_id);
  for (std::size_t i = 0; i < examples.size(); ++i) {
    const TokenizedExample& ex = examples[i];
    const auto n = static_cast<Index>(ex.ids.size());
    PEMOE_CHECK_CONFIG(
        n <= len || truncate, "pad_batch: example ", i, " has ", n, " tokens, longer than seq_len ", len,
        "; raise seq_len, filter long examples, or pass truncate=true to keep the first ", len, " tokens");
    const Index keep = std::min(n, len);
    const auto row = static_cast<std::size_t>(static_cast<Index>(i) * len);
    std::copy_n(ex.ids.begin(), keep, b.ids.begin() + static_cast<std::ptrdiff_t>(row));
    std::copy_n(ex.labels.begin(), keep, b.labels.begin() + static_cast<std::ptrdiff_t>(row));
    std::fill_n(b.attention_mask.begin() + static_cast<std::ptrdiff_t>(row), keep, std::int64_t{1});
  }
  return b;
}

/// Packs a token stream (`ids` and `labels`, the same length) into blocks of `seq_len` tokens; the last
/// partial block is padded or dropped per `tail`. Shared by `pack_sequences` and `pack_text`.
inline TokenBatch pack_stream(const std::vector<std::int64_t>& ids, const std::vector<std::int64_t>& labels,
                              Index seq_len, PackTail tail = PackTail::pad, std::int64_t pad_id = 0) {
  PEMOE_CHECK_CONFIG(seq_len > 0, "pack: seq_len is ", seq_len, ", expected > 0");
  PEMOE_CHECK_SHAPE(ids.size() == labels.size(), "pack: ", ids.size(), " ids but ", labels.size(), " labels");
  const auto total = static_cast<Index>(ids.size());
  const Index rows = tail == PackTail::pad ? (total + seq_len - 1) / seq_len : total / seq_len;
  const Index used = std::min(total, rows * seq_len);
  TokenBatch b = detail::blank_batch(rows, seq_len, pad_id);
  std::copy_n(ids.begin(), used, b.ids.begin());
  std::copy_n(labels.begin(), used, b.labels.begin());
  std::fill_n(b.attention_mask.begin(), used, std::int64_t{1});
  return b;
}

/// Packs `examples` (each already ending in its eos, as `tokenize_example` makes them) into one stream, in
/// order, and cuts it into blocks of `seq_len` tokens: ids and labels move together, so the prompt masking
/// (-100) of each example is kept. With `PackTail::pad` (default) the last block is right-padded (labels
/// -100, mask 0) and no token is lost; with `PackTail::drop` it is dropped.
///
/// The attention mask is 1 on every real token, so within a block attention crosses example boundaries (the
/// GPT-2 pretraining convention: the eos separates examples, and causal attention lets a later example see
/// an earlier one). Use `pad_batch` for examples that must not see each other. A label at the first position
/// of a block is never predicted (the model shifts within a block). O(total tokens).
inline TokenBatch pack_sequences(const std::vector<TokenizedExample>& examples, Index seq_len,
                                 PackTail tail = PackTail::pad, std::int64_t pad_id = 0) {
  std::vector<std::int64_t> ids;
  std::vector<std::int64_t> labels;
  for (std::size_t i = 0; i < examples.size(); ++i) {
    detail::check_example(examples[i], i, "pack_sequences");
    ids.insert(ids.end(), examples[i].ids.begin(), examples[i].ids.end());
    labels.insert(labels.end(), examples[i].labels.begin(), examples[i].labels.end());
  }
  return pack_stream(ids, labels, seq_len, tail, pad_id);
}

/// Packs a raw token stream (a tokenised corpus, documents separated by eos by the caller) into blocks of
/// `seq_len` tokens with labels == ids (language-model pretraining); tail handling as `pack_sequences`.
template <class Id>
TokenBatch pack_text(const std::vector<Id>& stream, Index seq_len, PackTail tail = PackTail::pad,
                     std::int64_t pad_id = 0) {
  const std::vector<std::int64_t> ids(stream.begin(), stream.end());
  return pack_stream(ids, ids, seq_len, tail, pad_id);
}

}  // namespace pemoe

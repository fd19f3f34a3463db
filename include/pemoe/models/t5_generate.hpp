/// @file t5_generate.hpp
/// @brief Autoregressive decoding for `T5`: the encoder runs once, the decoder one token at a time against
/// a key/value cache (`T5Decoder`), and `generate` chooses the tokens as Hugging Face does (greedy, or
/// sampled with temperature, top-k and top-p; `next_token` of generate.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/models/generate.hpp"
#include "pemoe/models/t5.hpp"

namespace pemoe {

namespace detail {

/// Sources right-padded to the longest with the pad id: ids and mask (B·longest), 1 on tokens.
struct T5PaddedSources {
  Index batch = 0, longest = 0;
  std::vector<std::int64_t> ids, mask;
};

/// Checks the sources (non-empty sequences of in-vocabulary ids) and pads them; `who` names the caller.
inline T5PaddedSources pad_t5_sources(const T5Config& c,
                                      const std::vector<std::vector<std::int64_t>>& sources,
                                      const char* who) {
  PEMOE_CHECK_CONFIG(!sources.empty(), who, ": no sources (need at least one sequence)");
  T5PaddedSources p;
  p.batch = Index(sources.size());
  for (std::size_t b = 0; b < sources.size(); ++b) {
    PEMOE_CHECK_CONFIG(!sources[b].empty(), who, ": source ", b, " is empty");
    for (std::size_t i = 0; i < sources[b].size(); ++i)
      PEMOE_CHECK_SHAPE(sources[b][i] >= 0 && sources[b][i] < c.vocab_size, who, ": source ", b, " token ", i,
                        " is id ", sources[b][i], ", outside the vocabulary [0, ", c.vocab_size, ")");
    p.longest = std::max(p.longest, Index(sources[b].size()));
  }
  for (const auto& src : sources)
    for (Index t = 0; t < p.longest; ++t) {
      const bool token = t < Index(src.size());
      p.ids.push_back(token ? src[std::size_t(t)] : c.pad_token_id);
      p.mask.push_back(token ? 1 : 0);
    }
  return p;
}

/// While alive, decoding may change the T5's batch layout (`set_batch`); the saved one is put back on exit.
template <class T>
class T5LayoutRestore {
 public:
  explicit T5LayoutRestore(T5<T>& model) : m_model(model), m_layout(model.batch_layout()) {}
  ~T5LayoutRestore() {
    try {
      if (m_layout.batch > 0)
        m_model.set_batch(m_layout.batch, m_layout.src_len, m_layout.tgt_len, m_layout.src_mask,
                          m_layout.tgt_mask);
    } catch (...) {  // the layout was valid when saved; never throw from a destructor
    }
  }
  T5LayoutRestore(const T5LayoutRestore&) = delete;
  T5LayoutRestore& operator=(const T5LayoutRestore&) = delete;

 private:
  T5<T>& m_model;
  typename T5<T>::BatchLayout m_layout;
};

/// `ConfigError` unless the model can decode: parameters registered and eval mode.
template <class T>
void check_t5_can_decode(T5<T>& model, const char* who) {
  PEMOE_CHECK_CONFIG(model.store() != nullptr, who, ": call register_params() on the model first");
  PEMOE_CHECK_CONFIG(
      !model.training(), who,
      ": the model is in training mode (dropout, router noise); call set_training(false) first");
}

}  // namespace detail

/**
 * @brief Incremental T5 inference: the constructor runs the encoder over the sources (right-padded to the
 * longest, padding masked as in training) and computes every cross-attention's keys and values once; each
 * `step` feeds one decoder token per sequence through every decoder block against the self-attention cache
 * and returns the next-token logits (B, vocab).
 *
 * Every layer is the model's own (RMSNorms, the `LinearSite` projections with any injected adapter, MoV on
 * the intermediate activation, the relative position bias of the first decoder block, the head with its
 * scale), so a step equals the last row of a full forward over the same decoder inputs to rounding. The model
 * must be in eval mode (`ConfigError` otherwise). While the decoder lives its routers record nothing; the
 * model's batch layout and the routers' state are put back when it is destroyed.
 *
 * Memory: per decoder layer 2·B·capacity·inner (self) + 2·B·Ts·inner (cross) values. Cost per step: the
 * decoder's weights once per token (2·params·B flops) plus 4·t·inner per layer and token for attention.
 */
template <class T>
class T5Decoder {
 public:
  /// Sources: B non-empty id sequences; up to `capacity` decoder positions per sequence.
  T5Decoder(T5<T>& model, const std::vector<std::vector<std::int64_t>>& sources, Index capacity)
      : m_model(model), m_quiet(model.routers()), m_restore(model) {
    const T5Config& c = model.config();
    detail::check_t5_can_decode(model, "T5Decoder");
    PEMOE_CHECK_CONFIG(capacity > 0, "T5Decoder: capacity must be positive, got ", capacity);
    const detail::T5PaddedSources src = detail::pad_t5_sources(c, sources, "T5Decoder");
    m_batch = src.batch;
    model.set_batch(m_batch, src.longest, 1, src.mask);
    typename T5<T>::Cache cache;
    model.encode(src.ids, cache);
    m_self.resize(std::size_t(c.decoder_layers()));
    m_cross.resize(m_self.size());
    for (Index l = 0; l < c.decoder_layers(); ++l) {
      T5Block<T>& blk = model.decoder_block(l);
      blk.self_attention().begin_self(m_batch, capacity, m_self[std::size_t(l)]);
      blk.cross_attention().begin_cross(cache.enc_out, m_batch, src.mask, m_cross[std::size_t(l)]);
    }
  }
  T5Decoder(const T5Decoder&) = delete;
  T5Decoder& operator=(const T5Decoder&) = delete;

  /// Feeds one decoder token per sequence (B ids; the first step: the decoder start token) and returns the
  /// logits of the next token (B, vocab). `ConfigError` when the cache is full.
  const Matrix<T>& step(const std::vector<std::int64_t>& tokens) {
    const T5Config& c = m_model.config();
    PEMOE_CHECK_SHAPE(Index(tokens.size()) == m_batch, "T5Decoder: ", tokens.size(),
                      " tokens, expected B = ", m_batch);
    for (std::size_t b = 0; b < tokens.size(); ++b)
      PEMOE_CHECK_SHAPE(tokens[b] >= 0 && tokens[b] < c.vocab_size, "T5Decoder: token ", b, " is id ",
                        tokens[b], ", outside the vocabulary [0, ", c.vocab_size, ")");
    const Index t = m_self.front().len, d = c.d_model;
    Matrix<T> bias;  // (H, t + 1): this query's row of the causal position bias
    m_model.decoder_block(0).relative_bias().forward_row(t, t + 1, bias);
    Matrix<T> x(m_batch, d), y(m_batch, d);
    typename Embedding<T>::Cache ec;
    m_model.shared().forward(tokens, x, ec);
    for (Index l = 0; l < c.decoder_layers(); ++l) {
      m_model.decoder_block(l).decode_step(x, m_self[std::size_t(l)], m_cross[std::size_t(l)], bias, y);
      x.swap(y);
    }
    typename RMSNorm<T>::Cache lc;
    m_model.decoder_final_layer_norm().forward(x, y, lc);
    y *= T(m_model.head_scale());
    m_logits.resize(m_batch, c.vocab_size);
    if (c.tie_word_embeddings) {
      m_model.shared().logits(y, m_logits);
    } else {
      typename Linear<T>::Cache hc;
      m_model.lm_head().forward(y, m_logits, hc);
    }
    return m_logits;
  }

  /// Decoder positions fed so far.
  Index length() const { return m_self.front().len; }
  Index batch() const { return m_batch; }

 private:
  T5<T>& m_model;
  detail::RouterQuiet<T> m_quiet;  // destroyed last: the routers' own masks win over set_batch's
  detail::T5LayoutRestore<T> m_restore;
  Index m_batch = 0;
  std::vector<typename T5Attention<T>::KVCache> m_self, m_cross;
  Matrix<T> m_logits;
};

/**
 * @brief Generates up to `o.max_new_tokens` tokens per source with a T5: the decoder starts from
 * `decoder_start_token_id` and each step's token is chosen from the logits as `generate` does for GPT-2
 * (greedy = Hugging Face's `generate(do_sample=False)`; sampling from per-sequence seeded streams). A
 * sequence stops after one of `o.eos_token_ids` (empty: the config's `eos_token_id`). Returns the new tokens
 * of each sequence (the start token not included). `o.use_cache = false` runs the full forward over the
 * growing decoder input at every step instead (the reference the cached path is tested against).
 */
template <class T>
std::vector<std::vector<std::int64_t>> generate(T5<T>& model,
                                                const std::vector<std::vector<std::int64_t>>& sources,
                                                GenerateOptions o = {}) {
  const T5Config& c = model.config();
  if (o.eos_token_ids.empty()) o.eos_token_ids = {c.eos_token_id};
  o.validate(c.vocab_size);
  const Index B = Index(sources.size()), V = c.vocab_size;
  detail::TokenChooser chooser(o, B, c.decoder_start_token_id);
  if (o.use_cache) {
    T5Decoder<T> dec(model, sources, std::max<Index>(o.max_new_tokens, 1));  // validates the sources
    for (Index s = 0; s < o.max_new_tokens; ++s)
      if (!chooser.choose(dec.step(chooser.feed()), s)) break;
    return chooser.take_tokens();
  }
  // Uncached: the full forward over [start, tokens so far] at every step, the sources padded as T5Decoder
  // pads them; the model's layout and routers are put back afterwards.
  detail::check_t5_can_decode(model, "generate");
  const detail::T5PaddedSources src = detail::pad_t5_sources(c, sources, "generate");
  detail::RouterQuiet<T> quiet(model.routers());  // outlives `restore`: the routers' own masks win
  detail::T5LayoutRestore<T> restore(model);
  std::vector<std::vector<std::int64_t>> inputs(std::size_t(B), {c.decoder_start_token_id});
  typename T5<T>::Cache cache;
  Matrix<T> logits(B, V);
  for (Index s = 0; s < o.max_new_tokens; ++s) {
    const Index len = s + 1;
    std::vector<std::int64_t> flat;
    for (const auto& q : inputs) flat.insert(flat.end(), q.begin(), q.end());
    model.set_batch(B, src.longest, len, src.mask);
    model.forward(src.ids, flat, {}, cache);
    for (Index b = 0; b < B; ++b) logits.row(b) = cache.logits.row(b * len + len - 1);
    const bool more = chooser.choose(logits, s);
    for (Index b = 0; b < B; ++b) inputs[std::size_t(b)].push_back(chooser.feed()[std::size_t(b)]);
    if (!more) break;
  }
  return chooser.take_tokens();
}

}  // namespace pemoe

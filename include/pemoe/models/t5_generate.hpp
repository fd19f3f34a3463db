/// @file t5_generate.hpp
/// @brief Autoregressive decoding for `T5`: the encoder runs once, the decoder one token at a time against
/// a key/value cache (`T5Decoder`), and `generate` chooses the tokens as Hugging Face does (greedy, or
/// sampled with temperature, top-k and top-p; `next_token` of generate.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/models/generate.hpp"
#include "pemoe/models/t5.hpp"

namespace pemoe {

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
      : m_model(model), m_layout(model.batch_layout()), m_quiet(model.routers()) {
    const T5Config& c = model.config();
    PEMOE_CHECK_CONFIG(model.store() != nullptr, "T5Decoder: call register_params() on the model first");
    PEMOE_CHECK_CONFIG(!sources.empty(), "T5Decoder: no sources (need at least one sequence)");
    PEMOE_CHECK_CONFIG(capacity > 0, "T5Decoder: capacity must be positive, got ", capacity);
    PEMOE_CHECK_CONFIG(!model.training(),
                       "T5Decoder: the model is in training mode (dropout, router noise); call "
                       "set_training(false) first");
    Index longest = 0;
    for (std::size_t b = 0; b < sources.size(); ++b) {
      PEMOE_CHECK_CONFIG(!sources[b].empty(), "T5Decoder: source ", b, " is empty");
      for (std::size_t i = 0; i < sources[b].size(); ++i)
        PEMOE_CHECK_SHAPE(sources[b][i] >= 0 && sources[b][i] < c.vocab_size, "T5Decoder: source ", b,
                          " token ", i, " is id ", sources[b][i], ", outside the vocabulary [0, ",
                          c.vocab_size, ")");
      longest = std::max(longest, Index(sources[b].size()));
    }
    m_batch = Index(sources.size());
    std::vector<std::int64_t> ids, mask;
    for (const auto& src : sources) {
      for (Index t = 0; t < longest; ++t) {
        const bool token = t < Index(src.size());
        ids.push_back(token ? src[std::size_t(t)] : c.pad_token_id);
        mask.push_back(token ? 1 : 0);
      }
    }
    model.set_batch(m_batch, longest, 1, mask);
    typename T5<T>::Cache cache;
    model.encode(ids, cache);
    m_self.resize(std::size_t(c.decoder_layers()));
    m_cross.resize(m_self.size());
    for (Index l = 0; l < c.decoder_layers(); ++l) {
      T5Block<T>& blk = model.decoder_block(l);
      blk.self_attention().begin_self(m_batch, capacity, m_self[std::size_t(l)]);
      blk.cross_attention().begin_cross(cache.enc_out, m_batch, mask, m_cross[std::size_t(l)]);
    }
  }
  ~T5Decoder() {
    try {
      if (m_layout.batch > 0)
        m_model.set_batch(m_layout.batch, m_layout.src_len, m_layout.tgt_len, m_layout.src_mask,
                          m_layout.tgt_mask);
    } catch (...) {  // the layout was valid when saved; never throw from a destructor
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
    const Index t = m_self.front().len, H = c.num_heads, d = c.d_model;
    // this query's row of the causal position bias: rows h·(t+1) + t of the (H·(t+1), t+1) table
    Matrix<T> table, bias(H, t + 1);
    typename T5RelativePositionBias<T>::Cache bc;
    m_model.decoder_block(0).relative_bias().forward(t + 1, t + 1, table, bc);
    for (Index h = 0; h < H; ++h) bias.row(h) = table.row(h * (t + 1) + t);
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
  typename T5<T>::BatchLayout m_layout;
  detail::RouterQuiet<T> m_quiet;
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
  std::vector<std::vector<std::int64_t>> out(static_cast<std::size_t>(B));
  T5Decoder<T> dec(model, sources, std::max<Index>(o.max_new_tokens, 1));  // validates the sources
  if (o.max_new_tokens == 0) return out;
  const Rng rng(o.seed);
  std::vector<Rng> streams;
  for (Index b = 0; b < B; ++b) streams.push_back(rng.split(std::uint64_t(b)));
  std::vector<bool> done(std::size_t(B), false);
  std::vector<std::int64_t> feed(std::size_t(B), c.decoder_start_token_id);
  auto choose = [&](const Matrix<T>& logits, Index s) {
    bool any = false;
    for (Index b = 0; b < B; ++b) {
      if (done[std::size_t(b)]) continue;
      const std::int64_t t =
          next_token(logits.row(b).data(), V, o, streams[std::size_t(b)].uniform_at(std::uint64_t(s)));
      out[std::size_t(b)].push_back(t);
      feed[std::size_t(b)] = t;  // a stopped sequence keeps being fed its last token (its output is unused)
      done[std::size_t(b)] =
          std::find(o.eos_token_ids.begin(), o.eos_token_ids.end(), t) != o.eos_token_ids.end();
      any |= !done[std::size_t(b)];
    }
    return any;
  };
  if (o.use_cache) {
    for (Index s = 0; s < o.max_new_tokens; ++s)
      if (!choose(dec.step(feed), s)) break;
    return out;
  }
  // Uncached: the full forward over [start, tokens so far] each step (the decoder's layout: sources padded as
  // in T5Decoder; its destructor restores the model's own layout)
  Index longest = 0;
  for (const auto& src : sources) longest = std::max(longest, Index(src.size()));
  std::vector<std::int64_t> ids, mask;
  for (const auto& src : sources)
    for (Index t = 0; t < longest; ++t) {
      ids.push_back(t < Index(src.size()) ? src[std::size_t(t)] : c.pad_token_id);
      mask.push_back(t < Index(src.size()) ? 1 : 0);
    }
  std::vector<std::vector<std::int64_t>> inputs(std::size_t(B), {c.decoder_start_token_id});
  typename T5<T>::Cache cache;
  Matrix<T> logits(B, V);
  for (Index s = 0; s < o.max_new_tokens; ++s) {
    const Index len = s + 1;
    std::vector<std::int64_t> flat;
    for (const auto& q : inputs) flat.insert(flat.end(), q.begin(), q.end());
    model.set_batch(B, longest, len, mask);
    model.forward(ids, flat, {}, cache);
    for (Index b = 0; b < B; ++b) logits.row(b) = cache.logits.row(b * len + len - 1);
    const bool more = choose(logits, s);
    for (Index b = 0; b < B; ++b) inputs[std::size_t(b)].push_back(feed[std::size_t(b)]);
    if (!more) break;
  }
  return out;
}

}  // namespace pemoe

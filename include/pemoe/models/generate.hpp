/// @file generate.hpp
/// @brief Autoregressive decoding for `GPT2`: an inference path with a key/value cache (`GPT2Decoder`), the
/// choice of the next token as Hugging Face does it (greedy, or sampled with temperature, top-k and top-p
/// nucleus filtering; `next_token`), and `generate`, which puts the two together.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/core/detail/parallel_rows.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/data/byte_tokenizer.hpp"  // TokenId
#include "pemoe/models/gpt2.hpp"

namespace pemoe {

/**
 * @brief Decoding options of `generate`, named as Hugging Face's `GenerationConfig`.
 *
 * Greedy (`do_sample = false`): the next token is argmax of the logits (the first index on a tie, as
 * `torch.argmax`); `temperature`, `top_k` and `top_p` are then not used (but still validated).
 * Sampled (`do_sample = true`): as Hugging Face's warpers, in this order, on the logits z of one sequence:
 * z / temperature; top-k keeps the tokens whose logit is at least the k-th largest (ties kept); top-p keeps
 * the smallest set of most probable tokens whose cumulative probability is >= top_p (never fewer than one);
 * then the token is drawn from the softmax of what is kept. The uniform number of sequence b at step s is
 * `Rng(seed).split(b).uniform_at(s)`: counter-based, so the same seed gives the same tokens whatever the
 * thread count and whether or not the key/value cache is used.
 */
struct GenerateOptions {
  Index max_new_tokens = 20;  ///< tokens generated per sequence at most (0: nothing is generated)
  bool do_sample = false;     ///< sample (true) or take the argmax (false)
  double temperature = 1.0;   ///< > 0; the logits are divided by it before sampling
  Index top_k = 0;            ///< keep the k most likely tokens (0: off; clamped to the vocabulary)
  double top_p = 1.0;         ///< nucleus: in (0, 1]; 1 = off
  std::uint64_t seed = 0;     ///< seed of the sampling streams
  std::vector<std::int64_t> eos_token_ids;  ///< stop tokens: a sequence ends after emitting one of them
  bool use_cache = true;  ///< key/value cache (false: the full forward over the growing sequence each step)

  /// `ConfigError` naming the option for a value outside its range (`vocab_size` bounds the eos ids).
  void validate(Index vocab_size) const {
    PEMOE_CHECK_CONFIG(max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", max_new_tokens);
    PEMOE_CHECK_CONFIG(std::isfinite(temperature) && temperature > 0.0,
                       "generate: temperature must be a finite number > 0, got ", temperature,
                       " (for deterministic decoding use greedy, do_sample = false)");
    PEMOE_CHECK_CONFIG(top_k >= 0, "generate: top_k must be >= 0 (0 = off), got ", top_k);
    PEMOE_CHECK_CONFIG(top_p > 0.0 && top_p <= 1.0, "generate: top_p must be in (0, 1] (1 = off), got ",
                       top_p);
    for (std::int64_t e : eos_token_ids)
      PEMOE_CHECK_CONFIG(e >= 0 && e < vocab_size, "generate: eos token id ", e,
                         " is outside the vocabulary [0, ", vocab_size, ")");
  }
};

/**
 * @brief The distribution the sampler draws the next token from: softmax(z / temperature) restricted to the
 * top-k and top-p sets (see `GenerateOptions`), renormalised; excluded tokens get exactly 0.
 * logits: (vocab) -> probabilities (vocab), in double. Cost O(V log V) (a sort for top-k / top-p).
 * `NumericError` when a logit is NaN.
 */
template <class T>
std::vector<double> sampling_distribution(const T* logits, Index vocab, const GenerateOptions& o) {
  const auto V = static_cast<std::size_t>(vocab);
  std::vector<double> z(V);
  for (std::size_t i = 0; i < V; ++i) {
    PEMOE_CHECK_AS(NumericError, !std::isnan(double(logits[i])), "generate: logit ", i,
                   " is NaN (non-finite model weights or activations)");
    z[i] = double(logits[i]) / o.temperature;
  }
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  std::vector<std::size_t> order(V);
  std::iota(order.begin(), order.end(), std::size_t(0));
  // Most likely first; ties by index, so the result does not depend on the sort.
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return z[a] > z[b]; });
  if (o.top_k > 0 && static_cast<std::size_t>(o.top_k) < V) {
    const double kth = z[order[static_cast<std::size_t>(o.top_k) - 1]];
    for (double& v : z)
      if (v < kth) v = kNegInf;  // HF: logits below the k-th largest; ties with it stay
  }
  const double zmax = z[order[0]];
  std::vector<double> p(V, 0.0);
  if (zmax == kNegInf) {  // every logit −∞: uniform, as no token is preferred
    std::fill(p.begin(), p.end(), 1.0 / double(V));
    return p;
  }
  double sum = 0.0;
  if (zmax == -kNegInf)  // +∞ logits share all the mass
    for (std::size_t i = 0; i < V; ++i) sum += (p[i] = z[i] == zmax ? 1.0 : 0.0);
  else
    for (std::size_t i = 0; i < V; ++i) sum += (p[i] = z[i] == kNegInf ? 0.0 : std::exp(z[i] - zmax));
  if (o.top_p < 1.0) {
    // The smallest prefix of `order` whose probability reaches top_p (at least one token).
    double cum = 0.0;
    std::size_t keep = 0;
    while (keep < V && (keep == 0 || cum < o.top_p * sum)) cum += p[order[keep++]];
    for (std::size_t r = keep; r < V; ++r) p[order[r]] = 0.0;
    sum = cum;
  }
  for (double& v : p) v /= sum;
  return p;
}

/**
 * @brief The next token from one row of logits: argmax when greedy, else the token at which the cumulative
 * `sampling_distribution` first exceeds `u` (in vocabulary order). logits: (vocab); u uniform in [0, 1).
 * Cost O(V) greedy, O(V log V) sampled. `NumericError` when a logit is NaN.
 */
template <class T>
std::int64_t next_token(const T* logits, Index vocab, const GenerateOptions& o, double u) {
  if (!o.do_sample) {
    Index best = 0;
    for (Index i = 0; i < vocab; ++i) {
      PEMOE_CHECK_AS(NumericError, !std::isnan(double(logits[i])), "generate: logit ", i,
                     " is NaN (non-finite model weights or activations)");
      if (logits[i] > logits[best]) best = i;
    }
    return best;
  }
  const std::vector<double> p = sampling_distribution(logits, vocab, o);
  double cum = 0.0;
  Index last = 0;
  for (Index i = 0; i < vocab; ++i) {
    if (p[std::size_t(i)] <= 0.0) continue;
    cum += p[std::size_t(i)];
    last = i;
    if (u < cum) return i;
  }
  return last;  // rounding left cum just below u: the last token with mass
}

/// The text of generated `tokens` up to (not including) the first `eos`, decoded by `tok` with special tokens
/// skipped (`ByteTokenizer`, `Gpt2Tokenizer`): a model's answer to a prompt.
template <class Tokenizer>
std::string decode_answer(const Tokenizer& tok, const std::vector<std::int64_t>& tokens, std::int64_t eos) {
  std::vector<TokenId> ids;
  for (std::int64_t t : tokens) {
    if (t == eos) break;
    ids.push_back(TokenId(t));
  }
  return tok.decode(ids, true);
}

namespace detail {

/**
 * @brief The token choice of every `generate`: sequence b draws from its own counter-based stream
 * `Rng(o.seed).split(b)` at counter s (so the tokens do not depend on the batch they were decoded in), a
 * sequence stops after one of `o.eos_token_ids`, and a stopped sequence keeps being fed its last token (its
 * output is unused).
 */
class TokenChooser {
 public:
  /// `first_feed`: what `feed()` holds before the first choice (T5: the decoder start token).
  TokenChooser(const GenerateOptions& o, Index batch, std::int64_t first_feed = 0)
      : m_options(o),
        m_tokens(static_cast<std::size_t>(batch)),
        m_done(static_cast<std::size_t>(batch), false),
        m_feed(static_cast<std::size_t>(batch), first_feed) {
    const Rng rng(o.seed);
    for (Index b = 0; b < batch; ++b) m_streams.push_back(rng.split(std::uint64_t(b)));
  }

  /// Chooses step s's token of every unfinished sequence from logits (B, vocab); false when all stopped.
  template <class T>
  bool choose(const Matrix<T>& logits, Index s) {
    bool any = false;
    for (std::size_t b = 0; b < m_done.size(); ++b) {
      if (m_done[b]) continue;
      const std::int64_t t = next_token(logits.row(Index(b)).data(), logits.cols(), m_options,
                                        m_streams[b].uniform_at(std::uint64_t(s)));
      m_tokens[b].push_back(t);
      m_feed[b] = t;
      const auto& eos = m_options.eos_token_ids;
      m_done[b] = std::find(eos.begin(), eos.end(), t) != eos.end();
      any |= !m_done[b];
    }
    return any;
  }

  /// The token to feed each sequence next (B).
  const std::vector<std::int64_t>& feed() const { return m_feed; }
  /// The chosen tokens of each sequence (eos included when one was chosen).
  std::vector<std::vector<std::int64_t>> take_tokens() { return std::move(m_tokens); }

 private:
  GenerateOptions m_options;
  std::vector<Rng> m_streams;
  std::vector<std::vector<std::int64_t>> m_tokens;
  std::vector<bool> m_done;
  std::vector<std::int64_t> m_feed;
};

/// While alive, every router of the model records nothing: no aux-loss collector, no token mask, and its
/// call counter (training state) restored on exit. Decoding then leaves the model as it found it.
template <class T>
class RouterQuiet {
 public:
  explicit RouterQuiet(GPT2<T>& model) {
    for (auto& [name, r] : model.routers()) quiet(r);
  }
  /// Any model's routers (T5's `routers()`).
  explicit RouterQuiet(const std::vector<Router<T>*>& routers) {
    for (Router<T>* r : routers) quiet(r);
  }
  ~RouterQuiet() {
    for (auto& s : m_saved) {
      s.router->set_collector(s.collector);
      s.router->set_token_mask(std::move(s.mask));
      s.router->set_call_counter(s.calls);
    }
  }
  RouterQuiet(const RouterQuiet&) = delete;
  RouterQuiet& operator=(const RouterQuiet&) = delete;

 private:
  void quiet(Router<T>* r) {
    m_saved.push_back({r, r->collector(), r->token_mask(), r->call_counter()});
    r->set_collector(nullptr);
    r->clear_token_mask();
  }
  struct Saved {
    Router<T>* router;
    AuxLossCollector* collector;
    std::vector<std::uint8_t> mask;
    std::uint64_t calls;
  };
  std::vector<Saved> m_saved;
};

/// While alive, remembers the model's batch layout (B, T, padding mask) and the routers' token masks, and
/// puts them back on exit (also when an exception leaves).
template <class T>
class LayoutRestore {
 public:
  explicit LayoutRestore(GPT2<T>& model)
      : m_model(model),
        m_batch(model.block(0).attn().batch()),
        m_seq_len(model.block(0).attn().seq_len()),
        m_mask(model.block(0).attn().key_mask()) {
    for (auto& [name, r] : model.routers()) m_router_masks.push_back(r->token_mask());
  }
  ~LayoutRestore() {
    try {
      if (m_batch > 0) m_model.set_batch(m_batch, m_seq_len, m_mask);
    } catch (...) {  // the layout was valid when saved; never throw from a destructor
    }
    std::size_t i = 0;
    for (auto& [name, r] : m_model.routers()) r->set_token_mask(std::move(m_router_masks[i++]));
  }
  LayoutRestore(const LayoutRestore&) = delete;
  LayoutRestore& operator=(const LayoutRestore&) = delete;

 private:
  GPT2<T>& m_model;
  Index m_batch, m_seq_len;
  std::vector<std::int64_t> m_mask;
  std::vector<std::vector<std::uint8_t>> m_router_masks;
};

/// `ConfigError` when any dropout or router of the model is in training mode.
template <class T>
void check_eval_mode(GPT2<T>& model, const char* who) {
  bool training = false;
  for (Index l = 0; l < model.config().n_layer; ++l) {
    auto& b = model.block(l);
    training |= b.mlp_dropout().training() || b.attn().attn_dropout().training() ||
                b.attn().resid_dropout().training();
  }
  for (auto& [name, site] : model.linear_sites())
    if (Dropout<T>* d = site->dropout()) training |= d->training();
  for (auto& [name, r] : model.routers()) training |= r->training();  // adapters' and MPOE banks'
  PEMOE_CHECK_CONFIG(
      !training, who,
      ": the model is in training mode (dropout, router noise); call set_training(false) first");
}

}  // namespace detail

/**
 * @brief Incremental GPT-2 inference with a key/value cache: `prefill` runs the prompts once, then each
 * `step` runs one new token per sequence through every block, attending to the cached keys and values.
 *
 * Every layer is the model's own: LayerNorms, the `LinearSite` projections (so an injected adapter is
 * active, and MoE routers route the new tokens), GELU, or the MPOE expert bank of a block that has one
 * (`GPT2::use_mpoe`), the tied head; attention is recomputed here against
 * the cache (q|k|v laid out as `CausalSelfAttention`: columns h·D … of each of q, k, v; scale 1/√D), the
 * same function as the model's forward, to rounding. Nothing is kept for backward: the layers' caches are
 * scratch, reused. The model must be in eval mode (`ConfigError` otherwise); routers record no aux
 * statistics and their training state (call counters, token masks, collector) is left as found.
 *
 * **Padding.** Prompts of different lengths are left-padded to the longest (as Hugging Face's batched
 * `generate`): padded keys are masked, and the position of a token is its index in its own sequence
 * (HF's `cumsum(attention_mask) − 1`), so every sequence decodes as it would alone.
 *
 * Shapes: the cache holds, per layer, k and v (B·capacity, d) (sequence b in rows b·capacity …);
 * `prefill` and `step` return the logits of the last token of each sequence (B, vocab).
 * Memory 2·L·B·capacity·d values. Cost per step (B tokens): the model's 2·(params)·B flops plus 4·t·d·L·B
 * for attention over t cached positions; a prefill of P tokens costs one forward over B·P tokens.
 */
template <class T>
class GPT2Decoder {
 public:
  /// A decoder for up to `capacity` positions per (padded) sequence (≤ the model's n_positions).
  GPT2Decoder(GPT2<T>& model, Index capacity) : m_model(model), m_capacity(capacity) {
    const GPT2Config& c = model.config();
    PEMOE_CHECK_CONFIG(model.store() != nullptr, "GPT2Decoder: call register_params() on the model first");
    PEMOE_CHECK_CONFIG(capacity > 0 && capacity <= c.n_positions, "GPT2Decoder: capacity ", capacity,
                       " must be in [1, n_positions = ", c.n_positions, "]");
  }

  /**
   * @brief Starts B sequences (any lengths in [1, capacity], left-padded to the longest) and runs them
   * through the model: returns the logits of each prompt's last token (B, vocab). Replaces any earlier state.
   */
  const Matrix<T>& prefill(const std::vector<std::vector<std::int64_t>>& prompts) {
    const GPT2Config& c = m_model.config();
    PEMOE_CHECK_CONFIG(!prompts.empty(), "GPT2Decoder: no prompts (need at least one sequence)");
    Index longest = 0;
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      PEMOE_CHECK_CONFIG(!prompts[b].empty(), "GPT2Decoder: prompt ", b,
                         " is empty; GPT-2 needs at least one token to condition on (e.g. its BOS id)");
      longest = std::max(longest, Index(prompts[b].size()));
    }
    PEMOE_CHECK_CONFIG(longest <= m_capacity, "GPT2Decoder: the longest prompt has ", longest,
                       " tokens, more than the capacity ", m_capacity);
    const Index B = Index(prompts.size()), d = c.n_embd;
    m_batch = B;
    m_len = 0;
    m_pad.assign(std::size_t(B), 0);
    std::vector<std::int64_t> ids(std::size_t(B * longest), 0);
    for (Index b = 0; b < B; ++b) {
      const auto& p = prompts[std::size_t(b)];
      m_pad[std::size_t(b)] = longest - Index(p.size());
      std::copy(p.begin(), p.end(), ids.begin() + b * longest + m_pad[std::size_t(b)]);
    }
    m_k.resize(std::size_t(c.n_layer));
    m_v.resize(std::size_t(c.n_layer));
    for (Index l = 0; l < c.n_layer; ++l) {
      m_k[std::size_t(l)].setZero(B * m_capacity, d);
      m_v[std::size_t(l)].setZero(B * m_capacity, d);
    }
    run(ids, longest);
    return m_logits;
  }

  /// Appends one token per sequence (B ids) and returns the logits at it (B, vocab). `ConfigError` when
  /// the cache is full or `prefill` was not called; `ShapeError` for a wrong count or an id outside the
  /// vocabulary.
  const Matrix<T>& step(const std::vector<std::int64_t>& tokens) {
    PEMOE_CHECK_CONFIG(m_batch > 0, "GPT2Decoder: call prefill() before step()");
    PEMOE_CHECK_SHAPE(Index(tokens.size()) == m_batch, "GPT2Decoder: step got ", tokens.size(),
                      " tokens, expected one per sequence (", m_batch, ")");
    PEMOE_CHECK_CONFIG(m_len < m_capacity, "GPT2Decoder: the cache is full (", m_capacity,
                       " positions); create the decoder with a larger capacity");
    run(tokens, 1);
    return m_logits;
  }

  Index batch() const { return m_batch; }
  /// Positions filled so far (padding included).
  Index length() const { return m_len; }
  Index capacity() const { return m_capacity; }
  /// Left padding of each sequence.
  const std::vector<Index>& padding() const { return m_pad; }
  /// The logits of the last `prefill` or `step` (B, vocab).
  const Matrix<T>& logits() const { return m_logits; }

 private:
  // Runs n new tokens per sequence (ids (B·n), sequence b in b·n …) at positions m_len … m_len+n−1.
  void run(const std::vector<std::int64_t>& ids, Index n) {
    detail::check_eval_mode(m_model, "GPT2Decoder");
    detail::RouterQuiet<T> quiet(m_model);
    const GPT2Config& c = m_model.config();
    const Index B = m_batch, N = B * n, d = c.n_embd, t0 = m_len;
    std::vector<std::int64_t> pos(static_cast<std::size_t>(N));
    for (Index b = 0; b < B; ++b)
      for (Index i = 0; i < n; ++i)
        pos[std::size_t(b * n + i)] = std::max<Index>(t0 + i - m_pad[std::size_t(b)], 0);
    // x = wte(ids) + wpe(positions)   (N, d)
    Matrix<T> x(N, d), h(N, d), y(N, d), qkv(N, 3 * d), ctx(N, d), f(N, c.inner()), g(N, c.inner());
    m_model.wte().forward(ids, x, m_emb);
    m_model.wpe().forward(pos, y, m_emb);
    x += y;
    for (Index l = 0; l < c.n_layer; ++l) {
      auto& blk = m_model.block(l);
      // x += c_proj(attention(c_attn(ln_1(x))))
      blk.ln_1().forward(x, h, m_ln);
      blk.attn().c_attn().forward(h, qkv, m_site);
      attend(l, qkv, n, ctx);
      blk.attn().c_proj().forward(ctx, y, m_site);
      x += y;
      // x += mlp.c_proj(gelu(c_fc(ln_2(x))))
      blk.ln_2().forward(x, h, m_ln);
      if (blk.has_mpoe()) {  // an MPOE expert bank in place of the MLP (its router routes the new tokens)
        blk.mpoe().forward(h, y, m_mpoe);
      } else {
        blk.c_fc().forward(h, f, m_site);
        m_act.forward(f, g, m_act_cache);
        blk.mlp_c_proj().forward(g, y, m_site);
      }
      x += y;
    }
    m_len += n;
    // Only each sequence's last row reaches ln_f and the head (both are row-wise).
    Matrix<T> last(B, d), hl(B, d);
    for (Index b = 0; b < B; ++b) last.row(b) = x.row(b * n + n - 1);
    m_model.ln_f().forward(last, hl, m_ln);
    m_logits.resize(B, c.vocab_size);
    m_model.wte().logits(hl, m_logits);
  }

  // Appends the new k, v of layer l to the cache and writes the heads' context of the new queries.
  // qkv: (B·n, 3d) -> ctx: (B·n, d). Query i of sequence b (position t0+i) sees keys pad_b … t0+i.
  void attend(Index l, const Matrix<T>& qkv, Index n, Matrix<T>& ctx) {
    const GPT2Config& c = m_model.config();
    const Index B = m_batch, d = c.n_embd, H = c.n_head, D = d / H, t0 = m_len, S = t0 + n, cap = m_capacity;
    Matrix<T>& K = m_k[std::size_t(l)];
    Matrix<T>& V = m_v[std::size_t(l)];
    for (Index b = 0; b < B; ++b) {
      K.block(b * cap + t0, 0, n, d) = qkv.block(b * n, d, n, d);
      V.block(b * cap + t0, 0, n, d) = qkv.block(b * n, 2 * d, n, d);
    }
    const T scale = T(1) / std::sqrt(T(D));
    constexpr T kNegInf = -std::numeric_limits<T>::infinity();
    // (b, h) pairs split over the threads only when each thread gets enough work (~4·n·S·D flops a pair):
    // a decode step's single query per pair is far cheaper than a thread hand-off.
    const Index pairs = B * H, per_pair = 4 * n * S * D, min_pairs = std::max<Index>(1, 65536 / per_pair);
    detail::parallel_rows(pairs, detail::row_blocks(pairs, min_pairs), [&](int, Index p0, Index p1) {
      Matrix<T> P(n, S);
      for (Index bh = p0; bh < p1; ++bh) {
        const Index b = bh / H, hd = bh % H, pad = m_pad[std::size_t(b)];
        gemm<T>(Op::N, Op::T, scale, qkv.block(b * n, hd * D, n, D), K.block(b * cap, hd * D, S, D), T(0), P);
        for (Index i = 0; i < n; ++i) {
          const Index visible = t0 + i + 1;
          auto row = P.row(i);
          row.tail(S - visible).setZero();
          auto seg = row.head(visible);
          seg.head(std::min(pad, visible)).setConstant(kNegInf);
          if (pad >= visible) {  // a padding query with no real key: zeros (its output is never used)
            seg.setZero();
            continue;
          }
          const T m = seg.maxCoeff();
          seg = (seg.array() - m).exp().matrix();
          seg.head(pad).setZero();
          seg /= seg.sum();
        }
        gemm<T>(Op::N, Op::N, T(1), P, V.block(b * cap, hd * D, S, D), T(0), ctx.block(b * n, hd * D, n, D));
      }
    });
  }

  GPT2<T>& m_model;
  Index m_capacity;
  Index m_batch = 0, m_len = 0;
  std::vector<Index> m_pad;
  std::vector<Matrix<T>> m_k, m_v;  // per layer (B·capacity, d)
  Matrix<T> m_logits;
  GELU<T> m_act{gelu_kind_from_hf(m_model.config().activation_function)};
  // Scratch caches of the layers (nothing is kept for backward).
  typename Embedding<T>::Cache m_emb;
  typename LayerNorm<T>::Cache m_ln;
  typename LinearSite<T>::Cache m_site;
  typename GELU<T>::Cache m_act_cache;
  typename MpoeFfn<T>::Cache m_mpoe;
};

/**
 * @brief Generates up to `o.max_new_tokens` tokens after each prompt and returns them per sequence (a
 * stop token, when emitted, is the last one returned). Prompts may have different lengths (left-padded
 * internally; see `GPT2Decoder`); the token choice is `next_token` (see `GenerateOptions`).
 *
 * With `o.use_cache` (default) the prompts run once and each new token runs alone through the model
 * (`GPT2Decoder`); without it every step runs the model's full `forward` on the growing sequences (batched
 * when the prompts have equal lengths, else one sequence at a time) and reads the last row's logits — the
 * reference the cache is tested against. Both give the same tokens for the same options.
 *
 * Errors: `ConfigError` naming the option for an invalid `GenerateOptions`, for an empty prompt list or
 * prompt, when the longest prompt + max_new_tokens exceeds the model's n_positions, or when the model is in
 * training mode; `ShapeError` for an id outside the vocabulary.
 * Cost (cached): one forward over the prompts, then max_new_tokens single-token steps (see `GPT2Decoder`);
 * uncached: a full forward over t tokens at every step t.
 */
template <class T>
std::vector<std::vector<std::int64_t>> generate(GPT2<T>& model,
                                                const std::vector<std::vector<std::int64_t>>& prompts,
                                                const GenerateOptions& o = {}) {
  const GPT2Config& c = model.config();
  o.validate(c.vocab_size);
  PEMOE_CHECK_CONFIG(model.store() != nullptr, "generate: call register_params() on the model first");
  PEMOE_CHECK_CONFIG(!prompts.empty(), "generate: no prompts (need at least one sequence)");
  Index longest = 0;
  bool equal = true;
  for (std::size_t b = 0; b < prompts.size(); ++b) {
    PEMOE_CHECK_CONFIG(!prompts[b].empty(), "generate: prompt ", b,
                       " is empty; GPT-2 needs at least one token to condition on (e.g. its BOS id)");
    for (std::size_t i = 0; i < prompts[b].size(); ++i)
      PEMOE_CHECK_SHAPE(prompts[b][i] >= 0 && prompts[b][i] < c.vocab_size, "generate: prompt ", b, " token ",
                        i, " is id ", prompts[b][i], ", outside the vocabulary [0, ", c.vocab_size, ")");
    longest = std::max(longest, Index(prompts[b].size()));
    equal &= prompts[b].size() == prompts[0].size();
  }
  PEMOE_CHECK_CONFIG(longest + o.max_new_tokens <= c.n_positions, "generate: the prompt (", longest,
                     " tokens) + max_new_tokens (", o.max_new_tokens, ") = ", longest + o.max_new_tokens,
                     " exceeds the model's n_positions = ", c.n_positions,
                     "; shorten the prompt or lower max_new_tokens");
  detail::check_eval_mode(model, "generate");
  const Index B = Index(prompts.size()), V = c.vocab_size;
  if (o.max_new_tokens == 0) return std::vector<std::vector<std::int64_t>>(static_cast<std::size_t>(B));
  detail::TokenChooser chooser(o, B);

  if (o.use_cache) {
    GPT2Decoder<T> dec(model, longest + o.max_new_tokens);
    const Matrix<T>* logits = &dec.prefill(prompts);
    for (Index s = 0; s < o.max_new_tokens; ++s) {
      if (!chooser.choose(*logits, s) || s + 1 == o.max_new_tokens) break;
      logits = &dec.step(chooser.feed());
    }
    return chooser.take_tokens();
  }

  // Uncached: the model's forward over the whole sequences at each step; the model's batch layout and the
  // routers' state are restored afterwards.
  detail::LayoutRestore<T> layout(model);
  {
    detail::RouterQuiet<T> quiet(model);
    std::vector<std::vector<std::int64_t>> seqs = prompts;
    typename GPT2<T>::Cache cache;
    Matrix<T> logits(B, V);
    for (Index s = 0; s < o.max_new_tokens; ++s) {
      if (equal) {
        const Index len = Index(seqs[0].size());
        std::vector<std::int64_t> flat;
        for (const auto& q : seqs) flat.insert(flat.end(), q.begin(), q.end());
        model.set_batch(B, len);
        model.forward(flat, {}, cache);
        for (Index b = 0; b < B; ++b) logits.row(b) = cache.logits.row(b * len + len - 1);
      } else {
        for (Index b = 0; b < B; ++b) {
          const Index len = Index(seqs[std::size_t(b)].size());
          model.set_batch(1, len);
          model.forward(seqs[std::size_t(b)], {}, cache);
          logits.row(b) = cache.logits.row(len - 1);
        }
      }
      const bool more = chooser.choose(logits, s);
      for (Index b = 0; b < B; ++b) seqs[std::size_t(b)].push_back(chooser.feed()[std::size_t(b)]);
      if (!more) break;
    }
  }
  return chooser.take_tokens();
}

}  // namespace pemoe

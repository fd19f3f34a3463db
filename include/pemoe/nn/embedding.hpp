/// @file embedding.hpp
/// @brief `Embedding`: a lookup table of token (or position) vectors, with the tied language-model head
/// `logits = h·Wᵀ` over the same weight.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/core/weight_pack.hpp"

namespace pemoe {

/// Configuration of an `Embedding`.
struct EmbeddingConfig {
  Index vocab = 0;         ///< number of rows (tokens, or positions for GPT-2's `wpe`)
  Index d = 0;             ///< embedding width
  double init_std = 0.02;  ///< weight ~ N(0, init_std²) (GPT-2 `initializer_range`)
  bool trainable = true;   ///< declare the weight trainable
};

/**
 * @brief Embedding table (PyTorch `nn.Embedding`; HF GPT-2 `wte`/`wpe`, T5 `shared`): @f$ y_i = W_{id_i} @f$.
 *
 * Parameter (HF name): `<prefix>.weight` (vocab, d), initialised N(0, init_std²) (GPT-2: 0.02).
 *
 * - Lookup: `forward(ids, y, cache)`: ids (N) -> y (N, d), a row copy per token (N·d loads).
 *   `backward(ids, cache, dy)` scatter-adds dy into dW row by row in token order (serial, so the sum order
 *   and therefore the bits are the same for any thread count); N·d adds.
 * - Tied LM head (GPT-2 `lm_head.weight` is `wte.weight`): `logits(h, out)`: h (N, d) -> out (N, vocab),
 *   @f$ h W^\top @f$, 2·N·d·vocab flops; `logits_backward(h, dlogits, dh)` adds
 *   @f$ dlogits^\top h @f$ into dW and writes @f$ dh = dlogits\,W @f$ (each 2·N·d·vocab flops). The
 *   gradients of both uses add up in the one weight gradient, as in PyTorch's tied weights.
 *
 * An id outside [0, vocab) throws `ShapeError` naming the layer, the position, the id and the vocabulary
 * size.
 *
 * Not a layer in the sense of `is_layer_v`: its input is a sequence of integer ids, not an (N, d) matrix of
 * T, and it has no input gradient (ids are not differentiable). It keeps the rest of the contract:
 * `register_params`, a `Cache`, backward adds parameter gradients, `set_training`.
 * @tparam T scalar type.
 */
template <class T>
class Embedding {
 public:
  using Scalar = T;
  /// The lookup saves only how many tokens it saw (backward needs the ids, which the caller passes again).
  struct Cache {
    Index tokens = 0;
  };

  explicit Embedding(const EmbeddingConfig& config = {}) : m_config(config) {
    PEMOE_CHECK_CONFIG(config.vocab > 0 && config.d > 0,
                       "Embedding: vocab and d must be positive, got vocab=", config.vocab, " d=", config.d);
    PEMOE_CHECK_CONFIG(config.init_std >= 0.0, "Embedding: init_std must be non-negative, got ",
                       config.init_std);
  }

  /// Declares `<prefix>.weight` (vocab, d) ~ N(0, init_std²).
  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_store = &store;
    m_name = prefix;
    m_weight = store.add(prefix + ".weight", {m_config.vocab, m_config.d}, m_config.trainable);
    if (!store.declaring_only())
      rng.split(prefix + ".weight")
          .fill_normal(store.value(m_weight), m_config.vocab * m_config.d, 0.0, m_config.init_std);
  }
  void set_training(bool /*on*/) {}

  /// y_i = W[ids_i].   ids: (N) -> y: (N, d)
  void forward(const std::vector<std::int64_t>& ids, MatrixRef<T> y, Cache& cache) {
    check_bound();
    const Index n = static_cast<Index>(ids.size());
    check_shape(site(), "y", y, n, m_config.d);
    check_ids(ids);
    if (m_store->entry(m_weight).released) {  // only the head's single copy is left: gather its rows
      PEMOE_CHECK_CONFIG(m_head_pack && m_head_pack->layout() == PackLayout::single, site(),
                         ": the table's values were released and no single-copy head pack holds them");
      for (Index i = 0; i < n; ++i)
        m_head_pack->gather_row(static_cast<Index>(ids[static_cast<std::size_t>(i)]), y.row(i).data());
    } else {
      const MatrixMap<T> w = weight();
      for (Index i = 0; i < n; ++i) y.row(i) = w.row(static_cast<Index>(ids[static_cast<std::size_t>(i)]));
    }
    cache.tokens = n;
  }

  /// dW[ids_i] += dy_i, in token order (a repeated id accumulates every occurrence).   ids: (N), dy: (N, d)
  void backward(const std::vector<std::int64_t>& ids, const Cache& cache, ConstMatrixRef<T> dy) {
    check_bound();
    const Index n = static_cast<Index>(ids.size());
    PEMOE_CHECK_SHAPE(n == cache.tokens, site(), ": backward got ", n, " ids, forward saw ", cache.tokens);
    check_shape(site(), "dy", dy, n, m_config.d);
    check_ids(ids);
    if (!m_store->trainable(m_weight)) return;
    MatrixMap<T> dw = m_store->grad_matrix(m_weight);
    for (Index i = 0; i < n; ++i) dw.row(static_cast<Index>(ids[static_cast<std::size_t>(i)])) += dy.row(i);
  }

  /// Tied LM head: out = h·Wᵀ.   h: (N, d) -> out: (N, vocab)
  void logits(ConstMatrixRef<T> h, MatrixRef<T> out) const {
    check_bound();
    PEMOE_CHECK_SHAPE(h.cols() == m_config.d, site(), ": h has ", h.cols(),
                      " features, the tied head expects ", m_config.d);
    check_shape(site(), "logits", out, h.rows(), m_config.vocab);
    if (m_head_pack) {
      check_head_pack();
      m_head_pack->forward(h, out);
    } else {
      gemm<T>(Op::N, Op::T, T(1), h, weight(), T(0), out);
    }
  }

  /// Backward of `logits`: dW += dlogitsᵀ·h (when trainable); dh = dlogits·W.
  /// h: (N, d), dlogits: (N, vocab) -> dh: (N, d)
  void logits_backward(ConstMatrixRef<T> h, ConstMatrixRef<T> dlogits, GradOut<T> dh = std::nullopt) {
    check_bound();
    check_shape(site(), "h", h, -1, m_config.d);
    check_shape(site(), "dlogits", dlogits, h.rows(), m_config.vocab);
    if (dh) check_shape(site(), "dh", *dh, h.rows(), m_config.d);
    if (m_store->trainable(m_weight)) {  // the first product after zero_grad overwrites (no zero fill)
      const T beta = m_store->first_write_beta(m_weight);
      gemm<T>(Op::T, Op::N, T(1), dlogits, h, beta, m_store->grad_matrix_unfilled(m_weight));
    }
    if (dh) {
      if (m_head_pack) {
        check_head_pack();
        m_head_pack->backward_input(dlogits, *dh, T(0));
      } else {
        gemm<T>(Op::N, Op::N, T(1), dlogits, weight(), T(0), *dh);
      }
    }
  }

  /// Packs the frozen table for the tied head's two products (`logits` and the `dh` of `logits_backward`;
  /// see core/weight_pack.hpp) in `layout`. The lookup keeps reading the f32 table while the store holds it;
  /// once its values are released (a bf16-only backbone), it gathers the rows of a `PackLayout::single` pack
  /// (the bf16-rounded table). `ConfigError` when the table is trainable or packing is unavailable here.
  void pack_head(PackDtype dtype, PackLayout layout = PackLayout::blocked) {
    check_bound();
    PEMOE_CHECK_CONFIG(!m_store->trainable(m_weight), site(),
                       ": only a frozen table can be packed for the head; freeze it first");
    m_head_pack = make_weight_pack<T>(weight(), dtype, layout);
  }
  /// Drops the head's pack (`ConfigError` once the table's values were released: the pack is all that is
  /// left of them).
  void unpack_head() {
    PEMOE_CHECK_CONFIG(!m_store || !m_store->entry(m_weight).released, site(),
                       ": the table's values were released; its head pack is all that is left of them");
    m_head_pack.reset();
  }
  /// The head's pack, or null.
  const WeightPack<T>* head_packed() const { return m_head_pack.get(); }

  /// The table (vocab, d).
  MatrixMap<T> weight() const { return m_store->matrix(m_weight); }
  ParamId weight_id() const { return m_weight; }
  const EmbeddingConfig& config() const { return m_config; }
  /// The parameter prefix, used to name this layer in error messages.
  const std::string& name() const { return m_name; }

 private:
  std::string site() const { return "Embedding '" + m_name + "'"; }
  void check_bound() const {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "Embedding: call register_params() before forward/backward");
  }
  void check_head_pack() const {
    PEMOE_CHECK_CONFIG(!m_store->trainable(m_weight), site(),
                       ": the table was made trainable after the head was packed; call unpack_head()");
  }
  void check_ids(const std::vector<std::int64_t>& ids) const {
    for (std::size_t i = 0; i < ids.size(); ++i)
      PEMOE_CHECK_SHAPE(ids[i] >= 0 && ids[i] < m_config.vocab, site(), ": id ", ids[i], " at position ", i,
                        " is outside the vocabulary [0, ", m_config.vocab, ")");
  }

  EmbeddingConfig m_config;
  ParamStore<T>* m_store = nullptr;
  std::string m_name;
  ParamId m_weight = 0;
  std::shared_ptr<const WeightPack<T>> m_head_pack;
};

}  // namespace pemoe

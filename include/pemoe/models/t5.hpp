/// @file t5.hpp
/// @brief T5 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
/// Transformer", JMLR 21(140)) and T5 v1.1 as a tree of pemoe layers, exact to Hugging Face's
/// `T5ForConditionalGeneration`: encoder–decoder, relative position bias, gated-GELU or ReLU feed-forward,
/// the three LM-head layouts, hand-written backward, adapter sites at q, k, v, o, wi_0, wi_1 (wi), wo.
#pragma once

#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/models/backbone_pack.hpp"
#include "pemoe/models/linear_site.hpp"
#include "pemoe/models/t5_attention.hpp"
#include "pemoe/models/target_modules.hpp"
#include "pemoe/nn/activations.hpp"
#include "pemoe/nn/cross_entropy.hpp"
#include "pemoe/nn/dropout.hpp"
#include "pemoe/nn/embedding.hpp"
#include "pemoe/nn/layernorm.hpp"
#include "pemoe/nn/linear.hpp"

namespace pemoe {

/**
 * @brief T5 hyper-parameters, named as in Hugging Face's `config.json` (defaults: HF `T5Config`'s).
 *
 * The LM head has three layouts, all read from `config.json`:
 * - T5 v1.1 hub checkpoints (transformers 4.x): `tie_word_embeddings: false`: a separate `lm_head.weight`,
 *   the decoder output is not rescaled;
 * - original T5 (transformers 4.x, `tie_word_embeddings` true or absent): the head is `shared.weight`, the
 *   decoder output is scaled by d_model^−1/2 before it;
 * - transformers 5.x configs (the key `scale_decoder_outputs` is present): the head is always tied to
 *   `shared.weight`, and `scale_decoder_outputs` alone says whether to rescale (5.x sets it from the
 *   `tie_word_embeddings` it was given and then forces `tie_word_embeddings` to true).
 */
struct T5Config {
  Index vocab_size = 32128;
  Index d_model = 512;
  Index d_kv = 64;
  Index d_ff = 2048;
  Index num_layers = 6;
  Index num_decoder_layers = -1;  ///< -1: num_layers (HF: None)
  Index num_heads = 8;
  Index relative_attention_num_buckets = 32;
  Index relative_attention_max_distance = 128;
  double dropout_rate = 0.1;
  double layer_norm_epsilon = 1e-6;
  std::string feed_forward_proj = "relu";  ///< "relu", "gated-gelu" (v1.1: gelu_new), "gated-relu", ...
  bool tie_word_embeddings = true;         ///< the head is `shared.weight` (no `lm_head.weight`)
  bool scale_decoder_outputs = true;       ///< decoder output · d_model^−1/2 before the head
  Index decoder_start_token_id = 0;
  Index pad_token_id = 0;
  Index eos_token_id = 1;

  Index inner() const { return num_heads * d_kv; }
  Index decoder_layers() const { return num_decoder_layers >= 0 ? num_decoder_layers : num_layers; }
  /// Whether the feed-forward is gated (`gated-<act>`: wi_0, wi_1) or not (`<act>`: wi).
  bool gated() const { return feed_forward_proj.rfind("gated-", 0) == 0; }
  /// The feed-forward activation as HF's `dense_act_fn`: "gated-gelu" is "gelu_new" (for backwards
  /// compatibility, as HF), otherwise the part after "gated-".
  std::string dense_act_fn() const {
    if (feed_forward_proj == "gated-gelu") return "gelu_new";
    return gated() ? feed_forward_proj.substr(6) : feed_forward_proj;
  }

  /// Reads a Hugging Face T5 `config.json` object; keys it does not use are ignored, a wrong type or a value
  /// T5 cannot have is a `ConfigError` naming the key.
  static T5Config from_json(const nlohmann::json& j) {
    T5Config c;
    auto get_index = [&](const char* key, Index& v) {
      if (!j.contains(key) || j[key].is_null()) return;
      PEMOE_CHECK_CONFIG(j[key].is_number_integer() && j[key].get<long long>() >= 0, "T5 config: '", key,
                         "' must be a non-negative integer, got ", j[key].dump());
      v = j[key].get<Index>();
    };
    auto get_double = [&](const char* key, double& v) {
      if (!j.contains(key) || j[key].is_null()) return;
      PEMOE_CHECK_CONFIG(j[key].is_number(), "T5 config: '", key, "' must be a number, got ", j[key].dump());
      v = j[key].get<double>();
    };
    auto get_bool = [&](const char* key, bool& v) {
      if (!j.contains(key) || j[key].is_null()) return;
      PEMOE_CHECK_CONFIG(j[key].is_boolean(), "T5 config: '", key, "' must be true or false, got ",
                         j[key].dump());
      v = j[key].get<bool>();
    };
    if (j.contains("model_type"))
      PEMOE_CHECK_CONFIG(j["model_type"] == "t5", "T5 config: 'model_type' is ", j["model_type"].dump(),
                         ", expected \"t5\"");
    get_index("vocab_size", c.vocab_size);
    get_index("d_model", c.d_model);
    get_index("d_kv", c.d_kv);
    get_index("d_ff", c.d_ff);
    get_index("num_layers", c.num_layers);
    get_index("num_decoder_layers", c.num_decoder_layers);
    get_index("num_heads", c.num_heads);
    get_index("relative_attention_num_buckets", c.relative_attention_num_buckets);
    get_index("relative_attention_max_distance", c.relative_attention_max_distance);
    get_double("dropout_rate", c.dropout_rate);
    get_double("layer_norm_epsilon", c.layer_norm_epsilon);
    get_index("decoder_start_token_id", c.decoder_start_token_id);
    get_index("pad_token_id", c.pad_token_id);
    get_index("eos_token_id", c.eos_token_id);
    if (j.contains("feed_forward_proj")) {
      PEMOE_CHECK_CONFIG(j["feed_forward_proj"].is_string(),
                         "T5 config: 'feed_forward_proj' must be a string, got ",
                         j["feed_forward_proj"].dump());
      c.feed_forward_proj = j["feed_forward_proj"].get<std::string>();
    }
    bool tie = true;
    get_bool("tie_word_embeddings", tie);
    if (j.contains("scale_decoder_outputs") && !j["scale_decoder_outputs"].is_null()) {  // transformers 5.x
      get_bool("scale_decoder_outputs", c.scale_decoder_outputs);
      c.tie_word_embeddings = true;
    } else {  // transformers 4.x: the tie decides both
      c.tie_word_embeddings = tie;
      c.scale_decoder_outputs = tie;
    }
    c.validate();
    return c;
  }

  /// The `config.json` object (transformers 4.x keys; `scale_decoder_outputs` only when the layout needs it).
  nlohmann::json to_json() const {
    nlohmann::json j = {{"model_type", "t5"},
                        {"architectures", {"T5ForConditionalGeneration"}},
                        {"vocab_size", vocab_size},
                        {"d_model", d_model},
                        {"d_kv", d_kv},
                        {"d_ff", d_ff},
                        {"num_layers", num_layers},
                        {"num_decoder_layers", decoder_layers()},
                        {"num_heads", num_heads},
                        {"relative_attention_num_buckets", relative_attention_num_buckets},
                        {"relative_attention_max_distance", relative_attention_max_distance},
                        {"dropout_rate", dropout_rate},
                        {"layer_norm_epsilon", layer_norm_epsilon},
                        {"feed_forward_proj", feed_forward_proj},
                        {"tie_word_embeddings", tie_word_embeddings},
                        {"decoder_start_token_id", decoder_start_token_id},
                        {"pad_token_id", pad_token_id},
                        {"eos_token_id", eos_token_id},
                        {"is_encoder_decoder", true}};
    if (tie_word_embeddings != scale_decoder_outputs) j["scale_decoder_outputs"] = scale_decoder_outputs;
    return j;
  }

  void validate() const {
    auto positive = [](Index v, const char* key) {
      PEMOE_CHECK_CONFIG(v > 0, "T5 config: '", key, "' must be positive, got ", v);
    };
    positive(vocab_size, "vocab_size");
    positive(d_model, "d_model");
    positive(d_kv, "d_kv");
    positive(d_ff, "d_ff");
    positive(num_layers, "num_layers");
    positive(decoder_layers(), "num_decoder_layers");
    positive(num_heads, "num_heads");
    PEMOE_CHECK_CONFIG(relative_attention_num_buckets >= 4,
                       "T5 config: 'relative_attention_num_buckets' must be at least 4, got ",
                       relative_attention_num_buckets);
    PEMOE_CHECK_CONFIG(
        relative_attention_max_distance > relative_attention_num_buckets / 2,
        "T5 config: 'relative_attention_max_distance' must exceed relative_attention_num_buckets "
        "/ 2 = ",
        relative_attention_num_buckets / 2, " (the logarithmic buckets start there), got ",
        relative_attention_max_distance);
    PEMOE_CHECK_CONFIG(dropout_rate >= 0.0 && dropout_rate < 1.0,
                       "T5 config: 'dropout_rate' must be in [0, 1), got ", dropout_rate);
    PEMOE_CHECK_CONFIG(layer_norm_epsilon > 0.0, "T5 config: 'layer_norm_epsilon' must be positive, got ",
                       layer_norm_epsilon);
    PEMOE_CHECK_CONFIG(decoder_start_token_id < vocab_size, "T5 config: 'decoder_start_token_id' ",
                       decoder_start_token_id, " is not below vocab_size ", vocab_size);
    PEMOE_CHECK_CONFIG(pad_token_id < vocab_size, "T5 config: 'pad_token_id' ", pad_token_id,
                       " is not below vocab_size ", vocab_size);
    const std::string& f = feed_forward_proj;
    const std::string act = dense_act_fn();
    PEMOE_CHECK_CONFIG(act == "relu" || act == "gelu" || act == "gelu_new" || act == "gelu_pytorch_tanh" ||
                           act == "gelu_fast",
                       "T5 config: 'feed_forward_proj' is \"", f,
                       "\"; expected \"relu\", \"gated-gelu\", \"gated-relu\", or [gated-]gelu, gelu_new, "
                       "gelu_pytorch_tanh, gelu_fast");
  }
};

/**
 * @brief T5's feed-forward (HF `T5DenseGatedActDense` / `T5DenseActDense`, the module `DenseReluDense`):
 * gated @f$ y = W_o\, \mathrm{drop}(\mathrm{act}(W_{i0} x) \odot W_{i1} x) @f$ (T5 v1.1, Shazeer 2020
 * "GLU Variants Improve Transformer": act = gelu_new, the tanh approximation), or plain
 * @f$ y = W_o\, \mathrm{drop}(\mathrm{relu}(W_i x)) @f$ (original T5). No biases.
 *
 * Parameters: `<prefix>.wi_0.weight`, `.wi_1.weight` (d_ff, d) (gated) or `.wi.weight` (d_ff, d);
 * `.wo.weight` (d, d_ff); each a `LinearSite`. Shapes: x (N, d) -> y (N, d).
 *
 * Optionally a `MoV` on the intermediate activation (`set_intermediate_mov`, MoV's reference placement, the
 * Flaxformer fork's `MlpBlock.intermediate_conv`): branch 0 after the activation is scaled,
 * @f$ a' = a \odot \sum_i g_i(a)\, l_i @f$ with the router reading a itself, then the gate product
 * @f$ a' \odot W_{i1} x @f$. Parameters `<prefix>.intermediate.mov_scaling` (E, d_ff) and
 * `<prefix>.intermediate.router.*`.
 */
template <class T>
class T5DenseReluDense {
 public:
  using Scalar = T;
  struct Cache {
    Matrix<T> h0;  ///< (N, d_ff) wi_0(x) (or wi(x))
    Matrix<T> a;   ///< (N, d_ff) act(h0)
    Matrix<T> h1;  ///< (N, d_ff) wi_1(x) (gated only)
    Matrix<T> g;   ///< (N, d_ff) drop(a ⊙ h1) (or drop(a)), the input of wo
    Matrix<T> am;  ///< (N, d_ff) MoV-scaled a (only with an intermediate MoV)
    typename MoV<T>::Cache cm;
    typename LinearSite<T>::Cache c0, c1, co;
    typename Dropout<T>::Cache drop;
  };

  explicit T5DenseReluDense(const T5Config& c)
      : m_d(c.d_model),
        m_ff(c.d_ff),
        m_gated(c.gated()),
        m_relu(c.dense_act_fn() == "relu"),
        m_gelu(m_relu ? GeluKind::tanh : gelu_kind_from_hf(c.dense_act_fn())),
        m_wi0(LinearConfig{c.d_model, c.d_ff, false}),
        m_wi1(LinearConfig{c.d_model, c.d_ff, false}),
        m_wo(LinearConfig{c.d_ff, c.d_model, false}),
        m_drop(c.dropout_rate) {}

  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_wi0.register_params(store, prefix + (m_gated ? ".wi_0" : ".wi"), rng);
    if (m_gated) m_wi1.register_params(store, prefix + ".wi_1", rng);
    m_wo.register_params(store, prefix + ".wo", rng);
    m_drop.register_params(store, prefix + ".dropout", rng);
    if (m_mid) m_mid->register_params(store, prefix + ".intermediate", rng);
  }

  /// Puts a `MoV` (heads = 1) on the intermediate activation of branch 0 (see the class comment). Before
  /// `register_params`.
  void set_intermediate_mov(const MoVConfig& config) {
    PEMOE_CHECK_CONFIG(config.heads == 1 && config.router_input == RouterInput::activation,
                       "T5DenseReluDense: the intermediate MoV has one head and routes on the activation");
    m_mid.emplace(m_ff, config);
  }
  bool has_intermediate_mov() const { return m_mid.has_value(); }
  MoV<T>& intermediate_mov() { return *m_mid; }

  /// x: (N, d) -> y: (N, d)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& c) {
    const Index n = x.rows();
    check_shape("T5DenseReluDense", "x", x, -1, m_d);
    check_shape("T5DenseReluDense", "y", y, n, m_d);
    c.h0.resize(n, m_ff);
    m_wi0.forward(x, c.h0, c.c0);
    c.a.resize(n, m_ff);
    activate(c.h0, c.a);
    if (m_mid) {
      c.am.resize(n, m_ff);
      m_mid->forward(c.a, c.am, c.cm);
    }
    const Matrix<T>& a = m_mid ? c.am : c.a;
    c.g.resize(n, m_ff);
    if (m_gated) {
      c.h1.resize(n, m_ff);
      m_wi1.forward(x, c.h1, c.c1);
      c.g = a.cwiseProduct(c.h1);
    } else {
      c.g = a;
    }
    m_drop.forward(c.g, c.g, c.drop);
    m_wo.forward(c.g, y, c.co);
  }

  /// Adds the gradients of wi_0, wi_1 (wi), wo (and the intermediate MoV); writes dx.
  /// x: (N, d), dy: (N, d) -> dx: (N, d)
  void backward(ConstMatrixRef<T> x, const Cache& c, ConstMatrixRef<T> dy, MatrixRef<T> dx) {
    const Index n = x.rows();
    Matrix<T> dg(n, m_ff);
    m_wo.backward(c.g, c.co, dy, dg);
    m_drop.backward(dg, c.drop, dg, dg);
    const Matrix<T>& a = m_mid ? c.am : c.a;
    Matrix<T> da(n, m_ff), dh0(n, m_ff);
    if (m_gated) {
      da = dg.cwiseProduct(c.h1);
      const Matrix<T> dh1 = dg.cwiseProduct(a);
      Matrix<T> tmp(n, m_d);
      m_wi1.backward(x, c.c1, dh1, tmp);
      dx = tmp;
    } else {
      da = dg;
      dx.setZero();
    }
    if (m_mid) {  // da holds d(am): through the MoV to d(a), adding the MoV's gradients
      Matrix<T> dmid(n, m_ff);
      m_mid->backward(c.a, c.cm, da, dmid);
      da = dmid;
    }
    activate_backward(c.h0, da, dh0);
    Matrix<T> dx0(n, m_d);
    m_wi0.backward(x, c.c0, dh0, dx0);
    dx += dx0;
  }

  void set_training(bool on) {
    m_wi0.set_training(on);
    m_wi1.set_training(on);
    m_wo.set_training(on);
    m_drop.set_training(on);
    if (m_mid) m_mid->set_training(on);
  }

  bool gated() const { return m_gated; }
  /// wi_0 (gated) or wi (plain).
  LinearSite<T>& wi_0() { return m_wi0; }
  LinearSite<T>& wi_1() { return m_wi1; }
  LinearSite<T>& wo() { return m_wo; }
  Dropout<T>& dropout() { return m_drop; }

 private:
  void activate(const Matrix<T>& h, Matrix<T>& a) {
    if (m_relu) {
      typename ReLU<T>::Cache rc;
      m_relu_layer.forward(h, a, rc);
    } else {
      typename GELU<T>::Cache gc;
      m_gelu.forward(h, a, gc);
    }
  }
  void activate_backward(const Matrix<T>& h, const Matrix<T>& da, Matrix<T>& dh) {
    if (m_relu) {
      typename ReLU<T>::Cache rc;
      m_relu_layer.backward(h, rc, da, dh);
    } else {
      typename GELU<T>::Cache gc;
      m_gelu.backward(h, gc, da, dh);
    }
  }

  Index m_d, m_ff;
  bool m_gated, m_relu;
  GELU<T> m_gelu;
  ReLU<T> m_relu_layer;
  LinearSite<T> m_wi0, m_wi1, m_wo;
  Dropout<T> m_drop;
  std::optional<MoV<T>> m_mid;  ///< MoV on the intermediate activation (none by default)
};

/**
 * @brief One T5 block (HF `T5Block`), pre-RMSNorm with residuals:
 * @f[ x_1 = x + \mathrm{drop}(\mathrm{SelfAttn}(\mathrm{RMS}_0(x)) ),\quad
 *     x_2 = x_1 + \mathrm{drop}(\mathrm{CrossAttn}(\mathrm{RMS}_1(x_1), e)) \ \text{(decoder only)},\quad
 *     y = x_2 + \mathrm{drop}(\mathrm{FF}(\mathrm{RMS}(x_2))) @f]
 * with e the final encoder output. HF names: `layer.0.SelfAttention`, `layer.0.layer_norm`; decoder
 * `layer.1.EncDecAttention`, `layer.1.layer_norm`; the feed-forward `layer.{1|2}.DenseReluDense` and
 * `layer.{1|2}.layer_norm`. The first block of a stack also owns the stack's relative position bias
 * (`layer.0.SelfAttention.relative_attention_bias`). Shapes: x (B·T, d) -> y (B·T, d).
 */
template <class T>
class T5Block {
 public:
  using Scalar = T;
  struct Cache {
    typename RMSNorm<T>::Cache ln0, ln1, ln2;
    typename T5Attention<T>::Cache sa, ca;
    typename T5DenseReluDense<T>::Cache ff;
    typename Dropout<T>::Cache d0, d1, d2;
    Matrix<T> h0, x1, h1, x2, h2;  ///< (N, d) each: RMS_0(x), x_1, RMS_1(x_1), x_2, RMS(x_2)
  };

  T5Block(const T5Config& c, bool decoder, bool has_bias)
      : m_decoder(decoder),
        m_d(c.d_model),
        m_ln0(NormConfig{c.d_model, c.layer_norm_epsilon}),
        m_sa(T5AttentionConfig{c.d_model, c.num_heads, c.d_kv, decoder, c.dropout_rate}),
        m_drop0(c.dropout_rate),
        m_ln1(NormConfig{c.d_model, c.layer_norm_epsilon}),
        m_ca(T5AttentionConfig{c.d_model, c.num_heads, c.d_kv, false, c.dropout_rate}),
        m_drop1(c.dropout_rate),
        m_ln2(NormConfig{c.d_model, c.layer_norm_epsilon}),
        m_ff(c),
        m_drop2(c.dropout_rate) {
    if (has_bias)
      m_bias.emplace(T5RelativeBiasConfig{c.num_heads, c.relative_attention_num_buckets,
                                          c.relative_attention_max_distance, !decoder,
                                          std::pow(double(c.d_model), -0.5)});
  }

  void register_params(ParamStore<T>& store, const std::string& p, Rng& rng) {
    m_ln0.register_params(store, p + ".layer.0.layer_norm", rng);
    m_sa.register_params(store, p + ".layer.0.SelfAttention", rng);
    if (m_bias) m_bias->register_params(store, p + ".layer.0.SelfAttention.relative_attention_bias", rng);
    m_drop0.register_params(store, p + ".layer.0.dropout", rng);
    const std::string ff = p + (m_decoder ? ".layer.2" : ".layer.1");
    if (m_decoder) {
      m_ln1.register_params(store, p + ".layer.1.layer_norm", rng);
      m_ca.register_params(store, p + ".layer.1.EncDecAttention", rng);
      m_drop1.register_params(store, p + ".layer.1.dropout", rng);
    }
    m_ln2.register_params(store, ff + ".layer_norm", rng);
    m_ff.register_params(store, ff + ".DenseReluDense", rng);
    m_drop2.register_params(store, ff + ".dropout", rng);
  }

  /// x: (B·T, d), enc: (B·Ts, d) (decoder only), bias: (H·T, T) the stack's position bias -> y: (B·T, d)
  void forward(ConstMatrixRef<T> x, const Matrix<T>* enc, const Matrix<T>& bias, MatrixRef<T> y, Cache& c) {
    const Index n = x.rows();
    c.h0.resize(n, m_d);
    m_ln0.forward(x, c.h0, c.ln0);
    c.x1.resize(n, m_d);
    m_sa.forward(c.h0, c.h0, &bias, c.x1, c.sa);
    m_drop0.forward(c.x1, c.x1, c.d0);
    c.x1 += x;
    const Matrix<T>* x2 = &c.x1;
    if (m_decoder) {
      PEMOE_CHECK_CONFIG(enc != nullptr, "T5Block: the decoder needs the encoder output");
      c.h1.resize(n, m_d);
      m_ln1.forward(c.x1, c.h1, c.ln1);
      c.x2.resize(n, m_d);
      m_ca.forward(c.h1, *enc, nullptr, c.x2, c.ca);
      m_drop1.forward(c.x2, c.x2, c.d1);
      c.x2 += c.x1;
      x2 = &c.x2;
    }
    c.h2.resize(n, m_d);
    m_ln2.forward(*x2, c.h2, c.ln2);
    m_ff.forward(c.h2, y, c.ff);
    m_drop2.forward(y, y, c.d2);
    y += *x2;
  }

  /// Decoder, inference: one position per sequence, x (B, d) -> y (B, d), against the self-attention cache
  /// (this position's k, v appended) and the cross-attention cache; `bias` (H, positions so far + 1) is this
  /// query's row of the position bias. No dropout (eval mode).
  void decode_step(ConstMatrixRef<T> x, typename T5Attention<T>::KVCache& self,
                   typename T5Attention<T>::KVCache& cross, const Matrix<T>& bias, MatrixRef<T> y) {
    PEMOE_CHECK_CONFIG(m_decoder, "T5Block: decode_step is for decoder blocks");
    const Index n = x.rows();
    typename RMSNorm<T>::Cache lc;
    Matrix<T> h(n, m_d), x1(n, m_d), x2(n, m_d);
    m_ln0.forward(x, h, lc);
    m_sa.step(h, self, true, &bias, x1);
    x1 += x;
    m_ln1.forward(x1, h, lc);
    m_ca.step(h, cross, false, nullptr, x2);
    x2 += x1;
    m_ln2.forward(x2, h, lc);
    typename T5DenseReluDense<T>::Cache fc;
    m_ff.forward(h, y, fc);
    y += x2;
  }

  /// Adds every parameter gradient; writes dx; adds the encoder output's gradient into `denc` (decoder)
  /// and the position bias's into `dbias` (H·T, T).
  void backward(ConstMatrixRef<T> x, const Matrix<T>* enc, const Cache& c, ConstMatrixRef<T> dy,
                MatrixRef<T> dx, Matrix<T>* denc, Matrix<T>& dbias) {
    const Index n = x.rows();
    const Matrix<T>& x2 = m_decoder ? c.x2 : c.x1;
    Matrix<T> dt(n, m_d), dh(n, m_d);
    m_drop2.backward(dy, c.d2, dy, dt);
    m_ff.backward(c.h2, c.ff, dt, dh);
    Matrix<T> dx2(n, m_d);
    m_ln2.backward(x2, c.ln2, dh, dx2);
    dx2 += dy;
    Matrix<T> dx1;
    if (m_decoder) {
      m_drop1.backward(dx2, c.d1, dx2, dt);
      Matrix<T> de(enc->rows(), m_d);
      m_ca.backward(c.h1, *enc, c.ca, dt, dh, de);
      *denc += de;
      dx1.resize(n, m_d);
      m_ln1.backward(c.x1, c.ln1, dh, dx1);
      dx1 += dx2;
    } else {
      dx1 = std::move(dx2);
    }
    m_drop0.backward(dx1, c.d0, dx1, dt);
    Matrix<T> dkv(n, m_d);
    m_sa.backward(c.h0, c.h0, c.sa, dt, dh, dkv, &dbias);
    dh += dkv;
    m_ln0.backward(x, c.ln0, dh, dx);
    dx += dx1;
  }

  void set_training(bool on) {
    m_sa.set_training(on);
    m_ca.set_training(on);
    m_ff.set_training(on);
    m_drop0.set_training(on);
    m_drop1.set_training(on);
    m_drop2.set_training(on);
  }

  bool is_decoder() const { return m_decoder; }
  T5Attention<T>& self_attention() { return m_sa; }
  T5Attention<T>& cross_attention() { return m_ca; }
  T5DenseReluDense<T>& ff() { return m_ff; }
  bool has_relative_bias() const { return m_bias.has_value(); }
  T5RelativePositionBias<T>& relative_bias() { return *m_bias; }
  RMSNorm<T>& self_attention_norm() { return m_ln0; }
  RMSNorm<T>& cross_attention_norm() { return m_ln1; }
  RMSNorm<T>& ff_norm() { return m_ln2; }
  template <class F>
  void for_each_dropout(F&& f) {
    f(m_sa.dropout());
    f(m_drop0);
    if (m_decoder) {
      f(m_ca.dropout());
      f(m_drop1);
    }
    f(m_ff.dropout());
    f(m_drop2);
  }

 private:
  bool m_decoder;
  Index m_d;
  RMSNorm<T> m_ln0;
  T5Attention<T> m_sa;
  Dropout<T> m_drop0;
  RMSNorm<T> m_ln1;
  T5Attention<T> m_ca;
  Dropout<T> m_drop1;
  RMSNorm<T> m_ln2;
  T5DenseReluDense<T> m_ff;
  Dropout<T> m_drop2;
  std::optional<T5RelativePositionBias<T>> m_bias;
};

/**
 * @brief HF's `_shift_right`: decoder inputs from labels (B, T) row-major: position 0 of each row is
 * `decoder_start_token_id`, position t is label t−1, and −100 becomes `pad_token_id`.
 */
inline std::vector<std::int64_t> t5_shift_right(const std::vector<std::int64_t>& labels, Index batch,
                                                Index len, Index decoder_start_token_id, Index pad_token_id) {
  PEMOE_CHECK_SHAPE(Index(labels.size()) == batch * len, "t5_shift_right: ", labels.size(),
                    " labels, expected B·T = ", batch * len);
  std::vector<std::int64_t> out(labels.size());
  for (Index b = 0; b < batch; ++b)
    for (Index t = 0; t < len; ++t) {
      std::int64_t v = t == 0 ? std::int64_t(decoder_start_token_id) : labels[std::size_t(b * len + t - 1)];
      out[std::size_t(b * len + t)] = v == -100 ? std::int64_t(pad_token_id) : v;
    }
  return out;
}

/**
 * @brief T5 encoder–decoder language model (HF `T5ForConditionalGeneration`; Raffel et al. 2020, with the
 * T5 v1.1 changes: gated-GELU feed-forward, no dropout in pre-training, untied LM head without rescaling).
 *
 * Encoder: e_0 = drop(E[src]); e_{l+1} = Block_l(e_l) (bidirectional position bias β_enc, source padding
 * masked); e = drop(RMS_enc(e_L)). Decoder: y_0 = drop(E[dec]) with dec = shift_right(labels) (or given);
 * y_{l+1} = Block_l(y_l, e) (causal self-attention with bias β_dec, cross-attention over e with the source
 * mask, no position bias); h = drop(RMS_dec(y_L)) · s, s = d_model^−1/2 if `scale_decoder_outputs` else 1;
 * logits = h·W_headᵀ (W_head = E when tied, else `lm_head.weight`). No 1/√d_kv in the attention logits and no
 * embedding scaling. Loss = mean cross-entropy over labels ≠ −100 (labels are aligned with the decoder
 * positions, not shifted).
 *
 * Parameters carry HF names (`shared.weight`, `encoder.block.0.layer.0.SelfAttention.q.weight`, ...,
 * `encoder.final_layer_norm.weight`, `decoder.final_layer_norm.weight`, `lm_head.weight` when untied).
 * Linear sites (for adapters): every q, k, v, o, wi_0, wi_1 (or wi), wo of both stacks.
 * Shapes: source ids (B·Ts), labels and decoder ids (B·Tt), row-major; logits (B·Tt, vocab).
 */
template <class T>
class T5 {
 public:
  using Scalar = T;
  struct Cache {
    Index batch = 0, src_len = 0, tgt_len = 0;
    std::vector<std::int64_t> src, dec, labels;
    typename Embedding<T>::Cache emb_src, emb_dec;
    typename Dropout<T>::Cache drop_src, drop_enc, drop_dec, drop_out;
    typename T5RelativePositionBias<T>::Cache bias_enc, bias_dec;
    Matrix<T> enc_bias, dec_bias;  ///< (H·Ts, Ts), (H·Tt, Tt)
    std::vector<Matrix<T>> ex;     ///< encoder residual states (B·Ts, d), num_layers + 1
    std::vector<Matrix<T>> dx;     ///< decoder residual states (B·Tt, d), decoder layers + 1
    std::vector<typename T5Block<T>::Cache> enc_blocks, dec_blocks;
    typename RMSNorm<T>::Cache ln_enc, ln_dec;
    Matrix<T> enc_out;  ///< (B·Ts, d) e
    Matrix<T> hd;       ///< (B·Tt, d) drop(RMS_dec(y_L)) (before the scale)
    Matrix<T> hs;       ///< (B·Tt, d) hd · s, the head's input
    typename Linear<T>::Cache head;
    Matrix<T> logits;  ///< (B·Tt, vocab)
    typename CrossEntropy<T>::Cache ce;
    double lm_loss = 0.0, aux_loss = 0.0;
  };

  explicit T5(const T5Config& c)
      : m_config(c),
        m_shared(EmbeddingConfig{c.vocab_size, c.d_model, 1.0}),
        m_enc_ln(NormConfig{c.d_model, c.layer_norm_epsilon}),
        m_dec_ln(NormConfig{c.d_model, c.layer_norm_epsilon}),
        m_enc_drop(c.dropout_rate),
        m_dec_drop(c.dropout_rate),
        m_lm_head(LinearConfig{c.d_model, c.vocab_size, false}) {
    c.validate();
    for (Index i = 0; i < c.num_layers; ++i) m_enc.emplace_back(c, false, i == 0);
    for (Index i = 0; i < c.decoder_layers(); ++i) m_dec.emplace_back(c, true, i == 0);
  }

  /// Every linear site with its Hugging Face module name, in model order (encoder, then decoder).
  std::vector<std::pair<std::string, LinearSite<T>*>> linear_sites() {
    std::vector<std::pair<std::string, LinearSite<T>*>> v;
    auto attn = [&](const std::string& p, T5Attention<T>& a) {
      v.push_back({p + ".q", &a.q()});
      v.push_back({p + ".k", &a.k()});
      v.push_back({p + ".v", &a.v()});
      v.push_back({p + ".o", &a.o()});
    };
    auto ff = [&](const std::string& p, T5DenseReluDense<T>& f) {
      v.push_back({p + (f.gated() ? ".wi_0" : ".wi"), &f.wi_0()});
      if (f.gated()) v.push_back({p + ".wi_1", &f.wi_1()});
      v.push_back({p + ".wo", &f.wo()});
    };
    for (std::size_t i = 0; i < m_enc.size(); ++i) {
      const std::string p = "encoder.block." + std::to_string(i);
      attn(p + ".layer.0.SelfAttention", m_enc[i].self_attention());
      ff(p + ".layer.1.DenseReluDense", m_enc[i].ff());
    }
    for (std::size_t i = 0; i < m_dec.size(); ++i) {
      const std::string p = "decoder.block." + std::to_string(i);
      attn(p + ".layer.0.SelfAttention", m_dec[i].self_attention());
      attn(p + ".layer.1.EncDecAttention", m_dec[i].cross_attention());
      ff(p + ".layer.2.DenseReluDense", m_dec[i].ff());
    }
    return v;
  }

  /**
   * @brief Puts `spec`'s adapter on every linear site `targets` selects (PEFT semantics: "q", "v", "wi_0",
   * "EncDecAttention.k", ...) and returns their names. `feedforward` names the sites where IA3 scales the
   * input (PEFT's T5 default: "wo"). Before `register_params`; `ConfigError` when nothing matches.
   */
  std::vector<std::string> inject(const AdapterSpec& spec, const TargetModules& targets,
                                  const TargetModules& feedforward = default_feedforward()) {
    PEMOE_CHECK_CONFIG(m_store == nullptr, "T5: inject adapters before register_params()");
    std::vector<std::string> hit;
    for (auto& [name, site] : linear_sites()) {
      if (!targets.matches(name)) continue;
      AdapterSpec s = spec;
      s.ia3.feedforward = feedforward.matches(name);
      site->set_adapter(s);
      hit.push_back(name);
    }
    PEMOE_CHECK_CONFIG(!hit.empty(), "T5: the target modules match none of the ", linear_sites().size(),
                       " linear sites (names look like 'encoder.block.0.layer.0.SelfAttention.q', "
                       "'DenseReluDense.wi_0')");
    m_adapted = spec.kind != AdapterKind::none;
    return hit;
  }
  /**
   * @brief MoV where its reference puts it (Zadouri et al. 2023; the Flaxformer fork's `MoVAttention` and
   * `MlpBlock.intermediate_conv`): on the key and value projections of every attention (encoder self,
   * decoder self and cross), per head (`heads` = H: vectors (H, E, d_kv), one router (E, d_kv) shared by
   * the heads, routing per token and head on the key or value vector), and on the intermediate activation
   * of every feed-forward (branch 0 after the activation, vectors (E, d_ff), router on that activation).
   * `config.heads` is ignored (set per site). Before `register_params`; returns the adapted sites' names.
   *
   * (IA)³ at the same places is PEFT's T5 default: `inject` IA3 with targets k, v, wo and feed-forward wo
   * (scaling wo's input equals scaling branch 0 after the activation, the products commuting).
   */
  std::vector<std::string> inject_mov(MoVConfig config) {
    PEMOE_CHECK_CONFIG(m_store == nullptr, "T5: inject adapters before register_params()");
    std::vector<std::string> hit;
    AdapterSpec kv;
    kv.kind = AdapterKind::mov;
    kv.mov = config;
    kv.mov.heads = m_config.num_heads;
    kv.mov.router_input = RouterInput::activation;
    for (auto& [name, site] : linear_sites()) {
      const bool k = name.size() >= 2 && name.compare(name.size() - 2, 2, ".k") == 0;
      const bool v = name.size() >= 2 && name.compare(name.size() - 2, 2, ".v") == 0;
      if (!k && !v) continue;
      site->set_adapter(kv);
      hit.push_back(name);
    }
    MoVConfig mid = config;
    mid.heads = 1;
    mid.router_input = RouterInput::activation;
    for (std::size_t i = 0; i < m_enc.size(); ++i) {
      m_enc[i].ff().set_intermediate_mov(mid);
      hit.push_back("encoder.block." + std::to_string(i) + ".layer.1.DenseReluDense.intermediate");
    }
    for (std::size_t i = 0; i < m_dec.size(); ++i) {
      m_dec[i].ff().set_intermediate_mov(mid);
      hit.push_back("decoder.block." + std::to_string(i) + ".layer.2.DenseReluDense.intermediate");
    }
    m_adapted = true;
    return hit;
  }

  /// PEFT's default IA3 feed-forward modules for T5: "wo".
  static TargetModules default_feedforward() {
    TargetModules t;
    t.names = {"wo"};
    return t;
  }
  /// PEFT's `task_type` of this model's adapters.
  static constexpr const char* kPeftTaskType = "SEQ_2_SEQ_LM";
  /// PEFT's `fan_in_fan_out` (T5's linears are nn.Linear).
  static constexpr bool kPeftFanInFanOut = false;
  /// Whether a parameter belongs to the pretrained backbone (not to an adapter or a router).
  static bool is_backbone(const std::string& name) {
    for (const char* key : {".lora_A.", ".lora_B.", ".ia3_l", ".mov_scaling", ".router."})
      if (name.find(key) != std::string::npos) return false;
    return true;
  }

  /// Declares every parameter under its HF name and initialises it as HF's `_init_weights` (factor 1):
  /// shared and lm_head N(0, 1); q N(0, (d·d_kv)^−1/2); k, v, wi N(0, d^−1/2); o N(0, (H·d_kv)^−1/2);
  /// wo N(0, d_ff^−1/2); relative bias N(0, d^−1/2); norms 1. With adapters, freezes the backbone.
  void register_params(ParamStore<T>& store, Rng& rng) {
    m_store = &store;
    if (m_adapted) store.set_frozen_filter([](const std::string& n) { return is_backbone(n); });
    m_shared.register_params(store, "shared", rng);
    m_enc_drop.register_params(store, "encoder.dropout", rng);
    for (std::size_t i = 0; i < m_enc.size(); ++i)
      m_enc[i].register_params(store, "encoder.block." + std::to_string(i), rng);
    m_enc_ln.register_params(store, "encoder.final_layer_norm", rng);
    m_dec_drop.register_params(store, "decoder.dropout", rng);
    for (std::size_t i = 0; i < m_dec.size(); ++i)
      m_dec[i].register_params(store, "decoder.block." + std::to_string(i), rng);
    m_dec_ln.register_params(store, "decoder.final_layer_norm", rng);
    if (!m_config.tie_word_embeddings) m_lm_head.register_params(store, "lm_head", rng);
    if (!store.declaring_only()) init_like_hf(store, rng);
    store.set_frozen_filter({});
  }

  /// Merges every mergeable adapter (LoRA, IA3) into the backbone weights and makes every site a plain
  /// linear again (PEFT `merge_and_unload`); `ConfigError` for MoE adapters (MoV on the feed-forward's
  /// intermediate activation included), before anything is merged. A packed backbone is packed anew.
  void merge_and_unload() {
    m_pack.require_f32("T5", "merge_and_unload");
    for (auto* stack : {&m_enc, &m_dec})
      for (auto& b : *stack)
        PEMOE_CHECK_CONFIG(!b.ff().has_intermediate_mov(),
                           "T5: MoV on the feed-forward's intermediate activation routes each token by that "
                           "activation and cannot be merged into a weight");
    merge_linear_sites("T5", linear_sites());
    m_adapted = false;
    if (m_pack.dtype()) pack_frozen(*m_pack.dtype());  // merged weights changed: pack them anew
  }

  /**
   * @brief Packs every frozen backbone weight once for the fast path (core/weight_pack.hpp): the base
   * weight of each linear site whose weight is frozen, the untied LM head, or the shared table of a tied
   * head. In `PackDtype::bf16` those products take bf16 inputs with f32 accumulation, while adapters,
   * routers, the norms, attention, the loss and the optimizer stay f32.
   *
   * Call after the weights are loaded and the trainable set is final (packs are copies); `merge_and_unload`
   * packs again. Returns the bytes the packs hold. `ConfigError` where packing is unavailable (no oneDNN,
   * bf16 on a CPU without bf16 units: use f32 there), before anything is packed.
   *
   * `release_f32` (bf16 only) makes a bf16-only backbone: each packed weight is kept as one plain bf16 copy
   * and its f32 values are dropped from the store (models/backbone_pack.hpp). A tied shared table goes the
   * same way (the encoder's and decoder's lookups then read the head's bf16 rows); an untied model's shared
   * table is only looked up and stays f32. Reading, saving or merging released weights is a `ConfigError`
   * until the model is loaded again.
   */
  std::size_t pack_frozen(PackDtype dtype, bool release_f32 = false) {
    return m_pack.pack("T5", m_store, pack_targets(), dtype, release_f32);
  }
  /// Drops every pack (products read the weights in the store again).
  void unpack_frozen() { m_pack.unpack("T5", pack_targets()); }
  /// The dtype of the packed backbone, if packed.
  std::optional<PackDtype> packed_dtype() const { return m_pack.dtype(); }

  /**
   * @brief Layout of the next forward calls: B pairs of Ts source and Tt target tokens; the source padding
   * mask (B·Ts, 1 = token; HF `attention_mask`), applied in the encoder self-attention and the decoder
   * cross-attention; the target padding mask (B·Tt; HF `decoder_attention_mask`), applied with the causal
   * mask in the decoder self-attention. Empty masks: no padding. Routers of injected MoE adapters leave
   * padded tokens out of their statistics.
   */
  void set_batch(Index batch, Index src_len, Index tgt_len, std::vector<std::int64_t> src_mask = {},
                 std::vector<std::int64_t> tgt_mask = {}) {
    for (auto& b : m_enc) b.self_attention().set_batch(batch, src_len, src_len, src_mask);
    for (auto& b : m_dec) {
      b.self_attention().set_batch(batch, tgt_len, tgt_len, tgt_mask);
      b.cross_attention().set_batch(batch, tgt_len, src_len, src_mask);
    }
    // Routers of MoE adapters leave padded tokens out of their statistics: the encoder's sites and the
    // cross-attention's k, v see source tokens, every other decoder site target tokens.
    auto tokens = [](const std::vector<std::int64_t>& m) {
      std::vector<std::uint8_t> t;
      for (auto v : m) t.push_back(v != 0 ? 1 : 0);
      return t;
    };
    const std::vector<std::uint8_t> src_tokens = tokens(src_mask), tgt_tokens = tokens(tgt_mask);
    for (auto& [name, site] : linear_sites()) {
      Router<T>* r = site->router();
      if (!r) continue;
      const bool src = name.rfind("encoder.", 0) == 0 ||
                       name.find("EncDecAttention.k") != std::string::npos ||
                       name.find("EncDecAttention.v") != std::string::npos;
      r->set_token_mask(src ? src_tokens : tgt_tokens);
    }
    for (auto& b : m_enc)
      if (b.ff().has_intermediate_mov()) b.ff().intermediate_mov().router().set_token_mask(src_tokens);
    for (auto& b : m_dec)
      if (b.ff().has_intermediate_mov()) b.ff().intermediate_mov().router().set_token_mask(tgt_tokens);
    m_batch = batch;
    m_src_len = src_len;
    m_tgt_len = tgt_len;
    m_src_mask = std::move(src_mask);
    m_tgt_mask = std::move(tgt_mask);
  }

  /// The layout of the last `set_batch` (B = 0 before any), to put it back after decoding.
  struct BatchLayout {
    Index batch = 0, src_len = 0, tgt_len = 0;
    std::vector<std::int64_t> src_mask, tgt_mask;
  };
  BatchLayout batch_layout() const { return {m_batch, m_src_len, m_tgt_len, m_src_mask, m_tgt_mask}; }

  /// Every router of the model's adapters with the name of the module it routes: a linear site's Hugging
  /// Face name, or "<block>.layer.<n>.DenseReluDense.intermediate" for MoV on the feed-forward's intermediate
  /// activation. Linear sites first (model order), then the intermediate MoVs (encoder, then decoder).
  std::vector<std::pair<std::string, Router<T>*>> named_routers() {
    std::vector<std::pair<std::string, Router<T>*>> v;
    for (auto& [name, site] : linear_sites())
      if (Router<T>* r = site->router()) v.push_back({name, r});
    for (std::size_t i = 0; i < m_enc.size(); ++i)
      if (m_enc[i].ff().has_intermediate_mov())
        v.push_back({"encoder.block." + std::to_string(i) + ".layer.1.DenseReluDense.intermediate",
                     &m_enc[i].ff().intermediate_mov().router()});
    for (std::size_t i = 0; i < m_dec.size(); ++i)
      if (m_dec[i].ff().has_intermediate_mov())
        v.push_back({"decoder.block." + std::to_string(i) + ".layer.2.DenseReluDense.intermediate",
                     &m_dec[i].ff().intermediate_mov().router()});
    return v;
  }
  /// The routers of `named_routers()`, in its order.
  std::vector<Router<T>*> routers() {
    std::vector<Router<T>*> v;
    for (auto& [name, r] : named_routers()) v.push_back(r);
    return v;
  }
  /**
   * @brief The routing caches of the forward call that filled `c`, in `routers()` order: `routers()[i]`
   * routed the tokens of `router_caches(c)[i]` (its `probs`, `topk_idx`, `valid`; per-head MoV routers have
   * one row per token and head). For routing statistics: the mean routing probability per task, expert load.
   */
  std::vector<const typename Router<T>::Cache*> router_caches(const Cache& c) {
    PEMOE_CHECK_CONFIG(c.enc_blocks.size() == m_enc.size() && c.dec_blocks.size() == m_dec.size(),
                       "T5: router_caches needs the cache of a forward call");
    // The linear sites' caches in linear_sites() order.
    std::vector<const typename LinearSite<T>::Cache*> site_caches;
    auto attn = [&](const typename T5Attention<T>::Cache& a) {
      for (const auto* x : {&a.cq, &a.ck, &a.cv, &a.co}) site_caches.push_back(x);
    };
    auto ff = [&](const T5DenseReluDense<T>& f, const typename T5DenseReluDense<T>::Cache& x) {
      site_caches.push_back(&x.c0);
      if (f.gated()) site_caches.push_back(&x.c1);
      site_caches.push_back(&x.co);
    };
    for (std::size_t i = 0; i < m_enc.size(); ++i) {
      attn(c.enc_blocks[i].sa);
      ff(m_enc[i].ff(), c.enc_blocks[i].ff);
    }
    for (std::size_t i = 0; i < m_dec.size(); ++i) {
      attn(c.dec_blocks[i].sa);
      attn(c.dec_blocks[i].ca);
      ff(m_dec[i].ff(), c.dec_blocks[i].ff);
    }
    std::vector<const typename Router<T>::Cache*> v;
    const auto sites = linear_sites();
    for (std::size_t i = 0; i < sites.size(); ++i)
      if (sites[i].second->router()) v.push_back(LinearSite<T>::router_cache(*site_caches[i]));
    for (std::size_t i = 0; i < m_enc.size(); ++i)
      if (m_enc[i].ff().has_intermediate_mov()) v.push_back(&c.enc_blocks[i].ff.cm.router);
    for (std::size_t i = 0; i < m_dec.size(); ++i)
      if (m_dec[i].ff().has_intermediate_mov()) v.push_back(&c.dec_blocks[i].ff.cm.router);
    return v;
  }

  /**
   * @brief Inference: runs the encoder over `src` (B·Ts ids, the `set_batch` layout) into `c.enc_out`
   * (B·Ts, d), the cross-attentions' input. `forward` runs the same code.
   */
  void encode(const std::vector<std::int64_t>& src, Cache& c) {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "T5: call register_params() before forward");
    PEMOE_CHECK_CONFIG(m_batch > 0, "T5: call set_batch(B, Ts, Tt) before forward");
    const Index B = m_batch, Ts = m_src_len, d = m_config.d_model;
    PEMOE_CHECK_SHAPE(Index(src.size()) == B * Ts, "T5: ", src.size(),
                      " source ids, expected B·Ts = ", B * Ts);
    c.batch = B;
    c.src_len = Ts;
    c.src = src;
    c.ex.resize(m_enc.size() + 1);
    for (auto& m : c.ex) m.resize(B * Ts, d);
    m_shared.forward(c.src, c.ex[0], c.emb_src);
    m_enc_drop.forward(c.ex[0], c.ex[0], c.drop_src);
    m_enc[0].relative_bias().forward(Ts, Ts, c.enc_bias, c.bias_enc);
    c.enc_blocks.resize(m_enc.size());
    for (std::size_t l = 0; l < m_enc.size(); ++l)
      m_enc[l].forward(c.ex[l], nullptr, c.enc_bias, c.ex[l + 1], c.enc_blocks[l]);
    c.enc_out.resize(B * Ts, d);
    m_enc_ln.forward(c.ex.back(), c.enc_out, c.ln_enc);
    m_enc_drop.forward(c.enc_out, c.enc_out, c.drop_enc);
  }

  /// Forward with decoder inputs = shift_right(labels) (HF, when only labels are given); returns the loss.
  double forward(const std::vector<std::int64_t>& src, const std::vector<std::int64_t>& labels, Cache& c) {
    PEMOE_CHECK_CONFIG(!labels.empty(), "T5: forward(src, labels) needs labels (or give decoder ids)");
    PEMOE_CHECK_CONFIG(m_batch > 0, "T5: call set_batch(B, Ts, Tt) before forward");
    return forward(
        src,
        t5_shift_right(labels, m_batch, m_tgt_len, m_config.decoder_start_token_id, m_config.pad_token_id),
        labels, c);
  }

  /**
   * @brief Forward over source ids (B·Ts) and decoder input ids (B·Tt) with the layout of `set_batch`;
   * with labels (B·Tt, −100 = ignored) returns the loss (mean cross-entropy + adapters' aux losses), else 0.
   * Logits stay in `cache.logits`.
   */
  double forward(const std::vector<std::int64_t>& src, const std::vector<std::int64_t>& dec,
                 const std::vector<std::int64_t>& labels, Cache& c) {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "T5: call register_params() before forward");
    PEMOE_CHECK_CONFIG(m_batch > 0, "T5: call set_batch(B, Ts, Tt) before forward");
    const Index B = m_batch, Ts = m_src_len, Tt = m_tgt_len, d = m_config.d_model;
    PEMOE_CHECK_SHAPE(Index(src.size()) == B * Ts, "T5: ", src.size(),
                      " source ids, expected B·Ts = ", B * Ts);
    PEMOE_CHECK_SHAPE(Index(dec.size()) == B * Tt, "T5: ", dec.size(),
                      " decoder ids, expected B·Tt = ", B * Tt);
    PEMOE_CHECK_SHAPE(labels.empty() || Index(labels.size()) == B * Tt, "T5: ", labels.size(),
                      " labels, expected B·Tt = ", B * Tt, " (or none)");
    encode(src, c);
    c.tgt_len = Tt;
    c.dec = dec;
    c.labels = labels;
    // Decoder.
    c.dx.resize(m_dec.size() + 1);
    for (auto& m : c.dx) m.resize(B * Tt, d);
    m_shared.forward(c.dec, c.dx[0], c.emb_dec);
    m_dec_drop.forward(c.dx[0], c.dx[0], c.drop_dec);
    m_dec[0].relative_bias().forward(Tt, Tt, c.dec_bias, c.bias_dec);
    c.dec_blocks.resize(m_dec.size());
    for (std::size_t l = 0; l < m_dec.size(); ++l)
      m_dec[l].forward(c.dx[l], &c.enc_out, c.dec_bias, c.dx[l + 1], c.dec_blocks[l]);
    c.hd.resize(B * Tt, d);
    m_dec_ln.forward(c.dx.back(), c.hd, c.ln_dec);
    m_dec_drop.forward(c.hd, c.hd, c.drop_out);
    c.hs = c.hd * T(head_scale());
    // Head and loss.
    c.logits.resize(B * Tt, m_config.vocab_size);
    if (m_config.tie_word_embeddings)
      m_shared.logits(c.hs, c.logits);
    else
      m_lm_head.forward(c.hs, c.logits, c.head);
    c.lm_loss = c.aux_loss = 0.0;
    if (labels.empty()) return 0.0;
    c.lm_loss = m_ce.forward(c.logits, c.labels, c.ce);
    c.aux_loss = aux_loss(c);
    return c.lm_loss + c.aux_loss;
  }

  /// Backward of the loss of the last forward: adds every trainable parameter's gradient.
  void backward(const Cache& c) {
    PEMOE_CHECK_CONFIG(!c.labels.empty(), "T5: backward needs a forward with labels");
    const Index B = c.batch, Ts = c.src_len, Tt = c.tgt_len, d = m_config.d_model, H = m_config.num_heads;
    Matrix<T> dlogits(B * Tt, m_config.vocab_size);
    m_ce.backward(c.logits, c.labels, c.ce, dlogits);
    Matrix<T> dh(B * Tt, d);
    if (m_config.tie_word_embeddings)
      m_shared.logits_backward(c.hs, dlogits, dh);
    else
      m_lm_head.backward(c.hs, c.head, dlogits, dh);
    dh *= T(head_scale());
    m_dec_drop.backward(dh, c.drop_out, dh, dh);
    Matrix<T> dy(B * Tt, d), dprev(B * Tt, d);
    m_dec_ln.backward(c.dx.back(), c.ln_dec, dh, dy);
    Matrix<T> denc = Matrix<T>::Zero(B * Ts, d);
    Matrix<T> dbias_dec = Matrix<T>::Zero(H * Tt, Tt);
    for (std::size_t l = m_dec.size(); l-- > 0;) {
      m_dec[l].backward(c.dx[l], &c.enc_out, c.dec_blocks[l], dy, dprev, &denc, dbias_dec);
      dy.swap(dprev);
    }
    m_dec[0].relative_bias().backward(c.bias_dec, dbias_dec);
    m_dec_drop.backward(dy, c.drop_dec, dy, dy);
    m_shared.backward(c.dec, c.emb_dec, dy);
    // Encoder.
    m_enc_drop.backward(denc, c.drop_enc, denc, denc);
    Matrix<T> de(B * Ts, d), deprev(B * Ts, d);
    m_enc_ln.backward(c.ex.back(), c.ln_enc, denc, de);
    Matrix<T> dbias_enc = Matrix<T>::Zero(H * Ts, Ts);
    for (std::size_t l = m_enc.size(); l-- > 0;) {
      m_enc[l].backward(c.ex[l], nullptr, c.enc_blocks[l], de, deprev, nullptr, dbias_enc);
      de.swap(deprev);
    }
    m_enc[0].relative_bias().backward(c.bias_enc, dbias_enc);
    m_enc_drop.backward(de, c.drop_src, de, de);
    m_shared.backward(c.src, c.emb_src, de);
  }

  /// Sum of the aux losses of every adapter router in the forward that filled `c` (0 without MoE adapters).
  double aux_loss(const Cache& c) {
    double a = 0.0;
    for (std::size_t i = 0; i < m_enc.size(); ++i) {
      auto& b = m_enc[i];
      const auto& bc = c.enc_blocks[i];
      a += attn_aux(b.self_attention(), bc.sa) + ff_aux(b.ff(), bc.ff);
    }
    for (std::size_t i = 0; i < m_dec.size(); ++i) {
      auto& b = m_dec[i];
      const auto& bc = c.dec_blocks[i];
      a += attn_aux(b.self_attention(), bc.sa) + attn_aux(b.cross_attention(), bc.ca) + ff_aux(b.ff(), bc.ff);
    }
    return a;
  }

  /// The factor s applied to the decoder output before the head (d_model^−1/2 or 1).
  double head_scale() const {
    return m_config.scale_decoder_outputs ? 1.0 / std::sqrt(double(m_config.d_model)) : 1.0;
  }

  /// Training mode (dropout, router noise) for every layer.
  void set_training(bool on) {
    m_enc_drop.set_training(on);
    m_dec_drop.set_training(on);
    for (auto& b : m_enc) b.set_training(on);
    for (auto& b : m_dec) b.set_training(on);
  }

  /**
   * @brief The model's random state: the call counters of every dropout and adapter router, in a fixed
   * order (every mask and noise draw is a pure function of the seed and these counters; with the parameters
   * and the optimizer state, what a bit-identical resume needs).
   */
  std::vector<std::uint64_t> rng_counters() {
    std::vector<std::uint64_t> v;
    for_each_rng([&](auto& r) { v.push_back(r.call_counter()); });
    return v;
  }
  /// Whether any dropout or adapter router is in training mode.
  bool training() {
    bool on = false;
    for_each_rng([&](auto& r) { on = on || r.training(); });
    return on;
  }

  /// Restores `rng_counters()`; `ConfigError` when the count differs (another model or adapter).
  void set_rng_counters(const std::vector<std::uint64_t>& v) {
    std::size_t n = 0;
    for_each_rng([&](auto&) { ++n; });
    PEMOE_CHECK_CONFIG(n == v.size(), "T5: ", v.size(), " rng counters given, the model has ", n);
    std::size_t i = 0;
    for_each_rng([&](auto& r) { r.set_call_counter(v[i++]); });
  }

  const T5Config& config() const { return m_config; }
  Embedding<T>& shared() { return m_shared; }
  T5Block<T>& encoder_block(Index i) { return m_enc.at(std::size_t(i)); }
  T5Block<T>& decoder_block(Index i) { return m_dec.at(std::size_t(i)); }
  RMSNorm<T>& encoder_final_layer_norm() { return m_enc_ln; }
  RMSNorm<T>& decoder_final_layer_norm() { return m_dec_ln; }
  /// The untied head (only registered when `tie_word_embeddings` is false).
  Linear<T>& lm_head() { return m_lm_head; }
  ParamStore<T>* store() { return m_store; }
  bool adapted() const { return m_adapted; }

 private:
  template <class F>
  void for_each_rng(F&& f) {
    f(m_enc_drop);
    f(m_dec_drop);
    for (auto& b : m_enc) b.for_each_dropout(f);
    for (auto& b : m_dec) b.for_each_dropout(f);
    for (auto& [name, site] : linear_sites()) {
      if (Dropout<T>* d = site->dropout()) f(*d);
      if (Router<T>* r = site->router()) f(*r);
    }
    for (auto* stack : {&m_enc, &m_dec})
      for (auto& b : *stack)
        if (b.ff().has_intermediate_mov()) f(b.ff().intermediate_mov().router());
  }
  static double attn_aux(T5Attention<T>& a, const typename T5Attention<T>::Cache& c) {
    return a.q().aux_loss(c.cq) + a.k().aux_loss(c.ck) + a.v().aux_loss(c.cv) + a.o().aux_loss(c.co);
  }
  static double ff_aux(T5DenseReluDense<T>& f, const typename T5DenseReluDense<T>::Cache& c) {
    return f.wi_0().aux_loss(c.c0) + (f.gated() ? f.wi_1().aux_loss(c.c1) : 0.0) + f.wo().aux_loss(c.co) +
           (f.has_intermediate_mov() ? f.intermediate_mov().aux_loss(c.cm) : 0.0);
  }

  // What pack_frozen may pack: the base linear of every linear site, and the head (the untied lm_head, or
  // the shared table it is tied to).
  typename BackbonePack<T>::Weights pack_targets() {
    typename BackbonePack<T>::Weights w;
    for (auto& [name, site] : linear_sites())
      if (Linear<T>* base = site->base_linear()) w.linears.push_back(base);
    if (m_config.tie_word_embeddings)
      w.tied_head = &m_shared;
    else
      w.linears.push_back(&m_lm_head);
    return w;
  }

  void init_like_hf(ParamStore<T>& store, Rng& rng) {
    const double d = double(m_config.d_model), inner = double(m_config.inner());
    auto fill = [&](const std::string& name, double stddev) {
      const ParamId id = store.id(name);
      rng.split(name + ".init").fill_normal(store.value(id), store.entry(id).size, 0.0, stddev);
    };
    for (auto& entry : linear_sites()) {
      const std::string& name = entry.first;  // (a structured binding cannot be captured in C++17)
      const auto ends = [&](const char* s) {
        const std::string t(s);
        return name.size() >= t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0;
      };
      double stddev = std::pow(d, -0.5);  // k, v, wi, wi_0, wi_1
      if (ends(".q")) stddev = std::pow(d * double(m_config.d_kv), -0.5);
      if (ends(".o")) stddev = std::pow(inner, -0.5);
      if (ends(".wo")) stddev = std::pow(double(m_config.d_ff), -0.5);
      fill(name + ".weight", stddev);
    }
    if (!m_config.tie_word_embeddings) fill("lm_head.weight", 1.0);
  }

  T5Config m_config;
  Embedding<T> m_shared;
  std::vector<T5Block<T>> m_enc, m_dec;
  RMSNorm<T> m_enc_ln, m_dec_ln;
  Dropout<T> m_enc_drop, m_dec_drop;
  Linear<T> m_lm_head;
  CrossEntropy<T> m_ce;
  ParamStore<T>* m_store = nullptr;
  Index m_batch = 0, m_src_len = 0, m_tgt_len = 0;
  std::vector<std::int64_t> m_src_mask, m_tgt_mask;  ///< of the last set_batch
  bool m_adapted = false;
  BackbonePack<T> m_pack;
};

}  // namespace pemoe

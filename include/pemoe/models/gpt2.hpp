/// @file gpt2.hpp
/// @brief GPT-2 (Radford et al. 2019) as a tree of pemoe layers, exact to Hugging Face's `GPT2LMHeadModel`:
/// any adapter at any linear site, hand-written backward, Hugging Face checkpoints loaded and saved
/// unchanged.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "pemoe/adapters/mpoe.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/profile.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/models/backbone_pack.hpp"
#include "pemoe/models/linear_site.hpp"
#include "pemoe/models/target_modules.hpp"
#include "pemoe/moe/aux_loss.hpp"
#include "pemoe/nn/activations.hpp"
#include "pemoe/nn/attention.hpp"
#include "pemoe/nn/cross_entropy.hpp"
#include "pemoe/nn/dropout.hpp"
#include "pemoe/nn/embedding.hpp"
#include "pemoe/nn/layernorm.hpp"

namespace pemoe {

/// GPT-2 hyper-parameters, named as in Hugging Face's `config.json` (defaults: GPT-2 124M).
struct GPT2Config {
  Index n_layer = 12;
  Index n_head = 12;
  Index n_embd = 768;
  Index vocab_size = 50257;
  Index n_positions = 1024;
  Index n_inner = 0;  ///< MLP width; 0 = 4·n_embd
  double layer_norm_epsilon = 1e-5;
  std::string activation_function = "gelu_new";
  double resid_pdrop = 0.1, embd_pdrop = 0.1, attn_pdrop = 0.1;
  Index bos_token_id = 50256;  ///< Hugging Face's `bos_token_id` (generation only; GPT-2's <|endoftext|>)
  Index eos_token_id = 50256;  ///< Hugging Face's `eos_token_id` (generation only)

  Index inner() const { return n_inner > 0 ? n_inner : 4 * n_embd; }

  /// Reads a Hugging Face GPT-2 `config.json` object; keys it does not use are ignored, a wrong type or a
  /// value GPT-2 cannot have is a `ConfigError` naming the key.
  static GPT2Config from_json(const nlohmann::json& j) {
    GPT2Config c;
    auto get_index = [&](const char* key, Index& v) {
      if (!j.contains(key) || j[key].is_null()) return;
      PEMOE_CHECK_CONFIG(j[key].is_number_integer() && j[key].get<long long>() >= 0, "GPT-2 config: '", key,
                         "' must be a non-negative integer, got ", j[key].dump());
      v = j[key].get<Index>();
    };
    auto get_double = [&](const char* key, double& v) {
      if (!j.contains(key) || j[key].is_null()) return;
      PEMOE_CHECK_CONFIG(j[key].is_number(), "GPT-2 config: '", key, "' must be a number, got ",
                         j[key].dump());
      v = j[key].get<double>();
    };
    if (j.contains("model_type"))
      PEMOE_CHECK_CONFIG(j["model_type"] == "gpt2", "GPT-2 config: model_type is ", j["model_type"].dump(),
                         ", expected \"gpt2\"");
    get_index("n_layer", c.n_layer);
    get_index("n_head", c.n_head);
    get_index("n_embd", c.n_embd);
    get_index("vocab_size", c.vocab_size);
    get_index("n_positions", c.n_positions);
    get_index("n_inner", c.n_inner);
    get_double("layer_norm_epsilon", c.layer_norm_epsilon);
    get_double("resid_pdrop", c.resid_pdrop);
    get_double("embd_pdrop", c.embd_pdrop);
    get_double("attn_pdrop", c.attn_pdrop);
    get_index("bos_token_id", c.bos_token_id);
    get_index("eos_token_id", c.eos_token_id);
    if (j.contains("activation_function"))
      c.activation_function = j["activation_function"].get<std::string>();
    gelu_kind_from_hf(c.activation_function);  // validates
    if (j.contains("scale_attn_by_inverse_layer_idx"))
      PEMOE_CHECK_CONFIG(!j["scale_attn_by_inverse_layer_idx"].get<bool>(),
                         "GPT-2 config: scale_attn_by_inverse_layer_idx = true is not supported");
    if (j.contains("reorder_and_upcast_attn"))
      PEMOE_CHECK_CONFIG(!j["reorder_and_upcast_attn"].get<bool>(),
                         "GPT-2 config: reorder_and_upcast_attn = true is not supported");
    if (j.contains("tie_word_embeddings"))
      PEMOE_CHECK_CONFIG(j["tie_word_embeddings"].get<bool>(),
                         "GPT-2 config: tie_word_embeddings = false is not supported (GPT-2 ties its head)");
    c.validate();
    return c;
  }
  /// The `config.json` object Hugging Face writes for this configuration.
  nlohmann::json to_json() const {
    return {{"model_type", "gpt2"},
            {"architectures", {"GPT2LMHeadModel"}},
            {"n_layer", n_layer},
            {"n_head", n_head},
            {"n_embd", n_embd},
            {"vocab_size", vocab_size},
            {"n_positions", n_positions},
            {"n_inner", n_inner > 0 ? nlohmann::json(n_inner) : nlohmann::json(nullptr)},
            {"layer_norm_epsilon", layer_norm_epsilon},
            {"activation_function", activation_function},
            {"resid_pdrop", resid_pdrop},
            {"embd_pdrop", embd_pdrop},
            {"attn_pdrop", attn_pdrop},
            {"bos_token_id", bos_token_id},
            {"eos_token_id", eos_token_id},
            {"tie_word_embeddings", true},
            {"scale_attn_weights", true}};
  }
  void validate() const {
    PEMOE_CHECK_CONFIG(n_layer > 0 && n_head > 0 && n_embd > 0 && vocab_size > 0 && n_positions > 0,
                       "GPT-2 config: n_layer, n_head, n_embd, vocab_size and n_positions must be positive");
    PEMOE_CHECK_CONFIG(n_embd % n_head == 0, "GPT-2 config: n_embd ", n_embd, " is not a multiple of n_head ",
                       n_head);
  }
};

/**
 * @brief One GPT-2 block: x + attn(ln_1(x)), then + drop(c_proj(gelu(c_fc(ln_2(·))))). Pre-LayerNorm
 * (Hugging Face `GPT2Block`). The four linear sites (`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`)
 * are `LinearSite`s, so any adapter can sit there. Shapes: x (B·T, d) -> y (B·T, d); the layout (B, T,
 * padding) is set on the attention with `attn().set_batch`.
 */
template <class T>
class GPT2Block {
 public:
  using Scalar = T;
  struct Cache {
    typename LayerNorm<T>::Cache ln_1, ln_2;
    typename CausalSelfAttention<T, LinearSite<T>>::Cache attn;
    typename LinearSite<T>::Cache fc, proj;
    typename GELU<T>::Cache act;
    typename Dropout<T>::Cache drop;
    typename MpoeFfn<T>::Cache mpoe;  ///< when the MLP is an MPOE expert bank
    Matrix<T> h1;                     ///< (N, d) ln_1(x)
    Matrix<T> xm;                     ///< (N, d) x + attn(h1)
    Matrix<T> h2;                     ///< (N, d) ln_2(xm)
    Matrix<T> f;                      ///< (N, inner) c_fc(h2)
    Matrix<T> g;  ///< (N, inner) gelu(f); empty when c_proj's backward does not read it (frozen, no adapter)
  };

  explicit GPT2Block(const GPT2Config& c)
      : m_ln_1(NormConfig{c.n_embd, c.layer_norm_epsilon}),
        m_attn(AttentionConfig{c.n_embd, c.n_head, true, c.attn_pdrop, c.resid_pdrop}),
        m_ln_2(NormConfig{c.n_embd, c.layer_norm_epsilon}),
        m_fc(LinearConfig{c.n_embd, c.inner(), true}),
        m_act(gelu_kind_from_hf(c.activation_function)),
        m_proj(LinearConfig{c.inner(), c.n_embd, true}),
        m_drop(c.resid_pdrop),
        m_d(c.n_embd),
        m_inner(c.inner()),
        m_act_name(c.activation_function) {}

  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_ln_1.register_params(store, prefix + ".ln_1", rng);
    m_attn.register_params(store, prefix + ".attn", rng);
    m_ln_2.register_params(store, prefix + ".ln_2", rng);
    if (m_mpoe) {
      m_mpoe->register_params(store, prefix + ".mlp.mpoe", rng);
    } else {
      m_fc.register_params(store, prefix + ".mlp.c_fc", rng);
      m_act.register_params(store, prefix + ".mlp.act", rng);
      m_proj.register_params(store, prefix + ".mlp.c_proj", rng);
    }
    m_drop.register_params(store, prefix + ".mlp.dropout", rng);
  }

  /// Replaces the MLP by an MPOE expert bank (experts share the central tensors; GELU and biases as GPT-2's
  /// MLP, so a bank loaded from the pretrained c_fc / c_proj computes the same function). Before
  /// `register_params`.
  void use_mpoe(const MpoeConfig& c) {
    MpoeConfig m = c;
    m.d_model = m_d;
    m.d_ff = m_inner;
    m.activation = m_act_name;
    m.bias = true;
    m_mpoe.emplace(m);
  }
  bool has_mpoe() const { return m_mpoe.has_value(); }
  MpoeFfn<T>& mpoe() { return *m_mpoe; }

  /// x: (N, d) -> y: (N, d)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& c) {
    const Index n = x.rows();
    check_shape("GPT2Block", "x", x, -1, m_d);
    check_shape("GPT2Block", "y", y, n, m_d);
    check_no_alias("GPT2Block", x, y);
    c.h1.resize(n, m_d);
    {
      const profile::Scope s("layernorm");
      m_ln_1.forward(x, c.h1, c.ln_1);
    }
    c.xm.resize(n, m_d);
    {
      const profile::Scope s("attention");
      m_attn.forward(c.h1, c.xm, c.attn);
    }
    const profile::Scope s("elementwise");
    c.xm += x;
    c.h2.resize(n, m_d);
    {
      const profile::Scope s2("layernorm");
      m_ln_2.forward(c.xm, c.h2, c.ln_2);
    }
    if (m_mpoe) {
      const profile::Scope s2("mpoe");
      m_mpoe->forward(c.h2, y, c.mpoe);
    } else {
      c.f.resize(n, m_inner);
      m_fc.forward(c.h2, c.f, c.fc);
      // gelu(f) is kept only when c_proj's backward reads it; else it lives in a scratch buffer
      const bool keep = m_proj.backward_needs_input();
      Matrix<T>& g = keep ? c.g : detail::unkept_activation<T, detail::UnkeptSlot::mlp_hidden>();
      if (!keep) c.g.resize(0, 0);
      g.resize(n, m_inner);
      m_act.forward(c.f, g, c.act);
      m_proj.forward(g, y, c.proj);
    }
    m_drop.forward(y, y, c.drop);
    y += c.xm;
  }

  /// Adds every parameter gradient; writes dx.   x: (N, d), dy: (N, d) -> dx: (N, d)
  void backward(ConstMatrixRef<T> x, const Cache& c, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    const Index n = x.rows();
    check_shape("GPT2Block", "x", x, -1, m_d);
    check_shape("GPT2Block", "dy", dy, n, m_d);
    if (dx) check_shape("GPT2Block", "dx", *dx, n, m_d);
    const profile::Scope s("elementwise");
    Matrix<T> dm(n, m_d);
    m_drop.backward(dy, c.drop, dy, dm);
    Matrix<T> dh(n, m_d);
    if (m_mpoe) {
      const profile::Scope s2("mpoe");
      m_mpoe->backward(c.h2, c.mpoe, dm, dh);
    } else {
      Matrix<T> dg(n, m_inner);
      if (c.g.rows() == n)
        m_proj.backward(c.g, c.proj, dm, dg);
      else
        m_proj.backward_without_input(c.proj, dm, dg);
      Matrix<T> df(n, m_inner);
      m_act.backward(c.f, c.act, dg, df);
      m_fc.backward(c.h2, c.fc, df, dh);
    }
    Matrix<T> dxm(n, m_d);
    {
      const profile::Scope s2("layernorm");
      m_ln_2.backward(c.xm, c.ln_2, dh, dxm);
    }
    dxm += dy;
    // without dx and with a frozen ln_1, nothing needs the gradient of ln_1's output: attention's backward
    // skips c_attn's input gradient (PyTorch's autograd skips it too when the block's input needs no grad)
    const bool need_dh = dx || m_ln_1.has_trainable_params();
    {
      const profile::Scope s2("attention");
      m_attn.backward(c.h1, c.attn, dxm, need_dh ? GradOut<T>(dh) : GradOut<T>());
    }
    const profile::Scope s2("layernorm");
    if (!dx) {
      if (need_dh) m_ln_1.backward(x, c.ln_1, dh);
      return;
    }
    m_ln_1.backward(x, c.ln_1, dh, *dx);
    *dx += dxm;
  }

  void set_training(bool on) {
    m_attn.set_training(on);
    if (m_mpoe) m_mpoe->set_training(on);
    m_fc.set_training(on);
    m_proj.set_training(on);
    m_drop.set_training(on);
  }

  LayerNorm<T>& ln_1() { return m_ln_1; }
  LayerNorm<T>& ln_2() { return m_ln_2; }
  CausalSelfAttention<T, LinearSite<T>>& attn() { return m_attn; }
  LinearSite<T>& c_fc() { return m_fc; }
  LinearSite<T>& mlp_c_proj() { return m_proj; }
  Dropout<T>& mlp_dropout() { return m_drop; }

 private:
  LayerNorm<T> m_ln_1;
  CausalSelfAttention<T, LinearSite<T>> m_attn;
  LayerNorm<T> m_ln_2;
  LinearSite<T> m_fc;
  GELU<T> m_act;
  LinearSite<T> m_proj;
  Dropout<T> m_drop;
  Index m_d, m_inner;
  std::string m_act_name;
  std::optional<MpoeFfn<T>> m_mpoe;
};

/**
 * @brief GPT-2 language model (Hugging Face `GPT2LMHeadModel`): token + learned position embeddings,
 * `n_layer` pre-LayerNorm blocks, final LayerNorm, LM head tied to the token embedding.
 *
 * Parameters carry Hugging Face's names (`transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight`,
 * ...; linear weights in pemoe's (out, in) layout, transposed from HF's Conv1D (in, out) on load and back on
 * save). Adapters are injected by `inject` before `register_params`; then only adapter and router parameters
 * are trainable and the backbone has no gradient memory.
 *
 * Loss (`forward` with labels): as Hugging Face, position t predicts label t+1 (the model shifts the labels),
 * −100 is ignored, the loss is the mean over the remaining positions, plus every router's aux loss.
 * Shapes: ids and labels hold B·T values, row-major (B, T); logits (B·T, vocab).
 */
template <class T>
class GPT2 {
 public:
  using Scalar = T;
  /// Activations of one forward call, kept for backward.
  struct Cache {
    Index batch = 0, seq_len = 0;
    std::vector<std::int64_t> ids, positions, targets;  ///< (B·T) each; targets = labels shifted left
    typename Embedding<T>::Cache wte, wpe;
    typename Dropout<T>::Cache drop;
    std::vector<Matrix<T>> x;  ///< n_layer + 1 residual-stream states (B·T, d); x[0] = embeddings
    std::vector<typename GPT2Block<T>::Cache> blocks;
    typename LayerNorm<T>::Cache ln_f;
    Matrix<T> hf;                       ///< (B·T, d) ln_f(x[L])
    Matrix<T> logits;                   ///< (B·T, vocab); their gradient after `backward_over_logits`
    bool logits_hold_gradient = false;  ///< set by `backward_over_logits`, cleared by `forward`
    typename CrossEntropy<T>::Cache ce;
    double lm_loss = 0.0, aux_loss = 0.0;
  };

  explicit GPT2(const GPT2Config& c)
      : m_config(c),
        m_wte(EmbeddingConfig{c.vocab_size, c.n_embd, 0.02}),
        m_wpe(EmbeddingConfig{c.n_positions, c.n_embd, 0.01}),
        m_drop(c.embd_pdrop),
        m_ln_f(NormConfig{c.n_embd, c.layer_norm_epsilon}) {
    c.validate();
    for (Index i = 0; i < c.n_layer; ++i) m_blocks.emplace_back(c);
  }

  /// Every linear site with its Hugging Face module name, in model order.
  std::vector<std::pair<std::string, LinearSite<T>*>> linear_sites() {
    std::vector<std::pair<std::string, LinearSite<T>*>> v;
    for (Index i = 0; i < m_config.n_layer; ++i) {
      const std::string p = "transformer.h." + std::to_string(i) + ".";
      auto& b = m_blocks[std::size_t(i)];
      v.push_back({p + "attn.c_attn", &b.attn().c_attn()});
      v.push_back({p + "attn.c_proj", &b.attn().c_proj()});
      if (b.has_mpoe()) continue;  // the MLP is an MPOE expert bank
      v.push_back({p + "mlp.c_fc", &b.c_fc()});
      v.push_back({p + "mlp.c_proj", &b.mlp_c_proj()});
    }
    return v;
  }

  /**
   * @brief Puts `spec`'s adapter on every linear site `targets` selects (PEFT semantics) and returns their
   * names. `experts_per_layer`, when given, sets E of MoE adapters per layer index (MoLA's allocations).
   * `feedforward` names the sites where IA3 scales the input (PEFT `feedforward_modules`, default the MLP's
   * c_proj). Call before `register_params`; `ConfigError` when nothing matches (almost always a typo).
   */
  std::vector<std::string> inject(const AdapterSpec& spec, const TargetModules& targets,
                                  const std::vector<Index>& experts_per_layer = {},
                                  const TargetModules& feedforward = default_feedforward()) {
    PEMOE_CHECK_CONFIG(m_store == nullptr, "GPT2: inject adapters before register_params()");
    PEMOE_CHECK_CONFIG(experts_per_layer.empty() || Index(experts_per_layer.size()) == m_config.n_layer,
                       "GPT2: experts_per_layer has ", experts_per_layer.size(), " entries, the model has ",
                       m_config.n_layer, " layers");
    std::vector<std::string> hit;
    for (auto& [name, site] : linear_sites()) {
      if (!targets.matches(name)) continue;
      AdapterSpec s = spec;
      s.ia3.feedforward = feedforward.matches(name);
      const long layer = targets.layer_index(name);
      if (!experts_per_layer.empty() && layer >= 0) {
        s.experts.n_experts = experts_per_layer[std::size_t(layer)];
        s.mov.n_experts = experts_per_layer[std::size_t(layer)];
      }
      site->set_adapter(s);
      hit.push_back(name);
    }
    PEMOE_CHECK_CONFIG(!hit.empty(), "GPT2: the target modules match none of the ", linear_sites().size(),
                       " linear sites (names look like 'transformer.h.0.attn.c_attn', 'mlp.c_fc')");
    m_adapted = spec.kind != AdapterKind::none;
    return hit;
  }
  /**
   * @brief Replaces the MLP of the layers `layers` selects (all when empty) by MPOE expert banks (Gao et al.
   * 2022): experts share the MPO central tensors of c_fc and c_proj and own the auxiliary tensors, routed
   * Switch top-1. `load_gpt2_weights` then decomposes the pretrained c_fc / c_proj into every expert, so
   * the model starts as the pretrained one. Bank parameters train (use `GradientMask` on the central
   * tensors, as MPOE does); the rest of the backbone is frozen. Before `register_params`.
   */
  void use_mpoe(const MpoeConfig& config, const std::vector<Index>& layers = {}) {
    PEMOE_CHECK_CONFIG(m_store == nullptr, "GPT2: use_mpoe before register_params()");
    for (Index i = 0; i < m_config.n_layer; ++i)
      if (layers.empty() || std::find(layers.begin(), layers.end(), i) != layers.end())
        m_blocks[std::size_t(i)].use_mpoe(config);
    m_adapted = true;
  }

  /// PEFT's default IA3 feed-forward modules for GPT-2: the MLP's output projection.
  static TargetModules default_feedforward() {
    TargetModules t;
    t.names = {"mlp.c_proj"};
    return t;
  }

  /// Declares every parameter under its Hugging Face name and initialises it (GPT-2's N(0, 0.02)); with
  /// adapters, freezes everything but the adapters and routers.
  void register_params(ParamStore<T>& store, Rng& rng) {
    if (!store.declaring_only() && store.size() == 0) {  // size the arenas once (peak memory = the model)
      auto plan = ParamStore<T>::declaration_only();
      GPT2 copy = *this;
      Rng r = rng;
      copy.register_params(plan, r);
      store.reserve(plan.num_values(), plan.num_trainable());
    }
    m_store = &store;
    if (m_adapted) store.set_frozen_filter([](const std::string& n) { return is_backbone(n); });
    m_wte.register_params(store, "transformer.wte", rng);
    m_wpe.register_params(store, "transformer.wpe", rng);
    m_drop.register_params(store, "transformer.drop", rng);
    for (Index i = 0; i < m_config.n_layer; ++i)
      m_blocks[std::size_t(i)].register_params(store, "transformer.h." + std::to_string(i), rng);
    m_ln_f.register_params(store, "transformer.ln_f", rng);
    if (!store.declaring_only()) init_like_hf(store, rng);
    store.set_frozen_filter({});
  }

  /// PEFT's `task_type` of this model's adapters.
  static constexpr const char* kPeftTaskType = "CAUSAL_LM";
  /// PEFT's `fan_in_fan_out` (GPT-2's linears are Conv1D, (in, out)).
  static constexpr bool kPeftFanInFanOut = true;
  /// Whether a parameter belongs to the pretrained backbone (not to an adapter or a router).
  static bool is_backbone(const std::string& name) {
    for (const char* key : {".lora_A.", ".lora_B.", ".ia3_l", ".mov_scaling", ".router.", ".mpoe."})
      if (name.find(key) != std::string::npos) return false;
    return true;
  }

  /**
   * @brief Sets the batch layout (B sequences of T tokens) and the padding mask (B·T values of 0/1, 1 =
   * token; empty = none) of the next forward calls: the attention ignores padded keys and every router
   * leaves padded tokens out of its aux statistics.
   */
  void set_batch(Index batch, Index seq_len, std::vector<std::int64_t> attention_mask = {}) {
    PEMOE_CHECK_SHAPE(seq_len <= m_config.n_positions, "GPT2: T = ", seq_len,
                      " exceeds n_positions = ", m_config.n_positions);
    std::vector<std::uint8_t> tokens;
    for (auto v : attention_mask) tokens.push_back(v != 0 ? 1 : 0);
    for (auto& b : m_blocks) b.attn().set_batch(batch, seq_len, attention_mask);
    for (auto& [name, r] : routers()) r->set_token_mask(tokens);
    m_batch = batch;
    m_seq_len = seq_len;
  }

  /**
   * @brief Forward over ids (B·T) with the layout of `set_batch`; with labels (B·T, −100 = ignored) returns
   * the loss (mean next-token cross-entropy + aux losses), else 0. Logits stay in `cache.logits`.
   */
  double forward(const std::vector<std::int64_t>& ids, const std::vector<std::int64_t>& labels, Cache& c) {
    PEMOE_CHECK_CONFIG(m_store != nullptr, "GPT2: call register_params() before forward");
    PEMOE_CHECK_CONFIG(m_batch > 0, "GPT2: call set_batch(B, T) before forward");
    const Index B = m_batch, S = m_seq_len, n = B * S, d = m_config.n_embd, L = m_config.n_layer;
    PEMOE_CHECK_SHAPE(Index(ids.size()) == n, "GPT2: ", ids.size(), " input ids, set_batch(", B, ", ", S,
                      ") expects B·T = ", n);
    PEMOE_CHECK_SHAPE(labels.empty() || Index(labels.size()) == n, "GPT2: ", labels.size(),
                      " labels, expected B·T = ", n, " (or none)");
    c.batch = B;
    c.seq_len = S;
    c.ids = ids;
    c.positions.resize(std::size_t(n));
    for (Index i = 0; i < n; ++i) c.positions[std::size_t(i)] = i % S;
    c.x.resize(std::size_t(L + 1));
    for (auto& m : c.x) m.resize(n, d);
    {
      const profile::Scope s("embedding");
      m_wte.forward(c.ids, c.x[0], c.wte);
      Matrix<T> pos(n, d);
      m_wpe.forward(c.positions, pos, c.wpe);
      c.x[0] += pos;
      m_drop.forward(c.x[0], c.x[0], c.drop);
    }
    c.blocks.resize(std::size_t(L));
    for (Index l = 0; l < L; ++l)
      m_blocks[std::size_t(l)].forward(c.x[std::size_t(l)], c.x[std::size_t(l + 1)],
                                       c.blocks[std::size_t(l)]);
    c.hf.resize(n, d);
    {
      const profile::Scope s("layernorm");
      m_ln_f.forward(c.x[std::size_t(L)], c.hf, c.ln_f);
    }
    c.logits.resize(n, m_config.vocab_size);
    m_wte.logits(c.hf, c.logits);
    c.logits_hold_gradient = false;
    c.targets.clear();
    c.lm_loss = c.aux_loss = 0.0;
    if (labels.empty()) return 0.0;
    c.targets.assign(std::size_t(n), m_ce.ignore_index());
    for (Index b = 0; b < B; ++b)
      for (Index t = 0; t + 1 < S; ++t)
        c.targets[std::size_t(b * S + t)] = labels[std::size_t(b * S + t + 1)];
    {
      const profile::Scope s("loss");
      c.lm_loss = m_ce.forward(c.logits, c.targets, c.ce);
    }
    for (Index l = 0; l < L; ++l) c.aux_loss += block_aux(l, c.blocks[std::size_t(l)]);
    return c.lm_loss + c.aux_loss;
  }

  /// Backward of the loss of the last forward: adds every trainable parameter's gradient. `c.logits` is
  /// kept; the gradient of the logits takes a buffer of the same size (see `backward_over_logits`).
  void backward(const Cache& c) {
    Matrix<T> dlogits(c.logits.rows(), c.logits.cols());
    backward_impl(c, dlogits, false);
  }
  /// As `backward`, but the gradient of the logits is written over `c.logits` (the logits are lost): a
  /// training loop that does not read the logits after backward saves B·T·vocab values (51 MB for GPT-2 at
  /// B·T = 256). Same gradients, bit for bit.
  void backward_over_logits(Cache& c) {
    backward_impl(c, c.logits, true);
    c.logits_hold_gradient = true;
  }

  /// Merges every mergeable adapter (LoRA, IA3) into the backbone weights and makes every site a plain
  /// linear again (PEFT `merge_and_unload`); `ConfigError` for MoE adapters and MPOE banks, before anything
  /// is merged. The backbone stays frozen.
  void merge_and_unload() {
    m_pack.require_f32("GPT2", "merge_and_unload");
    for (Index i = 0; i < m_config.n_layer; ++i)
      PEMOE_CHECK_CONFIG(!m_blocks[std::size_t(i)].has_mpoe(), "GPT2: block ", i,
                         "'s MLP is an MPOE expert bank, which routes each token and cannot be merged into a "
                         "weight");
    merge_linear_sites("GPT2", linear_sites());
    m_adapted = false;
    if (m_pack.dtype()) pack_frozen(*m_pack.dtype());  // merged weights changed: pack them anew
  }

  /**
   * @brief Packs every frozen backbone weight once for the fast path (core/weight_pack.hpp): the base
   * weight of each linear site whose weight is frozen, and the tied LM head when the token embedding is
   * frozen. In `PackDtype::bf16` those products take bf16 inputs with f32 accumulation, while adapters,
   * routers, LayerNorm, attention, the loss and the optimizer stay f32.
   *
   * Call after the weights are loaded and the trainable set is final (packs are copies); `merge_and_unload`
   * packs again. Returns the bytes the packs hold. `ConfigError` where packing is unavailable (no oneDNN,
   * bf16 on a CPU without bf16 units: use f32 there), before anything is packed.
   *
   * `release_f32` (bf16 only) makes a bf16-only backbone: each packed weight is kept as one plain bf16
   * copy (`PackLayout::single`, 2 bytes a value instead of the blocked pack's 4 and the f32 weight's 4) and
   * its f32 values are dropped from the store right after it is packed, so the peak holds the f32 backbone
   * plus one bf16 copy, not both backbones. A frozen token embedding goes the same way: its lookup then
   * reads the head's bf16 copy (the bf16-rounded table). The model trains and runs as before; reading,
   * saving or merging those weights is a `ConfigError` until the model is loaded again.
   */
  std::size_t pack_frozen(PackDtype dtype, bool release_f32 = false) {
    return m_pack.pack("GPT2", m_store, pack_targets(), dtype, release_f32);
  }
  /// Drops every pack (products read the weights in the store again).
  void unpack_frozen() { m_pack.unpack("GPT2", pack_targets()); }
  /// The dtype of the packed backbone, if packed.
  std::optional<PackDtype> packed_dtype() const { return m_pack.dtype(); }

  /// Training mode (dropout, router noise) for every layer.
  void set_training(bool on) {
    m_drop.set_training(on);
    for (auto& b : m_blocks) b.set_training(on);
  }
  /// Every router of an injected MoE adapter, with its site name.
  std::vector<std::pair<std::string, Router<T>*>> routers() {
    std::vector<std::pair<std::string, Router<T>*>> v;
    for (auto& [name, site] : linear_sites())
      if (Router<T>* r = site->router()) v.push_back({name, r});
    for (Index i = 0; i < m_config.n_layer; ++i)
      if (m_blocks[std::size_t(i)].has_mpoe())
        v.push_back(
            {"transformer.h." + std::to_string(i) + ".mlp.mpoe", &m_blocks[std::size_t(i)].mpoe().router()});
    return v;
  }
  /**
   * @brief The router caches of the forward call that filled `c`, one per entry of `routers()` and in its
   * order: `routers()[i]` routed the tokens of `router_caches(c)[i]` (its `probs` (B·T, E), `topk_idx`,
   * `valid`). For routing statistics: `expert_load` per layer, the mean routing probability per task.
   */
  std::vector<const typename Router<T>::Cache*> router_caches(const Cache& c) {
    std::vector<const typename Router<T>::Cache*> v;
    PEMOE_CHECK_CONFIG(c.blocks.size() == m_blocks.size(),
                       "GPT2: router_caches needs the cache of a forward call");
    for (Index i = 0; i < m_config.n_layer; ++i) {
      auto& b = m_blocks[std::size_t(i)];
      const auto& bc = c.blocks[std::size_t(i)];
      const std::pair<LinearSite<T>*, const typename LinearSite<T>::Cache*> sites[] = {
          {&b.attn().c_attn(), &bc.attn.c_attn},
          {&b.attn().c_proj(), &bc.attn.c_proj},
          {b.has_mpoe() ? nullptr : &b.c_fc(), &bc.fc},
          {b.has_mpoe() ? nullptr : &b.mlp_c_proj(), &bc.proj}};
      for (const auto& [site, cache] : sites)
        if (site && site->router()) v.push_back(LinearSite<T>::router_cache(*cache));
    }
    for (Index i = 0; i < m_config.n_layer; ++i)
      if (m_blocks[std::size_t(i)].has_mpoe()) v.push_back(&c.blocks[std::size_t(i)].mpoe.router);
    return v;
  }

  /**
   * @brief The model's random state: the call counters of every dropout and router, in a fixed order. With
   * the parameters and the optimizer state, this is what a checkpoint must hold for a bit-identical resume
   * (every mask and every noise draw is a pure function of the seed and these counters).
   */
  std::vector<std::uint64_t> rng_counters() {
    std::vector<std::uint64_t> v;
    for_each_rng([&](auto& r) { v.push_back(r.call_counter()); });
    return v;
  }
  /// Restores `rng_counters()`; `ConfigError` when the count differs (another model or adapter).
  void set_rng_counters(const std::vector<std::uint64_t>& v) {
    std::size_t n = 0;
    for_each_rng([&](auto&) { ++n; });
    PEMOE_CHECK_CONFIG(n == v.size(), "GPT2: ", v.size(), " rng counters given, the model has ", n,
                       " (was the checkpoint saved from another model or adapter?)");
    std::size_t i = 0;
    for_each_rng([&](auto& r) { r.set_call_counter(v[i++]); });
  }

  const GPT2Config& config() const { return m_config; }
  Embedding<T>& wte() { return m_wte; }
  Embedding<T>& wpe() { return m_wpe; }
  LayerNorm<T>& ln_f() { return m_ln_f; }
  GPT2Block<T>& block(Index i) { return m_blocks.at(std::size_t(i)); }
  ParamStore<T>* store() { return m_store; }
  bool adapted() const { return m_adapted; }

 private:
  /// The backward of `backward` / `backward_over_logits`: `dlogits` is a separate buffer, or `c.logits`
  /// itself when `in_place`.
  void backward_impl(const Cache& c, Matrix<T>& dlogits, bool in_place) {
    PEMOE_CHECK_CONFIG(!c.targets.empty(), "GPT2: backward needs a forward with labels");
    PEMOE_CHECK_CONFIG(!c.logits_hold_gradient,
                       "GPT2: backward_over_logits already replaced this cache's logits by their gradient; "
                       "run forward again (or use backward, which keeps the logits)");
    const Index n = c.batch * c.seq_len, d = m_config.n_embd, L = m_config.n_layer;
    {
      const profile::Scope s("loss");
      m_ce.backward(in_place ? dlogits : c.logits, c.targets, c.ce, dlogits);
    }
    Matrix<T> dh(n, d), dx(n, d), dprev(n, d);
    m_wte.logits_backward(c.hf, dlogits, dh);
    {
      const profile::Scope s("layernorm");
      m_ln_f.backward(c.x[std::size_t(L)], c.ln_f, dh, dx);
    }
    // the first block's input gradient feeds only the embeddings: with both frozen it is not computed
    const bool embeddings_train =
        m_store->trainable(m_wte.weight_id()) || m_store->trainable(m_wpe.weight_id());
    for (Index l = L - 1; l >= 0; --l) {
      auto& block = m_blocks[std::size_t(l)];
      if (l == 0 && !embeddings_train) {
        block.backward(c.x[0], c.blocks[0], dx);
        return;
      }
      block.backward(c.x[std::size_t(l)], c.blocks[std::size_t(l)], dx, dprev);
      dx.swap(dprev);
    }
    const profile::Scope s("embedding");
    m_drop.backward(dx, c.drop, dx, dx);
    if (m_store->trainable(m_wte.weight_id())) m_wte.backward(c.ids, c.wte, dx);
    if (m_store->trainable(m_wpe.weight_id())) m_wpe.backward(c.positions, c.wpe, dx);
  }

  template <class F>
  void for_each_rng(F&& f) {
    f(m_drop);
    for (auto& b : m_blocks) {
      f(b.attn().attn_dropout());
      f(b.attn().resid_dropout());
      f(b.mlp_dropout());
    }
    for (auto& [name, site] : linear_sites())
      if (Dropout<T>* d = site->dropout()) f(*d);
    for (auto& [name, r] : routers()) f(*r);
  }
  double block_aux(Index l, const typename GPT2Block<T>::Cache& c) {
    auto& b = m_blocks[std::size_t(l)];
    const double mlp =
        b.has_mpoe() ? b.mpoe().aux_loss(c.mpoe) : b.c_fc().aux_loss(c.fc) + b.mlp_c_proj().aux_loss(c.proj);
    return b.attn().c_attn().aux_loss(c.attn.c_attn) + b.attn().c_proj().aux_loss(c.attn.c_proj) + mlp;
  }
  // Hugging Face's `_init_weights`: N(0, 0.02) for linear and embedding weights, zero biases, LayerNorm
  // ones/zeros, and c_proj weights N(0, 0.02/√(2·n_layer)) (the residual scaling of GPT-2).
  void init_like_hf(ParamStore<T>& store, Rng& rng) {
    const double proj_std = 0.02 / std::sqrt(2.0 * double(m_config.n_layer));
    for (auto& [name, site] : linear_sites()) {
      const ParamId w = store.id(name + ".weight");
      const bool proj = name.size() >= 6 && name.compare(name.size() - 6, 6, "c_proj") == 0;
      rng.split(name + ".weight.init")
          .fill_normal(store.value(w), store.entry(w).size, 0.0, proj ? proj_std : 0.02);
      const ParamId b = store.id(name + ".bias");
      std::fill(store.value(b), store.value(b) + store.entry(b).size, T(0));
    }
    rng.split("transformer.wpe.weight.init")
        .fill_normal(store.value(m_wpe.weight_id()), store.entry(m_wpe.weight_id()).size, 0.0, 0.02);
  }

  // What pack_frozen may pack: the base linear of every linear site and the tied head's table.
  typename BackbonePack<T>::Weights pack_targets() {
    typename BackbonePack<T>::Weights w;
    for (auto& [name, site] : linear_sites())
      if (Linear<T>* base = site->base_linear()) w.linears.push_back(base);
    w.tied_head = &m_wte;
    return w;
  }

  GPT2Config m_config;
  Embedding<T> m_wte, m_wpe;
  Dropout<T> m_drop;
  std::vector<GPT2Block<T>> m_blocks;
  LayerNorm<T> m_ln_f;
  CrossEntropy<T> m_ce;
  ParamStore<T>* m_store = nullptr;
  Index m_batch = 0, m_seq_len = 0;
  bool m_adapted = false;
  BackbonePack<T> m_pack;
};

}  // namespace pemoe

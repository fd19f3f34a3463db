/// @file linear_site.hpp
/// @brief `LinearSite`: one linear layer of a model that holds either the plain `Linear` or any adapter
/// wrapped around it (LoRA, IA3, MoV, MoLoRA, sparse top-k), chosen at run time by adapter injection.
#pragma once

#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "pemoe/adapters/ia3.hpp"
#include "pemoe/adapters/lora.hpp"
#include "pemoe/adapters/molora.hpp"
#include "pemoe/adapters/mov.hpp"
#include "pemoe/adapters/sparse_lora.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/layer.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/profile.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/moe/router.hpp"
#include "pemoe/nn/linear.hpp"

namespace pemoe {

/// Which adapter a linear site carries.
enum class AdapterKind {
  none,    ///< the plain linear (trainable or frozen)
  lora,    ///< `LoRA`
  ia3,     ///< `IA3` (output scaling, or input scaling for feed-forward modules)
  mov,     ///< `MoV` on the linear's output
  molora,  ///< `MoLoRA` (soft mixture of LoRA experts)
  sparse,  ///< `SparseLoRAExperts` (top-k mixture, MoLA)
};

/// "none", "lora", "ia3", "mov", "molora", "sparse".
inline const char* adapter_kind_name(AdapterKind k) {
  switch (k) {
    case AdapterKind::none:
      return "none";
    case AdapterKind::lora:
      return "lora";
    case AdapterKind::ia3:
      return "ia3";
    case AdapterKind::mov:
      return "mov";
    case AdapterKind::molora:
      return "molora";
    case AdapterKind::sparse:
      return "sparse";
  }
  return "?";
}
/// The kind called `name`; `ConfigError` listing the allowed names otherwise.
inline AdapterKind parse_adapter_kind(const std::string& name) {
  for (AdapterKind k : {AdapterKind::none, AdapterKind::lora, AdapterKind::ia3, AdapterKind::mov,
                        AdapterKind::molora, AdapterKind::sparse})
    if (name == adapter_kind_name(k)) return k;
  throw ConfigError("adapter: unknown kind '" + name + "'; allowed: none, lora, ia3, mov, molora, sparse");
}

/// The adapter to put on a site and its options (only the member of its kind is read).
struct AdapterSpec {
  AdapterKind kind = AdapterKind::none;
  LoraConfig lora;            ///< kind lora
  IA3Config ia3;              ///< kind ia3 (`feedforward` is set per site by the injector)
  MoVConfig mov;              ///< kind mov
  LoraExpertsConfig experts;  ///< kinds molora and sparse (E per site may be overridden, e.g. MoLA ▽)
};

/**
 * @brief A model's linear layer at one site (`transformer.h.0.attn.c_attn`), holding the plain `Linear` or
 * an adapter around it. It follows the layer contract itself and forwards every call to what it holds.
 *
 * Every adapter registers the base weight under the site's own prefix (`<site>.weight`, `<site>.bias`),
 * so pretrained weights load by their Hugging Face names whatever the adapter. Adapters are built frozen
 * around the base unless their config says otherwise.
 */
template <class T>
class LinearSite {
 public:
  using Scalar = T;
  using Layer = std::variant<Linear<T>, LoRA<T>, IA3<T>, MoV<T>, MoLoRA<T>, SparseLoRAExperts<T>>;
  /// The cache of whichever layer the site holds.
  using Cache =
      std::variant<typename Linear<T>::Cache, typename LoRA<T>::Cache, typename IA3<T>::Cache,
                   typename MoV<T>::Cache, typename MoLoRA<T>::Cache, typename SparseLoRAExperts<T>::Cache>;

  /// A plain linear.
  explicit LinearSite(const LinearConfig& base = {}) : m_base(base), m_layer(Linear<T>(base)) {}

  /// Replaces what the site holds by `spec`'s adapter around a linear of the same shape (before
  /// `register_params`).
  void set_adapter(const AdapterSpec& spec) {
    PEMOE_CHECK_CONFIG(!m_registered, "LinearSite '", m_name, "': set the adapter before register_params()");
    m_kind = spec.kind;
    switch (spec.kind) {
      case AdapterKind::none:
        m_layer.template emplace<Linear<T>>(m_base);
        break;
      case AdapterKind::lora:
        m_layer.template emplace<LoRA<T>>(m_base, spec.lora);
        break;
      case AdapterKind::ia3:
        m_layer.template emplace<IA3<T>>(m_base, spec.ia3);
        break;
      case AdapterKind::mov:
        m_layer.template emplace<MoV<T>>(m_base, spec.mov);
        break;
      case AdapterKind::molora:
        m_layer.template emplace<MoLoRA<T>>(m_base, spec.experts);
        break;
      case AdapterKind::sparse:
        m_layer.template emplace<SparseLoRAExperts<T>>(m_base, spec.experts);
        break;
    }
  }

  void register_params(ParamStore<T>& store, const std::string& prefix, Rng& rng) {
    m_name = prefix;
    m_registered = true;
    std::visit([&](auto& l) { l.register_params(store, prefix, rng); }, m_layer);
  }

  /// x: (N, d_in) -> y: (N, d_out)
  void forward(ConstMatrixRef<T> x, MatrixRef<T> y, Cache& cache) {
    const profile::Scope scope(m_kind == AdapterKind::none ? "linear" : "adapter");
    std::visit(
        [&](auto& l) {
          using L = std::decay_t<decltype(l)>;
          using C = typename L::Cache;
          if (!std::holds_alternative<C>(cache)) cache.template emplace<C>();
          l.forward(x, y, std::get<C>(cache));
        },
        m_layer);
  }

  /// x: (N, d_in), dy: (N, d_out) -> dx: (N, d_in)
  void backward(ConstMatrixRef<T> x, const Cache& cache, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    const profile::Scope scope(m_kind == AdapterKind::none ? "linear" : "adapter");
    std::visit(
        [&](auto& l) {
          using C = typename std::decay_t<decltype(l)>::Cache;
          PEMOE_CHECK(std::holds_alternative<C>(cache), "LinearSite '", m_name,
                      "': backward with a cache from another layer (did forward run on this site?)");
          l.backward(x, std::get<C>(cache), dy, dx);
        },
        m_layer);
  }

  /// Whether `backward` reads the input x: always with an adapter, and for a plain linear only when its
  /// weight trains (see `Linear::backward_needs_input`).
  bool backward_needs_input() const {
    const auto* l = std::get_if<Linear<T>>(&m_layer);
    return l == nullptr || l->backward_needs_input();
  }
  /// `backward` of a site whose input was not kept (`backward_needs_input()` false): a plain linear with a
  /// frozen weight. `ConfigError` otherwise.   dy: (N, d_out) -> dx: (N, d_in)
  void backward_without_input(const Cache& cache, ConstMatrixRef<T> dy, GradOut<T> dx = std::nullopt) {
    const profile::Scope scope("linear");
    auto* l = std::get_if<Linear<T>>(&m_layer);
    PEMOE_CHECK_CONFIG(l != nullptr, "LinearSite '", m_name, "': a ", adapter_kind_name(m_kind),
                       " adapter's backward needs the forward's input x");
    const auto* c = std::get_if<typename Linear<T>::Cache>(&cache);
    PEMOE_CHECK(c != nullptr, "LinearSite '", m_name,
                "': backward with a cache from another layer (did forward run on this site?)");
    l->backward_without_input(*c, dy, dx);
  }

  void set_training(bool on) {
    std::visit([&](auto& l) { l.set_training(on); }, m_layer);
  }

  /**
   * @brief Folds a mergeable adapter into the base weight and makes the site a plain `Linear` again (PEFT's
   * `merge_and_unload`): LoRA W += s·B·A; IA3 on the output W ← diag(l)·W, b ← l ⊙ b; IA3 on the input
   * (feed-forward) W ← W·diag(l). The adapter's tensors stay in the store, unused (a saved backbone does not
   * include them). MoE adapters depend on the input through their router and cannot be merged: `ConfigError`.
   */
  void merge_and_unload() {
    if (m_kind == AdapterKind::none) return;
    PEMOE_CHECK(m_registered, "LinearSite '", m_name, "': merge_and_unload() before register_params()");
    ParamStore<T>* store = nullptr;
    if (auto* l = std::get_if<LoRA<T>>(&m_layer)) {
      if (!l->merged()) l->merge();
      store = l->base().store();
    } else if (auto* a = std::get_if<IA3<T>>(&m_layer)) {
      auto W = a->base().weight();
      const auto l = a->scale().row(0).transpose();
      if (a->config().feedforward) {
        W = W * l.asDiagonal();
      } else {
        W = l.asDiagonal() * W;
        if (m_base.bias) a->base().bias().row(0).array() *= l.transpose().array();
      }
      store = a->base().store();
    } else {
      throw ConfigError(std::string("LinearSite '") + m_name + "': a " + adapter_kind_name(m_kind) +
                        " adapter routes each token by its input and cannot be merged into the weight");
    }
    LinearConfig c = m_base;
    c.trainable = false;
    Linear<T> plain(c);
    plain.bind(*store, m_name);
    m_layer = std::move(plain);
    m_kind = AdapterKind::none;
  }

  /// The base `Linear` of the site (the plain linear itself, or the frozen linear an adapter wraps), or
  /// nullptr for an adapter without one (a standalone IA3 or MoV).
  Linear<T>* base_linear() {
    return std::visit(
        [](auto& l) -> Linear<T>* {
          using L = std::decay_t<decltype(l)>;
          if constexpr (std::is_same_v<L, Linear<T>>)
            return &l;
          else if constexpr (std::is_same_v<L, IA3<T>> || std::is_same_v<L, MoV<T>>)
            return l.has_base() ? &l.base() : nullptr;
          else
            return &l.base();
        },
        m_layer);
  }

  /// The router of a MoE adapter (MoV, MoLoRA, sparse), or nullptr.
  Router<T>* router() {
    return std::visit(
        [](auto& l) -> Router<T>* {
          using L = std::decay_t<decltype(l)>;
          if constexpr (std::is_same_v<L, MoV<T>> || std::is_same_v<L, MoLoRA<T>> ||
                        std::is_same_v<L, SparseLoRAExperts<T>>)
            return &l.router();
          else
            return nullptr;
        },
        m_layer);
  }
  /// The router's cache inside a site's cache (MoV, MoLoRA, sparse), or nullptr (for expert-load metrics).
  static const typename Router<T>::Cache* router_cache(const Cache& cache) {
    return std::visit(
        [](const auto& c) -> const typename Router<T>::Cache* {
          using C = std::decay_t<decltype(c)>;
          if constexpr (std::is_same_v<C, typename MoV<T>::Cache> ||
                        std::is_same_v<C, typename MoLoRA<T>::Cache> ||
                        std::is_same_v<C, typename SparseLoRAExperts<T>::Cache>)
            return &c.router;
          else
            return nullptr;
        },
        cache);
  }

  /// The aux loss of the last forward (0 without a router).
  double aux_loss(const Cache& cache) const {
    return std::visit(
        [&](const auto& l) -> double {
          using L = std::decay_t<decltype(l)>;
          if constexpr (std::is_same_v<L, MoV<T>> || std::is_same_v<L, MoLoRA<T>> ||
                        std::is_same_v<L, SparseLoRAExperts<T>>) {
            using C = typename L::Cache;
            return std::holds_alternative<C>(cache) ? l.aux_loss(std::get<C>(cache)) : 0.0;
          } else {
            return 0.0;
          }
        },
        m_layer);
  }
  /// The dropout of a LoRA-type adapter (its rng call counter is training state), or nullptr.
  Dropout<T>* dropout() {
    return std::visit(
        [](auto& l) -> Dropout<T>* {
          using L = std::decay_t<decltype(l)>;
          if constexpr (std::is_same_v<L, LoRA<T>> || std::is_same_v<L, MoLoRA<T>> ||
                        std::is_same_v<L, SparseLoRAExperts<T>>)
            return &l.dropout();
          else
            return nullptr;
        },
        m_layer);
  }

  AdapterKind kind() const { return m_kind; }
  /// Whether `merge_and_unload` can fold this site's adapter into its weight (none, LoRA, IA3); MoE adapters
  /// route each token by its input and cannot be merged.
  bool mergeable() const {
    return m_kind == AdapterKind::none || m_kind == AdapterKind::lora || m_kind == AdapterKind::ia3;
  }
  const LinearConfig& base_config() const { return m_base; }
  const std::string& name() const { return m_name; }
  Layer& layer() { return m_layer; }
  const Layer& layer() const { return m_layer; }

 private:
  LinearConfig m_base;
  Layer m_layer;
  AdapterKind m_kind = AdapterKind::none;
  std::string m_name;
  bool m_registered = false;
};

/// PEFT's `merge_and_unload` over a model's linear sites (`linear_sites()`: name, site): every site is
/// checked first, so a `ConfigError` (an MoE adapter, which routes each token by its input) leaves every site
/// as it was; then LoRA and IA3 fold into their weights. `model` names the model in the message.
template <class Sites>
void merge_linear_sites(const std::string& model, const Sites& sites) {
  for (const auto& [name, site] : sites)
    PEMOE_CHECK_CONFIG(site->mergeable(), model, ": the ", adapter_kind_name(site->kind()), " adapter at '",
                       name, "' routes each token by its input and cannot be merged into the weight");
  for (const auto& [name, site] : sites) site->merge_and_unload();
}

}  // namespace pemoe

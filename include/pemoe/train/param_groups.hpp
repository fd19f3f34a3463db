/// @file param_groups.hpp
/// @brief Parameter groups: per-parameter learning-rate scale and weight decay chosen by name, for every
/// optimizer (no decay on biases and norms, a separate learning rate for routers, ...).
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace pemoe {

/// What a group changes for its parameters.
struct GroupOptions {
  double lr_scale = 1.0;       ///< the parameter's learning rate is the optimizer's times this
  double weight_decay = -1.0;  ///< decay for the group; negative = the optimizer's own
};

/**
 * @brief An ordered list of (name, predicate on the parameter name, options); a parameter belongs to the
 * first group whose predicate accepts it, otherwise to the default group (options {1, optimizer's decay}).
 *
 * `standard()` is what Hugging Face's `Trainer` does for AdamW (no weight decay on biases and
 * LayerNorm/RMSNorm weights), plus a learning-rate scale for router weights (`.router.` in the name), as
 * MoE recipes use.
 */
class ParamGroups {
 public:
  using Match = std::function<bool(const std::string&)>;

  /// Appends a group (earlier groups win).
  ParamGroups& add(std::string name, Match match, GroupOptions options) {
    m_groups.push_back({std::move(name), std::move(match), options});
    return *this;
  }

  /// The options of the parameter called `param`.
  GroupOptions options_for(const std::string& param) const {
    for (const auto& g : m_groups)
      if (g.match(param)) return g.options;
    return {};
  }
  /// The name of the group of `param` ("default" when none matches).
  std::string group_of(const std::string& param) const {
    for (const auto& g : m_groups)
      if (g.match(param)) return g.name;
    return "default";
  }

  /// Routers (".router." in the name) at `router_lr_scale` times the rate, biases and norm weights without
  /// weight decay (names ending in ".bias", or whose last module is a norm: "ln_", "layer_norm", "LayerNorm",
  /// "layernorm", "rms_norm", "final_layer_norm").
  static ParamGroups standard(double router_lr_scale = 1.0) {
    ParamGroups g;
    g.add("router", [](const std::string& n) { return n.find(".router.") != std::string::npos; },
          {router_lr_scale, -1.0});
    g.add("no_decay", [](const std::string& n) { return is_bias_or_norm(n); }, {1.0, 0.0});
    return g;
  }

  /// Whether a parameter name is a bias or the weight of a normalisation layer.
  static bool is_bias_or_norm(const std::string& n) {
    auto ends_with = [&](const char* s) {
      const std::string t(s);
      return n.size() >= t.size() && n.compare(n.size() - t.size(), t.size(), t) == 0;
    };
    if (ends_with(".bias")) return true;
    const std::size_t last = n.rfind('.');
    const std::size_t prev = last == std::string::npos ? std::string::npos : n.rfind('.', last - 1);
    const std::string module = n.substr(prev == std::string::npos ? 0 : prev + 1,
                                        last == std::string::npos ? std::string::npos : last - prev - 1);
    for (const char* key : {"ln_", "layer_norm", "LayerNorm", "layernorm", "rms_norm", "norm"})
      if (module.find(key) != std::string::npos) return true;
    return false;
  }

 private:
  struct Group {
    std::string name;
    Match match;
    GroupOptions options;
  };
  std::vector<Group> m_groups;
};

}  // namespace pemoe

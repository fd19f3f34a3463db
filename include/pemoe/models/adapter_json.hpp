/// @file adapter_json.hpp
/// @brief Adapter options to and from JSON: the fields of pemoe's MoE adapter directories (an extension of
/// PEFT's `adapter_config.json`) and of `pemoe train` configs. Unknown keys and bad values are `ConfigError`s
/// naming the key and the allowed values.
#pragma once

#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/models/linear_site.hpp"

namespace pemoe {

namespace detail {

template <class E>
const char* enum_name(E v, std::initializer_list<std::pair<E, const char*>> names) {
  for (const auto& [e, n] : names)
    if (e == v) return n;
  return "?";
}
template <class E>
E enum_parse(const std::string& key, const std::string& s,
             std::initializer_list<std::pair<E, const char*>> names) {
  std::string allowed;
  for (const auto& [e, n] : names) {
    if (s == n) return e;
    allowed += (allowed.empty() ? "" : ", ") + std::string(n);
  }
  throw ConfigError("adapter config: '" + key + "' is \"" + s + "\"; allowed: " + allowed);
}
inline const std::initializer_list<std::pair<GateMode, const char*>>& gate_names() {
  static const std::initializer_list<std::pair<GateMode, const char*>> n = {
      {GateMode::soft, "soft"},
      {GateMode::topk_mask, "topk_mask"},
      {GateMode::topk_renorm, "topk_renorm"},
      {GateMode::noisy_topk, "noisy_topk"},
      {GateMode::switch_top1, "switch_top1"}};
  return n;
}
inline const std::initializer_list<std::pair<RouterInit, const char*>>& init_names() {
  static const std::initializer_list<std::pair<RouterInit, const char*>> n = {
      {RouterInit::normal, "normal"},
      {RouterInit::kaiming_uniform, "kaiming_uniform"},
      {RouterInit::zeros, "zeros"}};
  return n;
}
inline const std::initializer_list<std::pair<BalanceNorm, const char*>>& norm_names() {
  static const std::initializer_list<std::pair<BalanceNorm, const char*>> n = {
      {BalanceNorm::per_assignment, "per_assignment"},
      {BalanceNorm::per_token_slot, "per_token_slot"},
      {BalanceNorm::forai_constant, "forai_constant"}};
  return n;
}
inline const std::initializer_list<std::pair<RouterInput, const char*>>& input_names() {
  static const std::initializer_list<std::pair<RouterInput, const char*>> n = {
      {RouterInput::activation, "activation"},
      {RouterInput::layer_input, "layer_input"},
      {RouterInput::external, "external"}};
  return n;
}
inline const std::initializer_list<std::pair<LoraInit, const char*>>& lora_init_names() {
  static const std::initializer_list<std::pair<LoraInit, const char*>> n = {{LoraInit::peft, "peft"},
                                                                            {LoraInit::gaussian, "gaussian"}};
  return n;
}

/// Throws `ConfigError` naming the first key of `j` not in `allowed`.
inline void check_keys(const nlohmann::json& j, const std::string& where,
                       std::initializer_list<const char*> allowed) {
  for (const auto& [k, v] : j.items()) {
    bool ok = false;
    std::string list;
    for (const char* a : allowed) {
      ok = ok || k == a;
      list += (list.empty() ? "" : ", ") + std::string(a);
    }
    PEMOE_CHECK_CONFIG(ok, where, ": unknown key '", k, "'; allowed: ", list);
  }
}

}  // namespace detail

/// The router's options as JSON (gate_mode, top_k, init, init_std, bias, jitter, aux coefficients).
inline nlohmann::json router_to_json(const RouterConfig& c) {
  return {{"gate_mode", detail::enum_name(c.mode, detail::gate_names())},
          {"top_k", c.top_k},
          {"init", detail::enum_name(c.init, detail::init_names())},
          {"init_std", c.init_std},
          {"bias", c.bias},
          {"jitter", c.jitter},
          {"straight_through", c.straight_through},
          {"balance_group", c.balance_group},
          {"aux",
           {{"balance_coef", c.aux.balance_coef},
            {"balance_norm", detail::enum_name(c.aux.balance_norm, detail::norm_names())},
            {"z_coef", c.aux.z_coef},
            {"importance_coef", c.aux.importance_coef},
            {"load_coef", c.aux.load_coef}}}};
}
/// Reads `router_to_json`'s fields (all optional) into `c`.
inline void router_from_json(const nlohmann::json& j, RouterConfig& c) {
  detail::check_keys(j, "router",
                     {"gate_mode", "top_k", "init", "init_std", "bias", "jitter", "straight_through",
                      "balance_group", "aux"});
  if (j.contains("gate_mode"))
    c.mode = detail::enum_parse("router.gate_mode", j["gate_mode"].get<std::string>(), detail::gate_names());
  if (j.contains("top_k")) c.top_k = j["top_k"].get<Index>();
  if (j.contains("init"))
    c.init = detail::enum_parse("router.init", j["init"].get<std::string>(), detail::init_names());
  if (j.contains("init_std")) c.init_std = j["init_std"].get<double>();
  if (j.contains("bias")) c.bias = j["bias"].get<bool>();
  if (j.contains("jitter")) c.jitter = j["jitter"].get<double>();
  if (j.contains("straight_through")) c.straight_through = j["straight_through"].get<bool>();
  if (j.contains("balance_group")) c.balance_group = j["balance_group"].get<std::string>();
  if (j.contains("aux")) {
    const auto& a = j["aux"];
    detail::check_keys(a, "router.aux",
                       {"balance_coef", "balance_norm", "z_coef", "importance_coef", "load_coef"});
    if (a.contains("balance_coef")) c.aux.balance_coef = a["balance_coef"].get<double>();
    if (a.contains("balance_norm"))
      c.aux.balance_norm = detail::enum_parse("router.aux.balance_norm", a["balance_norm"].get<std::string>(),
                                              detail::norm_names());
    if (a.contains("z_coef")) c.aux.z_coef = a["z_coef"].get<double>();
    if (a.contains("importance_coef")) c.aux.importance_coef = a["importance_coef"].get<double>();
    if (a.contains("load_coef")) c.aux.load_coef = a["load_coef"].get<double>();
  }
}

/// The MoE fields of an adapter spec (kinds mov, molora, sparse) as JSON.
inline nlohmann::json moe_spec_to_json(const AdapterSpec& s) {
  nlohmann::json j;
  j["pemoe_adapter"] = adapter_kind_name(s.kind);
  if (s.kind == AdapterKind::mov) {
    j["num_experts"] = s.mov.n_experts;
    j["heads"] = s.mov.heads;
    j["router_input"] = detail::enum_name(s.mov.router_input, detail::input_names());
    j["router"] = router_to_json(s.mov.router);
  } else {
    j["num_experts"] = s.experts.n_experts;
    j["r"] = s.experts.r;
    j["lora_alpha"] = s.experts.alpha;
    j["lora_dropout"] = s.experts.dropout;
    j["init"] = detail::enum_name(s.experts.init, detail::lora_init_names());
    j["init_std"] = s.experts.init_std;
    j["router_input"] = detail::enum_name(s.experts.router_input, detail::input_names());
    j["router"] = router_to_json(s.experts.router);
  }
  return j;
}
/// Reads `moe_spec_to_json`'s fields into `s` (kind from "pemoe_adapter").
inline void moe_spec_from_json(const nlohmann::json& j, AdapterSpec& s) {
  s.kind = parse_adapter_kind(j.at("pemoe_adapter").get<std::string>());
  PEMOE_CHECK_CONFIG(
      s.kind == AdapterKind::mov || s.kind == AdapterKind::molora || s.kind == AdapterKind::sparse,
      "adapter config: pemoe_adapter must be mov, molora or sparse for a MoE adapter");
  if (s.kind == AdapterKind::mov) {
    s.mov.n_experts = j.value("num_experts", s.mov.n_experts);
    s.mov.heads = j.value("heads", s.mov.heads);
    if (j.contains("router_input"))
      s.mov.router_input =
          detail::enum_parse("router_input", j["router_input"].get<std::string>(), detail::input_names());
    if (j.contains("router")) router_from_json(j["router"], s.mov.router);
  } else {
    s.experts.n_experts = j.value("num_experts", s.experts.n_experts);
    s.experts.r = j.value("r", s.experts.r);
    s.experts.alpha = j.value("lora_alpha", s.experts.alpha);
    s.experts.dropout = j.value("lora_dropout", s.experts.dropout);
    if (j.contains("init"))
      s.experts.init = detail::enum_parse("init", j["init"].get<std::string>(), detail::lora_init_names());
    s.experts.init_std = j.value("init_std", s.experts.init_std);
    if (j.contains("router_input"))
      s.experts.router_input =
          detail::enum_parse("router_input", j["router_input"].get<std::string>(), detail::input_names());
    if (j.contains("router")) router_from_json(j["router"], s.experts.router);
  }
}

}  // namespace pemoe

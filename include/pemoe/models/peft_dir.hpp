/// @file peft_dir.hpp
/// @brief PEFT adapter directories (`adapter_config.json` + `adapter_model.safetensors`) for any pemoe model
/// with a `ParamStore` and PEFT-named sites (GPT-2, T5): LoRA and (IA)³ as PEFT writes them, pemoe's MoE
/// adapters as a documented extension of the same layout; and the JSON file helpers of the HF directories.
#pragma once

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/io/safetensors.hpp"
#include "pemoe/models/adapter_json.hpp"
#include "pemoe/models/linear_site.hpp"
#include "pemoe/models/target_modules.hpp"

namespace pemoe {

namespace detail {

inline nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  PEMOE_CHECK_AS(IoError, static_cast<bool>(in), "cannot open '", path, "'");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw IoError("'" + path + "' is not valid JSON: " + e.what());
  }
}
inline void write_json_file(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  PEMOE_CHECK_AS(IoError, static_cast<bool>(out), "cannot open '", path, "' for writing");
  out << j.dump(2) << "\n";
  PEMOE_CHECK_AS(IoError, static_cast<bool>(out), "could not write '", path, "'");
}

}  // namespace detail

/// Dtypes of the tensors a checkpoint was loaded from (to save it back the same way).
using TensorDtypes = std::map<std::string, Dtype>;

/// A PEFT adapter's configuration as pemoe reads it.
struct PeftAdapterConfig {
  AdapterSpec spec;           ///< kind lora or ia3 (PEFT), or pemoe's MoE kinds (documented extension)
  TargetModules targets;      ///< `target_modules`, `layers_to_transform`, `exclude_modules`
  TargetModules feedforward;  ///< IA3 `feedforward_modules`
  std::vector<Index> experts_per_layer;  ///< MoE: E per layer (MoLA allocations); empty = the same everywhere
  nlohmann::json raw;                    ///< the whole adapter_config.json
};

/**
 * @brief Reads `<dir>/adapter_config.json`: PEFT's LoRA and IA3, and pemoe's MoE extension.
 *
 * The MoE extension (MoV, MoLoRA, sparse top-k) keeps PEFT's layout: `peft_type` "PEMOE_MOE", PEFT's
 * `target_modules` / `layers_to_transform`, plus `pemoe_adapter` (mov, molora, sparse), `num_experts`,
 * `experts_per_layer` (optional, one E per layer), `r`, `lora_alpha`, `lora_dropout`, `init`, `router_input`
 * and `router` {gate_mode, top_k, init, bias, jitter, aux {balance_coef, balance_norm, z_coef, ...}}. Its
 * tensors in `adapter_model.safetensors` are stacked per expert under PEFT-style keys:
 * `base_model.model.<site>.lora_A.weight` (E, r, d_in), `.lora_B.weight` (E, d_out, r),
 * `.router.weight` (E, d_router), `.mov_scaling` (E, d) or (H, E, d_head).
 */
inline PeftAdapterConfig read_peft_config(const std::string& dir) {
  const std::string path = dir + "/adapter_config.json";
  const nlohmann::json j = detail::read_json_file(path);
  PeftAdapterConfig a;
  a.raw = j;
  const std::string type = j.value("peft_type", std::string());
  auto read_targets = [&](const char* key, TargetModules& t) {
    if (!j.contains(key) || j[key].is_null()) return;
    if (j[key].is_string()) {
      const std::string s = j[key].get<std::string>();
      if (s == "all-linear")
        t.all_linear = true;
      else
        t.regex = s;
    } else {
      t.names = j[key].get<std::vector<std::string>>();
    }
  };
  read_targets("target_modules", a.targets);
  if (j.contains("exclude_modules") && j["exclude_modules"].is_array())
    a.targets.exclude = j["exclude_modules"].get<std::vector<std::string>>();
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
    if (j["layers_to_transform"].is_number_integer())
      a.targets.layers_to_transform = {j["layers_to_transform"].get<long>()};
    else
      a.targets.layers_to_transform = j["layers_to_transform"].get<std::vector<long>>();
  }
  if (j.contains("layers_pattern") && !j["layers_pattern"].is_null()) {
    if (j["layers_pattern"].is_string())
      a.targets.layers_pattern = {j["layers_pattern"].get<std::string>()};
    else
      a.targets.layers_pattern = j["layers_pattern"].get<std::vector<std::string>>();
  }
  if (type == "LORA") {
    a.spec.kind = AdapterKind::lora;
    a.spec.lora.r = j.value("r", Index(8));
    a.spec.lora.alpha = j.value("lora_alpha", 8.0);
    a.spec.lora.dropout = j.value("lora_dropout", 0.0);
    a.spec.lora.use_rslora = j.value("use_rslora", false);
    PEMOE_CHECK_CONFIG(j.value("bias", std::string("none")) == "none", path,
                       ": LoRA bias other than \"none\" is not supported");
    PEMOE_CHECK_CONFIG(!j.contains("use_dora") || !j["use_dora"].get<bool>(), path,
                       ": DoRA is not supported");
    PEMOE_CHECK_CONFIG(!j.contains("rank_pattern") || j["rank_pattern"].empty(), path,
                       ": rank_pattern is not supported");
    PEMOE_CHECK_CONFIG(!j.contains("alpha_pattern") || j["alpha_pattern"].empty(), path,
                       ": alpha_pattern is not supported");
  } else if (type == "IA3") {
    a.spec.kind = AdapterKind::ia3;
    read_targets("feedforward_modules", a.feedforward);
  } else if (type == "PEMOE_MOE") {
    try {
      moe_spec_from_json(j, a.spec);
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(path + ": " + e.what());
    }
    if (j.contains("experts_per_layer") && !j["experts_per_layer"].is_null())
      a.experts_per_layer = j["experts_per_layer"].get<std::vector<Index>>();
  } else {
    throw ConfigError(path + ": peft_type '" + type +
                      "' is not supported (LORA, IA3 and pemoe's PEMOE_MOE are)");
  }
  return a;
}

/// The PEFT key of a pemoe adapter parameter: `base_model.model.<name>`, IA3's vector reshaped by the caller.
inline std::string peft_key(const std::string& name) {
  return "base_model.model." + name;
}

/**
 * @brief Loads adapter_model.safetensors of the directory `dir` into the model's adapter parameters, under
 * PEFT's keys (base_model.model. followed by the parameter name; the IA3 vectors stored as (out, 1) or
 * (1, in)). Every adapter parameter must be present and every file tensor used: `IoError` naming the
 * tensor otherwise.
 */
template <class Model>
void load_peft_weights(Model& model, const std::string& dir) {
  auto& store = *model.store();
  const std::string path = dir + "/adapter_model.safetensors";
  const SafetensorsFile f = SafetensorsFile::load(path);
  std::set<std::string> used;
  for (const auto& e : store.entries()) {
    if (Model::is_backbone(e.name)) continue;
    const std::string key = peft_key(e.name);
    PEMOE_CHECK_AS(IoError, f.contains(key), "PEFT adapter '", path, "': missing tensor '", key, "'");
    PEMOE_CHECK_AS(IoError, f.info(key).numel() == e.size, "PEFT adapter '", path, "': tensor '", key,
                   "' has shape ", shape_string(f.info(key).shape), ", the adapter expects ",
                   shape_string(e.shape));
    f.copy_to(key, store.value(store.id(e.name)), e.size);
    used.insert(key);
  }
  for (const auto& name : f.names())
    PEMOE_CHECK_AS(IoError, used.count(name), "PEFT adapter '", path, "': unexpected tensor '", name,
                   "' (its adapter_config.json does not select that module)");
}

/// Writes the adapter as a PEFT directory: `adapter_config.json` (`base` is `base_model_name_or_path`) and
/// `adapter_model.safetensors` with PEFT's keys and shapes, so `PeftModel.from_pretrained` loads it. The
/// model gives `task_type` and `fan_in_fan_out` (`Model::kPeftTaskType`, `Model::kPeftFanInFanOut`).
template <class Model>
void save_peft_adapter(Model& model, const PeftAdapterConfig& a, const std::string& dir,
                       const std::string& base = "") {
  auto& store = *model.store();
  std::filesystem::create_directories(dir);
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  for (const auto& e : store.entries()) {
    if (Model::is_backbone(e.name)) continue;
    Shape shape = e.shape;
    if (a.spec.kind == AdapterKind::ia3) {  // PEFT: (out, 1), or (1, in) for feed-forward modules
      const std::string site = e.name.substr(0, e.name.size() - std::string(".ia3_l").size());
      shape = a.feedforward.matches(site) ? Shape{1, e.size} : Shape{e.size, 1};
    }
    w.add(peft_key(e.name), shape, store.value(store.id(e.name)));
  }
  w.save(dir + "/adapter_model.safetensors");
  nlohmann::json j = a.raw.is_object() ? a.raw : nlohmann::json::object();
  auto targets = [](const TargetModules& t) -> nlohmann::json {
    if (t.all_linear) return "all-linear";
    if (!t.regex.empty()) return t.regex;
    return t.names;
  };
  j["base_model_name_or_path"] = base.empty() ? nlohmann::json(nullptr) : nlohmann::json(base);
  j["task_type"] = Model::kPeftTaskType;
  j["target_modules"] = targets(a.targets);
  j["fan_in_fan_out"] = Model::kPeftFanInFanOut;
  j["inference_mode"] = true;
  if (!a.targets.layers_to_transform.empty()) j["layers_to_transform"] = a.targets.layers_to_transform;
  if (a.spec.kind == AdapterKind::lora) {
    j["peft_type"] = "LORA";
    j["r"] = a.spec.lora.r;
    j["lora_alpha"] = a.spec.lora.alpha;
    j["lora_dropout"] = a.spec.lora.dropout;
    j["use_rslora"] = a.spec.lora.use_rslora;
    j["bias"] = "none";
  } else if (a.spec.kind == AdapterKind::ia3) {
    j["peft_type"] = "IA3";
    j["feedforward_modules"] = targets(a.feedforward);
  } else if (a.spec.kind != AdapterKind::none) {  // pemoe's MoE extension (see read_peft_config)
    j["peft_type"] = "PEMOE_MOE";
    const nlohmann::json moe = moe_spec_to_json(a.spec);
    for (const auto& [k, v] : moe.items()) j[k] = v;
    if (!a.experts_per_layer.empty()) j["experts_per_layer"] = a.experts_per_layer;
  } else {
    throw ConfigError("save_peft_adapter: the model has no adapter");
  }
  detail::write_json_file(dir + "/adapter_config.json", j);
}

}  // namespace pemoe

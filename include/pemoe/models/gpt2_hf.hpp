/// @file gpt2_hf.hpp
/// @brief GPT-2 to and from Hugging Face directories: `config.json` + `model.safetensors` (names, shapes and
/// dtypes unchanged, Conv1D layout handled), and PEFT adapter directories (`adapter_config.json` +
/// `adapter_model.safetensors`) for LoRA and (IA)³, both ways.
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
#include "pemoe/models/gpt2.hpp"
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
/// Hugging Face's GPT-2 linear layers are `Conv1D`, whose weight is stored (in, out).
inline bool is_gpt2_conv1d_weight(const std::string& name) {
  for (const char* s :
       {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"}) {
    const std::string t(s);
    if (name.size() >= t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0) return true;
  }
  return false;
}
/// Buffers some GPT-2 checkpoints carry that are not parameters (the causal mask), and the tied head.
inline bool is_gpt2_ignorable(const std::string& name) {
  auto ends = [&](const char* s) {
    const std::string t(s);
    return name.size() >= t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0;
  };
  return ends(".attn.bias") || ends(".attn.masked_bias") || name == "lm_head.weight";
}

}  // namespace detail

/// Reads `<dir>/config.json` of a Hugging Face GPT-2 directory.
inline GPT2Config read_gpt2_config(const std::string& dir) {
  try {
    return GPT2Config::from_json(detail::read_json_file(dir + "/config.json"));
  } catch (const ConfigError& e) {
    throw ConfigError(dir + "/config.json: " + e.what());
  }
}

/// Dtypes of the tensors a checkpoint was loaded from (to save it back the same way).
using TensorDtypes = std::map<std::string, Dtype>;

/**
 * @brief Loads `<dir>/model.safetensors` (Hugging Face names; F32, F16 or BF16, converted) into the model's
 * backbone parameters. Conv1D weights are transposed from (in, out). A missing tensor, a wrong shape, a
 * non-float dtype or a tensor the model does not have is an `IoError` naming the tensor (the causal-mask
 * buffers `attn.bias` / `attn.masked_bias` and a tied `lm_head.weight` are accepted and skipped). Keys may
 * carry GPT2Model's prefix-less names (`h.0.attn...`). Returns the dtypes found.
 */
template <class T>
TensorDtypes load_gpt2_weights(GPT2<T>& model, const std::string& dir) {
  ParamStore<T>& store = *model.store();
  const std::string path = dir + "/model.safetensors";
  PEMOE_CHECK_AS(IoError, std::filesystem::exists(path), "GPT-2: no '", path, "'",
                 std::filesystem::exists(dir + "/model.safetensors.index.json")
                     ? " (sharded checkpoints are not supported yet: merge the shards into one file)"
                     : "");
  const SafetensorsFile f = SafetensorsFile::load(path);
  TensorDtypes dtypes;
  std::set<std::string> used;
  for (const auto& e : store.entries()) {
    if (!GPT2<T>::is_backbone(e.name)) continue;
    std::string key = e.name;
    if (!f.contains(key) && key.rfind("transformer.", 0) == 0 && f.contains(key.substr(12)))
      key = key.substr(12);
    PEMOE_CHECK_AS(IoError, f.contains(key), "GPT-2 '", path, "': missing tensor '", e.name, "'");
    const auto& info = f.info(key);
    PEMOE_CHECK_AS(IoError,
                   info.dtype == Dtype::F32 || info.dtype == Dtype::F16 || info.dtype == Dtype::BF16 ||
                       info.dtype == Dtype::F64,
                   "GPT-2 '", path, "': tensor '", key, "' has dtype ", dtype_name(info.dtype),
                   "; expected F32, F16 or BF16");
    const bool conv = detail::is_gpt2_conv1d_weight(e.name);
    Shape want = e.shape;
    if (conv) std::swap(want[0], want[1]);
    PEMOE_CHECK_AS(IoError, info.shape == want, "GPT-2 '", path, "': tensor '", key, "' has shape ",
                   shape_string(info.shape), ", the model (config.json) expects ", shape_string(want));
    T* dst = store.value(store.id(e.name));
    if (conv) {
      Matrix<T> m(want[0], want[1]);
      f.copy_to(key, m.data(), m.size());
      MatrixMap<T>(dst, e.shape[0], e.shape[1]) = m.transpose();
    } else {
      f.copy_to(key, dst, e.size);
    }
    dtypes[e.name] = info.dtype;
    used.insert(key);
  }
  // MPOE banks in place of MLPs: the pretrained c_fc / c_proj are decomposed into every expert.
  const GPT2Config& cfg = model.config();
  for (Index i = 0; i < cfg.n_layer; ++i) {
    if (!model.block(i).has_mpoe()) continue;
    const std::string p = "transformer.h." + std::to_string(i) + ".mlp.";
    auto read = [&](const std::string& name, Index rows, Index cols) {
      std::string key = p + name;
      if (!f.contains(key) && f.contains(key.substr(12))) key = key.substr(12);
      PEMOE_CHECK_AS(IoError, f.contains(key), "GPT-2 '", path, "': missing tensor '", p + name, "'");
      PEMOE_CHECK_AS(IoError, f.info(key).numel() == rows * cols, "GPT-2 '", path, "': tensor '", key,
                     "' has shape ", shape_string(f.info(key).shape));
      Matrix<T> m(rows, cols);
      f.copy_to(key, m.data(), m.size());
      used.insert(key);
      return m;
    };
    const Matrix<T> fc = read("c_fc.weight", cfg.n_embd, cfg.inner()),
                    proj = read("c_proj.weight", cfg.inner(), cfg.n_embd);
    const Matrix<T> bfc = read("c_fc.bias", 1, cfg.inner()), bproj = read("c_proj.bias", 1, cfg.n_embd);
    const Matrix<T> wi = fc.transpose(), wo = proj.transpose();  // Conv1D (in, out) -> (out, in)
    model.block(i).mpoe().load_dense(wi, wo, bfc.data(), bproj.data());
  }
  for (const auto& name : f.names())
    PEMOE_CHECK_AS(IoError, used.count(name) || detail::is_gpt2_ignorable(name), "GPT-2 '", path,
                   "': unexpected tensor '", name, "' (not a GPT-2 parameter for this config.json)");
  return dtypes;
}

/// Saves the backbone as a Hugging Face GPT-2 directory (`config.json`, `model.safetensors` with HF names,
/// Conv1D layout, and each tensor's dtype from `dtypes`, F32 when absent).
template <class T>
void save_gpt2(GPT2<T>& model, const std::string& dir, const TensorDtypes& dtypes = {}) {
  ParamStore<T>& store = *model.store();
  std::filesystem::create_directories(dir);
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  for (const auto& e : store.entries()) {
    if (!GPT2<T>::is_backbone(e.name)) continue;
    const auto it = dtypes.find(e.name);
    const Dtype dt = it == dtypes.end() ? Dtype::F32 : it->second;
    const T* v = store.value(store.id(e.name));
    if (detail::is_gpt2_conv1d_weight(e.name)) {
      const Matrix<T> t = ConstMatrixMap<T>(v, e.shape[0], e.shape[1]).transpose();
      w.add(e.name, Shape{e.shape[1], e.shape[0]}, t.data(), dt);
    } else {
      w.add(e.name, e.shape, v, dt);
    }
  }
  w.save(dir + "/model.safetensors");
  nlohmann::json cfg = model.config().to_json();
  cfg["torch_dtype"] = "float32";
  detail::write_json_file(dir + "/config.json", cfg);
}

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
template <class T>
void load_peft_weights(GPT2<T>& model, const std::string& dir) {
  ParamStore<T>& store = *model.store();
  const std::string path = dir + "/adapter_model.safetensors";
  const SafetensorsFile f = SafetensorsFile::load(path);
  std::set<std::string> used;
  for (const auto& e : store.entries()) {
    if (GPT2<T>::is_backbone(e.name)) continue;
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
/// `adapter_model.safetensors` with PEFT's keys and shapes, so `PeftModel.from_pretrained` loads it.
template <class T>
void save_peft_adapter(GPT2<T>& model, const PeftAdapterConfig& a, const std::string& dir,
                       const std::string& base = "") {
  ParamStore<T>& store = *model.store();
  std::filesystem::create_directories(dir);
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  for (const auto& e : store.entries()) {
    if (GPT2<T>::is_backbone(e.name)) continue;
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
  j["task_type"] = "CAUSAL_LM";
  j["target_modules"] = targets(a.targets);
  j["fan_in_fan_out"] = true;  // GPT-2's Conv1D
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

/// Builds a GPT-2 from a Hugging Face directory (and optionally a PEFT adapter directory) into `store`.
template <class T>
std::unique_ptr<GPT2<T>> load_gpt2(const std::string& model_dir, ParamStore<T>& store, Rng& rng,
                                   const std::string& adapter_dir = "", PeftAdapterConfig* adapter = nullptr,
                                   TensorDtypes* dtypes = nullptr) {
  auto model = std::make_unique<GPT2<T>>(read_gpt2_config(model_dir));
  PeftAdapterConfig a;
  if (!adapter_dir.empty()) {
    a = read_peft_config(adapter_dir);
    model->inject(a.spec, a.targets, a.experts_per_layer,
                  a.spec.kind == AdapterKind::ia3 ? a.feedforward : GPT2<T>::default_feedforward());
  }
  model->register_params(store, rng);
  const TensorDtypes d = load_gpt2_weights(*model, model_dir);
  if (dtypes) *dtypes = d;
  if (!adapter_dir.empty()) load_peft_weights(*model, adapter_dir);
  if (adapter) *adapter = a;
  return model;
}

}  // namespace pemoe

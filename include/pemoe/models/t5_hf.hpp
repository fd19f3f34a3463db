/// @file t5_hf.hpp
/// @brief T5 to and from Hugging Face directories: `config.json` + `model.safetensors` (HF names and shapes;
/// F32, F16, BF16 or F64, converted to the model's scalar).
#pragma once

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/io/safetensors.hpp"
#include "pemoe/models/peft_dir.hpp"
#include "pemoe/models/t5.hpp"

namespace pemoe {

/// Reads `<dir>/config.json` of a Hugging Face T5 directory; a bad value is a `ConfigError` naming the file
/// and the key.
inline T5Config read_t5_config(const std::string& dir) {
  try {
    return T5Config::from_json(detail::read_json_file(dir + "/config.json"));
  } catch (const ConfigError& e) {
    throw ConfigError(dir + "/config.json: " + e.what());
  }
}

namespace detail {
/// Tensors a T5 checkpoint may hold that are not parameters of its own: the stacks' copies of the tied
/// embedding, a tied head (transformers 5.x ties it always), and the unused cross-attention bias that HF
/// ignores on load.
inline bool is_t5_ignorable(const std::string& name, bool tied) {
  return name == "encoder.embed_tokens.weight" || name == "decoder.embed_tokens.weight" ||
         (tied && name == "lm_head.weight") ||
         name == "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight";
}
}  // namespace detail

/**
 * @brief Loads `<dir>/model.safetensors` into the model's backbone parameters (HF names). A missing tensor,
 * a wrong shape, a non-float dtype or a tensor the model does not have is an `IoError` naming the tensor.
 * When `shared.weight` is absent, `encoder.embed_tokens.weight` is taken in its place. Returns the dtypes.
 */
template <class T>
TensorDtypes load_t5_weights(T5<T>& model, const std::string& dir) {
  ParamStore<T>& store = *model.store();
  const std::string path = dir + "/model.safetensors";
  PEMOE_CHECK_AS(IoError, std::filesystem::exists(path), "T5: no '", path, "'",
                 std::filesystem::exists(dir + "/model.safetensors.index.json")
                     ? " (sharded checkpoints are not supported yet: merge the shards into one file)"
                     : "");
  const SafetensorsFile f = SafetensorsFile::load(path);
  TensorDtypes dtypes;
  std::set<std::string> used;
  for (const auto& e : store.entries()) {
    if (!T5<T>::is_backbone(e.name)) continue;
    std::string key = e.name;
    if (key == "shared.weight" && !f.contains(key) && f.contains("encoder.embed_tokens.weight"))
      key = "encoder.embed_tokens.weight";
    PEMOE_CHECK_AS(IoError, f.contains(key), "T5 '", path, "': missing tensor '", e.name, "'");
    const auto& info = f.info(key);
    PEMOE_CHECK_AS(IoError,
                   info.dtype == Dtype::F32 || info.dtype == Dtype::F16 || info.dtype == Dtype::BF16 ||
                       info.dtype == Dtype::F64,
                   "T5 '", path, "': tensor '", key, "' has dtype ", dtype_name(info.dtype),
                   "; expected F32, F16, BF16 or F64");
    PEMOE_CHECK_AS(IoError, info.shape == e.shape, "T5 '", path, "': tensor '", key, "' has shape ",
                   shape_string(info.shape), ", the model (config.json) expects ", shape_string(e.shape));
    f.copy_to(key, store.value(store.id(e.name)), e.size);
    dtypes[e.name] = info.dtype;
    used.insert(key);
  }
  const bool tied = model.config().tie_word_embeddings;
  for (const auto& name : f.names())
    PEMOE_CHECK_AS(IoError, used.count(name) || detail::is_t5_ignorable(name, tied), "T5 '", path,
                   "': unexpected tensor '", name, "' (not a T5 parameter for this config.json)");
  return dtypes;
}

/// Saves the backbone as a Hugging Face T5 directory (`config.json`, `model.safetensors` with HF names, each
/// tensor's dtype from `dtypes`, F32 when absent). A tied head is saved as `shared.weight` alone, as HF does.
template <class T>
void save_t5(T5<T>& model, const std::string& dir, const TensorDtypes& dtypes = {}) {
  ParamStore<T>& store = *model.store();
  std::filesystem::create_directories(dir);
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  for (const auto& e : store.entries()) {
    if (!T5<T>::is_backbone(e.name)) continue;
    const auto it = dtypes.find(e.name);
    w.add(e.name, e.shape, store.value(store.id(e.name)), it == dtypes.end() ? Dtype::F32 : it->second);
  }
  w.save(dir + "/model.safetensors");
  nlohmann::json cfg = model.config().to_json();
  cfg["torch_dtype"] = "float32";
  detail::write_json_file(dir + "/config.json", cfg);
}

/// Whether `<dir>/config.json` describes a T5 (`model_type` "t5"); `IoError` when it cannot be read.
inline bool is_t5_dir(const std::string& dir) {
  const nlohmann::json j = detail::read_json_file(dir + "/config.json");
  return j.is_object() && j.value("model_type", std::string()) == "t5";
}

/**
 * @brief Builds a T5 from a Hugging Face directory (and optionally a PEFT adapter directory: LoRA, (IA)³ or
 * pemoe's MoE extension, `adapter_config.json` + `adapter_model.safetensors`) into `store`. IA3 without
 * `feedforward_modules` scales wo's input, PEFT's T5 default.
 */
template <class T>
std::unique_ptr<T5<T>> load_t5(const std::string& model_dir, ParamStore<T>& store, Rng& rng,
                               const std::string& adapter_dir = "", PeftAdapterConfig* adapter = nullptr,
                               TensorDtypes* dtypes = nullptr) {
  auto model = std::make_unique<T5<T>>(read_t5_config(model_dir));
  PeftAdapterConfig a;
  if (!adapter_dir.empty()) {
    a = read_peft_config(adapter_dir);
    if (!a.raw.contains("feedforward_modules") || a.raw["feedforward_modules"].is_null())
      a.feedforward = T5<T>::default_feedforward();  // PEFT's mapping for t5
    PEMOE_CHECK_CONFIG(a.experts_per_layer.empty(), adapter_dir,
                       "/adapter_config.json: experts_per_layer is a GPT-2 option; T5 takes one E");
    model->inject(a.spec, a.targets, a.feedforward);
  }
  model->register_params(store, rng);
  const TensorDtypes d = load_t5_weights(*model, model_dir);
  if (dtypes) *dtypes = d;
  if (!adapter_dir.empty()) load_peft_weights(*model, adapter_dir);
  if (adapter) *adapter = a;
  return model;
}

}  // namespace pemoe

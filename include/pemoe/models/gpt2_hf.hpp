/// @file gpt2_hf.hpp
/// @brief GPT-2 to and from Hugging Face directories: `config.json` + `model.safetensors` (names, shapes and
/// dtypes unchanged, Conv1D layout handled), and GPT-2 with a PEFT adapter directory (`load_gpt2`; the
/// directories themselves, for any model, are in peft_dir.hpp).
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
#include "pemoe/models/peft_dir.hpp"
#include "pemoe/models/target_modules.hpp"

namespace pemoe {

namespace detail {

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

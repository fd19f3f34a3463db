/// @file param_store.hpp
/// @brief `ParamStore`: every parameter of a model in one contiguous arena, gradients in a second one.
#pragma once

#include <algorithm>
#include <cstddef>
#include <regex>
#include <string>
#include <unordered_map>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe {

/// Handle of one parameter inside a `ParamStore` (stable for the store's lifetime).
using ParamId = std::size_t;

/**
 * @brief Named parameters in one contiguous value arena, and gradients of the trainable ones in another.
 *
 * Layers declare their parameters in `register_params` with dotted Hugging Face / PEFT names
 * (`transformer.h.0.attn.c_attn.lora_A.weight`) and keep the returned `ParamId`s; they reach their
 * memory through `value()` / `grad()` on every call, so the arena may grow while a model is built
 * without leaving any dangling pointer.
 *
 * - Iteration (`entries()`) follows declaration order, which is stable and is the order of
 *   checkpoints and optimizer state.
 * - Only trainable parameters own gradient memory; `set_trainable(regex, flag)` re-lays the
 *   gradient arena (keeping the gradients of parameters that stay trainable).
 * - `zero_grad()` is one fill over the gradient arena; optimizers are flat loops over
 *   `values()`/`grads()` through `entries()` offsets.
 *
 * A parameter's memory is row-major with the shape it was declared with; `matrix()` views it as
 * `(prod(shape[:-1]), shape[-1])`, so a stacked expert tensor `(E, r, d_in)` is an `(E·r, d_in)` matrix.
 *
 * @tparam T scalar type (float for training, double for gradient checks).
 */
template <class T>
class ParamStore {
 public:
  using Scalar = T;

  /// One parameter: its name, shape, place in the value arena and (if trainable) in the gradient arena.
  struct Entry {
    std::string name;
    Shape shape;
    Index offset = 0;        ///< first element in `values()`
    Index size = 0;          ///< number of elements
    bool trainable = true;   ///< owns gradient memory at `grad_offset`
    Index grad_offset = -1;  ///< first element in `grads()`, or -1 when frozen
  };

  ParamStore() = default;
  // Layers keep a pointer to their store: copying one would silently split a model in two.
  ParamStore(const ParamStore&) = delete;
  ParamStore& operator=(const ParamStore&) = delete;
  ParamStore(ParamStore&&) = default;
  ParamStore& operator=(ParamStore&&) = default;

  /// Declares a parameter (zero-initialised) and returns its handle. Throws `ConfigError` on a
  /// duplicate name or a non-positive extent.
  ParamId add(const std::string& name, const Shape& shape, bool trainable = true) {
    PEMOE_CHECK_CONFIG(!name.empty(), "ParamStore: a parameter needs a non-empty name");
    PEMOE_CHECK_CONFIG(m_index.find(name) == m_index.end(), "ParamStore: parameter '", name,
                       "' is declared twice (did two layers get the same prefix?)");
    for (Index d : shape)
      PEMOE_CHECK_CONFIG(d > 0, "ParamStore: parameter '", name, "' has shape ", shape_string(shape),
                         "; every extent must be positive");
    Entry e;
    e.name = name;
    e.shape = shape;
    e.offset = static_cast<Index>(m_values.size());
    e.size = shape_size(shape);
    e.trainable = trainable;
    m_values.resize(m_values.size() + static_cast<std::size_t>(e.size), T(0));
    if (trainable) {
      e.grad_offset = static_cast<Index>(m_grads.size());
      m_grads.resize(m_grads.size() + static_cast<std::size_t>(e.size), T(0));
    }
    m_entries.push_back(e);
    m_index.emplace(name, m_entries.size() - 1);
    return m_entries.size() - 1;
  }

  /// Handle of the parameter called `name`; throws `ConfigError` naming the closest known names.
  ParamId id(const std::string& name) const {
    auto it = m_index.find(name);
    if (it != m_index.end()) return it->second;
    std::string hint;
    const std::string tail = name.substr(name.rfind('.') == std::string::npos ? 0 : name.rfind('.'));
    int shown = 0;
    for (const auto& e : m_entries) {
      if (shown < 5 && e.name.size() >= tail.size() &&
          e.name.compare(e.name.size() - tail.size(), tail.size(), tail) == 0) {
        hint += (shown ? ", '" : " Parameters ending like it: '") + e.name + "'";
        ++shown;
      }
    }
    throw ConfigError("ParamStore: no parameter named '" + name + "' (" + std::to_string(m_entries.size()) +
                      " parameters declared)." + hint);
  }
  /// Whether a parameter called `name` exists.
  bool contains(const std::string& name) const { return m_index.count(name) != 0; }

  /// The parameter's record.
  const Entry& entry(ParamId id) const {
    PEMOE_CHECK(id < m_entries.size(), "ParamStore: invalid parameter id ", id);
    return m_entries[id];
  }
  /// All parameters in declaration order.
  const std::vector<Entry>& entries() const { return m_entries; }
  /// Number of declared parameters (tensors).
  std::size_t size() const { return m_entries.size(); }

  /// Pointer to the parameter's values.
  T* value(ParamId id) { return m_values.data() + entry(id).offset; }
  const T* value(ParamId id) const { return m_values.data() + entry(id).offset; }
  /// Whether the parameter has gradient memory.
  bool trainable(ParamId id) const { return entry(id).trainable; }
  /// Pointer to the parameter's gradient; throws for a frozen parameter.
  T* grad(ParamId id) {
    const Entry& e = entry(id);
    PEMOE_CHECK(e.trainable, "ParamStore: '", e.name, "' is frozen and has no gradient");
    return m_grads.data() + e.grad_offset;
  }
  const T* grad(ParamId id) const { return const_cast<ParamStore*>(this)->grad(id); }

  /// Values viewed as a `(prod(shape[:-1]), shape[-1])` row-major matrix.
  MatrixMap<T> matrix(ParamId id) {
    const Entry& e = entry(id);
    return MatrixMap<T>(value(id), e.size / last_extent(e), last_extent(e));
  }
  ConstMatrixMap<T> matrix(ParamId id) const {
    const Entry& e = entry(id);
    return ConstMatrixMap<T>(value(id), e.size / last_extent(e), last_extent(e));
  }
  /// Gradient viewed like `matrix()`; throws for a frozen parameter.
  MatrixMap<T> grad_matrix(ParamId id) {
    const Entry& e = entry(id);
    return MatrixMap<T>(grad(id), e.size / last_extent(e), last_extent(e));
  }

  /// Sets the trainable flag of every parameter whose full name matches `regex` (std::regex_search,
  /// ECMAScript) and re-lays the gradient arena. Returns how many parameters matched; a pattern that
  /// matches nothing throws `ConfigError`, since it is almost always a typo.
  std::size_t set_trainable(const std::string& regex, bool trainable) {
    std::regex re;
    try {
      re = std::regex(regex);
    } catch (const std::regex_error& err) {
      throw ConfigError("ParamStore::set_trainable: '" + regex + "' is not a valid regex: " + err.what());
    }
    std::size_t matched = 0;
    std::vector<bool> flags(m_entries.size());
    for (std::size_t i = 0; i < m_entries.size(); ++i) {
      flags[i] = m_entries[i].trainable;
      if (std::regex_search(m_entries[i].name, re)) {
        flags[i] = trainable;
        ++matched;
      }
    }
    PEMOE_CHECK_CONFIG(matched > 0, "ParamStore::set_trainable: pattern '", regex, "' matches none of the ",
                       m_entries.size(), " parameters");
    relayout_grads(flags);
    return matched;
  }
  /// Sets the trainable flag of every parameter.
  void set_all_trainable(bool trainable) { relayout_grads(std::vector<bool>(m_entries.size(), trainable)); }

  /// Zeroes every gradient (one fill).
  void zero_grad() { std::fill(m_grads.begin(), m_grads.end(), T(0)); }

  /// The value arena (all parameters, declaration order).
  std::vector<T>& values() { return m_values; }
  const std::vector<T>& values() const { return m_values; }
  /// The gradient arena (trainable parameters only, declaration order).
  std::vector<T>& grads() { return m_grads; }
  const std::vector<T>& grads() const { return m_grads; }

  /// Total number of scalars.
  Index num_values() const { return static_cast<Index>(m_values.size()); }
  /// Number of trainable scalars.
  Index num_trainable() const { return static_cast<Index>(m_grads.size()); }

 private:
  static Index last_extent(const Entry& e) { return e.shape.empty() ? 1 : e.shape.back(); }

  void relayout_grads(const std::vector<bool>& flags) {
    std::vector<T> grads;
    Index offset = 0;
    for (std::size_t i = 0; i < m_entries.size(); ++i) offset += flags[i] ? m_entries[i].size : 0;
    grads.assign(static_cast<std::size_t>(offset), T(0));
    offset = 0;
    for (std::size_t i = 0; i < m_entries.size(); ++i) {
      Entry& e = m_entries[i];
      if (flags[i]) {
        if (e.trainable) std::copy_n(m_grads.begin() + e.grad_offset, e.size, grads.begin() + offset);
        e.grad_offset = offset;
        offset += e.size;
      } else {
        e.grad_offset = -1;
      }
      e.trainable = flags[i];
    }
    m_grads.swap(grads);
  }

  std::vector<Entry> m_entries;
  std::unordered_map<std::string, ParamId> m_index;
  std::vector<T> m_values;
  std::vector<T> m_grads;
};

}  // namespace pemoe

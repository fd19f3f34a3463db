/// @file param_store.hpp
/// @brief `ParamStore`: every parameter of a model in one contiguous arena, gradients in a second one;
/// `list_params` lists a layer's parameters without allocating them.
///
/// Selecting parameters by a regular expression (`set_trainable(store, regex, flag)`) lives in
/// core/param_select.hpp, so that the many headers which only declare parameters do not pull in `<regex>`.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "pemoe/core/error.hpp"
#include "pemoe/core/rng.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe {

namespace detail {

/// Returns the whole pages inside [p, p + bytes) to the system without freeing the allocation (Linux:
/// `madvise(MADV_DONTNEED)`; they read as zero if touched again); elsewhere does nothing. For a buffer that
/// shrinks for good and is too large to copy into a smaller one (the peak would hold both).
inline void discard_pages(void* p, std::size_t bytes) {
#if defined(__linux__)
  static const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t begin = (first + page - 1) / page * page, end = (first + bytes) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace detail

/// Handle of one parameter inside a `ParamStore` (stable for the store's lifetime).
using ParamId = std::size_t;

/// Tag selecting the declaration-only mode of `ParamStore` (see `ParamStore::declaration_only()`).
struct DeclarationOnly {
  explicit DeclarationOnly() = default;
};

/// One parameter as `list_params` reports it: its dotted name, shape and trainable flag.
struct ParamInfo {
  std::string name;
  Shape shape;
  bool trainable = true;
};

/**
 * @brief Named parameters in one contiguous value arena, and gradients of the trainable ones in another.
 *
 * Layers declare their parameters in `register_params` with dotted Hugging Face / PEFT names
 * (`transformer.h.0.attn.c_attn.lora_A.weight`) and keep the returned `ParamId`s; they reach their
 * memory through `value()` / `grad()` on every call, so the arena may grow while a model is built
 * without leaving any dangling pointer. Layers also keep a pointer to their store, so a store can be
 * neither copied nor moved: create it first, where it will live, and build the model into it.
 *
 * - Iteration (`entries()`) follows declaration order, which is stable and is the order of
 *   checkpoints and optimizer state.
 * - Only trainable parameters own gradient memory; `set_trainable_if(pred, flag)` (and the regex form
 *   `set_trainable(store, regex, flag)` of core/param_select.hpp) re-lays the gradient arena, keeping the
 *   gradients of parameters that stay trainable.
 * - `add` gives the strong exception guarantee: when it throws (a bad name or shape, or memory), the store
 *   is exactly as before, values and gradients in step.
 * - `zero_grad()` fills nothing (PyTorch's `zero_grad(set_to_none=True)`): it marks every gradient as
 *   unwritten. A writer that writes a whole gradient asks `first_write_beta(id)` and overwrites it (beta 0,
 *   e.g. a weight-gradient product) instead of adding into zeros; any other access (`grad()`,
 *   `grad_matrix()`, `grads()`) zero-fills an unwritten gradient first, so every reader sees zeros plus what
 *   was added. Optimizers are flat loops over `values()`/`grads()` through `entries()` offsets.
 * - A declaration-only store (`declaration_only()`) records names, shapes and flags but allocates no arena:
 *   `value()` and `grad()` return a scratch buffer as large as the largest parameter, so a layer's
 *   initialisation runs unchanged (and harmlessly); expensive initialisers skip their work when
 *   `declaring_only()` is true. `list_params(layer, prefix)` is built on it.
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
    bool released = false;   ///< values dropped by `release_values_if` (offset -1): `value()` throws
  };
  static_assert(std::is_nothrow_move_constructible_v<Entry>, "add() relies on a no-throw move of Entry");

  /// An empty store that allocates its parameters.
  ParamStore() = default;
  /// An empty declaration-only store (see the class comment); prefer `declaration_only()`.
  explicit ParamStore(DeclarationOnly) : m_declaring(true) {}
  /// An empty declaration-only store: `add` records names, shapes and flags and allocates nothing.
  static ParamStore declaration_only() { return ParamStore(DeclarationOnly{}); }

  // Layers keep a pointer to their store: a copy would silently split a model in two, a move would leave
  // every layer pointing at an empty shell.
  ParamStore(const ParamStore&) = delete;
  ParamStore& operator=(const ParamStore&) = delete;
  ParamStore(ParamStore&&) = delete;
  ParamStore& operator=(ParamStore&&) = delete;

  /// Whether this store only records declarations (no arena); initialisers may skip their work then.
  bool declaring_only() const { return m_declaring; }

  /**
   * @brief Declares a parameter (zero-initialised) and returns its handle.
   *
   * Throws `ConfigError` on an empty or duplicate name or a non-positive extent, `ShapeError` when the
   * element count overflows, and whatever the allocator throws. Strong guarantee: on any exception the
   * store is unchanged. Cost: amortised O(size) (the arenas grow geometrically).
   */
  ParamId add(const std::string& name, const Shape& shape, bool trainable = true) {
    PEMOE_CHECK_CONFIG(!name.empty(), "ParamStore: a parameter needs a non-empty name");
    if (trainable && m_frozen_if && m_frozen_if(name)) trainable = false;
    PEMOE_CHECK_CONFIG(m_index.find(name) == m_index.end(), "ParamStore: parameter '", name,
                       "' is declared twice (did two layers get the same prefix?)");
    for (Index d : shape)
      PEMOE_CHECK_CONFIG(d > 0, "ParamStore: parameter '", name, "' has shape ", shape_string(shape),
                         "; every extent must be positive");
    const Index size = shape_size(shape);
    constexpr Index kMax = std::numeric_limits<Index>::max();
    PEMOE_CHECK_SHAPE(size <= kMax - m_num_values, "ParamStore: parameter '", name, "' of shape ",
                      shape_string(shape), " makes the store hold more than 2^63 values");
    // Everything that can throw happens before the first change of state.
    Entry e;
    e.name = name;
    e.shape = shape;
    e.offset = m_num_values;
    e.size = size;
    e.trainable = trainable;
    e.grad_offset = trainable ? m_num_grads : -1;
    reserve_geometric(m_entries, m_entries.size() + 1);
    if (m_declaring) {
      if (static_cast<std::size_t>(size) > m_scratch.size()) m_scratch.resize(static_cast<std::size_t>(size));
    } else {
      reserve_geometric(m_values, static_cast<std::size_t>(m_num_values + size));
      if (trainable) reserve_geometric(m_grads, static_cast<std::size_t>(m_num_grads + size));
    }
    std::unique_ptr<std::atomic<std::uint8_t>[]> grown;  // zero_grad's flags, one more entry
    std::size_t grown_capacity = 0;
    if (!m_declaring && m_entries.size() + 1 > m_unwritten_capacity) {
      grown_capacity = std::max<std::size_t>(16, 2 * m_unwritten_capacity);
      grown.reset(new std::atomic<std::uint8_t>[grown_capacity]);
      for (std::size_t i = 0; i < grown_capacity; ++i)
        grown[i].store(i < m_entries.size() ? m_unwritten[i].load(std::memory_order_relaxed) : 0,
                       std::memory_order_relaxed);
    }
    const ParamId id = m_entries.size();
    m_index.emplace(name, id);  // the last step that can throw (and if it does, it inserts nothing)
    // No-throw from here: within reserved capacity, no-throw moves, arithmetic values.
    m_entries.push_back(std::move(e));
    if (!m_declaring) {
      m_values.resize(static_cast<std::size_t>(m_num_values + size), T(0));
      if (trainable) m_grads.resize(static_cast<std::size_t>(m_num_grads + size), T(0));  // written: zeros
      if (grown) {
        m_unwritten = std::move(grown);
        m_unwritten_capacity = grown_capacity;
      }
      m_unwritten[id].store(0, std::memory_order_relaxed);
    }
    m_num_values += size;
    if (trainable) m_num_grads += size;
    return id;
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

  /// Pointer to the parameter's values (in a declaration-only store: to a scratch buffer of at least its
  /// size, shared by every parameter).
  T* value(ParamId id) {
    const Entry& e = entry(id);
    PEMOE_CHECK_CONFIG(!e.released, "ParamStore: the values of '", e.name,
                       "' were released (only a packed copy of the frozen weight remains, e.g. "
                       "GPT2::pack_frozen with release_f32); reload the model to read or save them");
    return m_declaring ? m_scratch.data() : m_values.data() + e.offset;
  }
  const T* value(ParamId id) const { return const_cast<ParamStore*>(this)->value(id); }
  /// Whether the parameter has gradient memory.
  bool trainable(ParamId id) const { return entry(id).trainable; }
  /// Pointer to the parameter's gradient (the scratch buffer in a declaration-only store); throws for a
  /// frozen parameter.
  T* grad(ParamId id) {
    const Entry& e = entry(id);
    PEMOE_CHECK(e.trainable, "ParamStore: '", e.name, "' is frozen and has no gradient");
    if (m_declaring) return m_scratch.data();
    if (m_unwritten_count.load(std::memory_order_acquire) != 0) write_zeros_if_unwritten(id);
    return m_grads.data() + e.grad_offset;
  }
  /**
   * @brief For a writer that writes every element of the gradient of `id` (a weight-gradient product):
   * returns 0 when the gradient is unwritten since `zero_grad()` (and marks it written: the caller must then
   * overwrite all of it, e.g. `gemm(..., beta = first_write_beta(id), grad_matrix_unfilled(id))`), else 1
   * (add into it). Saves the zero fill and the read of zeros. Not for two threads writing one gradient.
   */
  T first_write_beta(ParamId id) {
    const Entry& e = entry(id);
    PEMOE_CHECK(e.trainable, "ParamStore: '", e.name, "' is frozen and has no gradient");
    if (m_declaring || m_unwritten_count.load(std::memory_order_acquire) == 0) return T(1);
    std::lock_guard<std::mutex> lock(m_unwritten_mutex);
    if (!m_unwritten[id].load(std::memory_order_relaxed)) return T(1);
    m_unwritten[id].store(0, std::memory_order_release);
    m_unwritten_count.fetch_sub(1, std::memory_order_acq_rel);
    return T(0);
  }
  /// The gradient of `id` as a matrix without zero-filling it: only right after `first_write_beta(id)`,
  /// for the writer it told to overwrite (or add).
  MatrixMap<T> grad_matrix_unfilled(ParamId id) {
    const Entry& e = entry(id);
    PEMOE_CHECK(e.trainable, "ParamStore: '", e.name, "' is frozen and has no gradient");
    T* g = m_declaring ? m_scratch.data() : m_grads.data() + e.grad_offset;
    return MatrixMap<T>(g, e.size / last_extent(e), last_extent(e));
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

  /**
   * @brief Copies external weights into the parameter called `name` (row-major, `shape` elements).
   *
   * Throws `ConfigError` for an unknown name and `ShapeError` "ParamStore::set: parameter '<name>' has shape
   * (a, b), given (c, d)" unless `shape` equals the declared shape. A declaration-only store checks the
   * name and the shape and copies nothing.
   */
  void set(const std::string& name, const T* data, const Shape& shape) {
    const Entry& e = m_entries[id(name)];
    PEMOE_CHECK_SHAPE(shape == e.shape, "ParamStore::set: parameter '", name, "' has shape ",
                      shape_string(e.shape), ", given ", shape_string(shape));
    if (!m_declaring) std::copy_n(data, e.size, m_values.data() + e.offset);
  }
  /**
   * @brief Copies an Eigen matrix into the parameter called `name`, which it must fit as `matrix()` views it:
   * `(prod(shape[:-1]), shape[-1])`; a 1-D parameter `(d)` also takes a column `(d, 1)`.
   *
   * Throws `ShapeError` "ParamStore::set: parameter '<name>' has shape (...), viewed as a (r, c) matrix;
   * given a (r', c') matrix".
   */
  template <class Derived>
  void set(const std::string& name, const Eigen::DenseBase<Derived>& m) {
    static_assert(std::is_same_v<typename Derived::Scalar, T>,
                  "ParamStore::set: cast the matrix to the store's scalar type first");
    const ParamId pid = id(name);
    const Entry& e = m_entries[pid];
    const Index rows = e.size / last_extent(e), cols = last_extent(e);
    const bool column = e.shape.size() == 1 && m.rows() == cols && m.cols() == 1;
    PEMOE_CHECK_SHAPE((m.rows() == rows && m.cols() == cols) || column, "ParamStore::set: parameter '", name,
                      "' has shape ", shape_string(e.shape), ", viewed as a (", rows, ", ", cols,
                      ") matrix; given a (", m.rows(), ", ", m.cols(), ") matrix");
    if (m_declaring) return;
    if (column)
      matrix(pid) = m.derived().transpose();
    else
      matrix(pid) = m.derived();
  }

  /**
   * @brief Sets the trainable flag of every parameter for which `pred(entry)` is true (other parameters keep
   * theirs) and re-lays the gradient arena, keeping the gradients of parameters that stay trainable.
   *
   * `pred` is called once per parameter, in declaration order, with a `const Entry&`. Returns how many
   * parameters it selected (zero is not an error here). Strong guarantee.
   */
  template <class Pred>
  std::size_t set_trainable_if(Pred&& pred, bool trainable) {
    std::vector<bool> flags(m_entries.size());
    std::size_t matched = 0;
    for (std::size_t i = 0; i < m_entries.size(); ++i) {
      const bool hit = static_cast<bool>(pred(static_cast<const Entry&>(m_entries[i])));
      flags[i] = hit ? trainable : m_entries[i].trainable;
      matched += hit;
    }
    relayout_grads(flags);
    return matched;
  }
  /**
   * @brief Drops the values of every frozen parameter for which `pred(entry)` is true and compacts the value
   * arena, returning the memory (a model that keeps only a packed bf16 copy of its frozen backbone calls
   * this). Released entries keep their name and shape; `value()` on them throws `ConfigError`, checkpoints
   * skip them. `ConfigError` if a selected parameter is trainable (nothing changes then). Returns how many
   * were released. The arena is compacted in place and the whole pages of its freed tail are returned to the
   * system (`detail::discard_pages`), so the call needs no memory beyond the arena it shrinks.
   */
  template <class Pred>
  std::size_t release_values_if(Pred&& pred) {
    std::vector<bool> drop(m_entries.size(), false);
    std::size_t matched = 0;
    for (std::size_t i = 0; i < m_entries.size(); ++i) {
      const Entry& e = m_entries[i];
      if (e.released || !pred(e)) continue;
      PEMOE_CHECK_CONFIG(!e.trainable, "ParamStore: cannot release '", e.name, "': it is trainable");
      drop[i] = true;
      ++matched;
    }
    if (matched == 0 || m_declaring) return matched;
    // in place: every kept entry moves to a lower (or its own) offset, in declaration order, so a forward
    // copy never overwrites values it has still to read; the freed tail's pages go back to the system
    Index kept = 0;
    for (std::size_t i = 0; i < m_entries.size(); ++i) {
      Entry& e = m_entries[i];
      if (e.released) continue;
      if (drop[i]) {
        e.released = true;
        e.offset = -1;
        continue;
      }
      if (e.offset != kept) std::copy_n(m_values.begin() + e.offset, e.size, m_values.begin() + kept);
      e.offset = kept;
      kept += e.size;
    }
    T* const tail = m_values.data() + kept;
    const std::size_t tail_bytes = (m_values.size() - static_cast<std::size_t>(kept)) * sizeof(T);
    m_values.resize(static_cast<std::size_t>(kept));
    detail::discard_pages(tail, tail_bytes);
    m_num_values = kept;
    return matched;
  }

  /// Sets the trainable flag of every parameter.
  void set_all_trainable(bool trainable) { relayout_grads(std::vector<bool>(m_entries.size(), trainable)); }

  /// Zeroes every gradient, lazily: marks each trainable one unwritten (no fill; see the class comment).
  void zero_grad() {
    if (m_declaring) return;
    std::lock_guard<std::mutex> lock(m_unwritten_mutex);
    std::size_t count = 0;
    for (std::size_t i = 0; i < m_entries.size(); ++i) {
      const bool t = m_entries[i].trainable;
      m_unwritten[i].store(t ? 1 : 0, std::memory_order_relaxed);
      count += t;
    }
    m_unwritten_count.store(count, std::memory_order_release);
  }

  /// The value arena (all parameters, declaration order; empty in a declaration-only store).
  AlignedVector<T>& values() { return m_values; }
  const AlignedVector<T>& values() const { return m_values; }
  /// The gradient arena (trainable parameters only, declaration order; empty in a declaration-only store);
  /// zero-fills the gradients still unwritten since `zero_grad()` first.
  AlignedVector<T>& grads() {
    write_all_zeros_if_unwritten();
    return m_grads;
  }
  const AlignedVector<T>& grads() const { return const_cast<ParamStore*>(this)->grads(); }

  /// Number of scalars held in the value arena (every declared one unless some were released).
  Index num_values() const { return m_num_values; }
  /// Number of trainable scalars declared.
  Index num_trainable() const { return m_num_grads; }

  /**
   * @brief Declares every later parameter whose name satisfies `frozen` as frozen, whatever its layer asks
   * (an empty function: no override). Models use it to declare a pretrained backbone without ever
   * allocating its gradients when only adapters train.
   */
  void set_frozen_filter(std::function<bool(const std::string&)> frozen) { m_frozen_if = std::move(frozen); }

  /// Reserves room for `values` scalars (and `grads` gradient scalars) so that declaring a large model does
  /// not grow the arenas by doubling (a doubling copy briefly holds both the old and the new arena: 1.5-2×
  /// the model's memory at the peak). Count them first with a declaration-only store.
  void reserve(Index values, Index grads = 0) {
    if (m_declaring) return;
    m_values.reserve(static_cast<std::size_t>(std::max<Index>(values, 0)));
    m_grads.reserve(static_cast<std::size_t>(std::max<Index>(grads, 0)));
  }

 private:
  static Index last_extent(const Entry& e) { return e.shape.empty() ? 1 : e.shape.back(); }

  // Capacity for `needed` elements, doubling so that n adds cost O(total) copies; no change of contents.
  template <class V>
  static void reserve_geometric(V& v, std::size_t needed) {
    if (needed <= v.capacity()) return;
    const std::size_t doubled = v.capacity() <= v.max_size() / 2 ? 2 * v.capacity() : needed;
    v.reserve(std::max(needed, doubled));
  }

  // Zero-fills the gradient of `id` if it is unwritten since zero_grad (thread-safe).
  void write_zeros_if_unwritten(ParamId id) {
    if (!m_unwritten[id].load(std::memory_order_acquire)) return;
    std::lock_guard<std::mutex> lock(m_unwritten_mutex);
    if (!m_unwritten[id].load(std::memory_order_relaxed)) return;
    const Entry& e = m_entries[id];
    std::fill_n(m_grads.begin() + e.grad_offset, e.size, T(0));
    m_unwritten[id].store(0, std::memory_order_release);
    m_unwritten_count.fetch_sub(1, std::memory_order_acq_rel);
  }
  void write_all_zeros_if_unwritten() {
    if (m_declaring || m_unwritten_count.load(std::memory_order_acquire) == 0) return;
    for (ParamId i = 0; i < m_entries.size(); ++i) write_zeros_if_unwritten(i);
  }

  // Strong guarantee: the only allocation happens before any member changes.
  void relayout_grads(const std::vector<bool>& flags) {
    write_all_zeros_if_unwritten();  // the kept gradients are copied below
    Index total = 0;
    for (std::size_t i = 0; i < m_entries.size(); ++i) total += flags[i] ? m_entries[i].size : 0;
    AlignedVector<T> grads;
    if (!m_declaring) grads.assign(static_cast<std::size_t>(total), T(0));
    Index offset = 0;
    for (std::size_t i = 0; i < m_entries.size(); ++i) {
      Entry& e = m_entries[i];
      if (flags[i]) {
        if (e.trainable && !m_declaring)
          std::copy_n(m_grads.begin() + e.grad_offset, e.size, grads.begin() + offset);
        e.grad_offset = offset;
        offset += e.size;
      } else {
        e.grad_offset = -1;
      }
      e.trainable = flags[i];
    }
    m_grads.swap(grads);
    m_num_grads = total;
  }

  bool m_declaring = false;
  std::vector<Entry> m_entries;
  std::unordered_map<std::string, ParamId> m_index;
  AlignedVector<T> m_values;
  AlignedVector<T> m_grads;
  AlignedVector<T> m_scratch;  ///< declaration-only: the buffer every value()/grad() returns
  std::function<bool(const std::string&)> m_frozen_if;  ///< `set_frozen_filter`
  Index m_num_values = 0;
  Index m_num_grads = 0;
  // zero_grad's lazy zeroing: one flag per entry (1: the gradient is unwritten and reads as zero), their
  // count, and a lock for the slow path (a flag set, so a fill or a first write)
  std::unique_ptr<std::atomic<std::uint8_t>[]> m_unwritten;
  std::size_t m_unwritten_capacity = 0;
  std::atomic<std::size_t> m_unwritten_count{0};
  std::mutex m_unwritten_mutex;
};

/**
 * @brief The parameters `layer` declares under `prefix`, in declaration order, without allocating them.
 *
 * Registers a copy of `layer` (so `layer` itself is untouched) into a declaration-only
 * `ParamStore<Layer::Scalar>` with `Rng(0)`, and returns each parameter's name, shape and trainable flag.
 * Cost: the layer's `register_params` minus the arena (initialisers write into one scratch buffer;
 * those that check `declaring_only()` skip their work).
 */
template <class Layer>
std::vector<ParamInfo> list_params(const Layer& layer, const std::string& prefix) {
  auto store = ParamStore<typename Layer::Scalar>::declaration_only();
  Layer copy = layer;
  Rng rng(0);
  copy.register_params(store, prefix, rng);
  std::vector<ParamInfo> out;
  out.reserve(store.size());
  for (const auto& e : store.entries()) out.push_back(ParamInfo{e.name, e.shape, e.trainable});
  return out;
}

}  // namespace pemoe

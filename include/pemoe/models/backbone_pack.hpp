/// @file backbone_pack.hpp
/// @brief A model's packed frozen backbone (GPT-2, T5): which of its weights are packed for the fast path
/// (core/weight_pack.hpp), in which dtype, and whether their f32 values were released. The one
/// implementation behind every model's `pack_frozen` / `unpack_frozen`.
#pragma once

#include <algorithm>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/weight_pack.hpp"
#include "pemoe/nn/embedding.hpp"
#include "pemoe/nn/linear.hpp"

namespace pemoe {

/**
 * @brief The pack state of a model's frozen backbone.
 *
 * A model lists the weights a pack may take (`Weights`: the base linear of each linear site, an untied head,
 * and the embedding table of a tied head); `pack` packs those that are frozen, in f32 or bf16 (bf16 inputs,
 * f32 accumulation), and with `release_f32` (bf16 only) keeps one plain bf16 copy per weight and drops its
 * f32 values from the store right after it is packed, so that the peak holds the f32 backbone plus one bf16
 * copy, never both backbones. A released tied table's lookup then gathers the head's bf16 rows.
 *
 * Packs are copies: pack after the weights are loaded and the trainable set is final; a model whose weights
 * change (a merge) packs again. Once released, reading, saving, merging or unpacking those weights is a
 * `ConfigError` that says to load the model again.
 */
template <class T>
class BackbonePack {
 public:
  /// The weights of a model a pack may take (only the frozen ones are packed).
  struct Weights {
    std::vector<Linear<T>*> linears;    ///< base linears of the linear sites, and an untied head
    Embedding<T>* tied_head = nullptr;  ///< the token table when the head is tied to it (`Embedding::logits`)
  };

  /// Packs every frozen weight of `w` (see the class comment) and returns the bytes the packs hold.
  /// `ConfigError`, before anything is packed, where packing is unavailable (no oneDNN; bf16 on a CPU
  /// without bf16 units: use f32 there), for `release_f32` with f32, and when the backbone is already
  /// bf16-only. `model` names the model in messages.
  std::size_t pack(const std::string& model, ParamStore<T>* store, const Weights& w, PackDtype dtype,
                   bool release_f32) {
    PEMOE_CHECK_CONFIG(!release_f32 || dtype == PackDtype::bf16, model,
                       ": release_f32 needs a bf16 pack (an f32 pack is as large as the weight it copies)");
    PEMOE_CHECK_CONFIG(store != nullptr, model,
                       ": pack_frozen() after register_params() and loading weights");
    PEMOE_CHECK_CONFIG(!m_released, model,
                       ": the backbone is already bf16-only (pack_frozen(bf16, release_f32))");
    std::string why;
    PEMOE_CHECK_CONFIG(weight_pack_available<T>(dtype, &why), model, ": cannot pack the frozen backbone as ",
                       pack_dtype_name(dtype), ": ", why);
    const PackLayout layout = release_f32 ? PackLayout::single : PackLayout::blocked;
    // Each weight's f32 values go right after its pack is made. Taken in reverse declaration order, each
    // release compacts only the small values declared after the weight (biases, norms, adapters).
    struct Item {
      ParamId id;
      Linear<T>* linear;
      Embedding<T>* table;
    };
    std::vector<Item> items;
    for (Linear<T>* l : w.linears)
      if (l && !store->trainable(l->weight_id())) items.push_back({l->weight_id(), l, nullptr});
    if (w.tied_head && !store->trainable(w.tied_head->weight_id()))
      items.push_back({w.tied_head->weight_id(), nullptr, w.tied_head});
    std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.id > b.id; });
    std::size_t bytes = 0;
    for (const Item& it : items) {
      if (it.linear) {
        it.linear->pack(dtype, layout);
        bytes += it.linear->packed()->bytes();
      } else {
        it.table->pack_head(dtype, layout);
        bytes += it.table->head_packed()->bytes();
      }
      if (release_f32) {
        const std::string& name = store->entry(it.id).name;
        store->release_values_if([&](const auto& e) { return e.name == name; });
      }
    }
    m_dtype = dtype;
    m_released = release_f32;
    return bytes;
  }

  /// Drops every pack of `w` (products read the weights in the store again); `ConfigError` once the f32
  /// values were released.
  void unpack(const std::string& model, const Weights& w) {
    PEMOE_CHECK_CONFIG(!m_released, model,
                       ": the f32 backbone was released by pack_frozen(bf16, release_f32): the packs are all "
                       "that is left; load the model again to unpack");
    for (Linear<T>* l : w.linears)
      if (l) l->unpack();
    if (w.tied_head) w.tied_head->unpack_head();
    m_dtype.reset();
  }

  /// `ConfigError` naming `action` when the f32 backbone was released (`action` needs it).
  void require_f32(const std::string& model, const std::string& action) const {
    PEMOE_CHECK_CONFIG(
        !m_released, model, ": ", action,
        " needs the f32 backbone, which pack_frozen(bf16, release_f32) dropped; load the model "
        "again without release_f32");
  }

  /// The dtype of the packs, if packed.
  std::optional<PackDtype> dtype() const { return m_dtype; }

 private:
  std::optional<PackDtype> m_dtype;
  bool m_released = false;
};

}  // namespace pemoe

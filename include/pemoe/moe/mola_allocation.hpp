/// @file mola_allocation.hpp
/// @brief MoLA layer-wise expert allocation (Gao et al. 2024, arXiv 2402.08562): per-layer (E, k, r), the
/// shape presets ▽ △ ⋈ ✸ □, and trainable-parameter counts computed from shapes alone.
#pragma once

#include <array>
#include <cctype>
#include <string>
#include <vector>

#include "pemoe/core/config.hpp"
#include "pemoe/core/error.hpp"

namespace pemoe {

/// Experts, top-k and rank of one layer's adapted linears.
struct LayerExperts {
  Index n_experts = 1;  ///< E_ℓ
  Index top_k = 1;      ///< k_ℓ (≤ E_ℓ)
  Index r = 8;          ///< rank of every expert of the layer
  bool operator==(const LayerExperts& o) const {
    return n_experts == o.n_experts && top_k == o.top_k && r == o.r;
  }
};

/**
 * @brief MoLA's allocation shapes: experts per group of layers (4 equal groups, bottom to top), spec §2.4.
 * The sum-20 defaults: ▽ 2468 (inverted triangle, the paper's best on LLaMA-2), △ 8642 (triangle),
 * ⋈ 8228 (hourglass), ✸ 2882 (diamond), □ 5555 (rectangle).
 */
enum class MolaShape { inverted_triangle, triangle, hourglass, diamond, rectangle };

/// The four group values of a preset: ▽ {2,4,6,8}, △ {8,6,4,2}, ⋈ {8,2,2,8}, ✸ {2,8,8,2}, □ {5,5,5,5}.
inline std::array<Index, 4> mola_groups(MolaShape shape) {
  switch (shape) {
    case MolaShape::inverted_triangle:
      return {2, 4, 6, 8};
    case MolaShape::triangle:
      return {8, 6, 4, 2};
    case MolaShape::hourglass:
      return {8, 2, 2, 8};
    case MolaShape::diamond:
      return {2, 8, 8, 2};
    case MolaShape::rectangle:
      return {5, 5, 5, 5};
  }
  return {5, 5, 5, 5};
}

/**
 * @brief Per-layer allocation for `n_layers` layers from 4 group values: layer ℓ (0-based) is in group
 * ⌊4ℓ / L⌋, so for L divisible by 4 each group has L/4 layers (12 layers, ▽: 2,2,2,4,4,4,6,6,6,8,8,8), and
 * otherwise the groups differ by at most one layer. Every layer gets `top_k` (clamped to its E) and `r`.
 */
inline std::vector<LayerExperts> mola_allocation(const std::array<Index, 4>& groups, Index n_layers,
                                                 Index top_k = 2, Index r = 8) {
  PEMOE_CHECK_CONFIG(n_layers > 0, "mola_allocation: n_layers must be positive, got ", n_layers);
  PEMOE_CHECK_CONFIG(top_k > 0 && r > 0, "mola_allocation: top_k and r must be positive");
  std::vector<LayerExperts> out(static_cast<std::size_t>(n_layers));
  for (Index l = 0; l < n_layers; ++l) {
    const Index e = groups[static_cast<std::size_t>(4 * l / n_layers)];
    PEMOE_CHECK_CONFIG(e > 0, "mola_allocation: group ", 4 * l / n_layers, " has ", e, " experts");
    out[static_cast<std::size_t>(l)] = LayerExperts{e, top_k < e ? top_k : e, r};
  }
  return out;
}

/// Allocation of a named preset.
inline std::vector<LayerExperts> mola_allocation(MolaShape shape, Index n_layers, Index top_k = 2,
                                                 Index r = 8) {
  return mola_allocation(mola_groups(shape), n_layers, top_k, r);
}

/// Allocation from a 4-digit string such as "2468" or "8228" (each digit one group's E).
inline std::vector<LayerExperts> mola_allocation(const std::string& digits, Index n_layers, Index top_k = 2,
                                                 Index r = 8) {
  PEMOE_CHECK_CONFIG(digits.size() == 4, "mola_allocation: expected 4 digits like \"2468\", got \"", digits,
                     "\"");
  std::array<Index, 4> g{};
  for (std::size_t i = 0; i < 4; ++i) {
    PEMOE_CHECK_CONFIG(std::isdigit(static_cast<unsigned char>(digits[i])) && digits[i] != '0',
                       "mola_allocation: \"", digits, "\" must be 4 digits 1-9");
    g[i] = digits[i] - '0';
  }
  return mola_allocation(g, n_layers, top_k, r);
}

/// Per-layer vectors given explicitly (MoLA's `--number_experts`, `--top_k`, `--lora_r`, one value per
/// layer).
inline std::vector<LayerExperts> mola_allocation(const std::vector<Index>& n_experts,
                                                 const std::vector<Index>& top_k,
                                                 const std::vector<Index>& r) {
  PEMOE_CHECK_CONFIG(n_experts.size() == top_k.size() && n_experts.size() == r.size(),
                     "mola_allocation: per-layer vectors differ in length: experts ", n_experts.size(),
                     ", top_k ", top_k.size(), ", r ", r.size());
  std::vector<LayerExperts> out(n_experts.size());
  for (std::size_t l = 0; l < out.size(); ++l) {
    PEMOE_CHECK_CONFIG(n_experts[l] > 0 && top_k[l] > 0 && top_k[l] <= n_experts[l] && r[l] > 0,
                       "mola_allocation: layer ", l, " has E=", n_experts[l], " k=", top_k[l], " r=", r[l],
                       " (need 1 <= k <= E, r >= 1)");
    out[l] = LayerExperts{n_experts[l], top_k[l], r[l]};
  }
  return out;
}

/// (d_in, d_out) of one adapted linear of a layer.
struct LinearShape {
  Index d_in = 0;   ///< input features
  Index d_out = 0;  ///< output features
};

/// The 7 adapted linears of a LLaMA layer (q, k, v, o, gate, up, down) for width d and FFN width d_ff
/// (LLaMA-2-7B: 4096, 11008).
inline std::vector<LinearShape> llama_linear_shapes(Index d = 4096, Index d_ff = 11008) {
  return {{d, d}, {d, d}, {d, d}, {d, d}, {d, d_ff}, {d, d_ff}, {d_ff, d}};
}

/// Trainable parameters of E rank-r LoRA experts and their router on one linear:
/// E·r·(d_in + d_out) + (router ? E·d_in : 0).
inline Index lora_experts_params(const LinearShape& s, Index n_experts, Index r, bool router = true) {
  return n_experts * r * (s.d_in + s.d_out) + (router ? n_experts * s.d_in : 0);
}

/**
 * @brief Trainable parameters of a MoLA model from shapes alone: Σ_layers Σ_modules E_ℓ·r_ℓ·(d_in + d_out)
 * + E_ℓ·d_in (routers). LLaMA-2-7B (`llama_linear_shapes()`, 32 layers): any sum-20 preset 105,635,840;
 * 8888: 169,017,344 (MoLA Table 1). A plain LoRA of rank r is E = 1 without router
 * (`lora_params`: r 64 → 159,907,840).
 */
inline Index mola_params(const std::vector<LayerExperts>& layers, const std::vector<LinearShape>& modules,
                         bool routers = true) {
  Index total = 0;
  for (const auto& l : layers)
    for (const auto& m : modules) total += lora_experts_params(m, l.n_experts, l.r, routers);
  return total;
}

/// Trainable parameters of a plain LoRA of rank r on `modules` in each of `n_layers` layers.
inline Index lora_params(Index n_layers, const std::vector<LinearShape>& modules, Index r) {
  Index total = 0;
  for (const auto& m : modules) total += r * (m.d_in + m.d_out);
  return total * n_layers;
}

}  // namespace pemoe

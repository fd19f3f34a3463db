// The routing report of a GPT-2 with MoE adapters, for the examples and `pemoe train` / `pemoe eval`: which
// experts each task family uses (routing.csv/.png: task × expert mean routing probability of every layer's
// first MLP router) and how evenly each of those routers spreads the tokens (expert_load.csv/.png: the share
// of the top-k selections, or the mean probability for a soft router, averaged over the families).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "pemoe/data/packing.hpp"
#include "pemoe/models/gpt2.hpp"
#include "pemoe/models/lm_eval.hpp"
#include "pemoe/train/trainer.hpp"  // expert_load
#include "plot/plot.hpp"

namespace pemoe::plot {

/// "L<layer> <site>" for a GPT-2 router name: the site as qkv, o (attention), fc, proj (MLP), ffn (MPOE).
inline std::string short_router_name(const std::string& name) {
  const std::string prefix = "transformer.h.";
  const std::string rest = name.compare(0, prefix.size(), prefix) == 0 ? name.substr(prefix.size()) : name;
  const std::string layer = rest.substr(0, rest.find('.')), site = rest.substr(rest.find('.') + 1);
  const std::map<std::string, std::string> site_names = {{"attn.c_attn", "qkv"},
                                                         {"attn.c_proj", "o"},
                                                         {"mlp.c_fc", "fc"},
                                                         {"mlp.c_proj", "proj"},
                                                         {"mlp.mpoe", "ffn"}};
  return "L" + layer + " " + (site_names.count(site) ? site_names.at(site) : site);
}

/**
 * @brief Writes `dir`/routing.{csv,png} and `dir`/expert_load.{csv,png} for `gpt` (switched to inference
 * mode) on the examples of each family: `examples[k]` are family `families[k]`'s tokenised examples, run as
 * one batch right-padded with `pad_id` (padding excluded). `title` starts the plots' titles. Does nothing for
 * a model without routers; returns whether it wrote.
 */
inline bool write_routing_report(GPT2<float>& gpt, const std::vector<std::string>& families,
                                 const std::vector<std::vector<TokenizedExample>>& examples,
                                 std::int64_t pad_id, const std::string& dir, const std::string& title) {
  const auto routers = gpt.routers();
  if (routers.empty() || families.empty()) return false;
  gpt.set_training(false);
  std::vector<std::string> short_names;
  for (const auto& r : routers) short_names.push_back(short_router_name(r.first));
  // One router per layer: its first MLP router (c_fc, or the MLP's c_proj, or MPOE's).
  std::vector<std::size_t> shown;
  std::set<std::string> layers_done;
  for (std::size_t i = 0; i < routers.size(); ++i)
    if (routers[i].first.find(".mlp.") != std::string::npos &&
        layers_done.insert(short_names[i].substr(0, short_names[i].find(' '))).second)
      shown.push_back(i);
  if (shown.empty()) return false;
  std::vector<double> heat;
  std::vector<std::string> col_names;
  std::vector<std::vector<double>> load(routers.size());
  GPT2<float>::Cache cache;
  std::size_t rows = 0;
  std::vector<std::string> row_names;
  for (std::size_t k = 0; k < families.size(); ++k) {
    if (examples[k].empty()) continue;
    forward_batch(gpt, pad_batch(examples[k], 0, pad_id), cache);
    const auto mean = mean_routing(gpt, cache);
    const auto caches = gpt.router_caches(cache);
    for (std::size_t i : shown) {
      heat.insert(heat.end(), mean[i].begin(), mean[i].end());
      for (std::size_t e = 0; rows == 0 && e < mean[i].size(); ++e)
        col_names.push_back(short_names[i] + " e" + std::to_string(e));
      const bool top_k_routed = routers[i].second->config().mode != GateMode::soft;
      const std::vector<double> l = top_k_routed ? expert_load(*routers[i].second, *caches[i]) : mean[i];
      load[i].resize(l.size());
      for (std::size_t e = 0; e < l.size(); ++e) load[i][e] += l[e];
    }
    row_names.push_back(families[k]);
    ++rows;
  }
  if (rows == 0) return false;
  HeatmapOptions ho;
  ho.title = title + ": mean routing probability per task family (each layer's MLP router)";
  ho.row_label = "task";
  ho.col_label = "router, expert";
  ho.row_names = row_names;
  ho.col_names = col_names;
  plot_heatmap(dir + "/routing", heat, int(rows), int(col_names.size()), ho);
  std::vector<std::string> labels;
  std::vector<double> values;
  for (std::size_t i : shown)
    for (std::size_t e = 0; e < load[i].size(); ++e) {
      labels.push_back(short_names[i] + " e" + std::to_string(e));
      values.push_back(load[i][e] / double(rows));
    }
  BarPlotOptions bo;
  bo.title = title +
             ": expert load of each layer's MLP router on the eval data (top-k: share of the selections; "
             "soft: mean probability)";
  bo.x_label = "layer, expert";
  bo.y_label = "share of the tokens";
  plot_bars(dir + "/expert_load", labels, values, bo);
  return true;
}

}  // namespace pemoe::plot

// The routing report of a GPT-2 or a T5 with MoE adapters, for the examples and `pemoe train` / `pemoe eval`:
// which experts each task family uses (routing.csv/.png: task × expert mean routing probability of one
// feed-forward router per layer) and how evenly each of those routers spreads the tokens
// (expert_load.csv/.png: the share of the top-k selections, or the mean probability for a soft router,
// averaged over the families).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "pemoe/data/packing.hpp"
#include "pemoe/data/seq2seq.hpp"
#include "pemoe/models/gpt2.hpp"
#include "pemoe/models/lm_eval.hpp"
#include "pemoe/models/t5.hpp"
#include "pemoe/models/t5_eval.hpp"
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

/// The routing statistics of one router shown in a report, for each family: mean probabilities and load.
struct ShownRouter {
  std::string label;                      ///< e.g. "L3 fc" (GPT-2), "dec 1 ff" (T5)
  std::vector<std::vector<double>> mean;  ///< [family][expert] mean routing probability
  std::vector<std::vector<double>> load;  ///< [family][expert] share of the selections (or mean, soft)
};

/**
 * @brief Writes `dir`/routing.{csv,png} (family × (router, expert) mean routing probability) and
 * `dir`/expert_load.{csv,png} (each router's load averaged over the families). `which` says which routers
 * are shown (e.g. "each layer's MLP router"); `title` starts the plots' titles.
 */
inline void write_routing_plots(const std::vector<ShownRouter>& shown,
                                const std::vector<std::string>& families, const std::string& which,
                                const std::string& dir, const std::string& title) {
  std::vector<double> heat;
  std::vector<std::string> col_names;
  for (const ShownRouter& r : shown)
    for (std::size_t e = 0; e < r.mean.front().size(); ++e)
      col_names.push_back(r.label + " e" + std::to_string(e));
  for (std::size_t k = 0; k < families.size(); ++k)
    for (const ShownRouter& r : shown) heat.insert(heat.end(), r.mean[k].begin(), r.mean[k].end());
  HeatmapOptions ho;
  ho.title = title + ": mean routing probability per task family (" + which + ")";
  ho.row_label = "task";
  ho.col_label = "router, expert";
  ho.row_names = families;
  ho.col_names = col_names;
  plot_heatmap(dir + "/routing", heat, int(families.size()), int(col_names.size()), ho);
  std::vector<std::string> labels;
  std::vector<double> values;
  for (const ShownRouter& r : shown)
    for (std::size_t e = 0; e < r.load.front().size(); ++e) {
      double sum = 0;
      for (const auto& family : r.load) sum += family[e];
      labels.push_back(r.label + " e" + std::to_string(e));
      values.push_back(sum / double(r.load.size()));
    }
  BarPlotOptions bo;
  bo.title = title + ": expert load of " + which +
             " on the eval data (top-k: share of the selections; soft: mean probability)";
  bo.x_label = "router, expert";
  bo.y_label = "share of the tokens";
  plot_bars(dir + "/expert_load", labels, values, bo);
}

/// Adds one family's statistics from a forward's router caches to `shown` (`index[i]`: the position in
/// `routers` / `caches` of `shown[i]`).
template <class Routers, class Caches>
void add_family_routing(std::vector<ShownRouter>& shown, const std::vector<std::size_t>& index,
                        const Routers& routers, const Caches& caches) {
  for (std::size_t i = 0; i < shown.size(); ++i) {
    const auto& router = *routers[index[i]];
    const auto& cache = *caches[index[i]];
    std::vector<double> mean = std::decay_t<decltype(router)>::mean_probs(cache);
    shown[i].load.push_back(router.config().mode != GateMode::soft ? expert_load(router, cache) : mean);
    shown[i].mean.push_back(std::move(mean));
  }
}

/**
 * @brief Writes `dir`/routing.{csv,png} and `dir`/expert_load.{csv,png} for `gpt` (switched to inference
 * mode) on the examples of each family: `examples[k]` are family `families[k]`'s tokenised examples, run as
 * one batch right-padded with `pad_id` (padding excluded). One router per layer is shown: its first MLP
 * router. Does nothing for a model without routers; returns whether it wrote.
 */
inline bool write_routing_report(GPT2<float>& gpt, const std::vector<std::string>& families,
                                 const std::vector<std::vector<TokenizedExample>>& examples,
                                 std::int64_t pad_id, const std::string& dir, const std::string& title) {
  const auto named = gpt.routers();
  std::vector<std::size_t> index;
  std::vector<ShownRouter> shown;
  std::set<std::string> layers_done;
  for (std::size_t i = 0; i < named.size(); ++i) {
    const std::string label = short_router_name(named[i].first);
    if (named[i].first.find(".mlp.") != std::string::npos &&
        layers_done.insert(label.substr(0, label.find(' '))).second) {
      index.push_back(i);
      shown.push_back({label, {}, {}});
    }
  }
  if (shown.empty()) return false;
  std::vector<Router<float>*> routers;
  for (const auto& [name, r] : named) routers.push_back(r);
  gpt.set_training(false);
  GPT2<float>::Cache cache;
  std::vector<std::string> rows;
  for (std::size_t k = 0; k < families.size() && k < examples.size(); ++k) {
    if (examples[k].empty()) continue;
    forward_batch(gpt, pad_batch(examples[k], 0, pad_id), cache);
    add_family_routing(shown, index, routers, gpt.router_caches(cache));
    rows.push_back(families[k]);
  }
  if (rows.empty()) return false;
  write_routing_plots(shown, rows, "each layer's MLP router", dir, title);
  return true;
}

/**
 * @brief The same report for a T5 (switched to inference mode): `pairs[k]` are family `families[k]`'s
 * source–target pairs, run as one batch padded with `pad_id`. One router per block is shown: the first
 * router of its feed-forward (wi_0's for MoLoRA, the intermediate activation's for MoV), labelled
 * "enc <i> ff" / "dec <i> ff". Returns whether it wrote (false without feed-forward routers).
 */
template <class T>
bool write_routing_report(T5<T>& t5, const std::vector<std::string>& families,
                          const std::vector<std::vector<Seq2SeqExample>>& pairs, std::int64_t pad_id,
                          const std::string& dir, const std::string& title) {
  const auto named = t5.named_routers();
  std::vector<std::size_t> index;
  std::vector<ShownRouter> shown;
  std::set<std::string> blocks_done;
  for (std::size_t i = 0; i < named.size(); ++i) {
    const std::string& name = named[i].first;
    if (name.find(".DenseReluDense.") == std::string::npos) continue;
    const bool enc = name.rfind("encoder.", 0) == 0;
    const std::string prefix = enc ? "encoder.block." : "decoder.block.";
    const std::string block = name.substr(prefix.size(), name.find('.', prefix.size()) - prefix.size());
    const std::string label = (enc ? "enc " : "dec ") + block + " ff";
    if (blocks_done.insert(label).second) {
      index.push_back(i);
      shown.push_back({label, {}, {}});
    }
  }
  if (shown.empty()) return false;
  std::vector<Router<T>*> routers;
  for (const auto& [name, r] : named) routers.push_back(r);
  t5.set_training(false);
  typename T5<T>::Cache cache;
  std::vector<std::string> rows;
  for (std::size_t k = 0; k < families.size() && k < pairs.size(); ++k) {
    if (pairs[k].empty()) continue;
    forward_batch(t5, pad_seq2seq(pairs[k], pad_id), cache);
    add_family_routing(shown, index, routers, t5.router_caches(cache));
    rows.push_back(families[k]);
  }
  if (rows.empty()) return false;
  write_routing_plots(shown, rows, "each block's feed-forward router", dir, title);
  return true;
}

}  // namespace pemoe::plot

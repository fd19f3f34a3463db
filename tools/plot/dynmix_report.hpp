// Dynamic data mixing's report for `pemoe train` and the examples: the dataset weights over training
// (mixing_weights.csv/.png, a step plot: an interval's weights hold until the next update) and, for a model
// with routers, the pairwise gate-load distances of the datasets at the end (gate_load_distance.csv/.png).
#pragma once

#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/data/dynmix.hpp"
#include "pemoe/models/dynmix_round.hpp"
#include "plot/plot.hpp"

namespace pemoe::plot {

/// Writes the report into `dir`: `rows` are (step, weights) from the start and after every update, `steps`
/// the length of the run; the distances are measured now on `probes` (the model ends in inference mode).
inline void write_mixing_report(GPT2<float>& gpt, const DataMixer& mixer, const MixingProbes& probes,
                                const std::vector<std::pair<long, std::vector<double>>>& rows, long steps,
                                const std::string& dir) {
  const auto& names = mixer.names();
  // Step plot: the weights of an interval hold until the next update.
  std::vector<PlotSeries> series;
  for (std::size_t k = 0; k < names.size(); ++k) {
    PlotSeries s{names[k], {}, {}};
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const double end = r + 1 < rows.size() ? double(rows[r + 1].first) : double(steps);
      s.x.insert(s.x.end(), {double(rows[r].first), end});
      s.y.insert(s.y.end(), {rows[r].second[k], rows[r].second[k]});
    }
    series.push_back(s);
  }
  LinePlotOptions po;
  po.title =
      std::string("dataset weights over training (") + MixingConfig::policy_name(mixer.config().policy) + ")";
  po.x_label = "step";
  po.y_label = "sampling weight";
  plot_lines(dir + "/mixing_weights", series, po);
  // The table (written after the plot, whose own CSV of the same name it replaces): step, one column a
  // dataset.
  {
    std::ofstream csv(dir + "/mixing_weights.csv");
    csv << "step";
    for (const auto& n : names) csv << "," << n;
    csv << "\n";
    csv.precision(17);
    for (const auto& [step, w] : rows) {
      csv << step;
      for (const double x : w) csv << "," << x;
      csv << "\n";
    }
  }
  if (gpt.routers().empty()) return;
  // The routers' view of the datasets at the end: pairwise distances of their gate-load representations.
  GateLoadRecorder rec = mixer.make_recorder();
  record_probe_gate_loads(gpt, probes, rec);
  gpt.set_training(false);
  const std::vector<double> dist =
      gate_load_distances(rec, mixer.selected_layers(rec.num_layers()), mixer.config().distance);
  HeatmapOptions ho;
  ho.title = "gate-load distance between datasets at the end of training";
  ho.row_label = "dataset";
  ho.col_label = "dataset";
  ho.row_names = names;
  ho.col_names = names;
  plot_heatmap(dir + "/gate_load_distance", dist, int(names.size()), int(names.size()), ho);
}

}  // namespace pemoe::plot

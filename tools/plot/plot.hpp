/// @file plot.hpp
/// @brief Line plots (loss curves), heatmaps (routing probabilities, expert load per layer) and bar charts
/// (expert load) for pemoe's tools and examples: every plot is written as CSV (the data, always) and as a
/// compressed PNG (libpng). Library `pemoe_plot`; not part of the header-only library.
///
/// Text in the images uses a built-in 5×7 pixel font (digits, letters shown upper-case, common
/// punctuation). Sizes are checked before any image is allocated (`RgbImage`). A title wider than the
/// image is broken onto a second line at a space (the plot moves down; line plots and bar charts keep
/// their image size, a heatmap's image grows), and what still does not fit ends in "...".
#pragma once

#include <string>
#include <vector>

#include "plot/image.hpp"

namespace pemoe::plot {

/// One curve of a line plot.
struct PlotSeries {
  std::string label;
  std::vector<double> x, y;  ///< same length; non-finite points are skipped in the PNG (kept in the CSV)
};

/// Options of `plot_lines`.
struct LinePlotOptions {
  std::string title, x_label, y_label;
  bool log_y = false;  ///< logarithmic y axis (points ≤ 0 are skipped in the PNG)
  int width = 800;     ///< image width in pixels, at least 200
  int height = 500;    ///< image height in pixels, at least 150
};

/// Options of `plot_heatmap`.
struct HeatmapOptions {
  std::string title, row_label, col_label;
  int cell = 0;  ///< pixel size of a cell; 0 chooses one that fits ~600 px (4..48)
  /// Names of the rows (e.g. tasks), drawn right-aligned left of the rows; the left margin grows to fit
  /// the longest (names longer than 20 characters are drawn as 19 and a '.'). Empty: the row indices.
  std::vector<std::string> row_names;
  /// Names of the columns (e.g. experts), drawn under the columns: horizontally when they fit, else
  /// rotated (reading bottom-up, shortened like the row names; the bottom margin grows), every k-th one
  /// when even that does not fit. Empty: the column indices, horizontally, every k-th one.
  std::vector<std::string> col_names;
};

/// Options of `plot_bars`. Labels longer than 20 characters are drawn as 19 and a '.'; when they do not
/// fit under their bars side by side they are drawn rotated (reading bottom-up; the bars get shorter to
/// make room), and only every k-th one (k the smallest that fits) when even that does not fit.
struct BarPlotOptions {
  std::string title, x_label, y_label;
  int width = 800;   ///< image width in pixels, at least 200
  int height = 500;  ///< image height in pixels, at least 150
};

/// The two files a plot function wrote.
struct PlotFiles {
  std::string csv;  ///< the data
  std::string png;  ///< the picture
};

/**
 * @brief Writes a line plot of `series` (e.g. training and validation loss against the step):
 * `stem.csv` with the columns `series,x,y` (one row a point) and `stem.png`. Axes get "nice" ticks;
 * with `log_y` the y axis is logarithmic. A `stem` ending in ".png" or ".csv" loses that extension.
 * Throws `pemoe::ConfigError` for series of unequal length, when no series has a point to draw, or for an
 * image size out of range, `pemoe::IoError` when a file cannot be written. O(points + pixels).
 */
PlotFiles plot_lines(const std::string& stem, const std::vector<PlotSeries>& series,
                     const LinePlotOptions& options = {});

/**
 * @brief Writes `values` (rows × cols, row-major; e.g. layers × experts of routing probability or load)
 * as `stem.csv` and as a heatmap `stem.png` with a colour bar giving the value range; non-finite
 * cells are grey.
 *
 * The CSV has a header row (`row_label`, or "row" when empty, then one field per column: its name from
 * `col_names`, or its index), then one line per row: its name from `row_names` (or its index) and its
 * values. Names are written in full and quoted when they hold a comma, a quote or a line break.
 * Throws `pemoe::ConfigError` when the values do not fill the cells, when `row_names` or `col_names` is
 * non-empty and does not hold one name per row or column, or when the image would exceed `RgbImage`'s
 * limits; `pemoe::IoError` when a file cannot be written.
 */
PlotFiles plot_heatmap(const std::string& stem, const std::vector<double>& values, int rows, int cols,
                       const HeatmapOptions& options = {});

/**
 * @brief Writes a bar chart of `values` (e.g. the fraction of tokens routed to each expert) with one bar
 * per label: `stem.csv` (columns `label,value`) and `stem.png`. Bars start at 0, so negative values
 * point down. Throws `pemoe::ConfigError` when labels and values differ in number, there is nothing or
 * nothing finite to draw, or the image size is out of range; `pemoe::IoError` when a file cannot be written.
 */
PlotFiles plot_bars(const std::string& stem, const std::vector<std::string>& labels,
                    const std::vector<double>& values, const BarPlotOptions& options = {});

/// The colour map of the heatmaps (an approximation of viridis) at t in [0, 1] (clamped; NaN gives 0).
Rgb colormap(double t);

/// The colour of the i-th series of a line plot (and of the bars), from a palette of 8.
Rgb series_color(std::size_t i);

}  // namespace pemoe::plot

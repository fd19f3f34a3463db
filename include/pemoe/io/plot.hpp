/// @file plot.hpp
/// @brief Line plots (loss curves) and heatmaps (routing, expert load) written as PNG, no dependency.
///
/// Text uses a built-in 5×7 pixel font (digits, letters shown upper-case, common punctuation).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/io/png.hpp"

namespace pemoe {

/// One curve of a line plot.
struct PlotSeries {
  std::string label;
  std::vector<double> x, y;  ///< same length; non-finite points are skipped
};

/// Options of `plot_lines`.
struct LinePlotOptions {
  std::string title, x_label, y_label;
  bool log_y = false;  ///< logarithmic y axis (points ≤ 0 are skipped)
  int width = 800, height = 500;
};

/// Options of `plot_heatmap`.
struct HeatmapOptions {
  std::string title, row_label, col_label;
  int cell = 0;  ///< pixel size of a cell; 0 chooses one that fits ~700 px
};

namespace detail {

inline const std::map<char, std::array<std::uint8_t, 7>>& font5x7() {
  static const std::map<char, std::array<std::uint8_t, 7>> font = {
      {' ', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}}, {'#', {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A}},
      {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}}, {'\'', {0x04, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00}},
      {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}}, {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
      {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}}, {',', {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}},
      {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}}, {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}},
      {'/', {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00}}, {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}},
      {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}},
      {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}}, {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}},
      {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}}, {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}},
      {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}}, {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}},
      {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}}, {':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}},
      {'<', {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02}}, {'=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00}},
      {'>', {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08}}, {'?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}},
      {'A', {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}}, {'B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}},
      {'C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}}, {'D', {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}},
      {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}}, {'F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}},
      {'G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}}, {'H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
      {'I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}}, {'J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}},
      {'K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}}, {'L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}},
      {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}}, {'N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}},
      {'O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}},
      {'Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}}, {'R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}},
      {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}}, {'T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
      {'U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}}, {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}},
      {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}}, {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}},
      {'Y', {0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04}}, {'Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}},
      {'[', {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E}}, {']', {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E}},
      {'_', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F}},
  };
  return font;
}

/// Pixel width of `text` at `scale`.
inline int text_width(const std::string& text, int scale = 1) {
  return int(text.size()) * 6 * scale;
}

/// The 5×7 bitmap of `ch` (rows top to bottom, bit 4 = left column); lower case is drawn upper case and
/// unknown characters as '?'.
inline const std::array<std::uint8_t, 7>& glyph(char ch) {
  const auto& font = font5x7();
  auto it = font.find((ch >= 'a' && ch <= 'z') ? char(ch - 'a' + 'A') : ch);
  return it != font.end() ? it->second : font.at('?');
}

/// Draws `text` with its top-left corner at (x, y).
inline void draw_text(RgbImage& img, int x, int y, const std::string& text, Rgb c = {0, 0, 0},
                      int scale = 1) {
  for (char ch : text) {
    const auto& bits = glyph(ch);
    for (int row = 0; row < 7; ++row)
      for (int col = 0; col < 5; ++col)
        if (bits[std::size_t(row)] & (0x10 >> col))
          img.fill_rect(x + col * scale, y + row * scale, x + (col + 1) * scale, y + (row + 1) * scale, c);
    x += 6 * scale;
  }
}

/// Draws `text` rotated by 90° (reading bottom-up), its bottom-left corner at (x, y).
inline void draw_text_vertical(RgbImage& img, int x, int y, const std::string& text, Rgb c = {0, 0, 0}) {
  for (char ch : text) {
    const auto& bits = glyph(ch);
    for (int row = 0; row < 7; ++row)
      for (int col = 0; col < 5; ++col)
        if (bits[std::size_t(row)] & (0x10 >> col)) img.set(x + row, y - col, c);
    y -= 6;
  }
}

/// A line of thickness ~2 px from (x0, y0) to (x1, y1) (Bresenham).
inline void draw_line(RgbImage& img, int x0, int y0, int x1, int y1, Rgb c, bool thick = true) {
  const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
  const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  int err = dx + dy;
  while (true) {
    img.set(x0, y0, c);
    if (thick) {
      img.set(x0 + 1, y0, c);
      img.set(x0, y0 + 1, c);
    }
    if (x0 == x1 && y0 == y1) break;
    const int e2 = 2 * err;
    if (e2 >= dy) {
      err += dy;
      x0 += sx;
    }
    if (e2 <= dx) {
      err += dx;
      y0 += sy;
    }
  }
}

/// "Nice" tick positions covering [lo, hi] (steps of 1, 2 or 5 × 10^k).
inline std::vector<double> nice_ticks(double lo, double hi, int target = 6) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double step = raw / mag < 1.5   ? mag
                      : raw / mag < 3.5 ? 2 * mag
                      : raw / mag < 7.5 ? 5 * mag
                                        : 10 * mag;
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step) * step; t <= hi + 1e-9 * step; t += step)
    ticks.push_back(std::abs(t) < 1e-12 * step ? 0.0 : t);
  return ticks;
}

/// Short label of a number: "0.25", "1.5e-03", "12000".
inline std::string format_number(double v) {
  char buf[32];
  const double a = std::abs(v);
  if (a != 0 && (a < 1e-3 || a >= 1e6))
    std::snprintf(buf, sizeof buf, "%.1e", v);
  else
    std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

/// Perceptually ordered colour map (an approximation of viridis) for t in [0, 1].
inline Rgb colormap(double t) {
  static const double stops[6][3] = {{68, 1, 84},    {65, 68, 135},  {42, 120, 142},
                                     {34, 168, 132}, {122, 209, 81}, {253, 231, 37}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 5.0;
  const int i = std::min(4, int(t));
  const double f = t - i;
  auto mix = [&](int ch) { return std::uint8_t(std::lround(stops[i][ch] * (1 - f) + stops[i + 1][ch] * f)); };
  return {mix(0), mix(1), mix(2)};
}

/// Distinct colours for line series.
inline Rgb series_color(std::size_t i) {
  static const Rgb palette[] = {{31, 119, 180},  {255, 127, 14}, {44, 160, 44},   {214, 39, 40},
                                {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127}};
  return palette[i % 8];
}

}  // namespace detail

/**
 * @brief Writes a line plot of `series` (e.g. training and validation loss against the step) as a PNG.
 * Axes get "nice" ticks; with `log_y` the y axis is logarithmic. Throws `ConfigError` when no series has
 * a finite point, `IoError` when the file cannot be written.
 */
inline void plot_lines(const std::string& path, const std::vector<PlotSeries>& series,
                       const LinePlotOptions& opt = {}) {
  const double inf = std::numeric_limits<double>::infinity();
  double xmin = inf, xmax = -inf, ymin = inf, ymax = -inf;
  auto ty = [&](double y) { return opt.log_y ? std::log10(y) : y; };
  auto usable = [&](double x, double y) {
    return std::isfinite(x) && std::isfinite(y) && (!opt.log_y || y > 0);
  };
  for (const auto& s : series) {
    PEMOE_CHECK_CONFIG(s.x.size() == s.y.size(), "plot_lines: series '", s.label, "' has ", s.x.size(),
                       " x and ", s.y.size(), " y values");
    for (std::size_t i = 0; i < s.x.size(); ++i)
      if (usable(s.x[i], s.y[i])) {
        xmin = std::min(xmin, s.x[i]);
        xmax = std::max(xmax, s.x[i]);
        ymin = std::min(ymin, ty(s.y[i]));
        ymax = std::max(ymax, ty(s.y[i]));
      }
  }
  PEMOE_CHECK_CONFIG(xmin <= xmax, "plot_lines: nothing to plot in '", path, "' (no finite point",
                     opt.log_y ? " with y > 0" : "", ")");
  if (xmax == xmin) xmax = xmin + 1;
  if (ymax == ymin) {
    ymin -= 0.5;
    ymax += 0.5;
  }
  const double pad = 0.04 * (ymax - ymin);
  ymin -= pad;
  ymax += pad;

  RgbImage img(opt.width, opt.height);
  const int left = 80, right = opt.width - 20, top = 40, bottom = opt.height - 50;
  auto px = [&](double x) { return left + int(std::lround((x - xmin) / (xmax - xmin) * (right - left))); };
  auto py = [&](double y) { return bottom - int(std::lround((y - ymin) / (ymax - ymin) * (bottom - top))); };
  const Rgb grid{225, 225, 225}, axis{0, 0, 0};
  for (double t : detail::nice_ticks(xmin, xmax)) {
    detail::draw_line(img, px(t), top, px(t), bottom, grid, false);
    const std::string s = detail::format_number(t);
    detail::draw_text(img, px(t) - detail::text_width(s) / 2, bottom + 6, s);
  }
  std::vector<double> yt;
  if (opt.log_y) {
    for (double e = std::ceil(ymin); e <= ymax; e += std::max(1.0, std::floor((ymax - ymin) / 6)))
      yt.push_back(e);
  } else {
    yt = detail::nice_ticks(ymin, ymax);
  }
  for (double t : yt) {
    detail::draw_line(img, left, py(t), right, py(t), grid, false);
    const std::string s = detail::format_number(opt.log_y ? std::pow(10.0, t) : t);
    detail::draw_text(img, left - 6 - detail::text_width(s), py(t) - 3, s);
  }
  detail::draw_line(img, left, top, left, bottom, axis, false);
  detail::draw_line(img, left, bottom, right, bottom, axis, false);
  detail::draw_text(img, (opt.width - detail::text_width(opt.title, 2)) / 2, 10, opt.title, axis, 2);
  detail::draw_text(img, (left + right - detail::text_width(opt.x_label)) / 2, opt.height - 20, opt.x_label);
  detail::draw_text_vertical(img, 8, (top + bottom + detail::text_width(opt.y_label)) / 2, opt.y_label);

  for (std::size_t k = 0; k < series.size(); ++k) {
    const auto& s = series[k];
    const Rgb c = detail::series_color(k);
    bool have_prev = false;
    int x0 = 0, y0 = 0;
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (!usable(s.x[i], s.y[i])) {
        have_prev = false;
        continue;
      }
      const int x1 = px(s.x[i]), y1 = py(ty(s.y[i]));
      if (have_prev)
        detail::draw_line(img, x0, y0, x1, y1, c);
      else
        img.fill_rect(x1 - 1, y1 - 1, x1 + 2, y1 + 2, c);
      x0 = x1;
      y0 = y1;
      have_prev = true;
    }
    const int ly = top + 8 + int(k) * 14;
    img.fill_rect(right - 150, ly, right - 136, ly + 4, c);
    detail::draw_text(img, right - 130, ly - 2, s.label);
  }
  write_png(path, img);
}

/**
 * @brief Writes `values` (rows × cols, row-major, e.g. layers × experts of routing probability or load) as a
 * heatmap PNG with a colour bar giving the value range. Non-finite cells are drawn grey.
 */
inline void plot_heatmap(const std::string& path, const std::vector<double>& values, int rows, int cols,
                         const HeatmapOptions& opt = {}) {
  PEMOE_CHECK_CONFIG(rows > 0 && cols > 0 && values.size() == std::size_t(rows) * std::size_t(cols),
                     "plot_heatmap: ", values.size(), " values do not fill ", rows, "x", cols, " cells");
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (double v : values)
    if (std::isfinite(v)) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  if (!(lo <= hi)) lo = hi = 0;
  const int cell = opt.cell > 0 ? opt.cell : std::clamp(600 / std::max(rows, cols), 4, 48);
  const int left = 70, top = 40;
  const int width = left + cols * cell + 110, height = top + rows * cell + 50;
  RgbImage img(width, height);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const double v = values[std::size_t(r) * cols + c];
      const Rgb col =
          std::isfinite(v) ? detail::colormap(hi > lo ? (v - lo) / (hi - lo) : 0.5) : Rgb{160, 160, 160};
      img.fill_rect(left + c * cell, top + r * cell, left + (c + 1) * cell, top + (r + 1) * cell, col);
    }
  const int every_r = std::max(1, 12 / cell + 1), every_c = std::max(1, 24 / cell + 1);
  for (int r = 0; r < rows; r += every_r) {
    const std::string s = std::to_string(r);
    detail::draw_text(img, left - 6 - detail::text_width(s), top + r * cell + cell / 2 - 3, s);
  }
  for (int c = 0; c < cols; c += every_c) {
    const std::string s = std::to_string(c);
    detail::draw_text(img, left + c * cell + cell / 2 - detail::text_width(s) / 2, top + rows * cell + 6, s);
  }
  detail::draw_text(img, (width - detail::text_width(opt.title, 2)) / 2, 10, opt.title, {0, 0, 0}, 2);
  detail::draw_text(img, left + (cols * cell - detail::text_width(opt.col_label)) / 2, height - 20,
                    opt.col_label);
  detail::draw_text_vertical(img, 8, top + (rows * cell + detail::text_width(opt.row_label)) / 2,
                             opt.row_label);
  // colour bar
  const int bx = left + cols * cell + 20, bh = std::max(60, rows * cell);
  for (int y = 0; y < bh; ++y)
    img.fill_rect(bx, top + y, bx + 16, top + y + 1, detail::colormap(1.0 - double(y) / (bh - 1)));
  detail::draw_text(img, bx + 20, top, detail::format_number(hi));
  detail::draw_text(img, bx + 20, top + bh - 7, detail::format_number(lo));
  write_png(path, img);
}

}  // namespace pemoe

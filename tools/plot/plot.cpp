// Drawing, CSV and the three plot kinds of pemoe_plot.
#include "plot/plot.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"

namespace pemoe::plot {
namespace {

const std::map<char, std::array<std::uint8_t, 7>>& font5x7() {
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
int text_width(const std::string& text, int scale = 1) {
  return static_cast<int>(std::min<std::size_t>(text.size(), 100000)) * 6 * scale;
}

/// The 5×7 bitmap of `ch` (rows top to bottom, bit 4 = left column); lower case is drawn upper case and
/// unknown characters as '?'.
const std::array<std::uint8_t, 7>& glyph(char ch) {
  const auto& font = font5x7();
  auto it = font.find((ch >= 'a' && ch <= 'z') ? char(ch - 'a' + 'A') : ch);
  return it != font.end() ? it->second : font.at('?');
}

/// Draws `text` with its top-left corner at (x, y).
void draw_text(RgbImage& img, int x, int y, const std::string& text, Rgb c = {0, 0, 0}, int scale = 1) {
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
void draw_text_vertical(RgbImage& img, int x, int y, const std::string& text, Rgb c = {0, 0, 0}) {
  for (char ch : text) {
    const auto& bits = glyph(ch);
    for (int row = 0; row < 7; ++row)
      for (int col = 0; col < 5; ++col)
        if (bits[std::size_t(row)] & (0x10 >> col)) img.set(x + row, y - col, c);
    y -= 6;
  }
}

/// A line of thickness ~2 px from (x0, y0) to (x1, y1) (Bresenham).
void draw_line(RgbImage& img, int x0, int y0, int x1, int y1, Rgb c, bool thick = true) {
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

/// "Nice" tick positions covering [lo, hi] (steps of 1, 2 or 5 × 10^k); at most ~20, and just the ends
/// when the range is not finite or too narrow for its magnitude.
std::vector<double> nice_ticks(double lo, double hi, int target = 6) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / target;
  if (!std::isfinite(raw) || raw <= 0) return {lo, hi};
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double step = raw / mag < 1.5   ? mag
                      : raw / mag < 3.5 ? 2 * mag
                      : raw / mag < 7.5 ? 5 * mag
                                        : 10 * mag;
  const double first = std::ceil(lo / step), last = std::floor(hi / step + 1e-9);
  if (!std::isfinite(first) || !std::isfinite(last) || last - first > 20 || first + 1 == first)
    return {lo, hi};
  std::vector<double> ticks;
  for (double k = first; k <= last; k += 1) {
    const double t = k * step;
    ticks.push_back(std::abs(t) < 1e-12 * step ? 0.0 : t);
  }
  return ticks;
}

/// Short label of a number: "0.25", "1.5e-03", "12000".
std::string format_number(double v) {
  char buf[32];
  const double a = std::abs(v);
  if (a != 0 && (a < 1e-3 || a >= 1e6))
    std::snprintf(buf, sizeof buf, "%.1e", v);
  else
    std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

/// `path` without a trailing ".png" or ".csv".
std::string stem_of(const std::string& path) {
  for (const char* ext : {".png", ".csv"}) {
    const std::string e = ext;
    if (path.size() > e.size() && path.compare(path.size() - e.size(), e.size(), e) == 0)
      return path.substr(0, path.size() - e.size());
  }
  return path;
}

/// A number for CSV: the shortest text that reads back as the same double ("nan", "inf" for those).
std::string csv_number(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

/// A CSV field: quoted (with doubled quotes) when it holds a comma, a quote or a line break.
std::string csv_text(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

/// Writes `text` to `path`; throws IoError naming the path.
void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  PEMOE_CHECK_AS(IoError, f.good(), "plot: cannot open '", path, "' for writing (does the directory exist?)");
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  f.flush();
  PEMOE_CHECK_AS(IoError, f.good(), "plot: writing '", path, "' failed (disk full?)");
}

void check_size(const char* what, const std::string& stem, int width, int height) {
  PEMOE_CHECK_CONFIG(width >= 200 && height >= 150, what, " '", stem, "': image size ", width, "x", height,
                     " is too small (at least 200x150)");
}

/// Axes, ticks, labels and title of a plot area [left, right] × [top, bottom] for x in [xmin, xmax] and y in
/// [ymin, ymax] (y already log10 when `log_y`); `xticks` false leaves the x axis unlabelled.
struct Frame {
  int left, right, top, bottom;
  double xmin, xmax, ymin, ymax;
  int px(double x) const { return to_pixel(left + (x - xmin) / (xmax - xmin) * (right - left)); }
  int py(double y) const { return to_pixel(bottom - (y - ymin) / (ymax - ymin) * (bottom - top)); }
  /// Rounds a pixel coordinate, clamped far outside any image (NaN too), so that no cast overflows.
  static int to_pixel(double v) {
    if (!(v > -1e6)) return -1000000;
    if (!(v < 1e6)) return 1000000;
    return static_cast<int>(std::lround(v));
  }
};

void draw_frame(RgbImage& img, const Frame& f, bool xticks, bool log_y, const std::string& title,
                const std::string& x_label, const std::string& y_label) {
  const Rgb grid{225, 225, 225}, axis{0, 0, 0};
  if (xticks)
    for (double t : nice_ticks(f.xmin, f.xmax)) {
      draw_line(img, f.px(t), f.top, f.px(t), f.bottom, grid, false);
      const std::string s = format_number(t);
      draw_text(img, f.px(t) - text_width(s) / 2, f.bottom + 6, s);
    }
  std::vector<double> yt;
  if (log_y) {
    for (double e = std::ceil(f.ymin); e <= f.ymax; e += std::max(1.0, std::floor((f.ymax - f.ymin) / 6)))
      yt.push_back(e);
  } else {
    yt = nice_ticks(f.ymin, f.ymax);
  }
  for (double t : yt) {
    draw_line(img, f.left, f.py(t), f.right, f.py(t), grid, false);
    const std::string s = format_number(log_y ? std::pow(10.0, t) : t);
    draw_text(img, f.left - 6 - text_width(s), f.py(t) - 3, s);
  }
  draw_line(img, f.left, f.top, f.left, f.bottom, axis, false);
  draw_line(img, f.left, f.bottom, f.right, f.bottom, axis, false);
  draw_text(img, (img.width() - text_width(title, 2)) / 2, 10, title, axis, 2);
  draw_text(img, (f.left + f.right - text_width(x_label)) / 2, img.height() - 20, x_label);
  draw_text_vertical(img, 8, (f.top + f.bottom + text_width(y_label)) / 2, y_label);
}

}  // namespace

Rgb colormap(double t) {
  static const double stops[6][3] = {{68, 1, 84},    {65, 68, 135},  {42, 120, 142},
                                     {34, 168, 132}, {122, 209, 81}, {253, 231, 37}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 5.0;
  const int i = std::min(4, static_cast<int>(t));
  const double f = t - i;
  auto mix = [&](int ch) {
    return static_cast<std::uint8_t>(std::lround(stops[i][ch] * (1 - f) + stops[i + 1][ch] * f));
  };
  return {mix(0), mix(1), mix(2)};
}

Rgb series_color(std::size_t i) {
  static const Rgb palette[] = {{31, 119, 180},  {255, 127, 14}, {44, 160, 44},   {214, 39, 40},
                                {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127}};
  return palette[i % 8];
}

PlotFiles plot_lines(const std::string& stem_path, const std::vector<PlotSeries>& series,
                     const LinePlotOptions& opt) {
  const std::string stem = stem_of(stem_path);
  const double inf = std::numeric_limits<double>::infinity();
  double xmin = inf, xmax = -inf, ymin = inf, ymax = -inf;
  auto ty = [&](double y) { return opt.log_y ? std::log10(y) : y; };
  auto usable = [&](double x, double y) {
    return std::isfinite(x) && std::isfinite(y) && (!opt.log_y || y > 0);
  };
  std::string csv = "series,x,y\n";
  for (const auto& s : series) {
    PEMOE_CHECK_CONFIG(s.x.size() == s.y.size(), "plot_lines '", stem, "': series '", s.label, "' has ",
                       s.x.size(), " x and ", s.y.size(), " y values");
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      csv += csv_text(s.label) + "," + csv_number(s.x[i]) + "," + csv_number(s.y[i]) + "\n";
      if (usable(s.x[i], s.y[i])) {
        xmin = std::min(xmin, s.x[i]);
        xmax = std::max(xmax, s.x[i]);
        ymin = std::min(ymin, ty(s.y[i]));
        ymax = std::max(ymax, ty(s.y[i]));
      }
    }
  }
  PEMOE_CHECK_CONFIG(xmin <= xmax, "plot_lines '", stem, "': nothing to plot (no finite point",
                     opt.log_y ? " with y > 0" : "", ")");
  check_size("plot_lines", stem, opt.width, opt.height);
  RgbImage img(opt.width, opt.height);  // checks the upper limits before allocating
  if (xmax == xmin) xmax = xmin + 1;
  if (ymax == ymin) {
    ymin -= 0.5;
    ymax += 0.5;
  }
  const double pad = 0.04 * (ymax - ymin);
  const Frame f{80, opt.width - 20, 40, opt.height - 50, xmin, xmax, ymin - pad, ymax + pad};
  draw_frame(img, f, true, opt.log_y, opt.title, opt.x_label, opt.y_label);

  for (std::size_t k = 0; k < series.size(); ++k) {
    const auto& s = series[k];
    const Rgb c = series_color(k);
    bool have_prev = false;
    int x0 = 0, y0 = 0;
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (!usable(s.x[i], s.y[i])) {
        have_prev = false;
        continue;
      }
      const int x1 = f.px(s.x[i]), y1 = f.py(ty(s.y[i]));
      if (have_prev)
        draw_line(img, x0, y0, x1, y1, c);
      else
        img.fill_rect(x1 - 1, y1 - 1, x1 + 2, y1 + 2, c);
      x0 = x1;
      y0 = y1;
      have_prev = true;
    }
    const int ly = f.top + 8 + static_cast<int>(k) * 14;
    img.fill_rect(f.right - 150, ly, f.right - 136, ly + 4, c);
    draw_text(img, f.right - 130, ly - 2, s.label);
  }
  PlotFiles files{stem + ".csv", stem + ".png"};
  write_text(files.csv, csv);
  write_png(files.png, img);
  return files;
}

PlotFiles plot_heatmap(const std::string& stem_path, const std::vector<double>& values, int rows, int cols,
                       const HeatmapOptions& opt) {
  const std::string stem = stem_of(stem_path);
  PEMOE_CHECK_CONFIG(rows > 0 && cols > 0 &&
                         values.size() == static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols),
                     "plot_heatmap '", stem, "': ", values.size(), " values do not fill ", rows, "x", cols,
                     " cells");
  const long long cell = opt.cell > 0 ? opt.cell : std::clamp(600 / std::max(rows, cols), 4, 48);
  const long long left = 70, top = 40;
  const long long width = left + cols * cell + 110, height = top + rows * cell + 50;
  PEMOE_CHECK_CONFIG(
      width <= RgbImage::max_side && height <= RgbImage::max_side && width * height <= RgbImage::max_pixels,
      "plot_heatmap '", stem, "': ", rows, "x", cols, " cells of ", cell, " px need a ", width, "x", height,
      " image, larger than the limit (each side ", RgbImage::max_side, ", ", RgbImage::max_pixels,
      " pixels); use a smaller cell or fewer cells");
  std::string csv = csv_text(opt.row_label.empty() ? "row" : opt.row_label);
  for (int c = 0; c < cols; ++c) csv += "," + std::to_string(c);
  csv += "\n";
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int r = 0; r < rows; ++r) {
    csv += std::to_string(r);
    for (int c = 0; c < cols; ++c) {
      const double v =
          values[static_cast<std::size_t>(r) * static_cast<std::size_t>(cols) + static_cast<std::size_t>(c)];
      csv += "," + csv_number(v);
      if (std::isfinite(v)) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
    csv += "\n";
  }
  if (!(lo <= hi)) lo = hi = 0;

  RgbImage img(width, height);
  const int cs = static_cast<int>(cell), l = static_cast<int>(left), t = static_cast<int>(top);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const double v =
          values[static_cast<std::size_t>(r) * static_cast<std::size_t>(cols) + static_cast<std::size_t>(c)];
      const Rgb col = std::isfinite(v) ? colormap(hi > lo ? (v - lo) / (hi - lo) : 0.5) : Rgb{160, 160, 160};
      img.fill_rect(l + c * cs, t + r * cs, l + (c + 1) * cs, t + (r + 1) * cs, col);
    }
  const int every_r = std::max(1, 12 / cs + 1), every_c = std::max(1, 24 / cs + 1);
  for (int r = 0; r < rows; r += every_r) {
    const std::string s = std::to_string(r);
    draw_text(img, l - 6 - text_width(s), t + r * cs + cs / 2 - 3, s);
  }
  for (int c = 0; c < cols; c += every_c) {
    const std::string s = std::to_string(c);
    draw_text(img, l + c * cs + cs / 2 - text_width(s) / 2, t + rows * cs + 6, s);
  }
  draw_text(img, (img.width() - text_width(opt.title, 2)) / 2, 10, opt.title, {0, 0, 0}, 2);
  draw_text(img, l + (cols * cs - text_width(opt.col_label)) / 2, img.height() - 20, opt.col_label);
  draw_text_vertical(img, 8, t + (rows * cs + text_width(opt.row_label)) / 2, opt.row_label);
  // colour bar
  const int bx = l + cols * cs + 20, bh = std::max(60, rows * cs);
  for (int y = 0; y < bh; ++y)
    img.fill_rect(bx, t + y, bx + 16, t + y + 1, colormap(1.0 - double(y) / (bh - 1)));
  draw_text(img, bx + 20, t, format_number(hi));
  draw_text(img, bx + 20, t + bh - 7, format_number(lo));
  PlotFiles files{stem + ".csv", stem + ".png"};
  write_text(files.csv, csv);
  write_png(files.png, img);
  return files;
}

PlotFiles plot_bars(const std::string& stem_path, const std::vector<std::string>& labels,
                    const std::vector<double>& values, const BarPlotOptions& opt) {
  const std::string stem = stem_of(stem_path);
  PEMOE_CHECK_CONFIG(labels.size() == values.size(), "plot_bars '", stem, "': ", labels.size(),
                     " labels but ", values.size(), " values");
  PEMOE_CHECK_CONFIG(!values.empty(), "plot_bars '", stem, "': no bars to draw");
  std::string csv = "label,value\n";
  double lo = 0, hi = 0;
  bool any = false;
  for (std::size_t i = 0; i < values.size(); ++i) {
    csv += csv_text(labels[i]) + "," + csv_number(values[i]) + "\n";
    if (std::isfinite(values[i])) {
      lo = std::min(lo, values[i]);
      hi = std::max(hi, values[i]);
      any = true;
    }
  }
  PEMOE_CHECK_CONFIG(any, "plot_bars '", stem, "': no finite value to draw");
  check_size("plot_bars", stem, opt.width, opt.height);
  RgbImage img(opt.width, opt.height);
  if (hi == lo) hi = lo + 1;
  const double pad = 0.05 * (hi - lo);
  const Frame f{
      80, opt.width - 20, 40, opt.height - 50, 0, 1, lo < 0 ? lo - pad : 0.0, hi > 0 ? hi + pad : 0.0};
  draw_frame(img, f, false, false, opt.title, opt.x_label, opt.y_label);
  const double slot = double(f.right - f.left) / double(values.size());
  const int every = std::max(1, static_cast<int>(std::ceil(36.0 / slot)));  // label spacing in bars
  for (std::size_t i = 0; i < values.size(); ++i) {
    const int x0 = f.left + static_cast<int>(std::lround(slot * (double(i) + 0.15)));
    const int x1 = std::max(x0 + 1, f.left + static_cast<int>(std::lround(slot * (double(i) + 0.85))));
    if (std::isfinite(values[i])) {
      const int y0 = f.py(0.0), y1 = f.py(values[i]);
      img.fill_rect(x0, std::min(y0, y1), x1, std::max(y0, y1) + 1, series_color(0));
    }
    if (static_cast<int>(i) % every == 0)
      draw_text(img, (x0 + x1) / 2 - text_width(labels[i]) / 2, f.bottom + 6, labels[i]);
  }
  draw_line(img, f.left, f.py(0.0), f.right, f.py(0.0), {0, 0, 0}, false);
  PlotFiles files{stem + ".csv", stem + ".png"};
  write_text(files.csv, csv);
  write_png(files.png, img);
  return files;
}

}  // namespace pemoe::plot

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

/// Longest label (row/column name, bar label) drawn, in characters; longer ones end in '.'.
constexpr std::size_t max_label_chars = 20;

/// `text` cut to at most `max_chars` characters, its last kept one replaced by '.' when it was longer.
std::string shorten(const std::string& text, std::size_t max_chars) {
  if (text.size() <= max_chars) return text;
  if (max_chars == 0) return {};
  return text.substr(0, max_chars - 1) + ".";
}

/// `text` cut to at most `max_px` pixels at `scale`, ending in "..." when it was cut.
std::string ellipsize(const std::string& text, int max_px, int scale) {
  if (text_width(text, scale) <= max_px) return text;
  const int fit = std::max(0, max_px / (6 * scale));  // characters that fit
  if (fit <= 3) return std::string(static_cast<std::size_t>(fit), '.');
  std::string head = text.substr(0, static_cast<std::size_t>(fit - 3));
  while (!head.empty() && head.back() == ' ') head.pop_back();
  return head + "...";
}

/// Widest of `texts` in pixels (scale 1).
int max_text_width(const std::vector<std::string>& texts) {
  int w = 0;
  for (const auto& t : texts) w = std::max(w, text_width(t));
  return w;
}

/// The title (drawn at scale 2) as the lines that fit an image `width` pixels wide (10 px free on either
/// side): one line when it fits, else two broken at the last space that lets the first line fit (the
/// second ending in "..." when still too long), else one line ending in "...".
std::vector<std::string> title_lines(const std::string& title, int width) {
  if (title.empty()) return {};
  const int avail = std::max(0, width - 20);
  if (text_width(title, 2) <= avail) return {title};
  const std::size_t fit = static_cast<std::size_t>(avail / 12);
  const std::size_t cut = title.rfind(' ', fit);  // the first line is title[0, cut), at most `fit` chars
  if (cut != std::string::npos && cut > 0) {
    std::string first = title.substr(0, cut), rest = title.substr(cut + 1);
    while (!first.empty() && first.back() == ' ') first.pop_back();
    const std::size_t start = rest.find_first_not_of(' ');
    rest = start == std::string::npos ? std::string() : rest.substr(start);
    if (!first.empty()) {
      if (rest.empty()) return {first};
      return {first, ellipsize(rest, avail, 2)};
    }
  }
  return {ellipsize(title, avail, 2)};
}

/// The top margin above a plot area for a title of `lines` lines.
int title_margin(std::size_t lines) {
  return 40 + 18 * static_cast<int>(lines > 1 ? lines - 1 : 0);
}

/// Draws the title lines centred at the top of the image.
void draw_title(RgbImage& img, const std::vector<std::string>& lines) {
  for (std::size_t i = 0; i < lines.size(); ++i)
    draw_text(img, (img.width() - text_width(lines[i], 2)) / 2, 10 + 18 * static_cast<int>(i), lines[i],
              {0, 0, 0}, 2);
}

/// How the labels under a horizontal axis (one per slot of `slot` pixels) are drawn.
struct AxisLabels {
  int every = 1;          ///< only every `every`-th label (from the first) is drawn
  bool vertical = false;  ///< rotated by 90°, reading bottom-up, ending just below the axis
  std::size_t max_chars = max_label_chars;  ///< vertical labels are shortened to this
  int extent = 7;                           ///< pixels the labels reach below their first row
};

/// Smallest k ≥ 1 with k · slot ≥ need.
int every_for(double need, double slot) {
  if (!(slot > 0)) return std::numeric_limits<int>::max();
  const double k = std::ceil(need / slot - 1e-9);
  return k < 1 ? 1 : k > 1e9 ? 1000000000 : static_cast<int>(k);
}

/// Chooses how to draw `labels` under slots `slot` px wide: horizontally, every k-th with k the smallest
/// that leaves 4 px between labels; or (when `allow_vertical`, k > 1 and vertical labels, 7 px wide, fit
/// more of them) vertically, shortened to `vertical_px` pixels (at least 4 characters, else horizontal).
AxisLabels place_labels(const std::vector<std::string>& labels, double slot, bool allow_vertical,
                        int vertical_px) {
  AxisLabels a;
  a.every = every_for(max_text_width(labels) + 3, slot);
  const std::size_t vchars =
      std::min<std::size_t>(max_label_chars, std::size_t(std::max(0, vertical_px / 6)));
  const int every_v = every_for(9, slot);
  if (allow_vertical && a.every > 1 && every_v < a.every && vchars >= 4) {
    a.vertical = true;
    a.every = every_v;
    a.max_chars = vchars;
    std::size_t longest = 0;
    for (const auto& l : labels) longest = std::max(longest, std::min(l.size(), vchars));
    a.extent = static_cast<int>(longest) * 6;
  }
  return a;
}

/// Draws label `text` centred on x = `cx` with its top at y = `y` (as placed by `place_labels`).
void draw_axis_label(RgbImage& img, const AxisLabels& a, int cx, int y, const std::string& text) {
  if (a.vertical) {
    const std::string s = shorten(text, a.max_chars);
    draw_text_vertical(img, cx - 3, y + 4 + 6 * static_cast<int>(s.size()), s);
  } else {
    draw_text(img, cx - text_width(text) / 2, y, text);
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

void draw_frame(RgbImage& img, const Frame& f, bool xticks, bool log_y, const std::vector<std::string>& title,
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
  draw_title(img, title);
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
  const auto title = title_lines(opt.title, opt.width);
  const Frame f{80,         opt.width - 20, title_margin(title.size()), opt.height - 50, xmin, xmax,
                ymin - pad, ymax + pad};
  draw_frame(img, f, true, opt.log_y, title, opt.x_label, opt.y_label);

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
  PEMOE_CHECK_CONFIG(opt.row_names.empty() || opt.row_names.size() == static_cast<std::size_t>(rows),
                     "plot_heatmap '", stem, "': ", opt.row_names.size(), " row names for ", rows, " rows");
  PEMOE_CHECK_CONFIG(opt.col_names.empty() || opt.col_names.size() == static_cast<std::size_t>(cols),
                     "plot_heatmap '", stem, "': ", opt.col_names.size(), " column names for ", cols,
                     " columns");
  // The labels drawn: the names (shortened) or the indices.
  std::vector<std::string> row_text(static_cast<std::size_t>(rows)), col_text(static_cast<std::size_t>(cols));
  for (int r = 0; r < rows; ++r)
    row_text[std::size_t(r)] =
        opt.row_names.empty() ? std::to_string(r) : shorten(opt.row_names[std::size_t(r)], max_label_chars);
  for (int c = 0; c < cols; ++c)
    col_text[std::size_t(c)] =
        opt.col_names.empty() ? std::to_string(c) : shorten(opt.col_names[std::size_t(c)], max_label_chars);

  const long long cell = opt.cell > 0 ? opt.cell : std::clamp(600 / std::max(rows, cols), 4, 48);
  // Left margin: the row label (x 8..15), 6 px, the right-aligned row names, 6 px.
  const long long left = std::max(70, max_text_width(row_text) + 28);
  const long long width = left + cols * cell + 110;
  const auto title = title_lines(opt.title, static_cast<int>(std::min<long long>(width, RgbImage::max_side)));
  const AxisLabels col_place = place_labels(col_text, static_cast<double>(std::min<long long>(cell, 1 << 20)),
                                            !opt.col_names.empty(), 6 * static_cast<int>(max_label_chars));
  const long long top = title_margin(title.size()), bottom = 50 + std::max(0, col_place.extent - 7);
  const long long height = top + rows * cell + bottom;
  PEMOE_CHECK_CONFIG(
      width <= RgbImage::max_side && height <= RgbImage::max_side && width * height <= RgbImage::max_pixels,
      "plot_heatmap '", stem, "': ", rows, "x", cols, " cells of ", cell, " px need a ", width, "x", height,
      " image, larger than the limit (each side ", RgbImage::max_side, ", ", RgbImage::max_pixels,
      " pixels); use a smaller cell or fewer cells");
  std::string csv = csv_text(opt.row_label.empty() ? "row" : opt.row_label);
  for (int c = 0; c < cols; ++c)
    csv += "," + (opt.col_names.empty() ? std::to_string(c) : csv_text(opt.col_names[std::size_t(c)]));
  csv += "\n";
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (int r = 0; r < rows; ++r) {
    csv += opt.row_names.empty() ? std::to_string(r) : csv_text(opt.row_names[std::size_t(r)]);
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
  const int every_r = every_for(9, cs);
  for (int r = 0; r < rows; r += every_r) {
    const std::string& s = row_text[std::size_t(r)];
    draw_text(img, l - 6 - text_width(s), t + r * cs + cs / 2 - 3, s);
  }
  for (int c = 0; c < cols; c += col_place.every)
    draw_axis_label(img, col_place, l + c * cs + cs / 2, t + rows * cs + 6, col_text[std::size_t(c)]);
  draw_title(img, title);
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
  const auto title = title_lines(opt.title, opt.width);
  const int top = title_margin(title.size()), left = 80, right = opt.width - 20;
  const double slot = double(right - left) / double(values.size());
  std::vector<std::string> shown(labels.size());
  for (std::size_t i = 0; i < labels.size(); ++i) shown[i] = shorten(labels[i], max_label_chars);
  // Vertical labels may take what leaves the bars at least 80 px of height.
  const AxisLabels place = place_labels(shown, slot, true, opt.height - top - 50 - 80);
  const Frame f{left,
                right,
                top,
                opt.height - 50 - std::max(0, place.extent - 7),
                0,
                1,
                lo < 0 ? lo - pad : 0.0,
                hi > 0 ? hi + pad : 0.0};
  draw_frame(img, f, false, false, title, opt.x_label, opt.y_label);
  for (std::size_t i = 0; i < values.size(); ++i) {
    const int x0 = f.left + static_cast<int>(std::lround(slot * (double(i) + 0.15)));
    const int x1 = std::max(x0 + 1, f.left + static_cast<int>(std::lround(slot * (double(i) + 0.85))));
    if (std::isfinite(values[i])) {
      const int y0 = f.py(0.0), y1 = f.py(values[i]);
      img.fill_rect(x0, std::min(y0, y1), x1, std::max(y0, y1) + 1, series_color(0));
    }
    if (i % static_cast<std::size_t>(place.every) == 0)
      draw_axis_label(img, place, (x0 + x1) / 2, f.bottom + 6, shown[i]);
  }
  draw_line(img, f.left, f.py(0.0), f.right, f.py(0.0), {0, 0, 0}, false);
  PlotFiles files{stem + ".csv", stem + ".png"};
  write_text(files.csv, csv);
  write_png(files.png, img);
  return files;
}

}  // namespace pemoe::plot

// tools/plot (pemoe_plot): every plot writes its CSV and a compressed PNG. The PNGs are decoded with libpng's
// reader (not with pemoe_plot's code) and compared pixel by pixel; one chunk CRC is checked against a
// constant.
#include <png.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"
#include "plot/image.hpp"
#include "plot/plot.hpp"

using namespace pemoe;
using namespace pemoe::plot;

namespace {

std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(f), {});
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | p[3];
}

/// A PNG file decoded by libpng: its size and 8-bit RGB pixels.
struct Decoded {
  int width = 0, height = 0;
  std::vector<std::uint8_t> rgb;
  Rgb at(int x, int y) const {
    const std::uint8_t* p = &rgb[(std::size_t(y) * std::size_t(width) + std::size_t(x)) * 3];
    return {p[0], p[1], p[2]};
  }
};

Decoded decode_png(const std::string& path) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  INFO("libpng: " << img.message);
  REQUIRE(png_image_begin_read_from_file(&img, path.c_str()) != 0);
  CHECK(img.format == PNG_FORMAT_RGB);  // stored as 8-bit RGB, no alpha, no palette
  img.format = PNG_FORMAT_RGB;
  Decoded d;
  d.width = int(img.width);
  d.height = int(img.height);
  d.rgb.resize(PNG_IMAGE_SIZE(img));
  REQUIRE(png_image_finish_read(&img, nullptr, d.rgb.data(), 0, nullptr) != 0);
  return d;
}

bool is_white(Rgb c) {
  return c == Rgb{255, 255, 255};
}

/// Whether every pixel of [x0, x1) × [y0, y1) is white.
bool all_white(const Decoded& d, int x0, int y0, int x1, int y1) {
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x)
      if (!is_white(d.at(x, y))) return false;
  return true;
}

/// The runs of columns in [0, width) × [y0, y1) that hold a black (text) pixel, bridging the 1-px gaps
/// between the characters of a word, as their widths: labels drawn over or against each other merge into
/// one run wider than any label.
std::vector<int> text_runs(const Decoded& d, int y0, int y1) {
  std::vector<bool> ink(std::size_t(d.width), false);
  for (int x = 0; x < d.width; ++x)
    for (int y = y0; y < y1; ++y)
      if (d.at(x, y) == Rgb{0, 0, 0}) ink[std::size_t(x)] = true;
  std::vector<int> runs;
  int start = -1, last = -10;
  for (int x = 0; x < d.width; ++x) {
    if (!ink[std::size_t(x)]) continue;
    if (x - last > 2) {  // a gap of 2 px or more ends a run
      if (start >= 0) runs.push_back(last - start + 1);
      start = x;
    }
    last = x;
  }
  if (start >= 0) runs.push_back(last - start + 1);
  return runs;
}

std::size_t count_color(const Decoded& d, Rgb c) {
  std::size_t n = 0;
  for (int y = 0; y < d.height; ++y)
    for (int x = 0; x < d.width; ++x) n += d.at(x, y) == c;
  return n;
}

}  // namespace

TEST_CASE("write_png: libpng reads back the same pixels, and the chunks carry the right CRCs") {
  RgbImage img(300, 120);
  for (int y = 0; y < 120; ++y)
    for (int x = 0; x < 300; ++x) img.set(x, y, {std::uint8_t(x), std::uint8_t(y), std::uint8_t(x ^ y)});
  const std::string path = "pemoe_test_png.png";
  write_png(path, img);
  const Decoded back = decode_png(path);
  CHECK(back.width == 300);
  CHECK(back.height == 120);
  CHECK(back.rgb == img.pixels());
  CHECK(img.at(299, 119) == Rgb{std::uint8_t(299), 119, std::uint8_t(299 ^ 119)});

  // The file starts with the signature and the IHDR chunk of a 300x120 8-bit RGB image, whose CRC-32 (over
  // "IHDR" and its 13 data bytes) is 0xc7775877; it ends with IEND, CRC 0xae426082.
  const auto bytes = read_bytes(path);
  REQUIRE(bytes.size() > 45);
  const std::uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  CHECK(std::equal(sig, sig + 8, bytes.begin()));
  CHECK(be32(&bytes[8]) == 13);
  CHECK(std::string(bytes.begin() + 12, bytes.begin() + 16) == "IHDR");
  CHECK(be32(&bytes[16]) == 300);
  CHECK(be32(&bytes[20]) == 120);
  CHECK(be32(&bytes[29]) == 0xc7775877u);
  CHECK(std::string(bytes.end() - 8, bytes.end() - 4) == "IEND");
  CHECK(be32(&bytes[bytes.size() - 4]) == 0xae426082u);
  std::remove(path.c_str());

  try {
    write_png("/nonexistent-dir/x.png", img);
    FAIL("no throw");
  } catch (const IoError& e) {
    CHECK(std::string(e.what()).find("'/nonexistent-dir/x.png'") != std::string::npos);
  }
}

TEST_CASE("RgbImage: sizes are checked before anything is allocated") {
  CHECK_THROWS_AS(RgbImage(0, 10), ConfigError);
  CHECK_THROWS_AS(RgbImage(10, -3), ConfigError);
  CHECK_THROWS_AS(RgbImage(RgbImage::max_side + 1, 1), ConfigError);
  CHECK_THROWS_AS(RgbImage(1LL << 40, 1LL << 40), ConfigError);  // 2^80 pixels: no overflow, no allocation
  CHECK_THROWS_AS(RgbImage(20000, 20000), ConfigError);          // each side fits, the total does not
  try {
    RgbImage(-1, 5);
    FAIL("no throw");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("-1x5") != std::string::npos);
  }
  RgbImage ok(4, 3, {1, 2, 3});
  CHECK(ok.pixels().size() == 36);
  ok.fill_rect(-10, -10, 100, 1, {9, 9, 9});  // clipped
  CHECK(ok.at(3, 0) == Rgb{9, 9, 9});
  CHECK(ok.at(3, 1) == Rgb{1, 2, 3});
  CHECK_THROWS_AS(ok.at(4, 0), ConfigError);
}

TEST_CASE("plot_lines: CSV of every point and a compressed PNG with the curve in its colour") {
  PlotSeries loss{"train", {}, {}}, val{"val, held out", {}, {}};
  for (int i = 0; i < 100; ++i) {
    loss.x.push_back(i);
    loss.y.push_back(std::exp(-0.05 * i));
  }
  val.x = {0, 50, 99};
  val.y = {1.0, std::nan(""), 0.01};
  LinePlotOptions opt;
  opt.title = "loss";
  opt.log_y = true;
  const PlotFiles files = plot_lines("pemoe_test_lines.png", {loss, val}, opt);  // ".png" is dropped
  CHECK(files.csv == "pemoe_test_lines.csv");
  CHECK(files.png == "pemoe_test_lines.png");

  const Decoded png = decode_png(files.png);
  CHECK(png.width == 800);
  CHECK(png.height == 500);
  CHECK(count_color(png, series_color(0)) > 500);  // the curve crosses the whole plot
  CHECK(count_color(png, series_color(1)) > 20);
  CHECK(read_bytes(files.png).size() < 800 * 500 * 3 / 20);  // compressed (raw: 1.2 MB)

  const std::string csv = read_text(files.csv);
  CHECK(csv.rfind("series,x,y\ntrain,0,1\n", 0) == 0);
  {  // every value reads back as the same double
    std::istringstream lines(csv);
    std::string line;
    std::getline(lines, line);
    for (std::size_t i = 0; i < loss.x.size(); ++i) {
      std::getline(lines, line);
      const auto c1 = line.find(','), c2 = line.find(',', c1 + 1);
      REQUIRE(line.substr(0, c1) == "train");
      CHECK(std::stod(line.substr(c1 + 1, c2 - c1 - 1)) == loss.x[i]);
      CHECK(std::stod(line.substr(c2 + 1)) == loss.y[i]);
    }
  }
  CHECK(csv.find("\n\"val, held out\",50,nan\n") != std::string::npos);  // quoted; NaN kept in the data
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 1 + 100 + 3);
  std::remove(files.csv.c_str());
  std::remove(files.png.c_str());

  CHECK_THROWS_AS(plot_lines("x", {PlotSeries{"empty", {}, {}}}), ConfigError);
  CHECK_THROWS_AS(plot_lines("x", {PlotSeries{"uneven", {1, 2}, {1}}}), ConfigError);
  LinePlotOptions tiny, huge;
  tiny.width = 50;
  huge.width = 1 << 20;
  CHECK_THROWS_AS(plot_lines("x", {loss}, tiny), ConfigError);
  CHECK_THROWS_AS(plot_lines("x", {loss}, huge), ConfigError);
  CHECK_THROWS_AS(plot_lines("/nonexistent-dir/x", {loss}), IoError);
  // Extreme ranges draw (clipped) instead of looping or overflowing a pixel coordinate.
  PlotSeries wide{"wide", {-1e308, 1e308}, {1e16, 1e16 + 2}};
  const PlotFiles w = plot_lines("pemoe_test_wide", {wide});
  CHECK(decode_png(w.png).width == 800);
  std::remove(w.csv.c_str());
  std::remove(w.png.c_str());
}

TEST_CASE("plot_heatmap: CSV matrix and cells in the colour map's colours") {
  const PlotFiles files = plot_heatmap("pemoe_test_heat", {0, 1, 2, 3, 4, std::nan("")}, 2, 3,
                                       HeatmapOptions{"load", "layer", "expert", 20, {}, {}});
  const Decoded heat = decode_png(files.png);
  CHECK(heat.width == 70 + 3 * 20 + 110);
  CHECK(heat.height == 40 + 2 * 20 + 50);
  CHECK(heat.at(70 + 5, 40 + 5) == colormap(0));                       // value 0: the minimum
  CHECK(heat.at(70 + 1 * 20 + 5, 40 + 20 + 5) == colormap(1));         // value 4: the maximum
  CHECK(heat.at(70 + 2 * 20 + 5, 40 + 20 + 5) == Rgb{160, 160, 160});  // NaN: grey
  CHECK(read_text(files.csv) == "layer,0,1,2\n0,0,1,2\n1,3,4,nan\n");
  std::remove(files.csv.c_str());
  std::remove(files.png.c_str());

  CHECK_THROWS_AS(plot_heatmap("x", {1, 2, 3}, 2, 2), ConfigError);
  CHECK_THROWS_AS(plot_heatmap("x", {}, 0, 0), ConfigError);
  // 100,000 experts at the smallest cell need a 400,180-pixel-wide image: refused before allocating.
  try {
    plot_heatmap("x", std::vector<double>(100000, 1.0), 1, 100000);
    FAIL("no throw");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("400180x") != std::string::npos);
  }
}

TEST_CASE("plot_bars: CSV of label and value, one bar per value, negative bars below zero") {
  const PlotFiles files = plot_bars("pemoe_test_bars", {"e0", "e1", "e2", "e3"}, {0.5, 0.25, 0.0, -0.25},
                                    BarPlotOptions{"expert load", "expert", "fraction of tokens", 400, 300});
  CHECK(read_text(files.csv) == "label,value\ne0,0.5\ne1,0.25\ne2,0\ne3,-0.25\n");
  const Decoded bars = decode_png(files.png);
  CHECK(bars.width == 400);
  CHECK(bars.height == 300);
  // Plot area x in [80, 380]: 4 slots of 75 px; bar i covers [80 + 75 i + 11, 80 + 75 i + 64).
  const Rgb c = series_color(0);
  auto column = [&](int i) {
    std::size_t n = 0;
    for (int y = 0; y < 300; ++y) n += bars.at(80 + 75 * i + 37, y) == c;
    return n;
  };
  CHECK(column(0) > 2 * column(1) - 3);
  CHECK(column(1) > 50);
  CHECK(column(2) <= 1);
  CHECK(column(3) > 50);
  std::remove(files.csv.c_str());
  std::remove(files.png.c_str());

  CHECK_THROWS_AS(plot_bars("x", {"a"}, {1, 2}), ConfigError);
  CHECK_THROWS_AS(plot_bars("x", {}, {}), ConfigError);
  CHECK_THROWS_AS(plot_bars("x", {"a"}, {std::nan("")}), ConfigError);
}

TEST_CASE("plot_heatmap: row and column names label the image and the CSV") {
  HeatmapOptions opt;
  opt.title = "routing";
  opt.row_label = "task";
  opt.cell = 20;
  opt.row_names = {"sst2", "a task, with a comma"};
  opt.col_names = {"e0", "e1", "e2"};
  const PlotFiles files = plot_heatmap("pemoe_test_heat_names", {0, 1, 2, 3, 4, 5}, 2, 3, opt);
  CHECK(read_text(files.csv) == "task,e0,e1,e2\nsst2,0,1,2\n\"a task, with a comma\",3,4,5\n");
  const Decoded named = decode_png(files.png);
  // The longest name (20 characters, 120 px) widens the left margin from 70 to 120 + 28 px.
  const int left = 148;
  CHECK(named.width == left + 3 * 20 + 110);
  CHECK(named.at(left + 5, 40 + 5) == colormap(0));            // first cell moved right
  CHECK(named.at(left + 2 * 20 + 5, 40 + 25) == colormap(1));  // last cell
  CHECK(is_white(named.at(70 + 5, 40 + 5)));                   // where the first cell was without names
  // The names are right-aligned, ending 6 px left of the cells, starting after the row label's column.
  CHECK(!all_white(named, left - 30, 40, left - 6, 80));
  CHECK(all_white(named, left - 5, 40, left, 80));
  CHECK(all_white(named, 16, 40, 22, 80));
  std::remove(files.csv.c_str());
  std::remove(files.png.c_str());

  // A name longer than 20 characters is shortened: the margin stays at its cap.
  opt.row_names = {"a name much longer than twenty characters", "b"};
  const PlotFiles capped = plot_heatmap("pemoe_test_heat_names", {0, 1, 2, 3, 4, 5}, 2, 3, opt);
  CHECK(decode_png(capped.png).width == left + 3 * 20 + 110);
  CHECK(read_text(capped.csv).find("\na name much longer than twenty characters,0,1,2\n") !=
        std::string::npos);
  std::remove(capped.csv.c_str());
  std::remove(capped.png.c_str());

  opt.row_names = {"only one"};
  CHECK_THROWS_AS(plot_heatmap("x", {0, 1, 2, 3, 4, 5}, 2, 3, opt), ConfigError);
  opt.row_names.clear();
  opt.col_names = {"a", "b", "c", "d"};
  CHECK_THROWS_AS(plot_heatmap("x", {0, 1, 2, 3, 4, 5}, 2, 3, opt), ConfigError);
}

TEST_CASE("plot_heatmap, plot_bars: many column names or bar labels do not overlap") {
  std::vector<std::string> names;
  for (int i = 0; i < 64; ++i) names.push_back("L" + std::to_string(i / 8) + " E" + std::to_string(i % 8));
  HeatmapOptions opt;
  opt.col_names = names;
  opt.row_names = {"task"};
  const PlotFiles heat = plot_heatmap("pemoe_test_heat_many", std::vector<double>(64, 1.0), 1, 64, opt);
  const Decoded h = decode_png(heat.png);
  {  // cells of 9 px (600 / 64): the 5-character names (30 px) fit only rotated, 7 px wide each
    const int cell = 9, top = 40;
    const auto runs = text_runs(h, top + cell + 2, h.height - 25);
    CHECK(runs.size() >= 32);
    CHECK(*std::max_element(runs.begin(), runs.end()) <= 7);
    CHECK(h.height >= top + cell + 6 + 5 * 6);  // the bottom margin grew to hold them
  }
  std::remove(heat.csv.c_str());
  std::remove(heat.png.c_str());

  // Labels of 14 characters (83 px) every 10.9 px: the old rule (every 4th, 44 px apart) overlapped them.
  std::vector<std::string> labels;
  std::vector<double> values(64);
  for (int i = 0; i < 64; ++i) {
    // Only glyphs that span all 5 columns, so that a label is one run of text_runs.
    labels.push_back("layer" + std::string(1, char('A' + i / 8)) + "_expert" +
                     std::string(1, char('A' + i % 8)));
    values[std::size_t(i)] = 1 + i % 8;
  }
  const PlotFiles bars = plot_bars("pemoe_test_bars_many", labels, values);
  const Decoded b = decode_png(bars.png);
  CHECK(b.width == 800);
  CHECK(b.height == 500);
  int axis = 0;  // the lowest row of bar pixels is the zero line
  for (int y = 0; y < b.height; ++y)
    for (int x = 0; x < b.width; ++x)
      if (b.at(x, y) == series_color(0)) axis = y;
  const auto runs = text_runs(b, axis + 5, b.height);
  CHECK(runs.size() >= 16);
  CHECK(*std::max_element(runs.begin(), runs.end()) <= 84);  // separate labels, none drawn over another
  std::remove(bars.csv.c_str());
  std::remove(bars.png.c_str());
}

TEST_CASE("titles wider than the image wrap onto a second line or end in dots, inside the image") {
  const std::string long_title =
      "finetune comparison: mean routing probability of every router, task x expert, all layers";
  const std::string one_word(80, 'W');
  PlotSeries s{"s", {0, 1}, {0, 1}};
  for (const std::string& title : {long_title, one_word}) {
    LinePlotOptions lo;
    lo.title = title;
    lo.width = 400;
    lo.height = 300;
    const PlotFiles lines = plot_lines("pemoe_test_title", {s}, lo);
    const Decoded d = decode_png(lines.png);
    CHECK(d.width == 400);
    CHECK(d.height == 300);
    CHECK(!all_white(d, 0, 0, 400, 24));  // the first line
    CHECK(all_white(d, 0, 0, 10, 60));    // nothing cut off at the sides
    CHECK(all_white(d, 390, 0, 400, 60));
    const bool wrapped = title == long_title;
    CHECK(all_white(d, 0, 26, 400, 38) == !wrapped);  // the second line
    CHECK(is_white(d.at(80, 45)) == wrapped);         // the y axis starts 18 px lower when wrapped
    std::remove(lines.csv.c_str());
    std::remove(lines.png.c_str());

    BarPlotOptions bo;
    bo.title = title;
    bo.width = 300;
    const PlotFiles bars = plot_bars("pemoe_test_title", {"a", "b"}, {1, 2}, bo);
    const Decoded db = decode_png(bars.png);
    CHECK(db.width == 300);
    CHECK(all_white(db, 0, 0, 10, 60));
    CHECK(all_white(db, 290, 0, 300, 60));
    std::remove(bars.csv.c_str());
    std::remove(bars.png.c_str());

    HeatmapOptions ho;
    ho.title = title;
    ho.cell = 20;
    const PlotFiles heat = plot_heatmap("pemoe_test_title", {0, 1, 2, 3}, 2, 2, ho);
    const Decoded dh = decode_png(heat.png);
    CHECK(dh.width == 70 + 2 * 20 + 110);
    const int top = wrapped ? 58 : 40;
    CHECK(dh.height == top + 2 * 20 + 50);
    CHECK(dh.at(70 + 5, top + 5) == colormap(0));  // the cells moved down under the second line
    CHECK(all_white(dh, 0, 0, 10, top));
    CHECK(all_white(dh, dh.width - 10, 0, dh.width, top));
    std::remove(heat.csv.c_str());
    std::remove(heat.png.c_str());
  }
}

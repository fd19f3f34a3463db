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
                                       HeatmapOptions{"load", "layer", "expert", 20});
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

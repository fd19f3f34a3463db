// io/png.hpp and io/plot.hpp: the PNG is valid (chunk CRCs, zlib stream, Adler-32) and holds the pixels.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>

#include "pemoe/io/plot.hpp"
#include "pemoe/io/png.hpp"

using namespace pemoe;

namespace {
std::vector<std::uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(f), {});
}
std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t(p[0]) << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
}

// Decodes a PNG written by write_png (stored deflate blocks) back into RGB pixels, checking every checksum.
RgbImage decode(const std::vector<std::uint8_t>& png) {
  REQUIRE(png.size() > 8);
  const std::uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  REQUIRE(std::equal(sig, sig + 8, png.begin()));
  std::size_t pos = 8;
  int w = 0, h = 0;
  std::vector<std::uint8_t> idat;
  bool end = false;
  while (pos + 12 <= png.size()) {
    const std::uint32_t len = be32(&png[pos]);
    const std::string type(png.begin() + std::ptrdiff_t(pos + 4), png.begin() + std::ptrdiff_t(pos + 8));
    REQUIRE(pos + 12 + len <= png.size());
    CHECK(detail::crc32(&png[pos + 4], len + 4) == be32(&png[pos + 8 + len]));
    if (type == "IHDR") {
      w = int(be32(&png[pos + 8]));
      h = int(be32(&png[pos + 12]));
      CHECK(png[pos + 16] == 8);
      CHECK(png[pos + 17] == 2);
    } else if (type == "IDAT") {
      idat.insert(idat.end(), png.begin() + std::ptrdiff_t(pos + 8),
                  png.begin() + std::ptrdiff_t(pos + 8 + len));
    } else if (type == "IEND") {
      end = true;
    }
    pos += 12 + len;
  }
  REQUIRE(end);
  REQUIRE(idat.size() > 6);
  CHECK((idat[0] * 256 + idat[1]) % 31 == 0);  // zlib header check
  std::vector<std::uint8_t> raw;
  std::size_t p = 2;
  for (;;) {
    const bool last = idat[p] & 1;
    REQUIRE((idat[p] >> 1) == 0);  // stored block
    const std::size_t len = idat[p + 1] | (idat[p + 2] << 8);
    REQUIRE(std::size_t((idat[p + 3] | (idat[p + 4] << 8)) ^ 0xFFFF) == len);
    raw.insert(raw.end(), idat.begin() + std::ptrdiff_t(p + 5), idat.begin() + std::ptrdiff_t(p + 5 + len));
    p += 5 + len;
    if (last) break;
  }
  std::uint32_t a = 1, b = 0;
  for (std::uint8_t c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  CHECK(be32(&idat[p]) == ((b << 16) | a));
  REQUIRE(raw.size() == std::size_t(h) * (std::size_t(w) * 3 + 1));
  RgbImage img(w, h);
  for (int y = 0; y < h; ++y) {
    CHECK(raw[std::size_t(y) * (w * 3 + 1)] == 0);
    std::copy_n(raw.begin() + std::ptrdiff_t(y * (w * 3 + 1) + 1), w * 3,
                img.pixels.begin() + std::ptrdiff_t(y * w * 3));
  }
  return img;
}
}  // namespace

TEST_CASE("write_png round-trips pixels through a valid PNG (multi-block zlib stream)") {
  RgbImage img(300, 120);  // 108,120 raw bytes: two stored blocks
  for (int y = 0; y < 120; ++y)
    for (int x = 0; x < 300; ++x) img.set(x, y, {std::uint8_t(x), std::uint8_t(y), std::uint8_t(x ^ y)});
  const std::string path = "pemoe_test_png.png";
  write_png(path, img);
  const RgbImage back = decode(read_file(path));
  CHECK(back.width == 300);
  CHECK(back.height == 120);
  CHECK(back.pixels == img.pixels);
  std::remove(path.c_str());
  CHECK_THROWS_AS(write_png("/nonexistent-dir/x.png", img), IoError);
}

TEST_CASE("plot_lines and plot_heatmap draw something in the right colours") {
  PlotSeries loss{"train", {}, {}};
  for (int i = 0; i < 100; ++i) {
    loss.x.push_back(i);
    loss.y.push_back(std::exp(-0.05 * i));
  }
  LinePlotOptions opt;
  opt.title = "loss";
  opt.log_y = true;
  plot_lines("pemoe_test_lines.png", {loss}, opt);
  const RgbImage lines = decode(read_file("pemoe_test_lines.png"));
  CHECK(lines.width == 800);
  std::size_t blue = 0;
  for (std::size_t i = 0; i < lines.pixels.size(); i += 3)
    blue += lines.pixels[i] == 31 && lines.pixels[i + 1] == 119 && lines.pixels[i + 2] == 180;
  CHECK(blue > 500);  // the curve crosses the whole plot
  std::remove("pemoe_test_lines.png");
  CHECK_THROWS_AS(plot_lines("x.png", {PlotSeries{"empty", {}, {}}}), ConfigError);

  plot_heatmap("pemoe_test_heat.png", {0, 1, 2, 3, 4, 5}, 2, 3,
               HeatmapOptions{"load", "layer", "expert", 20});
  const RgbImage heat = decode(read_file("pemoe_test_heat.png"));
  auto at = [&](int x, int y) {
    const std::uint8_t* p = &heat.pixels[(std::size_t(y) * heat.width + x) * 3];
    return Rgb{p[0], p[1], p[2]};
  };
  const Rgb first = at(70 + 5, 40 + 5), last = at(70 + 2 * 20 + 5, 40 + 20 + 5);
  const Rgb lo = detail::colormap(0), hi = detail::colormap(1);
  CHECK((first.r == lo.r && first.g == lo.g && first.b == lo.b));
  CHECK((last.r == hi.r && last.g == hi.g && last.b == hi.b));
  std::remove("pemoe_test_heat.png");
  CHECK_THROWS_AS(plot_heatmap("x.png", {1, 2, 3}, 2, 2), ConfigError);
}

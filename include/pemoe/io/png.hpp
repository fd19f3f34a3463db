/// @file png.hpp
/// @brief `RgbImage` and `write_png`: a dependency-free PNG writer (for loss curves, routing heatmaps).
#pragma once

#include <array>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"

namespace pemoe {

/// An 8-bit RGB colour.
struct Rgb {
  std::uint8_t r = 0, g = 0, b = 0;
};

/// A row-major 8-bit RGB raster; (0, 0) is the top-left pixel.
struct RgbImage {
  int width = 0, height = 0;
  std::vector<std::uint8_t> pixels;  ///< width·height·3 bytes

  RgbImage(int w, int h, Rgb fill = {255, 255, 255}) : width(w), height(h), pixels(std::size_t(w) * h * 3) {
    PEMOE_CHECK_CONFIG(w > 0 && h > 0, "RgbImage: size must be positive, got ", w, "x", h);
    for (std::size_t i = 0; i < pixels.size(); i += 3) {
      pixels[i] = fill.r;
      pixels[i + 1] = fill.g;
      pixels[i + 2] = fill.b;
    }
  }
  /// Sets a pixel; coordinates outside the image are ignored (drawing code may clip freely).
  void set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    std::uint8_t* p = &pixels[(std::size_t(y) * width + x) * 3];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }
  /// Fills the rectangle [x0, x1) × [y0, y1) (clipped).
  void fill_rect(int x0, int y0, int x1, int y1, Rgb c) {
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) set(x, y, c);
  }
};

namespace detail {

inline std::uint32_t crc32(const std::uint8_t* data, std::size_t n, std::uint32_t crc = 0) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

inline void put_u32_be(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(std::uint8_t(v >> s));
}

inline void png_chunk(std::vector<std::uint8_t>& out, const char* type,
                      const std::vector<std::uint8_t>& data) {
  put_u32_be(out, std::uint32_t(data.size()));
  const std::size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_u32_be(out, crc32(out.data() + start, out.size() - start));
}

}  // namespace detail

/**
 * @brief Encodes `image` as a PNG file (8-bit RGB, filter 0, zlib "stored" blocks: no compression library
 * needed; plots are small). Throws `IoError` naming the path when the file cannot be written.
 */
inline void write_png(const std::string& path, const RgbImage& image) {
  // Raw scanlines, each prefixed with filter type 0.
  const std::size_t row_bytes = std::size_t(image.width) * 3;
  std::vector<std::uint8_t> raw;
  raw.reserve((row_bytes + 1) * image.height);
  for (int y = 0; y < image.height; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), image.pixels.begin() + std::ptrdiff_t(y * row_bytes),
               image.pixels.begin() + std::ptrdiff_t((y + 1) * row_bytes));
  }
  // zlib stream: header, stored deflate blocks of at most 65535 bytes, Adler-32.
  std::vector<std::uint8_t> z = {0x78, 0x01};
  for (std::size_t pos = 0; pos < raw.size() || pos == 0;) {
    const std::size_t len = std::min<std::size_t>(65535, raw.size() - pos);
    const bool last = pos + len >= raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(std::uint8_t(len & 0xFF));
    z.push_back(std::uint8_t(len >> 8));
    z.push_back(std::uint8_t(~len & 0xFF));
    z.push_back(std::uint8_t((~len >> 8) & 0xFF));
    z.insert(z.end(), raw.begin() + std::ptrdiff_t(pos), raw.begin() + std::ptrdiff_t(pos + len));
    pos += len;
    if (last) break;
  }
  std::uint32_t a = 1, b = 0;
  for (std::uint8_t c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  detail::put_u32_be(z, (b << 16) | a);

  std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<std::uint8_t> ihdr;
  detail::put_u32_be(ihdr, std::uint32_t(image.width));
  detail::put_u32_be(ihdr, std::uint32_t(image.height));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit, truecolour, deflate, filter 0, no interlace
  detail::png_chunk(png, "IHDR", ihdr);
  detail::png_chunk(png, "IDAT", z);
  detail::png_chunk(png, "IEND", {});
  std::ofstream f(path, std::ios::binary);
  PEMOE_CHECK_AS(IoError, f.good(), "write_png: cannot open '", path,
                 "' for writing (does the directory exist?)");
  f.write(reinterpret_cast<const char*>(png.data()), std::streamsize(png.size()));
  PEMOE_CHECK_AS(IoError, f.good(), "write_png: writing '", path, "' failed (disk full?)");
}

}  // namespace pemoe

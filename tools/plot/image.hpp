/// @file image.hpp
/// @brief `RgbImage`, an 8-bit RGB raster with its size checked before it is allocated, and `write_png`
/// (compressed PNG through libpng). Part of `pemoe_plot` (tools and examples), not of the library.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pemoe::plot {

/// An 8-bit RGB colour.
struct Rgb {
  std::uint8_t r = 0, g = 0, b = 0;
  friend bool operator==(Rgb a, Rgb b) { return a.r == b.r && a.g == b.g && a.b == b.b; }
  friend bool operator!=(Rgb a, Rgb b) { return !(a == b); }
};

/**
 * @brief A row-major 8-bit RGB raster; (0, 0) is the top-left pixel.
 *
 * The size is checked before anything is allocated: each side in [1, `max_side`] and at most `max_pixels`
 * pixels (`pemoe::ConfigError` naming the size otherwise), so a size computed from user input can never
 * overflow or ask for gigabytes. Memory: 3 bytes a pixel.
 */
class RgbImage {
 public:
  static constexpr long long max_side = 32768;        ///< largest width or height
  static constexpr long long max_pixels = 1LL << 26;  ///< largest width·height (192 MiB of RGB)

  /// A `width` × `height` image filled with `fill`; throws `ConfigError` for a size outside the limits.
  RgbImage(long long width, long long height, Rgb fill = {255, 255, 255});

  /// Width in pixels.
  int width() const { return m_width; }
  /// Height in pixels.
  int height() const { return m_height; }
  /// The pixel at (x, y); throws `ConfigError` outside the image.
  Rgb at(int x, int y) const;
  /// Sets a pixel; coordinates outside the image are ignored (drawing code may clip freely).
  void set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= m_width || y >= m_height) return;
    std::uint8_t* p = &m_pixels[(static_cast<std::size_t>(y) * static_cast<std::size_t>(m_width) +
                                 static_cast<std::size_t>(x)) *
                                3];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }
  /// Fills the rectangle [x0, x1) × [y0, y1), clipped to the image.
  void fill_rect(int x0, int y0, int x1, int y1, Rgb c);
  /// The width·height·3 bytes, row by row, R G B.
  const std::vector<std::uint8_t>& pixels() const { return m_pixels; }

 private:
  int m_width = 0, m_height = 0;
  std::vector<std::uint8_t> m_pixels;
};

/// Writes `image` to `path` as a compressed 8-bit RGB PNG (libpng, zlib's default level); throws
/// `pemoe::IoError` naming the path and libpng's reason when it cannot be written.
void write_png(const std::string& path, const RgbImage& image);

}  // namespace pemoe::plot

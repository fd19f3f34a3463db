// RgbImage and write_png (libpng's simplified write API: no setjmp in pemoe's code).
#include <png.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "pemoe/core/error.hpp"
#include "plot/image.hpp"

namespace pemoe::plot {

RgbImage::RgbImage(long long width, long long height, Rgb fill) {
  PEMOE_CHECK_CONFIG(
      width >= 1 && height >= 1 && width <= max_side && height <= max_side && width * height <= max_pixels,
      "RgbImage: size ", width, "x", height, " is outside the limits (each side 1..", max_side, ", at most ",
      max_pixels, " pixels)");
  m_width = static_cast<int>(width);
  m_height = static_cast<int>(height);
  m_pixels.resize(static_cast<std::size_t>(width * height) * 3);
  for (std::size_t i = 0; i < m_pixels.size(); i += 3) {
    m_pixels[i] = fill.r;
    m_pixels[i + 1] = fill.g;
    m_pixels[i + 2] = fill.b;
  }
}

Rgb RgbImage::at(int x, int y) const {
  PEMOE_CHECK_CONFIG(x >= 0 && y >= 0 && x < m_width && y < m_height, "RgbImage::at: pixel (", x, ", ", y,
                     ") is outside the ", m_width, "x", m_height, " image");
  const std::uint8_t* p = &m_pixels[(static_cast<std::size_t>(y) * static_cast<std::size_t>(m_width) +
                                     static_cast<std::size_t>(x)) *
                                    3];
  return {p[0], p[1], p[2]};
}

void RgbImage::fill_rect(int x0, int y0, int x1, int y1, Rgb c) {
  x0 = std::max(x0, 0);
  y0 = std::max(y0, 0);
  x1 = std::min(x1, m_width);
  y1 = std::min(y1, m_height);
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) set(x, y, c);
}

void write_png(const std::string& path, const RgbImage& image) {
  png_image png;
  std::memset(&png, 0, sizeof png);
  png.version = PNG_IMAGE_VERSION;
  png.width = static_cast<png_uint_32>(image.width());
  png.height = static_cast<png_uint_32>(image.height());
  png.format = PNG_FORMAT_RGB;
  if (!png_image_write_to_file(&png, path.c_str(), 0, image.pixels().data(), 0, nullptr)) {
    const std::string why = png.message[0] != '\0' ? png.message : "unknown libpng error";
    png_image_free(&png);
    throw IoError("write_png: cannot write '" + path + "': " + why);
  }
}

}  // namespace pemoe::plot

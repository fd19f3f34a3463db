/// @file version.hpp
/// @brief pemoe's version. CMake parses the three numbers below; keep their form.
#pragma once

#define PEMOE_VERSION_MAJOR 0
#define PEMOE_VERSION_MINOR 2
#define PEMOE_VERSION_PATCH 0

namespace pemoe {
/// The library version as "major.minor.patch".
inline constexpr const char* version_string = "0.2.0";
}  // namespace pemoe

# One version everywhere: include/pemoe/version.hpp (the source of truth, parsed by CMakeLists.txt) must agree
# with conanfile.py, ports/pemoe/vcpkg.json, CITATION.cff and the newest CHANGELOG.md entry.
#   cmake -DSOURCE=<pemoe> [-DEXPECTED=<project version>] -P versions.cmake
cmake_minimum_required(VERSION 3.21)
if(NOT DEFINED SOURCE)
  message(FATAL_ERROR "versions.cmake: -DSOURCE=<pemoe source dir> is required")
endif()
set(_errors "")

file(READ ${SOURCE}/include/pemoe/version.hpp _hpp)
foreach(_part MAJOR MINOR PATCH)
  if(NOT _hpp MATCHES "#define PEMOE_VERSION_${_part} ([0-9]+)")
    message(FATAL_ERROR "version.hpp: no PEMOE_VERSION_${_part}")
  endif()
  set(_${_part} ${CMAKE_MATCH_1})
endforeach()
set(_version ${_MAJOR}.${_MINOR}.${_PATCH})
message(STATUS "version.hpp: ${_version}")

function(_pemoe_expect what found)
  if(NOT found STREQUAL _version)
    set(_errors "${_errors}\n  ${what}: '${found}', version.hpp: '${_version}'" PARENT_SCOPE)
  else()
    message(STATUS "${what}: ${found}")
  endif()
endfunction()

if(DEFINED EXPECTED)
  _pemoe_expect("CMake project version" "${EXPECTED}")
endif()
set(_found "")
if(_hpp MATCHES "version_string = \"([^\"]*)\"")
  set(_found ${CMAKE_MATCH_1})
endif()
_pemoe_expect("version.hpp version_string" "${_found}")

file(READ ${SOURCE}/conanfile.py _conan)
set(_found "")
if(_conan MATCHES "\n    version = \"([^\"]*)\"")
  set(_found ${CMAKE_MATCH_1})
endif()
_pemoe_expect("conanfile.py version" "${_found}")

file(READ ${SOURCE}/ports/pemoe/vcpkg.json _manifest)
string(JSON _found ERROR_VARIABLE _err GET "${_manifest}" version-semver)
_pemoe_expect("ports/pemoe/vcpkg.json version-semver" "${_found}")

file(READ ${SOURCE}/CITATION.cff _cff)
set(_found "")
if(_cff MATCHES "\nversion: \"?([0-9][^\"\n]*)\"?\n")
  set(_found ${CMAKE_MATCH_1})
endif()
_pemoe_expect("CITATION.cff version" "${_found}")

file(READ ${SOURCE}/CHANGELOG.md _changelog)
set(_found "")
if(_changelog MATCHES "\n## \\[([0-9][^]]*)\\]")  # the first (newest) release heading
  set(_found ${CMAKE_MATCH_1})
endif()
_pemoe_expect("CHANGELOG.md newest entry" "${_found}")

if(_errors)
  message(FATAL_ERROR "versions disagree:${_errors}")
endif()

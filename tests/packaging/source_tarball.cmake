# The source release: builds the CPack source tarball (what `cmake --build build --target package_source`
# makes), unpacks it and checks that it is a complete tree: every file git tracks is in it (when run from a
# checkout with git), nothing of .git or the build directories is, scripts/cpp_sources.sh lists the same C++
# sources there without git, and the unpacked tree configures with every option on.
#   cmake -DCPACK=<cpack> -DCONFIG=<build>/CPackSourceConfig.cmake -DSOURCE=<pemoe> -DWORK=<dir>
#         -DGENERATOR=<gen> -DVERSION=<x.y.z> -P source_tarball.cmake
cmake_minimum_required(VERSION 3.21)
foreach(_v CPACK CONFIG SOURCE WORK GENERATOR VERSION)
  if(NOT DEFINED ${_v})
    message(FATAL_ERROR "source_tarball.cmake: -D${_v}=... is required")
  endif()
endforeach()

function(_pemoe_run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(rc)
    list(JOIN ARGN " " cmd)
    message(FATAL_ERROR "source_tarball.cmake: failed (${rc}): ${cmd}\n${out}")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
_pemoe_run(${CPACK} --config ${CONFIG} -B ${WORK})
set(_tarball ${WORK}/pemoe-${VERSION}.tar.gz)
if(NOT EXISTS ${_tarball})
  message(FATAL_ERROR "source_tarball.cmake: cpack did not write ${_tarball}")
endif()
file(SIZE ${_tarball} _size)
message(STATUS "source tarball: ${_tarball} (${_size} bytes)")
file(MAKE_DIRECTORY ${WORK}/unpacked)
_pemoe_run(${CMAKE_COMMAND} -E chdir ${WORK}/unpacked ${CMAKE_COMMAND} -E tar xzf ${_tarball})
set(_root ${WORK}/unpacked/pemoe-${VERSION})
if(NOT IS_DIRECTORY ${_root})
  message(FATAL_ERROR "source_tarball.cmake: the tarball does not unpack to pemoe-${VERSION}/")
endif()

# ---- contents ------------------------------------------------------------------------------------------
file(GLOB_RECURSE _files LIST_DIRECTORIES false RELATIVE ${_root} ${_root}/* ${_root}/.*)
file(GLOB_RECURSE _hidden LIST_DIRECTORIES false RELATIVE ${_root} ${_root}/.ci/* ${_root}/.clang-format)
list(APPEND _files ${_hidden})
list(REMOVE_DUPLICATES _files)
foreach(_f IN LISTS _files)
  if(_f MATCHES "(^|/)\\.git/" OR _f MATCHES "^(build|cmake-build)[^/]*/" OR _f MATCHES "(^|/)__pycache__/")
    message(FATAL_ERROR "source tarball: holds ${_f} (version control or a build directory)")
  endif()
endforeach()
foreach(_f README.md LICENSE CHANGELOG.md CITATION.cff CMakeLists.txt .clang-format .ci/run conanfile.py
        test_package/conanfile.py ports/pemoe/vcpkg.json ports/pemoe/portfile.cmake ports/pemoe/usage
        scripts/test.sh scripts/install_deps.sh scripts/cpp_sources.sh scripts/conan_create.sh
        docs/Doxyfile.in docs/guides/index.md include/pemoe/pemoe.hpp tests/CMakeLists.txt)
  if(NOT EXISTS ${_root}/${_f})
    message(FATAL_ERROR "source tarball: ${_f} is missing")
  endif()
endforeach()

find_program(_git git)
set(_tracked "")
if(_git)
  execute_process(COMMAND ${_git} -C ${SOURCE} rev-parse --show-toplevel OUTPUT_VARIABLE _top
                  OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc ERROR_QUIET)
  file(REAL_PATH ${SOURCE} _src_real)
  if(_rc EQUAL 0 AND _top STREQUAL _src_real)
    execute_process(COMMAND ${_git} -C ${SOURCE} ls-files OUTPUT_VARIABLE _ls RESULT_VARIABLE _rc)
    if(_rc EQUAL 0)
      string(REPLACE "\n" ";" _ls "${_ls}")
      foreach(_f IN LISTS _ls)
        if(_f AND EXISTS ${SOURCE}/${_f})
          list(APPEND _tracked ${_f})
          if(NOT EXISTS ${_root}/${_f})
            message(FATAL_ERROR "source tarball: the tracked file ${_f} is missing (CPACK_SOURCE_IGNORE_FILES?)")
          endif()
        endif()
      endforeach()
      list(LENGTH _tracked _n)
      message(STATUS "source tarball: all ${_n} tracked files present")
    endif()
  endif()
endif()

# ---- scripts/cpp_sources.sh (clang-format's list) without git -------------------------------------------
find_program(_bash bash REQUIRED)
execute_process(COMMAND ${_bash} -c "bash scripts/cpp_sources.sh | tr '\\0' '\\n'" WORKING_DIRECTORY ${_root}
                OUTPUT_VARIABLE _listed RESULT_VARIABLE _rc)
if(_rc)
  message(FATAL_ERROR "source tarball: scripts/cpp_sources.sh failed (${_rc})")
endif()
string(REPLACE "\n" ";" _listed "${_listed}")
list(FILTER _listed EXCLUDE REGEX "^$")
list(LENGTH _listed _n)
if(_n LESS 50)
  message(FATAL_ERROR "source tarball: cpp_sources.sh lists only ${_n} files")
endif()
if(_tracked)
  set(_want ${_tracked})
  list(FILTER _want INCLUDE REGEX "\\.(hpp|cpp|cu|cuh)$")
  list(SORT _want)
  list(SORT _listed)
  # A tracked source the find fallback misses would escape clang-format in a tarball: an error. Files it lists
  # beyond git's are untracked files of a work tree in progress, packed because CPack packs the disk.
  set(_missing ${_want})
  list(REMOVE_ITEM _missing ${_listed})
  if(_missing)
    message(FATAL_ERROR "source tarball: scripts/cpp_sources.sh without git misses tracked sources: ${_missing}")
  endif()
  set(_extra ${_listed})
  list(REMOVE_ITEM _extra ${_want})
  if(_extra)
    message(STATUS "source tarball: untracked sources packed (a work tree in progress): ${_extra}")
  endif()
endif()
message(STATUS "source tarball: cpp_sources.sh lists ${_n} C++ sources without git")

# ---- the unpacked tree configures with everything on -----------------------------------------------------
_pemoe_run(${CMAKE_COMMAND} -S ${_root} -B ${WORK}/build -G ${GENERATOR} -DCMAKE_BUILD_TYPE=Release
           -DPEMOE_BUILD_TESTS=ON -DPEMOE_BUILD_EXAMPLES=ON -DPEMOE_BUILD_BENCH=ON -DPEMOE_BUILD_DOCS=ON)
message(STATUS "source tarball: the unpacked tree configures")

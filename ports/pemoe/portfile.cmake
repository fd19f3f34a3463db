# vcpkg port of pemoe (header-only). Use it as an overlay port from a pemoe checkout or source tarball:
#   vcpkg install pemoe --overlay-ports=<pemoe>/ports            (classic mode)
#   vcpkg.json: "dependencies": ["pemoe"], plus "overlay-ports": ["<pemoe>/ports"] in vcpkg-configuration.json
# The sources are the tree this port sits in (../..). For a registry, replace SOURCE_PATH by
# vcpkg_from_github(OUT_SOURCE_PATH SOURCE_PATH REPO <owner>/pemoe REF "v${VERSION}" SHA512 <sha512>).
# ctest's "package: vcpkg port" runs this file with plain CMake (tests/packaging/vcpkg_port.cmake).
set(VCPKG_BUILD_TYPE release)  # header-only: one configuration is enough
get_filename_component(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)

vcpkg_check_features(OUT_FEATURE_OPTIONS FEATURE_OPTIONS
  FEATURES
    openmp PEMOE_WITH_OPENMP
    dnnl   PEMOE_WITH_DNNL
    cuda   PEMOE_WITH_CUDA
)

vcpkg_cmake_configure(
  SOURCE_PATH "${SOURCE_PATH}"
  OPTIONS
    ${FEATURE_OPTIONS}
    -DPEMOE_BUILD_TESTS=OFF
    -DPEMOE_BUILD_EXAMPLES=OFF
    -DPEMOE_BUILD_BENCH=OFF
    -DPEMOE_BUILD_DOCS=OFF
    -DPEMOE_WERROR=OFF
    -DPEMOE_WITH_LAPACK=OFF  # no system LAPACK picked up behind vcpkg's back (not a port feature yet)
    -DPEMOE_INSTALL_CMAKEDIR=share/pemoe
)
vcpkg_cmake_install()
vcpkg_cmake_config_fixup(PACKAGE_NAME pemoe CONFIG_PATH share/pemoe)

# Header-only: nothing architecture-specific, no debug tree.
file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/debug")
file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")

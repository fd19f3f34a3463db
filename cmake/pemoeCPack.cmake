# CPack: the source release tarball and a binary (headers + package config) tarball.
#   cmake --build build --target package_source   ->  build/pemoe-<version>.tar.gz
# The tarball holds the source tree as it is on disk, minus version control, build directories and caches, so
# make it from a clean checkout. Its unpacked tree needs no git: `bash scripts/test.sh` works there
# (scripts/cpp_sources.sh falls back to find).
set(CPACK_VERBATIM_VARIABLES YES)  # values reach CPack as written here (regexes included)
set(CPACK_PACKAGE_NAME pemoe)
set(CPACK_PACKAGE_VENDOR "pemoe authors")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_RESOURCE_FILE_LICENSE "${PROJECT_SOURCE_DIR}/LICENSE")
set(CPACK_RESOURCE_FILE_README "${PROJECT_SOURCE_DIR}/README.md")
set(CPACK_GENERATOR TGZ)
set(CPACK_PACKAGE_FILE_NAME "pemoe-${PROJECT_VERSION}-headers")
set(CPACK_SOURCE_GENERATOR TGZ)
set(CPACK_SOURCE_PACKAGE_FILE_NAME "pemoe-${PROJECT_VERSION}")
# Regular expressions matched against absolute paths (any match leaves the file or directory out); the build
# directories are anchored at the source root, so a checkout under a directory named build* still packs.
string(REGEX REPLACE "([][+.*()^$?|\\])" "\\\\\\1" _pemoe_root "${PROJECT_SOURCE_DIR}")
set(CPACK_SOURCE_IGNORE_FILES
    "/\\.git/" "/\\.git$" "/\\.cache/" "/__pycache__/" "\\.pyc$" "\\.swp$" "~$"
    "^${_pemoe_root}/build[^/]*/" "^${_pemoe_root}/cmake-build[^/]*/" "^${_pemoe_root}/out/"
    "^${_pemoe_root}/test_package/build/" "^${_pemoe_root}/CMakeUserPresets\\.json$" "^${_pemoe_root}/bench-results/")
include(CPack)

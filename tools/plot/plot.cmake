# pemoe_plot: line plots, heatmaps and bar charts as CSV + PNG (libpng) for the tools, the examples and their
# tests; not part of the header-only library. Included by tools/, examples/ and tests/ (whichever are built);
# the target is defined once.
find_package(PNG REQUIRED)  # every includer gets the imported PNG::PNG (imported targets are per directory)
include_guard(GLOBAL)
add_library(pemoe_plot STATIC ${CMAKE_CURRENT_LIST_DIR}/plot.cpp ${CMAKE_CURRENT_LIST_DIR}/png.cpp)
cmake_path(GET CMAKE_CURRENT_LIST_DIR PARENT_PATH _pemoe_tools_dir)
target_include_directories(pemoe_plot PUBLIC ${_pemoe_tools_dir})  # #include "plot/plot.hpp"
target_link_libraries(pemoe_plot PUBLIC pemoe::pemoe PRIVATE PNG::PNG pemoe_dev_flags)

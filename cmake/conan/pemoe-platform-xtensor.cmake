# Conan: included by the generated pemoe-config.cmake when 'xtensor' is a [platform_requires] of the consumer's
# profile (Conan then generates nothing for it): the system's own CMake package provides xtensor.
include(CMakeFindDependencyMacro)
if(NOT TARGET xtensor)
  find_dependency(xtensor 0.24 CONFIG)
endif()
set_property(TARGET pemoe::pemoe APPEND PROPERTY INTERFACE_LINK_LIBRARIES xtensor)

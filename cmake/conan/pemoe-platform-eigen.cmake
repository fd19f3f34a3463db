# Conan: included by the generated pemoe-config.cmake when 'eigen' is a [platform_requires] of the consumer's
# profile (Conan then generates nothing for it): the system's own CMake package provides Eigen3::Eigen.
include(CMakeFindDependencyMacro)
if(NOT TARGET Eigen3::Eigen)
  find_dependency(Eigen3 3.4 NO_MODULE)
endif()
set_property(TARGET pemoe::pemoe APPEND PROPERTY INTERFACE_LINK_LIBRARIES Eigen3::Eigen)

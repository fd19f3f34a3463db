# Conan: included by the generated pemoe-config.cmake when 'onednn' is a [platform_requires] of the consumer's
# profile (Conan then generates nothing for it): the system's own CMake package provides DNNL::dnnl.
include(CMakeFindDependencyMacro)
if(NOT TARGET DNNL::dnnl)
  find_dependency(dnnl CONFIG)
endif()
set_property(TARGET pemoe::dnnl APPEND PROPERTY INTERFACE_LINK_LIBRARIES DNNL::dnnl)

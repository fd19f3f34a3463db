# Conan: included by the generated pemoe-config.cmake when 'nlohmann_json' is a [platform_requires] of the consumer's
# profile (Conan then generates nothing for it): the system's own CMake package provides nlohmann_json::nlohmann_json.
include(CMakeFindDependencyMacro)
if(NOT TARGET nlohmann_json::nlohmann_json)
  find_dependency(nlohmann_json 3 CONFIG)
endif()
set_property(TARGET pemoe::pemoe APPEND PROPERTY INTERFACE_LINK_LIBRARIES nlohmann_json::nlohmann_json)

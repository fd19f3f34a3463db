# Heavy instantiations compiled once for pemoe's own binaries (never installed; header-only users need none
# of this). Each variant is compiled with exactly the usage requirements of the binaries that link it, so
# both see the same code (the One Definition Rule):
#   pemoe_prebuilt_plain    pemoe::pemoe + pemoe_dev_flags           (role tests, docs guides, README program)
#   pemoe_prebuilt_fastest  pemoe_fastest + pemoe_fast_flags         (tools, examples, benches)
# A binary with other requirements (another backend, LAPACK, other flags) must not link one: it instantiates
# the templates itself. Measured: MPO `decompose<float>` alone costs GCC about 45 s per translation unit.
# Built only when a binary links it (EXCLUDE_FROM_ALL).
function(pemoe_add_prebuilt name)
  add_library(${name} STATIC EXCLUDE_FROM_ALL ${PROJECT_SOURCE_DIR}/cmake/prebuilt/decompose.cpp)
  target_link_libraries(${name} PUBLIC ${ARGN})
  target_compile_definitions(${name} PUBLIC PEMOE_PREBUILT_DECOMPOSE)
endfunction()
pemoe_add_prebuilt(pemoe_prebuilt_plain pemoe::pemoe pemoe_dev_flags)
pemoe_add_prebuilt(pemoe_prebuilt_fastest pemoe_fastest pemoe_fast_flags)

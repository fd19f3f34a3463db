// Empty translation unit: it makes CMake build the tests' precompiled header in pemoe_test_main, which every
// test executable then reuses (catch_main.cpp cannot use it, it must see CATCH_CONFIG_MAIN first).

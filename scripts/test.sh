#!/usr/bin/env bash
# Command 2 of the README (and of CI): install what is missing, check formatting, build everything with
# -Wall -Wextra -Werror and run every test through ctest (the role tests with Clang under AddressSanitizer +
# UndefinedBehaviorSanitizer, the rest with GCC in Release), build the docs (Doxygen warnings are errors) and create the
# Conan package.
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
bash scripts/install_deps.sh

echo "== clang-format"
# The tracked sources in a git checkout, every source under include/ tools/ tests/ bench/ examples/ docs/ cmake/
# test_package/ in a tarball (git is not needed).
bash scripts/cpp_sources.sh | xargs -0 -r clang-format --dry-run -Werror

# Every test is built once (2 cores, a 25-minute budget): the role tests (tests/<role>/) and the header checks
# with Clang under the sanitizers, everything else with GCC in Release; the benches, which CI compiles and never
# runs, with Clang at -O0. So both compilers build the library (-Wall -Wextra -Werror), and each source is
# compiled once.
echo "== build (GCC, Release, -Werror): library, tools, examples, fast-path tests; run them"
# -O1 rather than -O3: GCC's time on these sources goes mostly to its front end (template instantiation is half
# of finetune_compare.cpp's compile at any level); -O2 costs 15 to 30 % more than -O1 (measured on
# lora_demo.cpp: 23 s against 27 to 32 s), and the tests check results, not speed. A 1 GiB heap before GCC's
# garbage collector runs: 5 to 10 % less compile time, about 0.3 GiB more memory per job. Benchmark with a plain
# Release build.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" \
      -DCMAKE_CXX_FLAGS="--param ggc-min-expand=100 --param ggc-min-heapsize=1048576" \
      -DPEMOE_WERROR=ON -DPEMOE_BUILD_TESTS=ON -DPEMOE_TEST_SET=fast_paths -DPEMOE_BUILD_EXAMPLES=ON \
      -DPEMOE_BUILD_BENCH=OFF -DPEMOE_BUILD_DOCS=ON >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build -j "$jobs" --output-on-failure

echo "== role tests and header checks (Clang, -fsanitize=address,undefined, -Werror); the benches compile"
# Clang: its build of these tests took 430 s where GCC's took 640 s, and they ran in 93 s against 135 s
# (measured on the same machine). -O1: the sanitizers' checks do not need -O3, and the build is about twice as
# fast. The same tests at the machine's SIMD width, on oneDNN and on LAPACK, ran above (native:, dnnl:,
# mpo (lapack):).
# UBSan's null, alignment and pointer-overflow checks instrument every memory access and double this build's
# compile time (72 s -> 43 s on one unity file, about 4.5 minutes of the 25); AddressSanitizer still stops a null
# dereference, and every other UBSan check (overflow, shifts, bounds, float casts, enums, ...) stays on. Build
# with -DPEMOE_SANITIZE_SKIP= for all of them.
# The benches here only need to compile: Clang at -O0 without instrumentation (bench_gpt2.cpp: 36 s, against
# 98 s with GCC at -O0).
cmake -S . -B build-asan -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" -DPEMOE_SANITIZE=ON -DPEMOE_SANITIZE_SKIP=null,alignment,pointer-overflow \
      -DPEMOE_NATIVE=OFF -DPEMOE_WERROR=ON -DPEMOE_TEST_SET=roles -DPEMOE_BUILD_TESTS=ON -DPEMOE_BUILD_EXAMPLES=OFF \
      -DPEMOE_BUILD_BENCH=ON -DPEMOE_BENCH_EXTRA_FLAGS="-O0 -fno-sanitize=all" -DPEMOE_BUILD_DOCS=OFF >/dev/null
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan -j "$jobs" --output-on-failure

echo "== docs (Doxygen)"
cmake --build build --target docs

echo "== packaging"
# The Conan 2 package, created offline against the Debian packages in a throw-away CONAN_HOME; its
# test_package/ builds and runs. (The vcpkg port, the source tarball and the version check are ctest tests
# above: "package: ...".)
bash scripts/conan_create.sh

echo "pemoe: all checks passed"

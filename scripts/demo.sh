#!/usr/bin/env bash
# Command 1 of the README: install what is missing, build the demo (Release, -march=native), run it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPEMOE_BUILD_TESTS=OFF -DPEMOE_BUILD_BENCH=OFF \
      -DPEMOE_BUILD_DOCS=OFF -DPEMOE_BUILD_EXAMPLES=ON >/dev/null
cmake --build build --target pemoe_lora_demo
./build/examples/pemoe_lora_demo "$@"

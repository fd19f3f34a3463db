#!/usr/bin/env bash
# Command 1 of the README: install what is missing, build the two end-to-end examples (Release, -march=native)
# and run a short version of each (3 min 54 s on 2 cores of an AMD EPYC; the short runs rank the methods by
# held-out loss, exact match needs the full length):
#   1. pemoe_pretrain_gpt2: a byte-level GPT-2 (3.3 M parameters) pretrained on the fortunes and two task
#      families of pemoe's offline task suite;
#   2. pemoe_finetune_compare: that model frozen and fine-tuned on six held-out task families with full
#      fine-tuning, LoRA, (IA)3, MoV, MoLoRA, sparse MoLA and MPOE: a table and plots.
# The full-length runs (5 + 6.5 minutes there) are the examples' defaults; their table is in the README.
# Output directory: $PEMOE_DEMO_OUT (default runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPEMOE_BUILD_TESTS=OFF -DPEMOE_BUILD_BENCH=OFF \
      -DPEMOE_BUILD_DOCS=OFF -DPEMOE_BUILD_EXAMPLES=ON >/dev/null
cmake --build build --target pemoe_pretrain_gpt2 pemoe_finetune_compare
out=${PEMOE_DEMO_OUT:-runs/demo}
./build/examples/pemoe_pretrain_gpt2 --out "$out/gpt2-tiny" --steps 500 --eval-every 250
./build/examples/pemoe_finetune_compare --model "$out/gpt2-tiny" --out "$out/compare" --steps 180 --eval-every 60 \
    --eval-per-task 30
echo
echo "demo done: the table is $out/compare/results.md, the plots are $out/compare/*.png and"
echo "$out/compare/<method>/{routing,expert_load}.png, the pretraining curve is $out/gpt2-tiny/loss.png"

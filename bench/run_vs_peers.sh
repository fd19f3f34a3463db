#!/usr/bin/env bash
# pemoe's fast-path benchmarks beside their PyTorch peers, in one sitting (the machine is shared and its CPU
# changes between boots: compare only figures from the same run). Needs pip torch (+ transformers, peft for the
# GPT-2 peer) and a Release build in build/ (with oneDNN: libdnnl-dev). Writes everything under $OUT
# (default bench-results/<date>), one file per run, and prints a summary.
#
#   bash bench/run_vs_peers.sh                 # gemm shapes, GPT-2 training, adapter layers; 1 and 2 threads
#   PARTS="gemm gpt2" THREADS="1" bash bench/run_vs_peers.sh
#   PARTS="t5" THREADS="1" bash bench/run_vs_peers.sh        # T5-small training, frozen + MoV and full
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-results/$(date +%Y%m%d-%H%M)}
PARTS=${PARTS:-"gemm gpt2 layers"}
THREADS=${THREADS:-"1 2"}
PEERS=${PEERS:-../shared/peers}
mkdir -p "$OUT"
{ lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed 's/Flags:.*\(avx512_bf16\|amx_bf16\).*/Flags: ... \1 .../'; uptime; } |
  tee "$OUT/cpu.txt"
for t in $THREADS; do
  export OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t
  for part in $PARTS; do
    case $part in
      gemm)
        ./build/bench/pemoe_bench_gemm --benchmark_min_time=0.3 --benchmark_format=json > "$OUT/gemm_pemoe_t$t.json"
        python3 bench/peers/torch_gemm_shapes.py --threads "$t" --min-time 0.3 > "$OUT/gemm_torch_t$t.jsonl" ;;
      gpt2)
        # one process per variant: peak RSS is per process
        for v in config_d_frozen_molora/eigen config_d_frozen_molora/dnnl config_d_frozen_molora/dnnl_packed_f32 \
                 config_d_frozen_molora/dnnl_packed_bf16 config_d_frozen_molora/dnnl_packed_bf16_autocast \
                 config_d_frozen_molora/dnnl_packed_bf16_keep_f32 \
                 config_a_full/eigen config_a_full/dnnl; do
          ./build/bench/pemoe_bench_gpt2 --benchmark_filter="$v/" --benchmark_format=json \
            > "$OUT/gpt2_pemoe_${v//\//_}_t$t.json" 2>/dev/null || true
        done
        python3 "$PEERS/hf_gpt2_bench.py" --mode train --config d --threads "$t" > "$OUT/gpt2_torch_d_t$t.json"
        python3 "$PEERS/hf_gpt2_bench.py" --mode train --config d --bf16 --threads "$t" > "$OUT/gpt2_torch_d_bf16_t$t.json"
        python3 "$PEERS/hf_gpt2_bench.py" --mode train --config a --threads "$t" > "$OUT/gpt2_torch_a_t$t.json" ;;
      t5)
        for v in config_c_frozen_mov/eigen config_c_frozen_mov/dnnl config_c_frozen_mov/dnnl_packed_f32 \
                 config_c_frozen_mov/dnnl_packed_bf16 config_a_full/eigen config_a_full/dnnl; do
          ./build/bench/pemoe_bench_t5 --benchmark_filter="$v/" --benchmark_format=json \
            > "$OUT/t5_pemoe_${v//\//_}_t$t.json" 2>/dev/null || true
        done
        python3 "$PEERS/hf_t5_bench.py" --mode train --config c --threads "$t" > "$OUT/t5_torch_c_t$t.json"
        python3 "$PEERS/hf_t5_bench.py" --mode train --config c --bf16 --threads "$t" > "$OUT/t5_torch_c_bf16_t$t.json"
        python3 "$PEERS/hf_t5_bench.py" --mode train --config a --threads "$t" > "$OUT/t5_torch_a_t$t.json" ;;
      layers)
        ./build/bench/pemoe_bench_moe_adapters --benchmark_min_time=0.3 --benchmark_format=json \
          > "$OUT/layers_pemoe_t$t.json"
        python3 "$PEERS/torch_layers_bench.py" --threads "$t" > "$OUT/layers_torch_t$t.txt" ;;
    esac
  done
done
python3 bench/summarize_vs_peers.py "$OUT" | tee "$OUT/summary.md"

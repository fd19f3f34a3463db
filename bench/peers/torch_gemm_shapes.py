#!/usr/bin/env python3
"""torch.mm at the shapes of pemoe_bench_gemm (GPT-2-124M training, B*T = 256 rows), the peer of that bench.

For a linear d_in -> d_out: fwd y = x @ W.T, dx = dy @ W, dW = dy.T @ x (f32), and fwd/dx in bf16 (what
`hf_gpt2_bench.py --bf16` runs). Run it beside pemoe_bench_gemm in the same sitting, one thread each:

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python3 bench/peers/torch_gemm_shapes.py --threads 1
    OMP_NUM_THREADS=1 ./build/bench/pemoe_bench_gemm --benchmark_filter='gemm/'

Prints one JSON line per product: shape, product, dtype, median ms, GFLOP/s (median), and the CPU.
"""
import argparse
import json
import platform
import statistics
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--min-time", type=float, default=0.5, help="seconds per product (after one warm-up call)")
args = ap.parse_args()
torch.set_num_threads(args.threads)

SHAPES = [(256, 768, 2304), (256, 768, 768), (256, 768, 3072), (256, 3072, 768), (256, 768, 50257),
          (2048, 768, 3072), (2048, 2048, 2048)]


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def time_it(fn):
    fn()
    ts = []
    t_end = time.perf_counter() + args.min_time
    while time.perf_counter() < t_end or len(ts) < 3:
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


g = torch.Generator().manual_seed(0)
for rows, d_in, d_out in SHAPES:
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(rows, d_in, generator=g).to(dtype)
        W = torch.randn(d_out, d_in, generator=g).to(dtype)
        dy = torch.randn(rows, d_out, generator=g).to(dtype)
        y = torch.empty(rows, d_out, dtype=dtype)
        dx = torch.empty(rows, d_in, dtype=dtype)
        dW = torch.empty(d_out, d_in, dtype=dtype)
        products = {"fwd": lambda: torch.mm(x, W.t(), out=y), "dx": lambda: torch.mm(dy, W, out=dx)}
        if dtype == torch.float32:
            products["dW"] = lambda: torch.mm(dy.t(), x, out=dW)
        for name, fn in products.items():
            t = time_it(fn)
            print(json.dumps(dict(shape=f"{rows}x{d_in}x{d_out}", product=name, dtype=str(dtype).split(".")[1],
                                  ms=round(t * 1e3, 4), gflops=round(2.0 * rows * d_in * d_out / t / 1e9, 2),
                                  threads=args.threads, torch=torch.__version__, cpu=cpu_model())), flush=True)

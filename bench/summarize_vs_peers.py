#!/usr/bin/env python3
"""Markdown tables from a bench/run_vs_peers.sh results folder: pemoe beside PyTorch, same sitting."""
import glob
import json
import os
import re
import sys

out = sys.argv[1]
print(f"# pemoe vs PyTorch, {os.path.basename(out)}\n")
print("```\n" + open(os.path.join(out, "cpu.txt")).read().strip() + "\n```\n")


def load_gbench(path):
    try:
        return json.load(open(path))["benchmarks"]
    except (OSError, ValueError, KeyError):
        return []


def model_table(out, t, prefix, bench_prefix, title, labels, config_of):
    """Prints pemoe's training benchmark <prefix>_pemoe_*_t<t>.json beside the PyTorch peer's
    <prefix>_torch_<config>_t<t>.json: tokens/s, peak RSS and the ratio, one row per pemoe variant."""
    rows = []
    for p in sorted(glob.glob(os.path.join(out, f"{prefix}_pemoe_*_t{t}.json"))):
        for b in load_gbench(p):
            rows.append((b["name"].replace(bench_prefix, "").replace("/iterations:8", ""), b["tokens_per_s"],
                         b.get("peak_rss_MB", 0)))
    peers = {}
    for cfg in labels:
        try:
            r = json.loads(open(os.path.join(out, f"{prefix}_torch_{cfg}_t{t}.json")).read().strip().splitlines()[-1])
            peers[cfg] = (r["tok_s"], r.get("peak_rss_mb", 0))
        except (OSError, ValueError, KeyError, IndexError):
            pass
    if not rows:
        return
    print(f"## {title}\n")
    print("| pemoe variant | tokens/s | peak RSS MB | PyTorch peer | peer tokens/s | peer RSS MB | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, tok, rss in rows:
        cfg = config_of(name)
        pt = peers.get(cfg)
        if pt:
            print(f"| {name} | {tok:.1f} | {rss:.0f} | {labels[cfg]} | {pt[0]:.1f} | {pt[1]:.0f} | {tok / pt[0]:.2f}× |")
        else:
            print(f"| {name} | {tok:.1f} | {rss:.0f} | {labels[cfg]} | – | – | – |")
    print()


for t in sorted({re.search(r"_t(\d+)\.", p).group(1) for p in glob.glob(os.path.join(out, "*_t*.*"))}):
    # ---- GEMM seam ----
    pem = load_gbench(os.path.join(out, f"gemm_pemoe_t{t}.json"))
    if pem:
        torch_rows = [json.loads(l) for l in open(os.path.join(out, f"gemm_torch_t{t}.jsonl")) if l.strip()]
        peer = {(r["shape"], r["product"], r["dtype"]): r["gflops"] for r in torch_rows}
        cells, skinny = {}, {}
        for b in pem:
            parts = b["name"].split("/")
            if parts[0] == "skinny":
                skinny.setdefault(parts[1], {})[parts[2]] = b["real_time"]
                continue
            _, prod, shape, backend = parts[:4]
            cells[(shape, prod, backend)] = b["GFLOPS"]
        print(f"## GEMM seam, GFLOP/s, {t} thread(s)\n")
        print("| shape (rows×d_in×d_out) | product | Eigen | oneDNN f32 | packed f32 | torch.mm f32 | best f32 / torch "
              "| packed bf16 | torch.mm bf16 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for shape, prod in dict.fromkeys((k[0], k[1]) for k in cells):
            g = lambda b: cells.get((shape, prod, b))
            f = lambda v: f"{v:.1f}" if v else "–"
            best = max(v for v in (g("eigen"), g("dnnl"), g("packed_f32")) if v)
            tf = peer.get((shape, prod, "float32"))
            print(f"| {shape} | {prod} | {f(g('eigen'))} | {f(g('dnnl'))} | {f(g('packed_f32'))} | {f(tf)} | "
                  f"{best / tf:.2f}× | {f(g('packed_bf16'))} | {f(peer.get((shape, prod, 'bfloat16')))} |"
                  if tf else f"| {shape} | {prod} | {f(g('eigen'))} | {f(g('dnnl'))} | {f(g('packed_f32'))} | – | – | "
                  f"{f(g('packed_bf16'))} | – |")
        print()
        if skinny:
            print(f"### Small-extent products (one extent ≤ 16), ms, {t} thread(s): pemoe's skinny kernels vs oneDNN\n")
            print("| product | skinny kernel | oneDNN | oneDNN / skinny |")
            print("|---|---|---|---|")
            for name, v in skinny.items():
                a, d = v.get("pemoe_skinny"), v.get("dnnl")
                print(f"| {name} | {a:.3f} | {d:.3f} | {d / a:.2f}× |" if a and d else f"| {name} | {a} | {d} | – |")
            print()
    # ---- GPT-2 and T5 training ----
    model_table(out, t, "gpt2", "BM_GPT2Train/", f"GPT-2-124M training, B4 T64, {t} thread(s)",
                {"a": "config a (full FT)", "d": "config d (MoLoRA E8 r8)", "d_bf16": "config d --bf16"},
                lambda name: "a" if name.startswith("config_a") else ("d_bf16" if "bf16" in name else "d"))
    model_table(out, t, "t5", "BM_T5Train/", f"T5 v1.1-small-shaped training, B8 S64 T16, {t} thread(s)",
                {"a": "config a (full FT)", "c": "config c (MoV E10)", "c_bf16": "config c --bf16"},
                lambda name: "a" if name.startswith("config_a") else ("c_bf16" if "bf16" in name else "c"))
    # ---- adapter layers ----
    pem = load_gbench(os.path.join(out, f"layers_pemoe_t{t}.json"))
    if pem:
        lp = os.path.join(out, f"layers_torch_t{t}.txt")
        torch_rows = [json.loads(l) for l in open(lp) if l.startswith("{")] if os.path.exists(lp) else []
        print(f"## Adapter layers (forward + backward), {t} thread(s)\n")
        print("| layer | N×d_in×d_out E r | pemoe ms | paired ratio to dense | best PyTorch form ms | pemoe / torch |")
        print("|---|---|---|---|---|---|")
        best_torch = {}
        forms = {"LoRA": ["b"], "MoLoRA": ["c", "c2"], "SparseTop2": ["d"], "MoV": ["e"], "Dense": ["a"]}
        for r in torch_rows:
            best_torch[(r["layer"], r["N"], r["d_in"], r["d_out"])] = r["ms_med"]
        ratio = {}
        for b in pem:
            m = re.match(r"BM_(\w+)/N:(\d+)/d_in:(\d+)/d_out:(\d+)/E:(\d+)/r:(\d+)/paired:(\d)", b["name"])
            if m and m.group(7) == "1" and "ratio" in b:
                ratio[m.groups()[:6]] = b["ratio"]
        for b in pem:
            m = re.match(r"BM_(\w+)/N:(\d+)/d_in:(\d+)/d_out:(\d+)/E:(\d+)/r:(\d+)/paired:(\d)", b["name"])
            if not m or m.group(7) != "0":
                continue
            layer, n, di, do, e, r = m.groups()[:6]
            ms = b["real_time"]
            tt = [best_torch.get((f, int(n), int(di), int(do))) for f in forms.get(layer, [])]
            tt = min([x for x in tt if x], default=None)
            rat = ratio.get((layer, n, di, do, e, r))
            print(f"| {layer} | {n}×{di}×{do} {e} {r} | {ms:.2f} | {f'{rat:.3f}' if rat else '–'} | "
                  f"{f'{tt:.2f}' if tt else '–'} | {f'{ms / tt:.2f}' if tt else '–'} |")
        print()

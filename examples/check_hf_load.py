#!/usr/bin/env python3
"""Checks that Hugging Face transformers loads the GPT-2 directory that pemoe_pretrain_gpt2 saved, and that
it computes what pemoe computes: the same logits and loss on a batch of byte-level text, and the same greedy
continuation.

    python3 examples/check_hf_load.py runs/gpt2-tiny [--pemoe build/tools/pemoe]

Development tool only (pip: torch, transformers, safetensors); pemoe itself needs no Python. Exit status 0
when everything agrees within float32 tolerance, 1 otherwise.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from transformers import GPT2LMHeadModel

TEXTS = [
    "The quick brown fox jumps over the lazy dog.\n",
    "Write in capitals.\nhello\nHELLO",
    "Count the vowels.\nbanana\n3",
    "Unicode: caf\u00e9 \u2014 \u00fcber, and a tab\tand  two spaces.",
]


def byte_ids(text, eos):
    return list(text.encode("utf-8")) + [eos]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--pemoe", default="build/tools/pemoe", help="the pemoe command-line tool")
    ap.add_argument("--rtol", type=float, default=2e-4, help="max |logit difference| / max |logit|")
    args = ap.parse_args()

    model = GPT2LMHeadModel.from_pretrained(args.model_dir, torch_dtype=torch.float32).eval()
    cfg = model.config
    eos = cfg.eos_token_id
    print(f"transformers loaded {args.model_dir}: {cfg.n_layer} layers, width {cfg.n_embd}, "
          f"vocab {cfg.vocab_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")

    # A padded batch of byte-level sequences (labels -100 on the padding, mask 0 there).
    seqs = [byte_ids(t, eos) for t in TEXTS]
    T = max(len(s) for s in seqs)
    ids = np.full((len(seqs), T), eos, dtype=np.int64)
    labels = np.full((len(seqs), T), -100, dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=np.int64)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = s
        labels[b, : len(s)] = s
        mask[b, : len(s)] = 1

    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        batch = os.path.join(tmp, "batch.safetensors")
        out = os.path.join(tmp, "out.safetensors")
        save_file({"input_ids": ids, "labels": labels, "attention_mask": mask}, batch)
        subprocess.run([args.pemoe, "score", "--model", args.model_dir, "--batch", batch, "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
        pem = load_file(out)
    with torch.no_grad():
        hf = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                   labels=torch.from_numpy(labels))
    hf_logits = hf.logits.numpy()
    real = mask.astype(bool)
    diff = np.abs(pem["logits"][real] - hf_logits[real]).max() / np.abs(hf_logits[real]).max()
    loss_diff = abs(float(pem["loss"]) - float(hf.loss)) / abs(float(hf.loss))
    print(f"logits: max |pemoe - transformers| / max |logit| = {diff:.2e} (bound {args.rtol:.0e})")
    print(f"loss:   pemoe {float(pem['loss']):.6f}, transformers {float(hf.loss):.6f} (relative {loss_diff:.2e})")
    ok &= diff <= args.rtol and loss_diff <= args.rtol

    # Greedy generation from a prompt the pretraining saw (one of the task families).
    prompt = torch.tensor([list("Write in capitals.\nbanana\n".encode())])
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    text = bytes(t for t in gen[0, prompt.shape[1]:].tolist() if t < 256).decode("utf-8", "replace")
    print(f"transformers greedy: 'Write in capitals.\\nbanana\\n' -> {text!r}")
    print("OK: transformers loads the model and agrees with pemoe" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""References for pemoe's bf16-packed frozen GPT-2 backbone (tests/dnnl/test_dnnl_backend.cpp): the PEFT LoRA
models of make_fixtures.py (<name> + <name>_lora) in float64, where every product of a frozen weight (the
LoRA sites' base Conv1D, every other Conv1D, the tied head) takes bf16-rounded operands, as a bf16 pack
computes them:

    forward  y  = bf16(x) · bf16(W) + b          backward  dx = bf16(dy) · bf16(W)ᵀ      (W frozen: no dW)

and everything else (the token lookup, the LoRA products, attention, LayerNorm, the loss) stays float64.
It writes <name>_lora/expected_bf16.safetensors: logits (B, T, V), loss (), grad.<PEFT key> of every adapter
tensor. pemoe accumulates these products in float32, so it agrees with this reference to float32
accumulation, plus the rare operand that float32 and float64 round to neighbouring bf16 values.

Run from this directory after make_fixtures.py (pip: torch transformers peft safetensors):

    python3 make_bf16_fixtures.py
"""
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from make_fixtures import MODELS, run

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from bf16_products import Bf16Product  # noqa: E402 (tests/data/bf16_products.py)


def bf16_frozen_products(model):
    n = 0
    for module in model.modules():
        if isinstance(module, Conv1D) and not module.weight.requires_grad:  # weight (d_in, d_out), bias
            module.forward = (lambda m: lambda x: Bf16Product.apply(x, m.weight) + m.bias)(module)
            n += 1
        elif isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:  # the tied head
            assert module.bias is None
            module.forward = (lambda m: lambda x: Bf16Product.apply(x, m.weight.T))(module)
            n += 1
    return n


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for name in MODELS:
        base = GPT2LMHeadModel.from_pretrained(os.path.join(HERE, name), torch_dtype=torch.float32)
        m = PeftModel.from_pretrained(base, os.path.join(HERE, name + "_lora"), is_trainable=True).double()
        m.train()  # dropout is 0: train() only matters for the autograd graph
        print(name, "frozen products with bf16 operands:", bf16_frozen_products(m))
        b = load_file(os.path.join(HERE, name, "batch.safetensors"))
        out = run(m, b["input_ids"], b["labels"])
        expected = {"logits": out.logits.detach().contiguous(), "loss": out.loss.detach().reshape(())}
        for n, p in m.named_parameters():
            if p.requires_grad and p.grad is not None:
                expected["grad." + n.replace(".default", "")] = p.grad.detach().clone().contiguous()
        save_file(expected, os.path.join(HERE, name + "_lora", "expected_bf16.safetensors"))
        print(name, "loss", out.loss.item())


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Reference for pemoe's bf16-packed frozen T5 backbone (tests/dnnl/test_dnnl_t5.cpp): the PEFT LoRA model of
make_peft_fixtures.py (v11 + peft/lora) in float64, where every product of a frozen linear (the LoRA sites'
base layers, every other linear, lm_head) takes bf16-rounded operands, as a bf16 pack computes them:

    forward  y  = bf16(x) · bf16(W)ᵀ        backward  dx = bf16(dy) · bf16(W)      (W frozen: no dW)

and everything else (the LoRA products, attention, norms, softmax, the loss) stays float64. It writes
peft/expected_lora_bf16.safetensors: logits (B, Tt, V), loss (), grad.<PEFT key> of every adapter tensor.
pemoe accumulates these products in float32, so it agrees with this reference to float32 accumulation, plus
the rare operand that float32 and float64 round to neighbouring bf16 values.

Run from tests/data/t5 (transformers 4.57.1, peft 0.21.2 used):

    pip install torch transformers==4.57.1 peft safetensors
    python3 make_bf16_fixture.py
"""
import os
import sys

import torch
from safetensors.torch import save_file

from make_fixtures import keep_float64
from make_peft_fixtures import peft_reference

HERE = os.path.dirname(os.path.abspath(__file__))
ADAPTER = os.path.join(HERE, "peft", "lora")
sys.path.insert(0, os.path.dirname(HERE))
from bf16_products import Bf16Product  # noqa: E402 (tests/data/bf16_products.py)


def bf16_frozen_linears(model):
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
            assert module.bias is None
            module.forward = (lambda m: lambda x: Bf16Product.apply(x, m.weight.T))(module)
            n += 1
    return n


def main():
    keep_float64()
    ref = peft_reference(ADAPTER, patch=lambda m: print("frozen linears with bf16 operands:", bf16_frozen_linears(m)))
    save_file(ref, os.path.join(HERE, "peft", "expected_lora_bf16.safetensors"))
    print("loss", float(ref["loss"]))


if __name__ == "__main__":
    main()

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

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import T5ForConditionalGeneration

from make_fixtures import keep_float64

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "v11")
ADAPTER = os.path.join(HERE, "peft", "lora")


def bf16(t):
    return t.to(torch.bfloat16).to(torch.float64)


class Bf16Product(torch.autograd.Function):
    """y = bf16(x)·bf16(W)ᵀ; dx = bf16(dy)·bf16(W); the frozen W gets no gradient."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(w)
        return bf16(x) @ bf16(w).T

    @staticmethod
    def backward(ctx, dy):
        (w,) = ctx.saved_tensors
        return bf16(dy) @ bf16(w), None


def bf16_frozen_linears(model):
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
            assert module.bias is None
            module.forward = (lambda m: lambda x: Bf16Product.apply(x, m.weight))(module)
            n += 1
    return n


def main():
    keep_float64()
    base = T5ForConditionalGeneration.from_pretrained(BASE, torch_dtype=torch.float32).double()
    m = PeftModel.from_pretrained(base, ADAPTER, is_trainable=True).double()
    m.eval()
    print("frozen linears with bf16 operands:", bf16_frozen_linears(m))
    b = load_file(os.path.join(BASE, "batch.safetensors"))
    out = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
            decoder_attention_mask=b["decoder_attention_mask"])
    out.loss.backward()
    ref = {"logits": out.logits.detach().contiguous(), "loss": out.loss.detach().reshape(())}
    for n, p in m.named_parameters():
        if p.requires_grad:
            ref["grad." + n.replace(".default", "")] = p.grad.detach().contiguous()
    save_file(ref, os.path.join(HERE, "peft", "expected_lora_bf16.safetensors"))
    print("loss", float(out.loss))


if __name__ == "__main__":
    main()

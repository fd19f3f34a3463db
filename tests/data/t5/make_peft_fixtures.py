#!/usr/bin/env python3
"""Reference fixtures for pemoe's PEFT adapter directories on T5 (include/pemoe/models/peft_dir.hpp,
load_t5 in t5_hf.hpp): a LoRA and an (IA)^3 adapter made by Hugging Face PEFT on the v11 fixture model
(tests/data/t5/v11), with the logits, loss and adapter gradients of PEFT's model on v11/batch.safetensors.

    peft/lora/  adapter_config.json + adapter_model.safetensors (PEFT's own files): r 3, lora_alpha 6,
                target_modules q, v, o, wi_1 (wi_1: the gated branch), lora_B drawn non-zero
    peft/ia3/   target_modules k, v, wo, feedforward_modules wo (PEFT's T5 default), vectors drawn around 1
    peft/expected_lora.safetensors, peft/expected_ia3.safetensors: logits (B, Tt, V) and loss () in float64
                (the model cast to float64 from the float32 files, HF's float32 upcasts kept in float64 as in
                make_fixtures.py), grad.<PEFT key> of every adapter tensor in float64

Run from tests/data/t5 with transformers 4.57.1 and peft (0.21.2 used):

    pip install torch transformers==4.57.1 peft safetensors
    python3 make_peft_fixtures.py
"""
import os

import torch
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import T5ForConditionalGeneration

from make_fixtures import keep_float64  # HF's float32 upcasts (RMS variance, softmax) stay float64

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "v11")
OUT = os.path.join(HERE, "peft")


def peft_reference(adapter_dir, patch=None):
    """PEFT's model of the adapter on v11, in float64 (`patch(model)`, when given, changes it first): logits,
    loss and the adapter gradients on v11/batch.safetensors."""
    base = T5ForConditionalGeneration.from_pretrained(BASE, torch_dtype=torch.float32).double()
    m = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True).double()
    m.eval()
    if patch:
        patch(m)
    b = load_file(os.path.join(BASE, "batch.safetensors"))
    out = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
            decoder_attention_mask=b["decoder_attention_mask"])
    out.loss.backward()
    ref = {"logits": out.logits.detach().contiguous(), "loss": out.loss.detach().reshape(())}
    for n, p in m.named_parameters():
        if p.requires_grad:
            key = n.replace(".default", "")  # PEFT's file keys drop the adapter name
            ref["grad." + key] = p.grad.detach().contiguous()
    return ref


def reference(model_dir, adapter_dir, name):
    """Loads the adapter with PEFT, in float64, and writes logits, loss and the adapter gradients."""
    save_file(peft_reference(adapter_dir), os.path.join(OUT, f"expected_{name}.safetensors"))


def make(name, config, draw):
    torch.manual_seed(17)
    base = T5ForConditionalGeneration.from_pretrained(BASE, torch_dtype=torch.float32)
    m = get_peft_model(base, config)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.requires_grad:
                draw(n, p)
    d = os.path.join(OUT, name)
    m.save_pretrained(d)
    os.remove(os.path.join(d, "README.md"))  # PEFT's model card: not a fixture
    reference(BASE, d, name)


def main():
    os.makedirs(OUT, exist_ok=True)
    keep_float64()
    make("lora", LoraConfig(r=3, lora_alpha=6, lora_dropout=0.0, target_modules=["q", "v", "o", "wi_1"],
                            task_type="SEQ_2_SEQ_LM"),
         lambda n, p: p.normal_(0.0, 0.3))
    make("ia3", IA3Config(target_modules=["k", "v", "wo"], feedforward_modules=["wo"], task_type="SEQ_2_SEQ_LM"),
         lambda n, p: p.normal_(1.0, 0.3))


if __name__ == "__main__":
    main()

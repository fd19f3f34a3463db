#!/usr/bin/env python3
"""Reference fixtures for pemoe's GPT-2: small random GPT-2s, their logits, loss and every gradient, computed
by Hugging Face transformers (and PEFT for the adapters) on the CPU. The weights are float32 (as HF saves
them); the reference outputs are computed in float64 from exactly those weights, so a float64 pemoe can be
checked to rounding level and a float32 one to float32 accuracy.

Run from this directory (pip: torch transformers peft safetensors):

    python3 make_fixtures.py

It writes, for each model in MODELS (sizes where head_dim != 64, the vocabulary is not a multiple of 8 and
some labels are -100):

    <name>/config.json, <name>/model.safetensors    the HF model directory (float32, HF names)
    <name>/batch.safetensors                        input_ids, labels (int64, (B, T))
    <name>/expected.safetensors                     logits (B, T, V), loss (), grad.<HF name> for every parameter
    <name>_fp16/, <name>_bf16/                      the same weights saved as float16 / bfloat16
    <name>_lora/adapter_config.json, adapter_model.safetensors    a PEFT LoRA adapter (B non-zero)
    <name>_lora/expected.safetensors                logits, loss, grad.<PEFT key> of every adapter tensor
    <name>_ia3/...                                  the same for a PEFT (IA)^3 adapter

Dropout is off (p = 0) so the references are deterministic. The weights are drawn wider than GPT-2's
N(0, 0.02) so that the logits, and so the gradients, are far from uniform.
"""
import copy
import json
import os

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))

MODELS = {
    # head_dim 12, vocab 101 (odd), 2 layers
    "tiny": dict(n_layer=2, n_head=3, n_embd=36, vocab_size=101, n_positions=24, batch=(2, 9), seed=1),
    # head_dim 20, vocab 67, 3 layers, exact-erf-free tanh GELU as GPT-2
    "small": dict(n_layer=3, n_head=2, n_embd=40, vocab_size=67, n_positions=16, batch=(3, 7), seed=2),
}


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def make_batch(cfg, seed):
    b, t = cfg["batch"]
    g = torch.Generator().manual_seed(100 + seed)
    ids = torch.randint(0, cfg["vocab_size"], (b, t), generator=g, dtype=torch.int64)
    labels = ids.clone()
    labels[0, :2] = -100  # a prompt that is not scored
    labels[-1, -3:] = -100  # right padding
    return ids, labels


def run(model, ids, labels):
    """HF's causal-LM loss (labels shifted left, -100 ignored, mean), computed in the model's dtype: HF's own
    loss_function upcasts logits to float32 only, which would round a float64 reference."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids)
    shift_logits = out.logits[:, :-1, :].reshape(-1, out.logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    out.loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
    out.loss.backward()
    return out


def grads(model, keep):
    res = {}
    for name, p in model.named_parameters():
        if p.grad is not None and keep(name):
            res[name] = p.grad.detach().clone().contiguous()
    return res


def write_model(name, cfg):
    torch.manual_seed(cfg["seed"])
    config = GPT2Config(
        n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"], vocab_size=cfg["vocab_size"],
        n_positions=cfg["n_positions"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).float().eval()
    randomize(model, cfg["seed"])
    out_dir = os.path.join(HERE, name)
    model.save_pretrained(out_dir, safe_serialization=True)
    for dtype, suffix in ((torch.float16, "_fp16"), (torch.bfloat16, "_bf16")):  # on copies: the reference
        copy.deepcopy(model).to(dtype).save_pretrained(os.path.join(HERE, name + suffix),  # keeps fp32 weights
                                                       safe_serialization=True)

    ids, labels = make_batch(cfg, cfg["seed"])
    save_file({"input_ids": ids, "labels": labels}, os.path.join(out_dir, "batch.safetensors"))
    model.train()  # dropout is 0: train() only matters for the autograd graph
    model.double()  # the reference of these (float32) weights, computed in float64
    out = run(model, ids, labels)
    expected = {"logits": out.logits.detach().contiguous(), "loss": out.loss.detach().reshape(())}
    for k, v in grads(model, lambda n: True).items():
        expected["grad." + k] = v
    save_file(expected, os.path.join(out_dir, "expected.safetensors"))
    model.float()
    return model, ids, labels


def write_adapter(name, model, ids, labels, kind, seed):
    from peft import IA3Config, LoraConfig, get_peft_model

    if kind == "lora":
        pc = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn", "c_fc"],
                        fan_in_fan_out=True, bias="none", task_type="CAUSAL_LM")
    else:
        pc = IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                       fan_in_fan_out=True, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, pc)
    g = torch.Generator().manual_seed(200 + seed)
    with torch.no_grad():  # adapter tensors away from their identity initialisation
        for n, p in peft_model.named_parameters():
            if p.requires_grad:
                if kind == "lora":
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
    out_dir = os.path.join(HERE, name + "_" + kind)
    peft_model.save_pretrained(out_dir)  # float32 tensors
    peft_model.double()  # the reference, in float64
    out = run(peft_model, ids, labels)
    expected = {"logits": out.logits.detach().contiguous(), "loss": out.loss.detach().reshape(())}
    # gradients under the names adapter_model.safetensors uses (PEFT drops the adapter name "default")
    for n, p in peft_model.named_parameters():
        if p.requires_grad and p.grad is not None:
            key = n.replace(".default", "")
            expected["grad." + key] = p.grad.detach().clone().contiguous()
    save_file(expected, os.path.join(out_dir, "expected.safetensors"))
    peft_model.float()
    peft_model.unload()


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    meta = {}
    for name, cfg in MODELS.items():
        model, ids, labels = write_model(name, cfg)
        meta[name] = {k: v for k, v in cfg.items() if k != "batch"}
        meta[name]["batch"] = list(cfg["batch"])
        for kind in ("lora", "ia3"):
            write_adapter(name, model, ids, labels, kind, cfg["seed"])
    with open(os.path.join(HERE, "fixtures.json"), "w") as f:
        json.dump({"generator": "make_fixtures.py", "torch": torch.__version__,
                   "transformers": __import__("transformers").__version__,
                   "peft": __import__("peft").__version__, "models": meta}, f, indent=2)


if __name__ == "__main__":
    main()

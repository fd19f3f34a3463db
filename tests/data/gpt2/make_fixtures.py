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
    <name>/generate.safetensors, <name>_lora/generate.safetensors   (models in GENERATE only) prompts and
                                                    HF's greedy `model.generate(do_sample=False)` output ids
    <name>_cli/*.safetensors                        (models in GENERATE) batches `pemoe score` must reject

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

# Models whose greedy generation (`model.generate`, with and without the LoRA adapter) is recorded.
GENERATE = {"tiny"}
GEN_PROMPT_LEN, GEN_NEW_TOKENS = 5, 12


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


def write_generate(model, cfg, out_dir):
    """HF's greedy decoding (float64, KV cache) of a batch of two equal-length prompts, of the same prompts
    left-padded to different lengths (with the attention mask), and with a stop token: generate.safetensors
    holds prompt_ids (2, P), greedy_ids (2, P+N) (prompt + new tokens, as generate returns them),
    ragged_prompt_ids / ragged_attention_mask (2, P) and ragged_greedy_ids, eos_id (1,) and eos_greedy_ids
    (finished sequences padded with pad_id (1,)), and min_gap (): the smallest margin between the best and
    the second-best logit over every greedy step (the test's float32 run is exact only when it is not tiny).
    The model's own eos (0) is switched off except in the eos run; prompt ids are drawn from 1 .. V-1."""
    g = torch.Generator().manual_seed(300 + cfg["seed"])
    prompt = torch.randint(1, cfg["vocab_size"], (2, GEN_PROMPT_LEN), generator=g, dtype=torch.int64)
    pad = 0
    model.generation_config.eos_token_id = None
    min_gap = [float("inf")]

    def greedy(ids, mask, eos=None):
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=GEN_NEW_TOKENS,
                                 min_new_tokens=0, eos_token_id=eos, pad_token_id=pad, output_scores=True,
                                 return_dict_in_generate=True)
        for s in out.scores:  # (B, V) per step; finished rows are forced to pad and are skipped
            top = torch.topk(s.double(), 2, dim=-1).values
            for b in range(top.shape[0]):
                if torch.isfinite(top[b]).all():
                    min_gap[0] = min(min_gap[0], float(top[b, 0] - top[b, 1]))
        return out.sequences.contiguous()

    ones = torch.ones_like(prompt)
    full = greedy(prompt, ones)
    lengths = [GEN_PROMPT_LEN, 2]  # the second prompt keeps its last two tokens, left-padded
    ragged = prompt.clone()
    mask = ones.clone()
    for b, n in enumerate(lengths):
        ragged[b, :GEN_PROMPT_LEN - n] = pad
        mask[b, :GEN_PROMPT_LEN - n] = 0
    ragged_out = greedy(ragged, mask)
    # a stop token the first sequence emits (first time at step >= 2) and the second never does
    new0, new1 = full[0, GEN_PROMPT_LEN:].tolist(), full[1, GEN_PROMPT_LEN:].tolist()
    eos = next((t for i, t in enumerate(new0) if i >= 2 and t not in new0[:i] and t not in new1), new0[-1])
    eos_out = greedy(prompt, ones, eos=eos)
    save_file({"prompt_ids": prompt, "greedy_ids": full, "ragged_prompt_ids": ragged, "ragged_attention_mask": mask,
               "ragged_greedy_ids": ragged_out, "eos_id": torch.tensor([eos], dtype=torch.int64),
               "eos_greedy_ids": eos_out, "pad_id": torch.tensor([pad], dtype=torch.int64),
               "min_gap": torch.tensor(min_gap[0], dtype=torch.float64)},
              os.path.join(out_dir, "generate.safetensors"))


def write_cli_batches(cfg, ids, labels, out_dir):
    """Batch files for the CLI's tests of `pemoe score`: one without labels (valid: logits only) and one for
    each input error (missing input_ids, wrong dtype, wrong rank, an id outside the vocabulary, T above
    n_positions, labels of another shape, a label outside the vocabulary)."""
    os.makedirs(out_dir, exist_ok=True)
    oov = ids.clone()
    oov[1, 4] = cfg["vocab_size"]
    bad_label = labels.clone()
    bad_label[0, 5] = -1
    n = cfg["n_positions"] + 1
    files = {
        "ids_only": {"input_ids": ids},
        "labels_only": {"labels": labels},
        "ids_f32": {"input_ids": ids.float()},
        "ids_rank1": {"input_ids": ids[0].contiguous()},
        "ids_oov": {"input_ids": oov, "labels": labels},
        "ids_long": {"input_ids": torch.arange(n, dtype=torch.int64).reshape(1, n) % cfg["vocab_size"]},
        "labels_shape": {"input_ids": ids, "labels": labels[:, :-1].contiguous()},
        "labels_oov": {"input_ids": ids, "labels": bad_label},
    }
    for stem, tensors in files.items():
        save_file(tensors, os.path.join(out_dir, stem + ".safetensors"))


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
    if name in GENERATE:
        model.eval()
        write_generate(model, cfg, out_dir)
        model.train()
        write_cli_batches(cfg, ids, labels, os.path.join(HERE, name + "_cli"))
    model.float()
    return model, ids, labels


def write_adapter(name, model, ids, labels, kind, seed, cfg):
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
    if name in GENERATE and kind == "lora":
        peft_model.eval()
        write_generate(peft_model, cfg, out_dir)
        peft_model.train()
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
            write_adapter(name, model, ids, labels, kind, cfg["seed"], cfg)
    with open(os.path.join(HERE, "fixtures.json"), "w") as f:
        json.dump({"generator": "make_fixtures.py", "torch": torch.__version__,
                   "transformers": __import__("transformers").__version__,
                   "peft": __import__("peft").__version__, "models": meta}, f, indent=2)


if __name__ == "__main__":
    main()

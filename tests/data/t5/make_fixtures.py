#!/usr/bin/env python3
"""Reference fixtures for pemoe's T5 (include/pemoe/models/t5.hpp): small random T5 models in each LM-head
layout, their logits, loss and every parameter gradient, computed by Hugging Face transformers'
`T5ForConditionalGeneration` on the CPU.

The weights are saved as float32 (as HF saves them); the references are computed by the model cast to
float64 from exactly those weights, with HF's two float32 upcasts kept in float64 (see keep_float64), so
logits and loss are float64-exact; the gradients are stored as float32 to keep the fixtures small.

Layouts (each one directory):

    v11/          transformers 4.x, `tie_word_embeddings: false`: separate lm_head.weight, no rescale,
                  feed_forward_proj "gated-gelu" (T5 v1.1)
    orig/         transformers 4.x, tied head, decoder output scaled by d_model^-0.5, feed_forward_proj "relu"
                  (original T5)
    tf5_noscale/  transformers 5.x (`scale_decoder_outputs: false` in config.json): tied head, no rescale,
                  gated-gelu (what 5.x makes of a v1.1 config)
    tf5_scale/    transformers 5.x, `scale_decoder_outputs: true`: tied head, rescaled, gated-gelu (logits and
                  loss only, no gradients, to keep tests/data/t5 under 1 MB)

Each directory holds config.json and model.safetensors (the HF model directory, float32),
batch.safetensors (input_ids, attention_mask (B, Ts); labels, decoder_attention_mask (B, Tt); int64) and
expected.safetensors (logits (B, Tt, V) and loss () in float64, grad.<HF name> for every parameter in
float32).
buckets.json holds HF's `_relative_position_bucket` over relative positions -40..40 for a few settings.

Run from this directory. The 4.x layouts need transformers 4.x (4.57.1 used), the 5.x ones 5.x (5.25.0):

    pip install torch transformers==4.57.1 safetensors
    python3 make_fixtures.py 4
    pip install --target /some/dir transformers==5.25.0 huggingface_hub httpx2 "tokenizers>=0.23.1,<0.24" --no-deps
    PYTHONPATH=/some/dir python3 make_fixtures.py 5

Dropout is off (dropout_rate 0) so the references are deterministic. The weights are drawn wider than
HF's initialisation so that the logits, and so the gradients, are far from uniform.
"""
import copy
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import T5Config, T5ForConditionalGeneration

HERE = os.path.dirname(os.path.abspath(__file__))

SIZES = dict(
    vocab_size=37,  # not a multiple of 8
    d_model=24,
    d_kv=10,  # inner = 30 != d_model
    num_heads=3,
    d_ff=20,
    num_layers=2,
    num_decoder_layers=3,
    relative_attention_num_buckets=10,
    relative_attention_max_distance=12,
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)

LAYOUTS_4 = {
    "v11": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, seed=11),
    "orig": dict(feed_forward_proj="relu", tie_word_embeddings=True, seed=12),
}
# transformers 5.x sets scale_decoder_outputs from the tie_word_embeddings it is given, then ties always.
LAYOUTS_5 = {
    "tf5_noscale": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, seed=13),
    "tf5_scale": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=True, seed=14, grads=False),
}

B, TS, TT = 2, 7, 5


def batch():
    input_ids = torch.tensor([[5, 17, 3, 30, 8, 1, 36], [22, 9, 14, 1, 0, 0, 0]], dtype=torch.long)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]], dtype=torch.long)
    # a -100 in the middle of row 0 (its decoder input becomes pad), target padding at the end of row 1
    labels = torch.tensor([[4, -100, 33, 12, 1], [19, 2, 1, -100, -100]], dtype=torch.long)
    decoder_attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.long)
    return input_ids, attention_mask, labels, decoder_attention_mask


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "relative_attention_bias" in name:
                p.copy_(1.0 * torch.randn(p.shape, generator=g))
            elif name == "shared.weight":
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[1]
                wide = 0.8 if name.endswith(".q.weight") else 1.5  # T5 leaves the logits unscaled: keep q narrower
                p.copy_(wide * torch.randn(p.shape, generator=g) / fan_in**0.5)


def keep_float64():
    """HF's T5 takes the RMS variance, and in transformers 4.x the attention softmax, in float32 (for
    half-precision safety; in a float32 model both are no-ops). In a float64 model that would round the
    reference to float32, so for the reference both stay in float64: `Tensor.float()` leaves float64 tensors
    as they are (integer tensors, e.g. the relative positions of the bucket logarithm, still become float32),
    and T5LayerNorm computes its variance in the input's dtype. Same formulas, no float32 rounding."""
    module = sys.modules[T5ForConditionalGeneration.__module__]

    def rms_forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    module.T5LayerNorm.forward = rms_forward
    to_float = torch.Tensor.float
    torch.Tensor.float = lambda self, *a, **k: self if self.dtype == torch.float64 else to_float(self, *a, **k)


def make(name, layout):
    cfg = dict(SIZES)
    cfg.update({k: v for k, v in layout.items() if k not in ("seed", "grads")})
    config = T5Config(**cfg)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config).float()
    randomize(model, layout["seed"])
    out = os.path.join(HERE, name)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))

    # float64 reference on exactly the saved float32 weights (the cast is exact; ties are kept)
    ref = copy.deepcopy(model).double()
    ref.eval()
    input_ids, attention_mask, labels, decoder_attention_mask = batch()
    res = ref(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        decoder_attention_mask=decoder_attention_mask,
    )
    res.loss.backward()
    expected = {"logits": res.logits.detach().contiguous(), "loss": res.loss.detach().reshape(())}
    seen = set()
    for pname, p in ref.named_parameters() if layout.get("grads", True) else []:
        if id(p) in seen:
            continue
        seen.add(id(p))
        # float32: the fixtures stay small (< 300 KB a directory); 6e-8 relative, below HF's own float32 parts
        expected["grad." + pname] = p.grad.detach().to(torch.float32).contiguous()
    save_file(expected, os.path.join(out, "expected.safetensors"))
    save_file(
        {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "decoder_attention_mask": decoder_attention_mask,
        },
        os.path.join(out, "batch.safetensors"),
    )
    print(name, "transformers", transformers.__version__, "loss", float(res.loss.detach()),
          "params", sum(p.numel() for p in ref.parameters()))


def buckets():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-40, 41, dtype=torch.long)
    table = []
    for bidirectional in (True, False):
        for nb, md in ((10, 12), (32, 128), (8, 20), (6, 9)):
            b = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md)
            table.append(dict(bidirectional=bidirectional, num_buckets=nb, max_distance=md,
                              relative_position=rel.tolist(), bucket=b.tolist()))
    with open(os.path.join(HERE, "buckets.json"), "w") as f:
        json.dump(table, f)


if __name__ == "__main__":
    major = transformers.__version__.split(".")[0]
    want = sys.argv[1] if len(sys.argv) > 1 else major
    assert want == major, f"asked for the transformers {want}.x layouts, but transformers is {transformers.__version__}"
    keep_float64()
    for name, layout in (LAYOUTS_4 if major == "4" else LAYOUTS_5).items():
        make(name, layout)
    if major == "4":
        buckets()

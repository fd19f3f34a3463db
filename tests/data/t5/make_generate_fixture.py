#!/usr/bin/env python3
"""Reference for pemoe's T5 decoding (include/pemoe/models/t5_generate.hpp): Hugging Face's greedy
`generate` on the v11 and orig fixture models (tests/data/t5/<layout>), run in float64 with HF's float32
upcasts kept in float64 (make_fixtures.keep_float64), on the sources of <layout>/batch.safetensors
(input_ids with attention_mask: right padding).

Writes <layout>/generate.json: {"sources": [[ids of each source without padding]], "max_new_tokens": 8,
"sequences": [[HF's output: decoder start token, then the generated ids, eos_token_id ends a row early and
pad_token_id fills it]]}.

Run from tests/data/t5 with transformers 4.57.1: python3 make_generate_fixture.py
"""
import json
import os

import torch
from safetensors.torch import load_file
from transformers import T5ForConditionalGeneration

from make_fixtures import keep_float64

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_NEW = 8


def main():
    keep_float64()
    for layout in ("v11", "orig"):
        d = os.path.join(HERE, layout)
        m = T5ForConditionalGeneration.from_pretrained(d, dtype=torch.float32).double().eval()
        b = load_file(os.path.join(d, "batch.safetensors"))
        ids, mask = b["input_ids"], b["attention_mask"]
        with torch.no_grad():
            seq = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                             num_beams=1, use_cache=False)  # 4.57.1 sizes its cache by num_layers
        sources = [[int(t) for t, k in zip(row, mrow) if k] for row, mrow in zip(ids.tolist(), mask.tolist())]
        with open(os.path.join(d, "generate.json"), "w") as f:
            json.dump({"sources": sources, "max_new_tokens": MAX_NEW, "sequences": seq.tolist(),
                       "eos_token_id": m.config.eos_token_id, "pad_token_id": m.config.pad_token_id}, f)
            f.write("\n")


if __name__ == "__main__":
    main()

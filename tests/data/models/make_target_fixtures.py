#!/usr/bin/env python3
"""Which GPT-2 / T5 module keys PEFT's check_target_module_exists selects for several LoraConfigs.
Run from this directory (pip: peft):  python3 make_target_fixtures.py  -> target_modules.json"""
import json
import os

from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists

KEYS = [f"transformer.h.{i}.{m}" for i in range(3) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
KEYS += [f"encoder.block.{i}.layer.{j}.{m}" for i in range(2) for j, ms in ((0, ("SelfAttention.q", "SelfAttention.v")), (1, ("DenseReluDense.wi_0", "DenseReluDense.wo"))) for m in ms]
KEYS += ["lm_head", "transformer.h.10.mlp.c_fc"]
CASES = {
    "suffix": dict(target_modules=["c_attn", "mlp.c_proj"]),
    "exact": dict(target_modules=["transformer.h.1.attn.c_proj"]),
    "regex": dict(target_modules=r".*\.h\.[02]\.(attn\.c_attn|mlp\.c_fc)"),
    "layers": dict(target_modules=["c_attn", "c_fc", "q"], layers_to_transform=[0, 2, 10]),
    "layers_pattern": dict(target_modules=["q", "wo", "c_fc"], layers_to_transform=[1], layers_pattern=["block", "h"]),
    "exclude": dict(target_modules=["c_attn", "c_proj"], exclude_modules=["attn.c_proj"]),
}


def main():
    out = {"keys": KEYS, "cases": {}}
    for name, kw in CASES.items():
        cfg = LoraConfig(**kw)
        out["cases"][name] = {"config": kw, "selected": [k for k in KEYS if check_target_module_exists(cfg, k) is True or (check_target_module_exists(cfg, k) not in (None, False) and not type(check_target_module_exists(cfg, k)).__name__.startswith("_Excluded"))]}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "target_modules.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

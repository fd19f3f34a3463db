#!/usr/bin/env python3
"""Writes the safetensors fixtures of tests/io and tests/tools with the reference Python library.

Run from anywhere (needs numpy, torch and safetensors; the files are committed, so the tests never
run this):  python3 tests/data/io/make_fixtures.py

Files (all < 100 KB together):
  python_mixed.safetensors   every dtype pemoe reads, written by safetensors.torch;
                             python_mixed.json lists each tensor's dtype, shape and values (as
                             float64 after the reference decoding, NaN as null) for the C++ test.
  python_f32.safetensors     F32/F64 tensors with names already in the reference writer's order and a
                             single metadata key: pemoe's SafetensorsWriter must write the same bytes.
  tiny_model.safetensors     a small "model" for the CLI round trip: 2-d weights of several shapes
                             (one BF16, one that needs padding), 1-d biases, an I64 buffer.
  mpo_missing_core.safetensors, mpo_bad_record.safetensors
                             the layout of `pemoe mpo compress` with a core missing / a record without
                             its modes: `pemoe mpo expand` must reject them with a clear error.
"""
import json
import math
import os

import numpy as np
import torch
from safetensors.numpy import save_file as np_save
from safetensors.torch import save_file as torch_save

HERE = os.path.dirname(os.path.abspath(__file__))


def mixed():
    t = {
        # values exactly representable in every float format used
        "f32_matrix": torch.arange(12, dtype=torch.float32).reshape(3, 4) * 0.5 - 1.0,
        "f64_vector": torch.arange(5, dtype=torch.float64) * 0.25,
        "f16_matrix": (torch.arange(6, dtype=torch.float32).reshape(2, 3) - 2.5).to(torch.float16) * 0.125,
        "f16_special": torch.tensor(
            [0.0, -0.0, 1.0, -2.0, 65504.0, 2.0**-24, 2.0**-14, 3 * 2.0**-24, float("inf"), float("-inf"),
             float("nan"), 0.1], dtype=torch.float16),
        "bf16_matrix": torch.tensor([[1.0, -1.5, 3.0e38], [2.0**-130, 0.1, -7.0]]).to(torch.bfloat16),
        "f8_e4m3": torch.tensor([0.0, 1.0, -1.5, 448.0, 2.0**-9, 0.3]).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.tensor([0.0, 1.0, -1.5, 57344.0, 2.0**-16, float("inf")]).to(torch.float8_e5m2),
        "i64_vector": torch.arange(-3, 3, dtype=torch.int64) * 1000000000000,
        "i32_matrix": torch.arange(-4, 4, dtype=torch.int32).reshape(2, 4),
        "i16": torch.tensor([-32768, 0, 32767], dtype=torch.int16),
        "i8": torch.tensor([-128, -1, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 51, 102, 153, 204, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5, dtype=torch.float32),
        "empty": torch.zeros((0, 4), dtype=torch.float32),
        "a.nested.name.weight": torch.linspace(-1, 1, 8, dtype=torch.float32).reshape(2, 2, 2),
    }
    path = os.path.join(HERE, "python_mixed.safetensors")
    torch_save(t, path, metadata={"format": "pt", "source": "make_fixtures.py"})
    expected = {}
    for name, v in t.items():
        # JSON has no NaN or infinity: NaN is written as null, infinities as the strings "inf" / "-inf"
        vals = [None if math.isnan(x) else (("inf" if x > 0 else "-inf") if math.isinf(x) else x)
                for x in v.to(torch.float64).flatten().tolist()]
        expected[name] = {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape), "values": vals}
    with open(os.path.join(HERE, "python_mixed.json"), "w") as f:
        json.dump({"metadata": {"format": "pt", "source": "make_fixtures.py"}, "tensors": expected}, f, indent=1)


def f32():
    # The reference writer orders tensors by dtype (wider first) then name: F64 before F32, names sorted.
    # Values are formulas the C++ test recomputes: x[i] = i * 0.25 - 1 (flat index i).
    def ar(shape, dtype):
        n = int(np.prod(shape)) if shape else 1
        return (np.arange(n, dtype=dtype) * dtype(0.25) - dtype(1)).reshape(shape)

    t = {
        "double.weight": ar((3, 2), np.float64),
        "layer.0.bias": ar((3,), np.float32),
        "layer.0.weight": ar((3, 5), np.float32),
        "layer.1.weight": ar((2, 2, 3), np.float32),
    }
    np_save(t, os.path.join(HERE, "python_f32.safetensors"), metadata={"format": "pt"})


def tiny_model():
    rng = np.random.default_rng(20241123)
    t = {
        "embed.weight": rng.standard_normal((50, 16)).astype(np.float32),  # 50 = 2*5*5: odd modes
        "layer.0.attn.weight": rng.standard_normal((16, 16)).astype(np.float32),
        "layer.0.attn.bias": rng.standard_normal(16).astype(np.float32),
        "layer.0.mlp.up.weight": rng.standard_normal((64, 16)).astype(np.float32),
        "layer.0.mlp.up.bias": rng.standard_normal(64).astype(np.float32),
        "layer.0.mlp.down.weight": rng.standard_normal((16, 64)).astype(np.float32),
        "layer.1.mlp.up.weight": rng.standard_normal((63, 17)).astype(np.float32),  # needs --pad
        "position_ids": np.arange(32, dtype=np.int64).reshape(1, 32),
        "norm.weight": np.ones(16, dtype=np.float32),
    }
    tt = {k: torch.from_numpy(v) for k, v in t.items()}
    tt["layer.0.mlp.gate.weight"] = torch.from_numpy(rng.standard_normal((32, 16)).astype(np.float32)).to(
        torch.bfloat16)
    torch_save(tt, os.path.join(HERE, "tiny_model.safetensors"), metadata={"format": "pt"})


def broken_mpo():
    # Files in the layout of `pemoe mpo compress` that `pemoe mpo expand` must reject with a clear error.
    rec = {"shape": [4, 4], "dtype": "F32", "row_modes": [2, 2], "col_modes": [2, 2], "padded": False,
           "gauge": "symmetric", "max_bond": None, "rel_cutoff": 0.0, "bond_dims": [1, 4, 1]}
    core0 = np.ones((1, 2, 2, 4), dtype=np.float32)
    np_save({"w.mpo.core_0": core0}, os.path.join(HERE, "mpo_missing_core.safetensors"),
            metadata={"pemoe.mpo/w": json.dumps(rec)})
    np_save({"v.mpo.core_0": core0}, os.path.join(HERE, "mpo_bad_record.safetensors"),
            metadata={"pemoe.mpo/v": '{"shape": [4, 4], "dtype": "F32"}'})


if __name__ == "__main__":
    mixed()
    f32()
    tiny_model()
    broken_mpo()
    for f in sorted(os.listdir(HERE)):
        print(f, os.path.getsize(os.path.join(HERE, f)))

#!/usr/bin/env python3
"""Reference trajectories of pemoe's optimizers, schedules and gradient clipping, computed by PyTorch
(torch.optim.SGD, torch.optim.AdamW, torch.nn.utils.clip_grad_norm_) and Hugging Face transformers
(transformers.optimization.Adafactor, transformers.get_scheduler) in float64.

Run from this directory (pip: torch transformers safetensors):  python3 make_fixtures.py
Writes optimizers.safetensors:
  init.<p>                       the three parameters: "w" (5, 7), "experts" (2, 3, 4), "b" (6)
  grad.<k>.<p>                   the gradient of step k (k = 0..4); parameter "b" has none at step 2
  <optimizer>.<k>.<p>            the parameter after step k, for each optimizer configuration below
  adamw_groups.<k>.<p>           AdamW with three parameter groups ("experts" at half the rate, "b" without
                                 weight decay) under a linear schedule (warm-up 2, total 7) via LambdaLR
  schedule.<kind>                the multiplier at steps 0..39 (warm-up 5, total 30)
  clip.norm, clip.grad.<p>       clip_grad_norm_(max_norm 0.5) applied to the step-0 gradients
"""
import os

import torch
from safetensors.torch import save_file
from transformers import get_scheduler
from transformers.optimization import Adafactor

torch.set_default_dtype(torch.float64)
HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = {"w": (5, 7), "experts": (2, 3, 4), "b": (6,)}
STEPS = 5
SKIP = {(2, "b")}  # parameter b has no gradient at step 2: optimizers must skip it like PyTorch


def main():
    g = torch.Generator().manual_seed(0)
    init = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    grads = [{k: torch.randn(s, generator=g) for k, s in SHAPES.items()} for _ in range(STEPS)]
    out = {"init." + k: v for k, v in init.items()}
    for k in range(STEPS):
        for p, v in grads[k].items():
            out[f"grad.{k}.{p}"] = v

    configs = {
        "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
        "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.05),
        "adafactor_relative": lambda ps: Adafactor(ps),
        "adafactor_constant": lambda ps: Adafactor(ps, lr=3e-3, relative_step=False, scale_parameter=False,
                                                   beta1=0.9, weight_decay=0.01),
    }
    for name, make in configs.items():
        params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
        opt = make(list(params.values()))
        for k in range(STEPS):
            for p, t in params.items():
                t.grad = None if (k, p) in SKIP else grads[k][p].clone()
            opt.step()
            for p, t in params.items():
                out[f"{name}.{k}.{p}"] = t.detach().clone()

    # AdamW with parameter groups (PyTorch param_groups) and a schedule: the multiplier of step k is
    # get_scheduler("linear", warm-up 2, total 7)'s lambda at k; group lr = base lr x scale x multiplier.
    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    opt = torch.optim.AdamW([{"params": [params["w"]]},
                             {"params": [params["experts"]], "lr": 0.01 * 0.5},
                             {"params": [params["b"]], "weight_decay": 0.0}], lr=0.01, weight_decay=0.05)
    sched = get_scheduler("linear", opt, num_warmup_steps=2, num_training_steps=7)
    for k in range(STEPS):
        for p, t in params.items():
            t.grad = None if (k, p) in SKIP else grads[k][p].clone()
        opt.step()
        sched.step()
        for p, t in params.items():
            out[f"adamw_groups.{k}.{p}"] = t.detach().clone()

    for kind in ("constant", "constant_with_warmup", "linear", "cosine", "inverse_sqrt"):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        sched = get_scheduler(kind, opt, num_warmup_steps=5, num_training_steps=30)
        vals = []
        for _ in range(40):
            vals.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out["schedule." + kind] = torch.tensor(vals)

    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    for p, t in params.items():
        t.grad = grads[0][p].clone()
    norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=0.5)
    out["clip.norm"] = norm.reshape(())
    for p, t in params.items():
        out["clip.grad." + p] = t.grad.clone()
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(HERE, "optimizers.safetensors"))


if __name__ == "__main__":
    main()

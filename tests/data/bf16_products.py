"""The bf16 product of a frozen weight, as pemoe's bf16 packs compute it, for the fixture scripts
gpt2/make_bf16_fixtures.py and t5/make_bf16_fixture.py (float64 models whose frozen products alone take
bf16-rounded operands):

    forward  y = bf16(x) · bf16(W)        backward  dx = bf16(dy) · bf16(W)ᵀ        (W frozen: no dW)
"""
import torch


def bf16(t):
    """t rounded to bf16 (to nearest even) and back to float64."""
    return t.to(torch.bfloat16).to(torch.float64)


class Bf16Product(torch.autograd.Function):
    """y = bf16(x)·bf16(W) for W (d_in, d_out); dx = bf16(dy)·bf16(W)ᵀ; the frozen W gets no gradient."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(w)
        return bf16(x) @ bf16(w)

    @staticmethod
    def backward(ctx, dy):
        (w,) = ctx.saved_tensors
        return bf16(dy) @ bf16(w).T, None

"""Linear layers whose forward and backward matmuls run on oneDNN's fp32 kernels (x86 CPUs).

Why: torch sends CPU fp32 matmuls to MKL, which runs its AVX2 kernels on AMD CPUs: ~100 GFLOP/s per
core on this project's AMD EPYC machines, while oneDNN (also inside every x86 torch wheel, through
``torch.ops.mkldnn._linear_pointwise``) runs the same 256x256x256 product with AVX-512 about 1.9x
faster. SAC's update is nearly all such products, so FastSAC's CPU update routes its layers here.
The maths is a plain ``x @ w.T + b`` (ReLU fused when it follows); only the summation order differs
from MKL's, so results agree to float32 rounding. The weights stay the SB3 modules' own parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_NO_SCALARS: list[Any] = []


def available() -> bool:
    """True where this torch build has oneDNN's pointwise linear op (x86 and arm64 CPU wheels)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a row-major or transposed row-major matrix: oneDNN reads those in place, but any other
    strides (a column slice of the replay rows) send it to a reference kernel ~500x slower."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _matmul_t(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, attr: str = "none") -> torch.Tensor:
    """``x @ w.T (+ b)`` with an optional fused post-op."""
    return torch.ops.mkldnn._linear_pointwise(_dense(x), _dense(w), b, attr, _NO_SCALARS, "")


class _Linear(torch.autograd.Function):
    """``x @ w.T + b`` (then ReLU when ``relu``); backward computes only the gradients autograd asks for."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, relu: bool) -> torch.Tensor:
        x = _dense(x)
        y = _matmul_t(x, w, b, "relu" if relu else "none")
        ctx.relu = relu
        ctx.save_for_backward(x, w, y if relu else None)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, y = ctx.saved_tensors
        dy = dy.contiguous()
        if ctx.relu:
            dy = torch.ops.aten.threshold_backward(dy, y, 0)  # ReLU's own backward: grad where output > 0
        dx = _matmul_t(dy, w.t(), None) if ctx.needs_input_grad[0] else None
        dw = _matmul_t(dy.t(), x.t(), None) if ctx.needs_input_grad[1] else None
        db = dy.sum(0) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None


def linear(x: torch.Tensor, layer: nn.Linear, relu: bool = False, weight_grads: bool = True) -> torch.Tensor:
    """``layer(x)`` (then ReLU when ``relu``) on oneDNN, differentiable in ``x`` and, unless
    ``weight_grads`` is False, in the layer's parameters. A custom autograd function cannot tell which
    gradients one ``autograd.grad`` call needs, so a caller that only wants input gradients (the actor
    loss through the critics) says so here instead of paying for weight gradients it throws away."""
    w, b = layer.weight, layer.bias
    if not weight_grads:
        w, b = w.detach(), None if b is None else b.detach()
    return _Linear.apply(x, w, b, relu)


def sequential(layers: nn.Sequential, x: torch.Tensor, weight_grads: bool = True) -> torch.Tensor:
    """``layers(x)`` with every ``Linear`` (and a ``ReLU`` right after it) as one oneDNN op; any other
    module runs as itself."""
    modules = list(layers)
    i = 0
    while i < len(modules):
        module = modules[i]
        if isinstance(module, nn.Linear):
            relu = i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU)
            x = linear(x, module, relu, weight_grads)
            i += 2 if relu else 1
        else:
            x = module(x)
            i += 1
    return x

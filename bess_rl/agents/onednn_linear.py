"""Linear layers whose forward and backward matmuls run on oneDNN's fp32 kernels (x86 CPUs).

Why: torch sends CPU fp32 matmuls to MKL, which runs its AVX2 kernels on AMD CPUs: ~100 GFLOP/s per
core on this project's AMD EPYC machines, while oneDNN (also inside every x86 torch wheel, through
``torch.ops.mkldnn._linear_pointwise``) runs the same 256x256x256 product with AVX-512 about 1.9x
faster. SAC's update is nearly all such products, so FastSAC's CPU update (``bess_rl.agents.manual_sac``)
does its forward and backward matmuls here. The maths is a plain ``x @ w.T + b`` (ReLU fused when
asked); only the summation order differs from MKL's, so results agree to float32 rounding.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

_NO_SCALARS: list[Any] = []
ONEDNN_MIN_DIM = 16


@functools.cache  # asked for every product (~30 an update): the answer never changes within a process
def available() -> bool:
    """True where this torch build has oneDNN's pointwise linear op (x86 and arm64 CPU wheels)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a row-major or transposed row-major matrix: oneDNN reads those in place, but any other
    strides (a column slice of the replay rows) send it to a reference kernel ~500x slower."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def takes(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether ``matmul_t(x, w)`` goes to oneDNN: CPU tensors, a build that has it and no dimension below
    ``ONEDNN_MIN_DIM``."""
    return min(x.shape[0], x.shape[1], w.shape[0]) >= ONEDNN_MIN_DIM and x.device.type == "cpu" and available()


def matmul_t(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``x @ w.T (+ b)`` (then ReLU): on oneDNN when every dimension is at least ``ONEDNN_MIN_DIM`` (the
    layers' 22-24 inputs too: ~1.3x MKL's addmm there, with the ReLU fused), else torch's own matmul
    (oneDNN's fixed cost, ~15-30 us a call, outweighs its gain on the thin products: a critic's single
    output, the actor's two-wide heads). Thin bf16 products run in float32 and return float32: torch's
    bf16 GEMM takes ~2x MKL's float32 one (upcast included) at those shapes."""
    if not takes(x, w):
        if x.dtype == torch.bfloat16:
            x, w, b = x.float(), w.float(), None if b is None else b.float()
        y = x @ w.t() if b is None else torch.addmm(b, x, w.t())
        return y.relu_() if relu else y
    return torch.ops.mkldnn._linear_pointwise(_dense(x), _dense(w), b, "relu" if relu else "none", _NO_SCALARS, "")

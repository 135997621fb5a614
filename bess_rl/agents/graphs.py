"""The one CUDA-graph warm-up and capture sequence (FastSAC, the on-policy graphs and the doctor use it).

Why one: PyTorch requires the captured work to run once on a side stream first (lazy state, cuBLAS
workspaces), then capture on the default stream's pool; getting that order wrong fails only on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def warm_up(fn: Callable[[], T]) -> T:
    """Run ``fn`` once on a side stream and make the current stream wait for it; returns its result."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out


def capture(fn: Callable[[], T]) -> tuple[torch.cuda.CUDAGraph, T]:
    """Capture ``fn`` (already warmed up) as a CUDA graph; returns the graph and its static outputs."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out

"""``torch.distributions.Normal``'s log-density and entropy as bare tensor ops.

Why: the fast paths must reproduce SB3's numbers op for op, but a ``Normal`` object validates its
arguments on the host each time it is built (a sync a CUDA graph cannot capture, and Python overhead
per step). These are its formulas, in its order of operations.
"""

from __future__ import annotations

import math

import torch

LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # the constant Normal.log_prob subtracts
ENTROPY_CONST = 0.5 + 0.5 * math.log(2 * math.pi)  # the constant Normal.entropy adds to log(scale)


def log_prob(value: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``Normal(mean, scale).log_prob(value)``, per element."""
    return -((value - mean) ** 2) / (2 * scale**2) - scale.log() - LOG_SQRT_2PI


def entropy(scale: torch.Tensor) -> torch.Tensor:
    """``Normal(mean, scale).entropy()``, per element."""
    return ENTROPY_CONST + torch.log(scale)

"""Linear layers whose forward and backward matmuls run on oneDNN's fp32 kernels (x86 CPUs with AVX-512).

Why: torch sends CPU fp32 matmuls to MKL, which runs its AVX2 kernels on AMD CPUs: ~100 GFLOP/s per
core on this project's AMD EPYC (Zen 5) machines, while oneDNN (also inside every x86 torch wheel, through
``torch.ops.mkldnn._linear_pointwise``) runs the same 256x256x256 product with AVX-512 about 1.9x
faster. On a CPU without AVX-512 oneDNN has only AVX2 kernels too and loses to MKL (Zen 3: 770 us
against 490 us for that product), and without native bf16 (avx512_bf16 or AMX) it cannot build a bf16
product at all, so each dtype goes to oneDNN only where the CPU has the instructions that make it win.
SAC's update is nearly all such products, so FastSAC's CPU update (``bess_rl.agents.manual_sac``)
does its forward and backward matmuls here. The maths is a plain ``x @ w.T + b`` (ReLU fused when
asked); only the summation order differs from MKL's, so results agree to float32 rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

_NO_SCALARS: list[Any] = []
ONEDNN_MIN_DIM = 16


class Abilities(NamedTuple):
    """What this process's CPU and torch build make of oneDNN products, probed once."""

    available: bool  # this torch build has oneDNN's pointwise linear op (x86 and arm64 CPU wheels)
    fast_fp32: bool  # oneDNN's fp32 kernels beat MKL's: torch dispatches AVX-512 code on this CPU
    native_bf16: bool  # the CPU multiplies bf16 natively (avx512_bf16 or AMX) and oneDNN builds bf16 products


@functools.cache  # asked for every product (~30 an update): the answers never change within a process
def _abilities() -> Abilities:
    present = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    return Abilities(
        present,
        present and torch.backends.cpu.get_cpu_capability().startswith("AVX512"),
        present and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    )


def available() -> bool:
    """True where this torch build has oneDNN's pointwise linear op."""
    return _abilities().available


def fast_fp32() -> bool:
    """True where oneDNN's fp32 kernels beat MKL's (AVX-512)."""
    return _abilities().fast_fp32


def native_bf16() -> bool:
    """True where the CPU multiplies bf16 natively; elsewhere torch's bf16 GEMM is emulated (~15x its
    fp32 one on Zen 3)."""
    return _abilities().native_bf16


def compile_step(fn: Callable, mode: str) -> Callable:
    """``fn`` as one whole-graph ``torch.compile`` graph that reads the readers above once, as constants,
    when it is traced. They are declared constant here, not where they are defined: the declaration
    imports ``torch._dynamo`` (~1 s), which every process that never compiles (a PPO run) would pay."""
    for reader in (available, fast_fp32, native_bf16):
        torch.compiler.assume_constant_result(reader)
    return torch.compile(fn, mode=mode, fullgraph=True, dynamic=False)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a row-major or transposed row-major matrix: oneDNN reads those in place, but any other
    strides (a column slice of the replay rows) send it to a reference kernel ~500x slower."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def takes(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether ``matmul_t(x, w)`` goes to oneDNN: CPU tensors, no dimension below ``ONEDNN_MIN_DIM`` and a
    CPU where oneDNN wins for the dtype (``fast_fp32``, ``native_bf16``)."""
    if min(x.shape[0], x.shape[1], w.shape[0]) < ONEDNN_MIN_DIM or x.device.type != "cpu" or x.dtype != w.dtype:
        return False
    return native_bf16() if x.dtype == torch.bfloat16 else fast_fp32()


def in_float32(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A product's operands in float32 when any is bf16 (a float32 ``x``: the output of an earlier such
    product), else as they are: bf16 products that torch's own matmul would run slowly (``matmul_t``)."""
    if torch.bfloat16 not in (x.dtype, w.dtype):
        return x, w, b
    return x.float(), w.float(), None if b is None else b.float()


def matmul_t(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``x @ w.T (+ b)`` (then ReLU): on oneDNN when every dimension is at least ``ONEDNN_MIN_DIM`` (the
    layers' 22-24 inputs too: ~1.3x MKL's addmm there, with the ReLU fused), else torch's own matmul
    (oneDNN's fixed cost, ~15-30 us a call, outweighs its gain on the thin products: a critic's single
    output, the actor's two-wide heads). Other bf16 products (thin ones, or any on a CPU without native
    bf16) run in float32 on the bf16-rounded inputs and return float32: the same products accumulated in
    float32, where torch's bf16 GEMM takes ~2x MKL's float32 one at thin shapes and ~15x without native bf16."""
    fits = takes(x, w)
    compiling = torch.compiler.is_compiling()
    # In a compiled step float32 products stay on oneDNN as an opaque op (inductor cannot lower oneDNN's
    # own), while bf16 ones take the plain product, which inductor runs faster than the opaque op
    # (measured at the after preset: experiments/cpu_speed_2026-12-02d/).
    if fits and not (compiling and x.dtype == torch.bfloat16):
        return (_compiled_linear if compiling else _linear)(x, w, b, relu)
    if not fits:
        x, w, b = in_float32(x, w, b)
    y = x @ w.t() if b is None else torch.addmm(b, x, w.t())
    return y.relu_() if relu else y


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, relu: bool) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(_dense(x), _dense(w), b, "relu" if relu else "none", _NO_SCALARS, "")


@torch.library.custom_op("bess_rl::onednn_linear", mutates_args=())
def _compiled_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, relu: bool) -> torch.Tensor:
    """``_linear`` as an op ``torch.compile`` calls whole."""
    return _linear(x, w, b, relu)


@_compiled_linear.register_fake
def _(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, relu: bool) -> torch.Tensor:
    return x.new_empty((x.shape[0], w.shape[0]))

"""Turn a ``conf/hardware`` profile into what actually runs, and say so when it differs.

Why: a profile names what the user wants (an RTX 4060 with AMP and CUDA graphs); the machine may
not have it. Falling back must be loud (one warning, recorded in the run folder) or, with
``hardware.strict=true``, an error, never silent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
from omegaconf import DictConfig

from bess_rl.agents.capabilities import Capabilities, capabilities, missing_cpu_compiler

log = logging.getLogger(__name__)


class HardwareError(RuntimeError):
    """The profile asked for hardware this machine lacks and ``strict`` forbids falling back."""


@dataclass
class Runtime:
    """What a run actually applies (device and the switches its algorithm class takes); written to the run folder."""

    profile: str
    algo: str
    device: str
    amp: str
    cuda_graphs: bool
    tf32: bool
    compile: str
    torch_threads: int
    notes: list[str]

    def as_dict(self) -> dict:
        return asdict(self)

    def switches(self, caps: Capabilities) -> dict[str, Any]:
        """The constructor arguments of these switches that the class declares."""
        return caps.kwargs(self.amp, self.cuda_graphs, self.compile)


def requested_device(hw: DictConfig, caps: Capabilities, agent_device: str = "auto") -> str:
    """The device the config asks for, before looking at what this machine has."""
    if agent_device != "auto":
        return str(agent_device)
    if caps.prefers_cpu:
        return "cpu"
    return str(hw.device)


def amp_mode(hw: DictConfig) -> str:
    """``hardware.amp`` as "none" | "bf16" | "fp16" (the structured config holds an ``Amp`` enum member)."""
    return hw.amp.value if hasattr(hw.amp, "value") else str(hw.amp)


def resolve(hw: DictConfig, algo: type, agent_device: str = "auto") -> Runtime:
    """Pick the device and the switches ``algo`` declares (``Capabilities``) on this machine, applying
    thread and TF32 settings; every switch asked for but not applied gets a note."""
    caps = capabilities(algo)
    name = algo.__name__
    notes: list[str] = []
    amp = amp_mode(hw)
    graphs, tf32, compile_mode = bool(hw.cuda_graphs), bool(hw.tf32), str(hw.compile)
    want = requested_device(hw, caps, agent_device)
    if want != hw.device and agent_device == "auto":
        notes.append(
            f"{name} trains on CPU: SB3 runs MLP on-policy agents faster there "
            "(set agent.device=cuda to use the GPU anyway)"
        )
    if want == "cuda" and not torch.cuda.is_available():
        asker = f"hardware={hw.name}" if agent_device == "auto" else f"agent.device={agent_device}"
        msg = f"{asker} asks for CUDA but this machine has none"
        if hw.strict:
            raise HardwareError(f"{msg} (hardware.strict=true)")
        notes.append(f"{msg}: running on CPU with AMP, CUDA graphs and TF32 off")
        want = "cpu"
    if want == "cpu":
        # bf16 autocast runs on CPU when the profile asks for it there; a GPU profile's AMP does not.
        keep_bf16 = amp == "bf16" and hw.device == "cpu"
        amp, graphs, tf32 = ("bf16" if keep_bf16 else "none"), False, False
    if amp not in caps.amp:
        notes.append(f"{name} has no {amp} autocast: it runs without")
        amp = "none"
    if graphs and not caps.cuda_graphs:
        notes.append(f"{name} cannot capture CUDA graphs: it runs without")
        graphs = False
    if compile_mode != "none" and not caps.compile:
        notes.append(f"{name} does not compile its update: hardware.compile={compile_mode} is not applied")
        compile_mode = "none"
    missing = missing_cpu_compiler() if compile_mode != "none" and want == "cpu" else None
    if missing:
        raise HardwareError(
            f"hardware.compile={compile_mode} on a CPU needs a C++ compiler: {missing}, or hardware.compile=none"
        )
    torch.set_num_threads(int(hw.torch_threads))
    keep_mb = hw.get("heap_keep_mb")
    if keep_mb is not None and not keep_heap(keep_mb):
        notes.append(f"hardware.heap_keep_mb={keep_mb} needs glibc's malloc: not applied")
    if want == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    for note in notes:
        log.warning(note)
    algo_path = f"{algo.__module__}.{algo.__qualname__}"
    return Runtime(hw.name, algo_path, want, amp, graphs, tf32, compile_mode, int(hw.torch_threads), notes)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_heap(megabytes: int | None) -> bool:
    """Have glibc serve allocations under ``megabytes`` from its heap and keep up to that much freed
    memory there; returns whether it applied (glibc only; None: its defaults).

    Why: by default glibc maps each allocation over a dynamic threshold (at most 32 MB) afresh and
    returns freed heap tops over twice that threshold to the OS, so an update whose temporaries are a
    few hundred KB to a few MB each (SAC's 256-wide layers, a population's stacked (N, B, 256)
    tensors) page-faults them in again on every step: measured on the 2-vCPU KVM guest, ~220,000
    faults in 1.5 s for a population of 4, whose update ran 2x faster without them.
    """
    if megabytes is None or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    size = int(megabytes) << 20
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, size) and libc.mallopt(_M_TRIM_THRESHOLD, size))


MATMUL_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "avx_vnni", "avx512f", "avx2")


def cpu_features() -> list[str]:
    """The /proc/cpuinfo flags that decide CPU matmul speed (AVX-512, bf16 dot products, AMX tiles): the
    same update runs 1.0-1.7x SBX's speed on CPUs that differ only in these (experiments/cpu_speed_*)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [flag for flag in MATMUL_FLAGS if flag in flags]


def describe_machine() -> dict:
    """Hardware found, for the run folder and the benchmark table."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_features": cpu_features(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1)}
    return info

"""Turn a ``conf/hardware`` profile into what actually runs, and say so when it differs.

Why: a profile names what the user wants (an RTX 4060 with AMP and CUDA graphs); the machine may
not have it. Falling back must be loud (one warning, recorded in the run folder) or, with
``hardware.strict=true``, an error, never silent.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import asdict, dataclass

import psutil
import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# SB3 runs MLP policies of on-policy agents faster on CPU than on a GPU (its docs and our bench).
CPU_PREFERRING_AGENTS = ("ppo", "a2c")


class HardwareError(RuntimeError):
    """The profile asked for hardware this machine lacks and ``strict`` forbids falling back."""


@dataclass
class Runtime:
    """What a run actually uses; written to the run folder."""

    profile: str
    device: str
    amp: str
    cuda_graphs: bool
    tf32: bool
    compile: str
    torch_threads: int
    notes: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


def requested_device(hw: DictConfig, agent_name: str, agent_device: str = "auto") -> str:
    """The device the config asks for, before looking at what this machine has."""
    if agent_device != "auto":
        return str(agent_device)
    if agent_name in CPU_PREFERRING_AGENTS:
        return "cpu"
    return str(hw.device)


def amp_mode(hw: DictConfig) -> str:
    """``hardware.amp`` as "none" | "bf16" | "fp16" (the structured config holds an ``Amp`` enum member)."""
    return hw.amp.value if hasattr(hw.amp, "value") else str(hw.amp)


def resolve(hw: DictConfig, agent_name: str, agent_device: str = "auto") -> Runtime:
    """Pick the device and switches for this agent on this machine, applying thread and TF32 settings."""
    notes: list[str] = []
    amp = amp_mode(hw)
    graphs, tf32, compile_mode = bool(hw.cuda_graphs), bool(hw.tf32), str(hw.compile)
    want = requested_device(hw, agent_name, agent_device)
    if want != hw.device and agent_device == "auto":
        notes.append(
            f"{agent_name.upper()} trains on CPU: SB3 runs MLP on-policy agents faster there "
            "(set agent.device=cuda to use the GPU anyway)"
        )
    if want == "cuda" and not torch.cuda.is_available():
        msg = f"hardware={hw.name} asks for CUDA but this machine has none"
        if hw.strict:
            raise HardwareError(f"{msg} (hardware.strict=true)")
        notes.append(f"{msg}: running on CPU with AMP, CUDA graphs and TF32 off")
        want = "cpu"
    if want == "cpu":
        # bf16 autocast runs on CPU when the profile asks for it there; a GPU profile's AMP does not.
        keep_bf16 = amp == "bf16" and hw.device == "cpu"
        amp, graphs, tf32 = ("bf16" if keep_bf16 else "none"), False, False
    if agent_name != "sac" and (amp != "none" or compile_mode != "none"):
        notes.append(f"AMP and compile apply to the SAC update only: {agent_name.upper()} runs without")
        amp, compile_mode = "none", "none"
    torch.set_num_threads(int(hw.torch_threads))
    if want == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    for note in notes:
        log.warning(note)
    return Runtime(hw.name, want, amp, graphs, tf32, compile_mode, int(hw.torch_threads), notes)


def describe_machine() -> dict:
    """Hardware found, for the run folder and the benchmark table."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1)}
    return info

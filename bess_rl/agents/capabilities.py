"""What an algorithm class can apply of a hardware profile, declared on the class itself.

Why: the run record, the memory planner and the doctor must agree with what the model really does.
Deciding by agent *name* recorded bf16 for plain SB3 SAC, which has no autocast; the class is the one
authority, and ``capabilities`` reads its declaration (plain SB3 classes declare nothing).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm


@dataclass(frozen=True)
class Capabilities:
    """Switches an algorithm takes, and where it trains best.

    :param amp: autocast modes its update implements ("none" always).
    :param cuda_graphs: it can capture its update as CUDA graphs (``cuda_graphs=`` constructor argument).
    :param compile: it can ``torch.compile`` its update (``compile_mode=`` constructor argument).
    :param prefers_cpu: its MLP training runs faster on the CPU than on a GPU (on-policy collection).
    :param device_replay_buffer: its replay buffer lives on the training device, not in host RAM.
    """

    amp: tuple[str, ...] = ("none",)
    cuda_graphs: bool = False
    compile: bool = False
    prefers_cpu: bool = False
    device_replay_buffer: bool = False

    def kwargs(self, amp: str, cuda_graphs: bool, compile_mode: str) -> dict[str, Any]:
        """Constructor arguments for the switches this class declares (none for plain SB3)."""
        out: dict[str, Any] = {}
        if len(self.amp) > 1:
            out["amp"] = amp
        if self.cuda_graphs:
            out["cuda_graphs"] = cuda_graphs
        if self.compile:
            out["compile_mode"] = compile_mode
        return out


def capabilities(algo: type) -> Capabilities:
    """The class's declaration; a plain SB3 class takes no switch (on-policy ones still prefer the CPU)."""
    declared = getattr(algo, "capabilities", None)
    if isinstance(declared, Capabilities):
        return declared
    return Capabilities(prefers_cpu=issubclass(algo, OnPolicyAlgorithm))


def cpu_compiler() -> str | None:
    """The C++ compiler ``torch.compile`` (inductor) builds CPU kernels with, found as it searches for one
    (``$CXX``, else g++), or None: without one a CPU compile fails deep inside inductor."""
    return shutil.which(os.environ.get("CXX", "g++"))


def missing_cpu_compiler() -> str | None:
    """Why ``torch.compile`` cannot build CPU kernels here, as the end of an error line, or None."""
    return None if cpu_compiler() else f"{os.environ.get('CXX', 'g++')} not found (install g++ or set CXX)"

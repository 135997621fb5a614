"""The failures whose message is meant for the user: one line, no traceback (a sweep marks the trial failed)."""

from __future__ import annotations

import sys

from bess_rl.experiment.checkpoint import SIGNAL_EXIT_CODES, CheckpointError, NumericalError
from bess_rl.experiment.config import ConfigError
from bess_rl.experiment.hardware import HardwareError
from bess_rl.experiment.input_checks import InputError
from bess_rl.experiment.planner import MemoryBudgetError
from bess_rl.experiment.run_dir import RunDirError
from bess_rl.site.params import SiteError
from bess_rl.site.scenario import ScenarioError

USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    ScenarioError,
    SiteError,
    HardwareError,
    CheckpointError,
    NumericalError,
    MemoryBudgetError,
    RunDirError,
    InputError,
)


def interrupted(kept: str, signame: str = "SIGINT") -> int:
    """Print that a command was interrupted and ``kept`` (what is kept, what to do) in one line; returns the
    shell's exit code for the signal (130 for Ctrl-C). Why: a traceback of whatever line Ctrl-C landed on
    hides the one thing the user needs, what is left on disk."""
    print(f"interrupted: {kept}", file=sys.stderr)
    return SIGNAL_EXIT_CODES[signame]

"""Ctrl-C while ``python -m bess_rl`` or ``python -m bess_rl.<tool>`` starts: one line, exit 130.

Why here, imported first by the package: ``python -m`` imports ``bess_rl`` (gymnasium, numpy) and then the
command's module (Hydra, the tools' imports) before any of the project's ``except KeyboardInterrupt`` can run,
so a Ctrl-C in that time would print the traceback of whichever import it landed in. Nothing here imports
more than ``signal`` (``os`` and ``sys`` are loaded before any script).
"""

from __future__ import annotations

import os
import signal
import sys

TYPE_CHECKING = False  # typing itself is not imported: each millisecond before guard() is a Ctrl-C unguarded
if TYPE_CHECKING:
    from types import FrameType
    from typing import NoReturn

# The modules ``python -m`` runs whose start hands Ctrl-C back (``bess_rl.__main__.cli``, ``bess_rl.tools.forward``).
TOOLS = ("bench", "doctor", "evaluate", "export", "references", "replay", "report")
COMMANDS = frozenset({"bess_rl", *(f"bess_rl.{tool}" for tool in TOOLS)})


def interrupted_at_start(_signum: int, _frame: FrameType | None) -> NoReturn:
    """The SIGINT handler until a command takes over: nothing is done yet, so no traceback, only the exit code.

    A second Ctrl-C while Python shuts down ends the process at once, silently (the default action).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    print("interrupted: nothing done yet", file=sys.stderr)
    raise SystemExit(130)


def starting_module() -> str | None:
    """The module ``python -m`` is starting, while it imports that module's packages (``sys.argv[0]`` is
    ``"-m"`` only then); None for an import from a script or a test, or once the module runs."""
    args = sys.orig_argv
    if sys.argv[:1] != ["-m"] or "-m" not in args[:-1]:
        return None
    return args[args.index("-m") + 1]


def guard() -> None:
    """Say a Ctrl-C in one line from here on, when this process is one of the commands starting. One started
    with SIGINT ignored (a script's background job, ``nohup``) keeps ignoring it, as Python itself does."""
    if starting_module() in COMMANDS and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, interrupted_at_start)


def hand_over() -> None:
    """Give Ctrl-C back to Python (KeyboardInterrupt), for the command's own handling of it from here on."""
    if signal.getsignal(signal.SIGINT) is interrupted_at_start:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP outside training's own handling (the references' solve, the start): handled where a
    Ctrl-C is, with the signal's exit code. Why: their default action ended the process silently, leaving a run
    folder that neither resume nor evaluate could use."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signame = signal.Signals(signum).name
        self.exit_code = 128 + signum


def how_stopped(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What ended the command, said as its line begins, and the exit code: Ctrl-C's 130, or a ``Terminated``'s."""
    if isinstance(exc, Terminated):
        return f"stopped by {exc.signame}", exc.exit_code
    return "interrupted", 130


def _terminated(signum: int, _frame: FrameType | None) -> NoReturn:
    raise Terminated(signum)


def stop_on_terminate() -> None:
    """SIGTERM and SIGHUP raise ``Terminated`` from here on, where their action is still the default (not one a
    launcher installed, nor ignored as ``nohup`` leaves SIGHUP); training's handler takes them over while it runs."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _terminated)


def reader_gone() -> NoReturn:
    """End quietly when stdout's reader went away (``python -m bess_rl --help | head``), as ``git log | head``
    does: stdout goes to /dev/null so Python's own flush at exit cannot fail again, and the exit code is that
    of a process SIGPIPE ended."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(128 + signal.SIGPIPE)

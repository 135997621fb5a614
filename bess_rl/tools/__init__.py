"""The command-line tools beside training (doctor, bench, report, replay, references); nothing imports them."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, NoReturn

from bess_rl import startup

if TYPE_CHECKING:
    from pathlib import Path


def forward(command: str) -> NoReturn:
    """Run ``bess_rl.tools.<command>.main`` for ``python -m bess_rl.<command>``.

    Why here: a Ctrl-C while the tool imports torch (seconds) would print Python's traceback; each tool says
    an interruption in one line (exit 130) only once its ``main`` runs (before this, ``bess_rl.startup`` says it).
    """
    try:
        startup.hand_over()  # a Ctrl-C before this (the package's imports) was bess_rl.startup's
        module = importlib.import_module(f"{__name__}.{command}")
    except KeyboardInterrupt:
        print("interrupted: nothing done yet", file=sys.stderr)
        raise SystemExit(130) from None
    code = module.main()
    raise SystemExit(code if isinstance(code, int) else 0)  # bench's main returns its report, not a code


def cannot_write(exc: OSError, where: Path | str) -> str:
    """The one line for a write the OS refused (a read-only or immutable folder, a full disk, a file in the way):
    ``where``, the output the user knows (the refused path may be a temporary name inside it), and the reason."""
    return f"cannot write {where} ({exc.strerror or exc})"

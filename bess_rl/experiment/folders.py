"""``${bess_rl.unique_dir:<path>}``: run and sweep folders that two processes never share.

Why: conf/hydra/default.yaml names folders by the second they start in, so two sweeps (or runs)
started in the same second wrote their trials into one folder. The resolver creates the folder
exclusively and, when another process already has it, takes ``<path>-1``, ``<path>-2``, ...
It is cached (like Hydra's ``now``), so every later read of ``hydra.sweep.dir`` in this process and
in the job configs copied from it (joblib, submitit) names the same folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

RESOLVER = "bess_rl.unique_dir"


def unique_dir(path: str) -> str:
    """Create ``path`` (or the first free ``path-N``) and return its name; safe across processes and hosts."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 0
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}-{n}"


def register_resolvers() -> None:
    """Idempotent, so importing it in several entry points is harmless."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, unique_dir, use_cache=True)

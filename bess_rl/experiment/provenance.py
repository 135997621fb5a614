"""What a run folder records so a result can be trusted and rerun: versions, commit, machine."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("bess_rl", "torch", "stable-baselines3", "gymnasium", "numpy", "scipy", "hydra-core", "optuna")


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(repo: Path | None = None) -> str:
    """Commit of the code that ran, with ``+dirty`` when the tree had uncommitted changes.

    Only a checkout whose root holds this package counts: an installed bess_rl inside someone else's
    repository (a venv in a project) must not record that project's commit as its own.
    """
    repo = repo or Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return "unknown (not a git checkout)"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return sha + ("+dirty" if dirty else "")

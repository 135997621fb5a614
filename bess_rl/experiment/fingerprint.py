"""What a checkpoint was trained on: the resolved config, the scenario files' hashes, the package versions.

Why: a resume rebuilds its envs from the scenario files and the config, and model.zip keeps its own
hyperparameters; if any input changed since the checkpoint, the resumed run would silently be another
run reported as this one. ``differences`` names each change so a resume can be refused.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bess_rl.site.scenario import default_data_dir

# Keys that say how a run is shown or where it was started from, not what it computes.
IGNORED = ("progress_bar", "overrides", "resume", "paths")
PACKAGES = ("bess_rl", "stable-baselines3")
EMBEDDED = ("iquitos_hourly.parquet", "iquitos_sessions.parquet")
SECTIONS = (
    ("config", "config"),
    ("scenario_files", "scenario file"),
    ("eval_scenario_files", "scenario file"),
    ("versions", "version of"),
)
# Sections a fingerprint records since a later release (the evaluation files since 2026-12): an older checkpoint
# without one still resumes.
RECORDED_LATER = ("eval_scenario_files",)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out |= _flat(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: node}


def file_hash(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (scenario files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _hashes(paths: list[Any]) -> dict[str, str]:
    return {str(p): file_hash(Path(p)) for p in paths if p is not None and Path(p).is_file()}


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The inputs of ``cfg``'s training: config values by dotted key, scenario file hashes (training and
    evaluation part: the held-out scores are part of the run), versions."""
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    config = {k: v for k, v in _flat(values).items() if k.split(".")[0] not in IGNORED}
    sc = cfg.scenario
    paths = [sc.hourly_path, sc.sessions_path] if sc.hourly_path else [default_data_dir() / f for f in EMBEDDED]
    return {
        "config": config,
        "scenario_files": _hashes(paths),
        "eval_scenario_files": _hashes([sc.get("eval_hourly_path"), sc.get("eval_sessions_path")]),
        "versions": {p: _version(p) for p in PACKAGES},
    }


def differences(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """One phrase per input that differs between a checkpoint's fingerprint and this resume's."""
    if not isinstance(saved, dict):
        return ["the checkpoint records no fingerprint of its inputs"]
    changes = []
    for section, what in SECTIONS:
        if section in RECORDED_LATER and section not in saved:
            continue  # a checkpoint from before the section existed: nothing to compare it with
        old, new = saved.get(section) or {}, now[section]
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                if what == "scenario file":
                    changes.append(f"{what} {key} changed")
                else:
                    changes.append(f"{what} {key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}")
    return changes

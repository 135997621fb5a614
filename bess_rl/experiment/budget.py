"""The experiment budget: shrink a preset by stated factors, and record what changed.

Why: the SAC presets do 1,024 gradient updates per environment step, days of CPU; a budget
(``budget.scale.<agent>``, conf/experiment/before_vs_after.yaml) lets a comparison run anywhere
while every run's resolved config says exactly what differs from the preset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from bess_rl.experiment.config import ConfigError

log = logging.getLogger(__name__)


def _leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def apply_budget(cfg: DictConfig) -> list[dict[str, Any]]:
    """Multiply this agent's keys by ``budget.scale.<agent>``; record them in ``budget.changed``.

    Why: the SAC presets (docs/presets.md) do 1,024 gradient updates per environment step, days of CPU;
    a budget shrinks stated keys by stated factors (integers rounded, at least 1) so the comparison
    runs anywhere, and the resolved config of every run says exactly what differs from the preset.
    """
    if OmegaConf.select(cfg, "budget") is None:
        return []
    try:
        scale = OmegaConf.select(cfg, f"budget.scale.{cfg.agent.name}")
    except OmegaConfBaseException as exc:
        raise ConfigError(f"budget: {exc}".splitlines()[0]) from None
    changed = []
    for key, factor in _leaves(OmegaConf.to_container(scale) if scale else {}):
        path = f"agent.{key}"
        old = OmegaConf.select(cfg, path)
        if isinstance(old, bool) or not isinstance(old, int | float):
            raise ConfigError(f"budget scales {path}, which {cfg.agent.name} has no number for")
        new = max(1, round(old * factor)) if isinstance(old, int) else old * factor
        OmegaConf.update(cfg, path, new)
        changed.append({"key": path, "from": old, "to": new})
        log.info("budget %s: %s %s -> %s", cfg.budget.get("name", ""), path, old, new)
    with open_dict(cfg.budget):
        cfg.budget.changed = changed
    return changed

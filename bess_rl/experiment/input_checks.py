"""Checks of inputs that compose and have the right type but would be ignored or crash later.

Why: each of these once trained nothing while reporting success, read no file although one was named,
or ended in a traceback deep inside SB3, numpy or the LP; here each is one line naming the override.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from bess_rl.site.scenario import HOURS_PER_YEAR, Scenario, ScenarioError

MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_FORECAST_HOURS = 168  # a week: a site controller has no longer forecasts, and the features grow with it
# kW or kg/kWh above these are unit mistakes; the float sums of a year of them must not overflow.
MAX_POWER_KW, MAX_CO2 = 1e9, 1e3
SAC_ENT_COEF = re.compile(r"auto(_\d+(\.\d*)?(e-?\d+)?)?$")


class InputError(ValueError):
    """An input that would be silently ignored, or fail later with a traceback."""


# Site values where null means "none" (no import cap).
NULLABLE_SITE_KEYS = frozenset({"import_cap_kw"})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _in_range(key: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    if not _number(value) or not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise InputError(f"{key} must be a number in {bracket}{low:g}, {high:g}], got {value!r}")


def check_config(cfg: DictConfig) -> None:
    """The config-only checks; run by ``config.validate`` before its own."""
    seed = cfg.seed
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be in [0, {MAX_SEED}], got {seed}")
    every = cfg.checkpoint_every_steps
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every <= 0):
        raise InputError(f"checkpoint_every_steps must be a whole number of steps > 0 (or null), got {every!r}")
    agent, hp = cfg.agent, cfg.agent.hparams
    if not isinstance(agent.total_timesteps, int):
        raise InputError(f"agent.total_timesteps must be a whole number, got {agent.total_timesteps!r}")
    _in_range("agent.hparams.learning_rate", hp.learning_rate, 0.0, math.inf, low_open=True)
    _in_range("agent.hparams.gamma", hp.gamma, 0.0, 1.0, low_open=True)
    for key, low_open in (("gae_lambda", False), ("tau", True)):
        if key in hp:
            _in_range(f"agent.hparams.{key}", hp[key], 0.0, 1.0, low_open)
    if "clip_range" in hp:
        _in_range("agent.hparams.clip_range", hp.clip_range, 0.0, math.inf, low_open=True)
    ent = hp.get("ent_coef", 0.0)
    if isinstance(ent, str) and "buffer_size" in hp:
        if not SAC_ENT_COEF.match(ent):
            raise InputError(f"agent.hparams.ent_coef must be auto, auto_<initial value> or a number >= 0, got {ent!r}")
    else:
        _in_range("agent.hparams.ent_coef", ent, 0.0, math.inf)
    _check_scenario_config(cfg.scenario)
    for key, value in cfg.site.items():
        if value is None and key in NULLABLE_SITE_KEYS:
            continue
        if not _number(value) or not math.isfinite(value):
            raise InputError(f"site.{key} must be a finite number, got {value!r}")


def untrained_warning(cfg: DictConfig) -> str | None:
    """SAC collects ``learning_starts`` random steps before its first update: at or past the total, none runs.

    Not an error (a CI-sized budget does this on purpose); the run says so, and metrics.json's
    ``gradient_updates`` is 0.
    """
    hp, total = cfg.agent.hparams, cfg.agent.total_timesteps
    if "learning_starts" in hp and hp.learning_starts >= total:
        return (
            f"agent.hparams.learning_starts {hp.learning_starts} >= agent.total_timesteps {total}: "
            "no gradient update will run, the agent stays untrained"
        )
    return None


def _check_scenario_config(sc: DictConfig) -> None:
    if sc.sessions_path is not None and sc.hourly_path is None:
        raise InputError("scenario.sessions_path needs scenario.hourly_path (sessions alone would be ignored)")
    if sc.hourly_path is None and sc.hours != HOURS_PER_YEAR:
        raise InputError(
            f"scenario.hours={sc.hours} applies to scenario files; the embedded year has {HOURS_PER_YEAR} hours: "
            "use scenario.window_hours for a shorter run"
        )
    if sc.forecast_hours > MAX_FORECAST_HOURS:  # a negative one is the env's to refuse
        raise InputError(f"scenario.forecast_hours must be <= {MAX_FORECAST_HOURS}, got {sc.forecast_hours}")
    _in_range("scenario.co2_kg_per_kwh", sc.co2_kg_per_kwh, 0.0, MAX_CO2)
    for key in ("hourly_path", "sessions_path"):
        path = sc[key]
        if path is not None and Path(path).suffix.lower() == ".csv" and Path(path).is_file():
            _check_header(Path(path))


def _check_header(path: Path) -> None:
    """pandas renames a repeated column to ``name.1``: the second one would be silently ignored."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    repeated = sorted(name for name, n in Counter(h.strip() for h in header).items() if n > 1)
    if repeated:
        raise ScenarioError(f"{path}: column {repeated[0]!r} appears more than once in the header")


def check_scenario(scenario: Scenario) -> None:
    """Values a file may hold that are finite but overflow the env's and the LP's sums."""
    for name, values, limit in (
        ("pv_kw_per_kwp", scenario.pv_kw_per_kwp, 1.0e3),
        ("load_kw", scenario.load_kw, MAX_POWER_KW),
        ("co2_kg_per_kwh", scenario.co2_kg_per_kwh, MAX_CO2),
        ("sessions energy_kwh", scenario.sessions.energy_kwh, MAX_POWER_KW),
        ("sessions max_power_kw", scenario.sessions.max_power_kw, MAX_POWER_KW),
    ):
        if values.size and float(np.max(values)) > limit:
            row = int(np.argmax(values))
            raise ScenarioError(
                f"scenario {name} row {row}: {float(values[row]):g} is above {limit:g} (a unit mistake?)"
            )

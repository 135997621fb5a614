"""Checks of inputs that compose and have the right type but would be ignored or crash later.

Why: each of these once trained nothing while reporting success, read no file although one was named,
or ended in a traceback deep inside SB3, numpy or the LP; here each is one line naming the override.
"""

from __future__ import annotations

import csv
import filecmp
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bess_rl.site.params import SiteParams
from bess_rl.site.scenario import HOURS_PER_YEAR, MAX_CO2, MAX_PRICE, ScenarioError, embedded_part

MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_FORECAST_HOURS = 168  # a week: a site controller has no longer forecasts, and the features grow with it
# The scenario files of each part: (hourly key, sessions key) of scenario.*.
SCENARIO_FILES = (("hourly_path", "sessions_path"), ("eval_hourly_path", "eval_sessions_path"))
# glibc's mallopt takes the threshold in bytes as a C int: 2,048 MB and more would wrap around unnoticed.
MAX_HEAP_KEEP_MB = 2047
SAC_ENT_COEF = re.compile(r"auto(_(?P<initial>\d+(\.\d*)?(e-?\d+)?))?$")
# (low, high, low end open) of the float hyper-parameters: agent.hparams.<key> and population.<key>[i] alike.
HPARAM_RANGES: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (0.0, math.inf, True),
    "gamma": (0.0, 1.0, True),
    "tau": (0.0, 1.0, True),
    "gae_lambda": (0.0, 1.0, False),
    "clip_range": (0.0, math.inf, True),
}


class InputError(ValueError):
    """An input that would be silently ignored, or fail later with a traceback."""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _in_range(key: str, value: Any, low: float, high: float, low_open: bool = False, nullable: bool = False) -> None:
    """A finite number in the range (``high`` inf: no upper limit), or null where ``nullable``."""
    if value is None and nullable:
        return
    if not _number(value) or not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        upper = f"{high:g}]" if math.isfinite(high) else "inf)"
        null = " (or null)" if nullable else ""
        raise InputError(f"{key} must be a number in {bracket}{low:g}, {upper}{null}, got {value!r}")


def _steps(key: str, value: Any) -> None:
    """A count of timesteps: a whole number > 0, or null (off)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise InputError(f"{key} must be a whole number of steps > 0 (or null), got {value!r}")


def _seed(key: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_SEED:
        raise InputError(f"{key} must be in [0, {MAX_SEED}], got {value}")


def _target_entropy(key: str, value: Any) -> None:
    """SB3 takes ``auto`` or converts the value with ``float()``: anything else is a traceback in its constructor."""
    if value != "auto" and not (_number(value) and math.isfinite(value)):
        raise InputError(f"{key} must be auto or a finite number, got {value!r}")


def check_config(cfg: DictConfig) -> None:
    """The config-only checks; run by ``config.validate`` before its own."""
    _seed("seed", cfg.seed)
    for key in ("checkpoint_every_steps", "log_every_steps", "eval_every_steps"):
        _steps(key, cfg.get(key))
    _in_range("warn_hours", cfg.get("warn_hours"), 0.0, math.inf, low_open=True, nullable=True)
    hw = cfg.hardware
    _in_range("hardware.memory_budget_gb", hw.memory_budget_gb, 0.0, math.inf, low_open=True, nullable=True)
    keep_mb = hw.get("heap_keep_mb")  # absent from configs saved before it existed
    if keep_mb is not None and not 0 <= keep_mb <= MAX_HEAP_KEEP_MB:
        raise InputError(f"hardware.heap_keep_mb must be in [0, {MAX_HEAP_KEEP_MB}] (or null), got {keep_mb}")
    agent, hp = cfg.agent, cfg.agent.hparams
    if not isinstance(agent.total_timesteps, int):
        raise InputError(f"agent.total_timesteps must be a whole number, got {agent.total_timesteps!r}")
    for key, (low, high, low_open) in HPARAM_RANGES.items():
        if key in hp:
            _in_range(f"agent.hparams.{key}", hp[key], low, high, low_open)
    if "target_entropy" in hp:
        _target_entropy("agent.hparams.target_entropy", hp.target_entropy)
    ent = hp.get("ent_coef", 0.0)
    if isinstance(ent, str) and "buffer_size" in hp:
        match = SAC_ENT_COEF.match(ent)
        if not match:
            raise InputError(f"agent.hparams.ent_coef must be auto, auto_<initial value> or a number >= 0, got {ent!r}")
        if match["initial"] is not None and not 0 < float(match["initial"]) < math.inf:
            raise InputError(f"agent.hparams.ent_coef {ent}: the initial value must be a finite number > 0")
    else:
        _in_range("agent.hparams.ent_coef", ent, 0.0, math.inf)
    _check_scenario_config(cfg.scenario)
    SiteParams(**OmegaConf.to_container(cfg.site, resolve=True))  # its own checks, before anything is built


def check_population(pop: DictConfig) -> None:
    """Each member's value passes the check of the ``seed`` or ``agent.hparams.<key>`` it replaces: the stacked
    update takes the lists as they are (a gamma of 7 would train)."""
    for i, seed in enumerate(pop.get("seeds") or []):
        _seed(f"population.seeds[{i}]", seed)
    for key, (low, high, low_open) in HPARAM_RANGES.items():
        for i, value in enumerate(pop.get(key) or []):
            _in_range(f"population.{key}[{i}]", value, low, high, low_open)
    for i, value in enumerate(pop.get("target_entropy") or []):
        _target_entropy(f"population.target_entropy[{i}]", value)


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


def own_data_warning(cfg: DictConfig, overrides: list[str]) -> str | None:
    """Your own ``scenario.hourly_path`` without ``site=`` or ``site.*`` runs at the sizes of the scenario preset
    it was given with (the default's: an import cap of 30 kW) and under its name: nothing else would say so."""
    sc, site = cfg.scenario, cfg.site
    if sc.hourly_path is None or any(o.lstrip("+~").startswith(("site=", "site.")) for o in overrides):
        return None
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("scenario=")]
    named = any(o.startswith("scenario.name=") for o in overrides)  # then the name is not the preset's
    preset = f"site={chosen[-1]}" if chosen else "the default scenario's site" if named else f"site={sc.name}"
    cap = "no import cap" if site.import_cap_kw is None else f"import_cap_kw={site.import_cap_kw:g} kW"
    return (
        f"scenario.hourly_path={sc.hourly_path} runs at {preset} (pv_kwp={site.pv_kwp:g} kWp, "
        f"bess_capacity_kwh={site.bess_capacity_kwh:g}, {cap}) as scenario {sc.name!r}: give your site with "
        "site=<preset> or site.* (and scenario.name=<name>)"
    )


def _check_scenario_config(sc: DictConfig) -> None:
    for hourly, sessions in SCENARIO_FILES:
        if sc.get(sessions) is not None and sc.get(hourly) is None:
            raise InputError(f"scenario.{sessions} needs scenario.{hourly} (sessions alone would be ignored)")
    if sc.hourly_path is None and sc.hours != HOURS_PER_YEAR:
        raise InputError(
            f"scenario.hours={sc.hours} applies to scenario files; the embedded year has {HOURS_PER_YEAR} hours: "
            "use scenario.window_hours for a shorter run"
        )
    if sc.forecast_hours > MAX_FORECAST_HOURS:  # a negative one is the env's to refuse
        raise InputError(f"scenario.forecast_hours must be <= {MAX_FORECAST_HOURS}, got {sc.forecast_hours}")
    check_scenario_values(sc)
    for key in (key for pair in SCENARIO_FILES for key in pair):
        path = sc.get(key)
        if path is not None and Path(path).suffix.lower() == ".csv" and Path(path).exists():  # else: not found
            _check_header(f"scenario.{key}", Path(path))
    _check_held_out(sc)


def check_scenario_values(sc: DictConfig) -> None:
    """The flat intensity and tariff fill every hour of a file without those columns, and the forecast noise
    scales the observation: NaN there ends in a traceback from the first forward pass. ``build_scenario`` runs
    this too, since the references command builds its env without ``validate``."""
    _in_range("scenario.co2_kg_per_kwh", sc.co2_kg_per_kwh, 0.0, MAX_CO2)
    _in_range("scenario.price_per_kwh", sc.price_per_kwh, 0.0, MAX_PRICE)
    _in_range("scenario.forecast_noise", sc.forecast_noise, 0.0, math.inf)


def _part_hours(key: str, sc: DictConfig) -> tuple[str, int, float]:
    """The data set and the hours [start, end) of it a part ``KEY[start:end]`` uses after the window."""
    name, start, end = embedded_part(key)
    first = (start or 0) + sc.window_start
    last = math.inf if end is None else end
    return name, first, last if sc.window_hours is None else min(last, first + sc.window_hours)


def _check_held_out(sc: DictConfig) -> None:
    """An evaluation part that shares hours with the training part is not held out, though the run would score
    it as held out (``held_out: true``): the same data set with overlapping hours, or the same file."""
    if sc.get("eval_hourly_path") is not None:
        train, held = sc.hourly_path, sc.eval_hourly_path
        if train is not None and Path(train).is_file() and Path(held).is_file() and filecmp.cmp(train, held, False):
            raise InputError(
                f"scenario.eval_hourly_path {held} holds the same data as the training part scenario.hourly_path "
                f"{train}: it would not be held out (name another year's file, or drop eval_hourly_path)"
            )
        return
    if sc.get("eval_data") is None or sc.hourly_path is not None or sc.data is None:
        return  # no evaluation part (scored on the training part, held_out false), or your file against it
    train_set, train_start, train_end = _part_hours(sc.data, sc)
    held_set, held_start, held_end = _part_hours(sc.eval_data, sc)
    start, end = max(train_start, held_start), min(train_end, held_end)
    if train_set == held_set and start < end:
        shared = f"{held_set}[{start}:{'' if math.isinf(end) else end}]"
        raise InputError(
            f"scenario.eval_data {sc.eval_data!r} shares hours {shared} with the training part {sc.data!r}: it would "
            "not be held out (use other hours, or scenario.eval_data=null to score on the training part)"
        )


def _check_header(key: str, path: Path) -> None:
    """pandas renames a repeated column to ``name.1``: the second one would be silently ignored. Read as
    pandas reads it: a BOM (Excel's "CSV UTF-8") is not part of the first name, nor are spaces around a name."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            header = next(csv.reader(f), [])
    except OSError as exc:  # unreadable, a folder: the user's to fix, not a traceback
        raise ScenarioError(f"{key} {path}: cannot be read ({exc.strerror or exc})") from None
    repeated = sorted(name for name, n in Counter(h.strip() for h in header).items() if n > 1)
    if repeated:
        raise ScenarioError(f"{key} {path}: column {repeated[0]!r} appears more than once in the header")

"""``python -m bess_rl.report <sweep or run dirs...> [--out DIR]``: the before/after tables and plots, measured.

Why: the presets' source table (docs/presets.md) states speeds, memory and CO2 it never measured. This one is built only
from what run folders recorded (metrics.json, run_info.json, resolved_config.yaml, progress.csv,
dispatch_week.png), nothing is retrained, and a run that is missing or failed is listed, never dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from bess_rl.experiment import run_dir, seeds  # noqa: E402
from bess_rl.experiment.run_dir import RunDir, RunDirError, read_json, resume_command  # noqa: E402
from bess_rl.experiment.sweeper import members_mean  # noqa: E402
from bess_rl.site.params import penalised_kg, reduction_pct  # noqa: E402
from bess_rl.tools import cannot_write, study  # noqa: E402

AGENTS = ("sac", "ppo", "a2c")
PRESETS = ("before", "after")
REFERENCES = {"uncontrolled": "uncontrolled", "rule_based": "rule-based (RBC)", "smart_rule": "smart-charging rule",
              "mpc_perfect": "MPC, perfect forecasts", "mpc_persistence": "MPC, persistence forecasts",
              "lp_optimum": "LP bound", "lp_achievable": "LP plan through the env"}  # fmt: skip
RUN_FILES = (run_dir.METRICS, run_dir.CONFIG, f"{run_dir.HYDRA}/config.yaml")
# A replay reproduces a run, an evaluation re-scores it, an export converts its policy: none is another result.
SKIPPED_DIRS = {
    run_dir.REPLAYS,
    run_dir.EVALUATIONS,
    run_dir.EXPORT,
    run_dir.CHECKPOINT,
    run_dir.HYDRA,
    run_dir.RESUMES,
}
STEPS = "time/total_timesteps"
REWARD = "rollout/ep_rew_mean"
HELD_OUT = "eval/penalised_reduction_pct"  # the periodic held-out evaluation (bess_rl.experiment.evaluation)
LOSSES = ("train/critic_loss", "train/value_loss", "train/loss")  # the first SB3 wrote: SAC, PPO/A2C, other
NA = "—"
# Config keys that do not make another config: a run's seed, how it was launched and what it printed.
NOT_CONFIG = {"seed", "overrides", "progress_bar", "resume", "plot", "save_model", "paths", "seeds"}
PENALISED = "penalised_reduction_pct"
LABEL_WIDTH = 60  # characters per line of a bar's label in co2.png
HPARAMS = "agent.hparams."  # left out of config labels: "learning_rate=0.001"
# What reading a truncated or hand-edited run folder file raises: that folder is skipped with a warning.
UNREADABLE = (RunDirError, ValueError, yaml.YAMLError, OmegaConfBaseException)
JOB_LOG = "bess_rl.log"  # Hydra's log of a job: hydra.job.name (bess_rl/conf/hydra/default.yaml) + ".log"
LOG_TAIL = 65_536  # bytes of a job's log searched for its last error: where a failed job logged it
ERROR_LINE = re.compile(r"^\[[^]]*\]\[[^]]*\]\[(?:ERROR|CRITICAL)\] - (.+)$", re.MULTILINE)  # Hydra's format


class ReportError(Exception):
    """Arguments the report cannot be written from, said in one line (exit 2)."""


@dataclass
class Run:
    """One run folder: what it was asked to run and, if it finished, what it measured.

    Every file is read by ``load_run``, so a folder with one that cannot be read is skipped, not the report.
    """

    path: Path
    agent: str
    preset: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    info: dict[str, Any]
    seed: int | None
    launcher: str | None  # how Hydra launched it ("joblib, n_jobs=2"): parallel runs share the CPU
    sweeper: dict[str, Any] | None  # the Optuna sweeper it was a trial of (study.sweeper_config)

    @property
    def status(self) -> str:
        if self.metrics is not None:
            return "ok"
        if RunDir(self.path).checkpoint.is_dir():
            return f"interrupted (resume with `{resume_command(self.path)}`)"
        log = self.path / JOB_LOG
        if not log.is_file():
            return "failed: no metrics.json (the sweep's console output has the error)"
        error = last_error(log)
        if error is None:  # killed, or an error of the code itself: its traceback went to the console
            return f"failed: no metrics.json and no error in `{log}` (the sweep's console output may have it)"
        return f"failed: {error} (`{log}`)"

    @property
    def mtime(self) -> float:
        files = [RunDir(self.path).metrics, self.path]
        return next(p.stat().st_mtime for p in files if p.exists())

    @property
    def settings(self) -> dict[str, Any]:
        """The run's config without its seed and what launched it: what makes it a config of its own."""
        kept = {k: v for k, v in self.config.items() if k not in NOT_CONFIG}
        if "budget" in kept:  # the budget's menu of options is not what ran; what it changed is
            kept["budget"] = self.changes
        return kept

    @property
    def config_key(self) -> str:
        """The run's config without its seed: runs with the same key are seeds of one config."""
        return json.dumps([self.agent, self.preset, self.settings], sort_keys=True, default=str)

    @property
    def changes(self) -> list[dict[str, Any]]:
        """What a budget changed from the preset (``budget.changed``, see bess_rl.experiment.budget.apply_budget)."""
        return list((self.config.get("budget") or {}).get("changed") or [])

    def setting(self, key: str) -> Any:
        """A value of the run's config, e.g. ``agent.log_interval``; None when not recorded."""
        node: Any = self.config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node


def last_error(log: Path) -> str | None:
    """The message of the last ERROR line in the end of a job's log: a sweep's failed trial logged why there
    (``bess_rl.__main__``), and its table row should say it."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - LOG_TAIL))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    errors = ERROR_LINE.findall(tail)
    return errors[-1].strip() if errors else None


def _launcher(path: Path) -> str | None:
    """How Hydra launched the run in ``path``: parallel runs share the CPU, which bounds timesteps/hour."""
    hydra_yaml = path / run_dir.HYDRA / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    launcher = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.launcher", default=None)
    if launcher is None:
        return None
    name = str(launcher.get("_target_", "")).split(".")[-1].removesuffix("Launcher").lower() or "?"
    return f"{name}, n_jobs={launcher.n_jobs}" if "n_jobs" in launcher else name


def _seed(metrics: dict[str, Any] | None, config: dict[str, Any]) -> int | None:
    """The run's seed; a folder whose .hydra/config.yaml holds one that is no integer (``seed=abc``, a sweep job
    refused for it, or a folder from before refused single runs were removed) is skipped."""
    seed = (metrics or {}).get("seed", config.get("seed"))
    if seed is None:
        return None
    try:
        return int(seed)
    except (TypeError, ValueError):
        raise RunDirError(f"seed {seed!r} is not an integer") from None


def load_run(path: Path) -> Run:
    rd = RunDir(path)
    config_file = rd.config if rd.config.is_file() else rd.hydra_config
    config = OmegaConf.to_container(OmegaConf.load(config_file)) if config_file.is_file() else {}
    if not isinstance(config, dict):
        raise RunDirError(f"{config_file} does not hold a config mapping")
    metrics = read_json(rd.metrics) if rd.metrics.is_file() else None
    info = read_json(rd.run_info) if rd.run_info.is_file() else {}
    named = metrics or info
    agent = named.get("agent") or (config.get("agent") or {}).get("name") or "?"
    preset = named.get("preset") or (config.get("preset") or {}).get("name") or "?"
    return Run(path, str(agent), str(preset), config, metrics, info, _seed(metrics, config), _launcher(path),
               study.sweeper_config(path))  # fmt: skip


def is_population(folder: Path) -> bool:
    """A ``population.size=N`` run's folder: Hydra's files and one ``member_<i>/`` run folder per member, which
    are the runs (bess_rl.experiment.population_run), as ``python -m bess_rl.evaluate`` tells it."""
    return not RunDir(folder).config.is_file() and any(folder.glob(f"member_*/{run_dir.CONFIG}"))


def population_trials(paths: Sequence[Path]) -> list[Run]:
    """Each population folder an Optuna sweep ran as one trial: a row of its study, with the members' mean
    KPIs (what the sweep optimised: ``population_run.objective``); its members stay runs of their own."""
    trials = []
    for root in paths:
        for folder in sorted([root, *root.rglob("*")]):
            if not (folder.is_dir() and is_population(folder)) or (sweeper := study.sweeper_config(folder)) is None:
                continue
            try:
                members = [load_run(config.parent) for config in sorted(folder.glob(f"member_*/{run_dir.CONFIG}"))]
            except UNREADABLE as exc:
                print(f"warning: skipping the trial {folder}: {str(exc).splitlines()[0]}", file=sys.stderr)
                continue
            scored = [m.metrics for m in members if m.metrics is not None]
            # A member without metrics: the trial did not finish.
            metrics = members_mean(scored) if len(scored) == len(members) else None
            trials.append(replace(members[0], path=folder, metrics=metrics, seed=None, sweeper=sweeper))
    return trials


def find_runs(paths: Sequence[Path]) -> list[Run]:
    """Every folder under ``paths`` that a run started in, finished or not (a population's folder is none)."""
    found = []
    for root in paths:
        if not root.is_dir():
            raise ReportError(f"no such folder: {root}")
        for folder in sorted([root, *root.rglob("*")]):
            skipped = SKIPPED_DIRS & set(folder.relative_to(root).parts)
            is_run = folder.is_dir() and any((folder / f).is_file() for f in RUN_FILES) and not is_population(folder)
            if is_run and not skipped:
                try:
                    found.append(load_run(folder))
                except UNREADABLE as exc:
                    print(f"warning: skipping {folder}: {str(exc).splitlines()[0]}", file=sys.stderr)
    return found


def pick(runs: Sequence[Run]) -> dict[tuple[str, str], Run]:
    """Per agent and preset, the newest finished run, or the newest unfinished one if none finished."""
    chosen: dict[tuple[str, str], Run] = {}
    for run in sorted(runs, key=lambda r: (r.metrics is not None, r.mtime)):
        chosen[(run.agent, run.preset)] = run
    return chosen


def used_runs(runs: Sequence[Run]) -> list[Run]:
    """Every seed's newest finished run of each config, and for an agent and preset with none, its newest run.

    Why not one per agent and preset: with ``-m seed=0,1,2`` that kept the last seed only.
    """
    finished: dict[tuple[str, int | None], Run] = {}
    for run in sorted((r for r in runs if r.metrics is not None), key=lambda r: r.mtime):
        finished[(run.config_key, run.seed)] = run
    done = {(r.agent, r.preset) for r in finished.values()}
    unfinished = [r for key, r in pick(runs).items() if key not in done]
    return sorted([*finished.values(), *unfinished], key=lambda r: (r.seed if r.seed is not None else -1, str(r.path)))


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{value:,.{digits}f}{suffix}"


def _metric(run: Run | None, key: str) -> float | None:
    return float(run.metrics[key]) if run is not None and run.metrics is not None and key in run.metrics else None


def _resource_stat(metrics: dict[str, Any], key: str, stat: str) -> float | None:
    """A statistic of a ResourceMonitor reading (bess_rl.experiment.monitor) if the run recorded one."""
    stats = (metrics.get("resources") or {}).get("stats") or {}
    return stats[key][stat] if key in stats else None


def _resource_mean(metrics: dict[str, Any], key: str) -> float | None:
    return _resource_stat(metrics, key, "mean")


def _resource_max(metrics: dict[str, Any], key: str) -> float | None:
    return _resource_stat(metrics, key, "max")


def _changes_text(run: Run) -> str:
    return "; ".join(f"{c['key'].removeprefix('agent.')} {c['from']:,} → {c['to']:,}" for c in run.changes) or "none"


def result_rows(used: Sequence[Run], preset_grid: bool = True) -> list[dict[str, Any]]:
    """One row per run (each seed); with ``preset_grid``, every agent and preset (absent ones too) first."""
    found = {(r.agent, r.preset) for r in used}
    expected = [(a, p) for a in AGENTS for p in PRESETS] if preset_grid else []
    keys = expected + sorted(found - set(expected), key=lambda k: (AGENTS.index(k[0]) if k[0] in AGENTS else 9, k))
    rows = []
    for agent, preset in keys:
        for run in [r for r in used if (r.agent, r.preset) == (agent, preset)] or [None]:
            rows.append(_result_row(agent, preset, run))
    return rows


def _result_row(agent: str, preset: str, run: Run | None) -> dict[str, Any]:
    m = run.metrics if run is not None and run.metrics is not None else {}
    return {
        "agent": agent,
        "preset": preset,
        "status": run.status if run is not None else "missing: no run folder found",
        "total_timesteps": m.get("total_timesteps"),
        "changed_from_preset": _changes_text(run) if run is not None else None,
        "log_interval": run.setting("agent.log_interval") if run is not None else None,
        "device": m.get("device"),
        "train_seconds": m.get("train_seconds"),
        "timesteps_per_hour": m.get("timesteps_per_hour"),
        "peak_memory_mb": m.get("peak_memory_mb"),
        "rss_max_mb": _resource_max(m, "rss_mb"),
        "cpu_pct_mean": _resource_mean(m, "cpu_pct"),
        "gpu_util_pct_mean": _resource_mean(m, "gpu_util_pct"),
        "resource_warnings": "; ".join((m.get("resources") or {}).get("warnings") or []) or None,
        "co2_kg": m.get("co2_kg"),
        "co2_reduction_pct": m.get("co2_reduction_pct"),
        "penalised_reduction_pct": m.get("penalised_reduction_pct"),
        "lp_gap_closed_pct": m.get("lp_gap_closed_pct"),
        "ev_unmet_kwh": m.get("ev_unmet_kwh"),
        "eval_hours": m.get("eval_hours"),
        "seed": run.seed if run is not None else None,
        "held_out": m.get("held_out"),
        "train_part_penalised_reduction_pct": (m.get("train_part") or {}).get(PENALISED),
        "flags": "; ".join(m.get("flags") or []) or None,
        "path": str(run.path) if run is not None else None,
    }


def _median(run: Run | None, used: Sequence[Run], key: str) -> float | None:
    """``key``'s median over the seeds of ``run``'s config (one seed's speed is one sample of a shared machine)."""
    same = [r for r in used if run is not None and r.config_key == run.config_key]
    values = [v for r in same if (v := _metric(r, key)) is not None]
    return float(np.median(values)) if values else _metric(run, key)


def speed_rows(
    chosen: dict[tuple[str, str], Run], used: Sequence[Run] = (), preset_grid: bool = True
) -> list[dict[str, Any]]:
    """The presets' speed table per agent: old (before) vs new (after), measured (median over seeds); without
    ``preset_grid`` only the agents that ran (a PPO sweep has no SAC row to leave blank)."""
    rows = []
    for agent in [a for a in AGENTS if preset_grid or any(k[0] == a for k in chosen)]:
        before, after = chosen.get((agent, "before")), chosen.get((agent, "after"))
        old, new = _median(before, used, "timesteps_per_hour"), _median(after, used, "timesteps_per_hour")
        mem_old, mem_new = _median(before, used, "peak_memory_mb"), _median(after, used, "peak_memory_mb")
        rows.append(
            {
                "agent": agent,
                "before_timesteps_per_hour": old,
                "after_timesteps_per_hour": new,
                "speedup": new / old if old and new is not None else None,
                "before_peak_memory_mb": mem_old,
                "after_peak_memory_mb": mem_new,
                "memory_change_pct": 100.0 * (mem_new - mem_old) / mem_old if mem_old and mem_new is not None else None,
                "before_total_timesteps": _metric(before, "total_timesteps"),
                "after_total_timesteps": _metric(after, "total_timesteps"),
            }
        )
    return rows


def _uncontrolled_kg(run: Run) -> float:
    return float(run.metrics["references"]["uncontrolled"]["co2_kg"])


def same_data(a: Run, b: Run) -> bool:
    """Evaluated on the same data: as many hours, and uncontrolled charging (deterministic) emitting the same CO2."""
    x, y = _uncontrolled_kg(a), _uncontrolled_kg(b)
    return a.metrics.get("eval_hours") == b.metrics.get("eval_hours") and abs(x - y) <= 1e-9 * max(abs(x), abs(y))


def evaluation_bases(used: Sequence[Run]) -> list[list[Run]]:
    """The finished runs by the data they were evaluated on, the base most runs share first (ties: the one of the
    first run in path order): the report compares runs with that base's references, never with another's."""
    bases: list[list[Run]] = []
    for run in sorted((r for r in used if r.metrics is not None), key=lambda r: str(r.path)):
        base = next((b for b in bases if same_data(b[0], run)), None)
        if base is None:
            bases.append([run])
        else:
            base.append(run)
    return sorted(bases, key=len, reverse=True)  # stable: a tie keeps path order


def set_aside_warnings(bases: Sequence[Sequence[Run]]) -> list[str]:
    """One line per other evaluation base, naming its runs: the references and co2.png leave them out."""
    if len(bases) < 2:
        return []
    main = bases[0][0]
    here = f"{_num(main.metrics.get('eval_hours'))} h, {_num(_uncontrolled_kg(main))} kg"
    return [
        f"Set aside, evaluated on other data ({_num(b[0].metrics.get('eval_hours'))} h, uncontrolled CO2 "
        f"{_num(_uncontrolled_kg(b[0]))} kg, not {here}): "
        + ", ".join(f"{r.agent.upper()} {r.preset} seed {r.seed} (`{r.path}`)" for r in b)
        for b in bases[1:]
    ]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _speed_table(speeds: Sequence[dict[str, Any]]) -> str:
    header = ["agent", "before timesteps/h", "after timesteps/h", "speedup", "before peak MB", "after peak MB",
              "memory change"]  # fmt: skip
    rows = [
        [
            s["agent"].upper(),
            _num(s["before_timesteps_per_hour"]),
            _num(s["after_timesteps_per_hour"]),
            _num(s["speedup"], 2, "x"),
            _num(s["before_peak_memory_mb"]),
            _num(s["after_peak_memory_mb"]),
            _num(s["memory_change_pct"], 1, "%"),
        ]
        for s in speeds
    ]
    return _md_table(header, rows)


def _results_table(results: Sequence[dict[str, Any]]) -> str:
    header = ["agent", "preset", "status", "timesteps trained", "budget changes", "log_interval", "timesteps/h",
              "peak MB", "RSS max MB", "mean utilisation", "CO2 kg", "CO2 reduction", "penalised reduction",
              "LP gap closed", "EV unmet kWh", "seed", "training part penalised", "degenerate"]  # fmt: skip
    rows = [
        [
            r["agent"].upper(),
            r["preset"],
            r["status"],
            _num(r["total_timesteps"]),
            r["changed_from_preset"] or NA,
            _num(r["log_interval"]),
            _num(r["timesteps_per_hour"]),
            _num(r["peak_memory_mb"]),
            _num(r["rss_max_mb"]),
            _utilisation(r),
            _num(r["co2_kg"]),
            _num(r["co2_reduction_pct"], 2, "%"),
            _num(r["penalised_reduction_pct"], 2, "%"),
            _num(r["lp_gap_closed_pct"], 1, "%"),
            _num(r["ev_unmet_kwh"], 1),
            _num(r["seed"]),
            _num(r["train_part_penalised_reduction_pct"], 2, "%"),
            r["flags"] or ("none" if r["co2_kg"] is not None else NA),
        ]
        for r in results
    ]
    return _md_table(header, rows)


def _utilisation(row: dict[str, Any]) -> str:
    """What the training process got: on a shared or busy machine CPU % < 100 explains a low timesteps/hour."""
    parts = [f"GPU {row['gpu_util_pct_mean']:.0f}%"] if row["gpu_util_pct_mean"] is not None else []
    parts += [f"CPU {row['cpu_pct_mean']:.0f}%"] if row["cpu_pct_mean"] is not None else []
    return ", ".join(parts) or NA


def reference_names(refs: dict[str, dict[str, float]]) -> dict[str, str]:
    """The references a run recorded, the known ones first under their long names."""
    return {**{k: n for k, n in REFERENCES.items() if k in refs}, **{k: k for k in refs if k not in REFERENCES}}


def _references_table(refs: dict[str, dict[str, float]], penalty: float | None) -> str:
    if not refs:
        return "No finished run, so no references."
    uncontrolled = refs["uncontrolled"]
    base = uncontrolled["co2_kg"]

    def penalised(ref: dict[str, float]) -> float | None:
        """Against uncontrolled charging's penalised kg, as a run's ``penalised_reduction_pct``."""
        if penalty is None:
            return None
        pct = reduction_pct(
            penalised_kg(base, uncontrolled["ev_unmet_kwh"], penalty),
            penalised_kg(ref["co2_kg"], ref["ev_unmet_kwh"], penalty),
        )
        return round(pct, 9) + 0.0  # no "-0.00%"

    rows = [
        [
            name,
            _num(refs[key]["co2_kg"]),
            _num(reduction_pct(base, refs[key]["co2_kg"]) + 0.0, 2, "%"),
            _num(penalised(refs[key]), 2, "%"),
            _num(refs[key]["ev_unmet_kwh"], 1),
        ]
        for key, name in reference_names(refs).items()
    ]
    return _md_table(["controller", "CO2 kg", "CO2 reduction", "penalised reduction", "EV unmet kWh"], rows)


def seed_groups(used: Sequence[Run]) -> list[list[Run]]:
    """The finished runs per config and evaluation data (seeds of one config on one data set together), those on
    the report's base first (``evaluation_bases``), each base's best penalised IQM first."""
    base = {id(r): i for i, b in enumerate(evaluation_bases(used)) for r in b}
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in used:
        if run.metrics is not None:
            groups.setdefault((run.config_key, base[id(run)]), []).append(run)
    return sorted(groups.values(), key=lambda g: (base[id(g[0])], -seeds.iqm(_scores(g, PENALISED)).value))


def _scores(group: Sequence[Run], key: str) -> np.ndarray:
    return np.array([float(r.metrics[key]) for r in group])


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"agent.hparams.learning_rate": 0.001, ...}``."""
    if isinstance(node, dict) and node:
        return {key: value for k, v in node.items() for key, value in _flat(v, f"{prefix}{k}.").items()}
    return {prefix.removesuffix("."): node}


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _label(group: Sequence[Run], groups: Sequence[Sequence[Run]]) -> str:
    """AGENT preset, plus the resolved settings that set this config apart when several share agent and preset.

    Why the resolved config, not the command line: population members differ by ``population.learning_rate=[...]``
    lists, which no member's overrides tell apart.
    """
    run = group[0]
    name = f"{run.agent.upper()} {run.preset}"
    twins = [_flat(g[0].settings) for g in groups if (g[0].agent, g[0].preset) == (run.agent, run.preset)]
    keys = sorted({k for t in twins for k in t if len({_value_text(o.get(k)) for o in twins}) > 1})
    if not keys:  # one config, or the same config on other data
        return name
    mine = _flat(run.settings)
    return f"{name} ({', '.join(f'{k.removeprefix(HPARAMS)}={_value_text(mine.get(k))}' for k in keys)})"


def seed_rows(groups: Sequence[Sequence[Run]], main: Run | None = None) -> list[dict[str, Any]]:
    """IQM and mean of the held-out scores over each config's seeds, with 95 % stratified bootstrap CIs;
    ``same_data``: evaluated on the data of ``main`` (the report's base, see ``evaluation_bases``)."""
    rows = []
    for group in groups:
        row: dict[str, Any] = {"config": _label(group, groups), "seeds": len(group),
                               "seed_list": " ".join(str(r.seed) for r in group),
                               "held_out": all(r.metrics.get("held_out", False) for r in group),
                               "same_data": main is None or same_data(group[0], main),
                               "eval_hours": group[0].metrics.get("eval_hours")}  # fmt: skip
        for key in (PENALISED, "co2_reduction_pct"):
            for stat in ("iqm", "mean"):
                est = getattr(seeds, stat)(_scores(group, key))
                row.update({f"{key}_{stat}": est.value, f"{key}_{stat}_low": est.low, f"{key}_{stat}_high": est.high})
        train = [r.metrics["train_part"][PENALISED] for r in group if "train_part" in r.metrics]
        row["train_part_penalised_mean"] = float(np.mean(train)) if train else None
        row["ev_unmet_kwh_mean"] = float(_scores(group, "ev_unmet_kwh").mean())
        co2 = seeds.mean(_scores(group, "co2_kg"))
        row.update({"co2_kg_mean": co2.value, "co2_kg_mean_low": co2.low, "co2_kg_mean_high": co2.high})
        row["preset"] = group[0].preset
        row["degenerate_runs"] = sum(bool(r.metrics.get("flags")) for r in group)
        rows.append(row)
    return rows


def _ci(row: dict[str, Any], key: str) -> str:
    est = seeds.Estimate(row[key], row[f"{key}_low"], row[f"{key}_high"])
    return est.text(2, "%") if not math.isnan(est.low) else f"{est.value:.2f}% (one seed: no interval)"


def _seeds_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ["config", "seeds", "penalised reduction IQM [95% CI]", "penalised mean [95% CI]",
              "CO2 reduction IQM [95% CI]", "CO2 mean [95% CI]", "training part penalised (mean)",
              "EV unmet kWh (mean)", "degenerate runs", "data"]  # fmt: skip
    body = [
        [r["config"], f"{r['seeds']} ({r['seed_list']})", _ci(r, f"{PENALISED}_iqm"), _ci(r, f"{PENALISED}_mean"),
         _ci(r, "co2_reduction_pct_iqm"), _ci(r, "co2_reduction_pct_mean"),
         _num(r["train_part_penalised_mean"], 2, "%"), _num(r["ev_unmet_kwh_mean"], 1),
         f"{r['degenerate_runs']} of {r['seeds']}", _data_text(r)]
        for r in rows
    ]  # fmt: skip
    return _md_table(header, body)


def _data_text(row: dict[str, Any]) -> str:
    part = "held out" if row["held_out"] else "**training part**"
    return part if row["same_data"] else f"{part}, **other data** ({_num(row['eval_hours'])} h): set aside"


def improvement_rows(groups: Sequence[Sequence[Run]]) -> list[dict[str, Any]]:
    """P(X beats Y) on the penalised objective for configs of one agent (presets) or one preset (agents),
    evaluated on the same data."""
    rows = []
    for i, x in enumerate(groups):
        for y in groups[i + 1 :]:
            same_agent, same_preset = x[0].agent == y[0].agent, x[0].preset == y[0].preset
            if not (same_agent or same_preset) or min(len(x), len(y)) < 2 or not same_data(x[0], y[0]):
                continue
            est = seeds.probability_of_improvement(_scores(x, PENALISED), _scores(y, PENALISED))
            rows.append({"x": _label(x, groups), "y": _label(y, groups), "poi": est.value, "low": est.low,
                         "high": est.high})  # fmt: skip
    return rows


def _improvement_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "Needs two configs of one agent or one preset with at least two seeds each."
    body = [[r["x"], r["y"], seeds.Estimate(r["poi"], r["low"], r["high"]).text(2)] for r in rows]
    return _md_table(["X", "Y", "P(X > Y) [95% CI]"], body)


def read_progress(path: Path) -> pd.DataFrame:
    """progress.csv as SB3 wrote it; empty when SB3 logged no row (fewer episodes/rollouts than log_interval)."""
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def curve(progress: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series] | None:
    """(timesteps, values) of one logged column, or None when SB3 never wrote it."""
    if STEPS not in progress or column not in progress:
        return None
    rows = progress[[STEPS, column]].dropna()
    return (rows[STEPS], rows[column]) if len(rows) else None


def plot_co2(
    groups: Sequence[dict[str, Any]], refs: dict[str, dict[str, float]], path: Path, hours: int | None
) -> Path:
    """CO2 bars from zero: references, then configs ranked by penalised reduction (IQM), mean over seeds with 95 % CI.

    Ranked by the penalised objective: by CO2 alone a policy that leaves EVs uncharged would come first.
    """
    labels, values, errors, colors = [], [], [], []
    for key, name in reference_names(refs).items():
        labels.append(name)
        values.append(refs[key]["co2_kg"])
        errors.append((0.0, 0.0))
        colors.append("grey")
    for row in groups:
        labels.append(f"{row['config']} (n={row['seeds']})")
        values.append(row["co2_kg_mean"])
        low, high = row["co2_kg_mean_low"], row["co2_kg_mean_high"]
        errors.append((0.0, 0.0) if math.isnan(low) else (row["co2_kg_mean"] - low, high - row["co2_kg_mean"]))
        colors.append({"before": "tab:orange", "after": "tab:blue"}.get(row["preset"], "tab:green"))
    # Long config labels wrapped, in a constrained layout: tight_layout gave up on them (a warning, clipped labels).
    labels = [textwrap.fill(label, LABEL_WIDTH) for label in labels]
    height = 0.3 * sum(label.count("\n") + 1 for label in labels) + 0.2 * len(labels) + 1.5
    fig, ax = plt.subplots(figsize=(10, height), layout="constrained")
    ax.barh(labels, values, xerr=np.array(errors).T if errors else None, color=colors, capsize=3)
    ax.invert_yaxis()
    base = refs.get("uncontrolled", {}).get("co2_kg")
    for i, value in enumerate(values):
        note = f"{value:,.0f} kg" + (f"  ({reduction_pct(base, value) + 0.0:.2f}% reduction)" if base else "")
        ax.text(value, i, " " + note, va="center", fontsize=8)
    ax.set_xlim(0, max(values) * 1.3 if values else 1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel(f"grid CO2 over the {hours or '?'} h evaluated, kg\n(deterministic policy; bars: mean, 95% CI)")
    fig.suptitle("CO2: references (grey), agents ranked by penalised reduction (IQM over seeds)")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_learning_curves(chosen: dict[tuple[str, str], Run], path: Path) -> Path:
    """Held-out penalised reduction (else mean episode reward) and the main loss against timesteps, per agent."""
    fig, axes = plt.subplots(2, len(AGENTS), figsize=(4.2 * len(AGENTS), 6.5), squeeze=False)
    for col, agent in enumerate(AGENTS):
        for row, columns in enumerate(((HELD_OUT, REWARD), LOSSES)):
            ax = axes[row][col]
            drawn = []
            for preset, color in zip(PRESETS, ("tab:orange", "tab:blue"), strict=True):
                run = chosen.get((agent, preset))
                progress = read_progress(RunDir(run.path).progress) if run is not None else pd.DataFrame()
                found = next(((c, xy) for c in columns if (xy := curve(progress, c)) is not None), None)
                if found is not None:
                    name, (x, y) = found
                    ax.plot(x, y, marker=".", color=color, label=f"{preset}: {name.split('/')[-1]}")
                    drawn.append(name)
            if drawn:
                ax.legend(fontsize=7)
            else:
                why = "no evaluation or finished episode logged" if row == 0 else "not logged"
                ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_title(f"{agent.upper()}: {'held-out penalised reduction %' if row == 0 else 'loss'}", fontsize=9)
            ax.set_xlabel("timesteps", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def evaluated_data(run: Run) -> str:
    """What ``run`` was scored on, from its config: run_info's scenario names the training part, sliced."""
    scenario = run.config.get("scenario") or {}
    name = scenario.get("name") or run.info.get("scenario", "?")
    if not run.metrics.get("held_out", False):
        return f"scenario {name}, **not held out** (scored on its training data)"
    part = scenario.get("eval_data") or scenario.get("eval_hourly_path")
    if part and (scenario.get("window_hours") is not None or scenario.get("window_start")):
        start = scenario.get("window_start") or 0
        part = f"{part}[{start}:{start + run.metrics['eval_hours']}]"  # as bess_rl.site.scenario names a window
    return f"scenario {name}, its held-out part ({part + ', ' if part else ''}never trained on)"


def write_report(paths: Sequence[Path], out: Path) -> Path:
    """Find the runs under ``paths`` and write report.md, the CSVs and the figures into the folder ``out``."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file: the report is a folder (report.md, CSVs, figures)")
    runs = find_runs(paths)
    if not runs:  # a report of nothing would still claim what the runs were evaluated on
        raise ReportError(f"no run folder found under {', '.join(map(str, paths))}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way higher up, no permission
        raise ReportError(f"cannot create the report folder {out} ({exc.strerror or exc})") from None
    try:
        return write_files(paths, runs, out)
    except OSError as exc:  # a folder that refuses files (permissions, chattr +i), a full disk; no temporaries here
        raise ReportError(cannot_write(exc, exc.filename or out)) from None


def write_files(paths: Sequence[Path], runs: list[Run], out: Path) -> Path:
    """``write_report`` once the runs are found and ``out`` exists; apart, so that ``write_report`` can say an
    OSError of these writes (a folder that refuses files, a full disk) in one line naming the path."""
    chosen, used = pick(runs), used_runs(runs)
    preset_grid = any(r.config.get("task_name") == "before_vs_after" for r in runs)
    results, speeds = result_rows(used, preset_grid), speed_rows(chosen, used, preset_grid)
    bases = evaluation_bases(used)
    main = bases[0] if bases else []  # the data most runs were evaluated on: the references are its runs'
    refs = main[0].metrics["references"] if main else {}
    groups = seed_groups(used)
    aggregated, improvements = seed_rows(groups, main[0] if main else None), improvement_rows(groups)
    pd.DataFrame(results).to_csv(out / "results.csv", index=False)
    pd.DataFrame(speeds).to_csv(out / "speed.csv", index=False)
    pd.DataFrame(aggregated).to_csv(out / "seeds.csv", index=False)
    pd.DataFrame(improvements).to_csv(out / "probability_of_improvement.csv", index=False)
    used_ids = {id(r) for r in used}
    pd.DataFrame(
        [
            {"agent": r.agent, "preset": r.preset, "seed": r.seed, "status": r.status, "used": id(r) in used_ids,
             "path": str(r.path)}
            for r in runs
        ]
    ).to_csv(out / "runs.csv", index=False)  # fmt: skip

    hours = main[0].metrics.get("eval_hours") if main else None
    plot_co2([row for row in aggregated if row["same_data"]], refs, out / "co2.png", hours)
    plot_learning_curves(chosen, out / "learning_curves.png")
    dispatch = []
    for (agent, preset), run in sorted(chosen.items()):
        if RunDir(run.path).dispatch_plot.is_file():
            name = f"dispatch_{agent}-{preset}.png"
            shutil.copyfile(RunDir(run.path).dispatch_plot, out / name)
            dispatch.append(name)

    finished = [r for r in used if r.metrics is not None]
    # A run without run_info.json (made before it was written) names no machine: no blank "Machine:" line.
    machines = sorted({json.dumps(m, sort_keys=True) for r in finished if (m := r.info.get("machine"))})
    launchers = sorted({r.launcher for r in finished if r.launcher})
    evaluated = "; ".join(sorted({evaluated_data(r) for r in main})) or "?"
    penalty = next((r.setting("site.unmet_penalty_kg_per_kwh") for r in main), None)
    problems = [r for r in results if r["status"] != "ok"]
    unused = [r for r in runs if id(r) not in used_ids]
    complete = "every agent and preset has a finished run" if preset_grid else "every config and seed found finished"
    not_used = "Not used (older, or unfinished where a finished run of its agent and preset exists):"
    flagged = [r for r in results if r["flags"]]
    lines = [
        "# Before vs after: measured" if preset_grid else "# Runs: measured",
        "",
        f"Built {datetime.now():%Y-%m-%d %H:%M} by `python -m bess_rl.report` from {len(runs)} run folder(s) under "
        + ", ".join(f"`{p}`" for p in paths)
        + "; every number below was read from those folders.",
        "",
        f"- Evaluation: {_num(hours)} h" + (" (one year)" if hours == 8760 else "") + f" of {evaluated}",
        *(f"- Machine: {', '.join(f'{k} {v}' for k, v in json.loads(m).items())}" for m in machines),
        *(f"- Launcher: {launcher}" for launcher in launchers),
        *(f"- **Warning**: {w}" for w in set_aside_warnings(bases)),
        *(
            f"- **Degenerate policy**, {r['agent'].upper()} {r['preset']} seed {r['seed']}: {r['flags']}"
            for r in flagged
        ),  # fmt: skip
        *(
            f"- Monitor, {r['agent'].upper()} {r['preset']}: {r['resource_warnings']}"
            for r in results
            if r["resource_warnings"]
        ),
        "",
        "## Across seeds (held-out evaluation, rliable estimators)",
        "",
        _seeds_table(aggregated) if aggregated else "No finished run.",
        "",
        "IQM: mean of the middle half of the seeds; intervals: 95 % stratified bootstrap"
        f" ({seeds.REPS:,} resamples). Ranked by the penalised objective.",
        "",
        "## Probability of improvement (penalised reduction)",
        "",
        _improvement_table(improvements),
        "",
        *study_sections([*runs, *population_trials(paths)], out),
        "## Speed and memory per agent (the presets' table, docs/presets.md, measured; median over seeds)",
        "",
        _speed_table(speeds),
        "",
        "## Results per agent and preset",
        "",
        _results_table(results),
        "",
        "peak MB is metrics.json's peak_memory_mb; RSS max and mean utilisation come from the resource monitor,"
        " sampled during this run's training only.",
        "",
        "## References",
        "",
        "Computed in every run, on the same evaluation data."
        if len(bases) < 2
        else f"Computed in each of the {len(main)} runs on the evaluation data above; the runs set aside have others.",
        "",
        _references_table(refs, penalty),
        "",
        "## Missing or failed",
        "",
        *(
            f"- {r['agent'].upper()} {r['preset']}: {r['status']}" + (f" (`{r['path']}`)" if r["path"] else "")
            for r in problems
        ),
        *([] if problems else [f"None: {complete}."]),
        *(["", not_used] if unused else []),
        *(f"- `{r.path}`: {r.status}" for r in unused),
        "",
        "## Figures",
        "",
        "![CO2](co2.png)",
        "",
        "![learning curves](learning_curves.png)",
        "",
        *(f"![{name}]({name})" for name in dispatch),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def study_sections(runs: Sequence[Run], out: Path) -> list[str]:
    """For each Optuna study among the runs: the best trial, all trials with their KPIs, the study's figures.

    Why every run, not ``used_runs``: those keep one unfinished run per agent and preset, and a study's table
    lists each trial folder, failed ones too.
    """
    studies: dict[str, tuple[dict[str, Any], list[Run]]] = {}
    for run in runs:
        if run.sweeper is not None:
            studies.setdefault(json.dumps(run.sweeper, sort_keys=True), (run.sweeper, []))[1].append(run)
    lines = []
    for sweeper, trials in studies.values():
        objective = trials[0].config.get("objective", PENALISED)
        objectives = [objective] if isinstance(objective, str) else list(objective)
        maximise = [str(d).lower().startswith("max") for d in sweeper["direction"]]
        rows = study.trial_rows(trials, sweeper["params"], objectives, maximise)
        name = sweeper["study_name"] or "study"
        folders = {t.path: study.job_overrides(t) for t in trials}
        figures, notes, numbers = study.study_figures(sweeper, objectives, out, folders)
        for row in rows:  # the study's trial number where the storage has it, else the job folder's
            row["trial"] = str(numbers.get(Path(row["run_folder"]).resolve(), row["trial"]))
        pd.DataFrame(rows).to_csv(out / f"trials_{name}.csv", index=False)
        kpis = study.columns(objectives)
        header = ["trial", *sweeper["params"], "status", *kpis, "run folder"]
        body = [[r["trial"], *(r[p] or NA for p in sweeper["params"]), r["status"],
                 *(_num(r[k], 2) for k in kpis), f"`{r['run_folder']}`"] for r in rows]  # fmt: skip
        directions = ", ".join(f"{o} {'max' if m else 'min'}imised" for o, m in zip(objectives, maximise, strict=True))
        lines += [
            f"## Optuna study {name!r}: {len(rows)} trial(s), {directions}",
            "",
            _best_text(rows, objectives, maximise),
            "",
            _md_table(header, body),
            "",
            *(f"- {note}" for note in notes),
            *(f"![{f}]({f})" for f in figures),
            "",
        ]
    return lines


def _best_text(rows: Sequence[dict[str, Any]], objectives: Sequence[str], maximise: Sequence[bool]) -> str:
    """The best trial, or with several objectives every trial of the Pareto front, best first objective first."""
    front = study.pareto_front(rows, objectives, maximise)
    if not front:
        return "No finished trial."
    if len(objectives) == 1:
        best = front[0]
        return f"Best trial: {best['trial']} ({objectives[0]} {best[objectives[0]]:.2f}), `{best['run_folder']}`"
    trials = ", ".join(f"{r['trial']} ({', '.join(f'{o} {_num(r[o], 2)}' for o in objectives)})" for r in front)
    return f"Pareto front ({len(front)} of {len(rows)} trials): {trials}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bess_rl.report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=Path, nargs="+", help="sweep or run folders (searched recursively)")
    parser.add_argument("--out", type=Path, help="the folder to write the report into (default: <first path>/report)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.paths, args.out or args.paths[0] / "report")
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.read_text())
    print(f"written to {report.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

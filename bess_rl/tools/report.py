"""``python -m bess_rl.report <sweep or run dirs...> [--out DIR]``: the before/after tables and plots, measured.

Why: the design note's table states speeds, memory and CO2 it never measured. This one is built only
from what run folders recorded (metrics.json, run_info.json, resolved_config.yaml, progress.csv,
dispatch_week.png), nothing is retrained, and a run that is missing or failed is listed, never dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from bess_rl.experiment import run_dir  # noqa: E402
from bess_rl.experiment.run_dir import RunDir, RunDirError, read_json  # noqa: E402

AGENTS = ("sac", "ppo", "a2c")
PRESETS = ("before", "after")
REFERENCES = {"uncontrolled": "uncontrolled", "rule_based": "rule-based (RBC)", "lp_optimum": "LP optimum"}
RUN_FILES = (run_dir.METRICS, run_dir.CONFIG, f"{run_dir.HYDRA}/config.yaml")
# A replay reproduces a run: it is not another result.
SKIPPED_DIRS = {run_dir.REPLAYS, run_dir.CHECKPOINT, run_dir.HYDRA, run_dir.RESUMES}
STEPS = "time/total_timesteps"
REWARD = "rollout/ep_rew_mean"
LOSSES = ("train/critic_loss", "train/value_loss", "train/loss")  # the first SB3 wrote: SAC, PPO/A2C, other
NA = "—"


@dataclass
class Run:
    """One run folder: what it was asked to run and, if it finished, what it measured."""

    path: Path
    agent: str
    preset: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    info: dict[str, Any]

    @property
    def status(self) -> str:
        if self.metrics is not None:
            return "ok"
        if RunDir(self.path).checkpoint.is_dir():
            return f"interrupted (resume with `python -m bess_rl resume={self.path}`)"
        return "failed: no metrics.json (the sweep's console output has the error)"

    @property
    def mtime(self) -> float:
        files = [RunDir(self.path).metrics, self.path]
        return next(p.stat().st_mtime for p in files if p.exists())

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

    def launcher(self) -> str | None:
        """How Hydra launched it ("joblib, n_jobs=2"): parallel runs share the CPU, which bounds timesteps/hour."""
        path = self.path / run_dir.HYDRA / "hydra.yaml"
        if not path.is_file():
            return None
        launcher = OmegaConf.select(OmegaConf.load(path), "hydra.launcher", default=None)
        if launcher is None:
            return None
        name = str(launcher.get("_target_", "")).split(".")[-1].removesuffix("Launcher").lower() or "?"
        return f"{name}, n_jobs={launcher.n_jobs}" if "n_jobs" in launcher else name


def load_run(path: Path) -> Run:
    rd = RunDir(path)
    config_file = rd.config if rd.config.is_file() else rd.hydra_config
    config = OmegaConf.to_container(OmegaConf.load(config_file)) if config_file.is_file() else {}
    metrics = read_json(rd.metrics) if rd.metrics.is_file() else None
    info = read_json(rd.run_info) if rd.run_info.is_file() else {}
    named = metrics or info
    agent = named.get("agent") or (config.get("agent") or {}).get("name") or "?"
    preset = named.get("preset") or (config.get("preset") or {}).get("name") or "?"
    return Run(path, str(agent), str(preset), config, metrics, info)


def find_runs(paths: Sequence[Path]) -> list[Run]:
    """Every folder under ``paths`` that a run started in, finished or not."""
    found = []
    for root in paths:
        if not root.is_dir():
            raise FileNotFoundError(f"no such folder: {root}")
        for folder in sorted([root, *root.rglob("*")]):
            skipped = SKIPPED_DIRS & set(folder.relative_to(root).parts)
            if folder.is_dir() and not skipped and any((folder / f).is_file() for f in RUN_FILES):
                try:
                    found.append(load_run(folder))
                except (RunDirError, ValueError, yaml.YAMLError) as exc:  # a truncated or edited file
                    print(f"warning: skipping {folder}: {str(exc).splitlines()[0]}", file=sys.stderr)
    return found


def pick(runs: Sequence[Run]) -> dict[tuple[str, str], Run]:
    """Per agent and preset, the newest finished run, or the newest unfinished one if none finished."""
    chosen: dict[tuple[str, str], Run] = {}
    for run in sorted(runs, key=lambda r: (r.metrics is not None, r.mtime)):
        chosen[(run.agent, run.preset)] = run
    return chosen


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


def result_rows(chosen: dict[tuple[str, str], Run]) -> list[dict[str, Any]]:
    """One row per agent and preset of the design note (absent ones too), then any other agent found."""
    keys = [(a, p) for a in AGENTS for p in PRESETS] + sorted(k for k in chosen if k[0] not in AGENTS)
    rows = []
    for agent, preset in keys:
        run = chosen.get((agent, preset))
        m = run.metrics if run is not None and run.metrics is not None else {}
        rows.append(
            {
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
                "co2_vs_uncontrolled_pct": 0.0 - m["co2_reduction_pct"] + 0.0 if "co2_reduction_pct" in m else None,
                "penalised_reduction_pct": m.get("penalised_reduction_pct"),
                "lp_gap_closed_pct": m.get("lp_gap_closed_pct"),
                "ev_unmet_kwh": m.get("ev_unmet_kwh"),
                "eval_hours": m.get("eval_hours"),
                "path": str(run.path) if run is not None else None,
            }
        )
    return rows


def speed_rows(chosen: dict[tuple[str, str], Run]) -> list[dict[str, Any]]:
    """The design note's speed table per agent: old (before) vs new (after), measured."""
    rows = []
    for agent in AGENTS:
        before, after = chosen.get((agent, "before")), chosen.get((agent, "after"))
        old, new = _metric(before, "timesteps_per_hour"), _metric(after, "timesteps_per_hour")
        mem_old, mem_new = _metric(before, "peak_memory_mb"), _metric(after, "peak_memory_mb")
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


def references(chosen: dict[tuple[str, str], Run]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The references of the finished runs, and a warning when runs were evaluated on different data."""
    finished = [r for r in chosen.values() if r.metrics is not None]
    if not finished:
        return {}, []
    refs = finished[0].metrics["references"]
    base = refs["uncontrolled"]["co2_kg"]
    differing = [r for r in finished if abs(r.metrics["references"]["uncontrolled"]["co2_kg"] - base) > 1e-9 * base]
    warnings = []
    if differing:
        names = ", ".join(f"{r.agent}/{r.preset}" for r in differing)
        warnings.append(
            f"{names} evaluated on other data (uncontrolled CO2 differs from {finished[0].agent}/"
            f"{finished[0].preset}'s): their CO2 figures are not comparable with the others"
        )
    return refs, warnings


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
              "peak MB", "RSS max MB", "mean utilisation", "CO2 kg", "CO2 vs uncontrolled", "penalised reduction",
              "LP gap closed", "EV unmet kWh"]  # fmt: skip
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
            _num(r["co2_vs_uncontrolled_pct"], 2, "%"),
            _num(r["penalised_reduction_pct"], 2, "%"),
            _num(r["lp_gap_closed_pct"], 1, "%"),
            _num(r["ev_unmet_kwh"], 1),
        ]
        for r in results
    ]
    return _md_table(header, rows)


def _utilisation(row: dict[str, Any]) -> str:
    """What the training process got: on a shared or busy machine CPU % < 100 explains a low timesteps/hour."""
    parts = [f"GPU {row['gpu_util_pct_mean']:.0f}%"] if row["gpu_util_pct_mean"] is not None else []
    parts += [f"CPU {row['cpu_pct_mean']:.0f}%"] if row["cpu_pct_mean"] is not None else []
    return ", ".join(parts) or NA


def _references_table(refs: dict[str, dict[str, float]]) -> str:
    if not refs:
        return "No finished run, so no references."
    base = refs["uncontrolled"]["co2_kg"]
    rows = [
        [
            name,
            _num(refs[key]["co2_kg"]),
            _num(100 * (refs[key]["co2_kg"] / base - 1), 2, "%"),
            _num(refs[key]["ev_unmet_kwh"], 1),
        ]
        for key, name in REFERENCES.items()
        if key in refs
    ]
    return _md_table(["controller", "CO2 kg", "CO2 vs uncontrolled", "EV unmet kWh"], rows)


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


def plot_co2(rows: Sequence[dict[str, Any]], refs: dict[str, dict[str, float]], path: Path, hours: int | None) -> Path:
    labels, values, colors = [], [], []
    for key, name in REFERENCES.items():
        if key in refs:
            labels.append(name)
            values.append(refs[key]["co2_kg"])
            colors.append("grey")
    for row in rows:
        if row["co2_kg"] is not None:
            labels.append(f"{row['agent'].upper()} {row['preset']}")
            values.append(row["co2_kg"])
            colors.append("tab:orange" if row["preset"] == "before" else "tab:blue")
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.5))
    ax.barh(labels, values, color=colors)
    ax.invert_yaxis()
    base = refs.get("uncontrolled", {}).get("co2_kg")
    for i, value in enumerate(values):
        note = f"{value:,.0f} kg" + (f"  ({100 * (value - base) / base:+.2f}%)" if base else "")
        ax.text(value, i, " " + note, va="center", fontsize=8)
    ax.set_xlim(min(values) * 0.9 if values else 0, max(values) * 1.12 if values else 1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel(f"grid CO2 over the {hours or '?'} h evaluated, kg (deterministic policy)")
    ax.set_title("CO2: references (grey), before (orange), after (blue)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_learning_curves(chosen: dict[tuple[str, str], Run], path: Path) -> Path:
    """Mean episode reward and the main loss against timesteps, per agent, before and after."""
    fig, axes = plt.subplots(2, len(AGENTS), figsize=(4.2 * len(AGENTS), 6.5), squeeze=False)
    for col, agent in enumerate(AGENTS):
        for row, columns in enumerate(((REWARD,), LOSSES)):
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
                why = "no finished episode logged" if row == 0 else "not logged"
                ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_title(f"{agent.upper()}: {'episode reward (mean)' if row == 0 else 'loss'}", fontsize=9)
            ax.set_xlabel("timesteps", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(paths: Sequence[Path], out: Path) -> Path:
    """Find the runs under ``paths`` and write report.md, the CSVs and the figures into ``out``."""
    runs = find_runs(paths)
    chosen = pick(runs)
    out.mkdir(parents=True, exist_ok=True)
    results, speeds = result_rows(chosen), speed_rows(chosen)
    refs, warnings = references(chosen)
    pd.DataFrame(results).to_csv(out / "results.csv", index=False)
    pd.DataFrame(speeds).to_csv(out / "speed.csv", index=False)
    used = {id(r) for r in chosen.values()}
    pd.DataFrame(
        [
            {"agent": r.agent, "preset": r.preset, "status": r.status, "used": id(r) in used, "path": str(r.path)}
            for r in runs
        ]
    ).to_csv(out / "runs.csv", index=False)

    hours = next((r["eval_hours"] for r in results if r["eval_hours"]), None)
    plot_co2(results, refs, out / "co2.png", hours)
    plot_learning_curves(chosen, out / "learning_curves.png")
    dispatch = []
    for (agent, preset), run in sorted(chosen.items()):
        if RunDir(run.path).dispatch_plot.is_file():
            name = f"dispatch_{agent}-{preset}.png"
            shutil.copyfile(RunDir(run.path).dispatch_plot, out / name)
            dispatch.append(name)

    finished = [r for r in chosen.values() if r.metrics is not None]
    machines = sorted({json.dumps(r.info.get("machine", {}), sort_keys=True) for r in finished})
    launchers = sorted({launcher for r in finished if (launcher := r.launcher())})
    scenarios = ", ".join(sorted({str(r.info.get("scenario", "?")) for r in finished})) or "?"
    problems = [r for r in results if r["status"] != "ok"]
    lines = [
        "# Before vs after: measured",
        "",
        f"Built {datetime.now():%Y-%m-%d %H:%M} by `python -m bess_rl.report` from {len(runs)} run folder(s) under "
        + ", ".join(f"`{p}`" for p in paths)
        + "; every number below was read from those folders.",
        "",
        f"- Evaluation: {_num(hours)} h of scenario {scenarios}" + (" (one year)" if hours == 8760 else ""),
        *(f"- Machine: {', '.join(f'{k} {v}' for k, v in json.loads(m).items())}" for m in machines),
        *(f"- Launcher: {launcher}" for launcher in launchers),
        *(f"- **Warning**: {w}" for w in warnings),
        *(
            f"- Monitor, {r['agent'].upper()} {r['preset']}: {r['resource_warnings']}"
            for r in results
            if r["resource_warnings"]
        ),
        "",
        "## Speed and memory per agent (the design note's table, measured)",
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
        "## References (computed in every run)",
        "",
        _references_table(refs),
        "",
        "## Missing or failed",
        "",
        *(
            f"- {r['agent'].upper()} {r['preset']}: {r['status']}" + (f" (`{r['path']}`)" if r["path"] else "")
            for r in problems
        ),
        *(f"- not used (older or unfinished): `{r.path}`: {r.status}" for r in runs if id(r) not in used),
        *([] if problems else ["None: every agent and preset has a finished run."]),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bess_rl.report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=Path, nargs="+", help="sweep or run folders (searched recursively)")
    parser.add_argument("--out", type=Path, help="where to write the report (default: <first path>/report)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.paths, args.out or args.paths[0] / "report")
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.read_text())
    print(f"written to {report.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

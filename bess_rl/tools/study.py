"""The Optuna part of a report: every trial with its KPIs, the best one, and the study's figures.

Why: a sweep's trials all share one agent and preset, so the before/after tables showed one of them
(the newest, not the best) and called the other cells missing. Trials are read from their run folders
(what each measured), the study from its storage (optimisation history, parameter importances and,
for several objectives, the Pareto front, drawn by ``optuna.visualization.matplotlib``).
"""

from __future__ import annotations

import errno
import functools
import logging
import warnings
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.exc import ArgumentError  # noqa: E402

from bess_rl.experiment import run_dir  # noqa: E402
from bess_rl.experiment.storage import SWEEP_ATTR, shown  # noqa: E402
from bess_rl.experiment.sweeper import trial_overrides  # noqa: E402

log = logging.getLogger(__name__)
KPIS = ("penalised_reduction_pct", "co2_reduction_pct", "co2_kg", "ev_unmet_kwh", "timesteps_per_hour")


def sweeper_config(path: Path) -> dict[str, Any] | None:
    """The Optuna sweeper config a run folder was launched with (``.hydra/hydra.yaml``), or None."""
    hydra_yaml = path / run_dir.HYDRA / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    # Resolves the sweeper's ${paths.output_dir}, ${seed}. A trial refused before training has only the config
    # Hydra composed (.hydra/config.yaml): its ${oc.env:BESS_RL_ROOT,.} resolves as it did if run where the sweep ran.
    rd = run_dir.RunDir(path)
    config = rd.config if rd.config.is_file() else rd.hydra_config
    merged = OmegaConf.merge(OmegaConf.load(config) if config.is_file() else {}, OmegaConf.load(hydra_yaml))
    sweeper = OmegaConf.select(merged, "hydra.sweeper", default=None)
    if sweeper is None or "optuna" not in str(sweeper.get("_target_", "")).lower():
        return None
    return {
        "storage": absolute(sweeper.get("storage"), OmegaConf.select(merged, "hydra.runtime.cwd", default=None)),
        "study_name": sweeper.get("study_name"),
        "direction": OmegaConf.to_container(sweeper.direction) if OmegaConf.is_list(sweeper.direction) else [
            str(sweeper.direction)],
        "params": sorted(OmegaConf.to_container(sweeper.get("params") or {})),
    }  # fmt: skip


def sqlite_file(url: Any) -> Path | None:
    """The file of a SQLite storage URL; None for another database, no URL, or a ``file:`` URI (``uri=true``)."""
    try:
        parsed = make_url(url) if isinstance(url, str) else None
    except (ArgumentError, ValueError):  # not a URL: loading the study says so
        return None
    if parsed is None or parsed.get_backend_name() != "sqlite" or not parsed.database or "uri" in parsed.query:
        return None
    return Path(parsed.database)


def absolute(url: Any, cwd: str | None) -> Any:
    """``url`` with a relative SQLite path made absolute from ``cwd``: SQLite opened it from the folder the sweep
    was launched in (``hydra.runtime.cwd``), not the one the report runs in."""
    file = sqlite_file(url)
    if file is None or file.is_absolute() or cwd is None:
        return url
    return make_url(url).set(database=str(Path(cwd) / file)).render_as_string(hide_password=False)


def read_only(url: str) -> str:
    """``url``, opened read-only when it is a SQLite file; FileNotFoundError when that file is missing.

    Why: Optuna's storage creates a missing SQLite file and writes its tables into an empty one, and the report
    must leave the storage as the sweep left it.
    """
    file = sqlite_file(url)
    if file is None:
        return url
    if not file.exists():
        raise FileNotFoundError(errno.ENOENT, "no such file", str(file))
    parsed = make_url(url)
    query = {**parsed.query, "mode": "ro", "uri": "true"}  # SQLite's URI filename: '%', '?', '#' quoted
    return parsed.set(database=f"file:{quote(str(file))}", query=query).render_as_string(hide_password=False)


def job_overrides(run: Any) -> list[str]:
    """The overrides a trial was launched with: run_info.json's, or Hydra's ``.hydra/overrides.yaml`` for a trial
    refused before run_info.json was written (its parameters are what the table must show)."""
    if "overrides" in run.info:
        return list(run.info["overrides"])
    file = run_dir.RunDir(run.path).hydra_overrides
    try:
        listed = yaml.safe_load(file.read_text()) if file.is_file() else []
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # truncated: the row shows no parameters
        return []
    return [o for o in listed if isinstance(o, str)] if isinstance(listed, list) else []


def columns(objectives: Sequence[str]) -> list[str]:
    """The KPIs a trial row holds: ``KPIS`` and any objective that is none of them."""
    return [*KPIS, *(o for o in objectives if o not in KPIS)]


def trial_rows(
    runs: Sequence[Any], params: Sequence[str], objectives: Sequence[str], maximise: Sequence[bool]
) -> list[dict[str, Any]]:
    """One row per trial folder: its searched parameters and KPIs, best first objective first, failures last."""
    rows = []
    for run in runs:
        overrides = dict(o.split("=", 1) for o in job_overrides(run) if "=" in o)
        row = {"trial": run.path.name, **{p: overrides.get(p) for p in params}, "status": run.status}
        row.update({k: (run.metrics or {}).get(k) for k in columns(objectives)})
        row["run_folder"] = str(run.path)
        rows.append(row)
    first, sign = objectives[0], -1 if maximise[0] else 1
    return sorted(rows, key=lambda r: (r[first] is None, sign * (r[first] or 0.0)))


def pareto_front(rows: Sequence[dict[str, Any]], objectives: Sequence[str], maximise: Sequence[bool]) -> list[dict]:
    """The finished trials no other finished trial dominates (as good in every objective, better in one)."""
    signs = [1 if m else -1 for m in maximise]
    finished = [r for r in rows if all(r[o] is not None for o in objectives)]
    scored = [(r, [s * r[o] for s, o in zip(signs, objectives, strict=True)]) for r in finished]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and a != b

    return [r for r, v in scored if not any(dominates(w, v) for _, w in scored)]


def study_figures(
    sweeper: dict[str, Any], objectives: Sequence[str], out: Path, folders: Mapping[Path, Collection[str]]
) -> tuple[list[str], list[str], dict[Path, int]]:
    """PNGs of the study (names written under ``out``), notes on what could not be drawn or what the figures
    cover, and the study's trial number of each of the sweep's trial ``folders`` (each with its overrides).

    Why the numbers: a folder is named by the sweep's job number, which is the study's trial number only
    for the first sweep of a study that no other sweep shares.
    """
    import optuna
    from optuna.visualization import matplotlib as ovm

    notes: list[str] = []
    storage = sweeper["storage"]
    if not storage:
        return [], ["the sweep had no storage, so no study figures (set hydra.sweeper.storage)"], {}
    try:
        study = optuna.load_study(study_name=sweeper["study_name"], storage=read_only(storage))
    except FileNotFoundError as exc:  # moved or deleted since the sweep: the tables still stand
        return [], [f"study {sweeper['study_name']!r}: its storage file {exc.filename} does not exist"], {}
    except Exception as exc:  # a server down, another study name: the tables still stand
        where = f"{sweeper['study_name']!r} not readable at {shown(storage)}"
        return [], [f"study {where}: {str(exc).splitlines()[0]}"], {}
    numbers = trial_numbers(study.trials, folders)
    if len(study.trials) > len(folders):
        notes.append(f"the figures cover the whole study, {len(study.trials)} trials; the table, this sweep's")
    drawn = []
    plots = {"optimization_history.png": ovm.plot_optimization_history, "param_importances.png": importances}
    if len(objectives) > 1:
        plots = {"pareto_front.png": functools.partial(ovm.plot_pareto_front, target_names=list(objectives))}
        for i, name in enumerate(objectives):
            plots[f"optimization_history_{name}.png"] = _for_target(ovm.plot_optimization_history, i, name)
            plots[f"param_importances_{name}.png"] = _for_target(importances, i, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna.visualization.matplotlib is marked experimental
        for name, plot in plots.items():
            try:
                ax = plot(study)
            except Exception as exc:  # too few complete trials, or scikit-learn missing for importances
                notes.append(f"{name.removesuffix('.png')}: not drawn ({type(exc).__name__}: {str(exc)[:120]})")
                continue
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            figure.set_layout_engine("constrained")  # tight_layout warned, and gave up, on long parameter names
            figure.savefig(out / name, dpi=90)
            plt.close(figure)
            drawn.append(name)
    return drawn, notes, numbers


def trial_numbers(trials: Sequence[Any], folders: Mapping[Path, Collection[str]]) -> dict[Path, int]:
    """The study's number of each trial folder: by the run folder ``record_trial`` stored on a finished trial, else
    (a failed trial has none) as ``record_trial`` finds a trial: its parameters among the folder's overrides, asked
    by the folder's sweep."""
    ours = {folder.resolve(): set(overrides) for folder, overrides in folders.items()}
    numbers: dict[Path, int] = {}
    for trial in trials:
        if "run_dir" in trial.user_attrs and (folder := Path(trial.user_attrs["run_dir"]).resolve()) in ours:
            numbers[folder] = trial.number
    for trial in (t for t in trials if "run_dir" not in t.user_attrs and t.params):
        params = trial_overrides(trial)
        sweep = trial.system_attrs.get(SWEEP_ATTR)
        found = (f for f, o in ours.items() if f not in numbers and params <= o and sweep in (None, str(f.parent)))
        if (folder := next(found, None)) is not None:
            numbers[folder] = trial.number
    return numbers


def importances(study: Any, target: Any = None, target_name: str = "objective value") -> Any:
    """Each searched parameter's importance for ``target``, as bars.

    Not optuna 2.10's plot_param_importances: it calls matplotlib's removed ``cm.get_cmap``, and its default
    evaluator (fANOVA) fails on this numpy/scikit-learn; mean decrease in impurity works.
    """
    import optuna

    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator()
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
    _, ax = plt.subplots(figsize=(7, 0.4 * len(found) + 1.8))
    names = list(found)[::-1]  # the most important on top
    ax.barh(names, [found[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (mean decrease in impurity)")
    ax.get_figure().suptitle(f"Hyper-parameter importances for {target_name}")
    return ax


def _for_target(plot: Any, index: int, name: str) -> Any:
    """``plot`` of one objective of a multi-objective study, named."""

    def draw(study: Any) -> Any:
        return plot(study, target=lambda t: t.values[index], target_name=name)

    return draw

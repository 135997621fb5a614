"""The Optuna part of a report: every trial with its KPIs, the best one, and the study's figures.

Why: a sweep's trials all share one agent and preset, so the before/after tables showed one of them
(the newest, not the best) and called the other cells missing. Trials are read from their run folders
(what each measured), the study from its storage (optimisation history, parameter importances and,
for several objectives, the Pareto front, drawn by ``optuna.visualization.matplotlib``).
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from bess_rl.experiment import run_dir  # noqa: E402
from bess_rl.experiment.storage import shown  # noqa: E402

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
        "storage": sweeper.get("storage"),
        "study_name": sweeper.get("study_name"),
        "direction": OmegaConf.to_container(sweeper.direction) if OmegaConf.is_list(sweeper.direction) else [
            str(sweeper.direction)],
        "params": sorted(OmegaConf.to_container(sweeper.get("params") or {})),
    }  # fmt: skip


def columns(objectives: Sequence[str]) -> list[str]:
    """The KPIs a trial row holds: ``KPIS`` and any objective that is none of them."""
    return [*KPIS, *(o for o in objectives if o not in KPIS)]


def trial_rows(
    runs: Sequence[Any], params: Sequence[str], objectives: Sequence[str], maximise: Sequence[bool]
) -> list[dict[str, Any]]:
    """One row per trial folder: its searched parameters and KPIs, best first objective first, failures last."""
    rows = []
    for run in runs:
        overrides = dict(o.split("=", 1) for o in run.info.get("overrides", []) if "=" in o)
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
    sweeper: dict[str, Any], objectives: Sequence[str], out: Path, folders: Sequence[Path]
) -> tuple[list[str], list[str], dict[Path, int]]:
    """PNGs of the study (names written under ``out``), notes on what could not be drawn or what the figures
    cover, and the study's trial number of each of the sweep's trial ``folders`` (``record_trial`` stored it).

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
        study = optuna.load_study(study_name=sweeper["study_name"], storage=storage)
    except Exception as exc:  # a storage moved or deleted since the sweep: the tables still stand
        where = f"{sweeper['study_name']!r} not readable at {shown(storage)}"
        return [], [f"study {where}: {str(exc).splitlines()[0]}"], {}
    ours = {folder.resolve() for folder in folders}
    numbers = {Path(t.user_attrs["run_dir"]).resolve(): t.number for t in study.trials if "run_dir" in t.user_attrs}
    numbers = {folder: number for folder, number in numbers.items() if folder in ours}
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

"""Multirun support: a guard for Optuna studies (a Hydra callback).

Why a callback and not a sweeper subclass: Hydra instantiates sweepers only from the
``hydra_plugins`` package, callbacks from anywhere. hydra-optuna-sweeper 1.3.0 already records a
trial whose job raised as FAIL (and, with ``max_failure_rate: 1.0``, goes on), but on its own:

- a NaN/inf objective makes its ``study.tell`` raise twice: the whole sweep aborts, the trial stays RUNNING;
- a sweep whose trials all fail exits 0 when the study is multi-objective or held completed trials before;
- SQLite cannot create the folder of ``sqlite:///outputs/optuna.db`` on a fresh checkout;
- a resumed study replays the seeded sampler's random start-up trials of the first sweep.

``OptunaStudyGuard`` closes these four gaps, and records each finished trial's KPIs (CO2, penalised
reduction, EV energy unmet) and run folder as the trial's user attributes, so the study alone tells
which run folder holds which result.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write
from sqlalchemy.engine import make_url

from bess_rl.experiment.config import ConfigError

log = logging.getLogger(__name__)

# metrics.json keys stored as user attributes of a finished trial, beside its run folder.
TRIAL_KPIS = ("co2_kg", "co2_reduction_pct", "penalised_reduction_pct", "ev_unmet_kwh", "timesteps_per_hour")
# Objectives (bess_rl.experiment.config.OBJECTIVES) where less is better; every other one is maximised.
MINIMISED = frozenset({"co2_kg", "ev_unmet_kwh"})


def _abort(message: str, code: int) -> NoReturn:
    """Hydra turns a callback's exception into a warning; stopping the sweep needs SystemExit."""
    log.error("%s", message)
    raise SystemExit(code)


def check_directions(objective: Any, direction: Any) -> None:
    """Refuse a sweep whose directions cannot match the task's return before any trial trains."""
    names = [objective] if isinstance(objective, str) else list(objective)
    directions = [direction] if isinstance(direction, str) else list(direction)
    directions = [str(getattr(d, "name", d)) for d in directions]
    if len(names) != len(directions):
        raise ConfigError(
            f"objective {names} has {len(names)} value(s), hydra.sweeper.direction {directions} {len(directions)}"
        )
    for name, direction in zip(names, directions, strict=True):
        want = "minimize" if name in MINIMISED else "maximize"
        if direction != want:
            raise ConfigError(f"objective {name} should be {want}d, but hydra.sweeper.direction says {direction}")


def non_finite(value: Any) -> bool:
    """True for a NaN/inf objective (or tuple holding one); other non-numbers are the sweeper's to report."""
    values = value if isinstance(value, list | tuple) else [value]
    try:
        return not all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def _count_trials(study_name: str, storage: str) -> int:
    import optuna  # only sweeps need it; keeps this module's import light for every run

    summaries = optuna.study.get_all_study_summaries(storage)
    return next((s.n_trials for s in summaries if s.study_name == study_name), 0)


def record_trial(config: DictConfig, job_return: JobReturn) -> None:
    """Store the job's KPIs and run folder as user attributes of its (running) trial, found by its parameters.

    Why here: the sweeper tells Optuna only the objective; the task function does not know its trial.
    """
    import optuna
    from optuna.trial import TrialState

    out = Path(config.hydra.runtime.output_dir)
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return
    sweeper = config.hydra.sweeper
    study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
    overrides = set(job_return.overrides or [])
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "run_dir" not in trial.user_attrs and {f"{k}={v}" for k, v in trial.params.items()} <= overrides:
            live = optuna.trial.Trial(study, trial._trial_id)
            for key in TRIAL_KPIS:
                if key in metrics:
                    live.set_user_attr(key, float(metrics[key]))
            live.set_user_attr("run_dir", str(out))
            return


class OptunaStudyGuard(Callback):
    """Hydra callback for Optuna sweeps with a storage (``hydra.callbacks`` in conf/hparams_search)."""

    def __init__(self) -> None:
        self.first_trial = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        try:
            check_directions(config.objective, sweeper.direction)
        except ConfigError as exc:
            _abort(str(exc), 2)
        if sweeper.storage is None:
            return
        url = make_url(sweeper.storage)
        if url.get_backend_name() == "sqlite" and url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        self.first_trial = _count_trials(sweeper.study_name, sweeper.storage)
        seed = OmegaConf.select(sweeper, "sampler.seed")
        if self.first_trial and seed is not None:
            # Same seed on resume would replay the first sweep's start-up trials; offset it reproducibly.
            with read_write(sweeper.sampler):
                sweeper.sampler.seed = seed + self.first_trial
            log.info(
                "resuming study %r at trial %d: sampler seed %d + %d",
                sweeper.study_name,
                self.first_trial,
                seed,
                self.first_trial,
            )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED and non_finite(job_return.return_value):
            value = job_return.return_value
            job_return.status = JobStatus.FAILED
            job_return.return_value = ValueError(f"objective {config.objective} is not finite: {value}")
        if job_return.status == JobStatus.COMPLETED and OmegaConf.select(config, "hydra.sweeper.storage"):
            record_trial(config, job_return)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import optuna
        from optuna.trial import TrialState

        sweeper = config.hydra.sweeper
        if sweeper.storage is None:
            return
        study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
        trials = [t for t in study.get_trials(deepcopy=False) if t.number >= self.first_trial]
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        log.info("study %r: %d of this sweep's %d trials complete", sweeper.study_name, complete, len(trials))
        if trials and not complete:
            _abort(
                f"all {len(trials)} trials of this sweep failed (study {sweeper.study_name!r}, {sweeper.storage})", 1
            )

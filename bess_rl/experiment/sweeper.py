"""Multirun support: a guard for Optuna studies (a Hydra callback).

Why a callback and not a sweeper subclass: Hydra instantiates sweepers only from the
``hydra_plugins`` package, callbacks from anywhere. hydra-optuna-sweeper 1.3.0 already records a
trial whose job raised as FAIL (and, with ``max_failure_rate: 1.0``, goes on), but on its own:

- a NaN/inf objective makes its ``study.tell`` raise twice: the whole sweep aborts, the trial stays RUNNING;
- a sweep whose trials all fail exits 0 when the study is multi-objective or held completed trials before;
- SQLite cannot create the folder of ``sqlite:///outputs/optuna.db`` on a fresh checkout;
- a resumed study replays the seeded sampler's random start-up trials of the first sweep;
- a sweep killed mid-trial leaves that trial RUNNING for ever (bess_rl.experiment.storage: heartbeats);
- a bad storage URL, an unreachable server or a study with other directions fails with a traceback;
- a study resumed with another ``objective`` takes that metric's values beside the first's, and ranks them as one;
- ``n_trials`` < 1 runs nothing, exits 0 and logs an earlier sweep's best trial as the result;
- a sweep folder or SQLite folder that cannot be created (a file in its way) fails with a traceback;
- a submitit job killed without a result (SIGKILL, out of memory, a Slurm time limit) aborts the sweep and
  leaves its array's trials RUNNING, the finished ones' values untold (``keep_lost_jobs``);
- ``hydra/launcher=submitit_slurm`` where there is no Slurm fails with a traceback after a batch was asked.

``OptunaStudyGuard`` closes these gaps, and records each finished trial's KPIs (CO2, penalised
reduction, EV energy unmet) and run folder as the trial's user attributes, so the study alone tells
which run folder holds which result.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import InterpolationResolutionError

from bess_rl.experiment.config import ConfigError, objective_names, one_line
from bess_rl.experiment.run_dir import RunDir, RunDirError, launch_sweep, read_json

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from optuna.distributions import BaseDistribution
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)

# metrics.json keys stored as user attributes of a finished trial, beside its run folder.
TRIAL_KPIS = ("co2_kg", "co2_reduction_pct", "penalised_reduction_pct", "ev_unmet_kwh", "timesteps_per_hour")
# Objectives (bess_rl.experiment.config.OBJECTIVES) where less is better; every other one is maximised.
MINIMISED = frozenset({"co2_kg", "ev_unmet_kwh"})
# Study user attribute: the objective names (a list) the values of its trials are.
OBJECTIVE_ATTR = "objective"
# hydra.launcher._target_ prefix of the submitit launchers (submitit_local, submitit_slurm).
SUBMITIT_LAUNCHER = "hydra_plugins.hydra_submitit_launcher."
SLURM_LAUNCHER = SUBMITIT_LAUNCHER + "submitit_launcher.SlurmLauncher"


def _abort(message: str, code: int) -> NoReturn:
    """Hydra turns a callback's exception into a warning; stopping the sweep needs SystemExit."""
    log.error("%s", message)
    raise SystemExit(code)


@contextlib.contextmanager
def _stops_the_sweep(what: str) -> Iterator[None]:
    """An unexpected error of the guard ends the sweep in one line, exit 1: Hydra makes a callback's exception a
    warning, and the sweep would go on without what the guard does. Its own refusals are SystemExit already."""
    try:
        yield
    except Exception as exc:
        _abort(f"the Optuna study guard {what} ({type(exc).__name__}: {one_line(exc)})", 1)


def trial_overrides(trial: FrozenTrial) -> set[str]:
    """The ``key=value`` overrides the sweeper launched ``trial``'s job with for its searched parameters: how a
    job's folder (its overrides) is told apart from the other trials'."""
    return {f"{k}={v}" for k, v in trial.params.items()}


def _directions(direction: Any) -> list[str]:
    directions = [direction] if isinstance(direction, str) else list(direction)
    return [str(getattr(d, "name", d)) for d in directions]


def _shown(names: Sequence[str]) -> str:
    """Names as the ``objective=`` override that gives them."""
    return names[0] if len(names) == 1 else f"[{','.join(names)}]"


def check_n_trials(n_trials: int) -> None:
    """Refuse a sweep of no trial: the sweeper would run nothing, exit 0 and log an earlier sweep's best."""
    if n_trials < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={n_trials} runs no trial: give 1 or more")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sweeper(sweeper: DictConfig, heartbeat: dict[str, Any]) -> None:
    """The sweeper's and the guard's own settings, checked before any study is made: the sweeper asserts on
    ``max_failure_rate`` and divides by ``n_jobs`` only after making it, and a study without a name, in a
    storage, is made twice under random names (the guard's and the sweeper's) and cannot be resumed."""
    check_n_trials(sweeper.n_trials)
    if not _whole(sweeper.n_jobs) or sweeper.n_jobs < 1:
        raise ConfigError(
            f"hydra.sweeper.n_jobs must be a whole number >= 1 (trials asked per batch), got {sweeper.n_jobs!r}"
        )
    rate = sweeper.max_failure_rate
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise ConfigError(f"hydra.sweeper.max_failure_rate must be a number in [0, 1], got {rate!r}")
    if sweeper.storage is not None and not (isinstance(sweeper.study_name, str) and sweeper.study_name.strip()):
        raise ConfigError("hydra.sweeper.study_name must name the study its storage keeps (e.g. ppo), got "
                          f"{sweeper.study_name!r}")  # fmt: skip
    interval, grace = heartbeat["heartbeat_interval"], heartbeat["grace_period"]
    if not _whole(interval) or interval < 1:
        raise ConfigError(
            f"hydra.callbacks.optuna_study.heartbeat_interval must be whole seconds >= 1, got {interval!r}"
        )
    if grace is not None and (not _whole(grace) or grace < 1):
        raise ConfigError(
            f"hydra.callbacks.optuna_study.grace_period must be whole seconds >= 1 (or null), got {grace!r}"
        )


def search_space(sweeper: DictConfig, task_overrides: Sequence[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions and fixed overrides of each trial, built as the sweeper builds them (from
    ``hydra.sweeper.params`` and the command line's sweep overrides), a bad one said in a line naming it: the
    sweeper raises Optuna's ValueError (``interval(1.0,0.9)``, ``log`` from 0) after making the study."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
    from optuna.distributions import BaseDistribution

    lines = [f"{key}={value}" for key, value in (OmegaConf.select(sweeper, "params") or {}).items()] + list(
        task_overrides
    )
    parser = OverridesParser.create()
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for line in lines:
        try:
            override = parser.parse_override(line)
            value = create_optuna_distribution_from_override(override)
        except (HydraException, ValueError, AssertionError, NotImplementedError) as exc:
            raise ConfigError(f"the search space's {line}: {one_line(exc)}") from None
        key = override.get_key_element()
        if isinstance(value, BaseDistribution):
            distributions[key] = value
        else:
            fixed[key] = value
    return {k: d for k, d in distributions.items() if k not in fixed}, [f"{k}={v}" for k, v in fixed.items()]


def check_trials_compose(config: DictConfig, distributions: dict[str, BaseDistribution], fixed: list[str]) -> None:
    """Compose trials of the search space as the launcher will, every choice and each range's ends among them,
    so that a mistyped key (``agent.hparams.learnin_rate``) or a choice of the wrong type is one line before
    the study is made, not a trial left RUNNING by the first launch."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from optuna.distributions import CategoricalDistribution

    values = {k: list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low, d.high]  # type: ignore[attr-defined]
              for k, d in distributions.items()}  # fmt: skip
    if not values:
        return
    loader = GlobalHydra.instance().config_loader()
    for i in range(max(len(v) for v in values.values())):
        trial = [f"{k}={v[i % len(v)]}" for k, v in values.items()]
        try:
            loader.load_sweep_config(config, [*trial, *fixed])
        except (HydraException, OmegaConfBaseException) as exc:
            raise ConfigError(
                f"the search space cannot be composed: {one_line(exc)} (trial: {' '.join(trial)})"
            ) from None


def check_directions(objective: Any, direction: Any) -> None:
    """Refuse a sweep whose objective or directions cannot match the task's return before any trial trains."""
    names = objective_names(objective)
    directions = _directions(direction)
    if len(names) != len(directions):
        raise ConfigError(
            f"objective {names} has {len(names)} value(s), hydra.sweeper.direction {directions} {len(directions)}"
        )
    for name, direction in zip(names, directions, strict=True):
        want = "minimize" if name in MINIMISED else "maximize"
        if direction != want:
            raise ConfigError(f"objective {name} should be {want}d, but hydra.sweeper.direction says {direction}")


def check_same_space(trials: Sequence[FrozenTrial], space: dict[str, BaseDistribution], study: str, where: str) -> None:
    """Refuse a resumed study whose trials drew a parameter from a distribution this sweep's cannot follow (other
    choices, or another kind): Optuna raises it at the first ``ask``, leaving that trial RUNNING."""
    from optuna.distributions import check_distribution_compatibility, distribution_to_json

    seen: set[tuple[str, str]] = set()
    for trial in reversed(trials):
        for name, old in trial.distributions.items():
            if name not in space or (name, distribution_to_json(old)) in seen:
                continue
            seen.add((name, distribution_to_json(old)))
            try:
                check_distribution_compatibility(old, space[name])
            except ValueError:
                raise ConfigError(
                    f"study {study!r} in {where} drew {name} from {old} (trial {trial.number}), this sweep from "
                    f"{space[name]}: set another hydra.sweeper.study_name, or keep the study's search space"
                ) from None


def non_finite(value: Any) -> bool:
    """True for a NaN/inf objective (or tuple holding one); other non-numbers are the sweeper's to report."""
    values = value if isinstance(value, list | tuple) else [value]
    try:
        return not all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def kpis_matching(trials: Sequence[FrozenTrial], n_values: int) -> list[set[str]] | None:
    """Per objective value, the KPIs (TRIAL_KPIS) equal to it in every complete trial that recorded them:
    the objective of a study made before the guard recorded it. None when no trial recorded KPIs."""
    from optuna.trial import TrialState

    recorded = [t for t in trials if t.state == TrialState.COMPLETE and "run_dir" in t.user_attrs
                and len(t.values or ()) == n_values]  # fmt: skip
    if not recorded:
        return None
    return [
        {key for key in TRIAL_KPIS
         if all(key in t.user_attrs and math.isclose(t.values[i], t.user_attrs[key], rel_tol=1e-9) for t in recorded)}
        for i in range(n_values)
    ]  # fmt: skip


def resumed_seed(seed: int, n_trials: int) -> int:
    """The sampler seed for a study that holds ``n_trials``. Not ``seed + n_trials``: two sweeps started
    together with seeds 1 and 2 met at 2 (one opened the study when it held a trial) and drew the same
    parameters; a SeedSequence mix of both numbers does not collide like that."""
    import numpy as np

    return int(np.random.SeedSequence([seed, n_trials]).generate_state(1)[0])


def sweep_dir(config: DictConfig) -> str:
    """``hydra.sweep.dir``, created: a file in its way ends the sweep in one line, where the sweeper (or the
    launcher, for a plain path) would print a traceback. Its resolver, unique_sweep_dir, creates it too:
    ``config`` is marked as the launching one here as well, whichever callback Hydra calls first."""
    launch_sweep(config)
    try:
        path = str(config.hydra.sweep.dir)
    except InterpolationResolutionError as exc:
        _abort(f"cannot create the sweep folder: {str(exc).splitlines()[0]}", 2)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _abort(f"cannot create the sweep folder {path} ({exc.strerror or exc})", 2)
    return path


def keep_lost_jobs() -> None:
    """Make a submitit job that died without a result a FAILED JobReturn, which the Optuna sweeper records as a
    FAIL trial before it goes on. Why: hydra-submitit-launcher 1.2 reads its array's results with submitit's
    ``Job.results``, which raises for such a job: the sweep ended with a traceback, and the array's other
    trials, finished or not, stayed RUNNING until another sweep failed them. Patched once per process."""
    from submitit.core import core, utils

    results = core.Job.results
    if getattr(results, "keeps_lost_jobs", False):
        return

    def results_or_failed(job: core.Job) -> list[Any]:
        try:
            return results(job)
        except utils.UncompletedJobError:
            lost = RuntimeError(
                f"submitit job {job.job_id} gave no result (submitit state {job.state}): killed, out of memory or "
                f"past hydra.launcher.timeout_min? Its log: {job.paths.stderr}"
            )
            overrides = list(job.submission().args[0])  # the launcher submits (overrides, ...) per job
            return [JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=lost)]

    results_or_failed.keeps_lost_jobs = True  # type: ignore[attr-defined]
    core.Job.results = results_or_failed  # type: ignore[method-assign]


def storage_url(storage: Any) -> str:
    """``hydra.sweeper.storage`` as given, or the URL inside the node the guard put in its place."""
    return storage if isinstance(storage, str) else str(storage.url)


def record_trial(config: DictConfig, job_return: JobReturn) -> None:
    """Store the job's KPIs and run folder as user attributes of its (running) trial, found by its parameters.

    Why here: the sweeper tells Optuna only the objective; the task function does not know its trial.
    """
    import optuna
    from optuna.trial import TrialState

    out = Path(config.hydra.runtime.output_dir)
    metrics = trial_metrics(out)
    if metrics is None:
        return
    sweeper = config.hydra.sweeper
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage_url(sweeper.storage))
    overrides = set(job_return.overrides or [])
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "run_dir" not in trial.user_attrs and trial_overrides(trial) <= overrides:
            live = optuna.trial.Trial(study, trial._trial_id)
            for key in TRIAL_KPIS:
                if key in metrics:
                    live.set_user_attr(key, float(metrics[key]))
            live.set_user_attr("run_dir", str(out))
            return


def trial_metrics(out: Path) -> dict[str, float] | None:
    """The KPIs of the trial run in ``out``: its metrics, or a population's (``member_<i>/``) members' mean,
    what the sweep optimised (``population_run.objective``); None when a folder has no metrics."""
    folders = [out] if RunDir(out).metrics.is_file() else sorted(out.glob("member_*"))
    try:
        found = [read_json(RunDir(folder).metrics) for folder in folders]
    except RunDirError:
        return None
    return members_mean(found) if found else None


def members_mean(metrics: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each number every one of ``metrics`` holds, averaged: a population trial's KPIs (the study's and the
    report's alike)."""
    numbers = [k for k, v in metrics[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return {k: statistics.fmean(float(m[k]) for m in metrics) for k in numbers if all(k in m for m in metrics)}


class SweepFolder(Callback):
    """Hydra callback of every sweep (conf/hydra/default.yaml): the sweep folder is created once, by the first
    read of the launching process's ``hydra.sweep.dir`` (bess_rl.experiment.run_dir.unique_sweep_dir), not
    by every compose of a job's config. Only marks the config: a sweep the guard refuses makes no folder."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launch_sweep(config)


class OptunaStudyGuard(Callback):
    """Hydra callback for Optuna sweeps with a storage (``hydra.callbacks`` in conf/hparams_search).

    ``heartbeat_interval``/``grace_period`` (s): a RUNNING trial whose sweep has not beaten for
    ``grace_period`` (default twice the interval) is marked FAIL when the study is next opened.
    """

    def __init__(self, heartbeat_interval: int = 60, grace_period: int | None = None) -> None:
        self.first_trial = 0
        self.new_study: str | None = None  # the study _check_study created (the sweeper's storage is told)
        self.heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period}

    def _open_study(self, url: str, sweeper: DictConfig, objective: Any, space: dict[str, BaseDistribution]) -> int:
        """Check the server and the study (or create it, with its objective) before any trial trains; fail stale
        trials; return the trial count."""
        from bess_rl.experiment.storage import open_storage  # optuna: only sweeps need it, not every run importing this

        storage = open_storage(url, **self.heartbeat)
        try:
            return self._check_study(storage, url, sweeper, objective_names(objective), space)
        finally:
            storage.engine.dispose()  # the sweeper opens its own; no idle connection for the whole sweep

    def _check_study(
        self,
        storage: RDBStorage,
        url: str,
        sweeper: DictConfig,
        objective: list[str],
        space: dict[str, BaseDistribution],
    ) -> int:
        import optuna

        from bess_rl.experiment.storage import StorageError, shown

        want = [d.lower() for d in _directions(sweeper.direction)]
        try:
            study_id = storage.get_study_id_from_name(sweeper.study_name)
        except KeyError:  # a new study: created here, so that it holds its objective from the start
            study = optuna.create_study(  # load_if_exists: another sweep may be creating it too
                study_name=sweeper.study_name, storage=storage, directions=want, load_if_exists=True
            )
            if OBJECTIVE_ATTR not in study.user_attrs:
                study.set_user_attr(OBJECTIVE_ATTR, objective)
            study_id = storage.get_study_id_from_name(sweeper.study_name)
            self.new_study = sweeper.study_name
        have = [d.name.lower() for d in storage.get_study_directions(study_id)]
        if "not_set" not in have and have != want:  # not_set: another sweep is creating the study right now
            raise StorageError(
                f"study {sweeper.study_name!r} in {shown(url)} has directions {have}, this sweep {want}: "
                "set another hydra.sweeper.study_name"
            )
        recorded = self._study_objective(storage, study_id, sweeper.study_name, objective)
        if recorded != objective:
            raise StorageError(
                f"study {sweeper.study_name!r} in {shown(url)} optimised objective={_shown(recorded)}, this sweep "
                f"objective={_shown(objective)}: set another hydra.sweeper.study_name"
            )
        check_same_space(storage.get_all_trials(study_id, deepcopy=False), space, sweeper.study_name, shown(url))
        stale = [storage.get_trial_number_from_id(i) for i in storage.fail_stale_trials(study_id)]
        if stale:
            log.warning(
                "study %r: trial(s) %s were left RUNNING by a sweep that stopped (no heartbeat): marked FAIL",
                sweeper.study_name,
                stale,
            )
        return storage.get_n_trials(study_id)

    @staticmethod
    def _study_objective(storage: RDBStorage, study_id: int, name: str, objective: list[str]) -> list[str]:
        """The objective the study's trials' values are. A study from before it was recorded is judged by its
        trials' KPIs: one they contradict is theirs; otherwise this sweep's objective is recorded as its own."""
        recorded = storage.get_study_user_attrs(study_id).get(OBJECTIVE_ATTR)
        if recorded is not None:
            return list(recorded)
        trials = storage.get_all_trials(study_id, deepcopy=False)
        matching = kpis_matching(trials, len(objective))
        pairs = list(zip(objective, matching or [set()] * len(objective), strict=True))
        # Per value: this sweep's name, unless the KPIs its trials recorded equal to it leave that name out.
        theirs = [mine if mine in keys or not keys else "|".join(sorted(keys)) for mine, keys in pairs]
        if theirs != objective:
            return theirs
        if trials:  # none: another sweep is creating the study right now, nothing to tell
            log.warning(
                "study %r recorded no objective (made before bess_rl recorded it); %s: recording objective=%s",
                name,
                "its trials' values are their KPIs of that name"
                if all(mine in keys for mine, keys in pairs)
                else "its trials recorded no KPI that tells",
                _shown(objective),
            )
        storage.set_study_user_attr(study_id, OBJECTIVE_ATTR, objective)
        return objective

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with _stops_the_sweep("could not check this sweep, so none of it ran"):  # else it would run unguarded
            self._start(config)

    def _start(self, config: DictConfig) -> None:
        sweeper = config.hydra.sweeper
        try:
            check_sweeper(sweeper, self.heartbeat)
            check_directions(config.objective, sweeper.direction)
            space, fixed = search_space(sweeper, config.hydra.overrides.task)
            check_trials_compose(config, space, fixed)
        except ConfigError as exc:
            _abort(str(exc), 2)
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
        if launcher == SLURM_LAUNCHER and shutil.which("srun") is None:  # submitit's own test, made before any ask
            _abort("hydra/launcher=submitit_slurm needs Slurm (no srun on PATH): launch from a node of the cluster, "
                   "or try the sweep here with hydra/launcher=submitit_local", 2)  # fmt: skip
        if launcher.startswith(SUBMITIT_LAUNCHER):
            keep_lost_jobs()
        if sweeper.storage is None:
            sweep_dir(config)  # a file in its way: one line here, not the sweeper's traceback
            return
        from bess_rl.experiment.storage import StorageError, shown

        url = storage_url(sweeper.storage)
        try:
            self.first_trial = self._open_study(url, sweeper, config.objective, space)
        except (StorageError, ConfigError) as exc:
            _abort(str(exc), 2)
        except OSError as exc:  # SQLite's folder: a file in the way
            _abort(f"cannot open storage {shown(url)}: {exc}", 2)
        with read_write(sweeper):  # the sweeper instantiates this node after the callback: a beating storage
            sweeper.storage = {"_target_": "bess_rl.experiment.storage.HeartbeatStorage", "url": url, **self.heartbeat,
                               "sweep_dir": sweep_dir(config), "new_study": self.new_study}  # fmt: skip
        seed = OmegaConf.select(sweeper, "sampler.seed")
        if self.first_trial and seed is not None:
            # Same seed on resume would replay the first sweep's start-up trials; mix it reproducibly.
            with read_write(sweeper.sampler):
                sweeper.sampler.seed = resumed_seed(seed, self.first_trial)
            log.info(
                "resuming study %r at trial %d: sampler seed %d mixed with %d -> %d",
                sweeper.study_name,
                self.first_trial,
                seed,
                self.first_trial,
                sweeper.sampler.seed,
            )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.COMPLETED and non_finite(job_return.return_value):
            value = job_return.return_value
            job_return.status = JobStatus.FAILED
            job_return.return_value = ValueError(f"objective {config.objective} is not finite: {value}")
        if job_return.status == JobStatus.COMPLETED and OmegaConf.select(config, "hydra.sweeper.storage"):
            record_trial(config, job_return)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        with _stops_the_sweep("could not read this sweep's trials"):  # else a sweep of failed trials would exit 0
            self._end(config)

    def _end(self, config: DictConfig) -> None:
        import optuna
        from optuna.trial import TrialState

        from bess_rl.experiment.storage import SWEEP_ATTR, shown

        sweeper = config.hydra.sweeper
        if sweeper.storage is None:
            return
        study = optuna.load_study(study_name=sweeper.study_name, storage=storage_url(sweeper.storage))
        # Concurrent sweeps on the study: count only this one's trials (HeartbeatStorage records it resolved).
        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        trials = [t for t in study.get_trials(deepcopy=False) if t.system_attrs.get(SWEEP_ATTR) == sweep_dir]
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        log.info("study %r: %d of this sweep's %d trials complete", sweeper.study_name, complete, len(trials))
        if trials and not complete:
            _abort(
                f"all {len(trials)} trials of this sweep failed (study {sweeper.study_name!r}, "
                f"{shown(storage_url(sweeper.storage))})",
                1,
            )
        results = Path(config.hydra.sweep.dir) / "optimization_results.yaml"
        if results.is_file():
            best = study.best_trials if len(study.directions) > 1 else [study.best_trial]
            locate_best(results, best, sweep_dir)


def locate_best(results: Path, best: Sequence[FrozenTrial], sweep_dir: str) -> None:
    """Add to the sweeper's ``optimization_results.yaml`` which trial each best one is, its run folder and the
    command that reruns it. Why: the sweeper writes only the parameters of the whole study's best, which in a
    resumed study may be an earlier sweep's trial (from a range this sweep no longer searches), and a rerun needs
    the trial's fixed overrides too."""
    import shlex

    from bess_rl.experiment.storage import SWEEP_ATTR

    data = OmegaConf.load(results)
    located = []
    for trial in best:
        run = trial.user_attrs.get("run_dir")
        entry: dict[str, Any] = {"trial": trial.number, "run_dir": run,
                                 "this_sweep": trial.system_attrs.get(SWEEP_ATTR) == sweep_dir}  # fmt: skip
        overrides = RunDir(Path(run)).hydra_overrides if run else None
        if overrides is not None and overrides.is_file():
            entry["rerun"] = "python -m bess_rl " + " ".join(shlex.quote(o) for o in OmegaConf.load(overrides))
        located.append(entry)
        log.info("best trial %d: %s%s", trial.number, run or "no run folder recorded",
                 "" if entry["this_sweep"] else " (an earlier sweep's trial of the study)")  # fmt: skip
    if "solutions" in data:
        for solution, entry in zip(data.solutions, located, strict=True):
            solution.update(entry)
    else:
        data.best_trial = located[0]
    OmegaConf.save(data, results)

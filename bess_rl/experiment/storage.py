"""Optuna storage for sweeps beyond one process: trial heartbeats, and one-line storage errors.

Why: hydra-optuna-sweeper asks and tells trials itself (never ``study.optimize``), so Optuna's own
heartbeat never beats and a sweep killed mid-trial leaves its trial RUNNING for ever. The guard
(bess_rl.experiment.sweeper) swaps the storage URL for a ``HeartbeatStorage``, which beats for the trials its
process asked; the next sweep on the study fails those whose beat stopped (by the database's clock,
so from any host), while a live concurrent sweep's trials keep beating and are left alone.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import sqlalchemy
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.storages._rdb import models  # optuna<3 is pinned: its 2.x table models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func, orm
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)

log = logging.getLogger(__name__)

# Trial system attribute naming the sweep folder whose process asked the trial (its jobs are under it).
SWEEP_ATTR = "bess_rl:sweep_dir"
# Two processes creating a fresh database's tables at once: the loser's insert fails; opening again works.
SCHEMA_RACE_TRIES = 5
# Every HeartbeatStorage of this process (the sweeper's), for ``fail_unfinished_trials`` as a sweep stops.
OPEN: weakref.WeakSet[HeartbeatStorage] = weakref.WeakSet()


class StorageError(Exception):
    """A storage URL that cannot be used, said in one line (the guard exits with it)."""


def shown(url: str) -> str:
    """The URL as logs may show it: password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        return url


def _one_line(exc: BaseException) -> str:
    """The driver's message (psycopg2 spreads one over several lines), without SQLAlchemy's wrapping."""
    inner = getattr(exc, "orig", None) or (exc.__cause__ if isinstance(exc, StorageInternalError) else None) or exc
    return " ".join(str(getattr(inner, "orig", None) or inner).split())


class HeartbeatStorage(RDBStorage):
    """An RDBStorage that beats every ``heartbeat_interval`` s for the RUNNING trials this process created."""

    def __init__(self, url: str, heartbeat_interval: int = 60, grace_period: int | None = None,
                 sweep_dir: str | None = None, new_study: str | None = None) -> None:  # fmt: skip
        # pool_pre_ping: a pooled connection the server dropped (a restart, a failover) is opened again on its
        # next use, where the sweeper's next tell failed with "server closed the connection" and ended the sweep.
        super().__init__(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=heartbeat_interval,
                         grace_period=grace_period)  # fmt: skip
        # Absolute: two sweeps in other folders (or on other nodes) may share one relative ./outputs/sweeps/<time>.
        self.sweep_dir = None if sweep_dir is None else str(Path(sweep_dir).resolve())
        self.new_study = new_study
        self._mine: set[int] = set()
        self._lock = threading.Lock()
        OPEN.add(self)
        self._beating = False
        self._idle = threading.Event()  # set when every trial it beats for has finished: the beat ends

    def __str__(self) -> str:  # the sweeper logs "Storage: <this>"
        return shown(self.url)

    def create_new_study(self, study_name: str | None = None) -> int:
        """``new_study``, which the guard has just created for this sweep, is the one the sweeper's own
        ``create_study`` creates: Optuna said "A new study created" then, and would now add "Using an
        existing study" to it."""
        if study_name is not None and study_name == self.new_study:
            return self.get_study_id_from_name(study_name)
        return super().create_new_study(study_name)

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        trial = super()._create_new_trial(study_id, template_trial)
        if trial.state == TrialState.RUNNING:
            self.record_heartbeat(trial._trial_id)
            if self.sweep_dir:
                self.set_trial_system_attr(trial._trial_id, SWEEP_ATTR, self.sweep_dir)
            with self._lock:
                self._mine.add(trial._trial_id)
                self._idle.clear()
                if not self._beating:
                    self._beating = True
                    threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True).start()
        return trial

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna 2.10's own takes ``timedelta.seconds`` of (clock - last beat): a beat written by another
        process after the clock was read is a negative age, which wraps to ~86,400 s and failed a live
        trial of a sweep started beside this one. ``total_seconds`` does not wrap."""
        assert self.heartbeat_interval is not None
        grace = self.grace_period or 2 * self.heartbeat_interval
        with _create_scoped_session(self.scoped_session, True) as session:
            now = session.execute(func.now()).scalar().replace(tzinfo=None)
            running = (
                session.query(models.TrialModel)
                .options(orm.selectinload(models.TrialModel.heartbeats))
                .filter(models.TrialModel.state == TrialState.RUNNING, models.TrialModel.study_id == study_id)
                .all()
            )
            return [
                t.trial_id
                for t in running  # a trial without a beat yet is being created right now: not stale
                if t.heartbeats and (now - t.heartbeats[0].heartbeat).total_seconds() > grace
            ]

    def set_trial_state(self, trial_id: int, state: TrialState) -> bool:
        changed = super().set_trial_state(trial_id, state)
        self._forget_if_finished(trial_id, state)
        return changed

    def _update_trial(self, trial_id: int, state: TrialState | None = None, **kwargs: Any) -> bool:
        """How optuna's cached storage writes a finished trial (``set_trial_state`` the uncached one).

        Failing a trial its own job has failed already is no change: a submitit job stopped by SIGTERM (a Slurm
        time limit, scancel) fails its trial (bess_rl.experiment.sweep_stop) and exits without a result, which
        the sweeper then tells FAIL too; optuna's "finished trial" error ended the sweep there."""
        try:
            changed = super()._update_trial(trial_id, state=state, **kwargs)
        except RuntimeError:
            if state != TrialState.FAIL or self.get_trial(trial_id).state != TrialState.FAIL:
                raise
            changed = False
        self._forget_if_finished(trial_id, state)
        return changed

    def _forget_if_finished(self, trial_id: int, state: TrialState | None) -> None:
        """A finished trial is no longer beaten for; the beat ends with the last one."""
        if state is not None and state.is_finished():
            with self._lock:
                self._mine.discard(trial_id)
                if not self._mine:
                    self._idle.set()

    def fail_unfinished(self) -> list[int]:
        """Mark FAIL the trials this process asked that are still RUNNING, the numbers of those it marked: a sweep
        ended by Ctrl-C (or SIGTERM) between or before its jobs, or with the rest of a batch (``n_jobs`` > 1)
        unlaunched, would otherwise leave them RUNNING until a later sweep's grace period."""
        with self._lock:
            ids = sorted(self._mine)
        failed = []
        for trial_id in ids:
            if self.get_trial(trial_id).state == TrialState.RUNNING:
                self.set_trial_state(trial_id, TrialState.FAIL)
                failed.append(self.get_trial_number_from_id(trial_id))
        return failed

    def _beat(self) -> None:
        """Dies with the process (daemon): a killed sweep stops beating, which is what marks its trials stale.
        Ends as soon as every trial it beats for has finished (the next trial starts another)."""
        assert self.heartbeat_interval is not None
        while True:
            self._idle.wait(self.heartbeat_interval)
            with self._lock:
                ids = list(self._mine)
                if not ids:
                    self._beating = False
                    return
            for trial_id in ids:
                try:
                    if self.get_trial(trial_id).state.is_finished():
                        with self._lock:
                            self._mine.discard(trial_id)
                    else:
                        self.record_heartbeat(trial_id)
                except Exception as exc:  # a database hiccup must not end the beat; stale only after grace_period
                    log.warning("heartbeat of trial id %d: %s", trial_id, _one_line(exc))


def fail_unfinished_trials() -> None:
    """``fail_unfinished`` of every storage this process opened, each said in a line; a database that cannot be
    reached is only said (its trials go stale, and a later sweep fails them)."""
    for storage in list(OPEN):
        try:
            failed = storage.fail_unfinished()
        except Exception as exc:
            log.warning("trials this sweep asked may stay RUNNING: %s", _one_line(exc))
            continue
        if failed:
            log.warning("trial(s) %s were asked but not finished when the sweep stopped: marked FAIL", failed)


def open_storage(url: str, **kwargs: Any) -> RDBStorage:
    """``HeartbeatStorage(url, **kwargs)``, or a StorageError naming what is wrong with the URL or server."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is no number
        reason = f" ({_one_line(exc)})" if isinstance(exc, ValueError) else ""
        raise StorageError(
            f"hydra.sweeper.storage {url!r} is not a database URL{reason} (e.g. sqlite:///outputs/optuna.db)"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise StorageError(
                f"hydra.sweeper.storage {url!r} is an in-memory SQLite database, which each connection sees empty "
                "(the guard's and the sweeper's): give a file, e.g. sqlite:///outputs/optuna.db, or "
                "hydra.sweeper.storage=null for a study that lives as long as the sweep"
            )
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not its folder
    where = f"storage {shown(url)}"
    attempt = 0
    while True:
        try:
            return HeartbeatStorage(url, **kwargs)
        except NoSuchModuleError:
            raise StorageError(
                f"{where}: SQLAlchemy {sqlalchemy.__version__} has no driver {parsed.drivername!r} "
                "(for PostgreSQL use postgresql://, i.e. psycopg2 from the cluster extra)"
            ) from None
        except ImportError as exc:
            module = getattr(exc.__cause__, "name", None) or "its driver"
            raise StorageError(
                f"{where}: the driver module {module!r} is not installed (pip install -e '.[cluster]' for PostgreSQL)"
            ) from None
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            # Two sweeps creating a fresh database's tables at once: the loser sees the winner's tables
            # (PostgreSQL: integrity/programming errors; SQLite: "table ... already exists"). Open again.
            if isinstance(exc, OperationalError) and "already exists" not in str(exc):
                raise StorageError(f"cannot open {where}: {_one_line(exc)}") from None
            attempt += 1
            if attempt == SCHEMA_RACE_TRIES:
                raise StorageError(f"{where}: {_one_line(exc)}") from None
            time.sleep(0.2 * attempt)
        except (SQLAlchemyError, StorageInternalError, RuntimeError, ValueError) as exc:
            raise StorageError(f"{where}: {_one_line(exc)}") from None

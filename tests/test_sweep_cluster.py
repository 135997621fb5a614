"""Sweeps beyond one process with the real parts: PostgreSQL, concurrent sweeps, a killed sweep, joblib, submitit.

On SQLite and on PostgreSQL: two basic-launcher sweeps at once on one study (one in a process of its
own), and a sweep killed mid-trial that another resumes (on PostgreSQL in two joblib workers);
submitit_local on PostgreSQL (the Slurm route's code path).
Each checks that every trial asked is recorded once with its own run folder. Bad storage input fails
in one line before any trial trains; the pinned dashboard serves a study and leaves it resumable.
The server is tests/pg.py's throwaway PostgreSQL on 127.0.0.1"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import psutil
import pytest
import sqlalchemy
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import OperationalError

from bess_rl.experiment import storage as storage_module
from bess_rl.experiment.config import CONF_DIR, register_configs
from bess_rl.experiment.run_dir import unique_sweep_dir
from bess_rl.experiment.storage import SWEEP_ATTR, StorageError, open_storage
from bess_rl.experiment.sweeper import OptunaStudyGuard
from tests.helpers import COMMON, TINY, run_cli
from tests.pg import PASSWORD, PgServer, free_port

COMPLETE, FAIL, RUNNING = TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING
PPO = ["hparams_search=ppo_optuna", *COMMON, *TINY["ppo"]]
LR = "agent.hparams.learning_rate"
# With seed 4 the TPE start-up trials draw soc_min 0.1, then 1.5: the second trial fails its site check.
ONE_FAILS = ["seed=4", "site.soc_min=choice(0.1,1.5)"]
# The killed-sweep tests beat every second (failed after > 2 s without a beat) instead of every minute.
FAST_BEAT = "hydra.callbacks.optuna_study.heartbeat_interval=1"


def sqlite_url(root: Path) -> str:
    return f"sqlite:///{root}/outputs/optuna.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def route(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The storage URL of each route: SQLite in the test's folder, or a fresh database on the server."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return request.getfixturevalue("pg_url")


def multirun(root: Path, url: str, capfd: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    return run_cli("-m", *PPO, f"hydra.sweeper.storage={url}", *args, cwd=root, capfd=capfd)


def start(root: Path, url: str, *args: str) -> subprocess.Popen:
    """``multirun`` without waiting, for sweeps that run beside each other or get killed."""
    env = {**os.environ, "BESS_RL_ROOT": str(root)}
    argv = [sys.executable, "-m", "bess_rl", "-m", *PPO, f"hydra.sweeper.storage={url}", *args]
    return subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def trials(url: str, study: str = "ppo") -> list[FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).trials


def check_folders(root: Path, study: list[FrozenTrial]) -> dict[int, Path]:
    """Every trial has exactly one run folder (matched by its overrides), in the sweep folder that asked it;
    a complete trial's folder holds the metrics its value came from."""
    runs = {p.parent.parent: OmegaConf.load(p) for p in root.glob("outputs/sweeps/*/*/.hydra/overrides.yaml")}
    folders = {}
    for t in study:
        mine = [d for d, overrides in runs.items() if f"{LR}={t.params[LR]}" in overrides]
        assert len(mine) == 1, f"trial {t.number}: run folders {mine}"
        assert str(mine[0].parent) == t.system_attrs[SWEEP_ATTR]
        if t.state == COMPLETE:
            metrics = OmegaConf.load(mine[0] / "metrics.json")
            assert metrics.penalised_reduction_pct == pytest.approx(t.value)
        folders[t.number] = mine[0]
    assert len(set(folders.values())) == len(study) == len(runs)
    return folders


def wait_for_job(root: Path, timeout: float = 120) -> None:
    """Until the first job's folder exists (its trial is asked by then); the study is not read before
    the sweep has created it, which would race it for a fresh SQLite file's tables."""
    deadline = time.monotonic() + timeout
    while not list(root.glob("outputs/sweeps/*/0/.hydra")):
        assert time.monotonic() < deadline, "no trial started"
        time.sleep(0.3)


@pytest.mark.slow
def test_two_sweeps_at_once_share_the_study_without_sharing_folders(tmp_path, route, capfd):
    # One sweep in a process of its own; once its first trial is running, the other in this one (a
    # second interpreter would only repeat the imports). Both then ask and tell trials of the same study.
    other = start(tmp_path, route, "hydra.sweeper.n_trials=2", "seed=1")
    try:
        wait_for_job(tmp_path)
        here = multirun(tmp_path, route, capfd, "hydra.sweeper.n_trials=2", "seed=2")
        other_out, _ = other.communicate(timeout=240)
    finally:
        other.kill()
    for code, out in ((other.returncode, other_out), (here.returncode, here.stdout + here.stderr)):
        assert code == 0, out[-3000:]
        assert "2 of this sweep's 2 trials complete" in out  # each counts its own trials, not the other's
    assert "setup plugin alembic" not in other_out  # alembic's INFO lines, in a process of its own
    study = trials(route)
    assert sorted(t.number for t in study) == [0, 1, 2, 3] and {t.state for t in study} == {COMPLETE}
    check_folders(tmp_path, study)
    results = [OmegaConf.load(p) for p in tmp_path.glob("outputs/sweeps/*/optimization_results.yaml")]
    assert len(results) == 2
    best = optuna.load_study(study_name="ppo", storage=route).best_trial
    assert best.value == max(t.value for t in study) == max(r.best_value for r in results)
    assert all(r.best_value in {t.value for t in study} for r in results)


@pytest.mark.slow
def test_a_killed_sweep_leaves_no_running_trial_and_another_resumes_the_study(tmp_path, route, capfd):
    long = start(tmp_path, route, "hydra.sweeper.n_trials=1", "agent.total_timesteps=10000000", FAST_BEAT)
    try:
        wait_for_job(tmp_path)
        time.sleep(3)  # past the grace period (2 s): only the heartbeat keeps the trial alive now
        # What the guard does when another sweep opens the study meanwhile: the live trial is left alone.
        sweeper = OmegaConf.create({"study_name": "ppo", "direction": "maximize"})
        assert OptunaStudyGuard(heartbeat_interval=1)._open_study(route, sweeper, "penalised_reduction_pct", {}) == 1
        assert [t.state for t in trials(route)] == [RUNNING]
    finally:
        long.send_signal(signal.SIGKILL)
        long.communicate(timeout=30)
    time.sleep(3.5)  # its heartbeat has stopped for longer than the grace period
    # Two trials asked at once; the resumed sampler seed (4 mixed with 1) draws soc_min 0.1, then 1.5. On
    # PostgreSQL (the cluster route) they run in two joblib worker processes; on SQLite in this process
    # (processes writing one SQLite file at once: the concurrent-sweeps test).
    workers = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if route.startswith("postgresql") else []
    resumed = multirun(tmp_path, route, capfd, "hydra.sweeper.n_trials=2", *workers, "hydra.sweeper.n_jobs=2",
                       FAST_BEAT, *ONE_FAILS)  # fmt: skip
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    assert "trial(s) [0] were left RUNNING by a sweep that stopped (no heartbeat): marked FAIL" in out
    assert "resuming study 'ppo' at trial 1" in out
    study = trials(route)
    assert [t.state for t in study] == [FAIL, COMPLETE, FAIL]
    assert [t.params["site.soc_min"] for t in study[1:]] == [0.1, 1.5]
    assert "site needs 0 <= soc_min < soc_max <= 1" in out  # the failure came back (from its worker process)
    assert "1 of this sweep's 2 trials complete" in out  # the killed sweep's trial is not this one's
    folders = check_folders(tmp_path, study)
    assert [folders[n].name for n in (0, 1, 2)] == ["0", "0", "1"]  # the killed sweep's job 0, then two jobs


def test_a_beat_newer_than_the_clock_is_not_stale(route):
    """Two sweeps started together: one reads the clock, the other beats, then the first reads the beats."""
    ours = open_storage(route, heartbeat_interval=1, grace_period=2)  # (and SQLite's folder)
    plain = RDBStorage(route, heartbeat_interval=1, grace_period=2)
    study_id = plain.create_new_study("ppo")
    trial_id = plain.create_new_trial(study_id)  # not ours: no heartbeat thread of its own in this test
    plain.record_heartbeat(trial_id)

    def shift_beat(seconds: float) -> None:
        with plain.engine.begin() as conn:
            beat = conn.execute(sqlalchemy.text("SELECT heartbeat FROM trial_heartbeats")).scalar_one()
            beat = datetime.fromisoformat(beat) if isinstance(beat, str) else beat  # SQLite: text
            update = sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = :beat")
            conn.execute(update, {"beat": beat + timedelta(seconds=seconds)})

    shift_beat(+5)
    assert RDBStorage._get_stale_trial_ids(plain, study_id) == [trial_id]  # optuna 2.10 would fail it
    assert ours.fail_stale_trials(study_id) == []
    shift_beat(-10)
    assert ours.fail_stale_trials(study_id) == [trial_id]
    for storage in (plain, ours):
        storage.engine.dispose()


def test_failing_a_trial_its_job_has_failed_is_no_change(route):
    """A submitit job stopped by SIGTERM fails its trial (sweep_stop) and gives no result: the sweeper fails it too."""
    storage = open_storage(route, heartbeat_interval=1)
    study = optuna.create_study(study_name="ppo", storage=storage)
    trial = study.ask()
    optuna.load_study(study_name="ppo", storage=route).tell(trial.number, state=FAIL)  # in the job's process
    study.tell(trial, state=FAIL)
    assert [t.state for t in trials(route)] == [FAIL]
    storage.engine.dispose()


def test_connections_the_server_dropped_are_opened_again(pg_url):
    """A database restart mid-sweep: the sweeper's pooled connection is dead at its next tell."""
    storage = open_storage(pg_url)
    study = optuna.create_study(study_name="ppo", storage=storage)
    trial = study.ask()
    with sqlalchemy.create_engine(pg_url).connect() as conn:  # what a restart does to the other connections
        others = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                  " WHERE datname = current_database() AND pid <> pg_backend_pid()")  # fmt: skip
        assert conn.execute(sqlalchemy.text(others)).scalars().all()
    study.tell(trial, 1.0)
    assert [t.state for t in trials(pg_url)] == [COMPLETE]
    storage.engine.dispose()


def test_a_study_another_sweep_is_creating_is_not_refused(pg_url):
    RDBStorage(pg_url).create_new_study("ppo")  # created, its directions not set yet
    sweeper = OmegaConf.create({"study_name": "ppo", "direction": "maximize"})
    assert OptunaStudyGuard()._open_study(pg_url, sweeper, "penalised_reduction_pct", {}) == 0


@pytest.mark.slow
def test_submitit_local_sweep_on_postgresql(tmp_path, pg_url, capfd):
    """Real submission: pickled jobs, one array per batch of hydra.sweeper.n_jobs, result files on the sweep path."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")
    proc = multirun(tmp_path, pg_url, capfd, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                    "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *ONE_FAILS)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = trials(pg_url)
    assert [t.state for t in study] == [COMPLETE, FAIL]
    folders = check_folders(tmp_path, study)
    sweep = folders[0].parent
    assert sweep.parent == tmp_path / "outputs" / "sweeps"  # run folders and job files on the shared path
    # One folder per job, named by its job id (the template folder "%j" stays empty): pickles and logs.
    jobs = sorted(p.parent for p in (sweep / ".submitit").glob("*/*_submitted.pkl"))
    assert len(jobs) == 2
    returns = []
    for job in jobs:
        assert len(list(job.glob("*_log.out"))) == 1 and len(list(job.glob("*_log.err"))) == 1
        outcome, job_return = pickle.loads(next(job.glob("*_result.pkl")).read_bytes())
        assert outcome == "success"  # the job ran; a failed trial is a JobReturn with status FAILED
        returns.append(job_return)
    assert sorted(r.status.name for r in returns) == ["COMPLETED", "FAILED"]


def first_worker(sweep: subprocess.Popen, timeout: float = 120) -> psutil.Process:
    """The first submitit worker (``submitit.core._submit``, the trial's own process) of a sweep, as it starts."""
    deadline = time.monotonic() + timeout
    while True:
        for child in psutil.Process(sweep.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "submitit.core._submit" in child.cmdline():
                    return child
        assert time.monotonic() < deadline and sweep.poll() is None, "no submitit worker started"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_killed_submitit_worker_fails_its_trial_and_the_sweep_goes_on(tmp_path, pg_url):
    """SIGKILL of one trial's process (as OOM, a Slurm timeout or a lost node do): its trial is FAIL and the
    other trial of its array is told, where the launcher's UncompletedJobError ended the sweep with both RUNNING."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")
    sweep = start(tmp_path, pg_url, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                  "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")  # fmt: skip
    try:
        worker = first_worker(sweep)
        worker.kill()
        out, _ = sweep.communicate(timeout=180)
    finally:
        sweep.kill()
    assert sweep.returncode == 0 and "Traceback" not in out, out[-3000:]
    lost = [line for line in out.splitlines() if "gave no result" in line]
    assert len(lost) == 1 and "_log.err" in lost[0], out[-3000:]
    assert "1 of this sweep's 2 trials complete" in out
    study = trials(pg_url)
    assert sorted(t.state.name for t in study) == ["COMPLETE", "FAIL"]
    assert all(("run_dir" in t.user_attrs) == (t.state == COMPLETE) for t in study)


@pytest.mark.slow
def test_a_preempted_submitit_job_checkpoints_is_requeued_and_goes_on_to_the_uninterrupted_result(tmp_path, capfd):
    """SIGUSR2 (Slurm's warning ahead of a time limit, or a preemption): submitit requeued the job, which then
    trained again from step 0 (a time-limited trial never finished); it now checkpoints and goes on from there."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")
    args = ["hydra.sweeper.n_trials=1", "agent.total_timesteps=20000", "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10"]  # fmt: skip
    preempted = tmp_path / "preempted"
    preempted.mkdir()
    sweep = start(preempted, sqlite_url(preempted), *args)
    try:
        worker = first_worker(sweep)
        deadline = time.monotonic() + 120
        progress = preempted / "outputs" / "sweeps"
        while sum(len(p.read_text().splitlines()) for p in progress.glob("*/0/progress.csv")) < 2:  # a row: training
            assert time.monotonic() < deadline and sweep.poll() is None, "no training started"
            time.sleep(0.05)
        worker.send_signal(signal.SIGUSR2)
        out, _ = sweep.communicate(timeout=180)
    finally:
        sweep.kill()
    assert sweep.returncode == 0 and "Traceback" not in out, out[-3000:]
    (job,) = preempted.glob("outputs/sweeps/*/0")
    log = "".join(p.read_text() for p in job.parent.glob(".submitit/*/*_log.err"))
    assert "interrupted by SIGUSR2" in log and "Requeued job" in log and "this job was requeued" in log
    (resumed,) = json.loads((job / "run_info.json").read_text())["resumed"]
    assert 0 < resumed["from_step"] < 20000 and not (job / "checkpoint").exists()
    assert [t.state for t in trials(sqlite_url(preempted))] == [COMPLETE]

    straight = tmp_path / "straight"
    straight.mkdir()
    assert multirun(straight, sqlite_url(straight), capfd, *args[:2]).returncode == 0  # same seed: same trial
    (other,) = straight.glob("outputs/sweeps/*/0")
    kpis = ("co2_kg", "penalised_reduction_pct", "ev_unmet_kwh", "grid_import_kwh", "total_timesteps")
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (job, other))
    assert {k: ours[k] for k in kpis} == {k: theirs[k] for k in kpis}


BAD_INPUT = {  # case: what the one line says
    "unreachable": "Connection refused",
    "credentials": 'password authentication failed for user "bess"',
    "directions": "study 'ppo' in postgresql://bess:***@127.0.0.1",
    "driver": "SQLAlchemy 1.4.54 has no driver 'postgresql+psycopg'",
    "module": "the driver module 'pg8000' is not installed",
    "url": "is not a database URL",
}


def bad_url(case: str, pg_server: PgServer, pg_url: str) -> str:
    if case == "directions":
        optuna.create_study(study_name="ppo", storage=pg_url, direction="minimize")
    return {
        "unreachable": PgServer(port=free_port()).url("optuna"),
        "credentials": pg_server.url(pg_url.rsplit("/", 1)[1], password="wrong"),
        "directions": pg_url,
        "driver": pg_url.replace("postgresql://", "postgresql+psycopg://"),
        "module": pg_url.replace("postgresql://", "postgresql+pg8000://"),
        "url": "postgresql//no-scheme",
    }[case]


# The sweeper settings the guard checks, and a command line of no override: a search space of no parameter.
SWEEPER = {"direction": "maximize", "n_trials": 1, "n_jobs": 1, "max_failure_rate": 0.0}
NONE = {"task": []}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_storage_input_stops_the_guard_in_one_line(tmp_path, pg_server, pg_url, caplog, case):
    sweeper = {**SWEEPER, "storage": bad_url(case, pg_server, pg_url), "study_name": "ppo"}
    cfg = OmegaConf.create({"objective": "penalised_reduction_pct", "hydra": {"sweeper": sweeper, "overrides": NONE}})
    with pytest.raises(SystemExit) as stop:
        OptunaStudyGuard().on_multirun_start(cfg)
    assert stop.value.code == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert BAD_INPUT[case] in error and "\n" not in error and PASSWORD not in error


def test_the_slurm_launcher_without_slurm_stops_in_one_line_before_any_trial(tmp_path, monkeypatch, caplog):
    """submitit found no srun only after the sweeper had asked a batch: a traceback, the batch left RUNNING."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    hydra = {"sweeper": {**SWEEPER, "storage": None, "study_name": "sac"}, "launcher": {"_target_": slurm},
             "overrides": NONE}  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        OptunaStudyGuard().on_multirun_start(OmegaConf.create({"objective": "penalised_reduction_pct", "hydra": hydra}))
    assert stop.value.code == 2
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "hydra/launcher=submitit_slurm needs Slurm" in error and "submitit_local" in error


@pytest.mark.slow
def test_bad_storage_input_on_the_command_line_is_one_line_before_any_trial(tmp_path, pg_server, pg_url, capfd):
    proc = multirun(tmp_path, bad_url("credentials", pg_server, pg_url), capfd, "hydra.sweeper.n_trials=1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert [BAD_INPUT["credentials"] in line for line in out.splitlines()].count(True) == 1, out[-3000:]
    assert "Traceback" not in out and PASSWORD not in out
    assert not list(tmp_path.glob("outputs/sweeps/*/*/.hydra"))  # no trial started


def test_unique_dir_takes_the_next_free_name(tmp_path):
    path = str(tmp_path / "sweeps" / "2026-01-01_00-00-00")
    assert [unique_sweep_dir(path) for _ in range(3)] == [path, f"{path}-1", f"{path}-2"]
    assert all(Path(p).is_dir() for p in (path, f"{path}-1", f"{path}-2"))


def get_json(url: str, timeout: float = 60) -> dict:
    """GET ``url`` as JSON, retrying while the server starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            assert time.monotonic() < deadline, f"no answer from {url}"
            time.sleep(0.5)


@pytest.mark.slow
def test_dashboard_serves_the_study_and_leaves_it_resumable(tmp_path, capfd):
    """The pinned optuna-dashboard (extra ``dashboard``) reads optuna 2.10's schema as it is."""
    pytest.importorskip("optuna_dashboard", reason="pip install -e '.[dashboard]'")
    url = sqlite_url(tmp_path)
    first = multirun(tmp_path, url, capfd, "hydra.sweeper.n_trials=1")
    assert first.returncode == 0, first.stderr[-3000:]
    (trial,) = trials(url)
    schema = "SELECT version_num FROM alembic_version"
    with sqlalchemy.create_engine(url).connect() as conn:
        version = conn.execute(sqlalchemy.text(schema)).scalar_one()
    port = free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), url, "--host", "127.0.0.1",
                                  "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        (summary,) = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        assert summary["study_name"] == "ppo" and summary["directions"] == ["maximize"]
        (served,) = get_json(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")["trials"]
    finally:
        dashboard.terminate()
        dashboard.communicate(timeout=30)
    assert served["number"] == 0 and served["state"] == "Complete" and served["values"] == [trial.value]
    attrs = {a["key"]: a["value"] for a in served["user_attrs"]}
    assert attrs == {k: str(v) for k, v in trial.user_attrs.items()} and attrs["agent.total_timesteps"] == "64"
    assert {p["name"] for p in served["params"]} == set(trial.params)
    with sqlalchemy.create_engine(url).connect() as conn:
        assert conn.execute(sqlalchemy.text(schema)).scalar_one() == version == "v2.6.0.a"  # no schema upgrade
    again = multirun(tmp_path, url, capfd, "hydra.sweeper.n_trials=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [t.state for t in trials(url)] == [COMPLETE, COMPLETE]


def test_the_heartbeat_ends_when_its_trials_have(tmp_path):
    """A sweep run from a long-lived process (a notebook, the test suite) leaves no thread beating: it
    ends when its last trial finishes, not a beat interval (a minute by default) later."""
    storage = open_storage(sqlite_url(tmp_path), heartbeat_interval=1)
    study = optuna.create_study(study_name="beat", storage=storage)
    before = set(threading.enumerate())
    trial = study.ask()
    (beat,) = [t for t in threading.enumerate() if t.name == "optuna-heartbeat" and t not in before]
    time.sleep(1.5)
    assert beat.is_alive()  # the trial is still running
    study.tell(trial, 1.0)
    beat.join(timeout=5)
    assert not beat.is_alive()
    slow = open_storage(sqlite_url(tmp_path), heartbeat_interval=60)
    again = optuna.load_study(study_name="beat", storage=slow)
    before = set(threading.enumerate())
    trial = again.ask()  # a new trial beats again, and its thread ends with it, well before 60 s
    (beat,) = [t for t in threading.enumerate() if t.name == "optuna-heartbeat" and t not in before]
    again.tell(trial, 2.0)
    beat.join(timeout=5)
    assert not beat.is_alive()
    for s in (storage, slow):
        s.engine.dispose()


def test_a_schema_another_sweep_is_creating_is_opened_again(tmp_path, monkeypatch):
    """SQLite's side of two sweeps starting on a new file at once: the loser's CREATE TABLE fails."""
    real, calls = storage_module.HeartbeatStorage, {"n": 0}

    def racing(url, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("CREATE TABLE", {}, Exception("table alembic_version already exists"))
        return real(url, **kwargs)

    monkeypatch.setattr(storage_module, "HeartbeatStorage", racing)
    opened = open_storage(sqlite_url(tmp_path))
    assert calls["n"] == 2 and isinstance(opened, real)
    opened.engine.dispose()

    def locked(url, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    monkeypatch.setattr(storage_module, "HeartbeatStorage", locked)
    with pytest.raises(StorageError, match="^cannot open storage .*database is locked"):
        open_storage(sqlite_url(tmp_path))


def test_a_sweep_s_trials_are_tagged_with_its_absolute_folder(tmp_path, monkeypatch):
    """Relative, two sweeps launched in other folders (or on other nodes) at the same second shared a tag."""
    from bess_rl.experiment.storage import HeartbeatStorage

    monkeypatch.chdir(tmp_path)
    storage = HeartbeatStorage(f"sqlite:///{tmp_path}/optuna.db", sweep_dir="./outputs/sweeps/2026-12-04_03-00-00")
    assert storage.sweep_dir == str(tmp_path / "outputs" / "sweeps" / "2026-12-04_03-00-00")


def test_the_slurm_preset_is_submitit_slurm_that_requeues_a_trial_past_its_time_limit():
    """Hydra's submitit_slurm requeues no timed-out job (max_num_timeout 0): a trial longer than timeout_min failed."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")
    register_configs()  # the schemas the configs name
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.max_num_timeout, launcher.signal_delay_s) == (3, 180)

"""Fault injection in-process: kills mid-checkpoint, full disks, crafted and corrupt run folders, signals.

A "kill" is an exception that is not an ``Exception`` (so no code path cleans up after it) raised at the
chosen point; the process then "restarts" with a resume in the same folder. Bad inputs are the data
table in ``tests/faults.py``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from bess_rl.agents.fast_sac import FastSAC
from bess_rl.experiment import checkpoint, train
from bess_rl.experiment.budget import apply_budget
from bess_rl.experiment.checkpoint import CheckpointError, TrainingInterrupted
from bess_rl.experiment.errors import USER_ERRORS
from bess_rl.experiment.run_dir import RunDir, RunDirError, unique_run_dir
from bess_rl.experiment.train import resume_config, run
from bess_rl.tools.replay import COMPARED
from tests.faults import BAD_INPUTS
from tests.helpers import COMMON, TINY, code_writing, compose_cfg, rewrite_data

PPO = [
    "agent=ppo",
    *COMMON,
    *TINY["ppo"],
    "agent.total_timesteps=256",
    "checkpoint_every_steps=64",
    "agent.log_interval=1",
    "log_every_steps=64",
]
SAC = ["agent=sac", *COMMON, *TINY["sac"], "agent.total_timesteps=60"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the raise point runs, no ``except Exception`` sees it."""


def outcome(metrics: dict) -> dict:
    return {k: metrics[k] for k in (*COMPARED, "total_timesteps")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, dict]:
    """The uninterrupted runs every resumed run must equal."""
    return {name: outcome(run(compose_cfg(ov), tmp_path_factory.mktemp(name))) for name, ov in (("ppo", PPO),)}


def resume(run_dir: Path) -> dict:
    """What ``python -m bess_rl resume=<run_dir>`` does after the restart."""
    requested = compose_cfg([f"resume={run_dir}", "progress_bar=false"])
    return run(resume_config(run_dir, requested, [f"resume={run_dir}"]), run_dir, resume=True)


def kill_at(monkeypatch, obj, name: str, calls: int) -> None:
    """Replace ``obj.name`` so that its ``calls``-th call is killed before doing anything."""
    real, seen = getattr(obj, name), {"n": 0}

    def wrapper(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] == calls:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)


def test_kill_between_the_swap_renames_keeps_a_checkpoint_and_resumes_exactly(tmp_path, monkeypatch, straight):
    # Path.rename calls: the 1st save moves tmp into place; the 2nd moves the old one aside (2), then tmp (3).
    kill_at(monkeypatch, Path, "rename", 3)
    with pytest.raises(Killed):
        run(compose_cfg(PPO), tmp_path)
    monkeypatch.undo()
    assert not (tmp_path / "checkpoint").exists()  # the kill hit mid-swap
    assert checkpoint.read_state(tmp_path / "checkpoint")["num_timesteps"] == 128
    assert outcome(resume(tmp_path)) == straight["ppo"]
    assert not list(tmp_path.glob("checkpoint*"))


def test_kill_during_the_evaluation_keeps_the_trained_checkpoint(tmp_path, monkeypatch, straight):
    kill_at(monkeypatch, train, "evaluate_part", 1)
    with pytest.raises(Killed):
        run(compose_cfg(PPO), tmp_path)
    monkeypatch.undo()
    state = checkpoint.read_state(tmp_path / "checkpoint")
    assert state["reason"] == "trained" and state["num_timesteps"] == 256
    assert outcome(resume(tmp_path)) == straight["ppo"]


def test_a_second_resume_keeps_every_earlier_progress_row(tmp_path, monkeypatch, straight):
    kill_at(monkeypatch, checkpoint, "save", 2)  # killed at the 2nd periodic save: the 1st (step 64) is kept
    with pytest.raises(Killed):
        run(compose_cfg(PPO), tmp_path)
    monkeypatch.undo()
    kill_at(monkeypatch, checkpoint, "save", 2)  # the resume dies the same way, one checkpoint later
    with pytest.raises(Killed):
        resume(tmp_path)
    monkeypatch.undo()
    assert outcome(resume(tmp_path)) == straight["ppo"]
    steps = list(np.loadtxt(RunDir(tmp_path).progress, delimiter=",", skiprows=1, usecols=0, ndmin=1))
    assert len(steps) >= 4  # rows of the first run, of the interrupted resume and of the last one


def test_disk_full_at_a_periodic_checkpoint_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    real, seen = np.savez, {"n": 0}

    def full_disk(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*the previous checkpoint is kept") as err:
        run(compose_cfg(PPO), tmp_path)
    assert "\n" not in str(err.value)
    assert checkpoint.read_state(tmp_path / "checkpoint")["num_timesteps"] == 64
    assert not (tmp_path / "checkpoint.tmp").exists()


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    """A PPO run folder killed at its second periodic checkpoint (the first, at step 64, is kept)."""
    path = tmp_path_factory.mktemp("killed")
    with pytest.MonkeyPatch.context() as mp:
        kill_at(mp, checkpoint, "save", 2)
        with pytest.raises(Killed):
            run(compose_cfg(PPO), path)
    return path


def interrupted(killed_run: Path, where: Path) -> Path:
    """A copy of ``killed_run`` to damage (one training run serves every test)."""
    return Path(shutil.copytree(killed_run, where / "run"))


def test_a_crafted_model_zip_runs_no_code(tmp_path, killed_run):
    run_dir = interrupted(killed_run, tmp_path)
    marker = tmp_path / "pwned"
    payload = code_writing(marker)
    rewrite_data(run_dir / "checkpoint" / "model.zip", lambda d: d.update(policy_class={":serialized:": payload}))
    resume(run_dir)  # the serialized policy_class is replaced by the config's
    assert not marker.exists()

    run_dir = interrupted(killed_run, tmp_path / "again")
    rewrite_data(run_dir / "checkpoint" / "model.zip", lambda d: d.update(evil={":serialized:": payload}))
    with pytest.raises(RunDirError, match="serialized field 'evil' is not one this config defines"):
        resume(run_dir)
    assert not marker.exists()
    assert not list(run_dir.glob("checkpoint/*.pkl"))  # env and buffer state are arrays + JSON


def test_a_checkpoint_naming_another_class_is_refused(tmp_path, killed_run):
    run_dir = interrupted(killed_run, tmp_path)
    state_file = run_dir / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps(state | {"algo": "collections.OrderedDict"}))
    with pytest.raises(USER_ERRORS, match="collections.OrderedDict.*is not allowed"):
        resume(run_dir)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (("learning_rate: 0.0003", "learning_rate: 0.001"), "agent.hparams.learning_rate: 0.0003 -> 0.001"),
        (("n_steps: 64", "n_steps: 32"), "agent.hparams.n_steps: 64 -> 32"),
        (("name: after", "name: before"), "preset.name: 'after' -> 'before'"),
    ],
)
def test_a_resume_whose_inputs_changed_is_refused_naming_the_change(tmp_path, edit, named, killed_run):
    run_dir = interrupted(killed_run, tmp_path)
    config = RunDir(run_dir).config
    config.write_text(config.read_text().replace(*edit, 1))
    with pytest.raises(CheckpointError, match="inputs differ") as err:
        resume(run_dir)
    assert named in str(err.value)


def test_a_changed_scenario_file_is_named(tmp_path, monkeypatch):
    from tests.helpers import make_scenario

    sc = make_scenario(days=7)
    hourly = tmp_path / "hourly.csv"
    lines = ["pv_kw_per_kwp,load_kw", *(f"{p},{v}" for p, v in zip(sc.pv_kw_per_kwp, sc.load_kw, strict=True))]
    hourly.write_text("\n".join(lines) + "\n")
    cfg = [*PPO, f"scenario.hourly_path={hourly}", "scenario.hours=168"]
    kill_at(monkeypatch, checkpoint, "save", 2)
    with pytest.raises(Killed):
        run(compose_cfg(cfg), tmp_path / "run")
    monkeypatch.undo()
    hourly.write_text(hourly.read_text().replace("\n0.0,", "\n0.5,", 1))
    with pytest.raises(CheckpointError, match=f"scenario file {hourly} changed"):
        resume(tmp_path / "run")


CORRUPTIBLE = ["model.zip", "arrays.npz", "training.json", "rng.json", "state.json"]


@pytest.mark.parametrize("name", [*(f"checkpoint/{n}" for n in CORRUPTIBLE), "resolved_config.yaml", "run_info.json"])
def test_a_truncated_file_is_one_line(tmp_path, name, killed_run):
    run_dir = interrupted(killed_run, tmp_path)
    path = run_dir / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(USER_ERRORS) as err:
        resume(run_dir)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_unique_run_dir_gives_runs_started_in_one_second_their_own_folders(tmp_path):
    base = str(tmp_path / "runs" / "sac-after" / "2026-12-01_10-00-00")
    first = unique_run_dir(base)
    assert unique_run_dir(base) == first  # Hydra resolves hydra.run.dir more than once
    os.rename(first, first + "_x")  # another process
    (tmp_path / "runs" / "sac-after" / "2026-12-01_10-00-00").mkdir()
    unique_run_dir.__globals__["_CREATED"].clear()  # a second process starting in the same second
    second = unique_run_dir(base)
    assert second == base + "_1" and Path(second).is_dir()


def test_a_refused_resume_leaves_no_folder_behind(tmp_path, monkeypatch):
    """A ``resume=`` naming no run folder logs into a temporary folder that is gone at exit."""
    at_exit = []
    monkeypatch.setattr("atexit.register", lambda fn, *args, **kwargs: at_exit.append((fn, args, kwargs)))
    folder = Path(unique_run_dir(str(tmp_path / "runs" / "x"), resume=str(tmp_path / "not-a-run")))
    (folder / ".hydra").mkdir()  # what Hydra writes there before the refusal
    assert folder.is_dir() and not (tmp_path / "runs").exists()
    for fn, args, kwargs in at_exit:
        fn(*args, **kwargs)
    assert not folder.exists()


def test_two_resumes_of_one_run_cannot_both_proceed(tmp_path, killed_run):
    run_dir = interrupted(killed_run, tmp_path)
    with RunDir(run_dir).lock(), pytest.raises(RunDirError, match="in use by another bess_rl process"):
        resume(run_dir)


def test_sigint_during_the_last_rollout_stops_the_run(tmp_path, monkeypatch):
    real, seen = train.PvBessEvEnv.step, {"n": 0}

    def step(self, action):
        seen["n"] += self.random_start
        if seen["n"] == 230:  # the last of four 64-step rollouts
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, action)

    monkeypatch.setattr(train.PvBessEvEnv, "step", step)
    with pytest.raises(TrainingInterrupted, match="SIGINT at step 256"):
        run(compose_cfg(PPO), tmp_path)
    assert not RunDir(tmp_path).metrics.exists()


def test_sigterm_inside_a_long_sac_update_stops_it_and_the_resume_is_exact(tmp_path, monkeypatch):
    cfg = [*SAC, "agent.hparams.gradient_steps=40", "agent.hparams.train_freq=20"]
    want = outcome(run(compose_cfg(cfg), tmp_path / "straight"))
    real, seen = FastSAC._steps, {"n": 0}

    def steps(self, first, count, batch_size):
        seen["n"] += 1
        if seen["n"] == 2:  # inside the first train() call (16-step chunks), after one chunk
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, first, count, batch_size)

    monkeypatch.setattr(FastSAC, "_steps", steps)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 40"):
        run(compose_cfg(cfg), tmp_path / "run")
    monkeypatch.undo()
    assert seen["n"] == 2  # the update stopped at the next poll instead of running all its 40 steps
    assert outcome(resume(tmp_path / "run")) == want


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_line(tmp_path, overrides, message):
    """Each bad input of the table fails before training with one line that names it."""
    from hydra.errors import HydraException

    with pytest.raises((*USER_ERRORS, HydraException)) as err:
        cfg = compose_cfg([*COMMON, *overrides])
        apply_budget(cfg)
        run(cfg, tmp_path / "run")
    text = str(err.value).strip()
    assert message in text and "\n" not in text, text


@pytest.fixture(scope="module", autouse=True)
def fault_files():
    from tests.faults import write_files

    write_files()


def test_report_skips_a_run_folder_with_a_truncated_metrics_json(tmp_path, capsys):
    from bess_rl.tools.report import find_runs

    for name in ("good", "bad"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"agent": "ppo", "preset": "after"}))
    (tmp_path / "bad" / "metrics.json").write_text('{"agent": "pp')
    assert [r.path.name for r in find_runs([tmp_path])] == ["good"]
    assert f"warning: skipping {tmp_path / 'bad'}: " in capsys.readouterr().err


def sessions_scenario(n: int):
    from bess_rl.site.scenario import EvSessions, Scenario

    rng, hours = np.random.default_rng(0), 168
    arrival = rng.integers(0, hours - 10, n)
    departure = arrival + rng.integers(1, 10, n)
    power = np.full(n, 50.0)
    sessions = EvSessions(arrival, departure, power * (departure - arrival) / 2, power)
    return Scenario("many", np.full(hours, 0.3), np.full(hours, 1000.0), np.full(hours, 0.45), sessions)


def test_the_planner_refuses_a_scenario_over_the_budget():
    from bess_rl.experiment import planner

    big = sessions_scenario(100_000)  # ~500 k session-hours: ~0.75 GB, most of it the LP
    with pytest.raises(planner.MemoryBudgetError, match=r"the scenario needs about 0\.\d\d GB .*budget of 0.1 GB"):
        planner.check_scenario(big, 1, 0.1, "hardware=cpu")
    planner.check_scenario(big, 1, 2.0, "hardware=cpu")


def test_env_memory_grows_linearly_with_sessions():
    import tracemalloc

    from bess_rl.site.env import PvBessEvEnv

    peaks = []
    for n in (20_000, 80_000):
        scenario = sessions_scenario(n)
        tracemalloc.start()
        PvBessEvEnv(scenario)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert 3.0 < peaks[1] / peaks[0] < 5.0


@pytest.mark.parametrize(
    "overrides",
    [
        ["agent=ppo", *TINY["ppo"], "agent.total_timesteps=640"],
        ["agent=a2c", *TINY["a2c"], "agent.total_timesteps=200", "agent.n_envs=2", "agent.hparams.n_steps=8"],
    ],
)
def test_a_huge_learning_rate_is_the_nan_guards_message(tmp_path, overrides):
    with pytest.raises(checkpoint.NumericalError, match="non-finite|is -?inf|is nan") as err:
        run(compose_cfg([*COMMON, *overrides, "agent.hparams.learning_rate=1e6"]), tmp_path)
    assert "\n" not in str(err.value)


def test_a_grid_without_co2_prints_n_a_instead_of_dividing_by_zero(tmp_path, capsys):
    from tests.faults import HOURLY_ZERO_CO2

    scenario = [f"scenario.hourly_path={HOURLY_ZERO_CO2}", "scenario.hours=168", "scenario.window_hours=null"]
    metrics = run(compose_cfg(["agent=ppo", *COMMON, *TINY["ppo"], *scenario]), tmp_path)
    train.print_table(metrics)
    out = capsys.readouterr().out
    assert "n/a of the LP optimum's" in out and out.count("n/a") >= 5


def test_an_output_folder_that_cannot_be_created_is_one_line(tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(RunDirError, match="cannot create the run folder under .*Permission denied"):
        unique_run_dir(str(tmp_path / "ro" / "runs" / "x"))


def test_sigterm_stops_a_long_sac_update_within_two_seconds(tmp_path, monkeypatch):
    import threading
    import time

    cfg = ["agent=sac", *COMMON, "agent.total_timesteps=60", "agent.hparams.learning_starts=20",
           "agent.hparams.train_freq=20", "agent.hparams.gradient_steps=100000",
           "agent.hparams.buffer_size=500"]  # fmt: skip
    real, sent = FastSAC.train, {}

    def train_then_signal(self, *args, **kwargs):
        if not sent:
            sent["t"] = time.monotonic() + 0.5
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FastSAC, "train", train_then_signal)
    with pytest.raises(TrainingInterrupted, match="SIGTERM"):
        run(compose_cfg(cfg), tmp_path)
    assert time.monotonic() - sent["t"] < 2.0  # 100,000 gradient steps would take minutes


def test_replay_of_a_crafted_or_truncated_run_folder_is_one_line(tmp_path, killed_run, capsys):
    from bess_rl.tools import replay

    run_dir = interrupted(killed_run, tmp_path)
    RunDir(run_dir).metrics.write_text('{"co2_kg": 1')
    assert replay.main([str(run_dir)]) == 2
    assert "metrics.json cannot be read" in capsys.readouterr().err
    RunDir(run_dir).metrics.write_text("{}")
    config = RunDir(run_dir).config
    config.write_text(config.read_text().replace("algo: bess_rl.agents.fast_onpolicy.FastPPO", "algo: os.system"))
    assert replay.main([str(run_dir)]) == 2
    assert "agent.algo 'os.system' is not allowed" in capsys.readouterr().err


def test_learning_starts_past_the_total_is_reported_as_untrained(tmp_path, caplog, capsys):
    overrides = ["agent=sac", *COMMON, *TINY["sac"], "agent.hparams.learning_starts=60"]
    metrics = run(compose_cfg(overrides), tmp_path)
    assert "no gradient update will run" in caplog.text and metrics["gradient_updates"] == 0
    train.print_table(metrics)
    assert "(untrained: no gradient update ran)" in capsys.readouterr().out


def test_the_references_command_refuses_a_non_finite_flat_tariff_in_one_line(capsys):
    """It builds its env without ``validate``: ``build_scenario`` checks the flat values itself."""
    from bess_rl.tools.references import main

    assert main([*COMMON, "scenario.price_per_kwh=nan"]) == 2
    err = capsys.readouterr().err
    assert "scenario.price_per_kwh must be a number in [0, 1e+06], got nan" in err and err.count("\n") == 1


def test_an_lp_highs_cannot_solve_is_one_line_naming_the_lp_and_the_site(monkeypatch):
    from types import SimpleNamespace

    from bess_rl.baselines import optimum
    from bess_rl.site.params import SiteParams
    from tests.helpers import make_scenario

    failed = SimpleNamespace(status=4, x=None, message="Numerical\ndifficulties (HiGHS Status 2: Model error)")
    monkeypatch.setattr(optimum, "linprog", lambda *args, **kwargs: failed)
    with pytest.raises(USER_ERRORS) as err:
        optimum.solve_optimum(make_scenario(), SiteParams(pv_kwp=5_000.0))
    text = str(err.value)
    assert isinstance(err.value, RuntimeError) and "\n" not in text
    assert "HiGHS could not solve the LP of 72 hours at site pv_kwp=5000, bess 2000 kWh / 1000 kW" in text
    assert text.endswith("Model error) (the LP optimum of scenario 'synthetic')")


def _hydra_runtime(path: Path):
    from omegaconf import OmegaConf

    return OmegaConf.create({"runtime": {"output_dir": str(path)}, "job": {"name": "bess_rl"}})


def _refused_folder(path: Path) -> Path:
    """What Hydra and ``run`` leave in a run folder before a start is refused."""
    (path / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (path / ".hydra" / name).write_text("a: 1\n")
    (path / "bess_rl.log").write_text("[ERROR] - seed must be an integer\n")
    (path / ".lock").touch()
    return path


def test_a_refused_start_removes_its_folder_and_nothing_else(tmp_path):
    from bess_rl.__main__ import remove_refused_folder

    refused = _refused_folder(tmp_path / "runs" / "ppo-after" / "2026-12-01_10-00-00")
    other = _refused_folder(tmp_path / "runs" / "sac-after" / "2026-12-01_10-00-00")
    (other.parent / "2026-11-30_10-00-00").mkdir()  # an earlier run of that agent and preset
    remove_refused_folder(_hydra_runtime(refused))
    remove_refused_folder(_hydra_runtime(other))
    assert not (tmp_path / "runs" / "ppo-after").exists() and (tmp_path / "runs").is_dir()
    assert [p.name for p in (tmp_path / "runs" / "sac-after").iterdir()] == ["2026-11-30_10-00-00"]
    started = _refused_folder(tmp_path / "runs" / "a2c-after" / "2026-12-01_10-00-00")
    for written in ("resolved_config.yaml", "run_info.json"):  # before training: stopped there, nothing to resume
        (started / written).write_text("x")
    assert remove_refused_folder(_hydra_runtime(started)) and not started.exists()
    for extra in ("progress.csv", ".hydra/notes.txt", "checkpoint/state.json", "model.zip"):
        kept = _refused_folder(tmp_path / "kept" / extra.replace("/", "_"))
        (kept / extra).parent.mkdir(exist_ok=True)
        (kept / extra).write_text("x")
        remove_refused_folder(_hydra_runtime(kept))
        assert (kept / extra).is_file(), extra
    held = _refused_folder(tmp_path / "kept" / "lock")
    (held / ".lock").write_text("12345")  # not our empty lock file
    remove_refused_folder(_hydra_runtime(held))
    assert held.is_dir()


def test_a_checkpoint_that_fails_midway_leaves_no_partial_folder(tmp_path):
    """A population whose env could not be checkpointed left checkpoint.tmp behind."""

    def fill(folder: Path) -> None:
        (folder / "half").write_text("x")
        raise checkpoint.CheckpointError("cannot checkpoint training env 0")

    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.replace_folder(tmp_path / "checkpoint", fill, "checkpoint at step 1")
    assert list(tmp_path.iterdir()) == []

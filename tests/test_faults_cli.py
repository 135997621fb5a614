"""The faults only the command line shows: Hydra's run folder, sweeps, real signals and SIGKILLs (slow)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from tests.helpers import COMMON, TINY, compose_cfg, run_cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_bad_run_folders_and_resume_values_are_one_line(tmp_path, capfd):
    afile = tmp_path / "afile"
    afile.write_text("")
    proc = run_cli(f"paths.output_dir={afile}", *COMMON, cwd=tmp_path, capfd=capfd)
    assert proc.returncode == 2 and "cannot create the run folder" in proc.stderr and "Traceback" not in proc.stderr
    empty = run_cli("resume=", *COMMON, cwd=tmp_path, capfd=capfd)
    assert empty.returncode == 2 and "resume= needs a run folder" in empty.stderr
    assert not (tmp_path / "outputs").exists()  # neither started a run folder


def test_a_resume_logs_into_its_run_folder_and_creates_no_other(tmp_path, capfd):
    run_dir = tmp_path / "outputs" / "runs" / "ppo-after" / "2026-12-01_10-00-00"
    run_dir.mkdir(parents=True)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(compose_cfg(["agent=ppo", *COMMON])))
    refused = run_cli(f"resume={run_dir}", cwd=tmp_path, capfd=capfd)
    assert refused.returncode == 2 and "no checkpoint in" in refused.stderr
    assert list((tmp_path / "outputs" / "runs").glob("*/*")) == [run_dir]
    assert list(run_dir.glob("resumes/*/.hydra/overrides.yaml"))


@pytest.mark.slow  # a sweep in a process of its own
def test_ctrl_c_stops_a_sweep_with_130_and_fails_its_trials(tmp_path):
    """The batch's trial that never launched (``n_jobs=2``: two asked at once) stayed RUNNING."""
    args = ["-m", "hparams_search=ppo_optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", "agent=ppo",
            *COMMON, *TINY["ppo"]]  # fmt: skip
    args += ["agent.total_timesteps=200000", "agent.log_interval=1"]
    env = {**os.environ, "BESS_RL_ROOT": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "bess_rl", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 120
    while not list((tmp_path / "outputs" / "sweeps").glob("*/*/progress.csv")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "sweep stopped (trial 0 marked failed)" in out
    assert "trial(s) [1] were asked but not finished when the sweep stopped: marked FAIL" in out
    study = optuna.load_study(study_name="ppo", storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2


@pytest.mark.slow  # three training processes, killed and resumed
def test_a_short_kill_loop_loses_nothing(tmp_path, capfd):
    script = ROOT / "scripts" / "kill_loop.py"
    spec = importlib.util.spec_from_file_location("kill_loop", script)
    kill_loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kill_loop)
    # The script and the uninterrupted run it compares with run in this process: only the runs it kills
    # need processes of their own (others would only repeat the imports).
    straight = tmp_path / "straight"
    straight.mkdir()
    steps = 1280
    assert run_cli(*kill_loop.run_config(steps), cwd=straight, capfd=capfd).returncode == 0
    (straight_run,) = (straight / "outputs" / "runs").glob("*/*")
    # Two kills: one at a random moment, one inside a checkpoint write.
    args = ["--kills", "2", "--steps", str(steps), "--max-delay", "0.05", "--straight", str(straight_run)]
    assert kill_loop.main([*args, "--out", str(tmp_path / "k")]) == 0, capfd.readouterr().out[-3000:]


@pytest.mark.parametrize(
    "args",
    [
        ["agent=nope"],
        ["nosuchkey=1"],
        ["scenario.window_hours=abc"],
        ["hparams_search=nope"],
        ["agent.hparams.max_grad_norm=-1"],
        ["agent.hparams.net_arch=[16"],
        ["agent=sac_schema"],  # a schema is no option of its group
    ],
)
def test_an_override_hydra_cannot_compose_is_one_line(tmp_path, capfd, args):
    proc = run_cli(*args, *COMMON, cwd=tmp_path, capfd=capfd)
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
    assert proc.stderr.count("\n") == 1 and "HYDRA_FULL_ERROR" not in proc.stderr, proc.stderr
    assert "HYDRA_FULL_ERROR" not in os.environ  # set for Hydra's call only
    assert not (tmp_path / "outputs").exists()


def test_help_lists_no_schema_as_an_option(tmp_path, capfd):
    proc = run_cli("--help", cwd=tmp_path, capfd=capfd)
    assert proc.returncode == 0 and "agent: a2c, ppo, sac\n" in proc.stdout and "_schema" not in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["seed=abc"], "seed must be an integer, got 'abc'"),
        (["population.size=0"], "population.size must be >= 1, got 0"),
        (["agent.n_envs=0"], "agent.n_envs must be > 0, got 0"),
        (["population.size=2", "population.gamma=[0.5,7]"], "population.gamma[1] must be a number in (0, 1]"),
        (["agent.algo=os.system"], "agent.algo 'os.system' is not allowed"),  # refused inside the run's lock
    ],
)
def test_a_refused_start_is_one_line_and_leaves_no_run_folder(tmp_path, capfd, args, message):
    proc = run_cli(*args, *COMMON, cwd=tmp_path, capfd=capfd)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not list((tmp_path / "outputs" / "runs").iterdir())


def test_a_sweep_folder_hydra_cannot_create_is_one_line(tmp_path, capfd):
    (tmp_path / "afile").touch()
    proc = run_cli("-m", "seed=0", f"hydra.sweep.dir={tmp_path}/afile/x", *COMMON, cwd=tmp_path, capfd=capfd)
    assert proc.returncode == 2 and proc.stderr == f"error: cannot create {tmp_path}/afile/x (Not a directory)\n"


def test_a_refused_sweep_job_is_one_line_and_keeps_its_job_folder_and_log(tmp_path, capfd):
    proc = run_cli("-m", "seed=abc", *COMMON, cwd=tmp_path, capfd=capfd)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == "error: a job of the sweep was refused: seed must be an integer, got 'abc'"
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    (log,) = sweep.glob("*/*.log")  # the job's folder says why it failed
    assert "seed must be an integer" in log.read_text()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_run_stopped_before_training_says_so_and_leaves_no_folder(tmp_path, capfd, monkeypatch, stop):
    """SIGTERM or SIGHUP while the references are solved ended the process silently; each stop there left
    run_info.json and resolved_config.yaml in a folder neither resume nor evaluate could use."""
    from bess_rl.experiment import train

    def solving(*_args: object) -> None:
        os.kill(os.getpid(), stop)  # the handler raises here, between bytecodes, as it would in the solve
        time.sleep(5)
        raise AssertionError("the signal did not stop the run")

    monkeypatch.setattr(train, "build_references", solving)
    proc = run_cli(*COMMON, "agent=ppo", *TINY["ppo"], cwd=tmp_path, capfd=capfd)
    said = "interrupted" if stop == signal.SIGINT else f"stopped by {stop.name}"
    assert proc.returncode == 128 + stop and "Traceback" not in proc.stderr, proc.stderr
    assert f"{said} before training began: nothing was kept (its folder " in proc.stderr
    assert not list((tmp_path / "outputs" / "runs").iterdir())
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command gave the handlers back


def test_a_run_s_saved_paths_are_absolute(tmp_path, capfd):
    """A relative root (``.``, the default) was saved as given: a tool run from elsewhere solved the references
    again and wrote them into an ``outputs/`` where it ran."""
    proc = run_cli(*COMMON, "agent=ppo", *TINY["ppo"], "paths.root_dir=.", cwd=tmp_path, capfd=capfd)
    assert proc.returncode == 0, proc.stderr
    (saved,) = (tmp_path / "outputs" / "runs").glob("*/*/resolved_config.yaml")
    paths = OmegaConf.load(saved).paths
    assert (paths.root_dir, paths.output_dir) == (str(tmp_path), str(tmp_path / "outputs"))

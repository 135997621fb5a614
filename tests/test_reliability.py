"""Faults: signals mid-training and resume, NaN, CUDA out-of-memory, bad resume requests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from stable_baselines3 import PPO

from bess_rl.experiment import checkpoint
from bess_rl.experiment import train as train_module
from bess_rl.experiment.checkpoint import NumericalError
from bess_rl.experiment.fingerprint import differences, fingerprint
from bess_rl.experiment.train import run
from bess_rl.site.env import PvBessEvEnv
from bess_rl.tools.replay import COMPARED
from tests.helpers import COMMON, TINY, compose_cfg, run_cli

# The signal is sent once progress.csv has its first row (log_every_steps): about a tenth of the way in.
LONG = {
    "sac": ["agent=sac", "agent.total_timesteps=1500", "agent.hparams.learning_starts=100",
            "agent.hparams.gradient_steps=1", "agent.hparams.batch_size=32", "agent.hparams.buffer_size=5000",
            "agent.hparams.net_arch=[32]", "log_every_steps=150"],
    "ppo": ["agent=ppo", "agent.total_timesteps=3200", "agent.hparams.n_steps=64", "agent.hparams.batch_size=32",
            "agent.hparams.n_epochs=2", "agent.hparams.net_arch=[32]", "log_every_steps=320", "eval_every_steps=640"],
}  # fmt: skip


def start(args: list[str], root: Path) -> subprocess.Popen:
    env = {**os.environ, "BESS_RL_ROOT": str(root)}
    return subprocess.Popen(
        [sys.executable, "-m", "bess_rl", *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "outputs" / "runs").glob("*/*") if p.is_dir())


def wait_for_training(root: Path, proc: subprocess.Popen, timeout: float = 90) -> Path:
    """The run folder once progress.csv has rows, i.e. training is under way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        for d in run_dirs(root):
            csv = d / "progress.csv"
            if csv.is_file() and len(csv.read_text().splitlines()) >= 2:
                return d
        time.sleep(0.05)
    raise AssertionError("training never started")


def outcome(run_dir: Path) -> dict[str, float]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: metrics[k] for k in COMPARED} | {"total_timesteps": metrics["total_timesteps"]}


def evaluations(run_dir: Path) -> list[tuple[float, ...]]:
    """The held-out evaluations of progress.csv: the step of each and its scores."""
    rows = pd.read_csv(run_dir / "progress.csv").dropna(subset=["eval/co2_kg"])
    return [tuple(row) for row in rows[["time/total_timesteps", "eval/co2_kg", "eval/mean_reward"]].to_numpy()]


@pytest.mark.slow
@pytest.mark.parametrize(("agent", "sig"), [("ppo", signal.SIGINT), ("sac", signal.SIGTERM)])
def test_signal_checkpoints_and_resume_matches_uninterrupted(tmp_path, agent, sig, capfd):
    """PPO evaluates on the held-out part every 640 steps: a resumed run evaluated off that schedule (its count
    started again at 0), so its evaluations and best model were not the uninterrupted run's."""
    args = [*LONG[agent], *COMMON]
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    proc = start(args, interrupted)
    run_dir = wait_for_training(interrupted, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], out
    assert f"interrupted by {sig.name}" in out and "resume with: python -m bess_rl resume=" in out
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["agent"] == agent and 0 < state["num_timesteps"] < int(args[1].split("=")[1])
    assert not (run_dir / "metrics.json").exists()

    resumed = run_cli(f"resume={run_dir}", "progress_bar=false", cwd=interrupted, capfd=capfd)
    assert resumed.returncode == 0, resumed.stderr
    assert not (run_dir / "checkpoint").exists()  # finished: the final model replaces it
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["resumed"][0]["from_step"] == state["num_timesteps"]

    straight = tmp_path / "straight"
    straight.mkdir()
    assert run_cli(*args, cwd=straight, capfd=capfd).returncode == 0
    assert outcome(run_dir) == outcome(run_dirs(straight)[0])
    if agent == "ppo":
        assert [e[0] for e in evaluations(run_dir)] == [640, 1280, 1920, 2560, 3200]
        assert evaluations(run_dir) == evaluations(run_dirs(straight)[0])


def test_a_dropped_terminal_checkpoints_like_sigterm():
    """SIGHUP (an ssh session or terminal that went away) ended a run at once, with nothing kept; under ``nohup``
    (SIGHUP ignored) it stays ignored."""
    stop = checkpoint.StopRequest()
    previous = signal.getsignal(signal.SIGHUP)
    try:
        stop.install()
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.requested == "SIGHUP" and checkpoint.SIGNAL_EXIT_CODES["SIGHUP"] == 129
        stop.restore()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        ignored = checkpoint.StopRequest()
        ignored.install()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        ignored.restore()
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.slow
def test_resume_refusals(tmp_path, capfd):
    not_a_run = run_cli(f"resume={tmp_path}", cwd=tmp_path, capfd=capfd)
    assert not_a_run.returncode == 2 and "is not a bess_rl run folder" in not_a_run.stderr
    missing = run_cli(f"resume={tmp_path / 'nope'}", cwd=tmp_path, capfd=capfd)
    assert missing.returncode == 2 and f"{tmp_path / 'nope'} does not exist" in missing.stderr

    assert run_cli(*TINY["ppo"], "agent=ppo", *COMMON, cwd=tmp_path, capfd=capfd).returncode == 0
    finished = run_dirs(tmp_path)[0]
    done = run_cli(f"resume={finished}", cwd=tmp_path, capfd=capfd)
    assert done.returncode == 2 and "no checkpoint in" in done.stderr

    (finished / "checkpoint").mkdir()
    (finished / "checkpoint" / "state.json").write_text(json.dumps({"agent": "ppo", "num_timesteps": 10}))
    other = run_cli(f"resume={finished}", "agent=sac", cwd=tmp_path, capfd=capfd)
    assert other.returncode == 2 and "holds a ppo checkpoint; it cannot be resumed as agent=sac" in other.stderr
    extra = run_cli(f"resume={finished}", "seed=3", cwd=tmp_path, capfd=capfd)
    assert extra.returncode == 2 and "drop these overrides: seed=3" in extra.stderr
    for proc in (not_a_run, done, other, extra):
        assert "Traceback" not in proc.stderr


def test_nan_observation_stops_the_run_naming_agent_and_step(tmp_path, monkeypatch):
    real_step = PvBessEvEnv.step
    calls = {"n": 0}

    def poisoned(self, action):
        obs, *rest = real_step(self, action)
        calls["n"] += self.random_start  # count training-env steps only (the references use another env)
        if calls["n"] > 40:
            obs = np.full_like(obs, np.nan)
        return (obs, *rest)

    monkeypatch.setattr(PvBessEvEnv, "step", poisoned)
    cfg = compose_cfg(["agent=ppo", *COMMON, *TINY["ppo"]])
    with pytest.raises(NumericalError, match=r"ppo: non-finite observation at step 41"):
        run(cfg, tmp_path)


def test_nan_weights_stop_the_run(tmp_path, monkeypatch):
    real_train = PPO.train

    def exploding(self):
        real_train(self)
        with torch.no_grad():
            next(self.policy.parameters()).fill_(float("nan"))

    monkeypatch.setattr(PPO, "train", exploding)
    cfg = compose_cfg(["agent=ppo", *COMMON, *TINY["ppo"], "agent.total_timesteps=256"])
    with pytest.raises(NumericalError, match=r"ppo: .* non-finite at step 64"):
        run(cfg, tmp_path)


def test_out_of_memory_retries_once_with_half_the_batch(tmp_path, monkeypatch):
    real_learn = train_module.learn
    seen = []

    def oom_once(cfg, model, run_dir, resume):
        seen.append(model.batch_size)
        if len(seen) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_learn(cfg, model, run_dir, resume)

    monkeypatch.setattr(train_module, "learn", oom_once)
    cfg = compose_cfg(["agent=ppo", *COMMON, *TINY["ppo"]])
    metrics = run(cfg, tmp_path)
    assert seen == [32, 16]
    record = json.loads((tmp_path / "oom_retry.json").read_text())
    assert record["batch_size_from"] == 32 and record["batch_size_to"] == 16
    assert "Tried to allocate" in record["error"]
    assert "batch_size: 16" in (tmp_path / "resolved_config.yaml").read_text()
    assert json.loads((tmp_path / "run_info.json").read_text())["oom_retry"] == record
    assert metrics["total_timesteps"] >= 64


def test_out_of_memory_twice_is_an_error(tmp_path, monkeypatch):
    def always_oom(cfg, model, run_dir, resume):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train_module, "learn", always_oom)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run(compose_cfg(["agent=ppo", *COMMON, *TINY["ppo"]]), tmp_path)


@pytest.mark.slow
def test_malformed_csv_is_one_clear_line(tmp_path, capfd):
    bad = tmp_path / "hourly.csv"
    bad.write_text('pv_kw_per_kwp,load_kw\n0.1,"1000\n')
    proc = run_cli(f"scenario.hourly_path={bad}", *COMMON, cwd=tmp_path, capfd=capfd)
    assert proc.returncode == 2
    assert "cannot be read as csv" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_buffer_over_the_memory_budget_is_refused_before_training(tmp_path, capfd):
    proc = run_cli("agent=sac", "preset=before", "hardware.memory_budget_gb=0.5", *COMMON, cwd=tmp_path, capfd=capfd)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "agent.hparams.buffer_size=2500000" in proc.stderr
    assert not list((tmp_path / "outputs" / "runs").glob("*/*/progress.csv"))


def test_a_changed_evaluation_file_refuses_the_resume_and_an_older_checkpoint_still_resumes(tmp_path):
    """The held-out scores are part of the run: its files are hashed as the training files are; a checkpoint
    written before they were (no ``eval_scenario_files``) resumes on the rest."""
    files = {"hourly_path": tmp_path / "train.csv", "eval_hourly_path": tmp_path / "held_out.csv"}
    for path in files.values():
        path.write_text("pv_kw_per_kwp,load_kw\n0.5,1000\n")
    cfg = compose_cfg([f"scenario.{key}={path}" for key, path in files.items()])
    saved = fingerprint(cfg)
    files["eval_hourly_path"].write_text("pv_kw_per_kwp,load_kw\n0.2,1000\n")
    now = fingerprint(cfg)
    assert differences(saved, now) == [f"scenario file {files['eval_hourly_path']} changed"]
    older = {key: value for key, value in saved.items() if key != "eval_scenario_files"}
    assert differences(older, now) == []
    files["hourly_path"].write_text("pv_kw_per_kwp,load_kw\n0.2,1000\n")
    assert differences(older, fingerprint(cfg)) == [f"scenario file {files['hourly_path']} changed"]

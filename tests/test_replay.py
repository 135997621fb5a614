"""``python -m bess_rl.replay``: an interrupted replay ends in one line and leaves no unfinished replay folder."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bess_rl.experiment import train
from bess_rl.experiment.checkpoint import TrainingInterrupted
from bess_rl.experiment.run_dir import RunDir, atomic_write_text, resume_command, write_json
from bess_rl.tools import replay
from tests.helpers import COMMON, TINY, compose_cfg


def run_folder(path: Path, overrides: list[str]) -> Path:
    """A run folder as replay reads it (its config and metrics), without training the original."""
    atomic_write_text(RunDir(path).config, OmegaConf.to_yaml(compose_cfg(overrides), resolve=True))
    write_json(RunDir(path).metrics, {})
    return path


def replay_folders(run_dir: Path) -> list[Path]:
    return sorted(RunDir(run_dir).replays.glob("*"))


@pytest.mark.parametrize(
    ("stop", "code"),
    [(KeyboardInterrupt(), 130), (TrainingInterrupted("SIGTERM", 64, Path("checkpoint")), 143)],
    ids=["ctrl-c", "signal-caught-by-training"],
)
def test_interrupted_replay_removes_its_folder_in_one_line(tmp_path, monkeypatch, capsys, stop, code):
    run_dir = run_folder(tmp_path, ["agent=ppo", *TINY["ppo"], *COMMON])
    seen: list[set[str]] = []

    def interrupted_learn(*args: object) -> None:
        (folder,) = replay_folders(run_dir)
        seen.append({p.name for p in folder.iterdir()})
        raise stop

    monkeypatch.setattr(train, "learn", interrupted_learn)
    try:
        assert replay.main([str(run_dir)]) == code
    except (KeyboardInterrupt, TrainingInterrupted):  # caught here, or a KeyboardInterrupt would end pytest
        pytest.fail("the interruption escaped main as a traceback")
    assert {"resolved_config.yaml", "run_info.json", ".lock"} <= seen[0]  # what an interrupted replay left
    assert replay_folders(run_dir) == []
    assert capsys.readouterr().err.strip() == (
        f"interrupted: no replay kept; run python -m bess_rl.replay {run_dir} again"
    )


@pytest.mark.slow  # a process of its own, for a real SIGINT
def test_ctrl_c_of_a_replay_process_exits_130_without_a_traceback(tmp_path):
    long_ppo = ["agent=ppo", *TINY["ppo"], "agent.total_timesteps=20000", *COMMON]  # trains for many seconds
    run_dir = run_folder(tmp_path / "run", long_ppo)
    env = {**os.environ, "BESS_RL_ROOT": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bess_rl.replay", str(run_dir)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not replay_folders(run_dir):  # inside the replay's run, past the imports
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and err.splitlines()[-1].startswith("interrupted: no replay kept"), err
    assert replay_folders(run_dir) == []


def test_a_replay_says_what_it_retrains_and_how_long_it_should_take(tmp_path, monkeypatch, capsys):
    run_dir = run_folder(tmp_path, ["agent=ppo", *TINY["ppo"], *COMMON])
    write_json(RunDir(run_dir).metrics, dict.fromkeys(replay.COMPARED, 0.0))
    root, level = logging.getLogger(), logging.getLogger().level
    monkeypatch.setattr(root, "handlers", [])  # as in a process of its own: no handler until main adds one
    try:
        assert replay.main([str(run_dir)]) == 1  # differs from the made-up original
    finally:
        root.setLevel(level)
    err = capsys.readouterr().err
    assert f"replaying {run_dir}: retraining ppo (after preset, seed 42) for 64 steps on cpu" in err
    assert "estimated wall time" in err


@pytest.mark.parametrize("terminal", [False, True])
def test_a_replay_shows_its_progress_bar_on_a_terminal_only(tmp_path, monkeypatch, terminal):
    run_dir = run_folder(tmp_path, ["agent=ppo", *TINY["ppo"], *COMMON])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    assert replay.load_run_config(run_dir).progress_bar is terminal


def test_a_killed_run_is_called_unfinished_with_its_resume_command(tmp_path, capsys):
    """As evaluate and export say it: "metrics.json is missing" did not tell that a resume finishes the run."""
    run_dir = run_folder(tmp_path / "killed run é", ["agent=ppo", *TINY["ppo"], *COMMON])
    RunDir(run_dir).metrics.unlink()
    RunDir(run_dir).checkpoint.mkdir()
    (RunDir(run_dir).checkpoint / "state.json").write_text("{}")  # what a complete checkpoint has
    assert replay.main([str(run_dir)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {run_dir} is unfinished (interrupted, no model.zip yet): resume with: {resume_command(run_dir)}"
    )
    assert not RunDir(run_dir).replays.exists()

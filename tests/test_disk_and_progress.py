"""A write into the run folder that fails (a full disk, the folder deleted) and the progress shown while training."""

from __future__ import annotations

import errno
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from stable_baselines3 import SAC
from stable_baselines3.common import base_class
from stable_baselines3.common.logger import CSVOutputFormat, Logger
from stable_baselines3.common.vec_env import DummyVecEnv
from tensorboard.summary.writer.record_writer import RecordWriter

from bess_rl.experiment import checkpoint
from bess_rl.experiment import run_dir as run_dir_module
from bess_rl.experiment.evaluation import LogEverySteps, check_model_zip, held_out_eval
from bess_rl.experiment.run_dir import RunDir, RunDirError, resume_command
from bess_rl.experiment.train import ProgressLog, progress_bar, run
from bess_rl.site.env import PvBessEvEnv
from tests.helpers import COMMON, TINY, compose_cfg, run_cli

# Rows every 10 steps, a checkpoint every 10, an evaluation at step 30 of 60.
SAC_RUN = [*COMMON, "agent=sac", *TINY["sac"], "log_every_steps=10", "checkpoint_every_steps=10", "eval_every_steps=30"]
FULL = OSError(errno.ENOSPC, "No space left on device")


def full_once_checkpointed(owner: type, name: str) -> Callable[[pytest.MonkeyPatch, Path], None]:
    """Make ``owner.name`` (a write) find the disk full once the run folder holds a checkpoint."""
    real = getattr(owner, name)

    def fail(mp: pytest.MonkeyPatch, folder: Path) -> None:
        def write(*args, **kwargs):
            if checkpoint.current(folder / "checkpoint") is not None:
                raise FULL
            return real(*args, **kwargs)

        mp.setattr(owner, name, write)

    return fail


def half_zip(name: str, folder: Path) -> Callable:
    """SB3's zip writer that, for a zip named ``name`` (or its temporary) in the run folder ``folder`` (not in its
    checkpoint), writes half a file and then finds the disk full: what a zip cut short leaves."""
    real = base_class.save_to_zip_file

    def save(path, *args, **kwargs):
        target = Path(path)
        if target.parent == folder and name.removesuffix(".zip") in target.name:
            target.with_suffix(".zip").write_bytes(b"half a zip")
            raise FULL
        return real(path, *args, **kwargs)

    return save


def fail_provenance(mp: pytest.MonkeyPatch, folder: Path) -> None:
    """The 24 kB disk: resolved_config.yaml, the run's first file, cannot be written."""
    real = run_dir_module.atomic_write_bytes

    def write(path: Path, data: bytes) -> Path:
        if path.name == "resolved_config.yaml":
            raise FULL
        return real(path, data)

    mp.setattr(run_dir_module, "atomic_write_bytes", write)


CASES = {
    # what fails: (the failure, the file named, what the line says is kept)
    "resolved_config.yaml": (fail_provenance, "resolved_config.yaml", "no checkpoint to resume from"),
    "progress.csv": (full_once_checkpointed(CSVOutputFormat, "write"), "progress.csv", "checkpoint"),
    # TensorBoard writes in a thread of its own (it printed its traceback); the training thread's next write raises
    # its error. It names its file itself.
    "tensorboard": (full_once_checkpointed(RecordWriter, "write"), "events.out.tfevents.*", "checkpoint"),
    "best_model.zip": (lambda mp, run: mp.setattr(base_class, "save_to_zip_file", half_zip("best_model.zip", run)),
                       "best_model.zip", "checkpoint"),
}  # fmt: skip


@pytest.mark.parametrize("what", CASES)
def test_a_full_disk_is_one_line_saying_what_is_kept_and_leaves_no_partial_file(what, tmp_path, monkeypatch, capfd):
    fail, named, kept = CASES[what]
    fail(monkeypatch, tmp_path)
    with pytest.raises(RunDirError) as err:
        run(compose_cfg(SAC_RUN), tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write {tmp_path / named}: No space left on device; ")
    found = checkpoint.current(tmp_path / "checkpoint")
    if kept == "checkpoint":
        step = checkpoint.read_state(found)["num_timesteps"]
        assert message.endswith(f"the last checkpoint (step {step}) is kept: free space and {resume_command(tmp_path)}")
    else:
        assert found is None and kept in message
    if (tmp_path / "best_model.zip").exists():  # an evaluation before the failure: whole, not half of one
        check_model_zip(tmp_path / "best_model.zip")
    assert [p.name for p in tmp_path.rglob(".*")] == [".lock"]  # no temporary left
    assert "Exception in thread" not in capfd.readouterr().err


def test_a_run_folder_named_like_torch_s_non_finite_error_still_gets_the_write_error(tmp_path, monkeypatch):
    out = tmp_path / "distribution"  # what told torch's refusal of NaN parameters apart
    monkeypatch.setattr(base_class, "save_to_zip_file", half_zip("best_model.zip", out))
    with pytest.raises(RunDirError, match="^cannot write .*best_model.zip: No space left on device"):
        run(compose_cfg(SAC_RUN), out)


def test_a_full_disk_at_model_zip_keeps_the_trained_checkpoint_and_the_resume_finishes(tmp_path, monkeypatch, capfd):
    """The PPO run of a 200 kB disk: model.zip is the first write after training; the resume the line names writes
    it once there is space."""
    out = tmp_path / "run"
    ppo = [*COMMON, "agent=ppo", *TINY["ppo"], f"hydra.run.dir={out}"]
    monkeypatch.setattr(base_class, "save_to_zip_file", half_zip("model.zip", out))
    failed = run_cli(*ppo, cwd=tmp_path, capfd=capfd)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    [line] = [line for line in failed.stderr.splitlines() if "[ERROR]" in line]
    assert line.endswith(
        f"cannot write {out / 'model.zip'}: No space left on device; the last checkpoint (step 64) is kept: "
        f"free space and {resume_command(out)}"
    )
    assert sorted(p.name for p in out.glob(".*")) == [".hydra", ".lock"] and not (out / "model.zip").exists()
    monkeypatch.undo()
    resumed = run_cli(f"resume={out}", cwd=tmp_path, capfd=capfd)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "model.zip").is_file() and (out / "metrics.json").is_file()


def test_a_run_folder_deleted_while_training_is_one_line(tmp_path, monkeypatch, capfd):
    out = tmp_path / "run"
    real = LogEverySteps._on_rollout_end

    def delete_then_log(self: LogEverySteps) -> None:
        if self.num_timesteps >= 20 and out.exists():
            shutil.rmtree(out)
        real(self)

    monkeypatch.setattr(LogEverySteps, "_on_rollout_end", delete_then_log)
    with pytest.raises(RunDirError, match=f"^the run folder {re.escape(str(out))} disappeared while training"):
        run(compose_cfg([*SAC_RUN, "checkpoint_every_steps=null"]), out)
    assert "Exception in thread" not in capfd.readouterr().err


def test_a_failed_save_of_a_new_best_model_keeps_the_earlier_one(tmp_path, monkeypatch):
    """Before: SB3 wrote best_model.zip in place, and a full disk left half of one over the earlier best."""
    cfg = compose_cfg([*COMMON, "agent=sac", "eval_every_steps=10"])
    (tmp_path / "best_model.zip").write_bytes(b"the earlier best")
    [evaluation] = held_out_eval(cfg, tmp_path)
    env = DummyVecEnv([lambda: PvBessEvEnv(forecast_hours=cfg.scenario.forecast_hours)])
    model = SAC("MlpPolicy", env, policy_kwargs={"net_arch": [8]}, seed=0)
    model.set_logger(Logger(None, []))
    evaluation.init_callback(model)
    model.num_timesteps = 10  # the evaluation is due: its reward is the first, so a new best
    monkeypatch.setattr(base_class, "save_to_zip_file", half_zip("best_model.zip", tmp_path))
    with pytest.raises(RunDirError, match="best_model.zip: No space left on device"):
        evaluation.on_step()
    assert RunDir(tmp_path).best_model.read_bytes() == b"the earlier best"
    assert list(tmp_path.glob(".*")) == []


def test_progress_off_a_terminal_is_log_lines_on_stderr_never_a_bar_on_stdout(tmp_path, monkeypatch, capfd, caplog):
    """Under nohup or sbatch (stderr a file) rich drew nothing while training and printed the bar at the end, on
    stdout, which holds only the results."""
    monkeypatch.setenv("TTY_INTERACTIVE", "0")  # what rich reads from a file, even under pytest -s
    caplog.set_level(logging.INFO, logger="bess_rl")
    run(compose_cfg([*COMMON, "agent=sac", *TINY["sac"], "progress_bar=true"]), tmp_path)
    out = capfd.readouterr().out
    assert "60/60" not in out and "━" not in out
    assert any(re.fullmatch(r"sac: 60/60 steps \(100 %\) in 00:\d\d, [\d,]+ steps/s", m) for m in caplog.messages)


def test_a_progress_line_waits_for_both_a_tenth_of_the_steps_and_ten_seconds(monkeypatch, caplog):
    clock = {"t": 1000.0}
    monkeypatch.setattr("tqdm.std.time", lambda: clock["t"])
    caplog.set_level(logging.INFO, logger="bess_rl")
    bar = ProgressLog(1000, "sac")
    for at, n in [(5, 300), (12, 320), (40, 370), (45, 430), (50, 1000)]:  # seconds from the start, steps done
        clock["t"] = 1000.0 + at
        bar.update(n - bar.n)
    bar.close()
    assert [m.split(", ")[0] for m in caplog.messages] == [
        # 30 % at 5 s: not yet; 12 s
        "sac: 320/1,000 steps (32 %)",
        # 5 % more at 40 s: not yet; 11 % at 45 s
        "sac: 430/1,000 steps (43 %)",
        # 57 % more 5 s later: not yet, but the end is always said
        "sac: 1,000/1,000 steps (100 %) in 00:50",
    ]


def test_a_stopped_progress_log_ends_at_the_run_s_error_not_at_a_progress_line(caplog):
    caplog.set_level(logging.INFO, logger="bess_rl")
    bar = ProgressLog(100, "sac")
    bar.update(40)
    bar.close()
    assert caplog.messages == []


@pytest.mark.filterwarnings("ignore::tqdm.TqdmExperimentalWarning")  # SB3 silences it as it imports tqdm.rich
def test_on_a_terminal_the_bar_is_rich_s_on_stderr(monkeypatch, capsys):
    monkeypatch.setenv("TTY_INTERACTIVE", "1")  # what rich reads from a terminal
    bar = progress_bar(10, "sac")
    bar.update(10)
    bar.close()
    out, err = capsys.readouterr()
    assert out == "" and "10/10" in err and "━" in err

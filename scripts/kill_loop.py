"""SIGKILL a training run again and again, resume it each time, and check that nothing was lost.

Why: a checkpoint is only trustworthy if no kill, at any moment (checkpoint writes included), leaves a
run that cannot resume or resumes differently. This kills ``python -m bess_rl`` at random times after
its first checkpoint exists, checks after each kill that a complete checkpoint is there, resumes, and
at the end compares the metrics with an uninterrupted run of the same config. Every other kill is
timed to land inside a checkpoint write (as soon as ``checkpoint.tmp`` appears).

    python scripts/kill_loop.py --kills 30 --out /tmp/kill_loop

``--straight RUN_DIR`` compares with a finished uninterrupted run of the same config instead of starting
one (the test suite makes it in its own process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bess_rl.experiment import checkpoint  # noqa: E402
from bess_rl.tools.replay import COMPARED  # noqa: E402

# PPO checkpointing every rollout (64 steps): a large share of the run time is checkpoint writes.
CONFIG = [
    "agent=ppo", "agent.total_timesteps=25600", "agent.hparams.n_steps=64", "agent.hparams.batch_size=32",
    "agent.hparams.n_epochs=2", "agent.hparams.net_arch=[32]", "agent.log_interval=1", "checkpoint_every_steps=64",
    "scenario.window_hours=168", "progress_bar=false", "plot=false",
]  # fmt: skip


def run_config(steps: int) -> list[str]:
    """The overrides of the killed run (and of the uninterrupted one it is compared with)."""
    return [*CONFIG, f"agent.total_timesteps={steps}"]


def start(args: list[str], root: Path) -> subprocess.Popen:
    """``python -m bess_rl *args`` with its outputs under ``root``; stderr to ``root/stderr.log``."""
    env = {**os.environ, "BESS_RL_ROOT": str(root)}
    with open(root / "stderr.log", "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "bess_rl", *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip


def stderr_tail(root: Path) -> str:
    return (root / "stderr.log").read_text(errors="replace")[-3000:]


def checkpointed_step(run_dir: Path) -> int:
    """The step of the complete checkpoint, -1 while there is none (or while a swap renames it)."""
    try:
        return int(checkpoint.read_state(run_dir / "checkpoint")["num_timesteps"])
    except (ValueError, OSError):
        return -1


def outcome(run_dir: Path) -> dict[str, float]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: metrics[k] for k in (*COMPARED, "total_timesteps")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bess_rl_kill_loop"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=25600, help="agent.total_timesteps of the killed run")
    parser.add_argument("--max-delay", type=float, default=1.0, help="seconds after a new checkpoint, at most")
    parser.add_argument("--straight", type=Path, default=None, help="a finished run of the same config to compare with")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    straight_root, root = args.out / "straight", args.out / "killed"
    config = run_config(args.steps)
    if args.straight is None:
        straight_root.mkdir(parents=True, exist_ok=False)
        reference = start(config, straight_root)  # the uninterrupted run, beside the killed one
    else:
        reference = None
        asked = args.straight / ".hydra" / "overrides.yaml"
        finished = (args.straight / "metrics.json").is_file() and asked.is_file()
        if not finished or list(OmegaConf.load(asked)) != config:
            raise SystemExit(f"--straight {args.straight}: not a finished run of {' '.join(config)}")
    root.mkdir(parents=True, exist_ok=False)
    proc = start(config, root)
    while not list((root / "outputs" / "runs").glob("*/*")):
        time.sleep(0.05)
    run_dir = next((root / "outputs" / "runs").glob("*/*"))
    kills, lost, mid_swap, went_back, steps, found = 0, 0, 0, 0, [], run_dir
    while kills < args.kills:
        deadline, previous = time.monotonic() + 180, steps[-1] if steps else -1
        while checkpointed_step(run_dir) <= previous:  # a new checkpoint: this process is training
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the run stopped or stalled before kill {kills + 1}: {stderr_tail(root)}")
            time.sleep(0.01)
        if kills % 2:  # every other kill lands inside a checkpoint write: as soon as checkpoint.tmp appears
            while not (run_dir / "checkpoint.tmp").exists() and proc.poll() is None:
                time.sleep(0.0005)
            time.sleep(rng.uniform(0.0, 0.03))
        else:
            time.sleep(rng.uniform(0.0, args.max_delay))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        mid_swap += any(p.exists() for p in (run_dir / "checkpoint.tmp", run_dir / "checkpoint.old"))
        found = checkpoint.current(run_dir / "checkpoint")
        if found is None:
            lost += not (run_dir / "metrics.json").is_file()  # with metrics.json the run had finished
            break
        steps.append(checkpoint.read_state(run_dir / "checkpoint")["num_timesteps"])
        went_back += len(steps) > 1 and steps[-1] < steps[-2]
        print(f"kill {kills}: checkpoint at step {steps[-1]} ({found.name})", flush=True)
        proc = start([f"resume={run_dir}"], root)
    rc = proc.wait() if found is not None else 0
    err = stderr_tail(root)
    if reference is not None:
        assert reference.wait() == 0, stderr_tail(straight_root)
    straight = outcome(args.straight or next((straight_root / "outputs" / "runs").glob("*/*")))
    exact = rc == 0 and outcome(run_dir) == straight
    result = {
        "kills": kills,
        "lost_checkpoints": lost,
        "kills_mid_checkpoint_write": mid_swap,
        "checkpoints_older_than_the_previous_kills": went_back,
        "checkpoint_steps_after_kills": steps,
        "final_exit_code": rc,
        "resumed_equals_uninterrupted": exact,
        "straight": straight,
        "resumed": outcome(run_dir) if rc == 0 else err[-2000:],
    }
    print(json.dumps(result, indent=2))
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if exact and not lost and not went_back and kills == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())

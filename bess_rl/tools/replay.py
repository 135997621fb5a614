"""``python -m bess_rl.replay <run dir>``: rerun a run from its saved config, on CPU, and compare.

Why: a result is only trusted if it can be reproduced. The replay trains again from the run's
resolved config and seed on the CPU and reports every outcome metric that differs.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig

from bess_rl.experiment.checkpoint import TrainingInterrupted
from bess_rl.experiment.errors import USER_ERRORS, interrupted
from bess_rl.experiment.evaluation import refuse_unfinished
from bess_rl.experiment.run_dir import RunDir, RunDirError, read_json
from bess_rl.experiment.train import run

log = logging.getLogger(__name__)

# Outcomes that must replay exactly; timings and memory are measurements, not outcomes.
COMPARED = ("co2_kg", "co2_reduction_pct", "lp_gap_closed_pct", "ev_unmet_kwh", "ev_served_kwh", "grid_import_kwh")


def load_run_config(run_dir: Path) -> DictConfig:
    """The run's saved config, moved to the CPU, with a progress bar where stderr is a terminal to show it."""
    cfg = RunDir(run_dir).load_config()
    if cfg.population.size > 1:
        raise RunDirError(f"{run_dir} is a population run folder: replay one member's, {run_dir}/member_<i>")
    cfg.hardware.device = "cpu"
    cfg.agent.device = "cpu"
    cfg.progress_bar = sys.stderr.isatty()
    return cfg


def compare(original: dict, replayed: dict, rel: float = 1e-9) -> list[str]:
    """Lines naming each outcome metric that differs beyond ``rel``."""
    diffs = []
    for key in COMPARED:
        a, b = float(original[key]), float(replayed[key])
        if abs(a - b) > rel * max(abs(a), abs(b), 1.0):
            diffs.append(f"{key}: original {a!r} replay {b!r}")
    return diffs


def original_metrics(run_dir: Path) -> dict:
    """The metrics the replay must reproduce; a killed run has none yet, and is told how to finish, as evaluate
    and export tell it (a complete checkpoint, ``checkpoint.current``, is what ``resume=`` continues from)."""
    rd = RunDir(run_dir)
    if not rd.metrics.is_file():  # killed between the model and the metrics: name the one missing
        refuse_unfinished(run_dir, rd.metrics if rd.model.is_file() else rd.model)
    return read_json(rd.metrics)


def replay(run_dir: Path) -> tuple[dict, list[str]]:
    cfg = load_run_config(run_dir)
    original = original_metrics(run_dir)
    out = RunDir(run_dir).replays / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    log.info(
        "replaying %s: retraining %s (%s preset, seed %s) for %d steps on cpu into %s",
        run_dir, cfg.agent.name, cfg.preset.name, cfg.seed, cfg.agent.total_timesteps, out,
    )  # fmt: skip
    try:
        replayed = run(cfg, out)
    except (KeyboardInterrupt, TrainingInterrupted):
        # Unlike a training run's checkpoint, half a replay is worth nothing: it compares no outcome.
        shutil.rmtree(out, ignore_errors=True)
        raise
    return replayed, compare(original, replayed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bess_rl.replay", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    # No Hydra here to configure logging: without a handler the retraining's estimate and warnings are lost.
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s", stream=sys.stderr
    )
    try:
        replayed, diffs = replay(args.run_dir)
    except (*USER_ERRORS, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, TrainingInterrupted) as exc:
        again = f"no replay kept; run python -m bess_rl.replay {args.run_dir} again"
        return interrupted(again, exc.signame if isinstance(exc, TrainingInterrupted) else "SIGINT")
    if diffs:
        print("replay DIFFERS from the original run:\n  " + "\n  ".join(diffs))
        return 1
    print(f"replay matches: CO2 {replayed['co2_kg']:,.1f} kg, reduction {replayed['co2_reduction_pct']:.4f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

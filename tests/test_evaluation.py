"""Held-out scoring: the evaluation part beside the training part, curves by timesteps, degenerate flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bess_rl.baselines.episode import run_episode
from bess_rl.baselines.references import compute_references
from bess_rl.baselines.rules import uncontrolled
from bess_rl.experiment.build import build_scenario
from bess_rl.experiment.evaluation import EVAL_KEYS, degenerate, has_eval_part
from bess_rl.experiment.run_dir import RunDir
from bess_rl.experiment.train import run
from tests.helpers import COMMON, TINY, compose_cfg, small_env


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny PPO run of the default config (held-out Iquitos year), evaluated every 32 steps."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_cfg(["agent=ppo", *TINY["ppo"], *COMMON, "eval_every_steps=32", "log_every_steps=32"])
    return out, run(cfg, out)


def test_default_run_logs_held_out_curves_to_tensorboard_and_progress(ppo_run):
    out, metrics = ppo_run
    events = EventAccumulator(str(next(out.glob("events.out.tfevents.*"))))
    events.Reload()
    scalars = events.Tags()["scalars"]
    counts = {key: len(events.Scalars(key)) for key in EVAL_KEYS}
    assert counts == dict.fromkeys(EVAL_KEYS, 2), scalars  # evaluations at 32 and 64 timesteps
    assert [e.step for e in events.Scalars("eval/penalised_reduction_pct")] == [32, 64]
    progress = pd.read_csv(RunDir(out).progress)
    assert progress["eval/co2_kg"].notna().sum() == 2 and len(progress) >= 3  # eval rows and timestep rows
    assert RunDir(out).best_model.is_file() and metrics["best_model"]["timesteps"] in (32, 64)


def test_metrics_hold_the_held_out_part_and_the_training_part_beside_it(ppo_run):
    _, metrics = ppo_run
    assert metrics["held_out"] is True and metrics["seed"] == 42
    train = metrics["train_part"]
    assert train["references"]["uncontrolled"]["co2_kg"] != metrics["references"]["uncontrolled"]["co2_kg"]
    assert {"co2_reduction_pct", "penalised_reduction_pct"} <= set(train)


def test_the_default_scenario_declares_a_different_evaluation_year():
    cfg = compose_cfg(COMMON)
    assert has_eval_part(cfg.scenario) and not has_eval_part(compose_cfg(["scenario.eval_data=null"]).scenario)
    train, held = build_scenario(cfg.scenario, "train"), build_scenario(cfg.scenario, "eval")
    assert train.hours == held.hours == 168 and not np.allclose(train.pv_kw_per_kwp, held.pv_kw_per_kwp)


def test_uncontrolled_charging_is_flagged_degenerate():
    env = small_env()
    refs = compute_references(env)
    flags = degenerate(run_episode(env, uncontrolled), refs, env)
    assert flags == ["same as uncontrolled charging"]
    idle = run_episode(env, lambda e, obs: np.array([0.0, -1.0], np.float32))  # no battery, no EV charging
    flags = degenerate(idle, refs, env)
    assert flags[0] == "battery never used" and flags[1].startswith("EV energy left unmet")

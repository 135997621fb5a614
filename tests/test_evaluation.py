"""Held-out scoring (the training part beside it, curves by timesteps, degenerate flags), evaluate, export."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bess_rl.baselines.episode import run_episode
from bess_rl.baselines.references import compute_references, degenerate
from bess_rl.baselines.rules import RuleBased, uncontrolled
from bess_rl.experiment.build import build_scenario, build_site, make_env
from bess_rl.experiment.evaluation import EVAL_KEYS, has_eval_part, load_trained, score
from bess_rl.experiment.run_dir import RunDir
from bess_rl.experiment.train import run
from bess_rl.site.env import PvBessEvEnv
from bess_rl.tools.evaluate import main as evaluate_main
from bess_rl.tools.export import main as export_main
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
    base, pen = refs.table()["uncontrolled"], env.site.unmet_penalty_kg_per_kwh
    flags = degenerate(score(run_episode(env, uncontrolled), refs, pen), base, env.episode_hours)
    assert flags == ["same as uncontrolled charging"]
    idle = run_episode(env, lambda e, obs: np.array([0.0, -1.0], np.float32))  # no battery, no EV charging
    flags = degenerate(score(idle, refs, pen), base, idle.hours)
    assert flags[0] == "battery never used" and flags[1].startswith("EV energy left unmet")
    assert degenerate(score(run_episode(env, RuleBased()), refs, pen), base, env.episode_hours) == []


def test_penalised_reduction_is_against_uncontrolled_charging_s_own_penalised_kg():
    """Uncontrolled charging that leaves EV energy unmet scores 0 % on both figures, not minus its penalty."""
    env = small_env()
    refs = compute_references(env)
    pen = env.site.unmet_penalty_kg_per_kwh
    short = dataclasses.replace(refs.uncontrolled, ev_unmet_kwh=refs.uncontrolled.ev_unmet_kwh + 50.0)
    refs = dataclasses.replace(refs, uncontrolled=short)
    scored = score(short, refs, pen)
    assert scored["co2_reduction_pct"] == scored["penalised_reduction_pct"] == 0.0
    rule = run_episode(env, RuleBased())
    base = short.co2_kg + pen * short.ev_unmet_kwh
    expected = 100 * (base - rule.co2_kg - pen * rule.ev_unmet_kwh) / base
    assert score(rule, refs, pen)["penalised_reduction_pct"] == pytest.approx(expected)


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sac")
    run(compose_cfg(["agent=sac", *TINY["sac"], *COMMON, "eval_every_steps=null"]), out)
    return out


def held_out_observations(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Observations of the held-out episode the model's own ``predict(deterministic=True)`` drives, and its actions."""
    model, cfg = load_trained(run_dir)
    env = make_env(build_scenario(cfg.scenario, "eval"), build_site(cfg.site), cfg.scenario, training=False)
    observations, actions = [], []
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        action = model.predict(obs, deterministic=True)[0]
        observations.append(obs)
        actions.append(action)
        obs, _, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
    return np.stack(observations), np.stack(actions)


@pytest.mark.parametrize("which", ["ppo", "sac"])
def test_exported_policy_gives_the_actions_predict_gives(which, ppo_run, sac_run):
    onnxruntime = pytest.importorskip("onnxruntime")
    run_dir = ppo_run[0] if which == "ppo" else sac_run
    observations, actions = held_out_observations(run_dir)
    assert export_main([str(run_dir), "--format", "onnx"]) == 0
    assert export_main([str(run_dir), "--format", "torchscript"]) == 0
    session = onnxruntime.InferenceSession(str(run_dir / "export" / "policy.onnx"))
    np.testing.assert_allclose(session.run(None, {"obs": observations})[0], actions, atol=1e-5)
    scripted = torch.jit.load(str(run_dir / "export" / "policy.pt"))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(torch.as_tensor(observations)).numpy(), actions, atol=1e-6)
    assert np.abs(actions).max() <= 1.0


def test_evaluate_scores_the_model_on_another_scenario_and_writes_a_folder(ppo_run, capsys):
    out, trained = ppo_run
    assert evaluate_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out evaluation part" in printed and "ppo (after)" in printed
    (folder,) = RunDir(out).evaluations.iterdir()
    same = json.loads((folder / "metrics.json").read_text())
    assert same["co2_kg"] == pytest.approx(trained["co2_kg"], rel=1e-12)  # model.zip reproduces the run's score
    assert evaluate_main([str(out), "--best", "scenario.window_start=168"]) == 0
    other = json.loads(max(RunDir(out).evaluations.iterdir()).joinpath("metrics.json").read_text())
    assert other["model"] == "best_model.zip" and other["co2_kg"] != same["co2_kg"]
    shutil.rmtree(RunDir(out).evaluations)


OBS_3, OBS_5 = (PvBessEvEnv(forecast_hours=k).observation_space.shape[0] for k in (3, 5))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scenario.forecast_hours=5"], f"trained on observations of shape ({OBS_3},), this scenario gives ({OBS_5},)"),
        (["scenario.eval_data=null"], "has no evaluation part"),
        (["--best", "nonsense=1"], "override 'nonsense=1'"),
    ],
)
def test_evaluate_bad_input_is_one_line_and_writes_nothing(ppo_run, capsys, args, message):
    out, _ = ppo_run
    assert evaluate_main([str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not RunDir(out).evaluations.exists()


def test_evaluate_a_folder_without_a_model(ppo_run, tmp_path, capsys):
    shutil.copy(RunDir(ppo_run[0]).config, tmp_path)
    assert evaluate_main([str(tmp_path)]) == 2 and export_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path} has no model.zip")
    assert list(tmp_path.iterdir()) == [RunDir(tmp_path).config]

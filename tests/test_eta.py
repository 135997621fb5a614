"""The wall-time estimate: counts as SB3 runs them, a calibration that changes nothing, a warning with budgets."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.vec_env import DummyVecEnv

from bess_rl.experiment import eta
from bess_rl.experiment.build import algo_class, build_eval_env, new_model
from bess_rl.experiment.hardware import resolve
from tests.helpers import COMMON, TINY, compose_cfg, small_env, vec_env


def test_counted_updates_are_the_ones_sac_performs():
    model = SAC("MlpPolicy", vec_env(DummyVecEnv, 2), learning_starts=10, train_freq=2, gradient_steps=3,
                batch_size=16, policy_kwargs={"net_arch": [8]}, seed=0)  # fmt: skip
    planned = eta.work(model, 40, eval_every=None, eval_hours=0)
    model.learn(40)
    assert planned.updates == model._n_updates and planned.policy_calls == 20


def test_calibration_leaves_the_random_streams_alone():
    cfg = compose_cfg(["agent=ppo", *TINY["ppo"], *COMMON])
    model = new_model(cfg, build_eval_env(cfg).scenario, build_eval_env(cfg).site,
                      resolve(cfg.hardware, algo_class(cfg.agent.algo), "cpu"))  # fmt: skip
    state = torch.get_rng_state(), np.random.get_state()
    rates = eta.calibrate(model, small_env())
    assert torch.equal(torch.get_rng_state(), state[0]) and np.random.get_state()[1].tolist() == state[1][1].tolist()
    assert 0 < rates.env_step_s < 0.1 and 0 < rates.update_s < 1.0


def test_a_run_over_warn_hours_is_warned_about_with_budgets_that_fit(caplog):
    cfg = compose_cfg(["agent=sac", *COMMON, "agent.hparams.buffer_size=1000", "warn_hours=0.001"])
    model = SAC("MlpPolicy", vec_env(DummyVecEnv, 1), learning_starts=500, train_freq=2, gradient_steps=2048,
                buffer_size=1000, policy_kwargs={"net_arch": [8]})  # fmt: skip
    with caplog.at_level(logging.INFO, logger="bess_rl.experiment.eta"):
        seconds = eta.announce(cfg, model, 26_280, small_env(), 168)
    assert seconds > 3.6
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "over warn_hours=0.001" in warning and "agent.total_timesteps=" in warning
    assert warning.startswith(f"sac (after, seed {cfg.seed}) is estimated at")  # parallel jobs share a console
    assert "agent.hparams.gradient_steps=" in warning or "agent.total_timesteps=" in warning
    assert any("estimated wall time" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bess_rl.experiment.eta"):
        eta.announce(cfg, model, 26_280, small_env(), 168, resume=True)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "agent.total_timesteps=" not in warning and "a resume keeps the saved config; Ctrl-C" in warning


@pytest.mark.parametrize("n_envs", [1, 4])
def test_counted_ppo_updates(n_envs):
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", vec_env(DummyVecEnv, n_envs), n_steps=16, batch_size=8, n_epochs=2,
                policy_kwargs={"net_arch": [8]})  # fmt: skip
    planned = eta.work(model, 16 * n_envs * 3, eval_every=16, eval_hours=48)
    assert planned.updates == 3 * 2 * 2 * n_envs and planned.eval_steps == 3 * n_envs * 48
    steps, step = [], model.policy.optimizer.step
    model.policy.optimizer.step = lambda *a, **k: (steps.append(1), step(*a, **k))[1]  # counts gradient steps
    model.learn(16 * n_envs * 3)
    assert eta.gradient_steps(model) == len(steps) == planned.updates  # metrics.json's gradient_updates

"""Population with bf16 matmuls (``amp="bf16"`` on its members): trains, and stays close to float32."""

from __future__ import annotations

import numpy as np
import torch

from bess_rl.agents.population import Population
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import SiteParams
from tests.helpers import assert_same_steps, make_scenario

BATCH = 32
TINY = {"batch_size": BATCH, "buffer_size": 400, "learning_starts": 0, "policy_kwargs": {"net_arch": [32, 32]}}


def site_env() -> PvBessEvEnv:
    site = SiteParams(pv_kwp=3_000.0, bess_capacity_kwh=1_500.0, bess_power_kw=600.0)
    return PvBessEvEnv(make_scenario(), site, episode_hours=48)


def filled(amp: str) -> Population:
    pop = Population(site_env, size=2, seeds=[3, 5], amp=amp, **TINY)
    env = site_env()
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for i in range(200):
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        next_obs, reward, _, truncated, _ = env.step(action)
        for m in pop.members:
            m.replay_buffer.add(obs[None], next_obs[None], action[None], np.array([reward]),
                                np.array([truncated or i % 7 == 0]), [{"TimeLimit.truncated": truncated}])  # fmt: skip
        obs = env.reset()[0] if truncated else next_obs
    return pop


def test_bf16_population_runs_close_to_float32():
    fp32, bf16 = filled("none"), filled("bf16")
    assert fp32.low is None and bf16.low is not None
    before = [p.clone() for p in bf16.nets.actor_params()]
    stats32, stats16 = fp32.train(1), bf16.train(1)
    for key in (0, 1):  # critic and actor losses, per member
        np.testing.assert_allclose(stats16[key].numpy(), stats32[key].numpy(), rtol=0.05, atol=0.02)
    assert all(not torch.equal(a, b) for a, b in zip(before, bf16.nets.actor_params(), strict=True))
    bf16.train(20)
    assert all(torch.isfinite(p).all() for p in bf16.nets.actor_params() + bf16.nets.critic_params())


def test_stacked_bf16_critics_take_the_one_by_one_steps():
    """Every member's twin critics in one batched product per layer give the critic-by-critic updates,
    up to bf16 rounding (stacked here on any CPU; by default only where bf16 is native)."""
    one_by_one, stacked = filled("bf16"), filled("bf16")
    one_by_one.stacked = None
    stacked.stacked = stacked.stacked or stacked.low.stack_critics()
    before = [p.clone() for p in stacked.nets.critic_params() + stacked.nets.actor_params()]
    torch.testing.assert_close(stacked.train(4), one_by_one.train(4), rtol=1e-3, atol=1e-5)
    after = stacked.nets.critic_params() + stacked.nets.actor_params()
    reference = one_by_one.nets.critic_params() + one_by_one.nets.actor_params()
    assert_same_steps(before, after, reference)

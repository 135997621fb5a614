"""Population: each stacked member trains as its own FastSAC would, and exports as a plain SB3 model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.logger import Logger

from bess_rl.agents.fast_sac import FastSAC
from bess_rl.agents.population import Population
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import SiteParams
from tests.helpers import compile_without_codegen, make_scenario

BATCH = 32
TINY = {"batch_size": BATCH, "buffer_size": 400, "learning_starts": 0, "policy_kwargs": {"net_arch": [32, 32]}}
SEEDS = [3, 5, 8]
HPARAMS = {"learning_rate": [3e-4, 1e-3, 5e-4], "gamma": [0.99, 0.9, 0.95], "tau": [0.005, 0.02, 0.01]}


def site_env() -> PvBessEvEnv:
    site = SiteParams(pv_kwp=3_000.0, bess_capacity_kwh=1_500.0, bess_power_kw=600.0)
    return PvBessEvEnv(make_scenario(), site, episode_hours=48)


def transitions(n: int = 300, seed: int = 0) -> list[tuple]:
    """Random transitions in the replay ``add`` format; every 7th is terminal, 48 h episodes truncate."""
    env = site_env()
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        next_obs, reward, _, truncated, _ = env.step(action)
        done = truncated or i % 7 == 0
        out.append((obs[None], next_obs[None], action[None], np.array([reward]), np.array([done]),
                    [{"TimeLimit.truncated": truncated}]))  # fmt: skip
        obs = env.reset()[0] if truncated else next_obs
    return out


def test_each_member_matches_its_own_fast_sac_run():
    """300 updates: member i on its buffer with its seed and hyper-parameters = FastSAC.train of the same."""
    pop = Population(site_env, size=3, seeds=SEEDS, **HPARAMS, **TINY)
    data = transitions()
    singles = []
    for i, seed in enumerate(SEEDS):
        single = FastSAC("MlpPolicy", site_env(), seed=seed, device="cpu", **{k: v[i] for k, v in HPARAMS.items()},
                         **TINY)  # fmt: skip
        single.set_logger(Logger(None, []))
        singles.append(single)
        for t in (*data[i * 20 :], *data[: i * 20]):  # a different buffer order per member
            single.replay_buffer.add(*t)
            pop.members[i].replay_buffer.add(*t)
    before = [{k: v.clone() for k, v in pop.member_model(i).policy.state_dict().items()} for i in range(3)]
    for i, single in enumerate(singles):
        for key, value in single.policy.state_dict().items():
            torch.testing.assert_close(before[i][key], value, rtol=0, atol=0, msg=f"initial {key}")
    stats = pop.train(300)
    for seed, single in zip(SEEDS, singles, strict=True):
        torch.manual_seed(seed)  # the member's generator starts from this seed's state
        single.train(300, BATCH)
    for i, single in enumerate(singles):
        member = pop.member_model(i)
        for key, value in single.policy.state_dict().items():
            assert not torch.equal(value, before[i][key]), f"{key} did not change"
            torch.testing.assert_close(member.policy.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)
        torch.testing.assert_close(member.log_ent_coef, single.log_ent_coef, rtol=1e-4, atol=1e-5)
        logged = single.logger.name_to_value
        assert stats[0, i].item() == pytest.approx(logged["train/critic_loss"], rel=1e-3)
        assert stats[3, i].item() == pytest.approx(logged["train/ent_coef"], rel=1e-4)


@pytest.mark.slow  # a whole-graph capture of the stacked step
def test_compiled_population_step_takes_the_eager_steps(monkeypatch):
    """``compile_mode``: the stacked step (Adam in plain ops, one learning rate group per member here)
    as one graph, captured through AOTAutograd (inductor's code generation is FastSAC's compile test)."""
    compile_without_codegen(monkeypatch)
    pops = [Population(site_env, size=3, seeds=SEEDS, **HPARAMS, **TINY, compile_mode=m) for m in ("none", "default")]
    data = transitions()
    for pop in pops:
        for member in pop.members:
            for t in data:
                member.replay_buffer.add(*t)
    before = pops[0].member_model(1).policy.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    stats = [pop.train(20) for pop in pops]
    assert pops[1]._compiled is not None and pops[0]._compiled is None
    torch.testing.assert_close(stats[1], stats[0], rtol=1e-5, atol=1e-6)
    eager, compiled = (pop.member_model(1) for pop in pops)
    for key, value in eager.policy.state_dict().items():
        assert not torch.equal(value, before[key]), key
        torch.testing.assert_close(compiled.policy.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    states = [m.critic.optimizer.state_dict()["state"][0] for m in (eager, compiled)]
    assert float(states[1]["step"]) == float(states[0]["step"]) == 20


def test_member_trains_on_and_saves_as_a_plain_sb3_model(tmp_path):
    pop = Population(site_env, size=2, seeds=[0, 1], **{**TINY, "learning_starts": 20})
    pop.learn(40)
    assert pop.num_timesteps == 40 and pop.n_updates == 20
    assert all(m.replay_buffer.size() == 40 for m in pop.members)
    member = pop.member_model(1)
    member.save(tmp_path / "model.zip")
    plain = SAC.load(tmp_path / "model.zip", device="cpu")
    obs = site_env().reset(seed=0)[0]
    np.testing.assert_allclose(plain.predict(obs, deterministic=True)[0], member.predict(obs, deterministic=True)[0])
    loaded = FastSAC.load(tmp_path / "model.zip", env=member.env, device="cpu")
    loaded.replay_buffer = member.replay_buffer
    loaded.learn(10, reset_num_timesteps=False)  # Adam state came along: it keeps training
    assert all(torch.isfinite(p).all() for p in loaded.policy.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0}, "must be positive"),
        ({"size": 2, "seeds": [1]}, "1 seeds"),
        ({"size": 2, "gamma": [0.9, 0.9, 0.9]}, "gamma has 3 values"),
    ],
)
def test_bad_population_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Population(site_env, **{**TINY, **kwargs})


@pytest.mark.gpu
def test_population_trains_on_cuda():
    pop = Population(site_env, size=2, seeds=[0, 1], device="cuda", **{**TINY, "learning_starts": 10})
    pop.learn(30)
    assert pop.n_updates == 20
    assert all(torch.isfinite(p).all() for p in pop.nets.actor_params() + pop.nets.critic_params())
    assert pop.member_model(0).device.type == "cuda"


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_timing_the_stacked_step_changes_nothing_and_the_counts_are_the_ones_learn_performs(amp):
    from bess_rl.experiment import eta

    kwargs = {**TINY, "learning_starts": 10, "train_freq": 3, "gradient_steps": 2, "amp": amp}
    timed, plain = (Population(site_env, size=3, seeds=SEEDS, **HPARAMS, **kwargs) for _ in range(2))
    rates = eta.calibrate_population(timed, site_env())
    assert rates.policy_call_s > 0 and rates.update_s > 0
    for pop in (timed, plain):
        for steps in (25, 20):  # a second learn starts past learning_starts
            planned = eta.population_work(pop, steps)
            before = pop.n_updates
            pop.learn(steps)
            assert (planned.updates, planned.env_steps) == (pop.n_updates - before, 3 * steps)
    for i in range(3):
        for key, value in plain.member_model(i).policy.state_dict().items():
            assert torch.equal(timed.member_model(i).policy.state_dict()[key], value), key

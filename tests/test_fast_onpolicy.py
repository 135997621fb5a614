"""FastPPO/FastA2C and FreshInfoVecEnv: the same rollouts, updates and infos as SB3, only faster.

The comparisons are exact: the lean forward runs SB3's own tensor ops at SB3's shapes, so anything
short of bit-equality means an op was reformulated (a tolerance would hide e.g. a log-prob computed
from the noise instead of from ``action - mean``, which PPO's ratio then carries into the weights).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from bess_rl.agents.fast_onpolicy import FastA2C, FastPPO
from bess_rl.agents.vec_env import FreshInfoVecEnv
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import SiteParams
from tests.helpers import make_scenario

SITE = SiteParams(pv_kwp=3_000.0, bess_capacity_kwh=1_500.0, bess_power_kw=600.0)
EPISODE = 48  # hours: every rollout below crosses a time-limit truncation (and its auto-reset)
BUFFER_FIELDS = ("observations", "actions", "rewards", "episode_starts", "values", "log_probs", "advantages", "returns")
# (SB3 class, fast class, hyper-parameters): PPO with minibatches and epochs, A2C's single update.
ALGOS = {
    "ppo": (PPO, FastPPO, {"n_steps": 64, "batch_size": 32, "n_epochs": 2}),
    "a2c": (A2C, FastA2C, {"n_steps": 20}),
}


def site_env() -> PvBessEvEnv:
    return PvBessEvEnv(make_scenario(), SITE, episode_hours=EPISODE, random_start=True)


def vec_env(cls: type[DummyVecEnv], n_envs: int, seed: int = 0) -> VecEnv:
    """Monitor-wrapped, seeded training envs, as ``train.new_model`` builds them."""
    return make_vec_env(site_env, n_envs=n_envs, seed=seed, vec_env_cls=cls)


class Recorder(BaseCallback):
    """What callbacks see each step (SB3's local names) and the rollout buffer at every rollout end."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[np.ndarray, ...]] = []
        self.rollouts: list[dict[str, np.ndarray]] = []
        self.truncations = 0

    def _on_step(self) -> bool:
        self.steps.append(tuple(np.copy(self.locals[k]) for k in ("rewards", "dones", "new_obs", "clipped_actions")))
        self.truncations += sum(info["TimeLimit.truncated"] for info in self.locals["infos"])
        return True

    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        self.rollouts.append({f: getattr(buf, f).copy() for f in BUFFER_FIELDS})


def train(cls: type[BaseAlgorithm], vec_env_cls: type[DummyVecEnv], n_envs: int, rollouts: int, **hp) -> Recorder:
    """Build a seeded model and learn ``rollouts`` rollouts (construction seeds torch's global RNG)."""
    model = cls("MlpPolicy", vec_env(vec_env_cls, n_envs), seed=0, device="cpu", **hp)
    recorder = Recorder()
    model.learn(rollouts * n_envs * hp["n_steps"], callback=recorder)
    return recorder


def assert_same_params(a: BaseAlgorithm, b: BaseAlgorithm) -> None:
    for (name, x), y in zip(a.policy.state_dict().items(), b.policy.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("n_envs", [1, 4])
@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_learn_matches_sb3_exactly(algo, n_envs):
    sb3_cls, fast_cls, hp = ALGOS[algo]
    hp = {**hp, "policy_kwargs": {"net_arch": [32, 32]}}
    sb3 = train(sb3_cls, DummyVecEnv, n_envs, 3, **hp)
    fast = train(fast_cls, FreshInfoVecEnv, n_envs, 3, **hp)
    assert sb3.truncations == fast.truncations == n_envs * (3 * hp["n_steps"] // EPISODE)  # bootstrapped steps
    assert len(sb3.rollouts) == len(fast.rollouts) == 3
    for i, (want, got) in enumerate(zip(sb3.rollouts, fast.rollouts, strict=True)):
        for field in BUFFER_FIELDS:
            np.testing.assert_array_equal(got[field], want[field], err_msg=f"rollout {i}: {field}")
    assert len(sb3.steps) == len(fast.steps)
    for want, got in zip(sb3.steps, fast.steps, strict=True):
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(g, w)
    assert_same_params(sb3.model, fast.model)
    assert sb3.model.num_timesteps == fast.model.num_timesteps
    assert [e["r"] for e in sb3.model.ep_info_buffer] == [e["r"] for e in fast.model.ep_info_buffer]


def test_collection_does_not_call_the_sb3_forward(monkeypatch):
    """The speed-up is the lean forward: SB3's ``ActorCriticPolicy.forward`` must not run in ``learn``."""

    def refuse(*args, **kwargs):
        raise AssertionError("ActorCriticPolicy.forward called")

    model = FastPPO("MlpPolicy", vec_env(FreshInfoVecEnv, 2), n_steps=16, batch_size=16, n_epochs=1, seed=0)
    monkeypatch.setattr(ActorCriticPolicy, "forward", refuse)
    model.learn(32)
    assert model.num_timesteps == 32


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_save_load_round_trip(algo, tmp_path):
    """A saved FastX loads as FastX (and as plain SB3), and both continue training identically."""
    sb3_cls, fast_cls, hp = ALGOS[algo]
    model = fast_cls("MlpPolicy", vec_env(FreshInfoVecEnv, 2), seed=0, device="cpu", **hp)
    model.learn(2 * hp["n_steps"])
    path = tmp_path / "model.zip"
    model.save(path)
    fast = fast_cls.load(path, env=vec_env(FreshInfoVecEnv, 2, seed=1), device="cpu")
    plain = sb3_cls.load(path, env=vec_env(DummyVecEnv, 2, seed=1), device="cpu")
    assert type(fast) is fast_cls and fast.num_timesteps == model.num_timesteps
    assert_same_params(model, fast)
    obs = fast.env.reset()
    np.testing.assert_array_equal(fast.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    for m in (plain, fast):  # sequentially: both draw from torch's global RNG
        m.set_random_seed(1)
        m.learn(2 * 2 * hp["n_steps"])
    assert_same_params(plain, fast)
    np.testing.assert_array_equal(fast.rollout_buffer.advantages, plain.rollout_buffer.advantages)


class CustomExtractor(FlattenExtractor):
    pass


@pytest.mark.parametrize(
    ("env_id", "kwargs", "match"),
    [
        (None, {"use_sde": True}, "gSDE"),
        ("CartPole-v1", {}, "Box actions"),
        (None, {"policy_kwargs": {"features_extractor_class": CustomExtractor}}, "FlattenExtractor"),
    ],
)
@pytest.mark.parametrize("cls", [FastPPO, FastA2C])
def test_unsupported_setups_are_refused(cls, env_id, kwargs, match):
    env = DummyVecEnv([lambda: gym.make(env_id)]) if env_id else vec_env(FreshInfoVecEnv, 1)
    with pytest.raises(ValueError, match=match):
        cls("MlpPolicy", env, n_steps=64, **kwargs)


def test_fresh_info_vec_env_steps_like_dummy_vec_env():
    """Same obs, rewards, dones and infos as DummyVecEnv through two auto-resets (time-limit truncations)."""
    envs = [vec_env(cls, 3, seed=7) for cls in (DummyVecEnv, FreshInfoVecEnv)]
    first = [e.reset() for e in envs]
    np.testing.assert_array_equal(first[0], first[1])
    rng = np.random.default_rng(0)
    resets = 0
    for _ in range(2 * EPISODE + 5):
        actions = rng.uniform(-1, 1, (3, 2)).astype(np.float32)
        (obs_a, rew_a, done_a, infos_a), (obs_b, rew_b, done_b, infos_b) = (e.step(actions) for e in envs)
        np.testing.assert_array_equal(obs_b, obs_a)
        np.testing.assert_array_equal(rew_b, rew_a)
        np.testing.assert_array_equal(done_b, done_a)
        for a, b in zip(infos_a, infos_b, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                if key == "episode":  # Monitor's wall-clock "t" differs between the two runs
                    assert (a[key]["r"], a[key]["l"]) == (b[key]["r"], b[key]["l"])
                else:
                    np.testing.assert_array_equal(b[key], a[key])
        resets += int(done_a.sum())
    assert resets == 2 * 3  # every env truncated and reset twice, with terminal_observation compared above


def test_fresh_info_vec_env_infos_do_not_leak_between_steps():
    venv = vec_env(FreshInfoVecEnv, 2)
    venv.reset()
    actions = np.zeros((2, 2), np.float32)
    infos = venv.step(actions)[3]
    for _ in range(EPISODE - 2):
        infos = venv.step(actions)[3]
    infos[0]["written by the caller"] = True
    last = venv.step(actions)[3]  # step 48: truncation, terminal_observation, reset
    assert "written by the caller" not in last[0] and last[0]["TimeLimit.truncated"]
    assert "terminal_observation" not in infos[0] and not infos[0]["TimeLimit.truncated"]
    after = venv.step(actions)[3]
    assert "terminal_observation" in last[0] and "terminal_observation" not in after[0]
    assert infos[0]["hour"] != last[0]["hour"] != after[0]["hour"]


class ReusedInfoEnv(gym.Env):
    """An env that hands back one info dict every step: what FreshInfoVecEnv cannot take."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    info: dict = {}

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False, False, self.info


def test_fresh_info_vec_env_refuses_a_reused_info_dict():
    venv = FreshInfoVecEnv([ReusedInfoEnv])
    venv.reset()
    venv.step(np.zeros((1, 1), np.float32))
    with pytest.raises(RuntimeError, match="new dict every step"):
        venv.step(np.zeros((1, 1), np.float32))

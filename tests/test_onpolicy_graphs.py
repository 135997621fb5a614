"""The device-resident PPO/A2C update (``agents.onpolicy_graphs``): SB3's maths, eager on CPU, captured on CUDA."""

from __future__ import annotations

import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import KVWriter, Logger

from bess_rl.agents.fast_onpolicy import FastA2C, FastPPO
from bess_rl.agents.onpolicy_graphs import WARMUP_STEPS, StaticUpdate
from bess_rl.agents.vec_env import FreshInfoVecEnv
from tests.helpers import vec_env

pytestmark = pytest.mark.filterwarnings("ignore:You have specified a mini-batch size")  # the short one is on purpose
# 2 envs x 64 steps = 128 rows: PPO's minibatches of 48 leave a last one of 32 (run eagerly, like SB3's).
HP = {
    "ppo": (FastPPO, {"n_steps": 64, "batch_size": 48, "n_epochs": 2, "clip_range_vf": 0.3}),
    "a2c": (FastA2C, {"n_steps": 16}),
}


class Collect(KVWriter):
    """Every dump's key/values, to compare what two models logged."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
        self.rows.append({k: v for k, v in key_values.items() if k.startswith("train/")})


def build(algo: str, device: str = "cpu", static: bool = False, **extra) -> tuple[BaseAlgorithm, Collect]:
    """A seeded model (construction seeds the global RNGs: build and learn one model at a time)."""
    cls, hp = HP[algo]
    model = cls("MlpPolicy", vec_env(FreshInfoVecEnv, 2), seed=0, device=device, **hp, **extra)
    if static:  # the captured path's step, run eagerly
        model._static = StaticUpdate(model, model._static_loss, capture=False)
    collect = Collect()
    model.set_logger(Logger(None, [collect]))
    return model, collect


def learn(model: BaseAlgorithm, rollouts: int) -> None:
    model.learn(rollouts * model.n_envs * model.n_steps, log_interval=1)


def trained(algo: str, rollouts: int, device: str = "cpu", static: bool = False, **extra) -> tuple:
    model, log = build(algo, device, static, **extra)
    learn(model, rollouts)
    return model, log


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_static_update_matches_sb3_train(algo):
    (sb3, sb3_log), (static, static_log) = trained(algo, 3), trained(algo, 3, static=True)
    for (name, want), got in zip(sb3.policy.state_dict().items(), static.policy.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=name)
    assert len(sb3_log.rows) == len(static_log.rows) == 3
    for want, got in zip(sb3_log.rows, static_log.rows, strict=True):
        assert want.keys() == got.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert sb3._n_updates == static._n_updates


def test_cuda_graphs_needs_cuda_and_no_target_kl():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        build("ppo", cuda_graphs=True)
    with pytest.raises(ValueError, match="target_kl"):
        build("ppo", cuda_graphs=True, target_kl=0.01)


@pytest.mark.gpu
@pytest.mark.parametrize(("algo", "rollouts"), [("ppo", 2), ("a2c", WARMUP_STEPS + 3)])
def test_cuda_graph_replays_match_eager_steps(algo, rollouts, no_tf32):
    """Warm-up, capture and replays (and PPO's short last minibatch, eager) against the eager step on CUDA."""
    eager, eager_log = trained(algo, rollouts, "cuda", static=True)
    graphs, graphs_log = trained(algo, rollouts, "cuda", cuda_graphs=True)
    assert graphs._static.graph is not None and graphs._static.lr is not None
    for (name, want), got in zip(eager.policy.state_dict().items(), graphs.policy.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)
    for want, got in zip(eager_log.rows, graphs_log.rows, strict=True):
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), key


@pytest.mark.gpu
def test_cuda_graphs_model_saves_loads_and_keeps_training(tmp_path):
    model, _ = build("ppo", "cuda", cuda_graphs=True)
    learn(model, 1)
    model.save(tmp_path / "m.zip")
    loaded = FastPPO.load(tmp_path / "m.zip", env=vec_env(FreshInfoVecEnv, 2), device="cuda")
    assert loaded.cuda_graphs and loaded._static.graph is None
    learn(loaded, 1)
    assert loaded._static.graph is not None
    for cls, extra in ((FastPPO, {"cuda_graphs": False}), (PPO, {})):  # the saved optimiser is SB3's plain one
        on_cpu = cls.load(tmp_path / "m.zip", env=vec_env(FreshInfoVecEnv, 2), device="cpu", **extra)
        assert not on_cpu.policy.optimizer.param_groups[0]["capturable"]
        learn(on_cpu, 1)
        assert all(torch.isfinite(p).all() for p in on_cpu.policy.parameters())

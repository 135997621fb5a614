"""The memory planner against SB3's real buffers, networks and optimizers, and the presets vs a budget."""

from __future__ import annotations

from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.buffers import ReplayBuffer, RolloutBuffer

from bess_rl.experiment.config import compose_config
from bess_rl.experiment.planner import GB, MemoryBudgetError, check, estimate, plan_for
from bess_rl.site.env import PvBessEvEnv

ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def array_bytes(buffer: object) -> int:
    """What SB3's buffer holds: the sum of its numpy arrays."""
    return sum(v.nbytes for v in vars(buffer).values() if isinstance(v, np.ndarray))


@pytest.mark.parametrize(("n_envs", "dtype", "optimize"), [(1, np.float32, False), (3, np.float64, False),
                                                           (2, np.float32, True)])  # fmt: skip
def test_replay_buffer_estimate_matches_sb3(n_envs, dtype, optimize):
    cfg = compose_config(["agent=sac", "agent.hparams.buffer_size=1000", f"agent.n_envs={n_envs}"])
    plan = estimate(cfg, 15, 2, device="cpu", obs_dtype=dtype)
    plan = plan_for(replace(plan.workload, optimize_memory_usage=optimize))
    obs = gym.spaces.Box(-1.0, 1.0, (15,), dtype)
    real = ReplayBuffer(1000, obs, ACT, "cpu", n_envs, optimize_memory_usage=optimize,
                        handle_timeout_termination=not optimize)  # fmt: skip
    assert plan.part("replay buffer").nbytes == pytest.approx(array_bytes(real), rel=0.01)


@pytest.mark.parametrize("agent", ["ppo", "a2c"])
def test_rollout_buffer_estimate_matches_sb3(agent):
    cfg = compose_config([f"agent={agent}", "agent.n_envs=4", "agent.hparams.n_steps=128"])
    plan = estimate(cfg, 15, 2)
    real = RolloutBuffer(128, gym.spaces.Box(-1.0, 1.0, (15,), np.float32), ACT, "cpu", n_envs=4)
    assert plan.part("rollout buffer").nbytes == pytest.approx(array_bytes(real), rel=0.01)
    assert plan.part("rollout buffer").where == "host"


TINY = {
    "sac": (SAC, {"buffer_size": 100, "batch_size": 8, "learning_starts": 10}, 20),
    "ppo": (PPO, {"n_steps": 32, "batch_size": 16, "n_epochs": 1}, 32),
    "a2c": (A2C, {"n_steps": 8}, 8),
}


@pytest.mark.parametrize("agent", ["sac", "ppo", "a2c"])
def test_networks_gradients_and_optimizer_match_a_trained_sb3_model(agent, scenario, site):
    """Parameters counted from net_arch, gradients of what is trained, Adam 2x (A2C's RMSprop 1x)."""
    algo, hp, steps = TINY[agent]
    overrides = [f"agent={agent}", "agent.hparams.net_arch=[32,16]"]
    overrides += [f"agent.hparams.{k}={v}" for k, v in hp.items() if k != "learning_starts"]
    env = PvBessEvEnv(scenario, site)
    plan = estimate(compose_config(overrides), env.observation_space.shape[0], 2, device="cpu")
    model = algo("MlpPolicy", env, policy_kwargs={"net_arch": [32, 16]}, device="cpu", seed=0, **hp)
    model.learn(steps)
    params = list(model.policy.parameters())
    optimizers = [model.policy.optimizer] if agent != "sac" else [model.actor.optimizer, model.critic.optimizer]
    if agent == "sac":
        params.append(model.log_ent_coef)
        optimizers.append(model.ent_coef_optimizer)
    state = [t for opt in optimizers for s in opt.state.values() for k, t in s.items() if k != "step"]
    assert plan.n_params == sum(p.numel() for p in params)
    assert plan.part("networks").nbytes == 4 * plan.n_params
    assert plan.part("gradients").nbytes == sum(p.grad.nbytes for p in params if p.grad is not None)
    assert plan.part("optimizer").nbytes == sum(t.nbytes for t in state)


def test_seed_before_preset_on_rtx4060_with_gpu_buffer_is_refused_with_halving_advice():
    cfg = compose_config(["agent=sac", "preset=before", "hardware=rtx4060"])
    plan = estimate(cfg, 500, 2, device="cuda", buffer_on_device=True)  # the origin's ~500-dim observation
    assert plan.part("replay buffer").where == "device"
    with pytest.raises(MemoryBudgetError) as err:
        check(plan, cfg.hardware.memory_budget_gb, "hardware=rtx4060")
    msg = str(err.value)
    assert "GPU memory" in msg and "budget is 8.6 GB" in msg and "biggest part is the replay buffer" in msg
    assert "agent.hparams.buffer_size=2500000 agent.hparams.batch_size=256" in msg
    assert "still over budget" in msg  # 5M x 500 floats x 2 is 20 GB: one halving is not enough
    assert "\n" not in msg


def test_seed_after_preset_with_this_projects_observation_fits_rtx4060():
    env = PvBessEvEnv()
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    assert obs_dim < 30
    cfg = compose_config(["agent=sac", "preset=after", "hardware=rtx4060"])
    plan = estimate(cfg, obs_dim, act_dim, device="cuda", buffer_on_device=True)
    check(plan, cfg.hardware.memory_budget_gb, "hardware=rtx4060")
    assert 0.4 * GB < plan.budgeted < 1.0 * GB  # CUDA context + a ~0.14 GB buffer + small networks


def test_budget_applies_to_gpu_memory_on_cuda_and_host_ram_on_cpu():
    """SB3 keeps its replay buffer in host RAM: a GPU budget does not count it, a CPU budget does."""
    cfg = compose_config(["agent=sac", "preset=before", "hardware=rtx4060"])
    on_gpu = estimate(cfg, 500, 2, device="cuda")
    assert on_gpu.bytes_on("host") > 8.6 * GB > on_gpu.budgeted
    check(on_gpu, 8.6, "hardware=rtx4060")
    with pytest.raises(MemoryBudgetError, match="of host RAM but the budget is 8.6 GB"):
        check(estimate(cfg, 500, 2, device="cpu"), 8.6, "hardware=rtx4060")


def test_no_budget_never_refuses():
    cfg = compose_config(["agent=sac", "preset=before", "agent.hparams.buffer_size=100000000"])
    for device, on_device in (("cuda", True), ("cpu", False)):
        plan = estimate(cfg, 5000, 2, device=device, buffer_on_device=on_device)
        assert plan.total > 1000 * GB
        check(plan, None, "hardware=cpu")


def test_on_policy_advice_halves_rollout_and_minibatch():
    cfg = compose_config(["agent=ppo", "preset=after"])
    with pytest.raises(MemoryBudgetError, match="agent.hparams.n_steps=4096 agent.hparams.batch_size=256"):
        check(estimate(cfg, 15, 2), 0.001, "hardware=cpu")


def test_domain_note_buffer_figure_is_corrected():
    """The presets' source put a 1M buffer of ~500-dim observations at 1 GB (docs/presets.md): it is ~4.8 GB."""
    cfg = compose_config(["agent=sac", "preset=after"])
    buffer = estimate(cfg, 500, 2, device="cuda").part("replay buffer")
    print(f"1M transitions x 500-dim float32 obs: {buffer.nbytes / GB:.2f} GB in {buffer.where} RAM, not 1 GB")
    assert buffer.where == "host"
    assert buffer.nbytes > 3.5 * GB, f"1M x 500-dim obs is {buffer.nbytes / GB:.2f} GB, expected ~4 GB not 1 GB"

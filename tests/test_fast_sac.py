"""FastSAC: the fused update is SB3's SAC update, learns as well, and stays a drop-in SB3 model."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv

from bess_rl.agents import manual_sac, onednn_linear
from bess_rl.agents.capabilities import cpu_compiler
from bess_rl.agents.fast_sac import DeviceReplayBuffer, FastSAC
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import SiteParams
from tests.helpers import assert_same_steps, compile_without_codegen, make_scenario

BATCH = 32
TINY = {"batch_size": BATCH, "buffer_size": 400, "learning_starts": 0, "policy_kwargs": {"net_arch": [32, 32]}}


def site_env() -> DummyVecEnv:
    site = SiteParams(pv_kwp=3_000.0, bess_capacity_kwh=1_500.0, bess_power_kw=600.0)
    return DummyVecEnv([lambda: PvBessEvEnv(make_scenario(), site, episode_hours=48)])


def fill(models: list[SAC], n: int = 300, seed: int = 0) -> None:
    """The same random transitions into every buffer: 48 h episodes end in time-limit truncations, and
    every 7th transition is marked terminal, so the targets' (1 - done) mask is exercised too."""
    env = site_env().envs[0]
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for i in range(n):
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for m in models:
            m.replay_buffer.add(
                obs[None],
                next_obs[None],
                action[None],
                np.array([reward]),
                np.array([truncated or i % 7 == 0]),
                [{"TimeLimit.truncated": truncated}],
            )
        obs = env.reset()[0] if truncated else next_obs


def pair(device: str = "cpu", fast_kwargs: dict | None = None, **kwargs) -> tuple[SAC, FastSAC]:
    """SB3 SAC and FastSAC with identical weights and buffers, both sampling the same fixed batch."""
    sb3 = SAC("MlpPolicy", site_env(), seed=0, device=device, **{**TINY, **kwargs})
    fast = FastSAC("MlpPolicy", site_env(), seed=0, device=device, **{**TINY, **kwargs}, **(fast_kwargs or {}))
    fast.policy.load_state_dict(sb3.policy.state_dict())
    fill([sb3, fast])
    idx = np.random.default_rng(1).integers(0, 300, BATCH)
    sb3.replay_buffer.sample = lambda batch_size, env=None: sb3.replay_buffer._get_samples(idx)
    assert set(sb3.replay_buffer._get_samples(idx).dones.flatten().tolist()) == {0.0, 1.0}
    fixed = torch.as_tensor(idx, device=fast.device)
    fast.replay_buffer.sample_indices = lambda batch_size: fixed
    for m in (sb3, fast):
        m.set_logger(Logger(None, []))
    return sb3, fast


def state(model: SAC) -> dict[str, torch.Tensor]:
    """Everything one update changes: actor, critics, critic targets, log entropy coefficient."""
    out = {k: v.detach().clone() for k, v in model.policy.state_dict().items()}
    if model.log_ent_coef is not None:
        out["log_ent_coef"] = model.log_ent_coef.detach().clone()
    return out


def assert_same_update(sb3: SAC, fast: FastSAC, steps: int, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    before = state(sb3)
    for m in (sb3, fast):
        torch.manual_seed(123)  # the actor's noise: same draws in the same order
        m.train(steps, BATCH)
    after_sb3, after_fast = state(sb3), state(fast)
    for key, value in before.items():
        assert not torch.equal(after_sb3[key], value), f"{key} did not change: the comparison would be vacuous"
        torch.testing.assert_close(after_fast[key], after_sb3[key], rtol=rtol, atol=atol, msg=key)
    logged_sb3, logged_fast = sb3.logger.name_to_value, fast.logger.name_to_value
    for key in ("train/critic_loss", "train/actor_loss", "train/ent_coef", "train/n_updates"):
        assert logged_fast[key] == pytest.approx(float(logged_sb3[key]), rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("kwargs", [{}, {"ent_coef": 0.1}, {"target_update_interval": 2, "gamma": 0.9, "tau": 0.05}])
def test_update_matches_sb3_on_the_same_batch(kwargs):
    sb3, fast = pair(**kwargs)
    assert_same_update(sb3, fast, steps=1)
    assert_same_update(sb3, fast, steps=3)  # Adam moments and polyak carried across steps


@pytest.mark.parametrize(
    ("matmul", "min_dim"),
    [("torch", None), ("onednn", 1)],
    ids=["autograd-path", "onednn-every-matmul"],
)
def test_each_update_path_matches_sb3(monkeypatch, matmul, min_dim):
    """The default CPU step is the hand-written one; the autograd path, and the hand-written one with
    even the tiny test net's products on oneDNN (on a CPU without AVX-512 too, where it is not the default),
    match SB3 as well."""
    if min_dim is not None:
        if not onednn_linear.available():
            pytest.skip("this torch build has no oneDNN")
        monkeypatch.setattr(onednn_linear, "ONEDNN_MIN_DIM", min_dim)
        monkeypatch.setattr(onednn_linear, "fast_fp32", lambda: True)
    sb3, fast = pair(fast_kwargs={"matmul": matmul})
    assert (fast._fast.manual is not None) == (matmul == "onednn")
    assert_same_update(sb3, fast, steps=1)
    assert_same_update(sb3, fast, steps=3)


@pytest.mark.slow  # a cold torch.compile of the step: ~40 s of CPU
@pytest.mark.skipif(cpu_compiler() is None, reason="no C++ compiler for inductor's CPU kernels")
def test_compiled_cpu_step_matches_sb3():
    """``compile_mode`` compiles the hand-written step whole (optimiser steps and polyak update inside): the
    first update, which makes the optimisers' state, runs eagerly, the next ones compiled, all as SB3's.
    One hidden layer: a second would only add kernels like the first (~20 % more compile time)."""
    sb3, fast = pair(fast_kwargs={"compile_mode": "default"}, policy_kwargs={"net_arch": [32]})
    assert_same_update(sb3, fast, steps=1)
    assert fast._fast.manual.compiled is None
    assert_same_update(sb3, fast, steps=3)
    assert fast._fast.manual.compiled is not None


def test_compiled_bf16_step_runs_close_to_the_eager_one(monkeypatch):
    """The bf16 step captured whole takes the eager bf16 step's updates. Captured through AOTAutograd
    without inductor's code generation (~2 s where inductor takes ~20 s: the float32 test above runs it),
    so the same bf16 roundings."""
    compile_without_codegen(monkeypatch)
    _, eager = pair(fast_kwargs={"amp": "bf16"})
    _, compiled = pair(fast_kwargs={"amp": "bf16", "compile_mode": "default"})
    before = state(eager)
    for m in (eager, compiled):
        torch.manual_seed(123)
        m.train(4, BATCH)
    assert compiled._fast.manual.compiled is not None
    for key in ("train/critic_loss", "train/actor_loss", "train/ent_coef"):
        a, b = eager.logger.name_to_value[key], compiled.logger.name_to_value[key]
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6), key
    after_eager, after_compiled = state(eager), state(compiled)
    for key, value in before.items():  # the updates themselves (~1e-3 a weight, the targets' ~1e-5)
        delta = after_eager[key] - value
        assert delta.abs().max() > 0, key
        torch.testing.assert_close(after_compiled[key] - value, delta, rtol=1e-2, atol=1e-7, msg=key)


@pytest.mark.parametrize(
    ("x_shape", "w_shape"),
    [((2, 64, 32), (2, 1, 32)), ((2, 1, 64), (2, 32, 64)), ((64, 32), (2, 32)), ((2, 64, 2), (2, 32, 2))],
)
def test_thin_products_are_float32_loops_in_a_compiled_step(x_shape, w_shape):
    """Thin bf16 products (a side of at most ``THIN_DIM``) give the float32 product of the bf16 values,
    eagerly (stacked ones too, as 2-D ones always did) and compiled, where the graph holds no GEMM for them."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(x_shape, generator=gen).bfloat16(), torch.randn(w_shape, generator=gen).bfloat16()
    b = torch.randn(w_shape[:-1], generator=gen).bfloat16()
    want = torch.nn.functional.relu(x.float() @ w.float().transpose(-1, -2) + b.float().unsqueeze(-2))
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, _inputs: list) -> torch.fx.GraphModule:
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    compiled = torch.compile(manual_sac.matmul_t, backend=backend, fullgraph=True)(x, w, b, True)
    for got in (manual_sac.matmul_t(x, w, b, True), compiled):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    ops = {str(node.target) for node in graphs[0].graph.nodes}
    assert not any(name in op for op in ops for name in ("mm", "matmul", "linear", "onednn")), ops


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [(torch.optim.Adam, {}), (torch.optim.Adam, {"weight_decay": 0.1, "maximize": True}),
     (torch.optim.AdamW, {"weight_decay": 0.1})],
)  # fmt: skip
def test_direct_adam_in_plain_ops_is_the_fused_step(cls, kwargs):
    """``DirectAdam.in_graph`` (what a compiled step runs) takes the same step as torch's fused kernel."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(8, 4, generator=gen), torch.randn(8, generator=gen)]
    twin = [p.clone() for p in params]
    lr = torch.tensor(1e-2)
    opts = [cls(ps, lr=lr, fused=True, **kwargs) for ps in (params, twin)]
    for step in range(4):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for opt, ps in zip(opts, (params, twin), strict=True):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g.clone()
            if step == 0:
                opt.step()  # makes the state, as a FastSAC step does before any direct one
        if step > 0:
            opts[0].step()
            manual_sac.DirectAdam.of(opts[1], twin).in_graph(grads)
        for p, q in zip(params, twin, strict=True):
            torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)


def test_default_cpu_update_is_the_hand_written_one():
    for amp in ("none", "bf16"):
        _, fast = pair(fast_kwargs={"amp": amp})
        assert fast._fast.manual is not None, amp
    _, fp16 = pair(fast_kwargs={"amp": "fp16"})
    assert fp16._fast.manual is None  # fp16 needs GradScaler: autograd


def test_stacked_bf16_critics_take_the_one_by_one_steps():
    """The bf16 twin critics as one batched product per layer (the default where the CPU has native bf16)
    give the updates of the critics run one after the other, up to bf16 rounding."""
    _, one_by_one = pair(fast_kwargs={"amp": "bf16"})
    _, stacked = pair(fast_kwargs={"amp": "bf16"})
    one_by_one._fast.manual.stacked = None
    manual = stacked._fast.manual
    manual.stacked = manual.stacked or manual.low.stack_critics()  # stacked on any CPU, for this test
    before = state(stacked)
    for m in (one_by_one, stacked):
        torch.manual_seed(123)
        m.train(4, BATCH)
    for key in ("train/critic_loss", "train/actor_loss", "train/ent_coef"):
        a, b = one_by_one.logger.name_to_value[key], stacked.logger.name_to_value[key]
        assert b == pytest.approx(a, rel=1e-3, abs=1e-5), key
    after, reference = state(stacked), state(one_by_one)
    assert_same_steps(list(before.values()), [after[k] for k in before], [reference[k] for k in before])


def test_bf16_autocast_through_autograd_runs_close_to_fp32():
    """The hand-written bf16 step is the existing bf16 test; this is the autocast path it replaced on CPU."""
    _, fp32 = pair(fast_kwargs={"matmul": "torch"})
    _, bf16 = pair(fast_kwargs={"matmul": "torch", "amp": "bf16"})
    assert bf16._fast.manual is None
    for m in (fp32, bf16):
        torch.manual_seed(123)
        m.train(1, BATCH)
    for key in ("train/critic_loss", "train/actor_loss"):
        a, b = fp32.logger.name_to_value[key], bf16.logger.name_to_value[key]
        assert b == pytest.approx(a, rel=0.05, abs=0.02), key


def test_bf16_autocast_runs_close_to_fp32():
    _, fp32 = pair()
    _, bf16 = pair(fast_kwargs={"amp": "bf16"})
    for m in (fp32, bf16):
        torch.manual_seed(123)
        m.train(1, BATCH)
    for key in ("train/critic_loss", "train/actor_loss"):
        a, b = fp32.logger.name_to_value[key], bf16.logger.name_to_value[key]
        assert np.isfinite(b)
        assert b == pytest.approx(a, rel=0.05, abs=0.02), key
    for p in bf16.policy.parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all()


def test_fp16_with_grad_scaler_runs_eagerly():
    _, fast = pair(fast_kwargs={"amp": "fp16"})
    fast.train(3, BATCH)
    assert fast._fast.scaler is not None
    assert np.isfinite(fast.logger.name_to_value["train/critic_loss"])
    assert all(torch.isfinite(p).all() for p in fast.policy.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cuda_graphs": True, "device": "cpu"}, "needs a CUDA device"),
        ({"amp": "fp8"}, "amp must be one of"),
        ({"compile_mode": "fast"}, "compile_mode must be one of"),
        ({"matmul": "blas"}, "matmul must be one of"),
        ({"matmul": "onednn", "amp": "fp16"}, "hand-written CPU update"),
        ({"compile_mode": "default", "policy_kwargs": {"optimizer_kwargs": {"amsgrad": True}}}, "no amsgrad"),
        ({"graph_steps": 3, "target_update_interval": 2}, "multiple of target_update_interval"),
        ({"use_sde": True}, "gSDE"),
        (
            {"optimize_memory_usage": True, "replay_buffer_kwargs": {"handle_timeout_termination": False}},
            "optimize_memory",
        ),
    ],
)
def test_unsupported_switches_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FastSAC("MlpPolicy", site_env(), **{**TINY, **kwargs})


def test_compile_without_a_cpu_compiler_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++")
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler: no-such-c\\+\\+ not found"):
        FastSAC("MlpPolicy", site_env(), compile_mode="default", **TINY)
    FastSAC("MlpPolicy", site_env(), **TINY)  # nothing to compile: no compiler needed


def test_replay_buffer_clears_done_on_truncation_and_wraps():
    env = site_env()
    buf = DeviceReplayBuffer(4, env.observation_space, env.action_space, device="cpu")
    obs = np.arange(env.observation_space.shape[0], dtype=np.float32)[None]
    for i in range(6):
        buf.add(
            obs + i,
            obs - i,
            np.array([[0.5, -0.5]]),
            np.array([float(i)]),
            np.array([True]),
            [{"TimeLimit.truncated": i % 2 == 1}],
        )
    assert buf.full and buf.pos == 2 and int(buf.rows) == 4
    batch = buf.batch(torch.arange(4))
    # rows 0, 1 were overwritten by transitions 4, 5; odd transitions were truncations, not terminations
    assert batch.rewards.flatten().tolist() == [4.0, 5.0, 2.0, 3.0]
    assert batch.dones.flatten().tolist() == [1.0, 0.0, 1.0, 0.0]
    torch.testing.assert_close(batch.observations[0], torch.as_tensor(obs[0] + 4))
    torch.testing.assert_close(batch.next_observations[1], torch.as_tensor(obs[0] - 5))
    assert set(buf.sample_indices(1000).tolist()) == {0, 1, 2, 3}


def test_save_load_predict_and_keep_training(tmp_path):
    fast = FastSAC("MlpPolicy", site_env(), seed=0, device="cpu", **{**TINY, "learning_starts": 20})
    fast.learn(40)
    obs = site_env().reset()
    action = fast.predict(obs, deterministic=True)[0]
    fast.save(tmp_path / "model.zip")
    fast.save_replay_buffer(tmp_path / "buffer.pkl")
    loaded = FastSAC.load(tmp_path / "model.zip", env=site_env(), device="cpu")
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], action)
    assert isinstance(loaded.replay_buffer, DeviceReplayBuffer) and loaded.replay_buffer.size() == 40
    for opt in loaded._optimizers():  # the load hook restored our optimiser set-up over the saved one
        assert opt.param_groups[0]["lr"] is loaded._fast.lr.lr and opt.param_groups[0]["fused"]
    loaded.learn(20, reset_num_timesteps=False)
    assert loaded.num_timesteps == 60


def test_plain_sb3_model_loads_into_fast_sac(tmp_path):
    sb3 = SAC("MlpPolicy", site_env(), seed=0, device="cpu", **{**TINY, "learning_starts": 20})
    sb3.learn(30)
    sb3.save(tmp_path / "sb3.zip")
    fast = FastSAC.load(tmp_path / "sb3.zip", env=site_env(), device="cpu")
    obs = site_env().reset()
    np.testing.assert_array_equal(fast.predict(obs, deterministic=True)[0], sb3.predict(obs, deterministic=True)[0])
    assert isinstance(fast.replay_buffer, DeviceReplayBuffer)
    fast.learn(30)
    assert all(torch.isfinite(p).all() for p in fast.policy.parameters())


class Reach(gym.Env):
    """Put the action on the observed random target (reward -squared distance): SAC learns it in ~500 steps."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t, self._target = 0, self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._target, {}

    def step(self, action):
        reward = -float(np.sum((np.clip(action, -1, 1) - self._target) ** 2))
        self._t += 1
        self._target = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._target, reward, False, self._t >= 8, {}


def mean_reward(model: SAC) -> float:
    env = Reach()
    obs, _ = env.reset(seed=123)
    rewards = []
    for _ in range(256):
        obs, reward, _, truncated, _ = env.step(model.predict(obs, deterministic=True)[0])
        rewards.append(reward)
        if truncated:
            obs, _ = env.reset()
    return float(np.mean(rewards))


def test_learns_as_well_as_sb3():
    kwargs = {"learning_starts": 64, "batch_size": 64, "policy_kwargs": {"net_arch": [32, 32]}, "learning_rate": 3e-3}
    results = {}
    for cls in (SAC, FastSAC):
        model = cls("MlpPolicy", DummyVecEnv([Reach]), seed=0, device="cpu", gamma=0.5, **kwargs)
        untrained = mean_reward(model)
        model.learn(500)
        results[cls.__name__] = (untrained, mean_reward(model))
    for untrained, trained in results.values():
        assert untrained < -0.4 and trained > -0.1  # from ~-0.66 (actions near 0) to near the optimum 0
    assert results["FastSAC"][1] == pytest.approx(results["SAC"][1], abs=0.05)


@pytest.mark.gpu
def test_cuda_eager_update_matches_sb3(no_tf32):
    sb3, fast = pair(device="cuda")
    assert_same_update(sb3, fast, steps=3, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_cuda_graphs_replay_real_updates(amp):
    fast = FastSAC("MlpPolicy", site_env(), seed=0, device="cuda", cuda_graphs=True, graph_steps=4, amp=amp, **TINY)
    fast.set_logger(Logger(None, []))
    fill([fast])
    before = state(fast)
    fast.train(10, BATCH)  # 4 warm-up steps, capture, 1 replay of 4, 2 eager steps
    assert BATCH in fast._fast._graphs
    fast.train(8, BATCH)  # 2 replays of the cached graph
    after = state(fast)
    assert fast._n_updates == 18
    for key, value in before.items():
        assert torch.isfinite(after[key]).all(), key
        assert not torch.equal(after[key], value), f"{key} did not change"
    assert np.isfinite(fast.logger.name_to_value["train/critic_loss"])


@pytest.mark.gpu
@pytest.mark.parametrize("ent_coef", ["auto", 0.1])
def test_cuda_graph_updates_match_eager_updates(ent_coef, no_tf32):
    """The captured path runs the same update as the eager one: same weights after warm-up, capture and
    replays (fixed batch; the actor's noise comes from the same CUDA generator stream in both)."""
    _, eager = pair(device="cuda", ent_coef=ent_coef)
    _, graphed = pair(device="cuda", ent_coef=ent_coef, fast_kwargs={"cuda_graphs": True, "graph_steps": 4})
    graphed.policy.load_state_dict(eager.policy.state_dict())
    before = state(eager)
    for m in (eager, graphed):
        torch.manual_seed(123)
        m.train(12, BATCH)  # graphs: 4 warm-up steps, capture, 2 replays of 4
    assert BATCH in graphed._fast._graphs
    after_eager, after_graphed = state(eager), state(graphed)
    for key, value in before.items():
        assert not torch.equal(after_eager[key], value), f"{key} did not change: the comparison would be vacuous"
        torch.testing.assert_close(after_graphed[key], after_eager[key], rtol=1e-4, atol=1e-5, msg=key)
    for key in ("train/critic_loss", "train/actor_loss"):
        assert graphed.logger.name_to_value[key] == pytest.approx(eager.logger.name_to_value[key], rel=1e-4), key


@pytest.mark.parametrize("native", [False, True])
def test_products_go_to_onednn_only_where_the_cpu_makes_it_win(monkeypatch, native):
    """Without AVX-512 oneDNN's fp32 kernels lose to MKL, and without bf16 instructions it cannot build
    a bf16 product: those products take torch's own matmul, bf16 ones in float32 on the rounded inputs."""
    if native and not onednn_linear.available():
        pytest.skip("this torch build has no oneDNN")
    if not native:  # a CPU without AVX-512 and bf16 (this project's Zen 3 machines are one)
        monkeypatch.setattr(onednn_linear, "fast_fp32", lambda: False)
        monkeypatch.setattr(onednn_linear, "native_bf16", lambda: False)
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(64, 32, generator=gen), torch.randn(48, 32, generator=gen), torch.randn(48, generator=gen)
    for dtype in (torch.float32, torch.bfloat16):
        xs, ws, bs = x.to(dtype), w.to(dtype), b.to(dtype)
        goes = native and (onednn_linear.native_bf16() if dtype == torch.bfloat16 else onednn_linear.fast_fp32())
        assert onednn_linear.takes(xs, ws) == goes
        y = onednn_linear.matmul_t(xs, ws, bs, relu=True)
        ref = torch.addmm(bs.float(), xs.float(), ws.float().t()).relu()
        if not goes:
            assert y.dtype == torch.float32
            torch.testing.assert_close(y, ref)
        else:
            torch.testing.assert_close(y.float(), ref, rtol=0.02, atol=0.05)

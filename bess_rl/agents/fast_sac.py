"""SB3's SAC with a fused, device-resident update: the same maths, far fewer host round trips.

Why: the SAC presets (docs/presets.md) do 1,024 gradient steps per env step, so ``train`` is the run time.
SB3's loop draws numpy indices, copies every batch to the device, builds distribution objects and
calls ``.item()`` four times per step. Here the replay storage is one tensor on the model's device,
indices are drawn there, losses are summed there and read once per ``train`` call, the optimisers
are fused (CPU) or capturable (CUDA) Adam with the learning rate and entropy coefficient as device
tensors, and on CUDA ``graph_steps`` gradient steps are captured once and replayed as one CUDA graph.
The losses, their order and the polyak update are exactly ``stable_baselines3.SAC.train``'s, so
``FastSAC`` is a drop-in: same constructor, policy, ``save``/``load``/``predict``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import BaseBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import get_device
from torch.nn import functional as F

from bess_rl.agents import graphs, manual_sac, onednn_linear
from bess_rl.agents.capabilities import Capabilities, missing_cpu_compiler
from bess_rl.agents.gaussian import log_prob as normal_log_prob
from bess_rl.agents.tensor_lr import TensorLr

AMP_MODES = ("none", "bf16", "fp16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
MATMUL_MODES = ("auto", "torch", "onednn")
_SQUASH_EPS = 1e-6  # SB3's SquashedDiagGaussianDistribution epsilon
_STATS = ("critic_loss", "actor_loss", "ent_coef_loss", "ent_coef")
STOP_POLL_STEPS = 16  # gradient steps between polls of ``should_stop`` (~0.1 s for the 256x256 presets on CPU)


class DeviceReplayBuffer(ReplayBuffer):
    """Replay storage as one ``(buffer_size * n_envs, width)`` float32 tensor on the model's device.

    A row is ``[obs, next_obs, action, reward, done]`` with ``done`` already cleared for time-limit
    truncations (what SB3 computes at sample time), so a batch is one gather. ``rows`` (valid rows)
    lives on the device too: a captured CUDA graph samples from a buffer that keeps growing.
    Subclasses ``ReplayBuffer`` so SB3's ``load_replay_buffer`` accepts it; the numpy arrays are not made.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: torch.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
    ) -> None:
        if optimize_memory_usage:
            raise ValueError("DeviceReplayBuffer does not support optimize_memory_usage=True")
        if not isinstance(observation_space, spaces.Box) or not isinstance(action_space, spaces.Box):
            raise ValueError("DeviceReplayBuffer needs Box observation and action spaces")
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs)
        self.optimize_memory_usage = False
        self.handle_timeout_termination = handle_timeout_termination
        obs_dim = int(np.prod(self.obs_shape))
        widths = {"obs": obs_dim, "next_obs": obs_dim, "action": self.action_dim, "reward": 1, "done": 1}
        bounds = np.cumsum([0, *widths.values()])
        self.columns = {name: slice(int(a), int(b)) for name, a, b in zip(widths, bounds[:-1], bounds[1:], strict=True)}
        self._staging = np.zeros((n_envs, int(bounds[-1])), np.float32)
        # Rows past ``rows`` are never sampled, so left uninitialised (as untouched as SB3's lazy np.zeros).
        self.data = torch.empty((buffer_size * n_envs, int(bounds[-1])), dtype=torch.float32, device=self.device)
        self.rows = torch.zeros((), dtype=torch.int64, device=self.device)

    @property
    def device(self) -> torch.device:
        return self._device

    @device.setter
    def device(self, value: torch.device | str) -> None:
        """SB3's ``load_replay_buffer`` sets the model's device: move the storage with it."""
        self._device = get_device(value)
        if "data" in self.__dict__:
            self.data, self.rows = self.data.to(self._device), self.rows.to(self._device)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle on the CPU, so a buffer saved on a GPU machine loads on any machine."""
        state = self.__dict__.copy()
        state["data"], state["rows"], state["_device"] = self.data.cpu(), self.rows.cpu(), torch.device("cpu")
        return state

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        row, col = self._staging, self.columns
        row[:, col["obs"]] = np.asarray(obs).reshape(self.n_envs, -1)
        row[:, col["next_obs"]] = np.asarray(next_obs).reshape(self.n_envs, -1)
        row[:, col["action"]] = np.asarray(action).reshape(self.n_envs, -1)
        row[:, col["reward"]] = np.asarray(reward).reshape(self.n_envs, 1)
        timeouts = [info.get("TimeLimit.truncated", False) for info in infos] if self.handle_timeout_termination else 0
        row[:, col["done"]] = (np.asarray(done) * (1 - np.asarray(timeouts))).reshape(self.n_envs, 1)
        start = self.pos * self.n_envs
        self.data[start : start + self.n_envs].copy_(torch.from_numpy(row))
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full, self.pos = True, 0
        self.rows.fill_(self.size() * self.n_envs)

    def reset(self) -> None:
        super().reset()
        self.rows.zero_()

    def sample_indices(self, batch_size: int) -> torch.Tensor:
        """Uniform row indices drawn on the device; no host value, so it can sit inside a CUDA graph."""
        return torch.randint(0, 2**62, (batch_size,), device=self.device) % self.rows

    def batch(self, indices: torch.Tensor) -> ReplayBufferSamples:
        """The rows at ``indices`` as SB3's named batch (observations, actions, next_obs, dones, rewards)."""
        rows, col = self.data[indices], self.columns
        return ReplayBufferSamples(
            rows[:, col["obs"]].reshape(-1, *self.obs_shape),
            rows[:, col["action"]],
            rows[:, col["next_obs"]].reshape(-1, *self.obs_shape),
            rows[:, col["done"]],
            rows[:, col["reward"]],
        )

    def sample(self, batch_size: int, env: Any = None) -> ReplayBufferSamples:
        if env is not None:
            raise ValueError("DeviceReplayBuffer stores raw observations and cannot apply VecNormalize")
        return self.batch(self.sample_indices(batch_size))


def squashed_sample(
    mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """tanh-squashed Gaussian action and its log-prob, written op for op as SB3 + torch.distributions do."""
    std = torch.ones_like(mean) * log_std.exp()
    gaussian = mean + noise * std
    action = torch.tanh(gaussian)
    log_prob = normal_log_prob(gaussian, mean, std).sum(dim=1)
    log_prob = log_prob - torch.sum(torch.log(1 - action**2 + _SQUASH_EPS), dim=1)
    return action, log_prob.reshape(-1, 1)


class FastSAC(SAC):
    """``stable_baselines3.SAC`` whose ``train`` is the fused update described in the module docstring.

    Extra keyword arguments (saved with the model; ``FastSAC.load(..., cuda_graphs=False)`` overrides):
    ``amp`` "none" | "bf16" (autocast, no scaler) | "fp16" (autocast + GradScaler, eager only);
    ``cuda_graphs`` capture ``graph_steps`` gradient steps per CUDA graph (CUDA only);
    ``compile_mode`` a ``torch.compile`` mode, or "none": on the hand-written CPU step the whole step is one
    graph (``manual_sac.ManualUpdate``), through autograd each loss function is compiled;
    ``matmul`` "onednn" runs the step as ``bess_rl.agents.manual_sac`` (hand-written gradients, oneDNN fp32 or,
    with ``amp="bf16"``, bf16 matmuls: a CPU path for SB3's ``MlpPolicy``), "torch" through autograd and
    the modules, "auto" picks "onednn" wherever it applies.
    """

    capabilities = Capabilities(amp=AMP_MODES, cuda_graphs=True, compile=True, device_replay_buffer=True)

    def __init__(
        self,
        policy: Any,
        env: Any,
        *args: Any,
        amp: str = "none",
        cuda_graphs: bool = False,
        compile_mode: str = "none",
        graph_steps: int = 16,
        matmul: str = "auto",
        **kwargs: Any,
    ) -> None:
        self.amp, self.cuda_graphs, self.compile_mode, self.graph_steps = amp, cuda_graphs, compile_mode, graph_steps
        self.matmul = matmul
        self._fast: _FastState | None = None
        # A signal guard's poll (not saved), and (done, asked) of an update it cut short (saved, so a resume
        # finishes that update first and stays exact).
        self.should_stop: Callable[[], bool] | None = None
        self.unfinished_train: list[int] | None = None
        super().__init__(policy, env, *args, **kwargs)

    # --- set-up --------------------------------------------------------------------------------
    def _setup_model(self) -> None:
        if self.replay_buffer_class in (None, ReplayBuffer):
            self.replay_buffer_class = DeviceReplayBuffer
        super()._setup_model()
        self._check_supported()
        self._fast = _FastState(self)

    def _check_supported(self) -> None:
        """Refuse, in one line each, what the fused update does not implement."""
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        missing = missing_cpu_compiler() if self.compile_mode != "none" and self.device.type == "cpu" else None
        if missing:
            raise ValueError(f"compile_mode={self.compile_mode!r} on a CPU needs a C++ compiler: {missing}, "
                             "or use compile_mode='none'")  # fmt: skip
        if self.matmul not in MATMUL_MODES:
            raise ValueError(f"matmul must be one of {MATMUL_MODES}, got {self.matmul!r}")
        if self.matmul == "onednn" and not self.onednn_fits():
            raise ValueError(
                "matmul='onednn' is the hand-written CPU update for SB3's MlpPolicy: needs device cpu, amp 'none' "
                "or 'bf16', ReLU Linear stacks without batch norm and a oneDNN build"
            )
        if self.graph_steps < 1 or self.graph_steps % self.target_update_interval:
            raise ValueError(
                f"graph_steps must be a positive multiple of target_update_interval "
                f"({self.target_update_interval}), got {self.graph_steps}"
            )
        if self.cuda_graphs:
            if self.device.type != "cuda":
                raise ValueError(
                    f"cuda_graphs=True needs a CUDA device, this model is on {self.device} "
                    "(load a graph-trained model elsewhere with FastSAC.load(..., cuda_graphs=False))"
                )
            if self.amp == "fp16":
                raise ValueError("amp='fp16' needs GradScaler, which syncs with the host: not with cuda_graphs")
            if self.compile_mode == "reduce-overhead":
                raise ValueError("compile_mode='reduce-overhead' makes its own CUDA graphs: not with cuda_graphs")
        if not isinstance(self.replay_buffer, DeviceReplayBuffer):
            raise ValueError(f"FastSAC needs a DeviceReplayBuffer, got {type(self.replay_buffer).__name__}")
        if self.use_sde:
            raise ValueError("FastSAC does not implement gSDE (use_sde=True): use stable_baselines3.SAC")
        if self._vec_normalize_env is not None:
            raise ValueError("FastSAC does not implement VecNormalize: use stable_baselines3.SAC")
        for opt in self._optimizers():
            if not isinstance(opt, torch.optim.Adam | torch.optim.AdamW):
                raise ValueError(f"FastSAC needs Adam or AdamW optimisers, got {type(opt).__name__}")

    def onednn_fits(self) -> bool:
        """Whether ``matmul='onednn'`` (``bess_rl.agents.manual_sac``) can run this model's update."""
        return (
            self.device.type == "cpu"
            and self.amp in ("none", "bf16")
            and not self.batch_norm_stats
            and onednn_linear.available()
            and manual_sac.supports(self)
        )

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        opts = [self.actor.optimizer, self.critic.optimizer]
        return opts if self.ent_coef_optimizer is None else [*opts, self.ent_coef_optimizer]

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_fast", "should_stop"]

    def _update_learning_rate(self, optimizers: list[torch.optim.Optimizer] | torch.optim.Optimizer) -> None:
        """Write the scheduled rate into the device tensor every optimiser reads (a graph sees it too)."""
        lr = self.lr_schedule(self._current_progress_remaining)
        self.logger.record("train/learning_rate", lr)
        self._fast.lr.set(lr)

    # --- the update ----------------------------------------------------------------------------
    def train(self, gradient_steps: int, batch_size: int = 64, first: int = 0) -> None:
        """Gradient steps ``first`` to ``gradient_steps``; stops early between chunks when ``should_stop`` says so."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self._optimizers())
        fast = self._fast
        totals = torch.zeros(len(_STATS), device=self.device)
        done = first
        if self.cuda_graphs and first == 0 and gradient_steps >= self.graph_steps:
            graph, out, done = fast.graph(batch_size, totals)
            while gradient_steps - done >= self.graph_steps and not self._stopping():
                graph.replay()
                totals += out
                done += self.graph_steps
        while done < gradient_steps and not (done > first and self._stopping()):
            count = min(STOP_POLL_STEPS, gradient_steps - done)
            totals += self._steps(done, count, batch_size)
            done += count
        self.unfinished_train = [done, gradient_steps] if done < gradient_steps else None
        gradient_steps = done - first
        means = dict(zip(_STATS, (totals / gradient_steps).tolist(), strict=True))  # the one host sync per call
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", means["ent_coef"])
        self.logger.record("train/actor_loss", means["actor_loss"])
        self.logger.record("train/critic_loss", means["critic_loss"])
        if self.ent_coef_optimizer is not None:
            self.logger.record("train/ent_coef_loss", means["ent_coef_loss"])

    def _stopping(self) -> bool:
        return self.should_stop is not None and self.should_stop()

    def finish_train(self) -> None:
        """The rest of an update a signal cut short, before anything else runs (a resumed run stays exact)."""
        if self.unfinished_train is not None:
            done, asked = self.unfinished_train
            self.train(asked, self.batch_size, first=done)

    def _steps(self, first: int, count: int, batch_size: int) -> torch.Tensor:
        """``count`` gradient steps numbered from ``first`` (SB3 polyaks when the number % interval == 0)."""
        totals = torch.zeros(len(_STATS), device=self.device)
        for step in range(first, first + count):
            batch = self.replay_buffer.batch(self.replay_buffer.sample_indices(batch_size))
            totals = totals + self._gradient_step(batch, step % self.target_update_interval == 0)
        return totals

    def _gradient_step(self, batch: ReplayBufferSamples, polyak: bool) -> torch.Tensor:
        """One step of SB3's SAC.train on ``batch``: entropy coefficient, critics, actor, targets."""
        fast = self._fast
        shape = batch.actions.shape
        noise = torch.empty(shape, device=self.device).normal_()  # same draws, same order as SB3
        if fast.manual is not None:
            next_noise = torch.empty(shape, device=self.device).normal_()
            return fast.manual.step(batch, noise, next_noise, fast.polyak if polyak else None)
        pi, log_prob = fast.actor_sample(batch.observations, noise)
        if self.ent_coef_optimizer is not None:
            ent_coef = torch.exp(self.log_ent_coef.detach())
            excess = (log_prob.detach() + self.target_entropy).mean()
            ent_coef_loss = -(self.log_ent_coef.detach() * excess).reshape(())
            self.log_ent_coef.grad = -excess.reshape(1)  # d(ent_coef_loss)/d(log_ent_coef), no autograd pass
            self.ent_coef_optimizer.step()
        else:
            ent_coef, ent_coef_loss = self.ent_coef_tensor, torch.zeros((), device=self.device)

        next_noise = torch.empty(shape, device=self.device).normal_()
        target_q = fast.target_q(batch.next_observations, next_noise, batch.rewards, batch.dones, ent_coef)
        critic_loss = fast.critic_loss(batch.observations, batch.actions, target_q)
        fast.apply(self.critic.optimizer, critic_loss)
        actor_loss = fast.actor_loss(batch.observations, pi, log_prob, ent_coef)
        fast.apply(self.actor.optimizer, actor_loss)
        if fast.scaler is not None:
            fast.scaler.update()
        if polyak:
            fast.polyak()
        return torch.stack([critic_loss.detach(), actor_loss.detach(), ent_coef_loss, ent_coef.reshape(())])


class _FastState:
    """Everything ``FastSAC`` builds at run time and never saves: lr tensor, scaler, loss functions, graphs."""

    def __init__(self, model: FastSAC) -> None:
        self.model = model
        device = model.device
        # Graphs: capturable Adam keeps its step counter on the device and syncs nothing (torch's docs say
        # it slows ungraphed runs); otherwise the fused kernel, on CPU and CUDA alike.
        graphs = model.cuda_graphs
        flags = {"capturable": graphs, "foreach": graphs, "fused": not graphs}
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.lr = TensorLr(model.lr_schedule(1), device, flags, on_load=self._graphs.clear)
        model.actor.optimizer = self.lr.rebuild(model.actor.optimizer)
        model.critic.optimizer = self.lr.rebuild(model.critic.optimizer)
        if model.ent_coef_optimizer is not None:
            model.ent_coef_optimizer = self.lr.rebuild(model.ent_coef_optimizer)
        self.scaler = torch.amp.GradScaler(device.type) if model.amp == "fp16" else None
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(model.amp)
        self.targets = (list(model.critic.parameters()), list(model.critic_target.parameters()))
        self.stats = (model.batch_norm_stats, model.batch_norm_stats_target)
        use_manual = model.matmul == "onednn" or (model.matmul == "auto" and model.onednn_fits())
        self.manual = manual_sac.ManualUpdate(model) if use_manual else None
        compiled_losses = model.compile_mode != "none" and self.manual is None  # the manual step compiles itself
        wrap: Callable[[Callable], Callable] = (
            (lambda fn: torch.compile(fn, mode=model.compile_mode)) if compiled_losses else (lambda fn: fn)
        )
        self.actor_sample = wrap(self._actor_sample)
        self.target_q = wrap(self._target_q)
        self.critic_loss = wrap(self._critic_loss)
        self.actor_loss = wrap(self._actor_loss)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """bf16/fp16 autocast for network forwards; no weight cache (weights change within a step)."""
        if self.amp_dtype is None:
            yield
        else:
            with torch.autocast(self.model.device.type, dtype=self.amp_dtype, cache_enabled=False):
                yield

    # Loss pieces, split so each autograd graph is separate (and each can be torch.compile'd).
    def _actor_sample(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        actor = self.model.actor
        with self.autocast():
            latent = actor.latent_pi(actor.extract_features(obs, actor.features_extractor))
            mean, log_std = actor.mu(latent), actor.log_std(latent)
        log_std = torch.clamp(log_std.float(), -20, 2)  # SB3's LOG_STD_MIN, LOG_STD_MAX
        return squashed_sample(mean.float(), log_std, noise)

    def _target_q(
        self,
        next_obs: torch.Tensor,
        noise: torch.Tensor,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        ent_coef: torch.Tensor,
    ) -> torch.Tensor:
        model = self.model
        with torch.no_grad():
            next_actions, next_log_prob = self._actor_sample(next_obs, noise)
            with self.autocast():
                next_q = torch.cat(model.critic_target(next_obs, next_actions), dim=1).float()
            next_q, _ = torch.min(next_q, dim=1, keepdim=True)
            next_q = next_q - ent_coef * next_log_prob
            return rewards + (1 - dones) * model.gamma * next_q

    def _critic_loss(self, obs: torch.Tensor, actions: torch.Tensor, target_q: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            current_q = self.model.critic(obs, actions)
        return 0.5 * sum(F.mse_loss(q.float(), target_q) for q in current_q)

    def _actor_loss(
        self, obs: torch.Tensor, pi: torch.Tensor, log_prob: torch.Tensor, ent_coef: torch.Tensor
    ) -> torch.Tensor:
        with self.autocast():
            q_pi = torch.cat(self.model.critic(obs, pi), dim=1).float()
        min_q_pi, _ = torch.min(q_pi, dim=1, keepdim=True)
        return (ent_coef * log_prob - min_q_pi).mean()

    def apply(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """Gradients of ``loss`` for ``opt``'s parameters only (the actor loss skips critic weight
        gradients SB3 computes and throws away), then the optimiser step."""
        params = [p for group in opt.param_groups for p in group["params"]]
        if self.scaler is None:
            grads = torch.autograd.grad(loss, params)
        else:
            grads = torch.autograd.grad(self.scaler.scale(loss), params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)

    @torch.no_grad()
    def polyak(self) -> None:
        """SB3's polyak_update (mul by 1 - tau, add tau x online) as two foreach kernels."""
        online, target = self.targets
        torch._foreach_mul_(target, 1 - self.model.tau)
        torch._foreach_add_(target, online, alpha=self.model.tau)
        if self.stats[0]:
            torch._foreach_copy_(self.stats[1], self.stats[0])

    def graph(self, batch_size: int, totals: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, int]:
        """The CUDA graph of ``graph_steps`` steps for ``batch_size``, its summed-stats output tensor and how
        many steps were run (and added to ``totals``) while making it: warm-up steps are real updates."""
        if batch_size in self._graphs:
            return (*self._graphs[batch_size], 0)
        k = self.model.graph_steps
        totals += graphs.warm_up(lambda: self.model._steps(0, k, batch_size))
        graph, out = graphs.capture(lambda: self.model._steps(0, k, batch_size))
        self._graphs[batch_size] = (graph, out)
        return graph, out, k

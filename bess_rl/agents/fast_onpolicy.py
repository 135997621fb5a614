"""SB3's PPO and A2C with a lean rollout collection: the same numbers, far less Python per step.

Why: on ``PvBessEvEnv`` SB3's ``collect_rollouts`` is most of ``learn`` (PPO at the presets: ~75 %),
and most of that is per-step overhead around a tiny MLP: ``nn.Module`` call machinery, a fresh
``torch.distributions.Normal`` (with argument validation) per step, autograd bookkeeping.
``FastPPO``/``FastA2C`` keep SB3's loop (clipping, time-limit bootstrapping, buffer, callbacks,
GAE) and replace only the policy forward by the same tensor ops called directly under
``torch.inference_mode``: ``F.linear``/``torch.tanh`` on the layers' own parameters, SB3's
``rsample`` draw (one ``empty(...).normal_()`` of the mean's shape, so the torch RNG is consumed as
SB3 does) and ``Normal.log_prob`` summed over action dims. The std terms depend only on ``log_std``,
which is constant during a rollout, so they are computed once per rollout at the shape SB3 uses per
step. Same ops, same shapes: the rollouts and the trained weights are bit-identical to SB3's.
Buffers, updates (``train``), ``save``/``load``/``predict`` are SB3's, so these are drop-ins.
``cuda_graphs=True`` (CUDA only) swaps ``train`` for ``bess_rl.agents.onpolicy_graphs``' captured update: the
same losses, replayed as one CUDA graph per minibatch.
Only the default ``MlpPolicy`` with a diagonal Gaussian (Box actions, no gSDE) is supported;
anything else is refused at construction. Module hooks are not run by the lean forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from stable_baselines3.common.utils import explained_variance, get_device, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import nn
from torch.nn import functional as F

from bess_rl.agents.capabilities import Capabilities
from bess_rl.agents.gaussian import LOG_SQRT_2PI
from bess_rl.agents.onpolicy_graphs import Batch, StaticUpdate, evaluate_actions


def _bind(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module's forward without ``nn.Module.__call__``; Linear and Tanh as the bare ops they run."""
    if type(module) is nn.Linear:
        return functools.partial(F.linear, weight=module.weight, bias=module.bias)
    if type(module) is nn.Tanh:
        return torch.tanh
    return module.forward


class _LeanActor:
    """One rollout's policy forward: actions, values and log-probs op for op as ``ActorCriticPolicy.forward``."""

    def __init__(self, policy: ActorCriticPolicy, n_envs: int) -> None:
        self.policy = policy
        mlp = policy.mlp_extractor
        self.pi_layers = [_bind(m) for m in (*mlp.policy_net, policy.action_net)]
        self.vf_layers = [_bind(m) for m in (*mlp.value_net, policy.value_net)]
        with torch.inference_mode():
            # DiagGaussianDistribution.proba_distribution + Normal.log_prob at the (n_envs, action_dim) shape.
            log_std = policy.log_std
            self.scale = torch.ones((n_envs, policy.action_dist.action_dim), dtype=log_std.dtype, device=log_std.device)
            self.scale = self.scale * log_std.exp()
            self.two_var = 2 * self.scale**2
            self.log_scale = self.scale.log()

    @staticmethod
    def _run(layers: list[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            x = layer(x)
        return x

    def __call__(self, obs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Call under ``torch.inference_mode``."""
        policy = self.policy
        features = preprocess_obs(obs_as_tensor(obs, policy.device), policy.observation_space, policy.normalize_images)
        features = features.flatten(1)  # FlattenExtractor (shared or not: it has no parameters)
        mean = self._run(self.pi_layers, features)
        values = self._run(self.vf_layers, features)
        eps = torch.empty(mean.shape, dtype=mean.dtype, device=mean.device).normal_()  # Normal.rsample's draw
        actions = mean + eps * self.scale
        log_probs = (-((actions - mean) ** 2) / self.two_var - self.log_scale - LOG_SQRT_2PI).sum(dim=1)
        return actions, values, log_probs


class _LeanCollectMixin:
    """``OnPolicyAlgorithm.collect_rollouts`` with the lean policy forward, and with ``cuda_graphs=True``
    the captured update; mixed in before PPO/A2C, which supply ``_static_loss``/``_static_log``."""

    capabilities = Capabilities(cuda_graphs=True, prefers_cpu=True)

    def __init__(self, *args: Any, cuda_graphs: bool = False, **kwargs: Any) -> None:
        self.cuda_graphs = cuda_graphs
        self._static: StaticUpdate | None = None
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self._check_supported()
        if self.cuda_graphs:
            self._static = StaticUpdate(self, self._static_loss, capture=True)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_static", "_clip", "_clip_vf"]

    def get_parameters(self) -> dict[str, dict]:
        """What ``save`` writes: the optimiser as SB3 keeps it (float lr, not capturable), so a model
        trained with CUDA graphs loads anywhere, also into plain SB3 on a CPU."""
        params = super().get_parameters()
        if self._static is not None and self._static.lr is not None:
            for group in params["policy.optimizer"]["param_groups"]:
                group.update(lr=self.lr_schedule(self._current_progress_remaining), capturable=False, foreach=None)
        return params

    def _update_learning_rate(self, optimizers: list[torch.optim.Optimizer] | torch.optim.Optimizer) -> None:
        """SB3's float learning rate, or with a captured update the device tensor its graph reads."""
        if self._static is None or self._static.lr is None:
            super()._update_learning_rate(optimizers)
            return
        lr = self.lr_schedule(self._current_progress_remaining)
        self.logger.record("train/learning_rate", lr)
        self._static.lr.set(lr)

    def train(self) -> None:
        """SB3's update, or with a ``StaticUpdate`` the same losses run from a device copy of the rollout."""
        if self._static is None:
            super().train()
            return
        static = self._static
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        self._static_schedules()
        n_rows = static.load_rollout()
        epochs, batch_size = self._static_plan(n_rows)
        stats = []
        for _ in range(epochs):
            perm = static.permutation(n_rows)
            stats += [static.step(perm[start : start + batch_size]) for start in range(0, n_rows, batch_size)]
            self._n_updates += 1
        buf = self.rollout_buffer
        self.logger.record("train/explained_variance", explained_variance(buf.values.flatten(), buf.returns.flatten()))
        self.logger.record("train/std", torch.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self._static_log(torch.stack(stats).cpu().numpy().reshape(epochs, -1, len(stats[0])))  # the one host read

    def _check_supported(self) -> None:
        """Refuse, in one line each, what the lean forward does not reproduce exactly."""
        name = type(self).__name__
        base = next(c.__name__ for c in type(self).__mro__ if c in (PPO, A2C))
        policy = self.policy
        if self.use_sde:
            raise ValueError(f"{name} does not implement gSDE (use_sde=True): use stable_baselines3.{base}")
        if not isinstance(self.action_space, spaces.Box) or type(policy.action_dist) is not DiagGaussianDistribution:
            raise ValueError(f"{name} needs Box actions (a diagonal Gaussian policy): use stable_baselines3.{base}")
        if type(policy) is not ActorCriticPolicy:
            raise ValueError(f"{name} needs the default MlpPolicy, got {type(policy).__name__}")
        extractors = (policy.features_extractor, policy.pi_features_extractor, policy.vf_features_extractor)
        flat = all(type(e) is FlattenExtractor for e in extractors)
        if not isinstance(self.observation_space, spaces.Box) or not flat:
            raise ValueError(f"{name} needs Box observations and SB3's FlattenExtractor: use stable_baselines3.{base}")
        if type(policy.mlp_extractor) is not MlpExtractor:
            raise ValueError(f"{name} needs SB3's MlpExtractor, got {type(policy.mlp_extractor).__name__}")
        if self.cuda_graphs and getattr(self, "target_kl", None) is not None:
            raise ValueError(f"{name}: target_kl stops on a host decision per minibatch, not with cuda_graphs=True")

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """SB3's loop line for line (local names kept for callbacks), except the forward and a vectorised done scan."""
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        callback.on_rollout_start()
        actor = _LeanActor(self.policy, env.num_envs)
        low, high = self.action_space.low, self.action_space.high

        while n_steps < n_rollout_steps:
            with torch.inference_mode():
                actions, values, log_probs = actor(self._last_obs)
            actions = actions.cpu().numpy()
            # Clip to the Box: the Gaussian is unbounded (an MlpPolicy without gSDE never squashes).
            clipped_actions = actions.clip(low, high)

            new_obs, rewards, dones, infos = env.step(clipped_actions)

            self.num_timesteps += env.num_envs

            callback.update_locals(locals())
            if not callback.on_step():
                return False

            self._update_info_buffer(infos, dones)
            n_steps += 1

            # Handle timeout by bootstrapping with the value function (SB3 issue #633), SB3's own calls.
            for idx in np.flatnonzero(dones):
                if infos[idx].get("terminal_observation") is not None and infos[idx].get("TimeLimit.truncated", False):
                    terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with torch.no_grad():
                        terminal_value = self.policy.predict_values(terminal_obs)[0]
                    rewards[idx] += self.gamma * terminal_value

            rollout_buffer.add(self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs)
            self._last_obs = new_obs
            self._last_episode_starts = dones

        with torch.no_grad():
            # Compute value for the last timestep
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device))

        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

        callback.update_locals(locals())

        callback.on_rollout_end()

        return True


class FastPPO(_LeanCollectMixin, PPO):
    """``stable_baselines3.PPO`` with the lean rollout collection of this module (same constructor, plus
    ``cuda_graphs``)."""

    def _setup_model(self) -> None:
        self._clip = torch.zeros((), device=get_device(self.device))  # schedules, read by a captured step
        self._clip_vf = torch.zeros((), device=get_device(self.device))
        super()._setup_model()

    def _static_schedules(self) -> None:
        self._clip.fill_(self.clip_range(self._current_progress_remaining))
        if self.clip_range_vf is not None:
            self._clip_vf.fill_(self.clip_range_vf(self._current_progress_remaining))

    def _static_plan(self, n_rows: int) -> tuple[int, int]:
        return self.n_epochs, self.batch_size

    def _static_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``PPO.train``'s loss, line for line; stats: policy, clip fraction, value, entropy, approx KL, loss."""
        clip_range = self._clip
        values, log_prob, entropy = evaluate_actions(self.policy, batch.observations, batch.actions)
        values = values.flatten()
        advantages = batch.advantages
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        ratio = torch.exp(log_prob - batch.old_log_prob)
        policy_loss_1 = advantages * ratio
        policy_loss_2 = advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
        policy_loss = -torch.min(policy_loss_1, policy_loss_2).mean()
        clip_fraction = torch.mean((torch.abs(ratio - 1) > clip_range).float())
        if self.clip_range_vf is None:
            values_pred = values
        else:
            values_pred = batch.old_values + torch.clamp(values - batch.old_values, -self._clip_vf, self._clip_vf)
        value_loss = F.mse_loss(batch.returns, values_pred)
        entropy_loss = -torch.mean(entropy)
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        with torch.no_grad():
            log_ratio = log_prob - batch.old_log_prob
            approx_kl_div = torch.mean((torch.exp(log_ratio) - 1) - log_ratio)
        stats = torch.stack([policy_loss, clip_fraction, value_loss, entropy_loss, approx_kl_div, loss])
        return loss, stats.detach()

    def _static_log(self, stats: np.ndarray) -> None:
        """``PPO.train``'s records from the (epochs, minibatches, 6) stats."""
        policy, clip_fraction, value, entropy, approx_kl, loss = np.moveaxis(stats, -1, 0)
        self.logger.record("train/entropy_loss", entropy.mean())
        self.logger.record("train/policy_gradient_loss", policy.mean())
        self.logger.record("train/value_loss", value.mean())
        self.logger.record("train/approx_kl", approx_kl[-1].mean())  # SB3 keeps the last epoch's
        self.logger.record("train/clip_fraction", clip_fraction.mean())
        self.logger.record("train/loss", loss[-1, -1])
        self.logger.record("train/clip_range", self.clip_range(self._current_progress_remaining))
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", self.clip_range_vf(self._current_progress_remaining))


class FastA2C(_LeanCollectMixin, A2C):
    """``stable_baselines3.A2C`` with the lean rollout collection of this module (same constructor, plus
    ``cuda_graphs``)."""

    def _static_schedules(self) -> None:
        """A2C schedules only the learning rate."""

    def _static_plan(self, n_rows: int) -> tuple[int, int]:
        return 1, n_rows  # one step on the whole rollout

    def _static_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``A2C.train``'s loss, line for line; stats: policy, value, entropy."""
        values, log_prob, entropy = evaluate_actions(self.policy, batch.observations, batch.actions)
        values = values.flatten()
        advantages = batch.advantages
        if self.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -(advantages * log_prob).mean()
        value_loss = F.mse_loss(batch.returns, values)
        entropy_loss = -torch.mean(entropy)
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        return loss, torch.stack([policy_loss, value_loss, entropy_loss]).detach()

    def _static_log(self, stats: np.ndarray) -> None:
        policy, value, entropy = stats[-1, -1]
        self.logger.record("train/entropy_loss", entropy)
        self.logger.record("train/policy_loss", policy)
        self.logger.record("train/value_loss", value)

"""Population training: N SAC agents in one process, their weights stacked along a leading dimension.

Why: seeds and hyper-parameter variants are usually trained one run at a time, each paying the
whole per-op cost (Python, dispatch, launches) of a small-network update. Here the N members'
tensors are stacked to (N, ...) and ``bess_rl.agents.manual_sac.sac_step`` runs all of them at once with
batched matmuls, so that cost is paid once per population step, and on a CPU the larger products
keep every core busy. Each member is a plain ``FastSAC`` (its seed's initial weights, its own env copy
and replay buffer); ``member_model(i)`` writes the member's trained weights and Adam state back into
it, so it saves, loads and predicts as any SB3-compatible model.

A member's update is SB3's maths on its own batch with its own random stream (a ``torch.Generator``
seeded like ``torch.manual_seed(seed)``), so it follows ``FastSAC.train`` of the same seed on the same
buffer to float32 tolerance (rtol 1e-4 after 300 updates, tests/test_population.py). On a GPU the
stacked products are single batched matmuls; that path is written but not yet measured.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import DummyVecEnv

from bess_rl.agents import onednn_linear
from bess_rl.agents.fast_sac import STOP_POLL_STEPS, FastSAC
from bess_rl.agents.manual_sac import (
    SacNets,
    StepTerms,
    forward,
    matmul_t,
    plain_adam,
    sac_step,
    stacked_critics,
    supports,
)

log = logging.getLogger(__name__)
Tree = Any  # nested lists / tuples of tensors, shaped like a SacNets field


def _stack(trees: list[Tree]) -> Tree:
    """The members' trees as one tree of stacked (N, ...) copies."""
    first = trees[0]
    if isinstance(first, torch.Tensor):
        return torch.stack([t.detach() for t in trees]).contiguous()
    return type(first)(_stack([t[k] for t in trees]) for k in range(len(first)))


def _leaves(tree: Tree) -> list[torch.Tensor]:
    return [tree] if isinstance(tree, torch.Tensor) else [leaf for sub in tree for leaf in _leaves(sub)]


def _per_member(value: Any, size: int, name: str) -> list[Any]:
    """``value`` for each member: a list of ``size`` values, or one value for all."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != size:
            raise ValueError(f"{name} has {len(value)} values for a population of {size}")
        return list(value)
    return [value] * size


class StackedAdam:
    """Adam (torch's defaults: no weight decay, no amsgrad) on stacked tensors with one learning rate
    per member; ``moments(i)`` is member i's state in ``torch.optim.Adam``'s format.

    Why torch's fused kernel: it is the one a single ``FastSAC`` steps with (so a member follows it more
    closely), and one pass over the stacked moments where nine foreach ops each read them again.
    Members sharing a learning rate are stepped in one call; when all do, on the stacked tensors whole.
    """

    def __init__(self, params: list[torch.Tensor], lr: torch.Tensor, betas: tuple[float, float], eps: float) -> None:
        self.params, self.betas, self.eps = params, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        rates = [float(r) for r in lr.tolist()]
        # learning rate -> its members (None: every member, the stacked tensors as they are)
        self.groups: dict[float, list[int] | None] = (
            {rates[0]: None}
            if len(set(rates)) == 1
            else {r: [i for i, x in enumerate(rates) if x == r] for r in dict.fromkeys(rates)}
        )
        self.state = {
            rate: self._slices(members, [params, self.exp_avg, self.exp_avg_sq])
            for rate, members in self.groups.items()
        }
        self.counters = {
            rate: [torch.zeros((), device=p.device) for p in state[0]] for rate, state in self.state.items()
        }

    @staticmethod
    def _slices(members: list[int] | None, lists: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """Each list's tensors as the rows of ``members`` (tensor by tensor), or whole for all members."""
        if members is None:
            return lists
        return [[t[i] for t in tensors for i in members] for tensors in lists]

    def step(self, grads: list[torch.Tensor], plain: bool = False) -> None:
        """One Adam step; ``plain``: as ``plain_adam`` ops, for a compiled population step."""
        beta1, beta2 = self.betas
        for rate, members in self.groups.items():
            params, exp_avg, exp_avg_sq = self.state[rate]
            (grad,) = self._slices(members, [grads])
            if plain:
                steps = self.counters[rate]
                plain_adam(params, grad, exp_avg, exp_avg_sq, steps, lr=rate, beta1=beta1, beta2=beta2, eps=self.eps)
                continue
            torch._foreach_add_(self.counters[rate], 1)
            torch._fused_adam_(
                params, grad, exp_avg, exp_avg_sq, [], self.counters[rate],
                lr=rate, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False,
                grad_scale=None, found_inf=None,
            )  # fmt: skip

    def moments(self, i: int, like: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Member ``i``'s state per parameter, shaped and placed as the matching tensor of ``like``."""
        step = next(iter(self.counters.values()))[0]  # every group steps together
        return [
            {
                "step": step.to(p.device, copy=True),
                "exp_avg": m[i].reshape(p.shape).to(p.device, copy=True),
                "exp_avg_sq": v[i].reshape(p.shape).to(p.device, copy=True),
            }
            for m, v, p in zip(self.exp_avg, self.exp_avg_sq, like, strict=True)
        ]

    def load_moments(self, i: int, states: list[dict[str, torch.Tensor] | None]) -> None:
        """Member ``i``'s state back from ``torch.optim.Adam``'s format, the inverse of ``moments``; None for a
        parameter not stepped yet (no update before the checkpoint) leaves it as it is."""
        for m, v, state in zip(self.exp_avg, self.exp_avg_sq, states, strict=True):
            if state is not None:
                m[i].copy_(state["exp_avg"].reshape(m[i].shape))
                v[i].copy_(state["exp_avg_sq"].reshape(v[i].shape))
        steps = [float(state["step"]) for state in states if state is not None]
        for counter in (c for cs in self.counters.values() for c in cs) if steps else ():
            counter.fill_(steps[0])  # every group steps together


class Population:
    """N ``FastSAC`` members (``MlpPolicy``, one env copy each) trained as one stacked update.

    ``learning_rate``, ``tau``, ``gamma`` and ``target_entropy`` take one value or one per member;
    the other keyword arguments go to every member's ``FastSAC`` (``net_arch`` via ``policy_kwargs``).
    """

    def __init__(
        self,
        env_fn: Callable[[], gym.Env],
        size: int,
        seeds: Sequence[int] | None = None,
        learning_rate: float | Sequence[float] = 3e-4,
        tau: float | Sequence[float] = 0.005,
        gamma: float | Sequence[float] = 0.99,
        target_entropy: float | str | Sequence[float] = "auto",
        device: str = "cpu",
        **sac_kwargs: Any,
    ) -> None:
        if size < 1:
            raise ValueError(f"population size must be positive, got {size}")
        self.size = size
        self.seeds = list(seeds) if seeds is not None else list(range(size))
        if len(self.seeds) != size:
            raise ValueError(f"{len(self.seeds)} seeds for a population of {size}")
        per = {
            "learning_rate": _per_member(learning_rate, size, "learning_rate"),
            "tau": _per_member(tau, size, "tau"),
            "gamma": _per_member(gamma, size, "gamma"),
            "target_entropy": _per_member(target_entropy, size, "target_entropy"),
        }
        self.members = [
            FastSAC(
                "MlpPolicy",
                DummyVecEnv([env_fn]),
                seed=seed,
                device=device,
                **{k: v[i] for k, v in per.items()},
                **sac_kwargs,
            )
            for i, seed in enumerate(self.seeds)
        ]
        first = self.members[0]
        if not all(supports(m) for m in self.members) or first.batch_norm_stats:
            raise ValueError("Population needs SB3's MlpPolicy (ReLU Linear stacks, flatten features, no batch norm)")
        self.device = first.device
        self.batch_size, self.learning_starts = first.batch_size, first.learning_starts
        self.train_freq, self.gradient_steps = first.train_freq.frequency, first.gradient_steps
        self.target_update_interval = first.target_update_interval
        self.generators = [torch.Generator(device=self.device).manual_seed(seed) for seed in self.seeds]
        member_nets = [SacNets.of(m) for m in self.members]
        self.nets = SacNets(*(_stack([getattr(n, f.name) for n in member_nets]) for f in fields(SacNets)))

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=self.device).reshape(size, 1, 1)

        self.gamma, self.tau = column([m.gamma for m in self.members]), column([m.tau for m in self.members])
        self.target_entropy = column([float(m.target_entropy) for m in self.members])
        learned = first.ent_coef_optimizer is not None
        if any((m.ent_coef_optimizer is not None) != learned for m in self.members):
            raise ValueError("members must all learn the entropy coefficient or all fix it")
        self.log_ent_coef = (
            torch.stack([m.log_ent_coef.detach() for m in self.members]).reshape(size, 1, 1).clone()
            if learned
            else None
        )
        self.ent_coef = column([1.0 if learned else float(m.ent_coef_tensor) for m in self.members])
        lr = torch.tensor([m.lr_schedule(1) for m in self.members], dtype=torch.float32, device=self.device)
        adam = first.actor.optimizer.defaults
        betas, eps = tuple(adam["betas"]), float(adam["eps"])
        self.actor_adam = StackedAdam(self.nets.actor_params(), lr, betas, eps)
        self.critic_adam = StackedAdam(self.nets.critic_params(), lr, betas, eps)
        self.ent_adam = StackedAdam([self.log_ent_coef], lr, betas, eps) if learned else None
        # amp="bf16" (a FastSAC keyword, so every member's): bf16 matmuls on bf16 copies of the stacked
        # weights, as FastSAC's own step; on CPU the stacked products are then oneDNN's batched bf16 GEMM.
        self.low = self.nets.cast(torch.bfloat16) if first.amp == "bf16" else None
        self.stacked = stacked_critics(self.low)  # both critics of every member in one product per layer
        # compile_mode (a FastSAC keyword too): the stacked step as one torch.compile graph, as FastSAC's.
        self.compile_mode = first.compile_mode
        self._compiled: Callable[..., torch.Tensor] | None = None
        self.num_timesteps, self.n_updates = 0, 0
        self.unfinished_train: list[int] | None = None  # [done, asked] of updates a stop cut short
        self._obs: np.ndarray | None = None

    # --- the update ----------------------------------------------------------------------------
    def batch(self) -> tuple[ReplayBufferSamples, torch.Tensor, torch.Tensor]:
        """Each member's batch (rows drawn from its own buffer) and its two noise draws, stacked to
        (N, B, ...), drawn in ``FastSAC.train``'s order: indices, noise, next-step noise."""
        rows, noises, next_noises = [], [], []
        first = self.members[0].replay_buffer
        shape = (self.batch_size, first.action_dim)
        for member, gen in zip(self.members, self.generators, strict=True):
            buf = member.replay_buffer
            idx = torch.randint(0, 2**62, (self.batch_size,), device=self.device, generator=gen) % buf.rows
            rows.append(buf.data[idx])
            noises.append(torch.empty(shape, device=self.device).normal_(generator=gen))
            next_noises.append(torch.empty(shape, device=self.device).normal_(generator=gen))
        data, col = torch.stack(rows), first.columns
        batch = ReplayBufferSamples(
            data[..., col["obs"]], data[..., col["action"]], data[..., col["next_obs"]], data[..., col["done"]],
            data[..., col["reward"]],
        )  # fmt: skip
        return batch, torch.stack(noises), torch.stack(next_noises)

    def train(self, gradient_steps: int, first: int = 0, should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
        """Stacked updates ``first`` to ``gradient_steps``; returns each member's mean (critic loss, actor loss,
        entropy-coefficient loss, entropy coefficient) as a (4, N) tensor. A true ``should_stop()``, polled every
        ``STOP_POLL_STEPS`` updates as ``FastSAC.train`` does, stops early: the rest is ``unfinished_train``,
        which ``learn`` runs first (after a resume too), so the run stays exact."""
        if self.compile_mode != "none" and self._compiled is None:
            log.info("compiling the stacked SAC step (torch.compile, mode %s): ~20-60 s, once", self.compile_mode)
            self._compiled = onednn_linear.compile_step(self._update, self.compile_mode)
        update = self._update if self._compiled is None else self._compiled
        totals = torch.zeros(4, self.size, device=self.device)
        done = first
        while done < gradient_steps and not (done > first and should_stop is not None and should_stop()):
            for step in range(done, min(done + STOP_POLL_STEPS, gradient_steps)):
                batch, noise, next_noise = self.batch()  # eager: the members' generators stay out of the graph
                totals += update(batch, noise, next_noise, step % self.target_update_interval == 0)
            done = min(done + STOP_POLL_STEPS, gradient_steps)
        self.unfinished_train = [done, gradient_steps] if done < gradient_steps else None
        self.n_updates += done - first
        return totals / max(done - first, 1)

    def _update(
        self, batch: ReplayBufferSamples, noise: torch.Tensor, next_noise: torch.Tensor, polyak: bool
    ) -> torch.Tensor:
        """One stacked SAC step (and the polyak update when due); compiled whole with ``compile_mode``."""
        plain = self.compile_mode != "none"
        terms = StepTerms(
            gamma=self.gamma,
            target_entropy=self.target_entropy,
            log_ent_coef=self.log_ent_coef,
            ent_coef=self.ent_coef,
            step_ent_coef=lambda grad: self.ent_adam.step([grad], plain),
            step_critic=lambda grads: self.critic_adam.step(grads, plain),
            step_actor=lambda grads: self.actor_adam.step(grads, plain),
            low=self.low,
            stacked=self.stacked,
        )
        stats = sac_step(self.nets, batch, noise, next_noise, terms)
        if polyak:
            self.polyak()
        return stats

    @torch.no_grad()
    def polyak(self) -> None:
        """SB3's polyak update (target x (1 - tau) + tau x online), one tau per member."""
        target, online = self.nets.target_params(), self.nets.critic_params()
        taus = [self.tau.reshape(-1, *[1] * (t.dim() - 1)) for t in target]
        torch._foreach_mul_(target, [1 - tau for tau in taus])
        torch._foreach_add_(target, torch._foreach_mul(online, taus))

    def _written(self) -> list[torch.Tensor]:
        """Every tensor a stacked update writes in place: the weights (and their bf16 copies),
        the entropy coefficient, the Adam moments and step counters."""
        tensors = self.nets.params() + (self.low.params() if self.low is not None else [])
        tensors += [self.log_ent_coef] if self.log_ent_coef is not None else []
        for adam in (self.actor_adam, self.critic_adam, self.ent_adam):
            if adam is not None:
                tensors += adam.exp_avg + adam.exp_avg_sq + [c for cs in adam.counters.values() for c in cs]
        return tensors

    @contextlib.contextmanager
    def calibration(self) -> Iterator[tuple[Callable[[], object], Callable[[], object]]]:
        """A stacked action call and a stacked (eager) update on a synthetic batch (the buffers may still
        be empty), for the wall-time estimate to time; every tensor they wrote and the members' random
        streams are put back afterwards: the estimate must not change the run."""
        written, streams = self._written(), [g.get_state() for g in self.generators]
        saved = [t.clone() for t in written]
        first = self.members[0]
        obs_dim, act_dim = first.observation_space.shape[0], first.action_space.shape[0]
        gen = torch.Generator(device=self.device).manual_seed(0)

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand((self.size, *shape), device=self.device, generator=gen)

        b = self.batch_size
        batch = ReplayBufferSamples(
            rand(b, obs_dim), rand(b, act_dim), rand(b, obs_dim), rand(b, 1).round(), rand(b, 1)
        )
        noise, obs = rand(b, act_dim), rand(obs_dim).cpu().numpy()

        def update() -> None:
            with torch.no_grad():
                self._update(batch, noise, noise, True)

        try:
            update()  # the first one allocates
            yield (lambda: self.actions(obs)), update
        finally:
            with torch.no_grad():
                torch._foreach_copy_(written, saved)
            for g, state in zip(self.generators, streams, strict=True):
                g.set_state(state)

    # --- collection ----------------------------------------------------------------------------
    @torch.no_grad()
    def actions(self, obs: np.ndarray) -> np.ndarray:
        """Each member's stochastic action for its observation (N, obs_dim), in [-1, 1] (SB3's scaled space)."""
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(self.size, 1, -1)
        latent = forward(self.nets.latent, x, True)[-1]
        mean = matmul_t(latent, *self.nets.mu)
        std = torch.clamp(matmul_t(latent, *self.nets.log_std), -20, 2).exp()
        noise = torch.stack([torch.randn(mean.shape[1:], device=self.device, generator=g) for g in self.generators])
        return torch.tanh(mean + noise * std).reshape(self.size, -1).cpu().numpy()

    def learn(
        self,
        total_timesteps: int,
        on_step: Callable[[], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Population:
        """SB3's off-policy loop for every member in lockstep: random actions until ``learning_starts``,
        one env step each, ``gradient_steps`` stacked updates every ``train_freq`` steps; ``on_step`` is
        called after each step (a progress bar, a periodic checkpoint). A true ``should_stop()`` ends the
        loop within ``STOP_POLL_STEPS`` updates (the rest in ``unfinished_train``), where a checkpoint is
        consistent."""
        envs = [m.env for m in self.members]
        if self._obs is None:
            self._obs = np.concatenate([env.reset() for env in envs])
        if self.unfinished_train is not None:
            done, asked = self.unfinished_train
            self.train(asked, first=done, should_stop=should_stop)
        for _ in range(total_timesteps):
            if should_stop is not None and should_stop():
                break
            if self.num_timesteps < self.learning_starts:
                unscaled = np.stack([env.action_space.sample() for env in envs])
                scaled = np.stack([m.policy.scale_action(a) for m, a in zip(self.members, unscaled, strict=True)])
            else:
                scaled = self.actions(self._obs)
            next_obs = []
            for member, env, obs, action in zip(self.members, envs, self._obs, scaled, strict=True):
                new_obs, reward, done, infos = env.step(member.policy.unscale_action(action)[None])
                real_next = new_obs.copy()
                if done[0] and infos[0].get("terminal_observation") is not None:
                    real_next[0] = infos[0]["terminal_observation"]
                member.replay_buffer.add(obs[None], real_next, action[None], reward, done, infos)
                member.num_timesteps += 1
                next_obs.append(new_obs)
            self._obs = np.concatenate(next_obs)
            self.num_timesteps += 1
            due = self.num_timesteps % self.train_freq == 0
            if due and self.num_timesteps > self.learning_starts and self.gradient_steps > 0:
                self.train(self.gradient_steps, should_stop=should_stop)
            if on_step is not None:
                on_step()
        return self

    # --- checkpoint ----------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        """What no member's model holds: the loop's step and update counts, each member's random stream
        and the last observations (with ``member_model`` of every member, a checkpoint's whole content)."""
        counts = {"num_timesteps": self.num_timesteps, "n_updates": self.n_updates, "unfinished": self.unfinished_train}
        arrays = {f"generator.{i}": g.get_state().cpu().numpy() for i, g in enumerate(self.generators)}
        if self._obs is not None:
            arrays["obs"] = self._obs
        return counts, arrays

    def restore(self, members: list[FastSAC], counts: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Continue from checkpointed members (what ``member_model`` gave, loaded with their envs and buffers)
        and ``state``: each member's weights, entropy coefficient and Adam state go back into the stacked
        tensors, the inverse of ``member_model``."""
        if len(members) != self.size:
            raise ValueError(f"{len(members)} checkpointed members for a population of {self.size}")
        with torch.no_grad():
            for i, model in enumerate(members):
                for mine, stacked in self._weights(model):
                    stacked[i].copy_(mine.reshape(stacked[i].shape))
                if self.log_ent_coef is not None:
                    self.log_ent_coef[i].copy_(model.log_ent_coef.reshape(self.log_ent_coef[i].shape))
                for opt, params, adam in self._optimizers(model):
                    adam.load_moments(i, [opt.state.get(p) for p in params])
        self.members = list(members)
        for i, g in enumerate(self.generators):
            g.set_state(torch.from_numpy(arrays[f"generator.{i}"]))
        self._obs = arrays.get("obs")
        self.num_timesteps, self.n_updates = int(counts["num_timesteps"]), int(counts["n_updates"])
        unfinished = counts.get("unfinished")
        self.unfinished_train = None if unfinished is None else [int(unfinished[0]), int(unfinished[1])]

    def _weights(self, model: FastSAC) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each of ``model``'s weights (targets included) with the stacked tensor that holds it for every member."""
        for f in fields(SacNets):
            own, stacked = _leaves(getattr(SacNets.of(model), f.name)), _leaves(getattr(self.nets, f.name))
            yield from zip(own, stacked, strict=True)

    def _optimizers(self, model: FastSAC) -> list[tuple[torch.optim.Optimizer, list[torch.Tensor], StackedAdam]]:
        """``model``'s optimisers with their parameters, each with the stacked Adam that steps them."""
        pairs = [(model.actor.optimizer, self.actor_adam), (model.critic.optimizer, self.critic_adam)]
        if self.ent_adam is not None:
            pairs.append((model.ent_coef_optimizer, self.ent_adam))
        return [(opt, [p for group in opt.param_groups for p in group["params"]], adam) for opt, adam in pairs]

    # --- export --------------------------------------------------------------------------------
    def member_model(self, i: int) -> FastSAC:
        """Member ``i`` as its own ``FastSAC``: trained weights, targets, entropy coefficient and Adam
        state written into it, so ``save`` gives a plain SB3-compatible model.zip."""
        model = self.members[i]
        with torch.no_grad():
            for mine, stacked in self._weights(model):
                mine.copy_(stacked[i])
            if self.log_ent_coef is not None:
                model.log_ent_coef.copy_(self.log_ent_coef[i].reshape(model.log_ent_coef.shape))
        for opt, params, adam in self._optimizers(model):
            for p, state in zip(params, adam.moments(i, params), strict=True):
                opt.state[p] = state
        model._n_updates = self.n_updates
        return model

"""Estimate a run's memory from its config and spaces, and refuse a run that cannot fit its budget.

Why: the presets' source (docs/presets.md) sized its replay buffer as if SB3 kept it on the GPU and as if a 1M buffer of
~500-dim observations took 1 GB (it takes ~4 GB, in host RAM). An OOM an hour into training, or a
machine swapping, costs more than a one-paragraph refusal before the model is built. The layouts
below follow ``stable_baselines3.common.buffers`` exactly (tests compare with the real buffers);
networks, optimizer state and activations are counted from ``net_arch`` as SB3 builds them.
Sizes are in decimal GB (1e9 bytes), the unit of the RTX 4060's "8.6 GB" (docs/presets.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import psutil
from gymnasium import spaces
from numpy.typing import DTypeLike
from omegaconf import DictConfig, OmegaConf
from stable_baselines3 import A2C, PPO, SAC

from bess_rl.agents.capabilities import capabilities
from bess_rl.experiment.build import algo_class, asked_device
from bess_rl.site.scenario import Scenario

GB = 1e9
FLOAT32 = 4
# CUDA context and kernels of a PyTorch process, measured at 0.3-0.5 GB; nothing extra on the CPU.
CUDA_CONTEXT_BYTES = 400_000_000
# Per layer a forward keeps the pre- and post-activation for backward, and backward adds gradients.
ACTIVATION_FACTOR = 3
# SB3 SAC's default n_critics: two Q-networks, each with a target copy.
N_CRITICS = 2


class MemoryBudgetError(ValueError):
    """The estimated memory exceeds ``hardware.memory_budget_gb``."""


@dataclass(frozen=True)
class Workload:
    """What the estimate depends on; kept in the plan so ``check`` can re-estimate with its advice applied."""

    agent: str
    device: str
    buffer_on_device: bool
    obs_dim: int
    act_dim: int
    obs_itemsize: int
    n_envs: int
    net_arch: tuple[int, ...]
    batch_size: int | None  # SAC and PPO minibatch; A2C trains on the whole rollout
    buffer_size: int | None  # SAC (the replay memory model), None for PPO/A2C
    n_steps: int | None  # PPO and A2C
    optimize_memory_usage: bool
    auto_entropy: bool  # SAC's learned entropy coefficient: one more parameter and its Adam state
    optimizer_slots: int  # state tensors per parameter: Adam 2, RMSprop (A2C's default) 1
    members: int = 1  # population.size: each member has its own buffer, networks and batch


@dataclass(frozen=True)
class Part:
    name: str
    nbytes: int
    where: str  # "host" or "device"
    detail: str


@dataclass(frozen=True)
class MemoryPlan:
    workload: Workload
    parts: tuple[Part, ...]
    n_params: int

    @property
    def device(self) -> str:
        return self.workload.device

    @property
    def total(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def bytes_on(self, where: str) -> int:
        return sum(p.nbytes for p in self.parts if p.where == where)

    @property
    def budgeted_where(self) -> str:
        """The memory a budget limits: the GPU's on a CUDA run, host RAM otherwise."""
        return "device" if self.device == "cuda" else "host"

    @property
    def budgeted(self) -> int:
        return self.bytes_on(self.budgeted_where)

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def table(self) -> str:
        w = self.workload
        head = f"memory plan: {w.agent} on {w.device}, {w.obs_dim} obs x {w.act_dim} actions, {self.n_params:,} params"
        if w.members > 1:
            head += f" per member, {w.members} members"
        lines = [head]
        lines += [f"  {p.name:<15} {p.where:<6} {size(p.nbytes):>9}  {p.detail}" for p in self.parts]
        lines.append(f"  {'total':<15} {'':<6} {size(self.total):>9}")
        if self.device == "cuda":
            lines.append(f"  (device {size(self.bytes_on('device'))}, host {size(self.bytes_on('host'))})")
        return "\n".join(lines)


def size(nbytes: int) -> str:
    """GB with two decimals, MB or kB for small parts so they do not all read 0.00 GB."""
    if nbytes >= GB / 10:
        return f"{nbytes / GB:.2f} GB"
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 100_000 else f"{nbytes / 1e3:.1f} kB"


def estimate(
    cfg: DictConfig,
    obs_dim: int,
    act_dim: int,
    device: str | None = None,
    buffer_on_device: bool = False,
    obs_dtype: DTypeLike = np.float32,
) -> MemoryPlan:
    """Memory of training ``cfg`` on ``device`` (default: the one the config asks for).

    ``buffer_on_device``: the replay buffer lives in GPU memory (the FastSAC path) instead of
    host RAM (SB3). ``obs_dtype``: the observation space's dtype, which SB3's buffers store.
    An agent without a memory model is refused.
    """
    name, hp = str(cfg.agent.name), cfg.agent.hparams
    algo = algo_class(cfg.agent.algo)
    sac, on_policy = issubclass(algo, SAC), issubclass(algo, PPO | A2C)
    if not (sac or on_policy):
        raise ValueError(f"no memory model for {algo.__name__} (known: SAC, PPO, A2C and their subclasses)")
    workload = Workload(
        agent=name,
        device=device or asked_device(cfg),
        buffer_on_device=buffer_on_device,
        obs_dim=int(obs_dim),
        act_dim=int(act_dim),
        obs_itemsize=np.dtype(obs_dtype).itemsize,
        n_envs=int(cfg.agent.n_envs),
        net_arch=tuple(int(n) for n in hp.net_arch),
        batch_size=int(hp.batch_size) if "batch_size" in hp else None,
        buffer_size=int(hp.buffer_size) if sac else None,
        n_steps=int(hp.n_steps) if on_policy else None,
        optimize_memory_usage=bool(hp.get("optimize_memory_usage", False)),
        auto_entropy=sac and str(hp.get("ent_coef", "auto")).startswith("auto"),
        optimizer_slots=1 if issubclass(algo, A2C) and hp.get("use_rms_prop", True) else 2,
        members=int(OmegaConf.select(cfg, "population.size", default=1)),
    )
    return plan_for(workload)


def for_run(cfg: DictConfig, observation_space: spaces.Box, action_space: spaces.Box, device: str) -> MemoryPlan:
    """The plan a run on ``device`` is checked against (``train.run`` and the doctor alike): a class that
    declares ``device_replay_buffer`` (FastSAC) keeps its replay buffer on the training device, SB3 in host RAM."""
    return estimate(
        cfg,
        observation_space.shape[0],
        action_space.shape[0],
        device=device,
        buffer_on_device=device == "cuda" and capabilities(algo_class(cfg.agent.algo)).device_replay_buffer,
        obs_dtype=observation_space.dtype,
    )


def mlp_params(in_dim: int, widths: tuple[int, ...], out_dims: tuple[int, ...]) -> int:
    """Weights and biases of SB3's ``create_mlp`` hidden layers plus linear heads on the last one."""
    n, prev = 0, in_dim
    for width in widths:
        n += (prev + 1) * width
        prev = width
    return n + sum((prev + 1) * out for out in out_dims)


def plan_for(w: Workload) -> MemoryPlan:
    """The per-part estimate of one workload."""
    on_gpu = w.device == "cuda"
    net_where = "device" if on_gpu else "host"
    hidden = sum(w.net_arch)
    parts: list[Part] = []
    if w.buffer_size is not None:  # SAC: a replay buffer
        rows = max(w.buffer_size // w.n_envs, 1) * w.n_envs  # SB3 gives each env buffer_size // n_envs rows
        obs_copies = 1 if w.optimize_memory_usage else 2
        row_bytes = obs_copies * w.obs_dim * w.obs_itemsize + (w.act_dim + 3) * FLOAT32
        where = "device" if on_gpu and w.buffer_on_device else "host"
        detail = f"{rows:,} x ({obs_copies} x {w.obs_dim} obs x {w.obs_itemsize} B + {w.act_dim + 3} float32)"
        parts.append(Part("replay buffer", rows * row_bytes, where, detail))
        actor = mlp_params(w.obs_dim, w.net_arch, (w.act_dim, w.act_dim))  # mean and log_std heads
        critic = N_CRITICS * mlp_params(w.obs_dim + w.act_dim, w.net_arch, (1,))
        trained = actor + critic + int(w.auto_entropy)
        n_params = trained + critic  # + the target critics, not trained by gradient
        actor_width = w.obs_dim + hidden + 2 * w.act_dim
        critic_width = w.obs_dim + w.act_dim + hidden + 1
        # Per update: actor on obs and next obs, critics on replayed and policy actions, targets once.
        widths = 2 * actor_width + 3 * N_CRITICS * critic_width
        batch = w.batch_size
        batch_bytes = batch * (2 * w.obs_dim + w.act_dim + 2) * FLOAT32
        net_detail = f"actor {actor:,} + {N_CRITICS} critics {critic:,} + target critics {critic:,}"
    else:
        steps = w.n_steps * w.n_envs
        row_bytes = w.obs_dim * w.obs_itemsize + (w.act_dim + 6) * FLOAT32
        detail = f"{w.n_steps:,} steps x {w.n_envs} envs x ({w.obs_dim} obs + {w.act_dim} actions + 6 floats)"
        parts.append(Part("rollout buffer", steps * row_bytes, "host", detail))
        pi = mlp_params(w.obs_dim, w.net_arch, (w.act_dim,)) + w.act_dim  # + log_std
        vf = mlp_params(w.obs_dim, w.net_arch, (1,))
        trained = n_params = pi + vf
        widths = (w.obs_dim + hidden + w.act_dim) + (w.obs_dim + hidden + 1)
        batch = w.batch_size if w.batch_size is not None else steps  # A2C: one batch, the whole rollout
        batch_bytes = batch * (w.obs_dim + w.act_dim + 4) * FLOAT32
        net_detail = f"policy {pi:,} + value {vf:,}"
    optimizer = "RMSprop" if w.optimizer_slots == 1 else "Adam"
    parts += [
        Part("networks", n_params * FLOAT32, net_where, f"{n_params:,} float32: {net_detail}"),
        Part("gradients", trained * FLOAT32, net_where, f"{trained:,} trained params"),
        Part(
            "optimizer", w.optimizer_slots * trained * FLOAT32, net_where, f"{optimizer}: {w.optimizer_slots} x trained"
        ),
        Part(
            "activations",
            batch * widths * FLOAT32 * ACTIVATION_FACTOR + batch_bytes,
            net_where,
            f"batch {batch:,} x {widths:,} layer widths x {ACTIVATION_FACTOR} + the batch",
        ),
    ]
    if w.members > 1:
        # A population stacks N copies of everything but the CUDA context, and each member also keeps its
        # own FastSAC networks (what member_model exports), so the networks count twice per member.
        def times(p: Part) -> Part:
            twice = p.name == "networks"
            n = (2 if twice else 1) * w.members
            what = f"{w.members} members x{' 2 (stacked and own) x' if twice else ''}"
            return replace(p, nbytes=n * p.nbytes, detail=f"{what} ({p.detail})")

        parts = [times(p) for p in parts]
    if on_gpu:
        parts.append(Part("CUDA context", CUDA_CONTEXT_BYTES, "device", "PyTorch/CUDA runtime, fixed"))
    return MemoryPlan(w, tuple(parts), n_params)


def halved(w: Workload) -> tuple[Workload, dict[str, int]]:
    """The out-of-memory remedy of docs/presets.md applied: half the batch and the buffer (on-policy: the rollout)."""
    changes = {}
    if w.buffer_size is not None:
        changes["buffer_size"] = max(w.buffer_size // 2, 1)
    if w.n_steps is not None:
        changes["n_steps"] = max(w.n_steps // 2, 1)
    if w.batch_size is not None:
        changes["batch_size"] = max(w.batch_size // 2, 1)
    return replace(w, **changes), changes


def check(plan: MemoryPlan, budget_gb: float | None, what: str) -> None:
    """Raise ``MemoryBudgetError`` when the budgeted memory exceeds ``budget_gb``; None means no budget."""
    if budget_gb is None or plan.budgeted <= budget_gb * GB:
        return
    where = plan.budgeted_where
    memory = "GPU memory" if where == "device" else "host RAM"
    biggest = max((p for p in plan.parts if p.where == where), key=lambda p: p.nbytes)
    smaller, changes = halved(plan.workload)
    after = plan_for(smaller).budgeted
    overrides = " ".join(f"agent.hparams.{k}={v}" for k, v in changes.items())
    verdict = "within budget" if after <= budget_gb * GB else "still over budget: halve again"
    if plan.workload.members > 1:
        verdict += f"; or train fewer than population.size={plan.workload.members} members"
    raise MemoryBudgetError(
        f"{what}: {plan.workload.agent} needs about {size(plan.budgeted)} of {memory} but the budget is "
        f"{budget_gb:g} GB; the biggest part is the {biggest.name} ({size(biggest.nbytes)}: {biggest.detail}). "
        f"To fit, halve them: {overrides} needs about {size(after)} "
        f"({verdict}); or raise hardware.memory_budget_gb if the machine really has more."
    )


# Peak bytes per plugged-in session-hour (sum of departure - arrival), measured with 1 M of them over a
# week: the LP (scipy sparse matrices + HiGHS) once, and each env's per-hour session groups, built once
# per training env and once for the evaluation env. Both grow linearly with the session-hours.
LP_BYTES_PER_SESSION_HOUR = 1_400
ENV_BYTES_PER_SESSION_HOUR = 50


def scenario_part(scenario: Scenario, n_envs: int) -> Part:
    """The memory the scenario's EV sessions take in the envs and the LP, which the replay buffer plan leaves out."""
    ses = scenario.sessions
    pairs = int(np.sum(ses.departure - ses.arrival, dtype=np.int64))
    per_pair = LP_BYTES_PER_SESSION_HOUR + (n_envs + 1) * ENV_BYTES_PER_SESSION_HOUR
    detail = f"{len(ses):,} sessions, {pairs:,} session-hours x ({LP_BYTES_PER_SESSION_HOUR} B LP + {n_envs + 1} envs)"
    return Part("scenario", pairs * per_pair, "host", detail)


def check_scenario(scenario: Scenario, n_envs: int, budget_gb: float | None, what: str) -> None:
    """Refuse a scenario too large for the budget (or, without one, for the free RAM) before any env is built."""
    part = scenario_part(scenario, n_envs)
    budget = budget_gb * GB if budget_gb is not None else psutil.virtual_memory().available
    if part.nbytes > budget:
        limit = f"the budget of {budget_gb:g} GB" if budget_gb is not None else f"the {size(budget)} of free RAM"
        raise MemoryBudgetError(
            f"{what}: the scenario needs about {size(part.nbytes)} ({part.detail}), more than {limit}; "
            "use a shorter scenario.window_hours or fewer sessions"
        )

"""Wall-time estimate before training, from a short calibration on this machine.

Why: SAC's presets (docs/presets.md) do 1,024 gradient updates per environment step; on a CPU that is
days, and SB3's progress bar shows it only after the random warm-up. Here the env step, the policy
call and one gradient update (forward and backward of a copy of the policy on a batch of the run's
size) are timed for about a second before training, the run's counts of each come from its config,
and a run longer than ``warn_hours`` is warned about with budget overrides that would fit.

The calibration leaves the run untouched: it steps a separate env, updates a copy of the policy and
restores the global random states, so a run with and without it trains identically; a population's
stacked update is timed on the population itself, every tensor it writes put back after.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from bess_rl.agents.population import Population
from bess_rl.site.env import PvBessEvEnv

log = logging.getLogger(__name__)

CALIBRATION_STEPS = 200  # env steps timed
CALIBRATION_UPDATES = 5  # gradient updates timed, after one untimed


@dataclass(frozen=True)
class Rates:
    """Seconds per env step, per policy call (one vec step), per gradient update, measured here."""

    env_step_s: float
    policy_call_s: float
    update_s: float


@dataclass(frozen=True)
class Work:
    """What the run will do: env steps, policy calls, gradient updates, held-out evaluation steps."""

    env_steps: int
    policy_calls: int
    updates: int
    eval_steps: int

    def seconds(self, rates: Rates) -> float:
        steps = self.env_steps + self.eval_steps
        return (
            steps * rates.env_step_s
            + (self.policy_calls + self.eval_steps) * rates.policy_call_s
            + (self.updates * rates.update_s)
        )


def minibatches(model: OnPolicyAlgorithm) -> int:
    """Gradient steps per PPO epoch (SB3 cuts the rollout into ``batch_size`` slices); A2C's one."""
    return -(-(model.n_steps * model.n_envs) // _batch_size(model))


def gradient_steps(model: BaseAlgorithm) -> int:
    """The gradient steps ``model`` took: SB3's ``_n_updates`` counts PPO's epochs, each of them
    ``minibatches`` steps (a ``target_kl`` stop counts its last epoch whole); A2C's and SAC's count steps."""
    if isinstance(model, OnPolicyAlgorithm):
        return int(model._n_updates) * minibatches(model)
    return int(model._n_updates)


def work(model: BaseAlgorithm, steps: int, eval_every: int | None, eval_hours: int) -> Work:
    """The counts SB3's learn loop performs for ``steps`` more env steps of ``model``."""
    n_envs = model.n_envs
    calls = -(-steps // n_envs)
    if isinstance(model, OffPolicyAlgorithm):
        freq = model.train_freq.frequency * n_envs  # timesteps per collection; SB3 trains after each one
        collections = -(-steps // freq)  # that ends past learning_starts
        warm_up = max((model.learning_starts - model.num_timesteps) // freq, 0)
        gradient_steps = model.gradient_steps if model.gradient_steps > 0 else model.train_freq.frequency
        updates = max(collections - warm_up, 0) * gradient_steps
    elif isinstance(model, OnPolicyAlgorithm):
        rollouts = -(-steps // (model.n_steps * n_envs))
        updates = rollouts * getattr(model, "n_epochs", 1) * minibatches(model)
    else:
        updates = 0
    evals = steps // eval_every if eval_every else 0
    return Work(steps, calls, updates, evals * eval_hours)


def population_work(pop: Population, steps: int) -> Work:
    """The counts ``Population.learn(steps)`` performs: one env step per member and one stacked action call
    per step after ``learning_starts``, ``gradient_steps`` stacked updates every ``train_freq`` steps past it."""
    start, end = pop.num_timesteps, pop.num_timesteps + steps
    first = max(start, pop.learning_starts)
    calls = max(end - first, 0)
    trained = max(end // pop.train_freq - first // pop.train_freq, 0) if pop.gradient_steps > 0 else 0
    return Work(steps * pop.size, calls, trained * pop.gradient_steps, 0)


def _batch_size(model: BaseAlgorithm) -> int:
    if isinstance(model, OnPolicyAlgorithm) and getattr(model, "batch_size", None) is None:
        return model.n_steps * model.n_envs  # A2C: one update on the whole rollout
    return int(getattr(model, "batch_size", 64))


def _update_step(model: BaseAlgorithm) -> Callable[[], None]:
    """One gradient update's compute on a copy of the policy (the model's own weights are not touched)."""
    policy = copy.deepcopy(model.policy).train()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-4)
    space = model.observation_space
    obs = torch.as_tensor(np.stack([space.sample() for _ in range(_batch_size(model))]), device=model.device)
    obs = obs.float()

    def step() -> None:
        optimizer.zero_grad()
        if hasattr(policy, "critic") and hasattr(policy, "actor"):  # SAC: critic then actor, as SB3's train()
            with torch.no_grad():
                target = torch.cat(policy.critic_target(obs, policy.actor(obs)), dim=1)
            actions, log_prob = policy.actor.action_log_prob(obs)
            q = torch.cat(policy.critic(obs, actions.detach()), dim=1)
            actor_q = torch.cat(policy.critic(obs, actions), dim=1)
            loss = ((q - target) ** 2).mean() + (log_prob - actor_q.min(dim=1).values).mean()
        else:
            actions = policy(obs)[0].detach()
            values, log_prob, entropy = policy.evaluate_actions(obs, actions)
            loss = values.mean() - log_prob.mean() - (entropy.mean() if entropy is not None else 0.0)
        loss.backward()
        optimizer.step()

    return step


def _env_step_seconds(env: PvBessEvEnv) -> float:
    """Seconds per step of ``env`` under random actions."""
    obs, _ = env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(CALIBRATION_STEPS):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    return (time.perf_counter() - t0) / CALIBRATION_STEPS


@contextlib.contextmanager
def _random_states_kept() -> Iterator[None]:
    """Python's, numpy's and torch's global random states as they were before, whatever the block drew."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def calibrate(model: BaseAlgorithm, env: PvBessEvEnv) -> Rates:
    """Time env steps, policy calls and updates here, for about a second; global random states restored."""
    with _random_states_kept():
        env_s = _env_step_seconds(env)
        batch = np.repeat(env.reset(seed=0)[0][None], model.n_envs, axis=0)
        t0 = time.perf_counter()
        for _ in range(CALIBRATION_STEPS // 4):
            model.predict(batch, deterministic=True)
        call_s = (time.perf_counter() - t0) / (CALIBRATION_STEPS // 4)
        step = _update_step(model)
        step()  # the first one allocates
        update_s = seconds_per_call(step, CALIBRATION_UPDATES, model.device)
    return Rates(env_s, call_s, update_s)


def calibrate_population(pop: Population, env: PvBessEvEnv) -> Rates:
    """``calibrate`` for a population: one member's env step, and the stacked action call and update,
    timed on the population itself, which ``Population.calibration`` then puts back as it was."""
    with _random_states_kept():
        env_s = _env_step_seconds(env)
    with pop.calibration() as (act, update):
        call_s, update_s = (seconds_per_call(job, CALIBRATION_UPDATES, pop.device) for job in (act, update))
    return Rates(env_s, call_s, update_s)


def seconds_per_call(job: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Mean wall seconds of ``job`` over ``repeats`` calls; on CUDA up to the end of its kernels."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        job()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def fitting_budgets(cfg: DictConfig, gradient_steps: int | None, todo: Work, rates: Rates, limit_s: float) -> list[str]:
    """Overrides that bring the estimate under ``limit_s``: fewer timesteps, or (off-policy: ``gradient_steps``
    per collection, None on-policy) fewer updates per step."""
    total = todo.seconds(rates)
    options = [f"agent.total_timesteps={max(int(cfg.agent.total_timesteps * limit_s / total), 1)}"]
    update_s = todo.updates * rates.update_s
    rest = total - update_s
    if gradient_steps is not None and update_s > 0 and rest < limit_s:
        fitting = math.floor(gradient_steps * (limit_s - rest) / update_s)
        if fitting >= 1:
            options.append(f"agent.hparams.gradient_steps={fitting}")
    options.append("a faster hardware profile (python -m bess_rl.doctor lists this machine's)")
    return options


def announce(
    cfg: DictConfig, model: BaseAlgorithm, steps: int, env: PvBessEvEnv, eval_hours: int, resume: bool = False
) -> float:
    """Calibrate, log the estimated wall time and warn above ``warn_hours``; returns the estimate in seconds.

    :param resume: the run continues a checkpoint, whose config no override may change: the warning then
        says how to stop and go on later instead of naming budgets the resume would refuse.
    """
    rates = calibrate(model, env)
    todo = work(model, steps, cfg.get("eval_every_steps"), eval_hours)
    gradient = model.gradient_steps if isinstance(model, OffPolicyAlgorithm) else None
    return _report(cfg, todo, rates, model.n_envs, gradient, "updates", resume)


def announce_population(cfg: DictConfig, pop: Population, steps: int, env: PvBessEvEnv) -> float:
    """``announce`` for ``steps`` more steps of every member of ``pop``, at its stacked update's rate."""
    rates = calibrate_population(pop, env)
    return _report(cfg, population_work(pop, steps), rates, pop.size, pop.gradient_steps, "stacked updates")


def _report(
    cfg: DictConfig,
    todo: Work,
    rates: Rates,
    per_call: int,
    gradient: int | None,
    updates: str,
    resume: bool = False,
) -> float:
    """Log the estimate of ``todo`` at ``rates`` (``per_call`` env steps per policy call) and warn above
    ``warn_hours`` (with budgets that fit, or for a ``resume`` how to stop); returns the estimate in seconds."""
    estimate = todo.seconds(rates)
    # Named: jobs of a parallel sweep (joblib) log into one console.
    run = f"{cfg.agent.name} ({cfg.preset.name}, seed {cfg.seed})"
    log.info(
        "%s: estimated wall time %s: %s env steps at %s/s, %s %s at %s/s (calibrated here)",
        run,
        hours(estimate),
        f"{todo.env_steps:,}",
        f"{1 / max(rates.env_step_s + rates.policy_call_s / per_call, 1e-12):,.0f}",
        f"{todo.updates:,}",
        updates,
        f"{1 / max(rates.update_s, 1e-12):,.0f}",
    )
    warn_hours = cfg.get("warn_hours")
    if warn_hours is not None and estimate > warn_hours * 3600:
        if resume:
            advice = "a resume keeps the saved config; Ctrl-C stops it with a checkpoint to resume from later"
        else:
            advice = "within it: " + " or ".join(fitting_budgets(cfg, gradient, todo, rates, warn_hours * 3600))
        log.warning("%s is estimated at %s, over warn_hours=%s; %s", run, hours(estimate), warn_hours, advice)
    return estimate

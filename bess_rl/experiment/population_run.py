"""``population.size=N``: N SAC members trained as one stacked update, each written as a normal run folder.

Why: evaluate, report, replay and a seeds report read single-run folders; writing every member as one
(``member_<i>/``: its own resolved config with its seed and hyper-parameters, run_info, metrics and a
plain FastSAC model.zip) keeps them working unchanged. Scoring and provenance are ``train``'s own
functions, so a member's metrics mean what a single run's mean.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor

from bess_rl.agents.capabilities import capabilities
from bess_rl.agents.population import Population
from bess_rl.experiment import checkpoint, eta, hardware, planner
from bess_rl.experiment.build import algo_class, build_references, build_scenario, build_site, make_env
from bess_rl.experiment.config import POPULATION_LISTS, validate
from bess_rl.experiment.fingerprint import fingerprint
from bess_rl.experiment.monitor import ResourceMonitor
from bess_rl.experiment.plots import dispatch_week
from bess_rl.experiment.run_dir import RunDir, WriteError, atomic_path, atomic_write_text, write_json, writing
from bess_rl.experiment.train import (
    failed_write,
    final_metrics,
    objective_value,
    progress_bar,
    reset_peak_memory,
    write_provenance,
)

log = logging.getLogger(__name__)

# The hyper-parameters a population may vary per member (``population.<key>`` lists).
VARIED = tuple(k for k in POPULATION_LISTS if k != "seeds")


def member_configs(cfg: DictConfig) -> list[DictConfig]:
    """Each member's config as a single run's: its seed and hyper-parameters in place, population.size 1."""
    pop = cfg.population
    seeds = list(pop.seeds) if pop.seeds is not None else [cfg.seed + i for i in range(pop.size)]
    members = []
    for i, seed in enumerate(seeds):
        member = copy.deepcopy(cfg)
        with open_dict(member):
            member.seed = int(seed)
            for key in VARIED:
                if pop[key] is not None:
                    member.agent.hparams[key] = pop[key][i]
            member.population = {"size": 1, **{k: None for k in POPULATION_LISTS}}
        members.append(member)
    return members


def population_runtime(runtime: hardware.Runtime) -> hardware.Runtime:
    """What the stacked update applies of ``runtime``: its bf16 and compile, but no fp16 (GradScaler) and no
    CUDA graphs, each dropped switch with a note, so that every member's run_info records what ran."""
    notes = list(runtime.notes)
    amp, graphs = runtime.amp, runtime.cuda_graphs
    if amp == "fp16":
        notes.append("the population's stacked update has no fp16 (GradScaler) path: it runs without AMP")
        amp = "none"
    if graphs:
        notes.append("the population's stacked update is not captured as CUDA graphs: it runs without")
        graphs = False
    for note in notes[len(runtime.notes) :]:
        log.warning(note)
    return dataclasses.replace(runtime, amp=amp, cuda_graphs=graphs, notes=notes)


def build_population(cfg: DictConfig, members: list[DictConfig], env_fn: Any, runtime: hardware.Runtime) -> Population:
    """The stacked population: shared hyper-parameters from ``agent.hparams``, varied ones per member, and
    the switches of ``population_runtime``."""
    hp = OmegaConf.to_container(cfg.agent.hparams, resolve=True)
    net_arch = hp.pop("net_arch")
    per_member = {key: [m.agent.hparams[key] for m in members] for key in VARIED}
    for key in VARIED:
        hp.pop(key, None)
    return Population(
        env_fn,
        len(members),
        seeds=[m.seed for m in members],
        device=runtime.device,
        policy_kwargs={"net_arch": list(net_arch)},
        verbose=0,
        amp=runtime.amp,
        compile_mode=runtime.compile,
        **per_member,
        **hp,
    )


def learn(
    pop: Population, steps: int, show_progress: bool, stop: checkpoint.StopRequest, on_step: Callable[[], None]
) -> tuple[float, dict[str, Any]]:
    """Train every member ``steps`` more env steps (with a progress bar of them, as a single run's) until
    ``stop`` is requested; ``on_step`` after each step (the periodic checkpoint). Returns seconds and the
    resources sampled meanwhile."""
    lead = pop.members[0]
    lead.set_logger(Logger(None, []))  # the monitor records into its model's logger
    monitor = ResourceMonitor()
    monitor.init_callback(lead)
    monitor.on_training_start({}, {})
    bar = progress_bar(steps, f"population of {pop.size}") if show_progress else None

    def stepped() -> None:
        if bar is not None:
            bar.update()
        on_step()

    t0 = time.perf_counter()
    stop.install()
    try:
        pop.learn(steps, on_step=stepped, should_stop=lambda: stop.requested is not None)
        monitor.on_training_end()
    finally:
        stop.restore()
        monitor.stop()
        if bar is not None:
            bar.close()
    return time.perf_counter() - t0, monitor.summary()


def run(cfg: DictConfig, run_dir: Path, resume: bool = False) -> list[dict[str, Any]]:
    """Train (or resume) the population, then evaluate and write ``member_<i>/`` per member; returns their
    metrics. Ctrl-C, SIGTERM and SIGUSR2 checkpoint every member at once (``<run dir>/checkpoint``), as does
    every ``checkpoint_every_steps``; ``resume`` goes on from that checkpoint."""
    validate(cfg)
    rd = RunDir(run_dir)
    with rd.lock():
        try:
            return _run(cfg, rd, resume)
        except WriteError as exc:
            raise failed_write(exc, rd) from None


def _run(cfg: DictConfig, rd: RunDir, resume: bool) -> list[dict[str, Any]]:
    run_dir = rd.path
    algo = algo_class(cfg.agent.algo)
    runtime = population_runtime(hardware.resolve(cfg.hardware, algo, cfg.agent.device))
    reset_peak_memory(runtime.device)
    scenario, site = build_scenario(cfg.scenario, "train"), build_site(cfg.site)
    eval_env = make_env(build_scenario(cfg.scenario, "eval"), site, cfg.scenario, training=False)
    plan = planner.for_run(cfg, eval_env.observation_space, eval_env.action_space, runtime.device)
    log.info("%s, about %s in all", plan.table().splitlines()[0], planner.size(plan.total))
    planner.check(plan, cfg.hardware.memory_budget_gb, f"hardware={cfg.hardware.name}")
    members = member_configs(cfg)
    folders = [RunDir(run_dir / f"member_{i}") for i in range(len(members))]
    if not resume:
        with writing(rd.population_config):  # what a resume= reads
            atomic_write_text(rd.population_config, OmegaConf.to_yaml(cfg, resolve=True))
        for member, member_rd in zip(members, folders, strict=True):
            with writing(member_rd.path):
                member_rd.path.mkdir(parents=True, exist_ok=True)
            write_provenance(member, member_rd.path, scenario, runtime)
            with writing(member_rd.run_info):
                member_rd.update_run_info(population={"size": len(members), "run_dir": str(run_dir)})

    def env_fn() -> Monitor:
        """A member's training env, in SB3's Monitor as a single run's (its episode statistics are checkpointed)."""
        return Monitor(make_env(scenario, site, cfg.scenario, training=True))

    pop = build_population(cfg, members, env_fn, runtime)
    prints = fingerprint(cfg), [fingerprint(m) for m in members]
    if resume:
        switches = runtime.switches(capabilities(algo))
        checkpoint.load_population(rd.checkpoint, pop, runtime.device, *prints, **switches)
        for member_rd in folders:
            with writing(member_rd.run_info):
                member_rd.update_run_info(resumed={"from_step": pop.num_timesteps, "time": time.strftime("%c")})
    refs = build_references(cfg, eval_env)
    remaining = cfg.agent.total_timesteps - pop.num_timesteps
    resuming = f", resuming at step {pop.num_timesteps}" if resume else ""
    log.info("training %d %s members (%s preset) for %d steps each on %s%s", pop.size, cfg.agent.name,
             cfg.preset.name, remaining, runtime.device, resuming)  # fmt: skip
    # The evaluation env, stepped for the estimate: each evaluation below starts with its own seeded reset.
    eta.announce_population(cfg, pop, remaining, eval_env)
    start = pop.num_timesteps
    last_saved = [start]

    def periodic() -> None:
        if cfg.checkpoint_every_steps and pop.num_timesteps - last_saved[0] >= cfg.checkpoint_every_steps:
            checkpoint.save_population(pop, rd.checkpoint, "periodic", *prints)
            last_saved[0] = pop.num_timesteps

    stop = checkpoint.StopRequest()
    train_s, resources = learn(pop, remaining, cfg.progress_bar, stop, periodic)
    if stop.requested is not None:
        checkpoint.save_population(pop, rd.checkpoint, stop.requested, *prints)
        raise checkpoint.TrainingInterrupted(stop.requested, pop.num_timesteps, rd.checkpoint)
    results = []
    for i, (member, member_rd) in enumerate(zip(members, folders, strict=True)):
        model = pop.member_model(i)
        if member.save_model:
            member_rd.save_model(model)

        metrics, result = final_metrics(member, model, eval_env, refs, scenario, site, train_s,
                                        model.num_timesteps - start, resources)  # fmt: skip
        # Shared by all members: the seconds, memory and resources are the whole population's.
        aggregate = metrics["timesteps_per_hour"] * pop.size
        metrics["population"] = {"size": pop.size, "member": i, "aggregate_timesteps_per_hour": aggregate}
        with writing(member_rd.metrics):
            write_json(member_rd.metrics, metrics)
        if member.plot:
            with writing(member_rd.dispatch_plot), atomic_path(member_rd.dispatch_plot) as tmp:
                dispatch_week(result.trace, tmp, f"{member.agent.name} member {i} dispatch")
        results.append(metrics)
    checkpoint.discard(rd.checkpoint)  # every member's results are on disk
    return results


def objective(results: list[dict[str, Any]], name: Any) -> float | tuple[float, ...]:
    """What a sweep optimises for a population: the members' mean of ``train.objective_value``."""
    values = np.array([objective_value(m, name) for m in results], dtype=float)
    mean = values.mean(axis=0)
    return float(mean) if mean.ndim == 0 else tuple(float(v) for v in mean)

"""``python -m bess_rl.bench``: training speed per agent and preset, plain SB3 against the fast paths.

Why: a speed-up is only worth quoting against its baseline measured in the same process, on the same
machine, at the same preset. Every number here is measured, nothing is hard-coded: the variants of
one measurement run in interleaved rounds (so a busy neighbour slows them all alike), each time-boxed
by ``--seconds``, and the table and JSON give the speed-up over plain SB3 next to the raw rates.

Measured: env steps/s of the raw ``PvBessEvEnv`` (embedded year, random actions); for SAC, gradient
steps/s of ``SAC.train`` against ``FastSAC`` eager (on CPU: hand-written gradients on oneDNN), through
autograd with MKL matmuls, bf16 autocast, ``--compile`` and (on CUDA) CUDA graphs, and SBX's JAX SAC
when ``sbx`` is installed, at the preset's batch size on a pre-filled buffer, each torch variant at
every ``--sac-threads`` count, the collect cost (predict + env step + store, SB3's own ``learn`` loop
with no updates) and the env-steps/hour they imply at the preset's updates per env step (with
``--count-launches``, also GPU kernels or top-level CPU operators per update); for
PPO/A2C, env-steps/hour of ``learn`` over whole rollouts at the preset's sizes, plain SB3 on
``DummyVecEnv`` against ``FastPPO``/``FastA2C`` (lean rollout collection) on ``FreshInfoVecEnv``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.vec_env import DummyVecEnv
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

from bess_rl.agents import onednn_linear
from bess_rl.agents.fast_onpolicy import FastA2C, FastPPO
from bess_rl.agents.fast_sac import COMPILE_MODES, FastSAC
from bess_rl.agents.population import Population
from bess_rl.agents.vec_env import FreshInfoVecEnv
from bess_rl.experiment.build import make_model
from bess_rl.experiment.config import compose_config, one_line, validate
from bess_rl.experiment.errors import USER_ERRORS, interrupted
from bess_rl.experiment.hardware import describe_machine, keep_heap
from bess_rl.experiment.input_checks import MAX_HEAP_KEEP_MB
from bess_rl.experiment.run_dir import write_json
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.scenario import default_scenario

ROUNDS = 3  # interleaved rounds per measurement
# Per on-policy agent: plain SB3 and the fast path.
ON_POLICY = {"ppo": (PPO, FastPPO), "a2c": (A2C, FastA2C)}
NOTES = {
    "fast": "same, lean rollout collection + FreshInfoVecEnv",
    "sb3 cuda": "same, plain SB3 with the policy on the GPU",
    "fast cuda": "same, lean collection with the policy on the GPU",
    "fast graphs cuda": "same, + rollout on the GPU, one CUDA graph per minibatch step",
}


def compose_cfg(agent: str, preset: str, overrides: tuple[str, ...] = ()) -> DictConfig:
    """The training config ``python -m bess_rl agent=<agent> preset=<preset> *overrides`` would use,
    validated as a run validates it."""
    cfg = compose_config([f"agent={agent}", f"preset={preset}", *overrides])
    validate(cfg)
    return cfg


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(
    jobs: dict[str, Callable[[], int]],
    seconds: float,
    device: str,
    cpu_rate: dict[str, float] | None = None,
    rounds: int = ROUNDS,
) -> dict[str, float]:
    """Units per second of each job (a call returns the units it did), over ``rounds`` interleaved
    rounds of ``seconds / rounds`` per job; every job runs at least once per round. ``cpu_rate``, when
    given, receives units per CPU-second of this process (all its threads): on a machine shared with
    other work, wall time counts the time slices others took, CPU time does not."""
    done = dict.fromkeys(jobs, 0)
    spent = dict.fromkeys(jobs, 0.0)
    cpu = dict.fromkeys(jobs, 0.0)
    for _ in range(rounds):
        for name, job in jobs.items():
            sync(device)
            start, start_cpu, elapsed = time.perf_counter(), time.process_time(), 0.0
            while elapsed < seconds / rounds:
                done[name] += job()
                sync(device)
                elapsed = time.perf_counter() - start
            spent[name] += elapsed
            cpu[name] += time.process_time() - start_cpu
    if cpu_rate is not None:
        cpu_rate |= {name: done[name] / max(cpu[name], 1e-9) for name in jobs}
    return {name: done[name] / spent[name] for name in jobs}


def launches_per_unit(job: Callable[[], int], device: str) -> float:
    """GPU kernels (``device`` cuda: what the device ran, those of replayed CUDA graphs included; copies
    and memsets left out) or, on the CPU, top-level operators (torch.profiler events with no parent: the
    calls from Python, and autograd's backward nodes), per unit of one call of ``job``. Why: a small-MLP
    update is launch-bound on a GPU and dispatch-bound on a CPU, so these counts, not FLOPs, are what a
    faster step has to cut."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sync(device)
    with torch.profiler.profile(activities=activities) as prof:
        units = job()
        sync(device)
    if device == "cuda":
        events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        count = sum(not e.name.startswith(("Memcpy", "Memset")) for e in events)
    else:
        count = sum(e.cpu_parent is None for e in prof.events())
    return count / units


def bench_env(seconds: float, seed: int, rounds: int = ROUNDS) -> dict[str, Any]:
    """Raw env steps/s on the embedded year with random actions (resets included)."""
    env = PvBessEvEnv()
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).uniform(-1, 1, (4096, 2)).astype(np.float32)

    def steps() -> int:
        for action in actions:
            if env.step(action)[3]:
                env.reset()
        return len(actions)

    steps()
    return {
        "agent": "env",
        "preset": "-",
        "variant": "PvBessEvEnv",
        "device": "cpu",
        "env_steps_per_s": interleaved({"env": steps}, seconds, "cpu", rounds=rounds)["env"],
        "note": "raw env, random actions",
    }


def random_transitions(n: int, seed: int) -> list[tuple]:
    """``n`` transitions of the embedded year under random actions, in SB3's replay ``add`` format."""
    env = PvBessEvEnv()
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        info = {"TimeLimit.truncated": truncated and not terminated}
        out.append(
            (obs[None], next_obs[None], action[None], np.array([reward]), np.array([terminated or truncated]), [info])
        )
        obs = env.reset()[0] if terminated or truncated else next_obs
    return out


SBX_NOTE = "SBX (JAX) SAC; XLA's own thread pool (all cores), not --sac-threads"


def sbx_sac() -> type[BaseAlgorithm] | None:
    """SBX's SAC when the ``bench`` extra is installed, else None (its row becomes a skip note)."""
    if importlib.util.find_spec("sbx") is None:
        return None
    from sbx import SAC as SbxSAC

    return SbxSAC


def sac_variants(device: str, compile_mode: str) -> dict[str, tuple[type[BaseAlgorithm] | None, dict[str, Any]]]:
    """Plain SB3, the FastSAC switches worth comparing on this device and, on CPU, SBX (None: not installed)."""
    variants: dict[str, tuple[type[BaseAlgorithm] | None, dict[str, Any]]] = {
        "sb3": (SAC, {}),
        "fast eager": (FastSAC, {}),
        "fast bf16": (FastSAC, {"amp": "bf16"}),
    }
    if device == "cpu":
        variants["fast mkl"] = (FastSAC, {"matmul": "torch"})
        variants["sbx"] = (sbx_sac(), {})
    if compile_mode != "none":
        variants[f"fast compile {compile_mode}"] = (FastSAC, {"compile_mode": compile_mode})
        variants[f"fast bf16 compile {compile_mode}"] = (FastSAC, {"amp": "bf16", "compile_mode": compile_mode})
    if device == "cuda":
        variants["fast graphs"] = (FastSAC, {"cuda_graphs": True})
        variants["fast graphs+bf16"] = (FastSAC, {"cuda_graphs": True, "amp": "bf16"})
    return variants


def at_n(job: Callable[[], int], threads: int | None) -> Callable[[], int]:
    """``at_threads(job, threads)``, or ``job`` itself for None (the process's thread count)."""
    return job if threads is None else at_threads(job, threads)


def at_threads(job: Callable[[], int], threads: int) -> Callable[[], int]:
    """``job`` run with ``threads`` torch threads, the process's count restored after it."""

    def run() -> int:
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return job()
        finally:
            torch.set_num_threads(saved)

    return run


def bench_sac(
    cfg: DictConfig,
    device: str,
    seconds: float,
    prefill: int,
    seed: int,
    threads: tuple[int, ...] = (1,),
    compile_mode: str = "none",
    populations: tuple[int, ...] = (),
    population_amps: tuple[str, ...] = ("none",),
    rounds: int = ROUNDS,
    count_launches: bool = False,
) -> list[dict[str, Any]]:
    """Gradient steps/s, collect steps/s and implied env-steps/hour of each SAC variant at ``cfg``'s
    preset, and of a ``Population`` of each size in ``populations`` (aggregate over its members) at each
    of ``population_amps``; torch variants once per count in ``threads`` (named "<variant> <n>t" when
    there are several). ``count_launches``: each torch variant's ``launches_per_unit`` too, as
    ``kernels_per_update`` (CUDA) or ``ops_per_update`` (CPU), per member update for a population."""
    hp = OmegaConf.to_container(cfg.agent.hparams, resolve=True)
    net_arch, batch_size, preset_buffer = hp["net_arch"], hp["batch_size"], hp["buffer_size"]
    updates_per_step = hp["gradient_steps"] / hp["train_freq"]
    note = f"{updates_per_step:,.0f} updates/env step; buffer {prefill:,} random transitions (preset {preset_buffer:,})"
    hp |= {"buffer_size": max(prefill, batch_size), "learning_starts": 0}
    transitions = random_transitions(prefill, seed)
    chunk = 16  # gradient steps per timed call: one CUDA graph of FastSAC's default graph_steps
    # Steps per profiled call (count_launches): the graphs' chunk on CUDA; on CPU a few, since profiling
    # costs ~0.3 ms an operator and the count per update is the same.
    counted = chunk if device == "cuda" else 4
    count_jobs: dict[str, Callable[[], int]] = {}
    # name -> (update job, collect job, device, note); a job returns the units it did
    subjects: dict[str, tuple[Callable[[], int], Callable[[], int], str, str]] = {}
    skipped: list[dict[str, Any]] = []
    # A compiled step is specialised to the thread count it was compiled at (inductor's C++ loops), so a
    # compiled variant gets one model per thread count, compiled and timed at that count only.
    pinned: dict[str, int] = {}

    def named(variant: str, n: int | None) -> str:
        """A row's name: the variant, with its thread count when several are timed."""
        return variant if n is None or len(threads) == 1 else f"{variant} {n}t"

    def add(
        variant: str, n: int | None, updates: Callable[[int], Callable[[], int]], collect: Callable[[], int],
        where: str, row_note: str, counts: bool = True,
    ) -> None:  # fmt: skip
        """Warm ``updates`` up (allocations, cuBLAS, graph capture, compilation) at ``n`` threads (None:
        timed at each of ``threads``) and make it a subject."""
        at_n(updates(chunk), n)()
        name = named(variant, n)
        if n is not None:
            pinned[name] = n
        subjects[name] = (updates(chunk), collect, where, row_note)
        if counts:
            count_jobs[name] = at_n(updates(counted), n)

    for variant, (cls, extra) in sac_variants(device, compile_mode).items():
        if cls is None:
            missing = "sbx not installed: pip install -e .[bench]"
            skipped.append({"variant": variant, "status": "skipped", "note": missing})
            continue
        compiled = extra.get("compile_mode", "none") != "none"
        for n in threads if compiled else (None,):
            env = DummyVecEnv([PvBessEvEnv])
            if variant == "sbx":  # JAX places the model itself
                sbx_hp = {k: v for k, v in hp.items() if k != "net_arch"}
                model = cls("MlpPolicy", env, policy_kwargs={"net_arch": net_arch}, seed=seed, **sbx_hp, **extra)
            else:
                model = make_model(cls, env, hp, seed, device, **extra)
            model.set_logger(Logger(None, []))
            for transition in transitions:
                model.replay_buffer.add(*transition)
            sbx = variant == "sbx"
            add(variant, n, functools.partial(sac_updates, model), sac_collect(model),
                "cpu" if sbx else str(model.device), SBX_NOTE if sbx else note, counts=not sbx)  # fmt: skip
    pop_hp = {k: v for k, v in hp.items() if k != "net_arch"}  # net_arch goes to the policy
    for size, amp, mode in itertools.product(populations, population_amps, dict.fromkeys(("none", compile_mode))):
        for n in threads if mode != "none" else (None,):
            pop = Population(
                PvBessEvEnv, size, seeds=range(seed, seed + size), device=device,
                policy_kwargs={"net_arch": net_arch}, amp=amp, compile_mode=mode, **pop_hp,
            )  # fmt: skip
            for member in pop.members:
                for transition in transitions:
                    member.replay_buffer.add(*transition)
            variant = " ".join([f"population {size}", *([amp] if amp != "none" else []),
                                *([f"compile {mode}"] if mode != "none" else [])])  # fmt: skip
            pop_note = f"aggregate of {size} stacked members (each its own batch); {note}"
            add(variant, n, functools.partial(population_updates, pop), population_collect(pop), device, pop_note)

    # (row name, subject, torch threads): SBX runs once, on XLA's threads; a compiled subject at its own count.
    runs = [(name, name, pinned.get(name)) for name in subjects if name == "sbx" or name in pinned]
    runs += [(named(name, n), name, n) for name in subjects if name != "sbx" and name not in pinned for n in threads]
    launches = {name: launches_per_unit(job, device) for name, job in count_jobs.items()} if count_launches else {}
    launch_key = "kernels_per_update" if device == "cuda" else "ops_per_update"
    grad_jobs = {row: at_threads(subjects[name][0], n) if n else subjects[name][0] for row, name, n in runs}
    cpu_rate: dict[str, float] = {}
    grad_rate = interleaved(grad_jobs, seconds, device, cpu_rate, rounds)
    collect_rate = interleaved({name: job[1] for name, job in subjects.items()}, seconds / 2, device, rounds=rounds)
    rows = []
    for row_name, name, n in runs:
        step_s = 1 / collect_rate[name] + updates_per_step / grad_rate[row_name]
        rows.append(
            {
                "agent": "sac",
                "preset": cfg.preset.name,
                "variant": row_name,
                "device": subjects[name][2],
                "torch_threads": n,
                "batch_size": batch_size,
                "net_arch": net_arch,
                "updates_per_env_step": updates_per_step,
                "buffer_transitions": prefill,
                "preset_buffer_size": preset_buffer,
                "grad_steps_per_s": grad_rate[row_name],
                "grad_steps_per_cpu_s": cpu_rate[row_name],
                "collect_steps_per_s": collect_rate[name],
                "env_steps_per_hour": 3600 / step_s,
                **({launch_key: launches[name]} if name in launches else {}),
                "note": subjects[name][3],
            }
        )
    base = {"agent": "sac", "preset": cfg.preset.name, "device": device}
    return with_speedups(rows, ("grad_steps_per_s", "env_steps_per_hour")) + [base | row for row in skipped]


def sac_updates(model: BaseAlgorithm, chunk: int) -> Callable[[], int]:
    return lambda: (model.train(chunk, model.batch_size), chunk)[1]


def sac_collect(model: BaseAlgorithm) -> Callable[[], int]:
    """SB3's own collect loop (predict, env step, store) with updates switched off."""
    model.gradient_steps, model.train_freq = 0, TrainFreq(64, TrainFrequencyUnit.STEP)
    return lambda: (model.learn(64, reset_num_timesteps=False), 64)[1]


def population_updates(pop: Population, chunk: int) -> Callable[[], int]:
    """``chunk`` stacked steps: ``chunk`` updates for every member."""
    return lambda: (pop.train(chunk), chunk * pop.size)[1]


def population_collect(pop: Population) -> Callable[[], int]:
    """The population's lockstep collect loop with updates switched off: env steps of all members."""
    pop.gradient_steps = 0
    return lambda: (pop.learn(64), 64 * pop.size)[1]


def on_policy_variants(agent: str, device: str) -> dict[str, tuple[type[BaseAlgorithm], type, str, dict[str, Any]]]:
    """(class, vec env, device, switches) per variant: plain SB3 on ``DummyVecEnv`` and the fast path
    on ``FreshInfoVecEnv``, on CPU as training runs them (their ``Capabilities.prefers_cpu``); with
    ``--device cuda`` also both on the GPU and the captured update, to measure that choice."""
    sb3, fast = ON_POLICY[agent]
    variants = {"sb3": (sb3, DummyVecEnv, "cpu", {}), "fast": (fast, FreshInfoVecEnv, "cpu", {})}
    if device == "cuda":
        variants |= {
            "sb3 cuda": (sb3, DummyVecEnv, "cuda", {}),
            "fast cuda": (fast, FreshInfoVecEnv, "cuda", {}),
            "fast graphs cuda": (fast, FreshInfoVecEnv, "cuda", {"cuda_graphs": True}),
        }
    return variants


def bench_on_policy(
    cfg: DictConfig, device: str, seconds: float, seed: int, rounds: int = ROUNDS
) -> list[dict[str, Any]]:
    """Env-steps/hour of ``learn`` over whole rollouts (collect + update) at ``cfg``'s preset, each
    variant of ``on_policy_variants`` in interleaved rounds."""
    hp = OmegaConf.to_container(cfg.agent.hparams, resolve=True)
    n_envs = cfg.agent.n_envs
    scenario = default_scenario()  # loaded once, not by each of the n_envs copies
    rollout = n_envs * hp["n_steps"]
    jobs: dict[str, Callable[[], int]] = {}
    devices: dict[str, str] = {}
    for name, (cls, vec_env_cls, where, extra) in on_policy_variants(cfg.agent.name, device).items():
        env = make_vec_env(
            PvBessEvEnv, n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls, env_kwargs={"scenario": scenario}
        )
        model = make_model(cls, env, hp, seed, where, **extra)
        model.set_logger(Logger(None, []))
        devices[name] = str(model.device)

        def rollouts(model: BaseAlgorithm = model) -> int:
            model.learn(rollout, reset_num_timesteps=False)
            return rollout

        rollouts()  # warm-up
        jobs[name] = rollouts
    rates = interleaved(jobs, seconds, device, rounds=rounds)
    base = {"agent": cfg.agent.name, "preset": cfg.preset.name, "rollout_steps": rollout}
    note = f"learn() over {rollout:,}-step rollouts (n_envs {n_envs}), collect + update"
    rows = [
        {**base, "variant": name, "device": devices[name], "env_steps_per_s": rate, "env_steps_per_hour": rate * 3600,
         "note": NOTES.get(name, note)}
        for name, rate in rates.items()
    ]  # fmt: skip
    return with_speedups(rows, ("env_steps_per_hour",))


def with_speedups(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Add ``speedup_<key>``: each row's ``key`` over the (first) ``sb3`` row's."""
    base = next(row for row in rows if row["variant"].split()[0] == "sb3")
    return [row | {f"speedup_{key}": row[key] / base[key] for key in keys} for row in rows]


def table(results: list[dict[str, Any]], title: str) -> Table:
    """One row per agent, preset and variant; the x SB3 columns are over plain SB3 in the same run."""
    t = Table(title=title)
    columns = ("agent", "preset", "variant", "device", "batch", "grad steps/s", "x SB3", "per CPU-s", "launches",
               "env steps/s", "env-steps/hour", "x SB3 ", "note")  # fmt: skip
    for col in columns:
        t.add_column(col, justify="left" if col in ("agent", "preset", "variant", "device", "note") else "right")

    def num(row: dict[str, Any], key: str, fmt: str = ",.0f") -> str:
        value = row.get(key)
        return "-" if value is None else format(value, fmt)

    for row in results:
        t.add_row(
            row["agent"],
            row["preset"],
            row["variant"],
            row["device"],
            num(row, "batch_size"),
            row.get("status") or num(row, "grad_steps_per_s", ",.1f"),
            num(row, "speedup_grad_steps_per_s", ".2f"),
            num(row, "grad_steps_per_cpu_s", ",.1f"),
            num(row, "kernels_per_update") if "kernels_per_update" in row else num(row, "ops_per_update"),
            num(row, "collect_steps_per_s") if "collect_steps_per_s" in row else num(row, "env_steps_per_s"),
            num(row, "env_steps_per_hour"),
            num(row, "speedup_env_steps_per_hour", ".2f"),
            escape(row.get("note", "")),  # a note's "[bench]" is text, not a rich style
        )
    return t


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (a NaN time box passes every comparison and times nothing)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, refused in one line before anything is built or timed."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def heap_mb(text: str) -> int | None:
    """An argparse type: megabytes in [0, MAX_HEAP_KEEP_MB], the range training takes for hardware.heap_keep_mb
    (glibc's mallopt would wrap more around unnoticed), or ``none`` (glibc's defaults)."""
    if text == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer or none: {text!r}") from None
    if not 0 <= value <= MAX_HEAP_KEEP_MB:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_HEAP_KEEP_MB}] (or none), got {value}")
    return value


def unwritable(path: Path) -> str | None:
    """Why the JSON cannot be written to ``path``, or None: found before the minutes of measuring, not after.
    Creates the missing folders and a temporary file in the last one, as the JSON's own write will."""
    if path.is_dir():
        return f"is a folder: name a file, e.g. {path / 'bench.json'}"
    existing = next(p for p in path.parents if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        return f"cannot write in {path.parent} ({exc.strerror or exc})"
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bess_rl.bench", description=__doc__.splitlines()[0])
    p.add_argument("--agents", nargs="+", choices=("sac", "ppo", "a2c"), default=["sac", "ppo", "a2c"])
    p.add_argument("--presets", nargs="+", choices=("before", "after"), default=["before", "after"])
    p.add_argument(
        "--seconds",
        type=positive_seconds,
        default=5.0,
        help="seconds each variant is timed per measurement (SAC's collect cost: half)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, default=None, help="default: <paths.output_dir>/bench/<timestamp>.json")
    p.add_argument("--prefill", type=at_least(1), default=10_000, help="random transitions in the SAC replay buffer")
    p.add_argument(
        "--threads", type=at_least(1), default=1, help="torch threads (1 is fastest for these MLPs on 2 cores)"
    )
    p.add_argument(
        "--sac-threads",
        type=at_least(1),
        nargs="+",
        default=None,
        help="torch thread counts to time each SAC variant at",
    )
    p.add_argument(
        "--population", type=at_least(1), nargs="*", default=[], help="also time stacked SAC populations of these sizes"
    )
    p.add_argument(
        "--population-amp",
        nargs="+",
        choices=("none", "bf16"),
        default=["none"],
        help="the populations' matmul precisions (bf16: bf16 matmuls, as FastSAC amp=bf16)",
    )
    p.add_argument(
        "--compile", choices=COMPILE_MODES, default="none", help="also time FastSAC with this torch.compile mode"
    )
    p.add_argument(
        "--count-launches",
        action="store_true",
        help="also count, with torch.profiler, each SAC torch variant's GPU kernels (cuda) or top-level "
        "operators (cpu) per update: the 'launches' column",
    )
    p.add_argument(
        "--heap-keep-mb",
        type=heap_mb,
        default=compose_config([]).hardware.heap_keep_mb,
        help="glibc heap kept for reuse, as training applies hardware.heap_keep_mb (default: the default "
        "hardware profile's); 'none': glibc's defaults",
    )
    p.add_argument(
        "--rounds",
        type=at_least(1),
        default=ROUNDS,
        help="interleaved rounds per measurement (each job runs once a round)",
    )
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument(
        "--overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of agent.hparams.* and agent.n_envs on top of each agent and preset, as the main "
        "command takes them (e.g. agent.hparams.batch_size=256): the speed of the config a run would use",
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but this machine has no CUDA device")
    args.sac_threads = args.sac_threads or [args.threads]
    if ignored := [o for o in args.overrides if not o.lstrip("+~").startswith(("agent.hparams.", "agent.n_envs="))]:
        p.error(f"--overrides {' '.join(ignored)}: the bench times agent.hparams.* and agent.n_envs only (agents, "
                "presets and hardware are its own options)")  # fmt: skip
    try:  # composed here, so a bad override fails in one line before anything is timed
        args.configs = {(a, pr): compose_cfg(a, pr, tuple(args.overrides)) for a in args.agents for pr in args.presets}
    except (*USER_ERRORS, HydraException, OmegaConfBaseException) as exc:
        p.error(f"--overrides: {one_line(exc)}")
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    args.json = args.json or Path(compose_config([]).paths.output_dir) / "bench" / f"{stamp}.json"
    if problem := unwritable(args.json):
        p.error(f"--json {args.json}: {problem}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns what was written.

    Each agent and preset's rows are printed and the JSON rewritten as soon as they are measured,
    so an interrupted or time-limited run keeps what it finished; Ctrl-C says where, in one line (exit 130).
    """
    written: list[Path] = []  # the JSON, once per measurement written to it
    try:
        return bench(parse_args(argv), written)
    except KeyboardInterrupt:
        kept = f"the {len(written)} measurement(s) finished are in {written[-1]}" if written else "nothing measured"
        raise SystemExit(interrupted(kept)) from None


def bench(args: argparse.Namespace, written: list[Path]) -> dict[str, Any]:
    """``main`` for parsed arguments; appends the JSON's path to ``written`` after each write."""
    torch.set_num_threads(args.threads)
    heap_kept = keep_heap(args.heap_keep_mb)
    report = {
        "time": datetime.now().strftime("%Y-%m-%d_%H-%M-%S"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "configs"},
        "machine": describe_machine()
        | {
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            # which products FastSAC's CPU step sends to oneDNN here (bess_rl.agents.onednn_linear)
            "onednn_fp32": onednn_linear.fast_fp32(),
            "native_bf16": onednn_linear.native_bf16(),
        },
        "torch_threads": torch.get_num_threads(),
        "heap_keep_mb": args.heap_keep_mb if heap_kept else None,
        "load_average": [],  # 1-minute load before the run and after each measurement: other work on the machine
        "results": [],
    }
    console = Console(width=None if sys.stdout.isatty() else 200)
    title = f"on {args.device} ({args.seconds:g} s per measurement, {args.threads} torch thread(s))"
    measurements: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = [
        ("env", lambda: [bench_env(args.seconds, args.seed, args.rounds)])
    ]
    for agent in args.agents:
        for preset in args.presets:
            cfg = args.configs[agent, preset]
            if agent == "sac":
                job = functools.partial(
                    bench_sac,
                    cfg,
                    args.device,
                    args.seconds,
                    args.prefill,
                    args.seed,
                    tuple(args.sac_threads),
                    args.compile,
                    tuple(args.population),
                    tuple(args.population_amp),
                    args.rounds,
                    args.count_launches,
                )
            else:
                job = functools.partial(bench_on_policy, cfg, args.device, args.seconds, args.seed, args.rounds)
            measurements.append((f"{agent} {preset}", job))
    report["load_average"].append(os.getloadavg()[0])
    for name, job in measurements:
        rows = job()
        report["results"] += rows
        report["load_average"].append(os.getloadavg()[0])
        written.append(write_json(args.json, report))
        if len(measurements) > 1:
            console.print(table(rows, f"{name} {title}"))
    console.print(table(report["results"], f"Training speed {title}"))
    print(f"JSON: {args.json}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])

"""What several test modules share: a tiny scenario, tiny training budgets, the config and the CLI."""

from __future__ import annotations

import base64
import json
import logging
import logging.config
import os
import runpy
import subprocess
import sys
import traceback
import zipfile
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from bess_rl.experiment.config import compose_config
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import SiteParams
from bess_rl.site.scenario import EvSessions, Scenario

SMALL_SITE = SiteParams(pv_kwp=3_000.0, bess_capacity_kwh=1_500.0, bess_power_kw=600.0)


def make_scenario(days: int = 3, seed: int = 0) -> Scenario:
    """PV bell 6-18 h, a load with an evening bump, and a handful of EV sessions per day."""
    rng = np.random.default_rng(seed)
    hours = 24 * days
    hod = np.arange(hours) % 24
    pv = np.clip(np.sin(np.pi * (hod - 6) / 12), 0, None) * 0.8 * rng.uniform(0.6, 1.0, hours)
    load = 900.0 + 600.0 * ((hod >= 9) & (hod < 22)) + rng.uniform(0, 100, hours)
    arr, dep, energy, power = [], [], [], []
    for d in range(days):
        for a in (9, 11, 13, 18, 19, 20):
            stay = int(rng.integers(1, 4))
            p = float(rng.choice([40.0, 60.0]))
            arr.append(24 * d + a)
            dep.append(24 * d + min(a + stay, 22))
            energy.append(p * (dep[-1] - arr[-1]) * rng.uniform(0.3, 0.9))
            power.append(p)
    sessions = EvSessions(np.array(arr), np.array(dep), np.array(energy), np.array(power))
    return Scenario("synthetic", pv, load, np.full(hours, 0.4521), sessions)


def make_overnight_scenario(days: int = 4, seed: int = 0) -> Scenario:
    """``make_scenario``'s PV and load, a grid intensity high in the evening and low at night, and EVs
    parked from the evening until the next morning: where deferring EVs pays."""
    base = make_scenario(days, seed)
    rng = np.random.default_rng(seed)
    hod = np.arange(base.hours) % 24
    co2 = 0.45 + 0.25 * np.cos(2 * np.pi * (hod - 19) / 24) + rng.uniform(0, 0.02, base.hours)
    arr, dep, energy, power = [], [], [], []
    for d in range(days - 1):
        for a in (17, 18, 18, 19, 20):
            p = float(rng.choice([7.0, 11.0]))
            arr.append(24 * d + a)
            dep.append(24 * (d + 1) + int(rng.integers(6, 9)))
            energy.append(p * rng.uniform(2.0, 6.0))
            power.append(p)
    sessions = EvSessions(np.array(arr), np.array(dep), np.array(energy), np.array(power))
    return Scenario("overnight", base.pv_kw_per_kwp, base.load_kw, co2, sessions)


# Tiny budgets: a one-week scenario and the smallest updates each algorithm accepts.
TINY = {
    "sac": ["agent.total_timesteps=60", "agent.hparams.buffer_size=500", "agent.hparams.learning_starts=20",
            "agent.hparams.gradient_steps=2", "agent.hparams.batch_size=16", "agent.hparams.net_arch=[16]"],
    "ppo": ["agent.total_timesteps=64", "agent.hparams.n_steps=64", "agent.hparams.batch_size=32",
            "agent.hparams.n_epochs=1", "agent.hparams.net_arch=[16]"],
    "a2c": ["agent.total_timesteps=64", "agent.hparams.net_arch=[16]"],
}  # fmt: skip
COMMON = ["scenario=iquitos", "scenario.window_hours=168", "progress_bar=false", "plot=false"]


def compose_cfg(overrides: list[str]) -> DictConfig:
    """The config ``python -m bess_rl`` composes for these overrides."""
    return compose_config(overrides)


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m bess_rl *args`` with every output (run folders, optuna.db) under ``cwd``."""
    env = {**os.environ, "BESS_RL_ROOT": str(cwd)}
    return subprocess.run([sys.executable, "-m", "bess_rl", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)  # fmt: skip


def _keep_logging(mp: pytest.MonkeyPatch) -> None:
    """Hydra configures logging with ``dictConfig``, which closes every handler of the process: in a CLI
    process there are none, here pytest's capture handlers would go too. Only the handlers made after
    this call are closed, and the root logger gets its handlers back when ``mp`` undoes."""
    before = set(logging._handlerList)  # weak references to every live handler
    root = logging.getLogger()

    def clear_new_only() -> None:
        logging._handlers.clear()
        logging.shutdown([ref for ref in logging._handlerList if ref not in before])
        logging._handlerList[:] = [ref for ref in logging._handlerList if ref in before]

    mp.setattr(logging.config, "_clearExistingHandlers", clear_new_only)
    mp.setattr(root, "handlers", root.handlers[:])  # dictConfig rewrites the copy; undo puts the list back


def run_cli(*args: str, cwd: Path, capfd: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess:
    """``cli`` without starting an interpreter (torch and SB3 are imported already: ~4 s less a call): the
    same entry point, arguments, environment and folder; its output (child processes' included) through
    the test's ``capfd``; the exit code the interpreter would give (an uncaught exception: its traceback
    and 1). For what needs a process of its own (signals, kills, concurrent runs), use ``cli``."""
    from hydra.core.global_hydra import GlobalHydra

    code, level = 0, logging.getLogger().level
    capfd.readouterr()  # what the test printed before
    if "joblib.externals.loky" in sys.modules:
        # joblib's worker processes outlive a command run here, with its BESS_RL_ROOT and folder: a later
        # test's jobs ran in an earlier test's root (as no two real commands share workers).
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BESS_RL_ROOT", str(cwd))
        mp.chdir(cwd)
        mp.setattr(sys, "argv", ["bess_rl", *args])
        _keep_logging(mp)
        try:
            runpy.run_module("bess_rl", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            GlobalHydra.instance().clear()
    logging.getLogger().setLevel(level)  # Hydra set INFO; setLevel also drops the loggers' cached levels
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def small_env(episode_hours: int | None = 48, random_start: bool = False) -> PvBessEvEnv:
    """The tiny scenario at the small site, ``episode_hours`` long (None: all of it, as references need)."""
    return PvBessEvEnv(make_scenario(), SMALL_SITE, episode_hours=episode_hours, random_start=random_start)


def vec_env(cls: type[DummyVecEnv], n_envs: int, seed: int = 0, episode_hours: int = 48) -> VecEnv:
    """Monitor-wrapped, seeded training envs on random days, as ``build.new_model`` builds them."""
    return make_vec_env(lambda: small_env(episode_hours, True), n_envs=n_envs, seed=seed, vec_env_cls=cls)


def table(markdown: str, title: str) -> list[list[str]]:
    """The body rows of the Markdown table under ``## title``."""
    section = markdown.split(f"## {title}")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def compile_without_codegen(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.compile`` through AOTAutograd without inductor's code generation: the same graph capture
    (whole graph, functionalised) in ~2 s, where a cold inductor compile of a SAC step takes ~20 s."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, **{**kw, "mode": None, "backend": "aot_eager"}))


def assert_same_steps(starts: list[torch.Tensor], mine: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    """Each tensor moved from its start as the reference did, within 5 % of the reference's step (norm):
    Adam turns a bf16-rounding sign flip of a tiny gradient into a full step, so element-wise fails."""
    for i, (start, a, b) in enumerate(zip(starts, mine, theirs, strict=True)):
        delta = b - start
        assert float((a - start - delta).norm()) <= 0.05 * float(delta.norm()), f"tensor {i}"


class _WritesAFile:
    """Unpickling this writes a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "code ran"))


def code_writing(marker: Path) -> str:
    """A ``:serialized:`` value of SB3's model data (base64 cloudpickle) that writes ``marker`` if unpickled."""
    return base64.b64encode(cloudpickle.dumps(_WritesAFile(str(marker)))).decode()


def rewrite_data(model_zip: Path, change) -> None:
    """Edit the ``data`` JSON of a SB3 model zip in place."""
    with zipfile.ZipFile(model_zip) as z:
        files = {n: z.read(n) for n in z.namelist()}
    data = json.loads(files["data"])
    change(data)
    files["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(model_zip, "w") as z:
        for n, content in files.items():
            z.writestr(n, content)

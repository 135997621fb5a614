"""Shared fixtures: a tiny synthetic scenario so env tests run in milliseconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bess_rl.scenario import EvSessions, Scenario
from bess_rl.site import SiteParams
from tests.pg import pg_server, pg_url  # noqa: F401  (fixtures: a throwaway PostgreSQL server)


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


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny MLPs run many times faster on one thread than on two contended ones (2-core machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def scenario() -> Scenario:
    return make_scenario()


@pytest.fixture
def site() -> SiteParams:
    return SiteParams(pv_kwp=3_000.0, bess_capacity_kwh=1_500.0, bess_power_kw=600.0)


@pytest.fixture
def no_tf32():
    """Full float32 matmuls for exact comparisons (a GPU profile turns TF32 on); restored afterwards by
    assignment: monkeypatch's undo deletes these module attributes and breaks later reads."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

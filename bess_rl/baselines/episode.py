"""The one episode runner every controller is scored with (agents and references alike).

Why one: the CO2, EV energy, KPIs and trace of an agent and of a reference must come from the same loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bess_rl.baselines.kpis import KPI_KEYS, curtailed_pv_kw, kpis
from bess_rl.site.env import PvBessEvEnv

Policy = Callable[[PvBessEvEnv, np.ndarray], np.ndarray]
TRACE_KEYS = ("pv_kw", "load_kw", "ev_kw", "bess_kw", "soc", "grid_import_kw", "surplus_kw")


@dataclass
class EpisodeResult:
    """Totals and KPIs (``bess_rl.baselines.kpis``) of one deterministic episode plus the hourly trace for plots."""

    co2_kg: float
    grid_import_kwh: float
    ev_served_kwh: float
    ev_unmet_kwh: float
    pv_kwh: float
    reward: float
    hours: int
    cost: float
    peak_import_kw: float
    pv_self_consumption_pct: float
    curtailed_pv_kwh: float
    battery_throughput_kwh: float
    battery_cycles: float
    trace: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def summary(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if k != "trace"}

    def kpis(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in KPI_KEYS}


def run_episode(env: PvBessEvEnv, policy: Policy, seed: int | None = 0, options: dict | None = None) -> EpisodeResult:
    """Run one episode from ``reset(seed, options)`` to truncation with ``policy(env, obs)``."""
    obs, _ = env.reset(seed=seed, options=options)
    rows: dict[str, list[float]] = {k: [] for k in TRACE_KEYS}
    hours: list[int] = []
    co2 = unmet = reward = 0.0
    done = False
    while not done:
        obs, r, terminated, truncated, info = env.step(policy(env, obs))
        done = terminated or truncated
        co2 += info["co2_kg"]
        unmet += info["ev_unmet_kwh"]
        reward += r
        hours.append(info["hour"])
        for k in TRACE_KEYS:
            rows[k].append(info[k])
    trace = {k: np.asarray(v) for k, v in rows.items()}
    price = env.scenario.price_per_kwh[np.asarray(hours)]
    return EpisodeResult(
        co2_kg=co2,
        grid_import_kwh=float(trace["grid_import_kw"].sum()),
        ev_served_kwh=float(trace["ev_kw"].sum()),
        ev_unmet_kwh=unmet,
        pv_kwh=float(trace["pv_kw"].sum()),
        reward=reward,
        hours=len(trace["pv_kw"]),
        **kpis(
            trace["grid_import_kw"],
            trace["bess_kw"],
            curtailed_pv_kw(trace["pv_kw"], trace["load_kw"] + trace["ev_kw"], trace["bess_kw"], trace["surplus_kw"]),
            trace["pv_kw"],
            price,
            env.site.bess_capacity_kwh,
        ),
        trace=trace,
    )

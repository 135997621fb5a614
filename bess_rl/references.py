"""Reference controllers every agent is judged against, and the one episode runner they share.

Uncontrolled charging is the baseline of the CO2 reduction %, the rule-based controller is what a
site engineer would deploy without RL, and the LP optimum (``bess_rl.optimum``) is the floor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from rich.console import Console
from rich.table import Table

from bess_rl.env import PvBessEvEnv
from bess_rl.optimum import solve_optimum

Policy = Callable[[PvBessEvEnv, np.ndarray], np.ndarray]
TRACE_KEYS = ("pv_kw", "load_kw", "ev_kw", "bess_kw", "soc", "grid_import_kw", "surplus_kw")


@dataclass
class EpisodeResult:
    """Totals of one deterministic episode plus the hourly trace for plots."""

    co2_kg: float
    grid_import_kwh: float
    ev_served_kwh: float
    ev_unmet_kwh: float
    pv_kwh: float
    surplus_kwh: float
    reward: float
    hours: int
    trace: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def summary(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if k != "trace"}


def run_episode(env: PvBessEvEnv, policy: Policy, seed: int | None = 0, options: dict | None = None) -> EpisodeResult:
    """Run one episode from ``reset(seed, options)`` to truncation with ``policy(env, obs)``."""
    obs, _ = env.reset(seed=seed, options=options)
    rows: dict[str, list[float]] = {k: [] for k in TRACE_KEYS}
    co2 = unmet = reward = 0.0
    done = False
    while not done:
        obs, r, terminated, truncated, info = env.step(policy(env, obs))
        done = terminated or truncated
        co2 += info["co2_kg"]
        unmet += info["ev_unmet_kwh"]
        reward += r
        for k in TRACE_KEYS:
            rows[k].append(info[k])
    trace = {k: np.asarray(v) for k, v in rows.items()}
    return EpisodeResult(
        co2_kg=co2,
        grid_import_kwh=float(trace["grid_import_kw"].sum()),
        ev_served_kwh=float(trace["ev_kw"].sum()),
        ev_unmet_kwh=unmet,
        pv_kwh=float(trace["pv_kw"].sum()),
        surplus_kwh=float(trace["surplus_kw"].sum()),
        reward=reward,
        hours=len(trace["pv_kw"]),
        trace=trace,
    )


def uncontrolled(env: PvBessEvEnv, obs: np.ndarray) -> np.ndarray:
    """Every EV at full power from arrival; battery idle."""
    return np.array([0.0, 1.0], dtype=np.float32)


@dataclass(frozen=True)
class RuleBased:
    """Store PV surplus in the battery; discharge to cover the deficit in the evening/night window.

    EVs charge uncontrolled, so every EV is served exactly as in the baseline and the battery only
    ever holds energy that would have been curtailed: its CO2 can never exceed the baseline's.
    """

    discharge_from_hour: int = 17
    discharge_until_hour: int = 7

    def _in_window(self, hour_of_day: int) -> bool:
        a, b = self.discharge_from_hour, self.discharge_until_hour
        return a <= hour_of_day < b if a < b else hour_of_day >= a or hour_of_day < b

    def __call__(self, env: PvBessEvEnv, obs: np.ndarray) -> np.ndarray:
        t = env.hour
        net = env.load_kw[t] + env.ev_demand_kw() - env.pv_kw[t]
        p_max = env.site.bess_power_kw
        if net < 0:
            bess = min(-net / p_max, 1.0)
        elif self._in_window(t % 24):
            bess = -min(net / p_max, 1.0)
        else:
            bess = 0.0
        return np.array([bess, 1.0], dtype=np.float32)


@dataclass
class References:
    uncontrolled: EpisodeResult
    rule_based: EpisodeResult
    optimum_co2_kg: float
    optimum_unmet_kwh: float

    def table(self) -> dict[str, dict[str, float]]:
        return {
            "uncontrolled": {"co2_kg": self.uncontrolled.co2_kg, "ev_unmet_kwh": self.uncontrolled.ev_unmet_kwh},
            "rule_based": {"co2_kg": self.rule_based.co2_kg, "ev_unmet_kwh": self.rule_based.ev_unmet_kwh},
            "lp_optimum": {"co2_kg": self.optimum_co2_kg, "ev_unmet_kwh": self.optimum_unmet_kwh},
        }


def compute_references(env: PvBessEvEnv) -> References:
    """Uncontrolled, rule-based and LP-optimal CO2 of the evaluation env's scenario."""
    opt = solve_optimum(env.scenario, env.site)
    return References(
        uncontrolled=run_episode(env, uncontrolled),
        rule_based=run_episode(env, RuleBased()),
        optimum_co2_kg=opt.co2_kg,
        optimum_unmet_kwh=opt.ev_energy_unmet_kwh,
    )


def co2_table(rows: list[tuple[str, float, float]], hours: int) -> Table:
    """(controller, CO2 kg, EV unmet kWh) rows as a table, % relative to the first row."""
    base = rows[0][1]
    table = Table(title=f"Grid CO2 over the {hours} h evaluated (deterministic policy)")
    for col in ("controller", "CO2 kg", "vs uncontrolled", "EV unmet kWh"):
        table.add_column(col, justify="left" if col == "controller" else "right")
    for name, co2, unmet in rows:
        table.add_row(name, f"{co2:,.0f}", f"{100 * (co2 - base) / base:+.2f}%", f"{unmet:,.1f}")
    return table


def main() -> None:
    """``python -m bess_rl.references``: the reference table of the embedded scenario, default site."""
    env = PvBessEvEnv()
    t0 = time.perf_counter()
    refs = compute_references(env)
    rows = [(name, r["co2_kg"], r["ev_unmet_kwh"]) for name, r in refs.table().items()]
    Console().print(co2_table(rows, env.scenario.hours))
    print(f"computed in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()

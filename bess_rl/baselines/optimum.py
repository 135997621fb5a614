"""Perfect-foresight optimum of one scenario, as a linear program solved by HiGHS.

Why: the RL agents only see the past; this LP sees the whole year at once (PV, load, carbon
intensity and every EV session), so its CO2 is the physical lower bound the agents are judged
against. It models exactly the environment's physics, only relaxed where that is harmless
(charge and discharge may both be non-zero in one hour; that only wastes energy and is never
better than curtailing), so it is never more restrictive than the environment.

Model, hours t = 0..T-1 of one hour each (kWh = kW):

    variables   g_t in [0, G_t] grid import, x_t >= 0 surplus (curtailed, earns nothing),
                c_t, d_t in [0, P] battery charge / discharge (AC side),
                e_t in [soc_min Cap, soc_max Cap] battery energy at the END of hour t,
                p_{s,t} in [0, max_power_s] for arrival_s <= t < departure_s only.
    balance     pv_t + g_t + d_t = load_t + sum_s p_{s,t} + c_t + x_t
    battery     e_t = e_{t-1} + eta_c c_t - d_t / eta_d,   e_{-1} = soc_init Cap, no terminal constraint
    EVs         sum_t p_{s,t} <= energy_s                  (unmet_s = energy_s - sum_t p_{s,t} >= 0)
    minimise    sum_t co2_t g_t + penalty sum_s unmet_s

G_t is ``site.import_cap_kw`` (infinite without a cap), raised to load_t - pv_t where the load alone
exceeds it: the env serves the load regardless and counts that as a cap violation, so the LP must too.

The unmet energy is not a variable: the penalty term is the constant ``penalty * sum(energy)``
minus ``penalty`` times each p_{s,t}. Session-hours are expanded with numpy index arithmetic, and
the constraint matrices are assembled as scipy.sparse COO matrices without Python loops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from bess_rl.site.params import SiteParams, penalised_kg
from bess_rl.site.scenario import Scenario, session_hours


@dataclass(frozen=True)
class OptimumResult:
    """Optimal plan and its totals; arrays are per hour, shape (T,)."""

    co2_kg: float  # sum co2_t * g_t
    grid_import_kwh: float
    ev_energy_served_kwh: float
    ev_energy_unmet_kwh: float
    objective_kg: float  # co2 + penalty * unmet
    grid_import_kw: np.ndarray  # per hour
    bess_power_kw: np.ndarray  # net battery power per hour (>0 charging), c - d without simultaneous use
    soc: np.ndarray  # fraction of capacity at the END of each hour
    ev_power_kw: np.ndarray  # sum over sessions per hour
    solve_seconds: float


def _check_inputs(scenario: Scenario) -> None:
    T = scenario.hours
    if T < 1:
        raise ValueError("scenario has no hours")
    for name in ("pv_kw_per_kwp", "co2_kg_per_kwh"):
        if getattr(scenario, name).shape != (T,):
            raise ValueError(f"scenario.{name} has shape {getattr(scenario, name).shape}, expected ({T},)")
    s = scenario.sessions
    if len(s) and (np.any(s.arrival < 0) or np.any(s.departure <= s.arrival) or np.any(s.departure > T)):
        raise ValueError(f"sessions must satisfy 0 <= arrival < departure <= {T}")


def solve_optimum(scenario: Scenario, site: SiteParams) -> OptimumResult:
    """Minimum CO2 (plus unmet-EV penalty) of the scenario with perfect foresight; see module doc."""
    _check_inputs(scenario)
    T = scenario.hours
    ses = scenario.sessions
    pv = site.pv_kwp * np.asarray(scenario.pv_kw_per_kwp, dtype=np.float64)
    load = np.asarray(scenario.load_kw, dtype=np.float64)
    co2 = np.asarray(scenario.co2_kg_per_kwh, dtype=np.float64)
    energy = np.asarray(ses.energy_kwh, dtype=np.float64)
    cap, pmax = site.bess_capacity_kwh, site.bess_power_kw
    eta_c, eta_d = site.bess_eta_charge, site.bess_eta_discharge
    penalty = site.unmet_penalty_kg_per_kwh

    sess, hour = session_hours(ses.arrival, ses.departure)
    n_p = sess.shape[0]
    # Column blocks: g | x | c | d | e | p
    og, ox, oc, od, oe, op = 0, T, 2 * T, 3 * T, 4 * T, 5 * T
    n = op + n_p
    t = np.arange(T)

    cost = np.zeros(n)
    cost[og:ox] = co2
    cost[op:] = -penalty

    lb = np.zeros(n)
    ub = np.full(n, np.inf)
    if site.import_cap_kw is not None:
        ub[og:ox] = np.maximum(site.import_cap_kw, load - pv)
    ub[oc:oe] = pmax
    lb[oe:op] = site.soc_min * cap
    ub[oe:op] = site.soc_max * cap
    ub[op:] = np.asarray(ses.max_power_kw, dtype=np.float64)[sess]

    # Equality rows 0..T-1: energy balance  g - x - c + d - sum_s p = load - pv.
    # Equality rows T..2T-1: battery  e_t - e_{t-1} - eta_c c_t + d_t / eta_d = 0 (e0 on the right at t=0).
    rows = np.concatenate([t, t, t, t, hour, T + t, T + t[1:], T + t, T + t])
    cols = np.concatenate([og + t, ox + t, oc + t, od + t, op + np.arange(n_p), oe + t, oe + t[:-1], oc + t, od + t])
    vals = np.concatenate(
        [
            np.ones(T),
            -np.ones(T),
            -np.ones(T),
            np.ones(T),
            -np.ones(n_p),
            np.ones(T),
            -np.ones(T - 1),
            np.full(T, -eta_c),
            np.full(T, 1.0 / eta_d),
        ]
    )
    a_eq = sp.coo_matrix((vals, (rows, cols)), shape=(2 * T, n)).tocsr()
    b_eq = np.concatenate([load - pv, np.zeros(T)])
    b_eq[T] = site.soc_init * cap

    a_ub = b_ub = None
    if n_p:
        # One row per session: sum_t p_{s,t} <= energy_s (no over-charging).
        a_ub = sp.coo_matrix((np.ones(n_p), (sess, op + np.arange(n_p))), shape=(len(ses), n)).tocsr()
        b_ub = energy

    start = time.perf_counter()
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=np.column_stack([lb, ub]), method="highs")
    elapsed = time.perf_counter() - start
    if res.status != 0 or res.x is None:
        raise RuntimeError(f"HiGHS could not solve the optimum of {scenario.name!r}: {res.message}")

    z = res.x
    g = z[og:ox]
    # Charging and discharging in the same hour only wastes energy, so an optimum may contain it where
    # curtailing would do as well. Report the equivalent single net power that gives the same SOC path
    # (the env applies one power per hour); the extra energy this frees only adds to the surplus.
    e = z[oe:op]
    step = np.diff(e, prepend=site.soc_init * cap)
    net = np.where(step > 0, step / eta_c, step * eta_d)
    ev = np.bincount(hour, weights=z[op:], minlength=T)
    served = float(z[op:].sum())
    unmet = float(energy.sum()) - served
    co2_kg = float(co2 @ g)
    return OptimumResult(
        co2_kg=co2_kg,
        grid_import_kwh=float(g.sum()),
        ev_energy_served_kwh=served,
        ev_energy_unmet_kwh=unmet,
        objective_kg=penalised_kg(co2_kg, unmet, penalty),
        grid_import_kw=g.copy(),
        bess_power_kw=net,
        soc=z[oe:op] / cap,
        ev_power_kw=ev,
        solve_seconds=elapsed,
    )

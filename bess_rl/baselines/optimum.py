"""Perfect-foresight optimum of one scenario, as a linear program solved by HiGHS.

Why: the RL agents only see the past; this LP sees the whole year at once (PV, load, carbon
intensity and every EV session), so its CO2 is a lower bound the agents are judged against. It is
a relaxation of the environment, never more restrictive: charge and discharge may both be non-zero
in one hour (that only wastes energy and is never better than curtailing), and the EV power of an
hour may go to any plugged-in car, whereas the env gives it to the earliest-departing car first.
So the bound can be unreachable by any env policy (``bess_rl.baselines.mpc.lp_achievable`` replays
the plan through the env and reports what it reaches).

``solve_window`` is the same LP over any stretch of hours from a given battery energy and EV state
(the receding-horizon MPC solves it every few hours); ``solve_optimum`` solves the whole scenario.

Model, hours t = 0..T-1 of one hour each (kWh = kW):

    variables   g_t in [0, G_t] grid import, x_t >= 0 surplus (curtailed, earns nothing),
                c_t, d_t in [0, P] battery charge / discharge (AC side),
                e_t in [soc_min Cap, soc_max Cap] battery energy at the END of hour t,
                p_{s,t} in [0, max_power_s] for arrival_s <= t < departure_s only.
    balance     pv_t + g_t + d_t = load_t + sum_s p_{s,t} + c_t + x_t
    battery     e_t = e_{t-1} + eta_c c_t - d_t / eta_d,   e_{-1} = e0, no terminal constraint
    EVs         sum_t p_{s,t} <= energy_s                  (unmet_s = energy_s - sum_t p_{s,t} >= 0)
    minimise    sum_t co2_t g_t + penalty sum_s unmet_s

G_t is ``site.import_cap_kw`` (infinite without a cap), raised to load_t - pv_t where the load alone
exceeds it: the env serves the load regardless and counts that as a cap violation, so the LP must too.
In those hours the LP may also give the battery's discharge to EVs (or to charging), where the env gives
flexible demand only what the discharge brings the import below the cap: a third relaxation, worth 0.01 kg
of the bound on citylearn_district_cap's evaluation part (experiments/correctness_2026-12-04/).

The unmet energy is not a variable: the penalty term is the constant ``penalty * sum(energy)``
minus ``penalty`` times each p_{s,t}. Session-hours are expanded with numpy index arithmetic, and
the constraint matrices are assembled as scipy.sparse COO matrices without Python loops.

A window that ends before some cars leave adds, for each such car s, u_s >= 0 with
u_s >= required_s - sum_t p_{s,t} (required_s: what it must get inside the window to still finish
at full power afterwards) and penalises u_s instead; energy beyond it, and energy left in the
battery at the window's end, are worth ``terminal_kg_per_kwh`` each (an estimate of the grid CO2
they displace after the window; 0 for the whole scenario).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from bess_rl.site.params import SiteError, SiteParams, penalised_kg
from bess_rl.site.scenario import EvSessions, Scenario, session_hours


class LpError(SiteError, RuntimeError):
    """HiGHS found no plan. A ``SiteError``, so a run says it in one line: the site's sizes and the scenario's
    data are what the user can change; still a ``RuntimeError`` for callers that catch that."""


def _site(site: SiteParams) -> str:
    """The sizes an LP failure names: what the user set and can change."""
    cap = "none" if site.import_cap_kw is None else f"{site.import_cap_kw:g} kW"
    return (
        f"site pv_kwp={site.pv_kwp:g}, bess {site.bess_capacity_kwh:g} kWh / {site.bess_power_kw:g} kW, "
        f"import cap {cap}, unmet penalty {site.unmet_penalty_kg_per_kwh:g} kg/kWh"
    )


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


@dataclass(frozen=True)
class WindowPlan:
    """Optimal plan of one window; arrays are per hour, shape (T,)."""

    grid_import_kw: np.ndarray
    bess_power_kw: np.ndarray  # net battery power (>0 charging), c - d without simultaneous use
    soc: np.ndarray  # fraction of capacity at the END of each hour
    ev_power_kw: np.ndarray  # sum over sessions
    served_kwh: np.ndarray  # per session, shape (S,)
    solve_seconds: float


def solve_window(
    pv_kw: np.ndarray,
    load_kw: np.ndarray,
    co2_kg_per_kwh: np.ndarray,
    sessions: EvSessions,
    site: SiteParams,
    e0_kwh: float,
    required_kwh: np.ndarray | None = None,
    terminal_kg_per_kwh: float = 0.0,
) -> WindowPlan:
    """The LP of the module doc over hours 0..T-1 of a window, from battery energy ``e0_kwh``.

    ``sessions`` are in window hours (departure <= T); ``required_kwh`` (default: all of
    ``energy_kwh``) is what each must get inside the window, the rest of its energy being optional.
    """
    T = pv_kw.shape[0]
    pv = np.asarray(pv_kw, dtype=np.float64)
    load = np.asarray(load_kw, dtype=np.float64)
    co2 = np.asarray(co2_kg_per_kwh, dtype=np.float64)
    energy = np.asarray(sessions.energy_kwh, dtype=np.float64)
    required = energy if required_kwh is None else np.asarray(required_kwh, dtype=np.float64)
    cap, pmax = site.bess_capacity_kwh, site.bess_power_kw
    eta_c, eta_d = site.bess_eta_charge, site.bess_eta_discharge
    penalty = site.unmet_penalty_kg_per_kwh

    sess, hour = session_hours(sessions.arrival, sessions.departure)
    n_p = sess.shape[0]
    partial = np.flatnonzero(required < energy - 1e-9)
    n_u = partial.shape[0]
    # Column blocks: g | x | c | d | e | p | u
    og, ox, oc, od, oe, op, ou = 0, T, 2 * T, 3 * T, 4 * T, 5 * T, 5 * T + n_p
    n = ou + n_u
    t = np.arange(T)

    cost = np.zeros(n)
    cost[og:ox] = co2
    is_partial = np.zeros(len(sessions), dtype=bool)
    is_partial[partial] = True
    cost[op:ou] = np.where(is_partial[sess], -terminal_kg_per_kwh, -penalty)
    cost[ou:] = penalty
    cost[oe + T - 1] -= terminal_kg_per_kwh * eta_d

    lb = np.zeros(n)
    ub = np.full(n, np.inf)
    if site.import_cap_kw is not None:
        ub[og:ox] = np.maximum(site.import_cap_kw, load - pv)
    ub[oc:oe] = pmax
    lb[oe:op] = site.soc_min * cap
    ub[oe:op] = site.soc_max * cap
    ub[op:ou] = np.asarray(sessions.max_power_kw, dtype=np.float64)[sess]

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
    b_eq[T] = e0_kwh

    a_ub = b_ub = None
    if n_p:
        # One row per session: sum_t p_{s,t} <= energy_s (no over-charging); one per partial session:
        # -sum_t p_{s,t} - u_s <= -required_s.
        in_partial = np.flatnonzero(is_partial[sess])
        where = np.full(len(sessions), -1)
        where[partial] = np.arange(n_u)
        u_rows = len(sessions) + where[sess[in_partial]]
        rows = np.concatenate([sess, u_rows, len(sessions) + np.arange(n_u)])
        cols = np.concatenate([op + np.arange(n_p), op + in_partial, ou + np.arange(n_u)])
        vals = np.concatenate([np.ones(n_p), -np.ones(in_partial.shape[0]), -np.ones(n_u)])
        a_ub = sp.coo_matrix((vals, (rows, cols)), shape=(len(sessions) + n_u, n)).tocsr()
        b_ub = np.concatenate([energy, -required[partial]])

    start = time.perf_counter()
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=np.column_stack([lb, ub]), method="highs")
    elapsed = time.perf_counter() - start
    if res.status != 0 or res.x is None:
        message = " ".join(str(res.message).split())
        raise LpError(f"HiGHS could not solve the LP of {T} hours at {_site(site)}: {message}")

    z = res.x
    # Charging and discharging in the same hour only wastes energy, so an optimum may contain it where
    # curtailing would do as well. Report the equivalent single net power that gives the same SOC path
    # (the env applies one power per hour); the extra energy this frees only adds to the surplus.
    e = z[oe:op]
    step = np.diff(e, prepend=e0_kwh)
    net = np.where(step > 0, step / eta_c, step * eta_d)
    return WindowPlan(
        grid_import_kw=z[og:ox].copy(),
        bess_power_kw=net,
        soc=e / cap,
        ev_power_kw=np.bincount(hour, weights=z[op:ou], minlength=T),
        served_kwh=np.bincount(sess, weights=z[op:ou], minlength=len(sessions)),
        solve_seconds=elapsed,
    )


def solve_optimum(scenario: Scenario, site: SiteParams) -> OptimumResult:
    """Minimum CO2 (plus unmet-EV penalty) of the scenario with perfect foresight; see module doc."""
    _check_inputs(scenario)
    pv = site.pv_kwp * np.asarray(scenario.pv_kw_per_kwp, dtype=np.float64)
    e0 = site.soc_init * site.bess_capacity_kwh
    try:
        plan = solve_window(pv, scenario.load_kw, scenario.co2_kg_per_kwh, scenario.sessions, site, e0)
    except LpError as exc:
        raise LpError(f"{exc} (the LP optimum of scenario {scenario.name!r})") from None
    served = float(plan.served_kwh.sum())
    unmet = float(scenario.sessions.energy_kwh.sum()) - served
    co2_kg = float(np.asarray(scenario.co2_kg_per_kwh, dtype=np.float64) @ plan.grid_import_kw)
    return OptimumResult(
        co2_kg=co2_kg,
        grid_import_kwh=float(plan.grid_import_kw.sum()),
        ev_energy_served_kwh=served,
        ev_energy_unmet_kwh=unmet,
        objective_kg=penalised_kg(co2_kg, unmet, site.unmet_penalty_kg_per_kwh),
        grid_import_kw=plan.grid_import_kw,
        bess_power_kw=plan.bess_power_kw,
        soc=plan.soc,
        ev_power_kw=plan.ev_power_kw,
        solve_seconds=plan.solve_seconds,
    )

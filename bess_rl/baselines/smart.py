"""Smart charging within the env's EV action: least-laxity guarantee plus charging in clean hours.

Why: the env splits one EV power budget earliest-departure-first, so a controller can only choose how
much, not which car. ``edf_min_budget_kw`` is the least budget that still lets every plugged-in car
finish at full power afterwards (every other controller here repairs its EV plan with it), and
``SmartCharging`` defers the rest to the hours of each car's stay that look cleanest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bess_rl.baselines.forecast import persistence
from bess_rl.baselines.rules import RuleBased
from bess_rl.site.env import PvBessEvEnv

# A car whose remaining energy is below this counts as full (float noise of the env's split).
_EPS_KWH = 1e-9


def edf_min_budget_kw(remaining: np.ndarray, power: np.ndarray, departure: np.ndarray, hour: int) -> float:
    """Least EV power this hour for which the earliest-departure-first split leaves every car
    (arrays in that order, as ``PvBessEvEnv.present_evs`` gives them) able to finish.

    A car must get now what it could not get at full power in its remaining hours; the split
    serves the cars before it in full first, so the budget must cover them too.
    """
    cap = np.minimum(power, remaining)
    must = remaining - power * (departure - hour - 1)
    need = must > _EPS_KWH
    if not need.any():
        return 0.0
    before = np.cumsum(cap) - cap
    return float((before[need] + must[need]).max())


def ev_action(budget_kw: float, remaining: np.ndarray, power: np.ndarray) -> float:
    """The env's EV action (in [-1, 1]) that gives ``budget_kw`` to the present cars.

    The budget is raised by a part in 10^9 so float rounding in the env's split never leaves a car
    a hair short of what the budget was meant to give it.
    """
    total = float(np.minimum(power, remaining).sum())
    if total <= 0.0:
        return 1.0
    return min(max(2.0 * budget_kw * (1.0 + 1e-9) / total - 1.0, -1.0), 1.0)


@dataclass(frozen=True)
class SmartCharging(RuleBased):
    """The battery rule, plus EVs that charge only when it pays or when they must.

    Each car charges now if this hour is among the ``ceil(remaining / power)`` cleanest hours left
    in its stay, judged by a persistence forecast of the grid intensity (hours in which yesterday's
    PV exceeded the load count as clean); PV surplus always goes to the cars first; and the
    least-laxity budget (``edf_min_budget_kw``) always covers the cars that must charge now. So every
    car leaves full, as uncontrolled charging would have left it (sessions fit their stay, which
    the scenario checks). Deployable: it uses the cars' declared departures, this hour's PV, load and
    intensity, and the past, nothing of the future.
    """

    def ev_kw(self, env: PvBessEvEnv) -> tuple[float, float]:
        """(EV power this hour [kW], the env's EV action that gives it)."""
        remaining, power, departure = env.present_evs()
        if not (remaining > _EPS_KWH).any():
            return 0.0, 1.0
        t = env.hour
        cap = np.minimum(power, remaining)
        left = departure - t  # hours of stay left, this one included
        intensity = persistence(env.co2, t, int(left.max()))
        surplus = persistence(env.pv_kw, t, intensity.shape[0]) > persistence(env.load_kw, t, intensity.shape[0])
        clean = np.where(surplus, 0.0, intensity)
        clean[0] = env.co2[t]
        # Later hours of the stay that look cleaner than now, for stays of 1, 2, ... hours.
        cleaner = np.concatenate([[0], np.cumsum(clean[1:] < clean[0])])
        hours_needed = np.ceil(remaining / power - 1e-9)
        want = (remaining > _EPS_KWH) & (cleaner[left - 1] < hours_needed)
        budget = max(
            edf_min_budget_kw(remaining, power, departure, t),
            float(env.pv_kw[t] - env.load_kw[t]),
            float((np.cumsum(cap)[want]).max(initial=0.0)),
        )
        ev = min(budget, float(cap.sum()))
        return ev, ev_action(ev, remaining, power)

    def __call__(self, env: PvBessEvEnv, obs: np.ndarray) -> np.ndarray:
        ev, a_ev = self.ev_kw(env)
        return np.array([self.battery(env, ev), a_ev])

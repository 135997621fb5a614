"""Model-predictive control: the LP of ``bess_rl.baselines.optimum`` re-solved over a receding horizon.

Why: it is what an energy engineer would deploy instead of RL. Every ``every_hours`` it solves the next
``horizon_hours`` from the env's actual battery energy and plugged-in cars, with either perfect
forecasts (the scenario's own future: PV, load, intensity, arrivals) or persistence forecasts (each
hour as the same hour yesterday, tomorrow's arrivals as today's; ``bess_rl.baselines.forecast``), and
applies the plan's battery power and total EV power until the next solve (storing any PV surplus the
forecast missed rather than curtailing it). The env splits EV power earliest-departure-first, not as
the plan does, so the EV budget is raised where needed to the least-laxity budget
(``edf_min_budget_kw``): without an import cap no car leaves short of energy uncontrolled would give
it; under one the perfect-forecast MPC checks the exact room and the cars still to arrive, the
persistence MPC a discounted forecast of the room.

``PlanReplay`` applies one whole-scenario LP plan the same way: ``lp_achievable`` is the figure the
LP bound becomes when its plan runs through the env.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bess_rl.baselines.episode import EpisodeResult, run_episode
from bess_rl.baselines.forecast import persistence
from bess_rl.baselines.optimum import OptimumResult, WindowPlan, solve_window
from bess_rl.baselines.smart import battery_with_room, edf_min_budget_kw, ev_action, ev_room_kw, expected_arrivals
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.scenario import EvSessions

FORECASTS = ("perfect", "persistence")


@dataclass
class MpcSettings:
    """Receding horizon of the MPC references; also the Hydra schema of ``conf/references``."""

    horizon_hours: int = 24
    every_hours: int = 4

    def __post_init__(self) -> None:
        for name in ("horizon_hours", "every_hours"):
            if getattr(self, name) < 1:
                raise ValueError(f"mpc.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def solve_every_hours(self) -> int:
        """The hours between solves: ``every_hours``, but at most the horizon, since a plan ends there."""
        return min(self.every_hours, self.horizon_hours)


def _repaired_action(env: PvBessEvEnv, bess_kw: float, ev_kw: float, exact: bool) -> np.ndarray:
    """Env action for a planned battery and total EV power, the EV budget raised so every car can finish
    (under an import cap, with the room ``exact`` or persistence-forecast, the battery making way)."""
    remaining, power, departure = env.present_evs()
    until = int(departure.max(initial=env.hour + 1))
    room = ev_room_kw(env, until - env.hour - 1, exact)
    arrivals = expected_arrivals(env, until) if exact and room is not None else None
    must = edf_min_budget_kw(remaining, power, departure, env.hour, room, arrivals)
    budget = max(ev_kw, must)
    bess_kw = battery_with_room(env, bess_kw, must)
    return np.array([bess_kw / env.site.bess_power_kw, ev_action(budget, remaining, power)])


class Mpc:
    """Receding-horizon LP as an env policy (one instance per episode; see module doc)."""

    def __init__(self, env: PvBessEvEnv, forecast: str = "perfect", settings: MpcSettings | None = None) -> None:
        if forecast not in FORECASTS:
            raise ValueError(f"forecast must be one of {FORECASTS}, got {forecast!r}")
        self.forecast = forecast
        self.settings = settings or MpcSettings()
        ses = env.scenario.sessions
        order = np.argsort(ses.arrival, kind="stable")
        self._arrival = ses.arrival[order]
        self._departure = ses.departure[order]
        self._energy = ses.energy_kwh[order]
        self._power = ses.max_power_kw[order]
        # Persistence takes tomorrow's arrivals from the same hours a whole number of days before.
        self._lag = 24 * math.ceil(self.settings.horizon_hours / 24)
        self._plan: WindowPlan | None = None
        self._start = self._next = -1
        self.solves = 0

    def _arrivals(self, t: int, end: int) -> tuple[np.ndarray, ...]:
        """(arrival, departure, energy, power) in window hours of the cars expected to arrive in (t, end)."""
        shift = 0 if self.forecast == "perfect" else self._lag
        lo, hi = np.searchsorted(self._arrival, [t + 1 - shift, end - shift])
        sl = slice(int(lo), int(hi))
        return self._arrival[sl] + shift - t, self._departure[sl] + shift - t, self._energy[sl], self._power[sl]

    def _solve(self, env: PvBessEvEnv) -> WindowPlan:
        t, n = env.hour, env.scenario.hours
        end = min(t + self.settings.horizon_hours, n)
        T = end - t
        remaining, power, departure = env.present_evs()
        here = remaining > 1e-9
        arr, dep, energy, pw = self._arrivals(t, end)
        arrival = np.concatenate([np.zeros(int(here.sum()), np.int64), arr])
        departure = np.concatenate([departure[here] - t, dep])
        energy = np.concatenate([remaining[here], energy])
        power = np.concatenate([power[here], pw])
        # A car leaving after the window must get inside it what it could not get at full power later.
        required = np.maximum(energy - power * np.maximum(departure - T, 0), 0.0)
        sessions = EvSessions(arrival, np.minimum(departure, T), energy, power)
        if self.forecast == "perfect":
            pv, load, co2 = env.pv_kw[t:end], env.load_kw[t:end], env.co2[t:end]
        else:
            pv, load, co2 = (persistence(x, t, T) for x in (env.pv_kw, env.load_kw, env.co2))
        # Energy still useful after the window displaces grid energy later; at the scenario's end it is worth nothing.
        terminal = float(co2.mean()) if end < n else 0.0
        e0 = env.soc * env.site.bess_capacity_kwh
        self.solves += 1
        return solve_window(pv, load, co2, sessions, env.site, e0, required, terminal)

    def __call__(self, env: PvBessEvEnv, obs: np.ndarray) -> np.ndarray:
        t = env.hour
        if (
            self._plan is None
            or t != self._next
            or t - self._start >= min(self.settings.solve_every_hours, self._plan.ev_power_kw.shape[0])
        ):
            self._plan, self._start = self._solve(env), t
        self._next = t + 1
        j = t - self._start
        plan, exact = self._plan, self.forecast == "perfect"
        action = _repaired_action(env, float(plan.bess_power_kw[j]), float(plan.ev_power_kw[j]), exact)
        # Between solves the plan runs on forecasts: PV surplus it did not expect is stored, not curtailed.
        remaining, power, _ = env.present_evs()
        ev_kw = 0.5 * (action[1] + 1.0) * float(np.minimum(power, remaining).sum())
        surplus = float(env.pv_kw[t] - env.load_kw[t]) - ev_kw
        action[0] = max(action[0], surplus / env.site.bess_power_kw)
        return action


@dataclass(frozen=True)
class PlanReplay:
    """A whole-scenario LP plan as an env policy, its EV budget repaired (see module doc)."""

    plan: OptimumResult

    def __call__(self, env: PvBessEvEnv, obs: np.ndarray) -> np.ndarray:
        t = env.hour
        return _repaired_action(env, float(self.plan.bess_power_kw[t]), float(self.plan.ev_power_kw[t]), exact=True)


def run_mpc(env: PvBessEvEnv, forecast: str, settings: MpcSettings | None = None) -> EpisodeResult:
    """One evaluation episode under the MPC with this forecast."""
    return run_episode(env, Mpc(env, forecast, settings))


def lp_achievable(env: PvBessEvEnv, plan: OptimumResult) -> EpisodeResult:
    """The LP plan replayed through the env: what the bound becomes under the env's EV split."""
    return run_episode(env, PlanReplay(plan))

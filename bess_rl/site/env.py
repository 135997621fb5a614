"""Gymnasium environment of the PV + BESS + EV-charging site, one hourly step per call.

Why its shape: the agent sees only what a site controller could know at the start of an hour
(this hour's PV/load/intensity/price as a nowcast, short forecasts, battery state, EVs present) and
sets two knobs; the physics (battery limits, EV session limits, the import cap, the energy balance) is
enforced here so no policy can break it, and the reward is exactly minus what the LP optimum minimises.

Action, ``Box([-1, -1], [1, 1])``:
    0  battery setpoint: x ``bess_power_kw`` (> 0 charges, < 0 discharges), clipped to SOC limits
    1  EV charging level: (a + 1) / 2 of the power the EVs present could take, given to the
       sessions that leave first (earliest-departure-first); +1 is uncontrolled charging
With ``site.import_cap_kw`` set, battery charging and then EV charging are cut so that grid import
stays within the cap; the site load itself is always served, so where load minus PV alone exceeds the
cap the excess is reported as ``cap_violation_kw`` (never shed, never penalised).

Observation (float32), k = ``forecast_hours``; index: meaning [unit before scaling] / scale
    0, 1          sin, cos of hour of day
    2             PV this hour [kW] / peak PV
    3             site load this hour [kW] / peak load
    4             grid CO2 intensity this hour [kg/kWh] / max intensity
    5             grid price this hour [per kWh] / max price
    6..5+k        PV forecast for the next k hours [kW] / peak PV
    6+k..5+2k     load forecast for the next k hours [kW] / peak load
    6+2k..5+3k    intensity forecast for the next k hours [kg/kWh] / max intensity
    6+3k..5+4k    price forecast for the next k hours [per kWh] / max price
    6+4k          battery state of charge [fraction of capacity]
    7+4k          EV energy still needed by vehicles present [kWh] / ev_scale_kw
    8+4k          EV power the present vehicles can take [kW] / ev_scale_kw
    9+4k          EV energy needed by vehicles leaving after this hour [kWh] / ev_scale_kw
(peaks and ev_scale_kw, the largest socket power ever plugged in at once, are those of the data set the
scenario was cut from, ``Scenario.peaks``: the training and the held-out part of a year scale alike.)
Forecasts (``forecast_error``): ``exact`` (default: the future values, an oracle over k hours, as the
perfect-forecast references see them), ``persistence`` (the same hour on the last day already seen:
yesterday for leads up to 24 h) or ``noise`` (exact x (1 + forecast_noise x sqrt(lead) x N(0, 1)),
drawn once per env from ``forecast_seed``, clipped to the feature's range).

Reward: -(CO2 of grid import [kg] + unmet_penalty_kg_per_kwh x EV energy missing at departure
[kWh]) / reward_scale_kg, with reward_scale_kg = mean load x mean intensity (one typical hour).

Versions (``ENV_ID``; a model saved under one layout cannot be used with another):
    v0  4 + 2k exogenous features (hour, PV, load, intensity now; PV and load forecasts, exact) + 4 state
    v1  price now; intensity and price forecasts; ``forecast_error``; ``site.import_cap_kw``
        (2026-12-04, same layout and id: features over the peaks of the data set a scenario was cut from,
        ``Scenario.peaks``, no longer each part's own, so a year's training and held-out parts scale alike)
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import gymnasium as gym
import numpy as np

from bess_rl.site.params import SiteParams, penalised_kg
from bess_rl.site.scenario import Scenario, default_scenario

ENV_ID = "bess_rl/PvBessEv-v1"
FORECAST_ERRORS = ("exact", "persistence", "noise")
# The bit generators a saved env state may name (a state file picks one by name, never by import).
BIT_GENERATORS = {g.__name__: g for g in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.SFC64)}


def forecasts(series: np.ndarray, k: int, error: str, noise: float, rng: np.random.Generator) -> np.ndarray:
    """(hours, k) forecasts of ``series`` in [0, 1] for leads 1..k; the year wraps around (see module doc)."""
    n = series.shape[0]
    lead = np.arange(1, k + 1)
    if error == "persistence":
        lead = lead - 24 * np.ceil(lead / 24).astype(np.int64)  # the same hour on the last day seen
    ahead = series[(np.arange(n)[:, None] + lead[None, :]) % n]
    if error == "noise":
        ahead = np.clip(ahead * (1.0 + noise * np.sqrt(np.arange(1, k + 1)) * rng.standard_normal((n, k))), 0.0, 1.0)
    return ahead


class PvBessEvEnv(gym.Env):
    """``episode_hours`` of the scenario as an episode (default: the whole year from hour 0).

    With ``random_start`` an episode starts at a random midnight and wraps around the year end, so
    parallel training envs see different seasons while every episode stays a full year long.
    See the module docstring for spaces and reward.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        scenario: Scenario | None = None,
        site: SiteParams | None = None,
        episode_hours: int | None = None,
        random_start: bool = False,
        forecast_hours: int = 3,
        forecast_error: str = "exact",
        forecast_noise: float = 0.1,
        forecast_seed: int = 0,
    ) -> None:
        self.scenario = scenario if scenario is not None else default_scenario()
        self.site = site if site is not None else SiteParams()
        n = self.scenario.hours
        self.episode_hours = n if episode_hours is None else int(episode_hours)
        if not 0 < self.episode_hours <= n:
            raise ValueError(f"episode_hours must be in [1, {n}], got {self.episode_hours}")
        if forecast_hours < 0:
            raise ValueError(f"forecast_hours must be >= 0, got {forecast_hours}")
        if forecast_error not in FORECAST_ERRORS:
            raise ValueError(f"forecast_error must be one of {', '.join(FORECAST_ERRORS)}, got {forecast_error!r}")
        if not forecast_noise >= 0:
            raise ValueError(f"forecast_noise must be >= 0, got {forecast_noise}")
        self.random_start = random_start
        self.forecast_hours = forecast_hours
        self.forecast_error = forecast_error

        sc, st = self.scenario, self.site
        self.pv_kw = st.pv_kwp * sc.pv_kw_per_kwp
        self.load_kw = sc.load_kw
        self.co2 = sc.co2_kg_per_kwh
        ses = sc.sessions
        self._energy = ses.energy_kwh
        self._power = ses.max_power_kw
        ns = len(ses)
        self._active, self._departing = sc.sessions_by_hour  # read only: shared by every env of the scenario
        peaks = sc.peaks  # of the whole data set: every part of it scaled alike (``Scenario``)
        self.ev_scale_kw = max(peaks.plugged_kw, 1.0)

        self.price = sc.price_per_kwh
        hod = np.arange(n) % 24
        # Each exogenous series over its peak, so every feature lies in [0, 1].
        series = (self.pv_kw, self.load_kw, self.co2, self.price)
        tops = (st.pv_kwp * peaks.pv_kw_per_kwp, peaks.load_kw, peaks.co2_kg_per_kwh, peaks.price_per_kwh)
        scaled = [x / max(top, 1e-6) for x, top in zip(series, tops, strict=True)]
        rng = np.random.default_rng(forecast_seed)
        k = forecast_hours
        self._exog = np.column_stack(
            [np.sin(2 * np.pi * hod / 24), np.cos(2 * np.pi * hod / 24), *scaled]
            + [forecasts(x, k, forecast_error, forecast_noise, rng) for x in scaled]
        ).astype(np.float32)
        # Import room for battery + EV power each hour: cap + PV - load (no limit without a cap).
        cap = math.inf if st.import_cap_kw is None else st.import_cap_kw
        self._cap = cap
        self._room = (cap + self.pv_kw - self.load_kw).tolist()
        # Per-hour rows as Python floats: step reads them every call, and list indexing beats numpy's.
        self._hourly = list(zip(*(x.tolist() for x in (self.pv_kw, self.load_kw, self.co2, self.price)), strict=True))
        self.reward_scale_kg = max(float(self.load_kw.mean() * self.co2.mean()), 1e-6)

        n_obs = self._exog.shape[1] + 4
        low = np.zeros(n_obs, np.float32)
        low[:2] = -1.0
        # EV features are sums over sessions, at most all the year's energy over ev_scale_kw.
        high = np.full(n_obs, 1.0, np.float32)
        high[-3:] = float(max(4.0, ses.energy_kwh.sum() / self.ev_scale_kw + 1.0)) if ns else 4.0
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

        self._e_min = st.soc_min * st.bess_capacity_kwh
        self._e_max = st.soc_max * st.bess_capacity_kwh
        self._remaining = self._energy.copy()
        self._t = self._start = self._k = 0
        self._e = st.soc_init * st.bess_capacity_kwh

    # --- helpers the reference controllers use too -------------------------------------------
    @property
    def hour(self) -> int:
        """Scenario hour index of the next step."""
        return self._t

    @property
    def soc(self) -> float:
        return self._e / self.site.bess_capacity_kwh

    def ev_demand_kw(self) -> float:
        """Power the EVs present would draw uncontrolled this hour (action[1] = +1)."""
        idx = self._active[self._t]
        return float(np.minimum(self._power[idx], self._remaining[idx]).sum())

    def present_evs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(energy still needed [kWh], socket power [kW], departure hour) of the vehicles plugged in
        this hour, in the order the EV action serves them (earliest departure first).

        What a charge point knows of its cars; the observation carries their sums.
        """
        idx = self._active[self._t]
        return self._remaining[idx].copy(), self._power[idx], self.scenario.sessions.departure[idx]

    def _obs(self) -> np.ndarray:
        """Exogenous features of this hour plus battery and EV state, all within the declared bounds.

        Written for speed (it runs every step): no numpy calls for hours without EVs, no clipping,
        since every feature is bounded by construction (see the space's ``high`` above).
        """
        t = self._t
        obs = np.empty(self.observation_space.shape, np.float32)
        obs[:-4] = self._exog[t]
        obs[-4] = self._e / self.site.bess_capacity_kwh
        idx, gone = self._active[t], self._departing[t]
        if idx.size:
            rem = self._remaining[idx]
            obs[-3] = rem.sum() / self.ev_scale_kw
            obs[-2] = np.minimum(self._power[idx], rem).sum() / self.ev_scale_kw
        else:
            obs[-3] = obs[-2] = 0.0
        obs[-1] = self._remaining[gone].sum() / self.ev_scale_kw if gone.size else 0.0
        return obs

    # --- checkpoint state: plain numbers and arrays, so a resume unpickles nothing --------------
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What changes while stepping: (JSON-able fields, arrays); everything else comes from the scenario."""
        fields = {"t": self._t, "start": self._start, "k": self._k, "e": self._e}
        fields["np_random"] = self.np_random.bit_generator.state
        return fields, {"remaining": self._remaining.copy()}

    def restore(self, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """The inverse of ``state`` on an env built from the same scenario and site."""
        remaining = np.asarray(arrays["remaining"], dtype=np.float64)
        if remaining.shape != self._energy.shape:
            raise ValueError(f"saved env state has {remaining.shape[0]} sessions, the scenario {self._energy.shape[0]}")
        self._t, self._start, self._k, self._e = (
            int(fields["t"]),
            int(fields["start"]),
            int(fields["k"]),
            float(fields["e"]),
        )
        rng_state = fields["np_random"]
        generator = np.random.Generator(BIT_GENERATORS[rng_state["bit_generator"]]())
        generator.bit_generator.state = rng_state
        self.np_random = generator
        self._remaining = remaining.copy()

    def fingerprint(self) -> str:
        """sha256 of everything an episode of this env depends on (scenario data, site, episode length,
        the observation features with their forecasts): equal fingerprints, equal deterministic episodes."""
        digest = hashlib.sha256()
        sc = self.scenario
        arrays = (sc.pv_kw_per_kwp, sc.load_kw, sc.co2_kg_per_kwh, sc.price_per_kwh, self._exog)
        for array in (*arrays, *dataclasses.astuple(sc.sessions)):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(repr((self.site, self.episode_hours, self.random_start, sc.peaks)).encode())
        return digest.hexdigest()

    # --- gymnasium API --------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start at hour 0, or with ``random_start`` at a random midnight; episodes wrap at year end."""
        super().reset(seed=seed)
        n = self.scenario.hours
        start = int(self.np_random.integers(0, n // 24)) * 24 if self.random_start and n >= 48 else 0
        if options and "start" in options:
            start = int(options["start"]) % n
        self._start, self._k, self._t = start, 0, start
        self._e = self.site.soc_init * self.site.bess_capacity_kwh
        # Sessions already under way at the start are not part of this episode.
        ses = self.scenario.sessions
        self._remaining = np.where((ses.arrival < start) & (ses.departure > start), 0.0, self._energy)
        return self._obs(), {}

    def step(self, action: np.ndarray):
        st = self.site
        t = self._t
        flat = np.asarray(action, dtype=np.float64).reshape(-1).tolist()
        if len(flat) != 2 or not (math.isfinite(flat[0]) and math.isfinite(flat[1])):
            raise ValueError(f"action must be 2 finite numbers, got {action!r}")
        a_bess = min(max(flat[0], -1.0), 1.0)
        a_ev = min(max(flat[1], -1.0), 1.0)

        # EVs: earliest-departure-first share of the power the present vehicles could take.
        idx = self._active[t]
        budget = total = 0.0
        if idx.size:
            cap = np.minimum(self._power[idx], self._remaining[idx])
            caps = cap.tolist()  # a few sessions: Python arithmetic beats numpy calls
            total = sum(caps)
            budget = 0.5 * (a_ev + 1.0) * total

        # Battery, within power and SOC limits.
        p = a_bess * st.bess_power_kw
        if p >= 0:
            p = min(p, (self._e_max - self._e) / st.bess_eta_charge)
        else:
            p = -min(-p, (self._e - self._e_min) * st.bess_eta_discharge)

        # Import cap: cut battery charging first, then EV charging (the load itself is always served).
        excess = budget + p - self._room[t]
        if excess > 0:
            if p > 0:
                cut = min(p, excess)
                p -= cut
                excess -= cut
            budget = max(budget - excess, 0.0)

        ev_kw = 0.0
        if budget > 0.0:
            if budget >= total:
                alloc, ev_kw = cap, total
            else:
                takes, left = [], budget
                for c in caps:
                    take = c if c < left else left
                    takes.append(take)
                    left -= take
                alloc, ev_kw = np.array(takes), budget - left
            self._remaining[idx] -= alloc
        gone = self._departing[t]
        unmet = 0.0
        if gone.size:
            unmet = float(self._remaining[gone].sum())
            self._remaining[gone] = 0.0
        if p >= 0:
            self._e = min(self._e + p * st.bess_eta_charge, self._e_max)
        else:
            self._e = max(self._e + p / st.bess_eta_discharge, self._e_min)

        pv, load, intensity, price = self._hourly[t]
        net = load + ev_kw + p - pv
        grid = max(net, 0.0)
        co2 = grid * intensity
        reward = -penalised_kg(co2, unmet, st.unmet_penalty_kg_per_kwh) / self.reward_scale_kg

        self._k += 1
        self._t = (t + 1) % self.scenario.hours
        truncated = self._k >= self.episode_hours
        info = {
            "hour": t,
            "pv_kw": pv,
            "load_kw": load,
            "ev_kw": ev_kw,
            "bess_kw": p,
            "soc": self.soc,
            "grid_import_kw": grid,
            "surplus_kw": max(-net, 0.0),
            "co2_kg": co2,
            "ev_unmet_kwh": unmet,
            "cost": grid * price,
            "cap_violation_kw": max(grid - self._cap, 0.0),
        }
        return self._obs(), float(reward), False, truncated, info

"""Rule-based controllers: what a site engineer deploys without learning or optimisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bess_rl.site.env import PvBessEvEnv


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

    def battery(self, env: PvBessEvEnv, ev_kw: float) -> float:
        """Battery action for this hour, given the EV power (the surplus or deficit it leaves)."""
        t = env.hour
        net = env.load_kw[t] + ev_kw - env.pv_kw[t]
        p_max = env.site.bess_power_kw
        if net < 0:
            return min(-net / p_max, 1.0)
        if self._in_window(t % 24):
            return -min(net / p_max, 1.0)
        return 0.0

    def __call__(self, env: PvBessEvEnv, obs: np.ndarray) -> np.ndarray:
        return np.array([self.battery(env, env.ev_demand_kw()), 1.0], dtype=np.float32)

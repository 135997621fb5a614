"""The LP bound against every controller on random extreme sites:
``PYTHONPATH=. python experiments/correctness_2026-12-04/bound_probe.py 300`` prints the worst relative excess."""

from __future__ import annotations

import sys

import numpy as np

from bess_rl.baselines.episode import run_episode
from bess_rl.baselines.mpc import MpcSettings, lp_achievable, run_mpc
from bess_rl.baselines.optimum import solve_optimum
from bess_rl.baselines.rules import RuleBased, uncontrolled
from bess_rl.baselines.smart import SmartCharging
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import SiteParams, penalised_kg
from tests.test_correctness import random_scenario


def extreme_site(rng: np.random.Generator) -> SiteParams:
    soc_min = float(rng.choice([0.0, rng.uniform(0, 0.5)]))
    soc_max = float(rng.choice([1.0, rng.uniform(soc_min + 0.01, 1.0)]))
    return SiteParams(
        pv_kwp=float(rng.choice([0.0, rng.uniform(0, 200)])),
        bess_capacity_kwh=float(rng.uniform(0.5, 300)),
        bess_power_kw=float(rng.uniform(0.5, 300)),
        bess_eta_charge=float(rng.choice([1.0, rng.uniform(0.1, 1)])),
        bess_eta_discharge=float(rng.choice([1.0, rng.uniform(0.1, 1)])),
        soc_min=soc_min,
        soc_max=soc_max,
        soc_init=float(rng.choice([soc_min, soc_max, rng.uniform(soc_min, soc_max)])),
        unmet_penalty_kg_per_kwh=float(rng.choice([0.0, 0.1, 2.0, 50.0])),
        import_cap_kw=None if rng.random() < 0.4 else float(rng.uniform(0.1, 60)),
    )


def random_policy(seed: int):
    rng = np.random.default_rng(seed)
    return lambda env, obs: rng.uniform(-1, 1, 2)


def main(n: int) -> None:
    worst = -np.inf
    for seed in range(n):
        rng = np.random.default_rng(seed)
        scenario, site = random_scenario(rng, int(rng.integers(6, 60))), extreme_site(rng)
        env = PvBessEvEnv(scenario, site, forecast_hours=1)
        bound = solve_optimum(scenario, site)
        random_actions = random_policy(seed)
        results = [run_episode(env, policy) for policy in (uncontrolled, RuleBased(), SmartCharging(), random_actions)]
        results += [run_mpc(env, f, MpcSettings(8, 2)) for f in ("perfect", "persistence")]
        results.append(lp_achievable(env, bound))
        for r in results:
            kg = penalised_kg(r.co2_kg, r.ev_unmet_kwh, site.unmet_penalty_kg_per_kwh)
            worst = max(worst, (bound.objective_kg - kg) / max(1.0, abs(kg)))
    print(f"{n} random scenarios: worst (LP bound - controller) / controller = {worst:.3g}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)

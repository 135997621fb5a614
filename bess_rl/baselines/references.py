"""Reference controllers every agent is judged against, computed on the evaluation env.

Uncontrolled charging is the baseline of the CO2 reduction %, the rule-based controller is what a
site engineer would deploy without RL, and the LP optimum (``bess_rl.baselines.optimum``) is the floor.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from bess_rl.baselines.episode import EpisodeResult, run_episode
from bess_rl.baselines.optimum import solve_optimum
from bess_rl.baselines.rules import RuleBased, uncontrolled
from bess_rl.site.env import PvBessEvEnv


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
        change = f"{100 * (co2 - base) / base:+.2f}%" if base > 0 else "n/a"  # a grid with no CO2 at all
        table.add_row(name, f"{co2:,.0f}", change, f"{unmet:,.1f}")
    return table

"""Smart charging, MPC, the achievable LP figure, the KPIs and the references command."""

from __future__ import annotations

import numpy as np
import pytest

from bess_rl.baselines.episode import run_episode
from bess_rl.baselines.mpc import MpcSettings, lp_achievable, run_mpc
from bess_rl.baselines.optimum import solve_optimum
from bess_rl.baselines.references import compute_references, degenerate
from bess_rl.baselines.rules import RuleBased, uncontrolled
from bess_rl.baselines.smart import SmartCharging, edf_min_budget_kw
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import SiteParams, penalised_kg
from bess_rl.site.scenario import EvSessions, Scenario
from bess_rl.tools.references import main as references_main
from tests.helpers import SMALL_SITE, make_overnight_scenario, make_scenario


def _penalised(result, site: SiteParams) -> float:
    return penalised_kg(result.co2_kg, result.ev_unmet_kwh, site.unmet_penalty_kg_per_kwh)


def test_edf_budget_covers_the_earlier_cars_of_a_car_that_must_charge():
    # In serving order: A can wait (2 kWh, 2 kW, 2 h left), B cannot (4 kWh at 2 kW in 2 h): B needs
    # 2 kW now, and the split serves A's 2 kW first.
    budget = edf_min_budget_kw(np.array([2.0, 4.0]), np.array([2.0, 2.0]), np.array([12, 12]), hour=10)
    assert budget == pytest.approx(4.0)
    assert edf_min_budget_kw(np.array([1.0]), np.array([2.0]), np.array([12]), hour=10) == 0.0


def test_edf_budget_under_an_import_cap_charges_now_what_the_later_room_cannot_carry():
    # 10 kWh at 10 kW over this hour and two more, but only 2 kW of room in each later hour: 6 kW now.
    one = np.array([10.0]), np.array([10.0]), np.array([13])
    assert edf_min_budget_kw(*one, hour=10) == 0.0
    assert edf_min_budget_kw(*one, hour=10, room_kw=np.array([2.0, 2.0])) == pytest.approx(6.0, abs=0.02)
    # Not even all of its power now would do: all of it.
    assert edf_min_budget_kw(*one, hour=10, room_kw=np.array([0.0, 0.0])) == 10.0


@pytest.mark.parametrize("make", [make_overnight_scenario, make_scenario])
def test_smart_rule_serves_every_car_uncontrolled_would(make):
    env = PvBessEvEnv(make(days=4, seed=1), SMALL_SITE)
    unc, smart = run_episode(env, uncontrolled), run_episode(env, SmartCharging())
    assert smart.ev_unmet_kwh <= unc.ev_unmet_kwh + 1e-6
    assert smart.ev_served_kwh == pytest.approx(unc.ev_served_kwh)


def test_smart_rule_beats_the_battery_rule_with_overnight_evs_and_varying_intensity():
    env = PvBessEvEnv(make_overnight_scenario(days=4), SMALL_SITE)
    rule, smart = run_episode(env, RuleBased()), run_episode(env, SmartCharging())
    assert _penalised(smart, SMALL_SITE) < _penalised(rule, SMALL_SITE) - 50.0
    assert solve_optimum(env.scenario, SMALL_SITE).objective_kg <= _penalised(smart, SMALL_SITE)


def test_mpc_with_perfect_forecasts_re_solved_each_hour_approaches_the_lp():
    env = PvBessEvEnv(make_overnight_scenario(days=3), SMALL_SITE)
    lp = solve_optimum(env.scenario, SMALL_SITE).objective_kg
    perfect = run_mpc(env, "perfect", MpcSettings(horizon_hours=24, every_hours=1))
    persistence = run_mpc(env, "persistence", MpcSettings(horizon_hours=24, every_hours=6))
    assert perfect.ev_unmet_kwh == pytest.approx(0.0, abs=1e-6)
    assert lp * (1 - 1e-7) <= _penalised(perfect, SMALL_SITE) <= lp * 1.001
    assert _penalised(persistence, SMALL_SITE) >= lp * (1 - 1e-7)
    assert persistence.ev_unmet_kwh == pytest.approx(0.0, abs=1e-6)


def test_lp_achievable_is_feasible_and_never_below_the_bound():
    for scenario in (make_overnight_scenario(days=3), make_scenario(days=3, seed=2)):
        env = PvBessEvEnv(scenario, SMALL_SITE)
        opt = solve_optimum(scenario, SMALL_SITE)
        achieved = lp_achievable(env, opt)
        assert achieved.ev_unmet_kwh == pytest.approx(0.0, abs=1e-6)
        assert _penalised(achieved, SMALL_SITE) >= opt.objective_kg * (1 - 1e-7)


def test_lp_bound_is_unreachable_when_the_split_serves_the_wrong_car():
    # A (1 kWh, leaves after hour 1) and B (2 kWh, leaves after hour 2), 1 kW sockets, intensity
    # 0.5 / 0.1 / 1.0. The LP charges B at hour 0 and both at hour 1 (0.7 kg); the env's split gives
    # hour 0's 1 kW to A, so B must finish in the dirty hour 2 (1.6 kg). A useless battery (1 % round trip).
    sessions = EvSessions(np.array([0, 0]), np.array([2, 3]), np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    scenario = Scenario("edf", np.zeros(3), np.zeros(3), np.array([0.5, 0.1, 1.0]), sessions)
    site = SiteParams(pv_kwp=0.0, bess_capacity_kwh=1.0, bess_power_kw=1.0, bess_eta_charge=0.1,
                      bess_eta_discharge=0.1, soc_min=0.0, soc_init=0.0)  # fmt: skip
    opt = solve_optimum(scenario, site)
    achieved = lp_achievable(PvBessEvEnv(scenario, site), opt)
    assert opt.co2_kg == pytest.approx(0.7)
    assert achieved.co2_kg == pytest.approx(1.6)
    assert achieved.ev_unmet_kwh == pytest.approx(0.0, abs=1e-9)


def _kpi_env(price: np.ndarray | None) -> PvBessEvEnv:
    # PV 0 / 100 / 0 kW against a load of 50 / 20 / 50 kW; a lossless 100 kWh battery from empty.
    no_evs = EvSessions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    pv, load, co2 = np.array([0.0, 100.0, 0.0]), np.array([50.0, 20.0, 50.0]), np.full(3, 0.5)
    scenario = Scenario("kpi", pv, load, co2, no_evs, price)
    site = SiteParams(pv_kwp=1.0, bess_capacity_kwh=100.0, bess_power_kw=50.0, bess_eta_charge=1.0,
                      bess_eta_discharge=1.0, soc_min=0.0, soc_init=0.0)  # fmt: skip
    return PvBessEvEnv(scenario, site, forecast_hours=0)


@pytest.mark.parametrize(("price", "cost"), [(None, 50 * 0.2), (np.array([0.3, 9.0, 9.0]), 50 * 0.3)])
def test_kpis_of_a_hand_checked_three_hours(price, cost):
    # Idle, then charge 50 kW (30 kW of PV left over is curtailed), then discharge 50 kW: only hour 0 imports.
    actions = iter([[0.0, 1.0], [1.0, 1.0], [-1.0, 1.0]])
    r = run_episode(_kpi_env(price), lambda env, obs: np.array(next(actions)))
    assert r.cost == pytest.approx(cost)
    assert r.peak_import_kw == pytest.approx(50.0)
    assert r.curtailed_pv_kwh == pytest.approx(30.0)
    assert r.pv_self_consumption_pct == pytest.approx(70.0)
    assert r.battery_throughput_kwh == pytest.approx(100.0)
    assert r.battery_cycles == pytest.approx(0.5)
    assert r.co2_kg == pytest.approx(25.0)


def test_references_hold_every_controller_and_flag_degenerate_ones():
    env = PvBessEvEnv(make_overnight_scenario(days=3), SMALL_SITE)
    table = compute_references(env, MpcSettings(every_hours=6)).table()
    names = ["uncontrolled", "rule_based", "smart_rule", "mpc_perfect", "mpc_persistence", "lp_optimum"]
    assert list(table) == [*names, "lp_achievable"]
    lp = table["lp_optimum"]["penalised_kg"]
    for name, row in table.items():
        assert row["penalised_kg"] == pytest.approx(penalised_kg(row["co2_kg"], row["ev_unmet_kwh"], 2.0))
        assert row["penalised_kg"] >= lp * (1 - 1e-7), name
        assert row["ev_unmet_kwh"] == pytest.approx(0.0, abs=1e-6), name
    base, hours = table["uncontrolled"], env.episode_hours
    assert degenerate(base, base, hours) == ["same as uncontrolled charging"]
    assert degenerate(table["smart_rule"], base, hours) == []
    half = {**base, "co2_kg": 0.5 * base["co2_kg"], "ev_served_kwh": 50.0, "ev_unmet_kwh": 50.0}
    unmet = "EV energy left unmet: 50 kWh (50.0% of the EV demand)"
    assert degenerate(half, base, hours) == ["battery never used", unmet]
    assert all(row["ev_served_kwh"] > 0 for row in table.values())  # every row says what it served


def test_references_command_takes_the_overrides_and_help(capsys):
    assert references_main(["--help"]) == 0
    assert "usage: python -m bess_rl.references" in capsys.readouterr().out
    overrides = ["scenario.window_hours=48", "site.bess_capacity_kwh=500", "mpc.every_hours=8"]
    assert references_main(overrides) == 0
    out = capsys.readouterr().out
    for name in ("smart_rule", "mpc_persistence", "lp_achievable", "over the 48 h", "every 8 h"):
        assert name in out
    assert references_main(["mpc.every_hours=0"]) == 2
    assert "error: mpc.every_hours must be > 0, got 0" in capsys.readouterr().err  # as training says it
    assert references_main(["scenario=nope"]) == 2
    assert capsys.readouterr().err == "error: In 'train': Could not find 'scenario/nope'\n"

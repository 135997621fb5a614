"""Perfect-foresight LP: physics of the returned plan, hand-computed optima, EV service, monotonicity."""

from __future__ import annotations

import numpy as np
import pytest

from bess_rl.baselines.optimum import OptimumResult, solve_optimum
from bess_rl.site.params import SiteParams
from bess_rl.site.scenario import EvSessions, Scenario, session_hours

TOL = 1e-6


def _sessions(arrival=(), departure=(), energy=(), power=()) -> EvSessions:
    return EvSessions(
        np.asarray(arrival, dtype=np.int64),
        np.asarray(departure, dtype=np.int64),
        np.asarray(energy, dtype=np.float64),
        np.asarray(power, dtype=np.float64),
    )


def _scenario(pv, load, co2, sessions: EvSessions | None = None) -> Scenario:
    pv = np.asarray(pv, dtype=np.float64)
    T = pv.shape[0]
    return Scenario(
        "synthetic",
        pv,
        np.broadcast_to(np.asarray(load, dtype=np.float64), (T,)).copy(),
        np.broadcast_to(np.asarray(co2, dtype=np.float64), (T,)).copy(),
        sessions if sessions is not None else _sessions(),
    )


def _random_scenario(seed: int, hours: int = 72, n_sessions: int = 60) -> Scenario:
    """Daily PV bell, noisy load and intensity, short EV sessions (all servable within their stay)."""
    rng = np.random.default_rng(seed)
    h = np.arange(hours) % 24
    pv = np.clip(np.sin((h - 6) / 12 * np.pi), 0, None) * rng.uniform(0.6, 1.0, hours)
    load = 900 + 300 * rng.random(hours)
    co2 = 0.45 + 0.1 * rng.random(hours)
    arr = rng.integers(0, hours - 1, n_sessions)
    dwell = rng.integers(1, 5, n_sessions)
    dep = np.minimum(arr + dwell, hours)
    power = rng.choice([7.4, 22.0, 50.0], n_sessions)
    energy = power * (dep - arr) * rng.uniform(0.2, 1.0, n_sessions)
    return _scenario(pv, load, co2, _sessions(arr, dep, energy, power))


def test_session_hours_expands_each_stay() -> None:
    sess, hour = session_hours(np.array([3, 0, 5]), np.array([5, 1, 8]))
    assert sess.tolist() == [0, 0, 1, 2, 2, 2]
    assert hour.tolist() == [3, 4, 0, 5, 6, 7]


@pytest.mark.parametrize("seed", [0, 1])
def test_plan_obeys_energy_balance_and_battery_physics(seed: int) -> None:
    scen = _random_scenario(seed)
    site = SiteParams()
    res = solve_optimum(scen, site)
    T = scen.hours
    for arr in (res.grid_import_kw, res.bess_power_kw, res.soc, res.ev_power_kw):
        assert arr.shape == (T,)

    # Energy balance: whatever is not imported must be covered by PV, the rest is surplus (>= 0).
    pv = site.pv_kwp * scen.pv_kw_per_kwp
    surplus = pv + res.grid_import_kw - scen.load_kw - res.ev_power_kw - res.bess_power_kw
    assert np.all(surplus >= -TOL)
    assert np.all(res.grid_import_kw >= -TOL)
    # Import only when there is no surplus to curtail (an optimal plan never imports and curtails at once).
    assert np.all(np.minimum(surplus, res.grid_import_kw) <= 1e-5)

    # SOC within limits, battery power within the converter rating.
    assert np.all(res.soc >= site.soc_min - TOL) and np.all(res.soc <= site.soc_max + TOL)
    assert np.all(np.abs(res.bess_power_kw) <= site.bess_power_kw + TOL)

    # Efficiency recursion with the single net power the plan reports (as the env applies it).
    cap = site.bess_capacity_kwh
    energy = np.concatenate([[site.soc_init * cap], res.soc * cap])
    b = res.bess_power_kw
    delta = np.where(b > 0, site.bess_eta_charge * b, b / site.bess_eta_discharge)
    np.testing.assert_allclose(np.diff(energy), delta, atol=1e-5)

    # Totals agree with the per-hour arrays.
    assert res.co2_kg == pytest.approx(float(scen.co2_kg_per_kwh @ res.grid_import_kw))
    assert res.grid_import_kwh == pytest.approx(float(res.grid_import_kw.sum()))
    assert res.ev_energy_served_kwh == pytest.approx(float(res.ev_power_kw.sum()))
    assert res.ev_energy_served_kwh + res.ev_energy_unmet_kwh == pytest.approx(scen.sessions.energy_kwh.sum())
    assert res.objective_kg == pytest.approx(res.co2_kg + site.unmet_penalty_kg_per_kwh * res.ev_energy_unmet_kwh)
    assert res.solve_seconds >= 0


def test_no_pv_constant_load_imports_everything() -> None:
    # Battery starts at its minimum and the intensity is flat: cycling it only loses energy.
    T, load, co2 = 48, 500.0, 0.45
    scen = _scenario(np.zeros(T), load, co2)
    res = solve_optimum(scen, SiteParams())
    assert res.co2_kg == pytest.approx(co2 * load * T, rel=1e-9)
    assert res.grid_import_kwh == pytest.approx(load * T, rel=1e-9)
    assert res.ev_energy_served_kwh == 0 and res.ev_energy_unmet_kwh == 0


@pytest.mark.parametrize(
    ("power_kw", "stored_from_pv"),
    [
        (1000.0, 200.0),  # the whole 200 kW surplus at noon fits the converter
        (150.0, 150.0),  # converter-limited: 50 kWh must be curtailed
    ],
)
def test_noon_surplus_is_stored_and_discharged_later(power_kw: float, stored_from_pv: float) -> None:
    T, load, co2 = 48, 100.0, 0.5
    pv = np.zeros(T)
    pv[12] = 300.0  # 300 kW PV against a 100 kW load: 200 kW surplus for one hour
    site = SiteParams(
        pv_kwp=1.0, bess_capacity_kwh=1000.0, bess_power_kw=power_kw, soc_min=0.0, soc_init=0.0, soc_max=1.0
    )
    res = solve_optimum(_scenario(pv, load, co2), site)
    delivered = stored_from_pv * site.bess_eta_charge * site.bess_eta_discharge
    expected_import = load * T - load - delivered  # PV covers hour 12, the battery the rest it can
    assert res.grid_import_kwh == pytest.approx(expected_import, rel=1e-9)
    assert res.co2_kg == pytest.approx(co2 * expected_import, rel=1e-9)
    assert res.bess_power_kw[12] == pytest.approx(stored_from_pv)
    assert res.soc[12] == pytest.approx(stored_from_pv * site.bess_eta_charge / site.bess_capacity_kwh)
    assert np.all(res.bess_power_kw[:12] >= -TOL)  # nothing to discharge before noon
    assert res.grid_import_kw[12] == pytest.approx(0.0, abs=TOL)


def test_soc_max_limits_storage() -> None:
    T, load, co2 = 24, 100.0, 0.5
    pv = np.zeros(T)
    pv[10] = 1100.0  # 1000 kW surplus, but only 0.8 * 400 = 320 kWh of headroom
    site = SiteParams(pv_kwp=1.0, bess_capacity_kwh=400.0, bess_power_kw=1000.0, soc_min=0.2, soc_init=0.2)
    res = solve_optimum(_scenario(pv, load, co2), site)
    headroom = (site.soc_max - site.soc_init) * site.bess_capacity_kwh
    delivered = headroom * site.bess_eta_discharge
    assert res.soc[10] == pytest.approx(site.soc_max)
    assert res.co2_kg == pytest.approx(co2 * (load * T - load - delivered), rel=1e-9)


def test_every_feasible_ev_is_fully_served() -> None:
    scen = _random_scenario(3, hours=72, n_sessions=120)
    site = SiteParams()
    assert site.unmet_penalty_kg_per_kwh > scen.co2_kg_per_kwh.max()
    res = solve_optimum(scen, site)
    # Each session is capped at its demand, so zero total unmet means every session is served.
    assert res.ev_energy_unmet_kwh == pytest.approx(0.0, abs=1e-5)
    assert res.ev_energy_served_kwh == pytest.approx(scen.sessions.energy_kwh.sum())
    assert res.objective_kg == pytest.approx(res.co2_kg, abs=1e-4)


def test_ev_charging_is_shifted_into_pv_surplus() -> None:
    T, load, co2 = 48, 100.0, 0.5
    pv = np.zeros(T)
    pv[12] = 200.0  # 100 kW surplus only at hour 12
    sessions = _sessions(
        arrival=[8, 20],  # first can wait for noon; second's stay has no surplus
        departure=[16, 23],
        energy=[50.0, 30.0],
        power=[50.0, 22.0],
    )
    site = SiteParams(pv_kwp=1.0, bess_capacity_kwh=100.0, bess_power_kw=100.0, soc_min=0.0, soc_init=0.0)
    res = solve_optimum(_scenario(pv, load, co2, sessions), site)
    assert res.ev_energy_unmet_kwh == pytest.approx(0.0, abs=1e-6)
    assert res.ev_power_kw[12] == pytest.approx(50.0)
    assert np.allclose(np.delete(res.ev_power_kw[8:16], 12 - 8), 0.0, atol=1e-6)
    assert res.ev_power_kw[20:23].sum() == pytest.approx(30.0)
    # The remaining 50 kW surplus goes through the battery to the load.
    delivered = 50.0 * site.bess_eta_charge * site.bess_eta_discharge
    assert res.co2_kg == pytest.approx(co2 * (load * T - load + 30.0 - delivered), rel=1e-9)


def test_low_penalty_leaves_evs_unserved() -> None:
    # With the penalty below the intensity, not charging is cheaper: the LP must say so (the env would too).
    T = 24
    sessions = _sessions([2], [6], [40.0], [20.0])
    site = SiteParams(pv_kwp=0.0, unmet_penalty_kg_per_kwh=0.1)
    res = solve_optimum(_scenario(np.zeros(T), 100.0, 0.45, sessions), site)
    assert res.ev_energy_unmet_kwh == pytest.approx(40.0)
    assert res.objective_kg == pytest.approx(0.45 * 100.0 * T + 0.1 * 40.0)


@pytest.mark.parametrize("soc_init", [0.2, 0.6])
def test_larger_battery_never_raises_the_optimum(soc_init: float) -> None:
    scen = _random_scenario(7, hours=72)
    results: list[OptimumResult] = [
        solve_optimum(scen, SiteParams(bess_capacity_kwh=cap, soc_init=soc_init))
        for cap in (250.0, 1000.0, 2000.0, 4000.0, 8000.0)
    ]
    objectives = np.array([r.objective_kg for r in results])
    co2 = np.array([r.co2_kg for r in results])
    assert np.all(np.diff(objectives) <= 1e-6 * objectives[:-1])
    assert np.all(np.diff(co2) <= 1e-6 * co2[:-1])
    assert objectives[-1] < objectives[0]  # PV surplus exists, so more storage helps strictly


def test_solver_failure_raises_runtime_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import bess_rl.baselines.optimum as optimum

    def fake_linprog(*args: object, **kwargs: object) -> SimpleNamespace:
        return SimpleNamespace(status=2, x=None, message="The problem is infeasible. (HiGHS Status 8)")

    monkeypatch.setattr(optimum, "linprog", fake_linprog)
    with pytest.raises(RuntimeError, match="infeasible"):
        solve_optimum(_scenario(np.zeros(24), 100.0, 0.45), SiteParams())


def test_import_cap_bounds_grid_import_except_where_the_load_alone_exceeds_it() -> None:
    scen = _random_scenario(3)
    free = solve_optimum(scen, SiteParams())
    cap = 0.9 * float(free.grid_import_kw.max())
    capped = solve_optimum(scen, SiteParams(import_cap_kw=cap))
    pv = SiteParams().pv_kwp * scen.pv_kw_per_kwp
    bound = np.maximum(cap, scen.load_kw - pv)
    assert np.all(capped.grid_import_kw <= bound + TOL)
    assert capped.objective_kg >= free.objective_kg - TOL  # a constraint never helps

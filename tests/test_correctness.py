"""Trust the numbers: physics and accounting of the env, the KPIs, the LP bound and the scenario parts,
checked on random data and random actions (numpy only). Results: experiments/correctness_2026-12-04/."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from bess_rl.baselines.episode import run_episode
from bess_rl.baselines.mpc import MpcSettings, lp_achievable, run_mpc
from bess_rl.baselines.optimum import solve_optimum
from bess_rl.baselines.references import co2_table, compute_references
from bess_rl.baselines.rules import RuleBased, uncontrolled
from bess_rl.baselines.smart import SmartCharging
from bess_rl.experiment.build import build_scenario, has_eval_part, make_env
from bess_rl.experiment.config import CONF_DIR, compose_config
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import SiteParams, penalised_kg
from bess_rl.site.scenario import EvSessions, Scenario, embedded_part, embedded_scenario, session_hours

SEEDS = range(6)


def random_scenario(rng: np.random.Generator, hours: int) -> Scenario:
    """Noisy PV bell, load, intensity (some hours carbon-free) and price; sessions that fit their stay."""
    hod = np.arange(hours) % 24
    pv = np.clip(np.sin((hod - 6) / 12 * np.pi), 0, None) * rng.uniform(0.0, 1.0, hours)
    load = rng.uniform(0.0, 60.0, hours)
    co2 = np.where(rng.random(hours) < 0.1, 0.0, rng.uniform(0.05, 0.9, hours))
    n = int(rng.integers(1, 25))
    arrival = rng.integers(0, hours, n)
    departure = np.minimum(arrival + rng.integers(1, 12, n), hours)
    power = rng.choice([3.7, 7.4, 11.0, 22.0], n)
    energy = power * (departure - arrival) * rng.uniform(0.0, 1.0, n)
    sessions = EvSessions(arrival, departure, energy, power)
    return Scenario("random", pv, load, co2, sessions, rng.uniform(0.05, 0.4, hours))


def random_site(rng: np.random.Generator, cap: bool) -> SiteParams:
    soc_min = float(rng.uniform(0.0, 0.5))
    soc_max = float(rng.uniform(soc_min + 0.1, 1.0))
    return SiteParams(
        pv_kwp=float(rng.uniform(0.0, 80.0)),
        bess_capacity_kwh=float(rng.uniform(5.0, 200.0)),
        bess_power_kw=float(rng.uniform(2.0, 100.0)),
        bess_eta_charge=float(rng.uniform(0.7, 1.0)),
        bess_eta_discharge=float(rng.uniform(0.7, 1.0)),
        soc_min=soc_min,
        soc_max=soc_max,
        soc_init=float(rng.uniform(soc_min, soc_max)),
        unmet_penalty_kg_per_kwh=float(rng.uniform(0.5, 3.0)),
        import_cap_kw=float(rng.uniform(5.0, 60.0)) if cap else None,
    )


def random_case(seed: int, hours: int = 48) -> PvBessEvEnv:
    """A random scenario and site (an import cap on odd seeds) as an env."""
    rng = np.random.default_rng(seed)
    return PvBessEvEnv(random_scenario(rng, hours), random_site(rng, cap=seed % 2 == 1), forecast_hours=2)


def random_actions(seed: int, spread: float = 1.5):
    """Uniform actions, some outside [-1, 1] (the env clips them), with the extremes drawn often."""
    rng = np.random.default_rng(seed)
    return lambda env, obs: rng.choice([rng.uniform(-spread, spread), -1.0, 0.0, 1.0], 2, p=[0.7, 0.1, 0.1, 0.1])


def penalised(result, site: SiteParams) -> float:
    return penalised_kg(result.co2_kg, result.ev_unmet_kwh, site.unmet_penalty_kg_per_kwh)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_step_balances_and_keeps_the_battery_within_its_limits(seed):
    env = random_case(seed)
    st = env.site
    tr = run_episode(env, random_actions(seed)).trace
    supply = tr["pv_kw"] + tr["grid_import_kw"]
    np.testing.assert_allclose(supply, tr["load_kw"] + tr["ev_kw"] + tr["bess_kw"] + tr["surplus_kw"], atol=1e-9)
    assert min(tr["grid_import_kw"].min(), tr["surplus_kw"].min(), tr["ev_kw"].min()) >= 0.0
    assert np.all(np.minimum(tr["grid_import_kw"], tr["surplus_kw"]) == 0.0)  # never both in one hour
    np.testing.assert_allclose(tr["pv_kw"], st.pv_kwp * env.scenario.pv_kw_per_kwp, rtol=1e-12)
    assert st.soc_min - 1e-12 <= tr["soc"].min() and tr["soc"].max() <= st.soc_max + 1e-12
    assert np.abs(tr["bess_kw"]).max() <= st.bess_power_kw + 1e-9
    # Each efficiency exactly once: storage gains eta_c x charge, loses discharge / eta_d (AC side).
    e = np.concatenate([[st.soc_init], tr["soc"]]) * st.bess_capacity_kwh
    p = tr["bess_kw"]
    np.testing.assert_allclose(
        np.diff(e), np.where(p > 0, p * st.bess_eta_charge, p / st.bess_eta_discharge), atol=1e-9
    )
    if st.import_cap_kw is not None:  # flexible demand within the cap; the load alone may exceed it
        allowed = np.maximum(st.import_cap_kw, tr["load_kw"] - tr["pv_kw"])
        assert np.all(tr["grid_import_kw"] <= allowed + 1e-9)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_actions_outside_the_box_act_as_their_clipped_values(seed):
    env, twin = random_case(seed), random_case(seed)
    rng = np.random.default_rng(seed)
    env.reset(seed=0)
    twin.reset(seed=0)
    for _ in range(env.episode_hours):
        action = rng.uniform(-4.0, 4.0, 2)
        a, b = env.step(action), twin.step(np.clip(action, -1.0, 1.0))
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1] and a[4] == b[4]


@pytest.mark.parametrize("seed", SEEDS)
def test_ev_energy_never_exceeds_the_ask_and_each_deficit_counts_once_at_departure(seed):
    env = random_case(seed)
    ses = env.scenario.sessions
    actions = random_actions(seed)
    obs, _ = env.reset(seed=0)
    served = unmet = reward = co2 = 0.0
    for t in range(env.episode_hours):
        before = env._remaining.copy()
        obs, r, _, _, info = env.step(actions(env, obs))
        after, active, gone = env._remaining, env._active[t], env._departing[t]
        here = np.zeros(len(ses), bool)
        here[active] = True
        np.testing.assert_array_equal(after[~here], before[~here])  # only plugged-in cars change
        stay = here.copy()
        stay[gone] = False
        got = before[stay] - after[stay]
        assert np.all(got >= 0.0) and np.all(got <= np.minimum(ses.max_power_kw, before)[stay] + 1e-9)
        # A leaving car gets its last hour's charge, then what it still lacks is unmet, once: it is gone after.
        got_gone = info["ev_kw"] - got.sum()
        assert -1e-9 <= got_gone <= np.minimum(ses.max_power_kw, before)[gone].sum() + 1e-9
        assert before[gone].sum() == pytest.approx(got_gone + info["ev_unmet_kwh"], abs=1e-9)
        assert np.all(after[gone] == 0.0) and info["ev_unmet_kwh"] >= 0.0
        served, unmet = served + info["ev_kw"], unmet + info["ev_unmet_kwh"]
        reward, co2 = reward + r, co2 + info["co2_kg"]
    assert served + unmet == pytest.approx(ses.energy_kwh.sum(), abs=1e-9)
    # Reward = -(CO2 + penalty x unmet) / scale, the quantity the LP minimises.
    want = penalised_kg(co2, unmet, env.site.unmet_penalty_kg_per_kwh)
    assert -reward * env.reward_scale_kg == pytest.approx(want, rel=1e-12, abs=1e-9)


def _kpi_case(actions: list[list[float]]):
    """PV 100 kW against a 20 kW load for two hours; a lossless 100 kWh battery, full, 50 kW."""
    no_evs = EvSessions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    scenario = Scenario("kpi", np.full(2, 100.0), np.full(2, 20.0), np.full(2, 0.5), no_evs)
    site = SiteParams(pv_kwp=1.0, bess_capacity_kwh=100.0, bess_power_kw=50.0, bess_eta_charge=1.0,
                      bess_eta_discharge=1.0, soc_min=0.0, soc_init=1.0)  # fmt: skip
    steps = iter(actions)
    return run_episode(PvBessEvEnv(scenario, site, forecast_hours=0), lambda env, obs: np.array(next(steps)))


def test_battery_energy_sent_into_a_pv_surplus_is_not_counted_as_pv_curtailed():
    # Hour 0 discharges 50 kW into an 80 kW PV surplus (130 kW go unused), hour 1 idles (80 kW).
    r = _kpi_case([[-1.0, 1.0], [0.0, 1.0]])
    assert r.trace["surplus_kw"].tolist() == [130.0, 80.0]
    assert r.curtailed_pv_kwh == pytest.approx(160.0)  # PV beyond the load, not the battery's 50 kWh
    assert r.pv_self_consumption_pct == pytest.approx(20.0)
    assert r.battery_throughput_kwh == pytest.approx(50.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_kpis_of_random_actions_stay_physical(seed):
    env = random_case(seed)
    r = run_episode(env, random_actions(seed))
    tr = r.trace
    # PV serves the load, the EVs and battery charging first; the rest of it is curtailed.
    used = np.minimum(tr["pv_kw"], tr["load_kw"] + tr["ev_kw"] + np.maximum(tr["bess_kw"], 0.0))
    assert r.curtailed_pv_kwh == pytest.approx(float((tr["pv_kw"] - used).sum()), abs=1e-9)
    assert r.curtailed_pv_kwh <= tr["surplus_kw"].sum() + 1e-9
    assert 0.0 <= r.pv_self_consumption_pct <= 100.0
    assert r.cost == pytest.approx(float(tr["grid_import_kw"] @ env.scenario.price_per_kwh))
    assert r.peak_import_kw == pytest.approx(tr["grid_import_kw"].max())
    assert r.battery_cycles == pytest.approx(np.abs(tr["bess_kw"]).sum() / (2 * env.site.bess_capacity_kwh))


@pytest.mark.parametrize("seed", [0, 1])
def test_co2_is_import_times_intensity_alike_in_episodes_references_and_the_console(seed):
    env = random_case(seed)
    refs = compute_references(env, MpcSettings(horizon_hours=12, every_hours=4))
    table = refs.table()
    intensity = env.scenario.co2_kg_per_kwh
    for name in ("uncontrolled", "rule_based", "smart_rule", "mpc_perfect", "mpc_persistence", "lp_achievable"):
        r = getattr(refs, name)
        co2 = float(np.maximum(r.trace["grid_import_kw"], 0.0) @ intensity)  # no credit for any surplus
        assert r.co2_kg == pytest.approx(co2, rel=1e-12, abs=1e-12)
        assert table[name]["co2_kg"] == r.co2_kg
        assert table[name]["penalised_kg"] == penalised(r, env.site)
    assert table["lp_optimum"]["co2_kg"] == pytest.approx(float(refs.optimum.grid_import_kw @ intensity))
    # The console prints the same figures, rounded to the kg.
    console = Console(width=200, record=True)
    console.print(co2_table(table, env.scenario.hours))
    text = console.export_text()
    for row in table.values():
        assert f"{row['co2_kg']:,.0f}" in text and f"{row['penalised_kg']:,.0f}" in text


@pytest.mark.parametrize("seed", SEEDS)
def test_lp_bound_is_below_every_controller_run_through_the_env(seed):
    env = random_case(seed)
    site = env.site
    opt = solve_optimum(env.scenario, site)
    results = {
        "uncontrolled": run_episode(env, uncontrolled),
        "rule_based": run_episode(env, RuleBased()),
        "smart_rule": run_episode(env, SmartCharging()),
        "mpc_perfect": run_mpc(env, "perfect", MpcSettings(horizon_hours=12, every_hours=3)),
        "mpc_persistence": run_mpc(env, "persistence", MpcSettings(horizon_hours=12, every_hours=3)),
        "lp_achievable": lp_achievable(env, opt),
        **{f"random_{k}": run_episode(env, random_actions(100 * seed + k, spread=1.0)) for k in range(3)},
    }
    for name, r in results.items():
        assert opt.objective_kg <= penalised(r, site) + 1e-7 * max(1.0, penalised(r, site)), name


@pytest.mark.parametrize("seed", SEEDS)
def test_lp_plan_keeps_the_envs_limits(seed):
    env = random_case(seed)
    st, sc = env.site, env.scenario
    opt = solve_optimum(sc, st)
    tol = 1e-6
    assert st.soc_min - tol <= opt.soc.min() and opt.soc.max() <= st.soc_max + tol
    assert np.abs(opt.bess_power_kw).max() <= st.bess_power_kw + tol
    e = np.concatenate([[st.soc_init], opt.soc]) * st.bess_capacity_kwh
    b = opt.bess_power_kw
    np.testing.assert_allclose(np.diff(e), np.where(b > 0, b * st.bess_eta_charge, b / st.bess_eta_discharge), atol=tol)
    # EV power only while cars are plugged in, at most their sockets, at most what they asked.
    ses = sc.sessions
    sess, hour = session_hours(ses.arrival, ses.departure)
    plugged = np.bincount(hour, weights=ses.max_power_kw[sess], minlength=sc.hours)
    assert np.all(opt.ev_power_kw >= -tol) and np.all(opt.ev_power_kw <= plugged + tol)
    assert opt.ev_energy_served_kwh <= ses.energy_kwh.sum() + tol
    assert opt.ev_energy_unmet_kwh >= -tol
    surplus = env.pv_kw + opt.grid_import_kw - sc.load_kw - opt.ev_power_kw - b
    assert surplus.min() >= -tol and opt.grid_import_kw.min() >= -tol
    if st.import_cap_kw is not None:
        assert np.all(opt.grid_import_kw <= np.maximum(st.import_cap_kw, sc.load_kw - env.pv_kw) + tol)


def _scales(env: PvBessEvEnv) -> list[float]:
    """What the env divides PV, load, intensity and price by for the observation, and the EV scale."""
    scales = []
    for column, raw in zip((2, 3, 4, 5), (env.pv_kw, env.load_kw, env.co2, env.price), strict=True):
        t = int(np.argmax(raw))
        scales.append(float(raw[t] / env._exog[t, column]))
    return [*scales, env.ev_scale_kw]


@pytest.mark.parametrize("key", ["citylearn_building_15", "citylearn_district"])
def test_the_training_and_held_out_parts_of_a_data_set_share_the_observation_scales(key):
    # Before: each part was scaled by its own peaks: on building 15 the held-out PV by 2.58 kW instead of
    # the training part's 0.83 (a kW looked 3x smaller to the policy), on the district the held-out price by
    # 0.27 instead of 0.65, and each part's scale came from its own future.
    site = SiteParams(pv_kwp=1.0)
    train, held = (PvBessEvEnv(embedded_scenario(f"{key}[{part}]"), site) for part in ("0:6552", "6552:8760"))
    np.testing.assert_allclose(_scales(held), _scales(train), rtol=1e-6)
    whole = PvBessEvEnv(embedded_scenario(key), site)
    np.testing.assert_allclose(_scales(train), _scales(whole), rtol=1e-6)
    for env in (train, held):  # still within the declared bounds
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        assert env._exog[:, 2:6].max() <= 1.0


SCENARIOS = sorted(p.stem for p in (CONF_DIR / "scenario").glob("*.yaml"))


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_shipped_held_out_part_shares_no_hour_with_its_training_part(name):
    cfg = compose_config([f"scenario={name}"]).scenario
    train, held = build_scenario(cfg, "train"), build_scenario(cfg, "eval")
    assert has_eval_part(cfg)
    (train_set, a, b), (held_set, c, d) = embedded_part(cfg.data), embedded_part(cfg.eval_data)
    if train_set == held_set:  # two parts of one year: disjoint hours, each exactly its slice
        whole = embedded_scenario(train_set)
        assert b <= c or d <= a
        for part, (lo, hi) in ((train, (a, b)), (held, (c, d))):
            np.testing.assert_array_equal(part.load_kw, whole.load_kw[lo:hi])
            np.testing.assert_array_equal(part.co2_kg_per_kwh, whole.co2_kg_per_kwh[lo:hi])
            assert part.sessions.departure.max() <= hi - lo  # no session reaches into the other part
    else:  # another year of the same site: other weather and other cars
        assert train.hours == held.hours and not np.array_equal(train.load_kw, held.load_kw)
        assert not np.array_equal(train.pv_kw_per_kwp, held.pv_kw_per_kwp)
        assert len(train.sessions) != len(held.sessions) or not np.array_equal(
            train.sessions.arrival, held.sessions.arrival
        )


def test_window_and_episode_options_give_what_they_say():
    overrides = ["scenario.window_start=48", "scenario.window_hours=96", "scenario.episode_hours=30"]
    cfg = compose_config(overrides).scenario
    train, held = build_scenario(cfg, "train"), build_scenario(cfg, "eval")
    (_, a, _), (_, c, _) = embedded_part(cfg.data), embedded_part(cfg.eval_data)
    whole = embedded_scenario(embedded_part(cfg.data)[0])
    for part, first in ((train, a + 48), (held, c + 48)):  # the same window of each part
        assert part.hours == 96
        np.testing.assert_array_equal(part.pv_kw_per_kwp, whole.pv_kw_per_kwp[first : first + 96])
        assert part.sessions.arrival.min() >= 0 and part.sessions.departure.max() <= 96
    site = SiteParams(pv_kwp=1.0)
    env = make_env(train, site, cfg, training=True)
    for seed in range(3):  # training episodes: episode_hours long, from a random midnight
        obs, _ = env.reset(seed=seed)
        assert env.hour % 24 == 0
        steps = 0
        truncated = False
        while not truncated:
            obs, _, terminated, truncated, _ = env.step(np.zeros(2))
            assert not terminated
            steps += 1
        assert steps == 30
    evaluation = make_env(held, site, cfg, training=False)  # the evaluation episode: the whole part from hour 0
    for seed in range(3):
        evaluation.reset(seed=seed)
        assert evaluation.hour == 0
    assert run_episode(evaluation, uncontrolled).hours == 96

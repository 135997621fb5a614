"""The site environment: API conformance, physics and determinism."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from bess_rl import ENV_ID
from bess_rl.baselines.episode import run_episode
from bess_rl.baselines.rules import RuleBased, uncontrolled
from bess_rl.site.env import PvBessEvEnv


def random_policy(seed: int):
    rng = np.random.default_rng(seed)
    return lambda env, obs: rng.uniform(-1, 1, 2).astype(np.float32)


def test_passes_gymnasium_and_sb3_checkers(scenario, site):
    env = PvBessEvEnv(scenario, site)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(PvBessEvEnv(scenario, site), warn=True)


def test_registered_id_makes_the_env(scenario, site):
    env = gym.make(ENV_ID, scenario=scenario, site=site)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    assert env.unwrapped.episode_hours == scenario.hours


def test_energy_balance_closes_every_step(scenario, site):
    env = PvBessEvEnv(scenario, site)
    res = run_episode(env, random_policy(3))
    tr = res.trace
    supply = tr["pv_kw"] + tr["grid_import_kw"]
    demand = tr["load_kw"] + tr["ev_kw"] + tr["bess_kw"] + tr["surplus_kw"]
    np.testing.assert_allclose(supply, demand, atol=1e-9)
    assert (tr["grid_import_kw"] >= 0).all() and (tr["surplus_kw"] >= 0).all()
    # The battery moved, in both directions, and stayed within its limits.
    assert tr["bess_kw"].max() > 0 > tr["bess_kw"].min()
    assert np.abs(tr["bess_kw"]).max() <= site.bess_power_kw + 1e-9
    assert site.soc_min - 1e-12 <= tr["soc"].min() and tr["soc"].max() <= site.soc_max + 1e-12


def test_soc_follows_efficiencies(scenario, site):
    env = PvBessEvEnv(scenario, site)
    tr = run_episode(env, random_policy(4)).trace
    e = np.concatenate([[site.soc_init], tr["soc"]]) * site.bess_capacity_kwh
    p = tr["bess_kw"]
    de = np.where(p > 0, p * site.bess_eta_charge, p / site.bess_eta_discharge)
    np.testing.assert_allclose(np.diff(e), de, atol=1e-9)


def test_ev_energy_is_served_or_counted_unmet(scenario, site):
    env = PvBessEvEnv(scenario, site)
    total = scenario.sessions.energy_kwh.sum()
    for policy in (random_policy(5), uncontrolled):
        res = run_episode(env, policy)
        assert res.ev_served_kwh + res.ev_unmet_kwh == pytest.approx(total, rel=1e-12)
    assert run_episode(env, uncontrolled).ev_unmet_kwh == pytest.approx(0.0, abs=1e-9)
    never = run_episode(env, lambda e, o: np.array([0.0, -1.0], np.float32))
    assert never.ev_unmet_kwh == pytest.approx(total)
    # The penalty is in the reward: not charging EVs must score worse than charging them.
    assert never.reward < run_episode(env, uncontrolled).reward


def test_uncontrolled_charges_at_full_power_from_arrival(scenario, site):
    env = PvBessEvEnv(scenario, site)
    tr = run_episode(env, uncontrolled).trace
    s = scenario.sessions
    expected = np.zeros(scenario.hours)
    for a, d, e, p in zip(s.arrival, s.departure, s.energy_kwh, s.max_power_kw, strict=True):
        for t in range(a, d):
            take = min(p, e)
            expected[t] += take
            e -= take
    np.testing.assert_allclose(tr["ev_kw"], expected, atol=1e-9)
    assert (tr["bess_kw"] == 0).all()


def test_same_seed_same_episode(scenario, site):
    env = PvBessEvEnv(scenario, site, episode_hours=48, random_start=True)
    a = run_episode(env, random_policy(7), seed=11)
    b = run_episode(env, random_policy(7), seed=11)
    for k in a.trace:
        np.testing.assert_array_equal(a.trace[k], b.trace[k])
    assert a.co2_kg == b.co2_kg


def test_random_start_is_day_aligned_and_wraps_the_year(scenario, site):
    env = PvBessEvEnv(scenario, site, random_start=True)
    starts = set()
    for seed in range(20):
        env.reset(seed=seed)
        starts.add(env.hour)
    assert starts == {0, 24, 48}
    res = run_episode(env, uncontrolled, options={"start": 48})
    assert res.hours == scenario.hours  # a full year even from the last day
    full = run_episode(PvBessEvEnv(scenario, site), uncontrolled)
    assert res.co2_kg == pytest.approx(full.co2_kg)  # uncontrolled has no state across days


def test_rule_based_never_worse_than_uncontrolled(scenario, site):
    env = PvBessEvEnv(scenario, site)
    unc = run_episode(env, uncontrolled)
    rbc = run_episode(env, RuleBased())
    assert rbc.co2_kg < unc.co2_kg
    assert rbc.ev_unmet_kwh == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("bad", [np.array([np.nan, 0.0]), np.array([0.0])])
def test_bad_action_is_a_clear_error(scenario, site, bad):
    env = PvBessEvEnv(scenario, site)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be 2 finite numbers"):
        env.step(bad)


def test_observation_layout_v1_and_forecast_errors(scenario, site):
    k = 3
    exact = PvBessEvEnv(scenario, site, forecast_hours=k)
    assert exact.observation_space.shape == (6 + 4 * k + 4,)
    t = 30
    row = exact._exog[t]
    intensity = scenario.co2_kg_per_kwh / scenario.co2_kg_per_kwh.max()
    price = scenario.price_per_kwh / scenario.price_per_kwh.max()
    assert row[4] == pytest.approx(intensity[t]) and row[5] == pytest.approx(price[t])
    np.testing.assert_allclose(row[6 + 2 * k : 6 + 3 * k], intensity[t + 1 : t + 1 + k], rtol=1e-6)
    pv = exact.pv_kw / exact.pv_kw.max()
    np.testing.assert_allclose(row[6 : 6 + k], pv[t + 1 : t + 1 + k], rtol=1e-6)
    persist = PvBessEvEnv(scenario, site, forecast_hours=k, forecast_error="persistence")._exog[t]
    np.testing.assert_allclose(persist[6 : 6 + k], pv[t + 1 - 24 : t + 1 + k - 24], rtol=1e-6)  # yesterday
    noisy = [PvBessEvEnv(scenario, site, forecast_error="noise", forecast_seed=s)._exog for s in (1, 1, 2)]
    np.testing.assert_array_equal(noisy[0], noisy[1])  # seeded
    assert not np.array_equal(noisy[0], noisy[2])
    np.testing.assert_array_equal(noisy[0][:, :6], exact._exog[:, :6])  # the nowcast stays exact
    assert noisy[0].min() >= -1.0 and noisy[0][:, 2:].min() >= 0.0 and noisy[0].max() <= 1.0
    with pytest.raises(ValueError, match="forecast_error must be one of exact, persistence, noise"):
        PvBessEvEnv(scenario, site, forecast_error="oracle")


def test_import_cap_cuts_battery_then_ev_charging_and_reports_what_the_load_alone_exceeds(scenario, site):
    pv = site.pv_kwp * scenario.pv_kw_per_kwp
    cap = float(np.percentile(scenario.load_kw - pv, 95))
    capped = dataclasses.replace(site, import_cap_kw=cap)
    env = PvBessEvEnv(scenario, capped)
    full = run_episode(env, lambda e, o: np.array([1.0, 1.0], np.float32)).trace
    allowed = np.maximum(cap, scenario.load_kw - pv)
    assert np.all(full["grid_import_kw"] <= allowed + 1e-9)
    # Where the cap binds, battery charging goes first: EVs charge only once the battery is at 0.
    binding = full["grid_import_kw"] >= cap - 1e-9
    assert np.all(full["bess_kw"][binding & (full["ev_kw"] > 1e-9)] <= 1e-9)
    env.reset(seed=0)
    violations = []
    for _ in range(scenario.hours):
        info = env.step(np.array([0.0, -1.0], np.float32))[4]
        violations.append(info["cap_violation_kw"])
    np.testing.assert_allclose(violations, np.maximum(scenario.load_kw - pv - cap, 0.0), atol=1e-9)

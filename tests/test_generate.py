"""The embedded scenario is reproducible from its generator and lies in the site's domain ranges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bess_rl.site.data.generate import DEFAULT_SEED, HOURLY_FILE, SEEDS, SESSIONS_FILE, file_names, generate
from bess_rl.site.scenario import HOURS_PER_YEAR, Scenario, default_data_dir, default_scenario


@pytest.fixture(scope="module")
def fresh() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate(DEFAULT_SEED)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return default_scenario()


def test_generate_is_deterministic(fresh: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    hourly, sessions = generate(DEFAULT_SEED)
    pd.testing.assert_frame_equal(hourly, fresh[0], check_exact=True)
    pd.testing.assert_frame_equal(sessions, fresh[1], check_exact=True)


def test_other_seed_differs(fresh: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    hourly, _ = generate(DEFAULT_SEED + 1)
    assert not np.allclose(hourly["load_kw"], fresh[0]["load_kw"])


def test_shipped_files_match_generator(fresh: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    data = default_data_dir()
    for name, frame in zip((HOURLY_FILE, SESSIONS_FILE), fresh, strict=True):
        shipped = pd.read_parquet(data / name)
        pd.testing.assert_frame_equal(shipped, frame, check_exact=False, rtol=1e-9)


def test_shipped_eval_year_matches_generator() -> None:
    """The held-out year (scenario.eval_data) is regenerated from its own seed: other weather, other EVs."""
    hourly, sessions = generate(SEEDS["iquitos_eval"])
    for name, frame in zip(file_names("iquitos_eval"), (hourly, sessions), strict=True):
        pd.testing.assert_frame_equal(pd.read_parquet(default_data_dir() / name), frame, check_exact=False, rtol=1e-9)
    train = pd.read_parquet(default_data_dir() / HOURLY_FILE)
    assert not np.allclose(hourly["pv_kw_per_kwp"], train["pv_kw_per_kwp"])


def test_sessions_schema(fresh: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, sessions = fresh
    assert list(sessions.columns) == [
        "arrival_hour",
        "departure_hour",
        "energy_kwh",
        "max_power_kw",
        "count",
        "vehicle",
    ]
    assert set(sessions["vehicle"]) == {"motorbike", "mototaxi"}
    keys = sessions[["arrival_hour", "departure_hour", "vehicle"]]
    assert not keys.duplicated().any()
    assert keys.equals(keys.sort_values(list(keys.columns), ignore_index=True))
    socket_kw = sessions["vehicle"].map({"motorbike": 2.0, "mototaxi": 3.0}).to_numpy()
    np.testing.assert_allclose(sessions["max_power_kw"], sessions["count"] * socket_kw)


def test_domain_ranges(scenario: Scenario) -> None:
    assert scenario.hours == HOURS_PER_YEAR
    pv = scenario.pv_kw_per_kwp
    assert pv.min() >= 0.0 and pv.max() <= 1.0
    assert 1_700 <= pv.sum() <= 2_200  # kWh/kWp per year
    assert 1_250 <= scenario.load_kw.mean() <= 1_550
    assert scenario.load_kw.min() >= 0.0 and scenario.load_kw.max() <= 2_300
    np.testing.assert_allclose(scenario.co2_kg_per_kwh, 0.4521)


def test_ev_sessions_in_opening_hours(scenario: Scenario) -> None:
    s = scenario.sessions
    day = s.arrival // 24
    assert np.all((day + 1) * 24 > s.departure - 1)  # leaves on the day it arrived
    assert np.all(s.arrival - day * 24 >= 9)
    assert np.all(s.departure - day * 24 <= 22)
    assert np.all(s.energy_kwh <= s.max_power_kw * (s.departure - s.arrival) + 1e-9)
    daily = np.bincount(day, weights=s.energy_kwh, minlength=scenario.hours // 24)
    assert daily.shape == (365,)
    assert np.all((daily >= 500) & (daily <= 3_500))  # the mall opens every day


def test_socket_limits(fresh: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, sessions = fresh
    for vehicle, sockets in (("motorbike", 112), ("mototaxi", 16)):
        rows = sessions[sessions["vehicle"] == vehicle]
        present = np.zeros(HOURS_PER_YEAR + 1, dtype=np.int64)
        np.add.at(present, rows["arrival_hour"].to_numpy(), rows["count"].to_numpy())
        np.add.at(present, rows["departure_hour"].to_numpy(), -rows["count"].to_numpy())
        assert np.cumsum(present).max() <= sockets

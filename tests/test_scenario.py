"""User scenario files: a bad file gets one clear error naming the column and row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bess_rl.site.scenario import ScenarioError, embedded_scenario, load_scenario

HOURS = 48


def hourly_frame() -> pd.DataFrame:
    hod = np.arange(HOURS) % 24
    return pd.DataFrame(
        {
            "pv_kw_per_kwp": np.clip(np.sin(np.pi * (hod - 6) / 12), 0, None) * 0.8,
            "load_kw": np.full(HOURS, 1000.0),
        }
    )


def sessions_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "arrival_hour": [9, 33],
            "departure_hour": [12, 35],
            "energy_kwh": [5.0, 3.0],
            "max_power_kw": [2.0, 3.0],
        }
    )


def write(tmp_path, hourly: pd.DataFrame, sessions: pd.DataFrame, fmt: str = "csv"):
    h, s = tmp_path / f"hourly.{fmt}", tmp_path / f"sessions.{fmt}"
    for frame, path in ((hourly, h), (sessions, s)):
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
    return h, s


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_good_files_load(tmp_path, fmt):
    h, s = write(tmp_path, hourly_frame(), sessions_frame(), fmt)
    sc = load_scenario(h, s, hours=HOURS)
    assert sc.hours == HOURS and len(sc.sessions) == 2
    np.testing.assert_allclose(sc.co2_kg_per_kwh, 0.4521)  # default constant when the column is absent
    np.testing.assert_allclose(sc.price_per_kwh, 0.20)  # the flat tariff likewise
    priced = hourly_frame().assign(price_per_kwh=np.linspace(0.1, 0.3, HOURS))
    h, s = write(tmp_path, priced, sessions_frame(), fmt)
    np.testing.assert_allclose(load_scenario(h, s, hours=HOURS).window(24, 24).price_per_kwh, priced.price_per_kwh[24:])
    assert sc.sessions.departure.dtype == np.int64


def _break(frame: pd.DataFrame, col: str, row: int, value) -> pd.DataFrame:
    frame = frame.copy()
    frame[col] = frame[col].astype(object)
    frame.loc[row, col] = value
    return frame


@pytest.mark.parametrize(
    ("which", "mutate", "message"),
    [
        ("hourly", lambda f: f.drop(columns="load_kw"), r"missing column 'load_kw'"),
        ("hourly", lambda f: _break(f, "load_kw", 5, np.nan), r"column 'load_kw' row 5: not a finite number"),
        (
            "hourly",
            lambda f: _break(f, "pv_kw_per_kwp", 12, -0.1),
            r"column 'pv_kw_per_kwp' row 12: -0.1 is below 0",
        ),
        (
            "hourly",
            lambda f: _break(f, "load_kw", 3, "abc"),
            r"column 'load_kw' row 3: not a finite number \('abc'\)",
        ),
        ("hourly", lambda f: f.iloc[:-1], r"has 47 rows, expected 48"),
        (
            "hourly",
            lambda f: _break(f.assign(price_per_kwh=0.2), "price_per_kwh", 9, np.nan),
            r"column 'price_per_kwh' row 9: not a finite number",
        ),
        ("sessions", lambda f: f.drop(columns="energy_kwh"), r"missing column 'energy_kwh'"),
        (
            "sessions",
            lambda f: _break(f, "departure_hour", 1, 30),
            r"column 'departure_hour' row 1: 30 is not after",
        ),
        ("sessions", lambda f: _break(f, "departure_hour", 0, 49), r"row 0: 49 is past the end"),
        ("sessions", lambda f: _break(f, "arrival_hour", 1, 33.5), r"row 1: 33.5 is not a whole hour"),
        ("sessions", lambda f: _break(f, "energy_kwh", 0, 7.0), r"row 0: 7.0 exceeds max_power_kw"),
        ("sessions", lambda f: _break(f, "max_power_kw", 1, 0.0), r"'max_power_kw' row 1: 0.0 must be > 0"),
    ],
)
def test_bad_data_names_column_and_row(tmp_path, which, mutate, message):
    hourly, sessions = hourly_frame(), sessions_frame()
    if which == "hourly":
        hourly = mutate(hourly)
    else:
        sessions = mutate(sessions)
    h, s = write(tmp_path, hourly, sessions)
    with pytest.raises(ScenarioError, match=message) as err:
        load_scenario(h, s, hours=HOURS)
    assert which in str(err.value)  # the message names the file


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ScenarioError, match="scenario file not found"):
        load_scenario(tmp_path / "nope.csv", hours=HOURS)
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ScenarioError, match="cannot be read as parquet"):
        load_scenario(bad, hours=HOURS)
    with pytest.raises(ScenarioError, match="unsupported file type '.xlsx'"):
        (tmp_path / "x.xlsx").write_text("")
        load_scenario(tmp_path / "x.xlsx", hours=HOURS)


def test_window_keeps_sessions_inside(tmp_path):
    h, s = write(tmp_path, hourly_frame(), sessions_frame())
    sc = load_scenario(h, s, hours=HOURS).window(24, 24)
    assert sc.hours == 24 and list(sc.sessions.arrival) == [9]
    with pytest.raises(ScenarioError, match="outside"):
        sc.window(10, 20)


def test_embedded_parts_split_one_year():
    train = embedded_scenario("citylearn_building_1[0:6552]")
    held_out = embedded_scenario("citylearn_building_1[6552:]")
    full = embedded_scenario("citylearn_building_1")
    assert (train.hours, held_out.hours) == (6552, 2208)
    np.testing.assert_array_equal(held_out.price_per_kwh, full.price_per_kwh[6552:])
    assert held_out.sessions.arrival.min() >= 0 and len(train.sessions) + len(held_out.sessions) <= len(full.sessions)
    with pytest.raises(ScenarioError, match="no embedded data set 'nope'"):
        embedded_scenario("nope[0:24]")

"""User scenario files: a bad file gets one clear error naming the file, column and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig

from bess_rl.experiment import input_checks
from bess_rl.experiment.config import compose_config, one_line
from bess_rl.experiment.input_checks import InputError, check_config, own_data_warning
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
        (
            "hourly",
            lambda f: _break(f, "load_kw", 5, np.nan),
            r"column 'load_kw' line 7: not a finite number \(an empty cell\)",
        ),
        ("hourly", lambda f: _break(f, "load_kw", 5, "n/a"), r"column 'load_kw' line 7: not a finite number \('n/a'\)"),
        (
            "hourly",
            lambda f: _break(f, "pv_kw_per_kwp", 12, -0.1),
            r"column 'pv_kw_per_kwp' line 14: -0.1 is below 0",
        ),
        (
            "hourly",
            lambda f: _break(f, "load_kw", 3, "abc"),
            r"column 'load_kw' line 5: not a finite number \('abc'\)",
        ),
        ("hourly", lambda f: f.iloc[:-1], r"has 47 rows, expected 48 \(one per hour\): scenario.hours=47 takes a file"),
        ("hourly", lambda f: _break(f, "load_kw", 0, 2e9), r"column 'load_kw' line 2: 2e\+09 is above 1e\+09"),
        (
            "hourly",
            lambda f: _break(f.assign(price_per_kwh=0.2), "price_per_kwh", 9, np.nan),
            r"column 'price_per_kwh' line 11: not a finite number",
        ),
        ("sessions", lambda f: f.drop(columns="energy_kwh"), r"missing column 'energy_kwh'"),
        (
            "sessions",
            lambda f: _break(f, "departure_hour", 1, 30),
            r"column 'departure_hour' line 3: 30 is not after",
        ),
        ("sessions", lambda f: _break(f, "departure_hour", 0, 49), r"line 2: 49 is past the end"),
        ("sessions", lambda f: _break(f, "arrival_hour", 1, 33.5), r"line 3: 33.5 is not a whole hour"),
        ("sessions", lambda f: _break(f, "energy_kwh", 0, 7.0), r"line 2: 7.0 exceeds max_power_kw"),
        ("sessions", lambda f: _break(f, "max_power_kw", 1, 0.0), r"'max_power_kw' line 3: 0.0 must be > 0"),
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


def test_a_parquet_file_names_the_row(tmp_path):
    h, s = write(tmp_path, _break(hourly_frame(), "load_kw", 5, -1.0), sessions_frame(), "parquet")
    with pytest.raises(ScenarioError, match=r"hourly.parquet: column 'load_kw' row 6: -1.0 is below 0"):
        load_scenario(h, s, hours=HOURS)


def test_a_csv_as_users_write_it_loads(tmp_path):
    """Spaces around the header names, Excel's UTF-8 BOM, and a timestamp whose UTC offset changes at the
    spring DST switch (Europe: 02:00 local does not exist that night), labelled in local time."""
    utc = pd.date_range("2024-03-30T12:00Z", periods=HOURS, freq="h")
    local = utc.tz_convert("Europe/Berlin")
    stamps = [t.isoformat() for t in local]  # +01:00, then +02:00
    lines = ["timestamp , pv_kw_per_kwp ,load_kw "]
    lines += [f"{t},{pv},{load}" for t, pv, load in zip(stamps, *hourly_frame().to_numpy().T, strict=True)]
    path = tmp_path / "hourly.csv"
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    sc = load_scenario(path, hours=HOURS)
    np.testing.assert_allclose(sc.load_kw, 1000.0)
    np.testing.assert_array_equal(sc.timestamps, local.tz_localize(None).to_numpy())
    assert "2024-03-31T02:00" not in str(sc.timestamps)  # the skipped local hour is skipped


def test_a_separator_other_than_a_comma_is_named(tmp_path):
    for sep, name in ((";", "';'"), ("\t", "tab")):
        path = tmp_path / "hourly.csv"
        hourly_frame().to_csv(path, sep=sep, index=False)
        with pytest.raises(ScenarioError, match=f"the file is {name}-separated, use commas"):
            load_scenario(path, hours=HOURS)


def test_an_unreadable_csv_says_why_once(tmp_path):
    """The cause was printed twice: 'No columns to parse from file: No columns to parse from file'."""
    empty = tmp_path / "hourly.csv"
    empty.write_text("")
    with pytest.raises(ScenarioError) as err:
        load_scenario(empty, hours=HOURS)
    assert one_line(err.value) == f"{empty}: cannot be read as csv: No columns to parse from file"


def scenario_cfg(**files: Path) -> DictConfig:
    """The default config with these ``scenario.<key>`` files of 48 hours."""
    return compose_config([*(f"scenario.{key}={path}" for key, path in files.items()), "scenario.hours=48"])


def test_an_evaluation_file_is_checked_as_a_training_file(tmp_path):
    h, s = write(tmp_path, hourly_frame(), sessions_frame())
    dup = tmp_path / "dup.csv"
    dup.write_text("\ufeff" + hourly_frame().assign(x=0.0).to_csv(index=False).replace(",x", ",pv_kw_per_kwp", 1))
    with pytest.raises(ScenarioError, match=f"^scenario.eval_hourly_path {dup}: column 'pv_kw_per_kwp' appears"):
        check_config(scenario_cfg(hourly_path=h, eval_hourly_path=dup))
    with pytest.raises(InputError, match="scenario.eval_sessions_path needs scenario.eval_hourly_path"):
        check_config(scenario_cfg(hourly_path=h, eval_sessions_path=s))


def test_an_unreadable_scenario_file_is_one_line(tmp_path, monkeypatch):
    """Root reads any file, so the permission is taken away where the header is opened."""
    h, s = write(tmp_path, hourly_frame(), sessions_frame())
    held_out = tmp_path / "held_out.csv"
    hourly_frame().assign(load_kw=900.0).to_csv(held_out, index=False)
    cfg = scenario_cfg(hourly_path=h, sessions_path=s, eval_hourly_path=held_out)
    for key, unreadable in (("sessions_path", s), ("eval_hourly_path", held_out)):

        def denied(path, *args, unreadable=unreadable, **kwargs):
            if Path(path) == unreadable:
                raise PermissionError(13, "Permission denied", str(path))
            return open(path, *args, **kwargs)

        monkeypatch.setattr(input_checks, "open", denied, raising=False)
        with pytest.raises(
            ScenarioError, match=f"^scenario.{key} {unreadable}: cannot be read \\(Permission denied\\)$"
        ):
            check_config(cfg)


@pytest.mark.parametrize(
    ("overrides", "preset"),
    [
        ([], "site=citylearn_district_cap (pv_kwp=113 kWp, bess_capacity_kwh=108.8, import_cap_kw=30 kW)"),
        (["scenario=iquitos"], "site=iquitos (pv_kwp=4050 kWp, bess_capacity_kwh=2000, no import cap)"),
    ],
)
def test_your_own_file_on_a_preset_site_is_warned_about(tmp_path, overrides, preset):
    args = [*overrides, f"scenario.hourly_path={tmp_path / 'mine.csv'}"]
    warning = own_data_warning(compose_config(args), args)
    assert warning is not None and f"runs at {preset}" in warning and "site=<preset> or site.*" in warning
    for site in ("site=iquitos", "site.import_cap_kw=2000"):
        assert own_data_warning(compose_config([*args, site]), [*args, site]) is None
    assert own_data_warning(compose_config(overrides), overrides) is None  # the preset's own data

"""CityLearn converter: the shipped files are what it writes, sessions follow the charger files, bad input is
one line naming file, column and row with nothing written; and every shipped scenario has its site."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bess_rl.experiment.config import CONF_DIR
from bess_rl.site.citylearn import ConversionError, convert_dataset, main
from bess_rl.site.params import SiteParams
from bess_rl.site.scenario import default_data_dir, embedded_scenario

ROOT = Path(__file__).resolve().parents[1]
# CI has a read-only copy of the shared data beside the clone, as here.
DATASET = ROOT.parent / "shared" / "data" / "citylearn_2022_phase_all_plus_evs"
HOURS = 48


def write_dataset(root: Path) -> Path:
    """A two-building, 48-hour data set in CityLearn's format; Building_2 has no charger."""
    root.mkdir()
    hod = np.arange(HOURS) % 24
    solar = np.clip(np.sin(np.pi * (hod - 6) / 12), 0, None) * 800.0
    for b, load in (("Building_1", 1.0), ("Building_2", 2.0)):
        frame = pd.DataFrame({"hour": hod, "non_shiftable_load": load + 0.1 * hod, "solar_generation": solar})
        frame.to_csv(root / f"{b}.csv", index=False)
    carbon = pd.DataFrame({"carbon_intensity": 0.2 + 0.001 * np.arange(HOURS)})
    carbon.to_csv(root / "carbon_intensity.csv", index=False)
    pd.DataFrame({"electricity_pricing": np.full(HOURS, 0.15)}).to_csv(root / "pricing.csv", index=False)
    state = np.full(HOURS + 5, 3)  # charger files may be longer than the hourly ones
    state[2:6] = 1  # EV_A plugged in hours 2-5
    state[30:] = 1  # a second stay running past the end
    ev = np.where(state == 1, "EV_A", None)
    pd.DataFrame(
        {
            "electric_vehicle_charger_state": state,
            "electric_vehicle_id": ev,
            "electric_vehicle_battery_capacity_khw": np.where(state == 1, 40.0, np.nan),
            "current_soc": np.where(state == 1, 30.0, np.nan),
            "electric_vehicle_required_soc_departure": np.where(state == 1, 80.0, np.nan),
        }
    ).to_csv(root / "charger_1_1.csv", index=False)
    battery = {"autosize": False, "attributes": {"capacity": 6.4, "efficiency": 0.81, "nominal_power": 5.0}}
    common = {"carbon_intensity": "carbon_intensity.csv", "pricing": "pricing.csv", "electrical_storage": battery}
    charger = {"charger_simulation": "charger_1_1.csv", "attributes": {"max_charging_power": 7.4, "efficiency": 0.95}}
    schema = {
        "electric_vehicles_def": {"EV_A": {"battery": {"attributes": {"capacity": 40, "nominal_power": 50}}}},
        "buildings": {
            "Building_1": {**common, "energy_simulation": "Building_1.csv", "pv": {"attributes": {"nominal_power": 4}},
                           "chargers": {"charger_1_1": charger}},
            "Building_2": {**common, "energy_simulation": "Building_2.csv", "pv": {"attributes": {"nominal_power": 2}}},
        },
    }  # fmt: skip
    (root / "schema.json").write_text(json.dumps(schema))
    return root


@pytest.mark.skipif(not DATASET.is_dir(), reason=f"the CityLearn data set is not at {DATASET}")
def test_reconverting_the_shipped_data_set_gives_the_same_files(tmp_path):
    assert main([str(DATASET), str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    shipped = sorted(p.name for p in default_data_dir().glob("citylearn_*"))
    assert written == shipped
    for name in written:
        if name.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name), pd.read_parquet(default_data_dir() / name))
        else:
            assert json.loads((tmp_path / name).read_text()) == json.loads((default_data_dir() / name).read_text())


def test_sessions_sizes_and_district_of_a_small_data_set(tmp_path):
    sites = {s.key: s for s in convert_dataset(write_dataset(tmp_path / "ds"))}
    assert set(sites) == {"citylearn_building_1", "citylearn_building_2", "citylearn_district"}
    b1 = sites["citylearn_building_1"]
    ses = b1.sessions
    assert ses["arrival_hour"].tolist() == [2, 30] and ses["departure_hour"].tolist() == [6, HOURS]
    # (80 - 30) % of 40 kWh through a 95 % charger, within 7.4 kW x 4 h.
    assert ses["energy_kwh"].iloc[0] == pytest.approx(0.5 * 40 / 0.95)
    assert ses["max_power_kw"].tolist() == [7.4, 7.4]
    assert b1.hourly["pv_kw_per_kwp"].max() == pytest.approx(0.8)  # W per kW -> kW per kW
    assert b1.sizes["bess_eta_charge"] == pytest.approx(0.9)  # round-trip 0.81 split evenly
    assert len(sites["citylearn_building_2"].sessions) == 0
    # PV per kWp of the district: weighted by the buildings' PV sizes (4 and 2 kWp, the same profile here).
    d, b2 = sites["citylearn_district"], sites["citylearn_building_2"]
    np.testing.assert_allclose(d.hourly["load_kw"], b1.hourly["load_kw"] + b2.hourly["load_kw"])
    assert d.sizes["pv_kwp"] == 6.0 and d.sizes["bess_capacity_kwh"] == pytest.approx(12.8)
    assert len(d.sessions) == 2
    SiteParams(**d.sizes)  # sizes are valid site parameters


def _drop_column(path: Path, col: str) -> None:
    pd.read_csv(path).drop(columns=col).to_csv(path, index=False)


def _set(path: Path, col: str, row: int, value: float) -> None:
    df = pd.read_csv(path)
    df.loc[row, col] = value
    df.to_csv(path, index=False)


def _no_buildings(root: Path) -> None:
    schema = json.loads((root / "schema.json").read_text())
    schema["buildings"] = {}
    (root / "schema.json").write_text(json.dumps(schema))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: (r / "pricing.csv").unlink(), r"pricing\.csv: file not found"),
        (lambda r: _drop_column(r / "Building_2.csv", "non_shiftable_load"),
         r"Building_2\.csv: missing column 'non_shiftable_load'"),
        (_no_buildings, r"schema\.json: 'buildings' lists no included building"),
        (lambda r: _set(r / "charger_1_1.csv", "current_soc", 2, 130.0),
         r"charger_1_1\.csv: column 'current_soc' row 2: 130\.0 is not a SOC in \[0, 100\] %"),
        (lambda r: _set(r / "charger_1_1.csv", "electric_vehicle_required_soc_departure", 30, np.nan),
         r"charger_1_1\.csv: column 'electric_vehicle_required_soc_departure' row 30"),
        (lambda r: _set(r / "pricing.csv", "electricity_pricing", 7, np.nan),
         r"pricing\.csv: column 'electricity_pricing' row 7: nan is not a number"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, breakage, message):
    root = write_dataset(tmp_path / "ds")
    breakage(root)
    with pytest.raises(ConversionError, match=message):
        convert_dataset(root)
    out = tmp_path / "out"
    assert main([str(root), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not out.exists()


def test_every_scenario_has_its_site_and_citylearn_sites_match_the_converter():
    sizes = json.loads((default_data_dir() / "citylearn_sites.json").read_text())
    for path in sorted((CONF_DIR / "scenario").glob("*.yaml")):
        scenario = yaml.safe_load(path.read_text())
        site_file = CONF_DIR / "site" / path.name
        assert site_file.is_file(), f"conf/scenario/{path.name} has no conf/site/{path.name}"
        site = {k: v for k, v in yaml.safe_load(site_file.read_text()).items() if k != "defaults"}
        params = dataclasses.asdict(SiteParams(**site))  # sizes left out of the YAML are SiteParams' defaults
        key = scenario["data"].partition("[")[0]
        if key in sizes:
            assert {k: params[k] for k in sizes[key]} == sizes[key], path.name
            train, held_out = embedded_scenario(scenario["data"]), embedded_scenario(scenario["eval_data"])
            assert train.hours + held_out.hours == 8_760  # the evaluation part is never trained on

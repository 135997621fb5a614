"""``python -m bess_rl.site.citylearn <dataset dir> <out dir>``: a CityLearn-format data set as bess_rl scenarios.

Why a converter rather than the ``citylearn`` package: the scenarios need only the data set's CSV files and
``schema.json``, and shipping the converted files keeps the package free of that dependency.

Per building in the schema (``include`` not false), key ``<prefix>_<building name in lower case>``:
    ``<key>_hourly.parquet``   pv_kw_per_kwp (CityLearn ``solar_generation`` is W per kW of PV: / 1000),
                               load_kw (``non_shiftable_load``, kWh per hour), co2_kg_per_kwh (the building's
                               carbon_intensity file), price_per_kwh (its pricing file, ``electricity_pricing``)
    ``<key>_sessions.parquet`` one EV session per connected run of each charger file (state 1, same EV id);
                               written only for buildings with chargers
plus ``<prefix>_district``: every building behind one connection (loads and PV summed, PV per kWp weighted
by the buildings' PV sizes, every charger's sessions, the batteries as one), and ``<prefix>_sites.json``
with each key's site sizes (``bess_rl.site.SiteParams`` fields) for ``conf/site/<scenario>.yaml``.

Sessions: arrival = first connected hour, departure = the hour after the last (exclusive); energy at the
socket = max(required SOC at departure - SOC at arrival, 0) x battery capacity / charger efficiency, capped
by the session's power (charger ``max_charging_power``, or the EV battery's ``nominal_power`` if lower) x
its hours. SOC columns are percent. Batteries: CityLearn's ``efficiency`` is round-trip, applied as its
square root on charge and on discharge; ``depth_of_discharge`` (default 1) gives soc_min, ``initial_soc``
(default 0) soc_init. Washing machines, thermal storage and battery power curves are not modelled.

Bad input (a missing file, column or building, a NaN, an impossible SOC) stops the conversion with one
line naming the file, column and row (0-based data row) before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bess_rl.site.scenario import ScenarioError

CONNECTED = 1  # CityLearn charger state: 1 connected, 2 incoming, 3 none
BUILDING_COLUMNS = ("non_shiftable_load", "solar_generation")
CHARGER_COLUMNS = (
    "electric_vehicle_charger_state",
    "electric_vehicle_id",
    "electric_vehicle_battery_capacity_khw",
    "current_soc",
    "electric_vehicle_required_soc_departure",
)


class ConversionError(ScenarioError):
    """A data set that cannot be converted; the message names the file, column and row."""


@dataclass
class Site:
    """One converted site: its hourly table, its sessions (empty without chargers) and its sizes."""

    key: str
    hourly: pd.DataFrame
    sessions: pd.DataFrame
    sizes: dict[str, float]


def _read_csv(path: Path, columns: tuple[str, ...], min_rows: int | None = None) -> pd.DataFrame:
    if not path.is_file():
        raise ConversionError(f"{path}: file not found")
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # pandas raises many types for a malformed file
        raise ConversionError(f"{path}: cannot be read as CSV: {exc}") from exc
    for col in columns:
        if col not in df.columns:
            raise ConversionError(f"{path}: missing column {col!r}")
    if min_rows is not None and len(df) < min_rows:
        raise ConversionError(f"{path}: has {len(df)} rows, expected at least {min_rows}")
    return df


def _cell(df: pd.DataFrame, col: str, row: int) -> str:
    """A cell as written in the file (plain Python repr, not numpy's)."""
    value = df[col].iloc[row]
    return repr(value.item() if hasattr(value, "item") else value)


def _numbers(df: pd.DataFrame, col: str, path: Path, rows: np.ndarray | None = None, low: float = 0.0) -> np.ndarray:
    """``df[col]`` (at ``rows``, default all) as finite floats >= ``low``, naming the first bad row."""
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    index = np.arange(len(values)) if rows is None else rows
    picked = values[index]
    bad = np.flatnonzero(~np.isfinite(picked) | (picked < low))
    if bad.size:
        row = int(index[bad[0]])
        raise ConversionError(f"{path}: column {col!r} row {row}: {_cell(df, col, row)} is not a number >= {low:g}")
    return picked


def _soc(df: pd.DataFrame, col: str, path: Path, rows: np.ndarray) -> np.ndarray:
    """A SOC column in percent: every value given must lie in [0, 100], and the rows used must have one."""
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    given = ~np.isnan(values)
    bad = np.flatnonzero(given & ~((values >= 0) & (values <= 100)))
    missing = rows[~given[rows]]
    if bad.size or missing.size:
        row = int(min(bad[0] if bad.size else len(values), missing[0] if missing.size else len(values)))
        raise ConversionError(f"{path}: column {col!r} row {row}: {_cell(df, col, row)} is not a SOC in [0, 100] %")
    return values[rows]


def _attributes(spec: dict[str, Any], device: str, where: str) -> dict[str, Any] | None:
    """A device's ``attributes``; autosized devices have no sizes in the schema, so they are refused."""
    entry = spec.get(device)
    if not entry:
        return None
    if entry.get("autosize"):
        raise ConversionError(f"{where}: {device}.autosize is true; the converter needs explicit sizes")
    return entry.get("attributes") or {}


def _size(attrs: dict[str, Any], name: str, where: str, default: float | None = None, zero_ok: bool = False) -> float:
    """A schema size: a finite number > 0 (>= 0 with ``zero_ok``)."""
    value = attrs.get(name, default)
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < 0 or (value == 0 and not zero_ok):
        raise ConversionError(f"{where}: {name} must be a number {'>=' if zero_ok else '>'} 0, got {value!r}")
    return float(value)


def charger_sessions(
    path: Path, hours: int, attrs: dict[str, Any], ev_defs: dict[str, Any], where: str
) -> pd.DataFrame:
    """One session per connected run of a CityLearn charger file (first ``hours`` rows); see module doc."""
    df = _read_csv(path, CHARGER_COLUMNS, hours).iloc[:hours]
    state = _numbers(df, "electric_vehicle_charger_state", path)
    ev = df["electric_vehicle_id"].fillna("").astype(str).to_numpy()
    on = state == CONNECTED
    # An hour continues a run if it is connected, the hour before was, and the EV is the same.
    cont = on & np.r_[False, on[:-1]] & np.r_[False, ev[1:] == ev[:-1]]
    starts = np.flatnonzero(on & ~cont)
    breaks = np.r_[np.flatnonzero(~cont), hours]
    ends = breaks[np.searchsorted(breaks, starts, side="right")]
    soc_arrival = _soc(df, "current_soc", path, starts)
    soc_required = _soc(df, "electric_vehicle_required_soc_departure", path, starts)
    capacity = _numbers(df, "electric_vehicle_battery_capacity_khw", path, starts, low=1e-9)
    charger_kw = _size(attrs, "max_charging_power", where, attrs.get("nominal_power"))
    efficiency = attrs.get("efficiency", 1.0)
    if not isinstance(efficiency, int | float) or not 0 < efficiency <= 1:
        raise ConversionError(f"{where}: efficiency must be in (0, 1], got {efficiency!r}")

    def ev_kw(name: str) -> float:
        battery = ((ev_defs.get(name) or {}).get("battery") or {}).get("attributes") or {}
        return min(charger_kw, _size(battery, "nominal_power", f"electric_vehicles_def.{name}.battery", charger_kw))

    power = np.array([ev_kw(name) for name in ev[starts]], dtype=np.float64)
    dwell = ends - starts
    need = np.maximum(soc_required - soc_arrival, 0.0) / 100.0 * capacity / efficiency
    return pd.DataFrame(
        {
            "arrival_hour": starts.astype(np.int64),
            "departure_hour": ends.astype(np.int64),
            "energy_kwh": np.minimum(need, power * dwell),
            "max_power_kw": power,
        }
    )


def convert_building(root: Path, name: str, spec: dict[str, Any], ev_defs: dict[str, Any], key: str) -> Site:
    """One schema building as a site: hourly table, sessions of all its chargers, sizes."""
    where = f"{root / 'schema.json'}: buildings.{name}"
    files = {}
    for field in ("energy_simulation", "carbon_intensity", "pricing"):
        if not isinstance(spec.get(field), str):
            raise ConversionError(f"{where}: missing {field!r} (a CSV file name)")
        files[field] = root / spec[field]
    energy = _read_csv(files["energy_simulation"], BUILDING_COLUMNS)
    hours = len(energy)
    carbon = _read_csv(files["carbon_intensity"], ("carbon_intensity",), hours).iloc[:hours]
    pricing = _read_csv(files["pricing"], ("electricity_pricing",), hours).iloc[:hours]
    hourly = pd.DataFrame(
        {
            "pv_kw_per_kwp": _numbers(energy, "solar_generation", files["energy_simulation"]) / 1000.0,
            "load_kw": _numbers(energy, "non_shiftable_load", files["energy_simulation"]),
            "co2_kg_per_kwh": _numbers(carbon, "carbon_intensity", files["carbon_intensity"]),
            "price_per_kwh": _numbers(pricing, "electricity_pricing", files["pricing"]),
        }
    )
    frames = []
    for charger, cspec in sorted((spec.get("chargers") or {}).items()):
        cwhere = f"{where}.chargers.{charger}"
        if not isinstance(cspec.get("charger_simulation"), str):
            raise ConversionError(f"{cwhere}: missing 'charger_simulation' (a CSV file name)")
        if cspec.get("autosize"):
            raise ConversionError(f"{cwhere}: autosize is true; the converter needs explicit sizes")
        attrs = cspec.get("attributes") or {}
        frame = charger_sessions(root / cspec["charger_simulation"], hours, attrs, ev_defs, cwhere)
        frames.append(frame.assign(charger=charger))
    sessions = _sort_sessions(frames)

    pv = _attributes(spec, "pv", where)
    battery = _attributes(spec, "electrical_storage", where)
    if battery is None:
        raise ConversionError(f"{where}: no electrical_storage (bess_rl sites have a battery)")
    eta = math.sqrt(_size(battery, "efficiency", f"{where}.electrical_storage", 1.0))
    sizes = {
        "pv_kwp": _size(pv, "nominal_power", f"{where}.pv", 0.0, zero_ok=True) if pv else 0.0,
        "bess_capacity_kwh": _size(battery, "capacity", f"{where}.electrical_storage"),
        "bess_power_kw": _size(battery, "nominal_power", f"{where}.electrical_storage"),
        "bess_eta_charge": eta,
        "bess_eta_discharge": eta,
        "soc_min": 1.0 - _size(battery, "depth_of_discharge", f"{where}.electrical_storage", 1.0),
        "soc_max": 1.0,
        "soc_init": _size(battery, "initial_soc", f"{where}.electrical_storage", 0.0, zero_ok=True),
    }
    return Site(key, hourly, sessions, sizes)


def _sort_sessions(frames: list[pd.DataFrame]) -> pd.DataFrame:
    columns = {"arrival_hour": "int64", "departure_hour": "int64", "energy_kwh": "float64",
               "max_power_kw": "float64", "charger": "object"}  # fmt: skip
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["arrival_hour", "departure_hour", "charger"], kind="stable").reset_index(drop=True)


def district(sites: list[Site], key: str, where: str) -> Site:
    """All sites behind one connection: one grid intensity and price, summed load and PV, one battery."""
    first = sites[0].hourly
    for s in sites[1:]:
        for col in ("co2_kg_per_kwh", "price_per_kwh"):
            if len(s.hourly) != len(first) or not np.array_equal(s.hourly[col].to_numpy(), first[col].to_numpy()):
                raise ConversionError(f"{where}: {s.key} has another {col} series or length; a district has one grid")
    kwp = np.array([s.sizes["pv_kwp"] for s in sites])
    pv_kw = sum(k * s.hourly["pv_kw_per_kwp"].to_numpy() for k, s in zip(kwp, sites, strict=True))
    cap = np.array([s.sizes["bess_capacity_kwh"] for s in sites])

    def weighted(name: str) -> float:
        return float(np.dot(cap, [s.sizes[name] for s in sites]) / cap.sum())

    hourly = pd.DataFrame(
        {
            "pv_kw_per_kwp": pv_kw / kwp.sum() if kwp.sum() > 0 else first["pv_kw_per_kwp"].to_numpy(),
            "load_kw": sum(s.hourly["load_kw"].to_numpy() for s in sites),
            "co2_kg_per_kwh": first["co2_kg_per_kwh"].to_numpy(),
            "price_per_kwh": first["price_per_kwh"].to_numpy(),
        }
    )
    sizes = {
        "pv_kwp": float(kwp.sum()),
        "bess_capacity_kwh": float(cap.sum()),
        "bess_power_kw": float(sum(s.sizes["bess_power_kw"] for s in sites)),
        "bess_eta_charge": weighted("bess_eta_charge"),
        "bess_eta_discharge": weighted("bess_eta_discharge"),
        "soc_min": weighted("soc_min"),
        "soc_max": weighted("soc_max"),
        "soc_init": weighted("soc_init"),
    }
    return Site(key, hourly, _sort_sessions([s.sessions for s in sites if len(s.sessions)]), sizes)


def convert_dataset(dataset: Path, prefix: str = "citylearn") -> list[Site]:
    """Every included building of ``dataset/schema.json`` and their district, validated, in memory."""
    schema_path = dataset / "schema.json"
    if not schema_path.is_file():
        raise ConversionError(f"{schema_path}: file not found")
    try:
        schema = json.loads(schema_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{schema_path}: cannot be read as JSON: {exc}") from exc
    listed = schema.get("buildings") or {}
    buildings = {n: b for n, b in listed.items() if isinstance(b, dict) and b.get("include", True)}
    if not buildings:
        raise ConversionError(f"{schema_path}: 'buildings' lists no included building")
    ev_defs = schema.get("electric_vehicles_def") or {}
    sites = [convert_building(dataset, n, b, ev_defs, f"{prefix}_{n.lower()}") for n, b in buildings.items()]
    return [*sites, district(sites, f"{prefix}_district", str(schema_path))]


def write_sites(sites: list[Site], out: Path, prefix: str = "citylearn") -> list[Path]:
    """Write every file to a temporary folder beside ``out``, then move them in: all or nothing."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".citylearn-", dir=out))
    try:
        names = []
        for s in sites:
            s.hourly.to_parquet(tmp / f"{s.key}_hourly.parquet", index=False)
            names.append(f"{s.key}_hourly.parquet")
            if len(s.sessions):
                s.sessions.to_parquet(tmp / f"{s.key}_sessions.parquet", index=False)
                names.append(f"{s.key}_sessions.parquet")
        sizes = {s.key: s.sizes for s in sites}
        (tmp / f"{prefix}_sites.json").write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")
        names.append(f"{prefix}_sites.json")
        for name in names:
            os.replace(tmp / name, out / name)
        return [out / n for n in names]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bess_rl.site.citylearn", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="folder with schema.json and the CityLearn CSV files")
    parser.add_argument("out", type=Path, help="folder for the scenario files (e.g. bess_rl/site/data)")
    parser.add_argument("--prefix", default="citylearn", help="key prefix of the written files (default citylearn)")
    args = parser.parse_args(argv)
    try:
        paths = write_sites(convert_dataset(args.dataset, args.prefix), args.out, args.prefix)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

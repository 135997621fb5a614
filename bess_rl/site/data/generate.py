"""Generator of the embedded default scenario (Iquitos mall: PV, mall load, EV charging sessions).

Why this exists: the package ships one ready-to-use site-year (``iquitos_hourly.parquet`` and
``iquitos_sessions.parquet``) so training and tests run without user data. Shipping opaque files would leave
their origin unverifiable; this script regenerates them bit-for-bit from a seed (``tests/test_generate.py``
checks that the shipped files equal a fresh ``generate()``), and every modelling assumption is a named
constant below. The site facts (location, sizes, opening hours) are the named constants; the series are
synthetic, not measurements.

Model, in short:

- PV: pvlib Ineichen clear sky (constant Linke turbidity, so no lookup file is needed) at hour-centred
  timestamps, transposed to a 10 deg north-facing plane, PVWatts-style conversion per kWp (cell-temperature
  derate, system losses, inverter clip), times a seeded cloud factor (daily beta draw plus hourly noise).
- Mall load: a daily shape (HVAC/refrigeration base at night, opening hours 10-22 high) with a mild weekly
  and seasonal pattern and seeded day/hour noise, scaled to the annual energy of the site.
- EV charging: individual vehicles simulated per day (Poisson arrivals on an hourly profile, whole-hour
  dwell cut at closing, energy need a fraction of the battery bounded by socket power x dwell, arrivals
  dropped when every socket of their type is taken), then aggregated into rows of identical
  (arrival, departure, vehicle type) sessions.

Held-out data: ``iquitos_eval`` is the same site and calendar with another seed, so other weather and other
EV sessions: a synthetic year the agents never train on (``scenario.eval_data``).

Run ``python -m bess_rl.site.data.generate [--key iquitos|iquitos_eval] [--seed N] [--out DIR]`` to write a
key's two files (``<key>_hourly.parquet``, ``<key>_sessions.parquet``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pvlib

from bess_rl.site.scenario import HOURS_PER_YEAR, IQUITOS_CO2_KG_PER_KWH

DEFAULT_SEED = 2024
# Embedded data sets and the seed each is generated from (weather and EV sessions both follow the seed).
SEEDS = {"iquitos": DEFAULT_SEED, "iquitos_eval": 2025}


def file_names(key: str) -> tuple[str, str]:
    """(hourly, sessions) file names of an embedded data set key."""
    return f"{key}_hourly.parquet", f"{key}_sessions.parquet"


HOURLY_FILE, SESSIONS_FILE = file_names("iquitos")


# A non-leap year gives exactly 8,760 hours; Lima has no daylight saving time.
YEAR = 2023
TIMEZONE = "America/Lima"
DAYS = HOURS_PER_YEAR // 24

# --- PV -------------------------------------------------------------------------------------------------
LATITUDE = -3.75
LONGITUDE = -73.25
ALTITUDE_M = 104.0
TILT_DEG = 10.0
AZIMUTH_DEG = 0.0  # facing north (the site is south of the equator)
# Clear-sky yield at this turbidity is ~2,045 kWh/kWp; the site's ~8.0 GWh from ~4,050 kWp (~1,975 kWh/kWp)
# leaves room for only a mild cloud factor (mean ~0.96). A higher turbidity would make the target unreachable.
LINKE_TURBIDITY = 3.0
SYSTEM_LOSSES = 0.86  # soiling, wiring, mismatch, inverter efficiency (PVWatts-style lumped factor)
INVERTER_LIMIT_KW_PER_KWP = 0.85  # AC limit per kWp DC (DC/AC ratio ~1.18)
TEMP_COEFF_PER_C = -0.0037  # crystalline silicon power temperature coefficient
AMBIENT_MEAN_C = 26.5
AMBIENT_SWING_C = 4.5  # daily amplitude; warmest at 14:30
# Daily cloud factor ~ Beta(a, b): mostly near-clear days with a tail of overcast ones; plus hourly noise.
CLOUD_BETA_A = 6.0
CLOUD_BETA_B = 0.12
CLOUD_HOURLY_SIGMA = 0.04

# --- Mall load ------------------------------------------------------------------------------------------
ANNUAL_LOAD_KWH = 12.4e6
# Weekday shape in kW before scaling (hour 0..23): HVAC/refrigeration base at night, ramp 8-9 h,
# opening hours 10-22, wind-down after closing.
LOAD_SHAPE_KW = np.array(
    [1010, 995, 985, 975, 970, 975, 990, 1040, 1180, 1410, 1690, 1800,
     1860, 1890, 1910, 1900, 1870, 1850, 1870, 1890, 1860, 1790, 1590, 1230],
    dtype=np.float64,
)  # fmt: skip
# Multiplier on the above-base (opening-hours) part of the load by weekday, Monday=0 .. Sunday=6.
LOAD_WEEKLY = np.array([0.98, 0.98, 0.99, 1.00, 1.03, 1.05, 0.96])
LOAD_SEASONAL_AMPLITUDE = 0.04  # cooling load peaks in the hottest months
LOAD_SEASONAL_PEAK_DAY = 290  # day of year (mid October)
LOAD_DAILY_SIGMA = 0.02
LOAD_HOURLY_SIGMA = 0.015  # innovation of an AR(1) hourly noise
LOAD_HOURLY_PHI = 0.7

# --- EV charging ----------------------------------------------------------------------------------------
# The sockets bound the energy: with ~50% of it in the four evening hours, a day can take at most
# 2 x 272 kW x 4 h = 2,176 kWh even if every socket charged at full power all evening. With 1-4 h stays and
# needs of 50-95% of a battery, the evening saturates near ~470 kWh, so days come out at ~550-1,250 kWh
# (mean ~950), below the ~1,500-2,000 kWh/day quoted by the origin, which ignored the socket limit.
OPEN_HOUR = 9
CLOSE_HOUR = 22  # every vehicle leaves by then; arrivals in hours 9..21
WEEKEND_FACTOR = 0.7
EV_DAILY_SIGMA = 0.10  # day-to-day variation of arrival rates (lognormal sigma)
DWELL_HOURS = np.array([1, 2, 3, 4])
DWELL_PROB = np.array([0.6, 0.25, 0.1, 0.05])  # short top-up stops dominate
NEED_FRACTION = (0.5, 0.95)  # energy need as a fraction of the battery (uniform)
# Relative arrival rate per opening hour 9..21; the evening 18-21 h carries about half the daily energy.
ARRIVAL_PROFILE = np.array(
    [0.30, 0.35, 0.40, 0.50, 0.45, 0.40, 0.40, 0.45, 0.55, 1.00, 1.00, 0.95, 0.80],
)


@dataclass(frozen=True)
class VehicleType:
    """A vehicle class and the sockets reserved for it."""

    name: str
    sockets: int
    power_kw: float
    battery_kwh: float
    peak_arrivals_per_hour: float  # weekday Poisson rate at profile 1.0


VEHICLES = (
    VehicleType("motorbike", sockets=112, power_kw=2.0, battery_kwh=2.0, peak_arrivals_per_hour=78.0),
    VehicleType("mototaxi", sockets=16, power_kw=3.0, battery_kwh=4.0, peak_arrivals_per_hour=11.0),
)


def hourly_timestamps() -> pd.DatetimeIndex:
    """Start of each hour of the scenario year, local time."""
    return pd.date_range(f"{YEAR}-01-01", periods=HOURS_PER_YEAR, freq="h", tz=TIMEZONE, unit="ns")


def clear_sky_poa(times: pd.DatetimeIndex) -> np.ndarray:
    """Clear-sky plane-of-array irradiance (W/m2), evaluated mid-hour so it stands for the hourly mean."""
    centred = times + pd.Timedelta(minutes=30)
    site = pvlib.location.Location(LATITUDE, LONGITUDE, tz=TIMEZONE, altitude=ALTITUDE_M, name="Iquitos")
    sky = site.get_clearsky(centred, model="ineichen", linke_turbidity=LINKE_TURBIDITY)
    sun = site.get_solarposition(centred)
    poa = pvlib.irradiance.get_total_irradiance(
        surface_tilt=TILT_DEG,
        surface_azimuth=AZIMUTH_DEG,
        solar_zenith=sun["apparent_zenith"],
        solar_azimuth=sun["azimuth"],
        dni=sky["dni"],
        ghi=sky["ghi"],
        dhi=sky["dhi"],
    )["poa_global"]
    return np.clip(poa.fillna(0.0).to_numpy(dtype=np.float64), 0.0, None)


def cloud_factor(rng: np.random.Generator) -> np.ndarray:
    """Seeded per-hour transmission factor in [0, 1]: a daily beta draw plus smaller hourly noise."""
    daily = rng.beta(CLOUD_BETA_A, CLOUD_BETA_B, size=DAYS)
    hourly = rng.normal(0.0, CLOUD_HOURLY_SIGMA, size=HOURS_PER_YEAR)
    return np.clip(np.repeat(daily, 24) + hourly, 0.0, 1.0)


def pv_kw_per_kwp(times: pd.DatetimeIndex, rng: np.random.Generator) -> np.ndarray:
    """PVWatts-style AC output per kWp DC (kW/kWp), never negative, clipped at the inverter limit."""
    poa = clear_sky_poa(times) * cloud_factor(rng)
    hour = times.hour.to_numpy() + 0.5
    ambient = AMBIENT_MEAN_C + AMBIENT_SWING_C * np.cos(2 * np.pi * (hour - 14.5) / 24)
    params = pvlib.temperature.TEMPERATURE_MODEL_PARAMETERS["sapm"]["open_rack_glass_polymer"]
    cell = pvlib.temperature.sapm_cell(poa, ambient, 1.0, **params)
    dc = poa / 1000.0 * (1.0 + TEMP_COEFF_PER_C * (cell - 25.0))
    return np.clip(dc * SYSTEM_LOSSES, 0.0, INVERTER_LIMIT_KW_PER_KWP)


def mall_load_kw(times: pd.DatetimeIndex, rng: np.random.Generator) -> np.ndarray:
    """Mall demand without EV charging (kW), scaled to ``ANNUAL_LOAD_KWH``."""
    hour = times.hour.to_numpy()
    weekday = times.day_of_week.to_numpy()
    day_of_year = times.day_of_year.to_numpy()
    base = LOAD_SHAPE_KW.min()
    opening = LOAD_SHAPE_KW[hour] - base
    load = base + opening * LOAD_WEEKLY[weekday]
    load = load * (1 + LOAD_SEASONAL_AMPLITUDE * np.cos(2 * np.pi * (day_of_year - LOAD_SEASONAL_PEAK_DAY) / 365))
    daily = np.repeat(rng.normal(0.0, LOAD_DAILY_SIGMA, size=DAYS), 24)
    innovations = rng.normal(0.0, LOAD_HOURLY_SIGMA, size=HOURS_PER_YEAR)
    ar = np.empty(HOURS_PER_YEAR)
    ar[0] = innovations[0]
    for t in range(1, HOURS_PER_YEAR):
        ar[t] = LOAD_HOURLY_PHI * ar[t - 1] + innovations[t]
    load = np.clip(load * (1 + daily + ar), 0.0, None)
    return load * (ANNUAL_LOAD_KWH / load.sum())


def _simulate_vehicles(times: pd.DatetimeIndex, rng: np.random.Generator) -> pd.DataFrame:
    """One row per charging vehicle: arrival/departure hour index, energy need and vehicle type."""
    weekdays = times.day_of_week.to_numpy()[::24]
    day_factor = np.where(weekdays >= 5, WEEKEND_FACTOR, 1.0) * rng.lognormal(
        -(EV_DAILY_SIGMA**2) / 2, EV_DAILY_SIGMA, size=DAYS
    )
    arrivals: list[np.ndarray] = []
    departures: list[np.ndarray] = []
    needs: list[np.ndarray] = []
    kinds: list[np.ndarray] = []
    for day in range(DAYS):
        for kind, vt in enumerate(VEHICLES):
            leaving = np.zeros(CLOSE_HOUR + 1, dtype=np.int64)
            present = 0
            for slot, hour in enumerate(range(OPEN_HOUR, CLOSE_HOUR)):
                present -= leaving[hour]
                wanted = rng.poisson(vt.peak_arrivals_per_hour * ARRIVAL_PROFILE[slot] * day_factor[day])
                accepted = min(int(wanted), vt.sockets - present)  # arrivals beyond free sockets are dropped
                if accepted <= 0:
                    continue
                dwell = rng.choice(DWELL_HOURS, size=accepted, p=DWELL_PROB)
                leave = np.minimum(hour + dwell, CLOSE_HOUR)
                need = np.minimum(
                    rng.uniform(*NEED_FRACTION, size=accepted) * vt.battery_kwh, vt.power_kw * (leave - hour)
                )
                np.add.at(leaving, leave, 1)
                present += accepted
                arrivals.append(np.full(accepted, day * 24 + hour))
                departures.append(day * 24 + leave)
                needs.append(need)
                kinds.append(np.full(accepted, kind))
    return pd.DataFrame(
        {
            "arrival_hour": np.concatenate(arrivals).astype(np.int64),
            "departure_hour": np.concatenate(departures).astype(np.int64),
            "energy_kwh": np.concatenate(needs),
            "kind": np.concatenate(kinds),
        }
    )


def ev_sessions(times: pd.DatetimeIndex, rng: np.random.Generator) -> pd.DataFrame:
    """Sessions in the scenario schema; identical (arrival, departure, type) vehicles share one row."""
    vehicles = _simulate_vehicles(times, rng)
    rows = (
        vehicles.groupby(["arrival_hour", "departure_hour", "kind"], sort=False)
        .agg(energy_kwh=("energy_kwh", "sum"), count=("energy_kwh", "size"))
        .reset_index()
    )
    power = np.array([vt.power_kw for vt in VEHICLES])
    names = np.array([vt.name for vt in VEHICLES], dtype=object)
    kind = rows["kind"].to_numpy()
    sessions = pd.DataFrame(
        {
            "arrival_hour": rows["arrival_hour"].to_numpy(dtype=np.int64),
            "departure_hour": rows["departure_hour"].to_numpy(dtype=np.int64),
            # Rounded down to whole Wh: smaller files, and a row never exceeds power x dwell.
            "energy_kwh": np.floor(rows["energy_kwh"].to_numpy(dtype=np.float64) * 1000.0) / 1000.0,
            "max_power_kw": rows["count"].to_numpy() * power[kind],
            "count": rows["count"].to_numpy(dtype=np.int64),
            "vehicle": names[kind].astype(str),
        }
    )
    return sessions.sort_values(["arrival_hour", "departure_hour", "vehicle"], ignore_index=True)


def generate(seed: int = DEFAULT_SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (hourly, sessions) frames of the embedded scenario, fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    times = hourly_timestamps()
    hourly = pd.DataFrame(
        {
            "timestamp": times,
            # Rounded (1 mW/kWp, 10 W) so the shipped files stay small; far below the model's accuracy.
            "pv_kw_per_kwp": np.round(pv_kw_per_kwp(times, rng), 6),
            "load_kw": np.round(mall_load_kw(times, rng), 2),
            "co2_kg_per_kwh": np.full(HOURS_PER_YEAR, IQUITOS_CO2_KG_PER_KWH),
        }
    )
    return hourly, ev_sessions(times, rng)


def ev_daily_kwh(sessions: pd.DataFrame, days: int = DAYS) -> np.ndarray:
    """EV energy need per day (kWh), attributed to the day of arrival."""
    day = sessions["arrival_hour"].to_numpy() // 24
    return np.bincount(day, weights=sessions["energy_kwh"].to_numpy(), minlength=days)


def summary(hourly: pd.DataFrame, sessions: pd.DataFrame) -> dict[str, float]:
    """Headline figures of a generated scenario."""
    load = hourly["load_kw"].to_numpy()
    daily = ev_daily_kwh(sessions)
    hour_of_day = sessions["arrival_hour"].to_numpy() % 24
    evening = sessions["energy_kwh"].to_numpy()[(hour_of_day >= 18) & (hour_of_day <= 21)].sum()
    weekend = pd.DatetimeIndex(hourly["timestamp"]).day_of_week.to_numpy()[::24] >= 5
    return {
        "pv_kwh_per_kwp": float(hourly["pv_kw_per_kwp"].sum()),
        "pv_max_kw_per_kwp": float(hourly["pv_kw_per_kwp"].max()),
        "load_gwh": float(load.sum() / 1e6),
        "load_mean_kw": float(load.mean()),
        "load_max_kw": float(load.max()),
        "load_min_kw": float(load.min()),
        "ev_kwh_per_day_mean": float(daily.mean()),
        "ev_kwh_per_day_min": float(daily.min()),
        "ev_kwh_per_day_max": float(daily.max()),
        "ev_evening_share": float(evening / sessions["energy_kwh"].sum()),
        "ev_weekend_to_weekday": float(daily[weekend].mean() / daily[~weekend].mean()),
        "ev_vehicles_per_day": float(sessions["count"].sum() / DAYS),
        "session_rows": float(len(sessions)),
    }


def write(hourly: pd.DataFrame, sessions: pd.DataFrame, out_dir: Path, key: str = "iquitos") -> tuple[Path, Path]:
    """Write both tables as Parquet (no index) into ``out_dir`` under ``key``'s file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hourly_path, sessions_path = (out_dir / name for name in file_names(key))
    hourly.to_parquet(hourly_path, index=False, compression="zstd")
    sessions.to_parquet(sessions_path, index=False, compression="zstd")
    return hourly_path, sessions_path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the embedded Iquitos scenario parquet files.")
    parser.add_argument("--key", choices=sorted(SEEDS), default="iquitos", help="data set to write (default iquitos)")
    parser.add_argument("--seed", type=int, help="random seed (default: the key's, " + str(SEEDS) + ")")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent, help="output folder (default: package data)"
    )
    args = parser.parse_args(argv)
    seed = SEEDS[args.key] if args.seed is None else args.seed
    hourly, sessions = generate(seed)
    paths = write(hourly, sessions, args.out, args.key)
    s = summary(hourly, sessions)
    print(f"seed {seed}: wrote {', '.join(str(p) for p in paths)}")
    print(f"PV      {s['pv_kwh_per_kwp']:.0f} kWh/kWp/yr (max {s['pv_max_kw_per_kwp']:.3f} kW/kWp)")
    print(
        f"load    {s['load_gwh']:.2f} GWh/yr, mean {s['load_mean_kw']:.0f} kW, "
        f"min {s['load_min_kw']:.0f} kW, max {s['load_max_kw']:.0f} kW"
    )
    print(
        f"EV      {s['ev_kwh_per_day_mean']:.0f} kWh/day mean (min {s['ev_kwh_per_day_min']:.0f}, "
        f"max {s['ev_kwh_per_day_max']:.0f}), evening 18-21 h share {s['ev_evening_share']:.0%}, "
        f"weekend/weekday {s['ev_weekend_to_weekday']:.2f}, {s['ev_vehicles_per_day']:.0f} vehicles/day"
    )
    print(f"sessions {int(s['session_rows'])} rows")


if __name__ == "__main__":
    main()

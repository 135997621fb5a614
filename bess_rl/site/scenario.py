"""Scenario data: hourly PV / load / CO2 series and EV charging sessions, with validation.

A scenario is the exogenous input of the site for one year. It is kept apart from the physical
site sizes (``bess_rl.site``) so the same year can be replayed with other PV, battery or charger sizes.

File schema (CSV: comma-separated, UTF-8 with or without BOM, ``.`` decimal point; or Parquet), documented in
the README; a bad cell is named by its line in a CSV file (the header is line 1), by its row in a Parquet file
(the first is row 1):

hourly table, exactly ``hours`` rows (8,760 for a year), one row per hour in time order:
    pv_kw_per_kwp   float >= 0   PV AC output per kWp installed (kW/kWp)
    load_kw         float >= 0   site (mall) demand without EV charging (kW)
    co2_kg_per_kwh  float >= 0   grid carbon intensity (kg CO2/kWh); optional, a constant is used if absent
    price_per_kwh   float >= 0   grid import price (currency/kWh); optional, a flat tariff is used if absent
    timestamp       date-time    start of the hour, local time, never before the row above (with its UTC offset
                                 where that changes, e.g. across DST); optional, only labels plots

sessions table, one row per charging session (a row may stand for several identical vehicles):
    arrival_hour    int          hour index the vehicle plugs in, 0 <= arrival_hour < hours
    departure_hour  int          hour index it leaves (exclusive), arrival_hour < departure_hour <= hours
    energy_kwh      float >= 0   energy it needs before departure (kWh)
    max_power_kw    float > 0    socket power available to it (kW); energy_kwh <= max_power_kw x dwell hours
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

HOURS_PER_YEAR = 8_760
IQUITOS_CO2_KG_PER_KWH = 0.4521
FLAT_TARIFF_PER_KWH = 0.20  # the Iquitos tariff (USD/kWh), used where a scenario has no price column

HOURLY_COLUMNS = ("pv_kw_per_kwp", "load_kw")
SESSION_COLUMNS = ("arrival_hour", "departure_hour", "energy_kwh", "max_power_kw")
# kW or kg/kWh above these are unit mistakes; the float sums of a year of them must not overflow.
MAX_POWER_KW, MAX_CO2 = 1e9, 1e3
# A price per kWh above this is a unit mistake in any currency (the Indonesian rupiah's is ~1,500).
MAX_PRICE = 1e6
# The largest value each column may hold (kW/kWp: 1 is a panel's peak, so 1,000 is a unit mistake).
LIMITS = {
    "pv_kw_per_kwp": 1.0e3,
    "load_kw": MAX_POWER_KW,
    "co2_kg_per_kwh": MAX_CO2,
    "price_per_kwh": MAX_PRICE,
    "energy_kwh": MAX_POWER_KW,
    "max_power_kw": MAX_POWER_KW,
}


class ScenarioError(ValueError):
    """Bad scenario data; the message names the file, column and row."""


@dataclass(frozen=True)
class EvSessions:
    """Charging sessions as parallel arrays; ``departure`` is exclusive."""

    arrival: np.ndarray
    departure: np.ndarray
    energy_kwh: np.ndarray
    max_power_kw: np.ndarray

    def __len__(self) -> int:
        return int(self.arrival.shape[0])


class Peaks(NamedTuple):
    """Largest value of each exogenous series and the most socket power plugged in at once: the scales the
    env divides its observation by."""

    pv_kw_per_kwp: float
    load_kw: float
    co2_kg_per_kwh: float
    price_per_kwh: float
    plugged_kw: float


@dataclass(frozen=True)
class Scenario:
    """One site-year of exogenous data; ``price_per_kwh`` defaults to the flat tariff every hour.

    ``peaks`` are those of the data set the scenario was cut from (``window`` keeps them; its own data's
    otherwise), so the training and the held-out part of one year show a policy the same kW as the same
    number: both are scaled by the year's peaks, the held-out part's among them (one number per feature).
    """

    name: str
    pv_kw_per_kwp: np.ndarray
    load_kw: np.ndarray
    co2_kg_per_kwh: np.ndarray
    sessions: EvSessions
    price_per_kwh: np.ndarray = field(default=None)  # type: ignore[assignment]
    timestamps: np.ndarray | None = None  # datetime64 start of each hour (local), when the data has them
    peaks: Peaks = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.price_per_kwh is None:
            object.__setattr__(self, "price_per_kwh", np.full(self.hours, FLAT_TARIFF_PER_KWH))
        if self.peaks is None:
            ses = self.sessions
            pair_session, pair_hour = session_hours(ses.arrival, ses.departure)
            plugged = np.bincount(pair_hour, weights=ses.max_power_kw[pair_session], minlength=self.hours)
            series = (self.pv_kw_per_kwp, self.load_kw, self.co2_kg_per_kwh, self.price_per_kwh, plugged)
            object.__setattr__(self, "peaks", Peaks(*(float(np.max(x, initial=0.0)) for x in series)))

    @property
    def hours(self) -> int:
        return int(self.load_kw.shape[0])

    @functools.cached_property
    def sessions_by_hour(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per hour, the sessions plugged in (earliest departure first, the order the EV action serves
        them) and those leaving at its end. Worked out once per scenario, not once per env: each of an
        A2C run's 64 env copies would otherwise spend ~10 ms a year on it."""
        ses, n = self.sessions, self.hours
        pair_session, pair_hour = session_hours(ses.arrival, ses.departure)
        active = _group_by_hour(pair_hour, pair_session, ses.departure[pair_session], n)
        return active, _group_by_hour(ses.departure - 1, np.arange(len(ses)), ses.departure, n)

    def window(self, start: int, hours: int) -> Scenario:
        """A shorter scenario (tests, quick runs, the parts of a year): sessions are kept if they lie fully
        inside; the peaks stay those of the whole."""
        if not 0 <= start < start + hours <= self.hours:
            raise ScenarioError(f"window [{start}, {start + hours}) outside the {self.hours}-hour scenario")
        s = self.sessions
        keep = (s.arrival >= start) & (s.departure <= start + hours)
        sessions = EvSessions(
            arrival=s.arrival[keep] - start,
            departure=s.departure[keep] - start,
            energy_kwh=s.energy_kwh[keep],
            max_power_kw=s.max_power_kw[keep],
        )
        sl = slice(start, start + hours)
        return Scenario(
            name=f"{self.name}[{start}:{start + hours}]",
            pv_kw_per_kwp=self.pv_kw_per_kwp[sl],
            load_kw=self.load_kw[sl],
            co2_kg_per_kwh=self.co2_kg_per_kwh[sl],
            sessions=sessions,
            price_per_kwh=self.price_per_kwh[sl],
            timestamps=None if self.timestamps is None else self.timestamps[sl],
            peaks=self.peaks,
        )


def session_hours(arrival: np.ndarray, departure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(session index, hour) of every plugged-in session-hour, vectorised, sessions in order."""
    arrival = np.asarray(arrival, dtype=np.int64)
    dwell = np.asarray(departure, dtype=np.int64) - arrival
    sess = np.repeat(np.arange(arrival.shape[0], dtype=np.int64), dwell)
    starts = np.cumsum(dwell) - dwell  # first row of each session in the expanded arrays
    hour = arrival[sess] + np.arange(sess.shape[0], dtype=np.int64) - starts[sess]
    return sess, hour


def _group_by_hour(hours: np.ndarray, sessions: np.ndarray, order_key: np.ndarray, n_hours: int) -> list:
    """Session indices per hour, each sorted by ``order_key`` (then index)."""
    order = np.lexsort((sessions, order_key, hours))
    hours, sessions = hours[order], sessions[order]
    bounds = np.searchsorted(hours, np.arange(n_hours + 1))
    return [sessions[bounds[t] : bounds[t + 1]] for t in range(n_hours)]


def _read_table(path: Path) -> pd.DataFrame:
    """The file as a frame; a CSV's header names lose surrounding spaces, and its cells are kept as written
    (not pandas' NaN for "n/a" or an empty cell), so a message quotes what is in the file."""
    if not path.exists():
        raise ScenarioError(f"scenario file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, keep_default_na=False).rename(columns=str.strip)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types for a malformed file
        # from None: the message holds the cause already, and one_line would repeat a __cause__.
        raise ScenarioError(f"{path}: cannot be read as {suffix[1:]}: {_first_line(exc)}") from None
    raise ScenarioError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")


def _first_line(exc: BaseException) -> str:
    """pandas' tokenizer errors end in a newline: the scenario error stays one line."""
    return next(iter(str(exc).strip().splitlines()), type(exc).__name__)


def _position(where: str, row: int) -> str:
    """Data row ``row`` (0-based) as the user finds it: its line in a CSV file (the header is line 1), else
    its row (the first is row 1)."""
    return f"line {row + 2}" if where.lower().endswith(".csv") else f"row {row + 1}"


def _cell(df: pd.DataFrame, col: str, row: int) -> str:
    """A cell as the user wrote it (plain Python repr, not numpy's)."""
    value = df[col].iloc[row]
    if isinstance(value, str) and not value.strip():
        return "an empty cell"
    return repr(value.item() if hasattr(value, "item") else value)


def _delimiter_hint(columns: pd.Index) -> str:
    """Why a named column is missing when the header was not split on commas (a ';' or tab export)."""
    for sep, name in ((";", "';'"), ("\t", "tab")):
        if any(sep in str(c) for c in columns):
            return f": the file is {name}-separated, use commas (and a '.' decimal point)"
    return ""


def _numeric_column(df: pd.DataFrame, col: str, where: str) -> np.ndarray:
    """Column as float64 in [0, ``LIMITS[col]``], naming the first bad cell's line in the error."""
    if col not in df.columns:
        found = ", ".join(map(str, df.columns))
        raise ScenarioError(f"{where}: missing column {col!r} (columns found: {found}){_delimiter_hint(df.columns)}")
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    limit = LIMITS.get(col, np.inf)
    for mask, what in (
        (~np.isfinite(values), "not a finite number ({cell})"),
        (values < 0.0, "{value} is below 0.0"),
        (values > limit, f"{{value:g}} is above {limit:g} (a unit mistake?)"),
    ):
        bad = np.flatnonzero(mask)
        if bad.size:
            row = int(bad[0])
            text = what.format(cell=_cell(df, col, row), value=values[row])
            raise ScenarioError(f"{where}: column {col!r} {_position(where, row)}: {text}")
    return values


def hourly_from_frame(
    df: pd.DataFrame, where: str, hours: int, default_co2: float, default_price: float = FLAT_TARIFF_PER_KWH
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated (pv_kw_per_kwp, load_kw, co2_kg_per_kwh, price_per_kwh) arrays from an hourly table."""
    if len(df) != hours:
        raise ScenarioError(
            f"{where}: has {len(df)} rows, expected {hours} (one per hour): "
            f"scenario.hours={len(df)} takes a file of that length"
        )
    pv = _numeric_column(df, "pv_kw_per_kwp", where)
    load = _numeric_column(df, "load_kw", where)
    optional = {}
    for col, default in (("co2_kg_per_kwh", default_co2), ("price_per_kwh", default_price)):
        optional[col] = _numeric_column(df, col, where) if col in df.columns else np.full(hours, float(default))
    return pv, load, optional["co2_kg_per_kwh"], optional["price_per_kwh"]


def sessions_from_frame(df: pd.DataFrame, where: str, hours: int) -> EvSessions:
    """Validated sessions; every session must be physically servable within its stay."""
    arr = _numeric_column(df, "arrival_hour", where)
    dep = _numeric_column(df, "departure_hour", where)
    energy = _numeric_column(df, "energy_kwh", where)
    power = _numeric_column(df, "max_power_kw", where)
    checks = [
        ("arrival_hour", arr != np.round(arr), "is not a whole hour"),
        ("departure_hour", dep != np.round(dep), "is not a whole hour"),
        ("arrival_hour", arr >= hours, f"is past the last hour {hours - 1}"),
        ("departure_hour", dep <= arr, "is not after arrival_hour"),
        ("departure_hour", dep > hours, f"is past the end of the scenario ({hours})"),
        ("max_power_kw", power <= 0, "must be > 0"),
        ("energy_kwh", energy > power * (dep - arr) + 1e-9, "exceeds max_power_kw x (departure - arrival)"),
    ]
    for col, mask, what in checks:
        bad = np.flatnonzero(mask)
        if bad.size:
            row = int(bad[0])
            raise ScenarioError(f"{where}: column {col!r} {_position(where, row)}: {_cell(df, col, row)} {what}")
    return EvSessions(arr.astype(np.int64), dep.astype(np.int64), energy, power)


def load_scenario(
    hourly_path: str | Path,
    sessions_path: str | Path | None = None,
    name: str | None = None,
    hours: int | None = HOURS_PER_YEAR,
    co2_kg_per_kwh: float = IQUITOS_CO2_KG_PER_KWH,
    price_per_kwh: float = FLAT_TARIFF_PER_KWH,
) -> Scenario:
    """Load a user scenario from CSV/Parquet files (schema in this module's docstring); ``hours=None``
    takes the hourly file's length (embedded data sets know their own)."""
    hourly_path = Path(hourly_path)
    table = _read_table(hourly_path)
    hours = len(table) if hours is None else hours
    pv, load, co2, price = hourly_from_frame(table, str(hourly_path), hours, co2_kg_per_kwh, price_per_kwh)
    if sessions_path is None:
        sessions = EvSessions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    else:
        sessions_path = Path(sessions_path)
        sessions = sessions_from_frame(_read_table(sessions_path), str(sessions_path), hours)
    return Scenario(name or hourly_path.stem, pv, load, co2, sessions, price, _timestamps(table, str(hourly_path)))


def _timestamps(df: pd.DataFrame, where: str) -> np.ndarray | None:
    """The optional ``timestamp`` column as local wall-clock datetime64 (plots label hours with it).

    Ordered as UTC instants, so a UTC offset that changes across a DST switch is read (pandas parses mixed
    offsets only as UTC); equal times pass, as a local hour repeated at the switch without offsets does.
    """
    if "timestamp" not in df.columns:
        return None
    column = df["timestamp"]
    instants = pd.to_datetime(column, errors="coerce", utc=True)
    bad = np.flatnonzero(instants.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        at = _position(where, row)
        raise ScenarioError(f"{where}: column 'timestamp' {at}: not a date-time ({_cell(df, 'timestamp', row)})")
    if not instants.is_monotonic_increasing:
        row = int(np.flatnonzero(instants.diff().to_numpy() < np.timedelta64(0))[0])
        raise ScenarioError(
            f"{where}: column 'timestamp' {_position(where, row)}: {_cell(df, 'timestamp', row)} is before "
            f"{_cell(df, 'timestamp', row - 1)} above it: the rows must be in time order, one per hour"
        )
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        local = column.dt.tz_localize(None)
    elif pd.api.types.is_datetime64_dtype(column.dtype):
        local = column
    else:  # text: each time in its own row's offset (one pd.to_datetime cannot keep several)
        local = column.map(lambda value: pd.Timestamp(value).tz_localize(None))
    return local.to_numpy(dtype="datetime64[ns]")


def default_data_dir() -> Path:
    return Path(__file__).resolve().parent / "data"


def embedded_keys() -> list[str]:
    """Data sets shipped in the package: ``<key>_hourly.parquet`` (+ ``<key>_sessions.parquet``)."""
    return sorted(p.name.removesuffix("_hourly.parquet") for p in default_data_dir().glob("*_hourly.parquet"))


_PART = re.compile(r"(?P<key>[^\[\]]+?)(?:\[(?P<start>\d*):(?P<end>\d*)\])?")


def embedded_part(key: str) -> tuple[str, int | None, int | None]:
    """``KEY`` or ``KEY[start:end]`` as (data set, start, end): start None for the whole data set, end None
    for "to its end". Parsed without reading the data, so configs can compare parts before loading them."""
    part = _PART.fullmatch(key.strip())
    if part is None:
        raise ScenarioError(f"embedded data set {key!r}: expected KEY or KEY[start:end]")
    if part["start"] is None:
        return part["key"], None, None
    return part["key"], int(part["start"] or 0), int(part["end"]) if part["end"] else None


def embedded_scenario(
    key: str,
    co2_kg_per_kwh: float = IQUITOS_CO2_KG_PER_KWH,
    name: str | None = None,
    price_per_kwh: float = FLAT_TARIFF_PER_KWH,
) -> Scenario:
    """An embedded data set by key (``scenario.data``), e.g. "iquitos", or hours of it: "key[start:end]"
    (Python slice of hour indices), so training and evaluation parts of one year need no copies of it."""
    data_set, start, end = embedded_part(key)
    d = default_data_dir()
    hourly = d / f"{data_set}_hourly.parquet"
    if not hourly.is_file():
        raise ScenarioError(f"no embedded data set {data_set!r}; embedded: {', '.join(embedded_keys())}")
    sessions = d / f"{data_set}_sessions.parquet"
    sessions_path = sessions if sessions.is_file() else None
    sc = load_scenario(hourly, sessions_path, name or data_set, None, co2_kg_per_kwh, price_per_kwh)
    if start is None:
        return sc
    end = sc.hours if end is None else end
    return sc.window(start, end - start)  # named "<name>[start:end]"


def default_scenario(co2_kg_per_kwh: float = IQUITOS_CO2_KG_PER_KWH) -> Scenario:
    """The embedded Iquitos scenario shipped in the package (made by ``python -m bess_rl.site.data.generate``)."""
    return embedded_scenario("iquitos", co2_kg_per_kwh)

"""Reference controllers every agent is judged against, computed on the evaluation env.

Uncontrolled charging is the baseline of the reduction %; the battery rule and the smart-charging
rule are what a site engineer would deploy without optimisation, the MPC (perfect and persistence
forecasts) what an energy engineer would deploy instead of RL; the LP optimum is a lower bound that
the env's earliest-departure-first EV split can make unreachable, and ``lp_achievable`` is its plan
run through the env. Every figure is given as CO2 and as penalised kg (CO2 + penalty x EV unmet),
which is what the tables rank by.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import scipy
from rich.console import Group
from rich.table import Table

import bess_rl.site
from bess_rl.baselines.episode import EpisodeResult, run_episode
from bess_rl.baselines.kpis import curtailed_pv_kw, kpis
from bess_rl.baselines.mpc import MpcSettings, lp_achievable, run_mpc
from bess_rl.baselines.optimum import OptimumResult, solve_optimum
from bess_rl.baselines.rules import RuleBased, uncontrolled
from bess_rl.baselines.smart import SmartCharging
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import penalised_kg

# What makes a result say little about control (``degenerate``: metrics.json's flags and the tables' notes).
# CO2 within this share of uncontrolled charging's, with the battery idle: the policy learned nothing.
SAME_AS_UNCONTROLLED = 1e-6
# Fewer equivalent full battery cycles than this per evaluated day: the battery was never used.
BATTERY_UNUSED_CYCLES_PER_DAY = 5e-4
# More than this share of the EV demand left unmet (the LP leaves none where the site allows).
EV_UNMET_SHARE = 0.01
# References by env fingerprint and MPC settings: every trial of a sweep (and the training and evaluation
# parts of every run of it) would otherwise re-solve the same LP and MPC years.
_COMPUTED: OrderedDict[tuple[Any, ...], References] = OrderedDict()
_KEEP = 8
# On disk (``compute_references``'s ``cache_dir``) for other processes: a sweep's trials in worker
# processes, a resumed run and ``evaluate`` would otherwise re-solve years another process solved.
CACHE_FORMAT = 1
EPISODES = ("uncontrolled", "rule_based", "smart_rule", "mpc_perfect", "mpc_persistence", "lp_achievable")
PLAIN_FIELDS = ("optimum_kpis", "penalty_kg_per_kwh", "seconds", "cpu_seconds")  # JSON as they are
UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)

log = logging.getLogger(__name__)


@dataclass
class References:
    """Every reference's episode on the evaluation env, and the LP bound with the KPIs of its plan."""

    uncontrolled: EpisodeResult
    rule_based: EpisodeResult
    smart_rule: EpisodeResult
    mpc_perfect: EpisodeResult
    mpc_persistence: EpisodeResult
    lp_achievable: EpisodeResult
    optimum: OptimumResult
    optimum_kpis: dict[str, float]
    penalty_kg_per_kwh: float
    # Wall and CPU seconds each took (CPU time is what a busy shared machine does not inflate).
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def optimum_co2_kg(self) -> float:
        return self.optimum.co2_kg

    @property
    def optimum_unmet_kwh(self) -> float:
        return self.optimum.ev_energy_unmet_kwh

    def _row(self, name: str, co2: float, served: float, unmet: float, kpi: dict[str, float]) -> dict[str, float]:
        penalised = penalised_kg(co2, unmet, self.penalty_kg_per_kwh)
        timing = {"seconds": self.seconds.get(name, 0.0), "cpu_seconds": self.cpu_seconds.get(name, 0.0)}
        energy = {"ev_served_kwh": served, "ev_unmet_kwh": unmet}
        return {"co2_kg": co2, "penalised_kg": penalised, **energy, **kpi, **timing}

    def table(self) -> dict[str, dict[str, float]]:
        """Reference name -> CO2 kg, penalised kg, EV unmet kWh, KPIs and the seconds it took."""
        rows = {}
        for name in ("uncontrolled", "rule_based", "smart_rule", "mpc_perfect", "mpc_persistence"):
            r: EpisodeResult = getattr(self, name)
            rows[name] = self._row(name, r.co2_kg, r.ev_served_kwh, r.ev_unmet_kwh, r.kpis())
        opt = self.optimum
        rows["lp_optimum"] = self._row(
            "lp_optimum", opt.co2_kg, opt.ev_energy_served_kwh, opt.ev_energy_unmet_kwh, self.optimum_kpis
        )
        r = self.lp_achievable
        rows["lp_achievable"] = self._row("lp_achievable", r.co2_kg, r.ev_served_kwh, r.ev_unmet_kwh, r.kpis())
        return rows


def _plan_kpis(env: PvBessEvEnv, opt: OptimumResult) -> dict[str, float]:
    """KPIs of the LP plan itself (it curtails what its balance leaves over)."""
    demand = env.load_kw + opt.ev_power_kw
    surplus = np.maximum(opt.grid_import_kw - (demand + opt.bess_power_kw - env.pv_kw), 0.0)
    curtailed = curtailed_pv_kw(env.pv_kw, demand, opt.bess_power_kw, surplus)
    price = env.scenario.price_per_kwh
    return kpis(opt.grid_import_kw, opt.bess_power_kw, curtailed, env.pv_kw, price, env.site.bess_capacity_kwh)


def compute_references(env: PvBessEvEnv, mpc: MpcSettings | None = None, cache_dir: Path | None = None) -> References:
    """Every reference on the evaluation env's scenario (see module doc); ``mpc`` sets the MPC's horizon.
    An env with the same fingerprint and settings gets the references computed before in this process,
    or with ``cache_dir`` in any process by the same code (they are deterministic; ``seconds`` are those
    of the computation)."""
    if env.random_start or env.episode_hours != env.scenario.hours:
        # The LP plans the whole scenario: an episode of part of it would be compared with a bound of more hours.
        raise ValueError(
            f"references need an env that runs its whole scenario from hour 0 (episode_hours=None, "
            f"random_start=False), not {env.episode_hours} of its {env.scenario.hours} hours"
            + (" from a random start" if env.random_start else "")
        )
    mpc = mpc or MpcSettings()
    key = (env.fingerprint(), *astuple(mpc))
    on_disk = None if cache_dir is None else cache_file(cache_dir, key)
    if key not in _COMPUTED:
        _COMPUTED[key] = _compute(env, mpc) if on_disk is None else _through_cache(env, mpc, on_disk)
        while len(_COMPUTED) > _KEEP:
            _COMPUTED.popitem(last=False)
    elif on_disk is not None and not on_disk.is_file():  # computed here for another cache (or none)
        _write(_COMPUTED[key], on_disk)
    _COMPUTED.move_to_end(key)
    return _COMPUTED[key]


@functools.cache
def code_version() -> str:
    """sha256 of the code that computes references (this package and the site model) and of the numpy
    and scipy releases it runs on: a result cached by other code is never reused."""
    digest = hashlib.sha256(f"{CACHE_FORMAT} numpy {np.__version__} scipy {scipy.__version__}".encode())
    for package in (Path(__file__).parent, Path(bess_rl.site.__file__).parent):
        for source in sorted(package.glob("*.py")):
            digest.update(source.read_bytes())
    return digest.hexdigest()


def cache_file(cache_dir: Path, key: tuple[Any, ...]) -> Path:
    """Where the references of ``key`` (env fingerprint, MPC settings) computed by this code are cached."""
    name = hashlib.sha256(repr((key, code_version())).encode()).hexdigest()[:32]
    return cache_dir / "references" / f"{name}.npz"


def _through_cache(env: PvBessEvEnv, mpc: MpcSettings, path: Path) -> References:
    """The references read from ``path``, or computed and written there; a cache that cannot be read is
    recomputed, one that cannot be written only warns (the run goes on)."""
    if path.is_file():
        try:
            refs = load_references(path)
        except UNREADABLE as exc:
            log.warning("recomputing the references: the cached %s cannot be read (%s)", path, exc)
        else:
            log.info("references from the cache: %s", path)
            return refs
    refs = _compute(env, mpc)
    _write(refs, path)
    return refs


def _write(refs: References, path: Path) -> None:
    try:
        save_references(refs, path)
    except OSError as exc:
        log.warning("references not cached: %s", exc)


def save_references(refs: References, path: Path) -> None:
    """``refs`` as one ``.npz`` of arrays and a JSON string (no pickle), written whole or not at all."""
    plan = {f.name: getattr(refs.optimum, f.name) for f in fields(refs.optimum)}
    arrays = {f"{name}.{k}": v for name in EPISODES for k, v in getattr(refs, name).trace.items()}
    arrays |= {f"optimum.{k}": v for k, v in plan.items() if isinstance(v, np.ndarray)}
    scalars: dict[str, Any] = {name: getattr(refs, name).summary() for name in EPISODES}
    scalars["optimum"] = {k: v for k, v in plan.items() if not isinstance(v, np.ndarray)}
    scalars |= {name: getattr(refs, name) for name in PLAIN_FIELDS}
    arrays["scalars"] = np.array(json.dumps(scalars, default=lambda x: x.item()))  # numpy scalars, exactly
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # concurrent writers of one key write equal files: the last one stays
    finally:
        tmp.unlink(missing_ok=True)


def load_references(path: Path) -> References:
    """What ``save_references`` wrote, read without unpickling anything."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    scalars = json.loads(str(arrays.pop("scalars")))

    def part(prefix: str) -> dict[str, np.ndarray]:
        return {k.split(".", 1)[1]: v for k, v in arrays.items() if k.split(".", 1)[0] == prefix}

    episodes = {name: EpisodeResult(**scalars[name], trace=part(name)) for name in EPISODES}
    extra = {name: scalars[name] for name in PLAIN_FIELDS}
    return References(**episodes, optimum=OptimumResult(**scalars["optimum"], **part("optimum")), **extra)


def _compute(env: PvBessEvEnv, mpc: MpcSettings) -> References:
    # Solving takes tens of seconds on a year: say so before, and how long it took after.
    scenario = env.scenario
    since = "" if scenario.timestamps is None else f" from {np.datetime_as_string(scenario.timestamps[0], unit='D')}"
    log.info(
        "solving the references on %s (%d hours%s): LP optimum, rules, MPC (perfect, persistence), the LP plan",
        scenario.name,
        scenario.hours,
        since,
    )
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}

    def timed(name: str, job: Callable[[], Any]) -> Any:
        start, cpu = time.perf_counter(), time.process_time()
        out = job()
        seconds[name], cpu_seconds[name] = time.perf_counter() - start, time.process_time() - cpu
        return out

    opt = timed("lp_optimum", lambda: solve_optimum(env.scenario, env.site))
    refs = References(
        uncontrolled=timed("uncontrolled", lambda: run_episode(env, uncontrolled)),
        rule_based=timed("rule_based", lambda: run_episode(env, RuleBased())),
        smart_rule=timed("smart_rule", lambda: run_episode(env, SmartCharging())),
        mpc_perfect=timed("mpc_perfect", lambda: run_mpc(env, "perfect", mpc)),
        mpc_persistence=timed("mpc_persistence", lambda: run_mpc(env, "persistence", mpc)),
        lp_achievable=timed("lp_achievable", lambda: lp_achievable(env, opt)),
        optimum=opt,
        optimum_kpis=_plan_kpis(env, opt),
        penalty_kg_per_kwh=env.site.unmet_penalty_kg_per_kwh,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
    )
    log.info("references solved in %.1f s", sum(seconds.values()))
    return refs


def degenerate(row: Mapping[str, Any], base: Mapping[str, Any], hours: int) -> list[str]:
    """Why a controller's result says little, one short phrase each (none: a controller worth reporting),
    from its row (``References.table``, or a run's metrics) and uncontrolled charging's over ``hours``;
    a row without a figure is not judged on it."""
    flags = []
    cycles = row.get("battery_cycles")
    unused = cycles is not None and cycles < BATTERY_UNUSED_CYCLES_PER_DAY * max(hours / 24, 1.0)
    if unused and abs(row["co2_kg"] - base["co2_kg"]) <= SAME_AS_UNCONTROLLED * max(base["co2_kg"], 1.0):
        flags.append("same as uncontrolled charging")
    elif unused:
        flags.append("battery never used")
    unmet = row["ev_unmet_kwh"]
    demand = row.get("ev_served_kwh", 0.0) + unmet
    if demand > 0 and unmet > EV_UNMET_SHARE * demand:
        flags.append(f"EV energy left unmet: {unmet:,.0f} kWh ({100 * unmet / demand:.1f}% of the EV demand)")
    return flags


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "—" if value is None else format(value, spec) + unit


def co2_table(rows: dict[str, dict[str, Any]], hours: int) -> Group:
    """Controllers (name -> ``References.table`` row) ranked by penalised kg, with their penalised reduction
    against "uncontrolled" (positive: less, the sign of every reduction the run prints and writes): the CO2
    table, then the KPI table in the same order (two, so each fits a terminal)."""
    base = rows["uncontrolled"]
    ref = base["penalised_kg"]
    ranked = sorted(rows.items(), key=lambda item: item[1]["penalised_kg"])
    co2 = Table(title=f"Grid CO2 over the {hours} h evaluated (deterministic policy), best first")
    for col in ("controller", "penalised kg", "reduction", "CO2 kg", "EV unmet kWh", "note"):
        co2.add_column(col, justify="left" if col in ("controller", "note") else "right", no_wrap=col == "controller")
    kpi = Table(title="KPIs, same order")
    for col in ("controller", "cost", "peak import kW", "PV self-use", "PV curtailed kWh", "battery cycles"):
        kpi.add_column(col, justify="left" if col == "controller" else "right", no_wrap=col == "controller")
    for name, row in ranked:
        co2.add_row(
            name,
            f"{row['penalised_kg']:,.0f}",
            f"{100 * (ref - row['penalised_kg']) / ref:+.2f}%" if ref else "n/a",  # a grid with no CO2 at all
            f"{row['co2_kg']:,.0f}",
            f"{row['ev_unmet_kwh']:,.1f}",
            "" if name == "uncontrolled" else ", ".join(degenerate(row, base, hours)),
        )
        kpi.add_row(
            name,
            _fmt(row.get("cost"), ",.0f"),
            _fmt(row.get("peak_import_kw"), ",.0f"),
            _fmt(row.get("pv_self_consumption_pct"), ".1f", "%"),
            _fmt(row.get("curtailed_pv_kwh"), ",.0f"),
            _fmt(row.get("battery_cycles"), ",.1f"),
        )
    return Group(co2, kpi)

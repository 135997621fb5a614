"""Bad inputs and the one line each must give, as data: a new fault is one more row.

Each row: the overrides (added to tests.helpers.COMMON) and a part of the expected message. Rows that need a
scenario file name one of the files ``write_files`` puts in a temporary folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

FILES = Path(tempfile.gettempdir()) / "bess_rl_fault_files"  # written by ``write_files`` before the table runs
HOURLY_OK = FILES / "hourly_ok.csv"
HOURLY_HUGE = FILES / "hourly_huge.csv"
HOURLY_ZERO_CO2 = FILES / "hourly_zero_co2.csv"
HOURLY_DUPLICATE = FILES / "hourly_duplicate.csv"
HOURLY_BOM_DUPLICATE = FILES / "hourly_bom_duplicate.csv"
HOURLY_SEMICOLON = FILES / "hourly_semicolon.csv"
HOURLY_BACKWARDS = FILES / "hourly_backwards.csv"
SESSIONS = FILES / "sessions.csv"


def write_files() -> None:
    """A 168-hour scenario, and the same with a unit mistake, no CO2 at all, a repeated column (also behind
    Excel's UTF-8 BOM), ';' for commas and a timestamp that goes back."""
    FILES.mkdir(parents=True, exist_ok=True)
    rows = [f"{0.5 if 8 <= h % 24 < 17 else 0.0},{1000 + h % 24}" for h in range(168)]
    HOURLY_OK.write_text("\n".join(["pv_kw_per_kwp,load_kw", *rows]) + "\n")
    HOURLY_HUGE.write_text("\n".join(["pv_kw_per_kwp,load_kw", "0.1,1e300", *rows[1:]]) + "\n")
    HOURLY_ZERO_CO2.write_text("\n".join(["pv_kw_per_kwp,load_kw,co2_kg_per_kwh", *(r + ",0" for r in rows)]) + "\n")
    HOURLY_DUPLICATE.write_text("\n".join(["pv_kw_per_kwp,load_kw,load_kw", *(r + ",5" for r in rows)]) + "\n")
    bom_header = "\ufeffpv_kw_per_kwp,load_kw,pv_kw_per_kwp"
    HOURLY_BOM_DUPLICATE.write_text("\n".join([bom_header, *(r + ",0.9" for r in rows)]) + "\n", encoding="utf-8")
    HOURLY_SEMICOLON.write_text("\n".join(["pv_kw_per_kwp;load_kw", *(r.replace(",", ";") for r in rows)]) + "\n")
    times = [f"2024-03-{1 + h // 24:02d} {h % 24:02d}:00" for h in range(168)]
    times[9] = times[3]  # a copied block: line 11 goes back to 03:00
    stamped = (f"{t},{r}" for t, r in zip(times, rows, strict=True))
    HOURLY_BACKWARDS.write_text("\n".join(["timestamp,pv_kw_per_kwp,load_kw", *stamped]) + "\n")
    SESSIONS.write_text("arrival_hour,departure_hour,energy_kwh,max_power_kw\n10,12,20,50\n")


FILE = ["scenario.hours=168", "scenario.window_hours=null"]
BAD_INPUTS: list[tuple[list[str], str]] = [
    # 9: silently ignored or accepted
    ([f"scenario.sessions_path={SESSIONS}"], "scenario.sessions_path needs scenario.hourly_path"),
    (["agent.hparams.gamma=2"], "agent.hparams.gamma must be a number in (0, 1]"),
    (["agent=ppo", "agent.hparams.clip_range=-1"], "agent.hparams.clip_range must be a number in (0, inf)"),
    (["agent=ppo", "agent.hparams.ent_coef=-1"], "agent.hparams.ent_coef must be a number in [0, inf)"),
    (["agent.hparams.ent_coef=-1"], "agent.hparams.ent_coef must be a number in [0, inf)"),
    (["checkpoint_every_steps=1.5"], "checkpoint_every_steps must be a whole number"),
    (["scenario.hours=100"], "scenario.hours=100 applies to scenario files"),
    ([f"scenario.hourly_path={HOURLY_DUPLICATE}", *FILE], "column 'load_kw' appears more than once"),
    (["scenario.forecast_hours=10000"], "scenario.forecast_hours must be <= 168"),
    # 10: tracebacks before
    (["seed=-1"], "seed must be in [0, 4294967295]"),
    (["seed=4294967296"], "seed must be in [0, 4294967295]"),
    (["site.pv_kwp=nan"], "site.pv_kwp must be a finite number"),
    (["site.bess_capacity_kwh=inf"], "site.bess_capacity_kwh must be a finite number"),
    (["scenario.co2_kg_per_kwh=-1"], "scenario.co2_kg_per_kwh must be a number in [0, 1000]"),
    (["scenario.co2_kg_per_kwh=nan"], "scenario.co2_kg_per_kwh must be a number in [0, 1000]"),
    ([f"scenario.hourly_path={HOURLY_HUGE}", *FILE], "'load_kw' line 2: 1e+300 is above 1e+09"),
    (["checkpoint_every_steps=abc"], "checkpoint_every_steps must be a whole number"),
    (["agent.hparams.ent_coef=banana"], "agent.hparams.ent_coef must be auto, auto_<initial value> or a number"),
    (["agent=ppo", "agent.hparams.ent_coef=banana"], "agent.hparams.ent_coef"),
    (["agent.algo=collections.OrderedDict"], "agent.algo 'collections.OrderedDict' is not allowed"),
    (["agent.algo=stable_baselines3.common.utils.Schedule"], "is not a Stable-Baselines3 algorithm class"),
    (["agent.hparams.learning_rate=nan"], "agent.hparams.learning_rate must be a number in (0, inf)"),
    (["agent.hparams.tau=0"], "agent.hparams.tau must be a number in (0, 1]"),
    # 11: NaN, inf and out-of-range floats: tracebacks, misleading messages or accepted
    (["scenario.price_per_kwh=nan"], "scenario.price_per_kwh must be a number in [0, 1e+06]"),
    (["scenario.price_per_kwh=inf"], "scenario.price_per_kwh must be a number in [0, 1e+06]"),
    (["scenario.price_per_kwh=-1"], "scenario.price_per_kwh must be a number in [0, 1e+06]"),
    (["scenario.forecast_noise=inf"], "scenario.forecast_noise must be a number in [0, inf)"),
    (["hardware.memory_budget_gb=nan"], "hardware.memory_budget_gb must be a number in (0, inf) (or null)"),
    (["hardware.heap_keep_mb=-1"], "hardware.heap_keep_mb must be in [0, 2047] (or null)"),
    (["hardware.heap_keep_mb=4096"], "hardware.heap_keep_mb must be in [0, 2047] (or null)"),
    (["warn_hours=nan"], "warn_hours must be a number in (0, inf) (or null)"),
    (["warn_hours=abc"], "warn_hours must be a number in (0, inf) (or null)"),
    (["log_every_steps=1.5"], "log_every_steps must be a whole number of steps > 0"),
    (["eval_every_steps=abc"], "eval_every_steps must be a whole number of steps > 0"),
    (["objective=123"], "objective must be a metric's name or a list of them"),
    (["agent.hparams.target_entropy=abc"], "agent.hparams.target_entropy must be auto or a finite number"),
    (["agent.hparams.ent_coef=auto_0"], "agent.hparams.ent_coef auto_0: the initial value must be a finite number > 0"),
    (["site.pv_kwp=1e308"], "site.pv_kwp must be at most 1e+06 kWp"),
    (["site.bess_capacity_kwh=1e7"], "site.bess_capacity_kwh must be at most 1e+06 kWh"),
    (["site.unmet_penalty_kg_per_kwh=nan"], "site.unmet_penalty_kg_per_kwh must be a finite number"),
    # 12: a population member's values, checked as the agent's
    (["population.size=2", "population.gamma=[0.5,7]"], "population.gamma[1] must be a number in (0, 1]"),
    (["population.size=2", "population.learning_rate=[-1,1e-3]"], "population.learning_rate[0] must be a number"),
    (["population.size=2", "population.tau=[0.5,nan]"], "population.tau[1] must be a number in (0, 1]"),
    (["population.size=2", "population.target_entropy=[-2,nan]"], "population.target_entropy[1] must be auto or a"),
    (["population.size=2", "population.seeds=[1,-1]"], "population.seeds[1] must be in [0, 4294967295]"),
    (["population.learning_rate=[1e-3]"], "population.learning_rate is read only when population.size > 1: set agent"),
    # 13: an evaluation part that is not held out
    (
        ["scenario=citylearn_b5", 'scenario.eval_data="citylearn_building_5[0:2000]"'],
        "shares hours citylearn_building_5[0:168]",
    ),
    (['scenario.eval_data="iquitos[100:300]"'], "shares hours iquitos[100:168] with the training part 'iquitos'"),
    (
        [f"scenario.hourly_path={HOURLY_OK}", f"scenario.eval_hourly_path={HOURLY_OK}", *FILE],
        "holds the same data as the training part scenario.hourly_path",
    ),
    # 14: scenario files (the evaluation part's checked as the training part's), as a user writes them
    (
        [f"scenario.hourly_path={HOURLY_OK}", f"scenario.eval_hourly_path={HOURLY_DUPLICATE}", *FILE],
        f"scenario.eval_hourly_path {HOURLY_DUPLICATE}: column 'load_kw' appears more than once",
    ),
    (
        [f"scenario.hourly_path={HOURLY_OK}", f"scenario.eval_hourly_path={HOURLY_HUGE}", *FILE],
        f"{HOURLY_HUGE}: column 'load_kw' line 2: 1e+300 is above 1e+09",
    ),
    (
        [f"scenario.hourly_path={HOURLY_OK}", f"scenario.eval_sessions_path={FILES / 'nope.csv'}", *FILE],
        "scenario.eval_sessions_path needs scenario.eval_hourly_path",
    ),
    ([f"scenario.hourly_path={HOURLY_BOM_DUPLICATE}", *FILE], "column 'pv_kw_per_kwp' appears more than once"),
    ([f"scenario.hourly_path={HOURLY_SEMICOLON}", *FILE], "the file is ';'-separated, use commas"),
    (
        [f"scenario.hourly_path={HOURLY_BACKWARDS}", *FILE],
        "column 'timestamp' line 11: '2024-03-01 03:00' is before '2024-03-01 08:00' above it",
    ),
    (
        [f"scenario.hourly_path={HOURLY_OK}", "scenario.hours=8784", "scenario.window_hours=null"],
        "has 168 rows, expected 8784 (one per hour): scenario.hours=168 takes a file of that length",
    ),
]

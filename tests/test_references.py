"""The three references order as physics demands: LP optimum <= rule-based <= uncontrolled; they are
reused in this process and, through the disk cache, in others."""

from __future__ import annotations

import dataclasses
import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bess_rl.baselines import references
from bess_rl.baselines.episode import run_episode
from bess_rl.baselines.mpc import Mpc, MpcSettings
from bess_rl.baselines.optimum import LpError
from bess_rl.baselines.references import EPISODES, References, cache_file, compute_references, load_references
from bess_rl.experiment.build import build_eval_env, build_references
from bess_rl.site.env import PvBessEvEnv
from bess_rl.site.params import penalised_kg
from bess_rl.tools import references as command
from tests.helpers import SMALL_SITE, compose_cfg, make_scenario


@pytest.mark.slow  # every reference on the whole default year
def test_ordering_on_the_default_year():
    env = PvBessEvEnv()
    # The MPC re-plans once a day here (365 solves per forecast, not 2,190): a year of its default
    # 4-hourly re-planning costs ~20 s, and MPC settings are checked on shorter data in test_baselines.
    refs = compute_references(env, MpcSettings(horizon_hours=24, every_hours=24))
    unc, rbc, lp = refs.uncontrolled.co2_kg, refs.rule_based.co2_kg, refs.optimum_co2_kg
    # HiGHS stops within its optimality tolerance, so allow a part in 10^7 on ~3,000 t.
    assert lp <= rbc * (1 + 1e-7)
    assert rbc < unc
    assert refs.uncontrolled.hours == 8_760
    for r in (refs.uncontrolled, refs.rule_based):
        assert r.ev_unmet_kwh == pytest.approx(0.0, abs=1e-6)
    assert refs.optimum_unmet_kwh == pytest.approx(0.0, abs=1e-6)
    # Every other reference is an env episode: above the LP bound, every car served.
    for name, row in refs.table().items():
        assert row["penalised_kg"] >= lp * (1 - 1e-7), name
        assert row["ev_unmet_kwh"] == pytest.approx(0.0, abs=1e-6), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ordering_when_the_battery_is_small(site, seed):
    """A small battery fills early: EV shifting then matters and the LP strictly beats the RBC."""
    small = type(site)(pv_kwp=3_000.0, bess_capacity_kwh=200.0, bess_power_kw=100.0)
    env = PvBessEvEnv(make_scenario(days=3, seed=seed), small)
    refs = compute_references(env)
    assert refs.optimum_co2_kg < refs.rule_based.co2_kg < refs.uncontrolled.co2_kg


def test_lp_stays_a_lower_bound_under_an_import_cap(site):
    """The env cuts charging to the cap; the LP with the same cap must still be below every env policy."""
    scenario = make_scenario(days=3, seed=4)
    capped = dataclasses.replace(site, import_cap_kw=1_200.0)
    refs = compute_references(PvBessEvEnv(scenario, capped))
    pen = capped.unmet_penalty_kg_per_kwh
    lp = penalised_kg(refs.optimum_co2_kg, refs.optimum_unmet_kwh, pen)
    for res in (refs.uncontrolled, refs.rule_based):
        assert lp <= penalised_kg(res.co2_kg, res.ev_unmet_kwh, pen) * (1 + 1e-7)
    assert refs.uncontrolled.ev_unmet_kwh > 0  # the cap binds: uncontrolled charging is cut


def test_an_equal_env_reuses_the_references_and_any_change_recomputes(site):
    scenario = make_scenario(days=2, seed=5)
    first = compute_references(PvBessEvEnv(scenario, site))
    assert compute_references(PvBessEvEnv(make_scenario(days=2, seed=5), site)) is first  # equal data, new objects
    others = [
        compute_references(PvBessEvEnv(scenario, site), MpcSettings(horizon_hours=12)),
        compute_references(PvBessEvEnv(scenario, dataclasses.replace(site, bess_capacity_kwh=900.0))),
        compute_references(PvBessEvEnv(scenario, site, forecast_error="persistence")),
        compute_references(PvBessEvEnv(make_scenario(days=2, seed=6), site)),
    ]
    assert all(other is not first for other in others)
    assert others[1].rule_based.co2_kg != first.rule_based.co2_kg  # recomputed, not relabelled


def assert_same_references(a: References, b: References) -> None:
    """Every figure, trace and plan array of ``a`` is ``b``'s, exactly (the seconds they took aside)."""

    def figures(refs: References) -> dict[str, dict[str, float]]:
        return {name: {k: v for k, v in row.items() if "seconds" not in k} for name, row in refs.table().items()}

    assert figures(a) == figures(b) and a.optimum_kpis == b.optimum_kpis
    for name in EPISODES:
        assert getattr(a, name).summary() == getattr(b, name).summary(), name
        trace_a, trace_b = getattr(a, name).trace, getattr(b, name).trace
        assert trace_a.keys() == trace_b.keys(), name
        for key in trace_a:
            np.testing.assert_array_equal(trace_a[key], trace_b[key], err_msg=f"{name}.{key}")
    for f in dataclasses.fields(a.optimum):
        if f.name != "solve_seconds":
            np.testing.assert_array_equal(getattr(a.optimum, f.name), getattr(b.optimum, f.name), err_msg=f.name)


@pytest.fixture
def fresh_process(monkeypatch):
    """What another process would see: no references computed in this one."""
    monkeypatch.setattr(references, "_COMPUTED", type(references._COMPUTED)())


def test_another_process_reads_the_references_from_the_cache(tmp_path, site, fresh_process, monkeypatch, caplog):
    env = PvBessEvEnv(make_scenario(days=2, seed=7), site)
    computed = compute_references(env, cache_dir=tmp_path)
    (cached,) = (tmp_path / "references").glob("*.npz")
    references._COMPUTED.clear()  # (fresh_process's own, put back after the test)
    monkeypatch.setattr(references, "_compute", lambda *a: pytest.fail("recomputed what the cache holds"))
    with caplog.at_level(logging.INFO, logger=references.__name__):
        read = compute_references(PvBessEvEnv(make_scenario(days=2, seed=7), site), cache_dir=tmp_path)
    assert read is not computed and f"references from the cache: {cached}" in caplog.text
    assert_same_references(read, computed)
    assert read.seconds == computed.seconds  # those of the computation
    with zipfile.ZipFile(cached) as z:  # arrays and one JSON string: nothing there is unpickled
        assert all(info.filename.endswith(".npy") for info in z.infolist())


def test_solving_the_references_is_announced_before_and_timed_after(site, fresh_process, caplog):
    with caplog.at_level(logging.INFO, logger=references.__name__):
        refs = compute_references(PvBessEvEnv(make_scenario(days=2, seed=7), site))
    before, after = (r.getMessage() for r in caplog.records)
    assert before.startswith("solving the references on synthetic (48 hours)") and "LP optimum" in before
    assert after == f"references solved in {sum(refs.seconds.values()):.1f} s"


def test_references_computed_here_are_written_to_a_cache_asked_for_later(tmp_path, site, fresh_process):
    env = PvBessEvEnv(make_scenario(days=2, seed=7), site)
    first = compute_references(env)
    assert not (tmp_path / "references").exists()
    assert compute_references(env, cache_dir=tmp_path) is first
    (cached,) = (tmp_path / "references").glob("*.npz")
    assert_same_references(load_references(cached), first)


def test_other_settings_or_other_code_are_other_cache_files(tmp_path, site, monkeypatch):
    env = PvBessEvEnv(make_scenario(days=2, seed=7), site)
    key = (env.fingerprint(), *dataclasses.astuple(MpcSettings()))
    before = cache_file(tmp_path, key)
    assert before.parent == tmp_path / "references"
    assert before != cache_file(tmp_path, (env.fingerprint(), *dataclasses.astuple(MpcSettings(horizon_hours=12))))
    monkeypatch.setattr(references, "code_version", lambda: "the baselines changed")
    assert cache_file(tmp_path, key) != before


@pytest.mark.parametrize("damage", [b"", b"not a zip", None])
def test_an_unreadable_cache_file_is_recomputed_and_replaced(tmp_path, site, fresh_process, caplog, damage):
    env = PvBessEvEnv(make_scenario(days=2, seed=7), site)
    computed = compute_references(env, cache_dir=tmp_path)
    (cached,) = (tmp_path / "references").glob("*.npz")
    if damage is None:  # a valid archive without the figures
        np.savez(cached, scalars=np.array("{}"))
    else:
        cached.write_bytes(damage)
    references._COMPUTED.clear()  # (fresh_process's own, put back after the test)
    with caplog.at_level(logging.WARNING, logger=references.__name__):
        again = compute_references(env, cache_dir=tmp_path)
    assert f"recomputing the references: the cached {cached} cannot be read" in caplog.text
    assert_same_references(again, computed)
    assert_same_references(load_references(cached), computed)  # and written again


def test_a_cache_that_cannot_be_written_only_warns(tmp_path, site, fresh_process, caplog):
    (tmp_path / "references").write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING, logger=references.__name__):
        refs = compute_references(PvBessEvEnv(make_scenario(days=2, seed=7), site), cache_dir=tmp_path)
    assert refs.optimum_co2_kg > 0 and "references not cached:" in caplog.text


@pytest.mark.parametrize("cache_dir", ["CACHE", None])
def test_a_run_caches_its_references_in_paths_cache_dir_unless_null(tmp_path, fresh_process, cache_dir):
    where = "null" if cache_dir is None else tmp_path / cache_dir
    cfg = compose_cfg(["scenario.window_hours=168", f"paths.root_dir={tmp_path}", f"paths.cache_dir={where}"])
    build_references(cfg, build_eval_env(cfg))
    cached = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert [p.parent for p in cached] == ([Path("CACHE/references")] if cache_dir == "CACHE" else []), cached


WEEK = ["scenario=iquitos", "scenario.window_hours=168"]  # references in ~0.1 s


def test_mpc_asked_to_re_solve_past_its_horizon_re_solves_at_the_horizon(site):
    """A plan ends at its horizon: ``every_hours`` past it cannot be honoured, and ``solve_every_hours`` says so."""
    env = PvBessEvEnv(make_scenario(days=2), site)
    for every, solves in [(100, 4), (12, 4), (5, 10)]:  # 48 h over a 12-h horizon
        settings = MpcSettings(horizon_hours=12, every_hours=every)
        mpc = Mpc(env, "perfect", settings)
        run_episode(env, mpc)
        assert (mpc.solves, settings.solve_every_hours) == (solves, min(every, 12)), every


def test_references_command_prints_the_re_solve_interval_it_used(capsys):
    assert command.main([*WEEK, "mpc.every_hours=100", "mpc.horizon_hours=24"]) == 0
    out, err = capsys.readouterr()
    assert "MPC re-solved every 24 h over 24 h" in out
    assert err.strip() == (
        "warning: mpc.every_hours=100 is past mpc.horizon_hours=24: a plan ends at its horizon, so the MPC "
        "re-solves every 24 h"
    )
    assert command.main([*WEEK, "mpc.every_hours=6"]) == 0
    out, err = capsys.readouterr()
    assert "MPC re-solved every 6 h over 24 h" in out and not err


def test_ctrl_c_in_the_references_command_is_one_line_and_exit_130(monkeypatch, capsys):
    def ctrl_c(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "compute_references", ctrl_c)
    try:
        code = command.main(WEEK)
    except KeyboardInterrupt:  # caught here, or it would end pytest
        pytest.fail("Ctrl-C escaped main as a traceback")
    assert code == 130
    assert capsys.readouterr().err.strip() == "interrupted: nothing written (this command only prints)"


@pytest.mark.parametrize("episode", [{"episode_hours": 48}, {"episode_hours": 48, "random_start": True}])
def test_references_refuse_an_env_whose_episode_is_part_of_its_scenario(episode):
    """The LP bound plans every hour of the scenario: beside a 48-hour episode it was 1.4x uncontrolled's CO2."""
    with pytest.raises(ValueError, match="whole scenario from hour 0"):
        compute_references(PvBessEvEnv(make_scenario(days=3), SMALL_SITE, **episode))


def test_the_console_table_gives_reductions_with_the_sign_of_every_other_reduction():
    """A controller worse than uncontrolled reads -7.08 %, as its penalised_reduction_pct does (it read +7.08 %)."""
    from rich.console import Console

    from bess_rl.baselines.references import co2_table

    row = {"co2_kg": 100.0, "penalised_kg": 100.0, "ev_unmet_kwh": 0.0, "ev_served_kwh": 10.0}
    rows = {"uncontrolled": row, "worse": row | {"co2_kg": 107.08, "penalised_kg": 107.08}}
    console = Console(record=True, width=200)
    console.print(co2_table(rows, 24))
    text = console.export_text()
    assert "reduction" in text and "-7.08%" in text and "+0.00%" in text and "+7.08%" not in text


def test_references_command_checks_the_config_as_training_does(tmp_path, capsys):
    """It skipped ``validate``: a repeated column was read, and sessions without their hourly file ignored."""
    dup = tmp_path / "dup.csv"
    dup.write_text("pv_kw_per_kwp,load_kw,load_kw\n" + "0.5,1000,5\n" * 168)
    sessions = tmp_path / "sessions.csv"
    sessions.write_text("arrival_hour,departure_hour,energy_kwh,max_power_kw\n10,12,20,50\n")
    for args, message in (
        ([f"scenario.hourly_path={dup}", "scenario.hours=168"], f"scenario.hourly_path {dup}: column 'load_kw'"),
        ([f"scenario.sessions_path={sessions}"], "scenario.sessions_path needs scenario.hourly_path"),
    ):
        assert command.main([*WEEK, *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_an_lp_highs_cannot_solve_is_one_line_from_the_references_command(monkeypatch, capsys):
    def unsolvable(*args: object) -> None:
        raise LpError("HiGHS could not solve the LP of 168 hours at site ...: (HiGHS Status 2: Model error)")

    monkeypatch.setattr(command, "compute_references", unsolvable)
    assert command.main(WEEK) == 2
    assert (
        capsys.readouterr().err
        == "error: HiGHS could not solve the LP of 168 hours at site ...: (HiGHS Status 2: Model error)\n"
    )


def test_references_command_prints_whole_numbers_into_a_pipe(tmp_path, capsys):
    """rich fits a table to 80 columns when stdout is not a terminal: it cut 759,470,323 kg to 759,470,3…. Your
    own file on the preset's site is warned about before the solving."""
    big = tmp_path / "big.csv"
    big.write_text("pv_kw_per_kwp,load_kw\n" + "".join(f"{0.5 * (8 <= h % 24 < 17)},1e7\n" for h in range(168)))
    args = ["scenario=iquitos", f"scenario.hourly_path={big}", "scenario.hours=168", "scenario.window_hours=null"]
    assert command.main(args) == 0
    out, err = capsys.readouterr()
    assert "…" not in out and re.search(r"│ uncontrolled +│ +\d{3},\d{3},\d{3} │", out), out
    assert err.startswith(f"warning: scenario.hourly_path={big} runs at site=iquitos (pv_kwp=4050 kWp")

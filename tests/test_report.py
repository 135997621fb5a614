"""The report from run folders: one row per agent and preset, measured numbers only, gaps listed, figures."""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

from bess_rl.experiment.budget import apply_budget
from bess_rl.experiment.run_dir import resume_command
from bess_rl.experiment.train import run
from bess_rl.tools.report import AGENTS, PRESETS, REWARD, STEPS, curve, main, plot_co2, read_progress, write_report
from tests.helpers import TINY, compose_cfg, table
from tests.test_seeds import fake_run


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """Six tiny runs, laid out as the before_vs_after sweep writes them (<agent>-<preset>/), budget applied."""
    root = tmp_path_factory.mktemp("sweep")
    for agent in AGENTS:
        for preset in PRESETS:
            cfg = compose_cfg(["experiment=before_vs_after", "budget.name=cpu", f"agent={agent}", f"preset={preset}",
                               "scenario.window_hours=168", *TINY[agent]])  # fmt: skip
            apply_budget(cfg)
            run(cfg, root / f"{agent}-{preset}")
    return root


def test_report_has_one_row_per_agent_and_preset_from_the_run_folders(sweep_dir, tmp_path):
    md = write_report([sweep_dir], tmp_path).read_text()
    rows = table(md, "Results per agent and preset")
    assert [(r[0], r[1]) for r in rows] == [(a.upper(), p) for a in AGENTS for p in PRESETS]
    assert all(r[2] == "ok" for r in rows)
    for agent, preset, *cells in rows:  # the numbers are the run's own metrics.json
        metrics = json.loads((sweep_dir / f"{agent.lower()}-{preset}" / "metrics.json").read_text())
        assert cells[1] == f"{metrics['total_timesteps']:,}"
        assert cells[4] == f"{metrics['timesteps_per_hour']:,.0f}"
        assert cells[8] == f"{metrics['co2_kg']:,.0f}"
    sac_before = rows[0]
    assert sac_before[4] == "total_timesteps 60 → 12; hparams.gradient_steps 2 → 1"  # what the budget changed
    speed = table(md, "Speed and memory per agent")
    assert [r[0] for r in speed] == ["SAC", "PPO", "A2C"] and all(r[3].endswith("x") for r in speed)
    assert [r[0] for r in table(md, "References")] == ["uncontrolled", "rule-based (RBC)", "smart-charging rule",
                                                       "MPC, perfect forecasts", "MPC, persistence forecasts",
                                                       "LP bound", "LP plan through the env"]  # fmt: skip
    assert "None: every agent and preset has a finished run." in md
    assert len(pd.read_csv(tmp_path / "results.csv")) == 6 and len(pd.read_csv(tmp_path / "speed.csv")) == 3
    figures = ["co2.png", "learning_curves.png", *(f"dispatch_{a}-{p}.png" for a in AGENTS for p in PRESETS)]
    for name in figures:
        assert (tmp_path / name).stat().st_size > 5_000, name
        assert f"]({name})" in md


def test_failed_and_missing_runs_are_listed_not_dropped(sweep_dir, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(sweep_dir, sweep)
    (sweep / "a2c-after" / "metrics.json").unlink()  # a run that started but did not finish
    shutil.rmtree(sweep / "ppo-before")  # a run that never started
    md = write_report([sweep], tmp_path / "report").read_text()
    rows = {(r[0], r[1]): r for r in table(md, "Results per agent and preset")}
    assert len(rows) == 6
    assert rows[("A2C", "after")][2].startswith("failed: no metrics.json")
    assert rows[("PPO", "before")][2].startswith("missing")
    assert "- A2C after: failed" in md and "- PPO before: missing" in md
    speed = {r[0]: r for r in table(md, "Speed and memory per agent")}
    assert speed["PPO"][1] == "—" and speed["PPO"][3] == "—" and speed["SAC"][3] != "—"


def test_cli_writes_the_report_and_refuses_a_missing_folder(sweep_dir, tmp_path, capsys):
    assert main([str(sweep_dir), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").is_file() and "Before vs after" in capsys.readouterr().out
    assert main([str(tmp_path / "nowhere")]) == 2


def test_progress_without_rows_or_columns_gives_no_curve(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")  # SB3 logged nothing: fewer episodes/rollouts than log_interval
    assert read_progress(empty).empty and curve(read_progress(empty), REWARD) is None
    assert read_progress(tmp_path / "absent.csv").empty
    partial = pd.DataFrame({STEPS: [64, 128], "train/value_loss": [1.0, 0.5]})
    assert curve(partial, REWARD) is None  # no episode finished
    x, y = curve(partial, "train/value_loss")
    assert list(x) == [64, 128] and list(y) == [1.0, 0.5]
    gaps = pd.DataFrame({STEPS: [64, 128, 192], REWARD: [None, -3.0, -2.0]})
    assert list(curve(gaps, REWARD)[0]) == [128, 192]


def finished_run(folder: Path) -> Path:
    """A finished run folder without training (test_seeds' ``fake_run``), with the machine run_info.json names."""
    fake_run(folder, "ppo", 0, 2.0)
    (folder / "run_info.json").write_text(json.dumps({"machine": {"cpu_count": 2}, "scenario": "iquitos"}))
    return folder


def test_evaluations_and_exports_inside_a_run_are_not_more_runs(tmp_path):
    run_folder = finished_run(tmp_path / "run")
    # Two `python -m bess_rl.evaluate` (a metrics.json each, no run_info.json) and an export given a copy.
    for inner in ("evaluations/2026-12-03_18-29-57-588119", "evaluations/2026-12-03_18-30-02-464025", "export"):
        (run_folder / inner).mkdir(parents=True)
        shutil.copyfile(run_folder / "metrics.json", run_folder / inner / "metrics.json")
    md = write_report([run_folder], tmp_path / "report").read_text()
    assert "from 1 run folder(s)" in md and "not used" not in md
    assert [line for line in md.splitlines() if line.startswith("- Machine:")] == ["- Machine: cpu_count 2"]
    assert "scenario iquitos," in md
    assert len(pd.read_csv(tmp_path / "report" / "runs.csv")) == 1


def test_a_run_folder_that_cannot_be_read_is_skipped_with_a_warning(tmp_path, capsys):
    finished_run(tmp_path / "runs" / "ppo-after" / "t0")
    refused = tmp_path / "runs" / "sac-after" / "t1"  # a sweep job refused for `seed=abc` keeps such a folder
    (refused / ".hydra").mkdir(parents=True)
    (refused / ".hydra" / "config.yaml").write_text("seed: abc\nagent: {name: sac}\npreset: {name: after}\n")
    (refused / "bess_rl.log").write_text("")
    truncated = tmp_path / "runs" / "a2c-after" / "t2"  # a launcher file cut short
    finished_run(truncated)
    (truncated / ".hydra").mkdir()
    (truncated / ".hydra" / "hydra.yaml").write_text("hydra:\n  launcher: {n_jobs: [1,\n")
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"warning: skipping {truncated}: " + err[0].split(": ", 2)[2]
    assert err[1:] == [f"warning: skipping {refused}: seed 'abc' is not an integer"]
    assert "from 1 run folder(s)" in (tmp_path / "report" / "report.md").read_text()


def test_cli_refuses_an_empty_folder_and_an_out_that_is_a_file(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert capsys.readouterr().err == f"error: no run folder found under {empty}\n"
    assert list(empty.iterdir()) == []  # no report of nothing
    finished_run(tmp_path / "run")
    taken = tmp_path / "notes.md"
    taken.write_text("mine")
    assert main([str(tmp_path / "run"), "--out", str(taken)]) == 2  # --out is the report's folder
    assert capsys.readouterr().err == (
        f"error: --out {taken} is a file: the report is a folder (report.md, CSVs, figures)\n"
    )
    assert taken.read_text() == "mine"
    assert main([str(tmp_path / "run"), "--out", str(taken / "report")]) == 2
    assert capsys.readouterr().err == f"error: cannot create the report folder {taken / 'report'} (Not a directory)\n"


def test_an_out_that_refuses_a_file_is_one_line(tmp_path, capsys):
    """Only making ``--out`` was guarded: a file it then refused (read-only, immutable, in the way) was a traceback."""
    finished_run(tmp_path / "run")
    (tmp_path / "report" / "results.csv").mkdir(parents=True)  # in the way of the CSV
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 2
    assert capsys.readouterr().err == f"error: cannot write {tmp_path / 'report' / 'results.csv'} (Is a directory)\n"


def test_an_interrupted_run_is_told_a_resume_command_a_shell_takes(tmp_path):
    """A path with a space (or a non-ASCII letter) split the override in a shell, and Hydra refused it."""
    run = finished_run(tmp_path / "my runs" / "ppo-after")
    (run / "metrics.json").unlink()
    (run / "checkpoint").mkdir()
    write_report([tmp_path / "my runs"], tmp_path / "report")
    (status,) = pd.read_csv(tmp_path / "report" / "runs.csv")["status"]
    assert status == f"interrupted (resume with `{resume_command(run)}`)" and "\"resume='" in status


def _rewrite(folder: Path, change) -> None:
    """Edit a fake run's metrics.json in place."""
    metrics = json.loads((folder / "metrics.json").read_text())
    change(metrics)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_runs_on_other_data_are_set_aside_not_compared(tmp_path):
    for name, agent, penalised in (("ppo", "ppo", 3.0), ("sac", "sac", 2.0), ("z_a2c", "a2c", 1.0)):
        for seed in (0, 1):
            fake_run(tmp_path / name / str(seed), agent, seed, penalised + seed, scenario={"window_hours": None})
    odd = tmp_path / "a2c_720h"  # first in sorted order: it used to give the references
    fake_run(odd, "a2c", 0, 5.0, scenario={"window_hours": 720})

    def other_data(m: dict) -> None:
        m["eval_hours"] = 720
        m["references"] = {"uncontrolled": {"co2_kg": 30.0, "ev_unmet_kwh": 0.0},
                           "lp_optimum": {"co2_kg": 15.0, "ev_unmet_kwh": 0.0}}  # fmt: skip

    _rewrite(odd, other_data)
    md = write_report([tmp_path], tmp_path / "report").read_text()
    assert "on the same evaluation data" not in md and "- Evaluation: 168 h" in md
    aside = "Set aside, evaluated on other data (720 h, uncontrolled CO2 30 kg, not 168 h, 100 kg): A2C after seed 0"
    assert f"- **Warning**: {aside} (`{odd}`)" in md
    assert {r[0]: r[2] for r in table(md, "References")} == {"uncontrolled": "0.00%", "LP bound": "10.00%"}
    seeds_rows = {r[0]: r[-1] for r in table(md, "Across seeds")}
    assert seeds_rows["A2C after (scenario.window_hours=720)"] == "held out, **other data** (720 h): set aside"
    assert seeds_rows["A2C after (scenario.window_hours=null)"] == "held out"
    assert all("720" not in r[0] + r[1] for r in table(md, "Probability of improvement"))


def test_a_population_parent_is_no_run_and_members_are_labelled_by_what_differs(tmp_path):
    for parent, rate in (("pop_a", 0.001), ("pop_b", 0.0003)):
        for i in range(2):
            fake_run(tmp_path / parent / f"member_{i}", "sac", i, 1.0 + i + 10 * rate,
                     hparams={"learning_rate": rate, "gamma": 0.99})  # fmt: skip
        (tmp_path / parent / ".hydra").mkdir()
        (tmp_path / parent / ".hydra" / "config.yaml").write_text("agent: {name: sac}\npreset: {name: after}\n")
    md = write_report([tmp_path], tmp_path / "report").read_text()
    assert "from 4 run folder(s)" in md and "failed:" not in md
    labels = ["SAC after (learning_rate=0.001)", "SAC after (learning_rate=0.0003)"]
    assert [r[0] for r in table(md, "Across seeds")] == labels


def test_what_the_report_says_was_evaluated_and_what_is_missing(tmp_path):
    scenario = {"name": "citylearn_district_cap", "data": "citylearn_district[0:6552]",
                "eval_data": "citylearn_district[6552:8760]", "window_start": 0, "window_hours": None}  # fmt: skip
    fake_run(tmp_path / "old", "ppo", 0, 1.0, scenario=scenario)
    fake_run(tmp_path / "new", "ppo", 0, 2.0, scenario=scenario)
    for folder in ("old", "new"):
        (tmp_path / folder / "run_info.json").write_text(json.dumps({"scenario": "citylearn_district_cap[0:6552]"}))
    os.utime(tmp_path / "old" / "metrics.json", (1, 1))
    md = write_report([tmp_path], tmp_path / "report").read_text()
    evaluation = next(line for line in md.splitlines() if line.startswith("- Evaluation:"))
    assert evaluation == ("- Evaluation: 168 h of scenario citylearn_district_cap, its held-out part"
                          " (citylearn_district[6552:8760], never trained on)")  # fmt: skip
    assert [r[0] for r in table(md, "Speed and memory")] == ["PPO"]  # no SAC, A2C rows of "—" in a PPO-only report
    missing = md.split("## Missing or failed")[1].split("\n## ")[0].strip().splitlines()
    assert missing == ["None: every config and seed found finished.", "",
                       "Not used (older, or unfinished where a finished run of its agent and preset exists):",
                       f"- `{tmp_path / 'old'}`: ok"]  # fmt: skip
    assert "| CO2 reduction | penalised reduction |" in md and "vs uncontrolled" not in md  # one sign: less is +


def test_a_long_config_label_fits_the_co2_figure(tmp_path):
    row = {"config": "SAC after (" + ", ".join(f"hparam_{i}=0.000{i}" for i in range(12)) + ")", "seeds": 1,
           "co2_kg_mean": 90.0, "co2_kg_mean_low": math.nan, "co2_kg_mean_high": math.nan,
           "preset": "after"}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Tight layout not applied" reached the console
        plot_co2([row], {"uncontrolled": {"co2_kg": 100.0, "ev_unmet_kwh": 0.0}}, tmp_path / "co2.png", 168)
    assert (tmp_path / "co2.png").stat().st_size > 5_000

"""An Optuna sweep's report: every trial with its KPIs (also stored on the trials), the best one, the study's PNGs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import LogUniformDistribution
from optuna.trial import TrialState
from optuna.visualization import matplotlib as ovm

from bess_rl.experiment.storage import SWEEP_ATTR
from bess_rl.tools.report import write_report
from tests.helpers import COMMON, TINY, run_cli, table
from tests.test_seeds import fake_run

RATE = "agent.hparams.learning_rate"


@pytest.mark.slow
def test_optuna_sweep_report_lists_every_trial_and_the_best(tmp_path, capfd):
    proc = run_cli(
        "-m", "hparams_search=ppo_optuna", "hydra.sweeper.n_trials=2", *COMMON, *TINY["ppo"], cwd=tmp_path, capfd=capfd
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="ppo", storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    for trial in study.trials:
        assert {"co2_kg", "penalised_reduction_pct", "run_dir"} <= set(trial.user_attrs)
        assert trial.user_attrs["penalised_reduction_pct"] == pytest.approx(trial.value)
    md = write_report([tmp_path / "outputs" / "sweeps"], tmp_path / "report").read_text()
    rows = table(md, "Optuna study 'ppo'")
    assert len(rows) == 2 and "missing" not in md.split("## Missing or failed")[1]
    best = max(study.trials, key=lambda t: t.value)
    assert f"Best trial: {best.number} " in md and rows[0][0] == str(best.number)
    assert (tmp_path / "report" / "optimization_history.png").stat().st_size > 5_000


@pytest.mark.slow
def test_a_population_trial_is_one_row_of_its_study_with_the_members_mean(tmp_path, capfd):
    """A population trial's folder holds member folders, no metrics of its own: its KPIs were not stored on
    the trial and the study's table lost the trial."""
    proc = run_cli("-m", "hparams_search=sac_optuna", "hydra.sweeper.n_trials=1", "population.size=2", *COMMON,
                   *TINY["sac"], cwd=tmp_path, capfd=capfd)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (trial,) = optuna.load_study(study_name="sac", storage=f"sqlite:///{tmp_path}/outputs/optuna.db").trials
    (folder,) = (tmp_path / "outputs" / "sweeps").glob("*/0")
    members = [json.loads((folder / f"member_{i}" / "metrics.json").read_text()) for i in range(2)]
    mean = sum(m["penalised_reduction_pct"] for m in members) / 2
    assert trial.user_attrs["run_dir"] == str(folder) and trial.value == pytest.approx(mean)
    assert trial.user_attrs["penalised_reduction_pct"] == pytest.approx(mean)
    md = write_report([tmp_path / "outputs" / "sweeps"], tmp_path / "report").read_text()
    (row,) = table(md, "Optuna study 'sac'")
    assert row[0] == "0" and "ok" in row and f"`{folder}`" in row


@pytest.mark.slow
def test_a_trial_that_died_before_its_config_was_written_is_listed_not_a_traceback(tmp_path, capfd, monkeypatch):
    proc = run_cli(
        "-m", "hparams_search=ppo_optuna", "hydra.sweeper.n_trials=1", *COMMON, *TINY["ppo"], cwd=tmp_path, capfd=capfd
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (trial,) = (tmp_path / "outputs" / "sweeps").glob("*/0")
    for name in ("resolved_config.yaml", "metrics.json"):  # as if it died first: only Hydra's .hydra/ files
        (trial / name).unlink()
    monkeypatch.setenv("BESS_RL_ROOT", str(tmp_path))  # where the sweep ran: its storage URL resolves as then
    md = write_report([tmp_path / "outputs" / "sweeps"], tmp_path / "report").read_text()
    assert "No finished trial." in md.split("## Optuna study 'ppo': 1 trial(s)")[1]
    log = f"`{trial}/bess_rl.log`"
    assert f"- PPO after: failed: no metrics.json and no error in {log} (the sweep's console output may have it)" in md


def fake_sweep(root: Path, objectives: list[str], values: list[tuple[float, ...]], earlier: int = 0) -> Path:
    """An Optuna study in SQLite and its trials' run folders as the sweeper writes them, without training;
    ``earlier`` trials of another sweep of the study come first (no folder here)."""
    storage, directions = f"sqlite:///{root}/optuna.db", ["maximize"] * len(objectives)
    study = optuna.create_study(study_name="s", storage=storage, directions=directions)
    for number, value in enumerate([values[0]] * earlier + values):
        rate = 10 ** -(number + 2)
        trial = root / ("other" if number < earlier else "sweep") / str(number - earlier)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # add_trial, create_trial
            distributions = {RATE: LogUniformDistribution(1e-5, 1e-1)}
            frozen = optuna.trial.create_trial(params={RATE: rate}, values=list(value), distributions=distributions,
                                               user_attrs={"run_dir": str(trial)})  # fmt: skip
            study.add_trial(frozen)
        if number < earlier:
            continue
        fake_run(trial, "sac", 0, value[0], hparams={"learning_rate": rate}, objective=objectives)
        metrics = json.loads((trial / "metrics.json").read_text())
        (trial / "metrics.json").write_text(json.dumps({**metrics, "timesteps_per_hour": value[-1]}))
        (trial / "run_info.json").write_text(json.dumps({"overrides": [f"{RATE}={rate}"]}))
        sweeper = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "storage": storage,
                   "study_name": "s", "direction": directions, "params": {RATE: "interval(1e-5, 0.1)"}}  # fmt: skip
        (trial / ".hydra").mkdir()
        (trial / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": sweeper}}))
    return root / "sweep"


def failed_trial(sweep: Path, job: int, rate: float, log: str) -> Path:
    """A trial of ``fake_sweep``'s study refused before training: FAIL in the study (no run folder stored), and a job
    folder with Hydra's ``.hydra/`` files and the job's log only, as the sweeper leaves it."""
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{sweep.parent}/optuna.db")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.FAIL, params={RATE: rate}, distributions={RATE: LogUniformDistribution(1e-5, 1e-1)},
            system_attrs={SWEEP_ATTR: str(sweep.resolve())}))  # fmt: skip
    hydra = sweep / str(job) / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "hydra.yaml").write_text((sweep / "0" / ".hydra" / "hydra.yaml").read_text())
    config = {"seed": 0, "agent": {"name": "sac"}, "preset": {"name": "after"}}
    (hydra / "config.yaml").write_text(yaml.safe_dump(config))
    (hydra / "overrides.yaml").write_text(yaml.safe_dump([f"{RATE}={rate}", "agent=sac"]))
    (hydra.parent / "bess_rl.log").write_text(log)
    return hydra.parent


def test_failed_trials_are_rows_with_their_parameters_study_numbers_and_logged_errors(tmp_path):
    """The table held one unfinished run per agent and preset (none beside finished ones), its parameters blank:
    a refused trial has no run_info.json. Jobs 2, 3 are the study's trials 4, 3 (asked in that order)."""
    sweep = fake_sweep(tmp_path, ["penalised_reduction_pct"], [(1.0,), (3.0,)], earlier=1)
    info = "[2026-01-01 00:00:00,000][bess_rl.experiment.eta][INFO] - estimated wall time 0.0 min\n"
    failed_trial(sweep, 3, 0.025, info)  # killed: nothing logged but the start
    failed_trial(sweep, 2, 0.05, f"{info}[2026-01-01 00:00:01,000][bess_rl][ERROR] - learning rate 0.05 refused\n")
    text = write_report([sweep], tmp_path / "r").read_text()
    rows = table(text, "Optuna study 's': 4 trial(s)")
    assert [r[:2] for r in rows] == [["2", "0.0001"], ["1", "0.001"], ["4", "0.05"], ["3", "0.025"]]
    assert rows[2][2] == f"failed: learning rate 0.05 refused (`{sweep}/2/bess_rl.log`)"
    no_error = f"no error in `{sweep}/3/bess_rl.log` (the sweep's console output may have it)"
    assert rows[3][2] == f"failed: no metrics.json and {no_error}"
    assert "the figures cover the whole study, 5 trials" in text


def test_a_missing_or_empty_sqlite_storage_is_named_and_left_as_it_was(tmp_path):
    """Optuna's storage made a missing SQLite file (and filled an empty one with its tables): the report wrote a
    110 kB database and called the study not found in it."""
    sweep = fake_sweep(tmp_path, ["penalised_reduction_pct"], [(1.0,)])
    (tmp_path / "optuna.db").unlink()
    text = write_report([sweep], tmp_path / "r").read_text()
    assert f"- study 's': its storage file {tmp_path}/optuna.db does not exist" in text
    assert not (tmp_path / "optuna.db").exists()
    (tmp_path / "optuna.db").touch()
    assert "study 's' not readable at sqlite:///" in write_report([sweep], tmp_path / "r").read_text()
    assert (tmp_path / "optuna.db").stat().st_size == 0


def test_a_relative_sqlite_storage_is_read_from_where_the_sweep_was_launched(tmp_path, monkeypatch):
    """``sqlite:///optuna.db`` was opened from the report's folder: a new empty database there, no figures."""
    sweep = fake_sweep(tmp_path, ["penalised_reduction_pct"], [(1.0,), (3.0,)])
    for hydra_yaml in sweep.glob("*/.hydra/hydra.yaml"):
        config = yaml.safe_load(hydra_yaml.read_text())
        config["hydra"]["sweeper"]["storage"] = "sqlite:///optuna.db"
        config["hydra"]["runtime"] = {"cwd": str(tmp_path)}
        hydra_yaml.write_text(yaml.safe_dump(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = write_report([sweep], tmp_path / "r").read_text()
    assert "not readable" not in text and "Best trial: 1 " in text
    assert (tmp_path / "r" / "param_importances.png").is_file()
    assert list(elsewhere.iterdir()) == []


def test_parameter_importances_are_drawn(tmp_path):
    md = write_report([fake_sweep(tmp_path, ["penalised_reduction_pct"], [(1.0,), (3.0,), (2.0,)])], tmp_path / "r")
    assert "not drawn" not in md.read_text()
    assert (tmp_path / "r" / "param_importances.png").stat().st_size > 5_000


def test_a_multi_objective_study_names_its_objectives_and_pareto_front(tmp_path, monkeypatch):
    axes = []
    pareto = ovm.plot_pareto_front
    monkeypatch.setattr(ovm, "plot_pareto_front", lambda *a, **kw: axes.append(pareto(*a, **kw)) or axes[-1])
    objectives = ["penalised_reduction_pct", "timesteps_per_hour"]
    sweep = fake_sweep(tmp_path, objectives, [(1.0, 900.0), (3.0, 500.0), (2.0, 400.0), (0.5, 1000.0)])
    md = write_report([sweep], tmp_path / "r").read_text()
    assert "## Optuna study 's': 4 trial(s), penalised_reduction_pct maximised, timesteps_per_hour maximised" in md
    assert "Pareto front (3 of 4 trials): 1 (penalised_reduction_pct 3.00, timesteps_per_hour 500.00), " in md
    assert "Best trial" not in md and "2 (" not in md.split("Pareto front")[1].splitlines()[0]
    assert (axes[0].get_xlabel(), axes[0].get_ylabel()) == tuple(objectives)
    assert (tmp_path / "r" / "pareto_front.png").stat().st_size > 5_000


def test_trials_are_numbered_as_in_their_study_and_the_figures_say_they_cover_all_of_it(tmp_path):
    """A second sweep of a study: its folders 0 and 1 are the study's trials 2 and 3 (the table said 0 and 1)."""
    md = write_report([fake_sweep(tmp_path, ["penalised_reduction_pct"], [(1.0,), (3.0,)], earlier=2)], tmp_path / "r")
    text = md.read_text()
    assert [row[0] for row in table(text, "Optuna study 's'")] == ["3", "2"] and "Best trial: 3 " in text
    assert "the figures cover the whole study, 4 trials; the table, this sweep's" in text


def test_an_unreadable_study_s_password_is_not_written_into_the_report(tmp_path):
    sweep = fake_sweep(tmp_path, ["penalised_reduction_pct"], [(1.0,)])
    hydra_yaml = sweep / "0" / ".hydra" / "hydra.yaml"
    config = yaml.safe_load(hydra_yaml.read_text())
    config["hydra"]["sweeper"]["storage"] = "postgresql://bess:s3cret-pw@127.0.0.1:1/optuna"  # nothing listens
    hydra_yaml.write_text(yaml.safe_dump(config))
    text = write_report([sweep], tmp_path / "r").read_text()
    assert "not readable at postgresql://bess:***@127.0.0.1:1/optuna" in text and "s3cret" not in text

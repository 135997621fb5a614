"""An Optuna sweep's report: every trial with its KPIs (also stored on the trials), the best one, the study's PNGs."""

from __future__ import annotations

import optuna
import pytest

from bess_rl.tools.report import write_report
from tests.helpers import COMMON, TINY, run_cli, table


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
    assert f"- PPO after: failed: no metrics.json (the sweep's console output has the error) (`{trial}`)" in md

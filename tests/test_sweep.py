"""Optuna sweeps end to end at CI size (resume, failed trials, joblib + multi-objective) and the budget."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from bess_rl.experiment.budget import apply_budget
from bess_rl.experiment.config import ConfigError
from bess_rl.experiment.sweeper import OptunaStudyGuard, check_directions
from tests.helpers import COMMON, TINY, compose_cfg, run_cli

COMPLETE, FAIL = TrialState.COMPLETE, TrialState.FAIL


def multirun(root: Path, capfd: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    return run_cli("-m", *args, cwd=root, capfd=capfd)


def trials(root: Path, study: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{root}/outputs/optuna.db").trials


def finished_runs(root: Path) -> list[Path]:
    return sorted((root / "outputs" / "sweeps").glob("*/*/metrics.json"))


PPO_SWEEP = ["hparams_search=ppo_optuna", "hydra.sweeper.n_trials=2", *COMMON, *TINY["ppo"]]


@pytest.mark.slow
def test_sweep_resumes_and_a_resumed_sweep_that_only_fails_exits_nonzero(tmp_path, capfd):
    first = multirun(tmp_path, capfd, *PPO_SWEEP)
    assert first.returncode == 0, first.stderr[-3000:]
    assert [t.state for t in trials(tmp_path, "ppo")] == [COMPLETE] * 2
    assert len(finished_runs(tmp_path)) == 2

    again = multirun(tmp_path, capfd, *PPO_SWEEP)  # the same command: the study in outputs/optuna.db goes on
    assert again.returncode == 0, again.stderr[-3000:]
    study = trials(tmp_path, "ppo")
    assert [t.state for t in study] == [COMPLETE] * 4
    # The sampler seed is offset on resume, so the first sweep's trials are not replayed.
    assert {t.params["agent.hparams.learning_rate"] for t in study[2:]}.isdisjoint(
        t.params["agent.hparams.learning_rate"] for t in study[:2]
    )

    failing = multirun(tmp_path, capfd, *PPO_SWEEP, "site.soc_min=1.5")  # the study has a best trial from before
    assert failing.returncode == 1
    assert "all 2 trials of this sweep failed" in failing.stdout + failing.stderr
    assert [t.state for t in trials(tmp_path, "ppo")] == [COMPLETE] * 4 + [FAIL] * 2


@pytest.mark.slow
def test_sweep_where_every_trial_fails_exits_nonzero_and_records_them(tmp_path, capfd):
    proc = multirun(tmp_path, capfd, *PPO_SWEEP, "site.soc_min=1.5")
    assert proc.returncode != 0
    assert "Failed experiment: site needs 0 <= soc_min < soc_max <= 1" in proc.stdout + proc.stderr
    assert [t.state for t in trials(tmp_path, "ppo")] == [FAIL] * 2


@pytest.mark.slow
def test_multi_objective_sweep_on_the_joblib_launcher(tmp_path, capfd):
    # Both trials asked as one batch; joblib runs a one-job batch in this process (worker processes, and
    # what comes back from them, are the PostgreSQL killed-sweep test's part in test_sweep_cluster.py).
    proc = multirun(tmp_path, capfd, "hparams_search=sac_optuna_mo", "hydra.sweeper.n_trials=2",
                    "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", "hydra.sweeper.n_jobs=2", *COMMON,
                    *TINY["sac"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = trials(tmp_path, "sac_mo")
    assert [t.state for t in study] == [COMPLETE] * 2
    assert all(len(t.values) == 2 and t.values[1] > 0 for t in study)  # (penalised %, timesteps/hour)
    assert len(finished_runs(tmp_path)) == 2
    results = OmegaConf.load(next((tmp_path / "outputs" / "sweeps").glob("*/optimization_results.yaml")))
    assert 1 <= len(results.solutions) <= 2  # the Pareto front


def test_directions_must_match_the_objective():
    check_directions("penalised_reduction_pct", "maximize")
    check_directions(["penalised_reduction_pct", "co2_kg"], ["maximize", "minimize"])
    with pytest.raises(ConfigError, match="has 2 value"):
        check_directions(["penalised_reduction_pct", "timesteps_per_hour"], "maximize")
    with pytest.raises(ConfigError, match="co2_kg should be minimized"):
        check_directions("co2_kg", "maximize")


@pytest.mark.parametrize("value", [math.nan, math.inf, (1.0, math.nan)])
def test_non_finite_objective_fails_the_trial(value):
    ret = JobReturn(status=JobStatus.COMPLETED, _return_value=value)
    OptunaStudyGuard().on_job_end(OmegaConf.create({"objective": "penalised_reduction_pct"}), ret)
    assert ret.status == JobStatus.FAILED
    with pytest.raises(ValueError, match="is not finite"):
        _ = ret.return_value


def test_finite_objective_is_left_alone():
    ret = JobReturn(status=JobStatus.COMPLETED, _return_value=(2.5, 1e5))
    OptunaStudyGuard().on_job_end(OmegaConf.create({"objective": ["a", "b"]}), ret)
    assert ret.status == JobStatus.COMPLETED and ret.return_value == (2.5, 1e5)


@pytest.mark.parametrize(
    ("preset", "steps", "gradient_steps"), [("before", (26280, 5256), (1024, 4)), ("after", (26280, 5256), (2048, 8))]
)
def test_cpu_budget_shrinks_sac_and_records_it(preset, steps, gradient_steps):
    cfg = compose_cfg(["experiment=before_vs_after", "budget.name=cpu", "agent=sac", f"preset={preset}"])
    changed = apply_budget(cfg)
    assert changed == [
        {"key": "agent.total_timesteps", "from": steps[0], "to": steps[1]},
        {"key": "agent.hparams.gradient_steps", "from": gradient_steps[0], "to": gradient_steps[1]},
    ]
    assert cfg.agent.total_timesteps == steps[1] and cfg.agent.hparams.gradient_steps == gradient_steps[1]
    assert OmegaConf.to_container(cfg.budget.changed) == changed  # lands in resolved_config.yaml


def test_budget_leaves_other_agents_and_the_full_budget_alone():
    cfg = compose_cfg(["experiment=before_vs_after", "budget.name=cpu", "agent=ppo"])
    assert apply_budget(cfg) == [] and cfg.agent.total_timesteps == 26280
    cfg = compose_cfg(["experiment=before_vs_after", "agent=sac"])
    assert apply_budget(cfg) == [] and cfg.agent.hparams.gradient_steps == 2048
    assert apply_budget(compose_cfg(["agent=sac"])) == []  # no budget in the config at all


def test_budget_refuses_keys_the_agent_lacks():
    cfg = compose_cfg(["experiment=before_vs_after", "budget.name=cpu", "agent=sac",
                       "+budget.options.cpu.sac.hparams.n_epochs=0.5"])  # fmt: skip
    with pytest.raises(ConfigError, match="budget scales agent.hparams.n_epochs"):
        apply_budget(cfg)
    cfg = compose_cfg(["experiment=before_vs_after", "budget.name=gpu", "agent=sac"])
    with pytest.raises(ConfigError, match="options.gpu"):
        apply_budget(cfg)


@pytest.mark.slow
def test_the_entry_point_applies_the_budget(tmp_path, capfd):
    """Needs ``apply_budget(cfg)`` before ``run`` in bess_rl/__main__.py."""
    args = ["experiment=before_vs_after", "budget.name=cpu", "agent=sac", *COMMON, *TINY["sac"]]
    proc = run_cli(*args, cwd=tmp_path, capfd=capfd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = OmegaConf.load(next((tmp_path / "outputs" / "runs").glob("sac-after/*/resolved_config.yaml")))
    assert saved.agent.total_timesteps == 12 and saved.agent.hparams.gradient_steps == 1  # 60 x 0.2, 2 / 256 -> 1
    assert [c.key for c in saved.budget.changed] == ["agent.total_timesteps", "agent.hparams.gradient_steps"]

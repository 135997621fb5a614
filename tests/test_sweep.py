"""Optuna sweeps end to end at CI size (resume, failed trials, joblib + multi-objective) and the budget."""

from __future__ import annotations

import math
import pickle
import signal
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from bess_rl.experiment import checkpoint, sweeper
from bess_rl.experiment.budget import apply_budget
from bess_rl.experiment.config import CONF_DIR, ConfigError
from bess_rl.experiment.run_dir import launch_sweep, register_resolvers
from bess_rl.experiment.storage import StorageError
from bess_rl.experiment.sweeper import OptunaStudyGuard, check_directions
from tests.helpers import COMMON, TINY, compose_cfg, run_cli

COMPLETE, FAIL = TrialState.COMPLETE, TrialState.FAIL


def multirun(root: Path, capfd: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    return run_cli("-m", *args, cwd=root, capfd=capfd)


def trials(root: Path, study: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{root}/outputs/optuna.db").trials


def study_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Optuna's lines on creating or loading a study (its handler writes to the stderr it was imported with)."""
    return [m for m in caplog.messages if m.startswith(("A new study", "Using an existing study"))]


def finished_runs(root: Path) -> list[Path]:
    return sorted((root / "outputs" / "sweeps").glob("*/*/metrics.json"))


PPO_SWEEP = ["hparams_search=ppo_optuna", "hydra.sweeper.n_trials=2", *COMMON, *TINY["ppo"]]


@pytest.mark.slow
def test_sweep_resumes_and_a_resumed_sweep_that_only_fails_exits_nonzero(tmp_path, capfd, caplog):
    first = multirun(tmp_path, capfd, *PPO_SWEEP)
    assert first.returncode == 0, first.stderr[-3000:]
    # The guard creates the study; the sweeper's create_study does not then say it loads an existing one.
    assert study_lines(caplog) == ["A new study created in RDB with name: ppo"]
    caplog.clear()
    assert [t.state for t in trials(tmp_path, "ppo")] == [COMPLETE] * 2
    assert len(finished_runs(tmp_path)) == 2

    again = multirun(tmp_path, capfd, *PPO_SWEEP)  # the same command: the study in outputs/optuna.db goes on
    assert again.returncode == 0, again.stderr[-3000:]
    assert study_lines(caplog) == ["Using an existing study with name 'ppo' instead of creating a new one."]
    study = trials(tmp_path, "ppo")
    assert [t.state for t in study] == [COMPLETE] * 4
    # The sampler seed is offset on resume, so the first sweep's trials are not replayed.
    assert {t.params["agent.hparams.learning_rate"] for t in study[2:]}.isdisjoint(
        t.params["agent.hparams.learning_rate"] for t in study[:2]
    )
    # The study's best may be the first sweep's: the results say which trial it is, where, and how to rerun it.
    best = max(study, key=lambda t: t.value)
    located = OmegaConf.load(sorted((tmp_path / "outputs" / "sweeps").glob("*/optimization_results.yaml"))[-1])
    assert located.best_trial.trial == best.number and located.best_trial.this_sweep == (best.number >= 2)
    assert located.best_trial.run_dir == best.user_attrs["run_dir"]
    rerun = located.best_trial.rerun.split()
    assert rerun[:3] == ["python", "-m", "bess_rl"] and "hparams_search=ppo_optuna" in rerun
    assert {f"{k}={v}" for k, v in best.params.items()} <= set(rerun)

    failing = multirun(tmp_path, capfd, *PPO_SWEEP, "site.soc_min=1.5")  # the study has a best trial from before
    assert failing.returncode == 1
    assert "all 2 trials of this sweep failed" in failing.stdout + failing.stderr
    assert [t.state for t in trials(tmp_path, "ppo")] == [COMPLETE] * 4 + [FAIL] * 2


@pytest.mark.slow
def test_sweep_where_every_trial_fails_exits_nonzero_and_records_them(tmp_path, capfd):
    """A new study: the sweeper's last call, for the best trial, raised Optuna's "Record does not exist." """
    proc = multirun(tmp_path, capfd, *PPO_SWEEP, "site.soc_min=1.5")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert "Failed experiment: site needs 0 <= soc_min < soc_max <= 1" in proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: every trial failed and the study has no complete trial")
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


@pytest.mark.slow
def test_a_study_refuses_a_sweep_of_another_objective(tmp_path, capfd):
    first = multirun(tmp_path, capfd, *PPO_SWEEP, "hydra.sweeper.n_trials=1")
    assert first.returncode == 0, first.stderr[-3000:]
    study = optuna.load_study(study_name="ppo", storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    assert study.user_attrs["objective"] == ["penalised_reduction_pct"]
    other = multirun(tmp_path, capfd, *PPO_SWEEP, "hydra.sweeper.n_trials=1", "objective=co2_reduction_pct")
    out = other.stdout + other.stderr  # Hydra logs a sweep's lines to stdout
    assert other.returncode == 2 and "Traceback" not in out
    assert (f"study 'ppo' in sqlite:///{tmp_path}/outputs/optuna.db optimised objective=penalised_reduction_pct, "
            "this sweep objective=co2_reduction_pct: set another hydra.sweeper.study_name") in out  # fmt: skip
    assert len(trials(tmp_path, "ppo")) == 1


def kpi_trial(penalised: float, co2: float) -> FrozenTrial:
    """A complete trial as the guard records it: the objective's value and the run's KPIs beside it."""
    attrs = {"penalised_reduction_pct": penalised, "co2_reduction_pct": co2, "run_dir": "outputs/sweeps/t/0"}
    return optuna.trial.create_trial(value=penalised, user_attrs=attrs)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # add_trial, create_trial
def test_a_study_without_a_recorded_objective_is_judged_by_its_trials(tmp_path, caplog):
    """Studies from before the guard recorded the objective: their trials' KPIs tell which metric they hold."""
    url = f"sqlite:///{tmp_path}/optuna.db"
    sweeper = OmegaConf.create({"study_name": "ppo", "direction": "maximize"})
    old = optuna.create_study(study_name="ppo", storage=url, direction="maximize")
    old.add_trials([kpi_trial(1.5, 2.0), kpi_trial(-0.5, 1.0)])
    with pytest.raises(StorageError, match="optimised objective=penalised_reduction_pct, this sweep objective=co2_"):
        OptunaStudyGuard()._open_study(url, sweeper, "co2_reduction_pct", {})
    assert OptunaStudyGuard()._open_study(url, sweeper, "penalised_reduction_pct", {}) == 2
    assert "its trials' values are their KPIs of that name: recording objective=penalised_reduction_pct" in caplog.text
    assert optuna.load_study(study_name="ppo", storage=url).user_attrs["objective"] == ["penalised_reduction_pct"]
    with pytest.raises(StorageError, match="optimised objective=penalised_reduction_pct"):  # recorded now
        OptunaStudyGuard()._open_study(url, sweeper, "co2_reduction_pct", {})

    bare = OmegaConf.create({"study_name": "bare", "direction": "maximize"})
    optuna.create_study(study_name="bare", storage=url, direction="maximize").add_trial(
        optuna.trial.create_trial(value=1.0)  # no KPIs recorded: nothing to judge by, so this sweep's is taken
    )
    assert OptunaStudyGuard()._open_study(url, bare, "co2_reduction_pct", {}) == 1
    assert "'bare' recorded no objective (made before bess_rl recorded it); its trials recorded no KPI" in caplog.text
    assert optuna.load_study(study_name="bare", storage=url).user_attrs["objective"] == ["co2_reduction_pct"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hydra.sweeper.study_name=null"], "hydra.sweeper.study_name must name the study its storage keeps"),
        (["hydra.callbacks.optuna_study.heartbeat_interval=abc"], "heartbeat_interval must be whole seconds >= 1"),
        (["hydra.callbacks.optuna_study.grace_period=0"], "grace_period must be whole seconds >= 1 (or null), got 0"),
        (["hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs must be a whole number >= 1 (trials asked per batch)"),
        (["hydra.sweeper.max_failure_rate=2"], "hydra.sweeper.max_failure_rate must be a number in [0, 1], got 2.0"),
        (["objective=nosuch_metric"], "objective 'nosuch_metric' is not one of ['penalised_reduction_pct'"),
        (["objective=[]", "hydra.sweeper.direction=[]"], "objective is an empty list: name one or more of"),
        (["hydra.sweeper.storage='postgresql://u@localhost:notaport/db'"], "is not a database URL (invalid literal"),
        (["hydra.sweeper.storage='sqlite:///'"], "'sqlite:///' is an in-memory SQLite database"),
        (["agent.hparams.gae_lambda=interval(1.0,0.9)"],
         "the search space's agent.hparams.gae_lambda=interval(1.0,0.9): The `low` value must be smaller"),
        (["agent.hparams.learning_rate=tag(log,interval(0,1e-3))"], "must be larger than 0 for a log distribution"),
        (["agent.hparams.learnin_rate=interval(1e-5,1e-3)"],
         "the search space cannot be composed: Could not override 'agent.hparams.learnin_rate'"),
        (["agent.hparams.gamma=choice(0.9,abc)"], "Value 'abc' of type 'str' could not be converted to Float"),
        (["preset=choice(before,nosuch)"], "Could not find 'preset/nosuch'"),
    ],
)  # fmt: skip
def test_a_bad_sweep_setting_is_one_line_before_any_study_is_made(tmp_path, capfd, overrides, message):
    """Each was a traceback, a warning after which the sweep ran unguarded, a trial left RUNNING, or a study made
    for good with a mistyped objective, before: the sweeper and Optuna check them only after making the study."""
    proc = multirun(tmp_path, capfd, *PPO_SWEEP, *overrides)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and message in out and "Traceback" not in out, out[-3000:]
    assert "Warning" not in out and not (tmp_path / "outputs" / "optuna.db").exists()


def test_a_guard_that_fails_unexpectedly_stops_the_sweep(tmp_path, capfd, monkeypatch):
    """Hydra makes a callback's exception a warning: the sweep ran without heartbeats, KPIs or the all-failed exit."""

    def broken(*_args: object) -> None:
        raise KeyError("Record does not exist.")

    monkeypatch.setattr(sweeper, "check_trials_compose", broken)
    proc = multirun(tmp_path, capfd, *PPO_SWEEP)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out and not (tmp_path / "outputs" / "optuna.db").exists()
    assert "the Optuna study guard could not check this sweep, so none of it ran (KeyError: 'Record does not" in out


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # add_trial, create_trial
def test_a_study_resumed_with_a_search_space_it_cannot_follow_is_refused(tmp_path, capfd):
    """Other choices, or a range for a choice: Optuna's ValueError at the first ask, that trial left RUNNING."""
    from optuna.distributions import CategoricalDistribution

    url = f"sqlite:///{tmp_path}/outputs/optuna.db"
    (tmp_path / "outputs").mkdir()
    old = optuna.create_study(study_name="ppo", storage=url, direction="maximize")
    old.set_user_attr("objective", ["penalised_reduction_pct"])
    gamma = CategoricalDistribution((0.95, 0.98, 0.99, 0.995))
    old.add_trial(optuna.trial.create_trial(value=1.0, params={"agent.hparams.gamma": 0.99},
                                            distributions={"agent.hparams.gamma": gamma}))  # fmt: skip
    for search in ["agent.hparams.gamma=choice(0.9,0.99)", "agent.hparams.gamma=interval(0.9,0.99)"]:
        proc = multirun(tmp_path, capfd, *PPO_SWEEP, search)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
        assert (f"study 'ppo' in {url} drew agent.hparams.gamma from CategoricalDistribution(choices=(0.95, 0.98, "
                "0.99, 0.995)) (trial 0), this sweep from") in out  # fmt: skip
    assert [t.state for t in trials(tmp_path, "ppo")] == [COMPLETE]


def test_a_stopped_sweep_fails_the_trials_it_asked_and_did_not_finish(tmp_path, caplog):
    """Ctrl-C outside training (the references' solve) or a batch's unlaunched trials left them RUNNING."""
    from bess_rl.experiment.storage import fail_unfinished_trials, open_storage

    url = f"sqlite:///{tmp_path}/optuna.db"
    storage = open_storage(url, heartbeat_interval=60)
    study = optuna.create_study(study_name="s", storage=storage)
    asked = [study.ask(), study.ask(), study.ask()]
    study.tell(asked[0], 1.0)
    fail_unfinished_trials()
    assert [t.state for t in optuna.load_study(study_name="s", storage=url).trials] == [COMPLETE, FAIL, FAIL]
    assert "trial(s) [1, 2] were asked but not finished when the sweep stopped: marked FAIL" in caplog.text
    caplog.clear()
    fail_unfinished_trials()  # nothing left: nothing said
    assert "were asked" not in caplog.text


@pytest.mark.parametrize("n_trials", [0, -1])
def test_a_sweep_of_no_trial_is_refused(tmp_path, capfd, n_trials):
    proc = multirun(tmp_path, capfd, *PPO_SWEEP, f"hydra.sweeper.n_trials={n_trials}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and f"hydra.sweeper.n_trials={n_trials} runs no trial: give 1 or more" in out
    assert "Best value" not in out and not (tmp_path / "outputs").exists()


def test_a_file_in_the_way_of_the_sweep_or_its_storage_is_one_line(tmp_path, capfd):
    taken = tmp_path / "taken"
    taken.write_text("")
    expected = {  # a sweep under a file: SQLite's folder, hydra.sweep.dir as given, as its resolver makes it
        (f"paths.output_dir={taken}",): f"cannot open storage sqlite:///{taken}/optuna.db: [Errno 17] File exists",
        (f"hydra.sweep.dir={taken}/sweep",): f"cannot create the sweep folder {taken}/sweep (Not a directory)",
        (f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", f"paths.output_dir={taken}"):
            "cannot create the sweep folder: NotADirectoryError raised while resolving interpolation: "
            f"[Errno 20] Not a directory: '{taken}/sweeps'",
    }  # fmt: skip
    for overrides, message in expected.items():
        proc = multirun(tmp_path, capfd, *PPO_SWEEP, *overrides)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and message in out and "Traceback" not in out, out[-3000:]


def test_every_experiment_sweep_gets_a_folder_of_its_own():
    """Two sweeps started in the same second must not share one (the README): unique_sweep_dir adds -1, -2."""
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        sweep = OmegaConf.to_container(OmegaConf.load(path)).get("hydra", {}).get("sweep", {})
        assert sweep.get("dir", "${unique_sweep_dir:").startswith("${unique_sweep_dir:"), path.name


def test_only_the_launching_sweep_config_creates_its_folder(tmp_path):
    """A job's config (the resolver cache Hydra copies in, or pickles to a worker) reads the launching config's
    folder; any other config names one and creates nothing; a second sweep in the same second gets ``-1``."""
    register_resolvers()
    path = tmp_path / "sweeps" / "2026-01-01_00-00-00"
    first, job, second = (OmegaConf.create({"dir": f"${{unique_sweep_dir:{path}}}"}) for _ in range(3))
    assert second.dir == str(path) and not path.parent.exists()
    launch_sweep(first)
    assert first.dir == str(path) and path.is_dir()
    OmegaConf.copy_cache(from_config=first, to_config=job)
    launch_sweep(second)
    assert second.dir == f"{path}-1" and pickle.loads(pickle.dumps(second)).dir == f"{path}-1"
    assert first.dir == job.dir == str(path) and len(list(path.parent.iterdir())) == 2


def test_a_compose_creates_no_sweep_folder(tmp_path, monkeypatch):
    """experiment=seeds's hydra.sweep.dir over before_vs_after's over conf/hydra's: OmegaConf resolves the two
    values it merges over, in every compose (the sweep's, each job's, each worker's, a test's)."""
    register_resolvers()
    monkeypatch.delenv("BESS_RL_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    compose_cfg(["experiment=seeds", f"paths.cache_dir={tmp_path}/cache"])  # an override of its own: composed anew
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_sweep_makes_one_folder_beside_one_that_took_its_name(tmp_path, capfd):
    """Every name of the next minute taken (as by a sweep started in the same second): this one takes ``-1``."""
    seeds = tmp_path / "outputs" / "sweeps" / "seeds"
    now = datetime.now()
    taken = {(now + timedelta(seconds=s)).strftime("%Y-%m-%d_%H-%M-%S") for s in range(60)}
    for name in taken:
        (seeds / name).mkdir(parents=True)
    proc = multirun(tmp_path, capfd, "experiment=seeds", "agent=ppo", "seeds=1", *COMMON, *TINY["ppo"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (made,) = {p.name for p in seeds.iterdir()} - taken
    assert made.endswith("-1") and (seeds / made / "ppo-after" / "seed_0" / "metrics.json").is_file()
    assert sorted(p.name for p in (tmp_path / "outputs" / "sweeps").iterdir()) == ["seeds"]


@pytest.mark.parametrize("sweep", [["seed=0"], ["experiment=seeds"]])
def test_a_file_in_the_way_of_a_plain_sweep_is_one_line(tmp_path, capfd, sweep):
    """No guard here: bess_rl/__main__.py's ``cli`` says what fails before the first job in one line, and
    experiment=seeds names its folder through unique_sweep_dir as every sweep does."""
    taken = tmp_path / "taken"
    taken.write_text("")
    proc = multirun(tmp_path, capfd, *sweep, f"paths.output_dir={taken}")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: NotADirectoryError raised while resolving interpolation: [Errno 20] ")
    assert proc.stderr.count("\n") == 1 and f"Not a directory: '{taken}/sweeps" in proc.stderr


def test_a_trial_its_launcher_does_not_requeue_keeps_its_checkpoint_and_says_how_to_finish_it(
    tmp_path, capfd, monkeypatch
):
    """submitit's SIGUSR2 handler raises for a job past its time limit more than max_num_timeout times."""

    def launcher(_signum, _frame):
        raise RuntimeError("Job not requeued because: timed-out too many times.")

    real = checkpoint.Guard._on_rollout_start

    def warned(self):  # Slurm's warning, as training starts
        if self.requested is None:
            signal.raise_signal(signal.SIGUSR2)
        real(self)

    monkeypatch.setattr(checkpoint.Guard, "_on_rollout_start", warned)
    previous = signal.signal(signal.SIGUSR2, launcher)
    try:
        proc = multirun(tmp_path, capfd, *PPO_SWEEP, "hydra.sweeper.n_trials=1")
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (job,) = tmp_path.glob("outputs/sweeps/*/0")
    assert f"its checkpoint stays: python -m bess_rl resume={job} finishes it" in proc.stderr
    assert "Failed experiment: Job not requeued because: timed-out too many times." in proc.stdout + proc.stderr
    assert checkpoint.read_state(job / "checkpoint")["reason"] == "SIGUSR2"
    assert [t.state for t in trials(tmp_path, "ppo")] == [TrialState.FAIL]

"""population.size=N: one normal run folder per member, refused inputs, and the planner counting N members."""

from __future__ import annotations

import json
import logging
import signal

import pytest
import torch

from bess_rl.agents.fast_sac import FastSAC
from bess_rl.agents.population import Population
from bess_rl.experiment import checkpoint, hardware, planner, population_run, train
from bess_rl.experiment.checkpoint import TrainingInterrupted
from bess_rl.experiment.config import ConfigError, validate
from bess_rl.experiment.run_dir import RunDir, RunDirError
from bess_rl.tools.replay import COMPARED, load_run_config
from tests.helpers import COMMON, TINY, compose_cfg, run_cli

POP = ["agent=sac", "population.size=2", "population.seeds=[3,7]", "population.learning_rate=[0.001,0.0003]"]


def test_each_member_is_a_normal_run_folder(tmp_path):
    members = population_run.run(compose_cfg([*POP, *COMMON, *TINY["sac"]]), tmp_path / "pop")
    single = train.run(compose_cfg(["agent=sac", *COMMON, *TINY["sac"]]), tmp_path / "single")
    weights = []
    for i, (seed, lr) in enumerate([(3, 0.001), (7, 0.0003)]):
        rd = RunDir(tmp_path / "pop" / f"member_{i}")
        metrics = json.loads(rd.metrics.read_text())
        assert set(metrics) - {"population"} == set(single) and metrics["co2_kg"] == members[i]["co2_kg"]
        assert metrics["population"]["member"] == i and metrics["total_timesteps"] == 60
        cfg = rd.load_config()
        validate(cfg)  # a member's config is a valid single run's
        assert (cfg.seed, cfg.agent.hparams.learning_rate, cfg.population.size) == (seed, lr, 1)
        assert json.loads(rd.run_info.read_text())["seed"] == seed
        model = FastSAC.load(rd.model, device="cpu")
        assert model.num_timesteps == 60 and model.learning_rate == lr
        weights.append(next(iter(model.policy.actor.parameters())).detach())
    assert not torch.equal(*weights)  # different seeds, different members
    mean = population_run.objective(members, "co2_kg")
    assert mean == pytest.approx(sum(m["co2_kg"] for m in members) / 2)


def test_a_population_records_and_applies_the_compile_it_was_asked_for(tmp_path, monkeypatch):
    compiled = []

    def recording(fn, **kwargs):  # torch.compile noting what it compiles; the compile tests trace it
        compiled.append(fn.__qualname__)
        return fn

    monkeypatch.setattr(torch, "compile", recording)
    population_run.run(compose_cfg([*POP, *COMMON, *TINY["sac"], "hardware.compile=default"]), tmp_path / "pop")
    assert compiled == ["Population._update"]  # the stacked step, once; no member compiles its own
    for i in range(2):
        runtime = json.loads(RunDir(tmp_path / "pop" / f"member_{i}").run_info.read_text())["runtime"]
        assert (runtime["compile"], runtime["amp"], runtime["cuda_graphs"]) == ("default", "none", False)


def test_population_runtime_drops_what_the_stacked_update_lacks():
    asked = hardware.Runtime("rtx4060", "FastSAC", "cuda", "fp16", True, True, "default", 1, [])
    applied = population_run.population_runtime(asked)
    assert (applied.amp, applied.cuda_graphs, applied.compile, applied.tf32) == ("none", False, "default", True)
    assert len(applied.notes) == 2 and not asked.notes


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["population.size=0"], "population.size must be >= 1"),
        (["population.size=2", "population.seeds=[1,2,3]"], "population.seeds has 3 values for population.size=2"),
        (["population.size=3", "population.tau=[0.01,0.02]"], "population.tau has 2 values"),
        (["population.size=2", "agent=ppo"], "FastSAC members only"),
        (["population.size=2", "agent.algo=stable_baselines3.SAC"], "FastSAC members only"),
        (["population.size=2", "agent.n_envs=2"], "agent.n_envs=1"),
    ],
)
def test_bad_population_inputs_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate(compose_cfg(overrides))
    assert "\n" not in str(err.value)


def test_planner_counts_every_member_and_refuses_what_does_not_fit():
    one = planner.estimate(compose_cfg(["agent=sac"]), 40, 2, device="cpu")
    four = planner.estimate(compose_cfg(["agent=sac", "population.size=4"]), 40, 2, device="cpu")
    for part in ("replay buffer", "optimizer", "activations"):
        assert four.part(part).nbytes == 4 * one.part(part).nbytes
    assert four.part("networks").nbytes == 8 * one.part("networks").nbytes  # stacked + each member's own
    budget = 2 * one.budgeted / planner.GB
    planner.check(one, budget, "test")
    with pytest.raises(planner.MemoryBudgetError, match="fewer than population.size=4"):
        planner.check(four, budget, "test")


def test_a_population_is_estimated_warned_about_and_shows_its_progress(tmp_path, caplog, monkeypatch):
    bars = []

    class Bar:  # the progress bar (or log lines), recording its total and updates
        def __init__(self, total: int, desc: str) -> None:
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, n: int = 1) -> None:
            self.n += n

        def close(self) -> None:
            pass

    monkeypatch.setattr(population_run, "progress_bar", Bar)
    cfg = compose_cfg([*POP, *COMMON, *TINY["sac"], "progress_bar=true", "warn_hours=1e-9"])
    with caplog.at_level(logging.INFO, logger="bess_rl.experiment.eta"):
        members = population_run.run(cfg, tmp_path / "pop")
    (estimate,) = [r.getMessage() for r in caplog.records if "estimated wall time" in r.getMessage()]
    updates = members[0]["gradient_updates"]
    assert "120 env steps at" in estimate and f" {updates:,} stacked updates at" in estimate and updates > 0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.endswith("eta")]
    assert "over warn_hours=1e-09" in warning and "agent.total_timesteps=" in warning
    assert [(b.total, b.n) for b in bars] == [(60, 60)]


@pytest.mark.parametrize("steps", [2, 40])  # 40: the signal cuts a train call short after 16 stacked updates
def test_a_signal_checkpoints_every_member_and_the_resume_ends_as_the_uninterrupted_run(
    tmp_path, monkeypatch, capfd, steps
):
    """A population had no checkpoint: Ctrl-C or SIGTERM lost all of its training."""
    args = [*POP, *COMMON, *TINY["sac"], "agent.total_timesteps=120", f"agent.hparams.gradient_steps={steps}"]
    straight = population_run.run(compose_cfg(args), tmp_path / "straight")

    updates = Population.train

    def terminated_at_the_fifth_update(self, gradient_steps, first=0, should_stop=None):
        if self.n_updates == 4 * gradient_steps:
            signal.raise_signal(signal.SIGTERM)  # arrives mid-loop, as a kill would
        return updates(self, gradient_steps, first, should_stop)

    monkeypatch.setattr(Population, "train", terminated_at_the_fifth_update)
    run_dir = tmp_path / "outputs" / "runs" / "sac-after" / "t0"
    with pytest.raises(TrainingInterrupted) as stop:
        population_run.run(compose_cfg(args), run_dir)
    assert stop.value.signame == "SIGTERM" and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["population"] == 2 and 20 < state["num_timesteps"] < 120
    assert all((run_dir / "checkpoint" / f"member_{i}" / "state.json").is_file() for i in range(2))
    assert not list(run_dir.glob("member_*/metrics.json"))
    unfinished = json.loads((run_dir / "checkpoint" / "population.json").read_text())["unfinished"]
    assert unfinished == (None if steps < 16 else [16, steps])  # the rest of the update, done first on resume
    monkeypatch.setattr(Population, "train", updates)
    member = run_cli(f"resume={run_dir / 'member_0'}", cwd=tmp_path, capfd=capfd)
    assert member.returncode == 2 and f"which checkpoints as a whole: resume={run_dir}" in member.stderr

    resumed = run_cli(f"resume={run_dir}", "progress_bar=false", cwd=tmp_path, capfd=capfd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (run_dir / "checkpoint").exists() and list(run_dir.glob("resumes/*/bess_rl.log"))
    for i, uninterrupted in enumerate(straight):
        rd = RunDir(run_dir / f"member_{i}")
        metrics = json.loads(rd.metrics.read_text())
        assert {k: metrics[k] for k in COMPARED} == {k: uninterrupted[k] for k in COMPARED}
        assert json.loads(rd.run_info.read_text())["resumed"][0]["from_step"] == state["num_timesteps"]
    with pytest.raises(RunDirError, match="is a population run folder: replay one member's"):
        load_run_config(run_dir)  # its population_config.yaml is no single run's config


def test_a_population_checkpoints_every_checkpoint_every_steps_and_discards_it_when_done(tmp_path, monkeypatch):
    saved = []
    save = checkpoint.save_population

    def recording(pop, directory, reason, *prints):
        saved.append((pop.num_timesteps, reason, pop.size))
        return save(pop, directory, reason, *prints)

    monkeypatch.setattr(checkpoint, "save_population", recording)
    args = [*POP, *COMMON, *TINY["sac"], "agent.total_timesteps=120", "checkpoint_every_steps=50"]
    population_run.run(compose_cfg(args), tmp_path / "pop")
    assert saved == [(50, "periodic", 2), (100, "periodic", 2)]
    assert not list((tmp_path / "pop").glob("checkpoint*"))  # the results are on disk

"""population.size=N: one normal run folder per member, refused inputs, and the planner counting N members."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from bess_rl.agents.fast_sac import FastSAC
from bess_rl.experiment import hardware, planner, population_run, train
from bess_rl.experiment.config import ConfigError, validate
from bess_rl.experiment.run_dir import RunDir
from tests.helpers import COMMON, TINY, compose_cfg

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

    class Bar:  # tqdm.rich's bar, recording its total and updates
        def __init__(self, total: int) -> None:
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, n: int = 1) -> None:
            self.n += n

        def close(self) -> None:
            pass

    monkeypatch.setattr(population_run, "tqdm", Bar)
    cfg = compose_cfg([*POP, *COMMON, *TINY["sac"], "progress_bar=true", "warn_hours=1e-9"])
    with caplog.at_level(logging.INFO, logger="bess_rl.experiment.eta"):
        members = population_run.run(cfg, tmp_path / "pop")
    (estimate,) = [r.getMessage() for r in caplog.records if "estimated wall time" in r.getMessage()]
    updates = members[0]["gradient_updates"]
    assert "120 env steps at" in estimate and f" {updates} stacked updates at" in estimate and updates > 0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.endswith("eta")]
    assert "over warn_hours=1e-09" in warning and "agent.total_timesteps=" in warning
    assert [(b.total, b.n) for b in bars] == [(60, 60)]

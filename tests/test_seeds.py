"""Seeds aggregated with rliable's estimators, and a report that keeps every seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from rliable import metrics

from bess_rl.experiment import seeds
from bess_rl.tools.report import write_report
from tests.helpers import table


def test_bootstrap_statistics_are_rliables_on_every_resample():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 2)), rng.normal(size=(4, 2))
    rx, ry = seeds._resamples(x, rng), seeds._resamples(y, rng)
    for i in range(20):
        assert seeds._iqm(rx)[i] == pytest.approx(metrics.aggregate_iqm(rx[i]))
        assert seeds._mean(rx)[i] == pytest.approx(metrics.aggregate_mean(rx[i]))
        assert seeds._poi(rx, ry)[i] == pytest.approx(metrics.probability_of_improvement(rx[i], ry[i]))


def test_intervals_hold_the_estimate_and_one_seed_has_none():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 30.0])
    iqm, mean = seeds.iqm(scores), seeds.mean(scores)
    assert iqm.value == pytest.approx(3.0) and mean.value == pytest.approx(8.0)  # IQM shrugs off the outlier
    assert iqm.low <= iqm.value <= iqm.high and mean.low <= mean.value <= mean.high
    assert seeds.iqm(scores) == iqm  # seeded: the same report twice
    assert np.isnan(seeds.iqm(np.array([2.0])).low)
    better = seeds.probability_of_improvement(scores + 100, scores)
    assert better.value == 1.0 and better.low == 1.0


def fake_run(folder: Path, agent: str, seed: int, penalised: float, hparams: dict | None = None, **config) -> None:
    """A finished run folder as ``train.run`` writes it, without training."""
    folder.mkdir(parents=True)
    refs = {"uncontrolled": {"co2_kg": 100.0, "ev_unmet_kwh": 0.0}, "lp_optimum": {"co2_kg": 90.0, "ev_unmet_kwh": 0.0}}
    metrics = {"agent": agent, "preset": "after", "seed": seed, "held_out": True, "co2_kg": 100 - penalised,
               "co2_reduction_pct": penalised, "penalised_reduction_pct": penalised, "lp_gap_closed_pct": 0.0,
               "ev_unmet_kwh": 0.0, "references": refs, "eval_hours": 168, "flags": [], "total_timesteps": 64,
               "train_part": {"penalised_reduction_pct": penalised + 1}}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    cfg = {"seed": seed, "agent": {"name": agent, "hparams": hparams or {}}, "preset": {"name": "after"},
           "overrides": [f"seed={seed}"], "site": {"unmet_penalty_kg_per_kwh": 2.0}, **config}  # fmt: skip
    (folder / "resolved_config.yaml").write_text(yaml.safe_dump(cfg))


def test_report_keeps_every_seed_and_compares_agents(tmp_path):
    for seed in range(3):
        fake_run(tmp_path / "ppo-after" / f"seed_{seed}", "ppo", seed, 2.0 + seed)
        fake_run(tmp_path / "sac-after" / f"seed_{seed}", "sac", seed, -1.0 - seed)
    md = write_report([tmp_path], tmp_path / "report").read_text()
    rows = table(md, "Across seeds")
    assert [r[0] for r in rows] == ["PPO after", "SAC after"] and rows[0][1] == "3 (0 1 2)"
    assert rows[0][2].startswith("3.00% [") and rows[1][3].startswith("-2.00% [")
    assert rows[0][6] == "4.00%"  # training part beside the held-out part
    (poi,) = table(md, "Probability of improvement")
    assert poi[:2] == ["PPO after", "SAC after"] and poi[2].startswith("1.00 [")
    results = table(md, "Results per agent and preset")
    assert len(results) == 6 and sorted(r[15] for r in results if r[0] == "PPO") == ["0", "1", "2"]
    references = {r[0]: r for r in table(md, "References")}
    assert references["LP bound"][3] == "10.00%"


def test_configs_that_differ_beyond_the_seed_are_not_pooled(tmp_path):
    for seed in range(2):
        fake_run(tmp_path / "a" / str(seed), "ppo", seed, 1.0, agent_extra=1)
        fake_run(tmp_path / "b" / str(seed), "ppo", seed, 5.0, agent_extra=2)
    rows = table(write_report([tmp_path], tmp_path / "report").read_text(), "Across seeds")
    assert [r[1] for r in rows] == ["2 (0 1)", "2 (0 1)"] and rows[0][2].startswith("5.00%")


def test_seeds_pool_on_what_ran_not_on_the_budget_menu(tmp_path):
    changed = [{"key": "agent.total_timesteps", "from": 100, "to": 20}]
    fake_run(tmp_path / "0", "sac", 0, 1.0, budget={"name": "cpu", "changed": changed, "options": {"cpu": {}}})
    fake_run(tmp_path / "1", "sac", 1, 2.0, budget={"name": "cpu", "changed": changed, "options": {"cpu": {}, "x": {}}})
    rows = table(write_report([tmp_path], tmp_path / "report").read_text(), "Across seeds")
    assert len(rows) == 1 and rows[0][1] == "2 (0 1)"

"""Hydra composition of every agent x hardware x preset, tiny training runs, replay, CLI errors."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import torch
from hydra.errors import HydraException
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env

from bess_rl.agents.capabilities import capabilities
from bess_rl.agents.fast_onpolicy import FastA2C, FastPPO
from bess_rl.agents.fast_sac import DeviceReplayBuffer, FastSAC
from bess_rl.experiment import hardware as hardware_module
from bess_rl.experiment import planner
from bess_rl.experiment.build import algo_class, build_eval_env, build_model
from bess_rl.experiment.config import ConfigError, validate
from bess_rl.experiment.errors import USER_ERRORS
from bess_rl.experiment.run_dir import RunDir
from bess_rl.experiment.train import run, steps_to_run
from bess_rl.site.env import PvBessEvEnv
from bess_rl.tools.replay import replay
from tests.helpers import COMMON, TINY, cli, compose_cfg, run_cli, small_env

AGENTS, HARDWARE, PRESETS = ("sac", "ppo", "a2c"), ("cpu", "cuda", "rtx4060"), ("before", "after")

# What docs/presets.md's tables say, as SB3 parameters (see conf/agent_preset).
PRESET_TABLES = {
    ("sac", "before"): {"batch_size": 512, "buffer_size": 5_000_000, "gradient_steps": 1024, "train_freq": 1,
                        "learning_starts": 1000, "log_interval": 100},
    ("sac", "after"): {"batch_size": 256, "buffer_size": 1_000_000, "gradient_steps": 2048, "train_freq": 2,
                       "learning_starts": 500, "log_interval": 50},
    ("ppo", "before"): {"n_steps": 4096, "n_epochs": 25, "batch_size": 512, "log_interval": 250},
    ("ppo", "after"): {"n_steps": 8192, "n_epochs": 40, "batch_size": 512, "log_interval": 100},
    ("a2c", "before"): {"n_steps": 16, "rollout": 1024, "learning_rate": 0.002, "total_timesteps": 3 * 8760,
                        "log_interval": 250},
    ("a2c", "after"): {"n_steps": 128, "rollout": 2048, "learning_rate": 0.001, "total_timesteps": 5 * 8760,
                       "log_interval": 100},
}  # fmt: skip


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("preset", PRESETS)
def test_presets_are_the_documented_tables(agent, preset):
    cfg = compose_cfg([f"agent={agent}", f"preset={preset}"])
    hp = cfg.agent.hparams
    for key, want in PRESET_TABLES[(agent, preset)].items():
        if key == "rollout":
            got = cfg.agent.n_envs * hp.n_steps
        elif key in ("log_interval", "total_timesteps"):
            got = cfg.agent[key]
        else:
            got = hp[key]
        assert got == want, f"{agent}/{preset}: {key} = {got}, docs/presets.md says {want}"
    validate(cfg)


@pytest.mark.parametrize("hardware", HARDWARE)
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("agent", AGENTS)
def test_every_combination_composes_validates_and_resolves_to_the_cpu(agent, hardware, preset):
    """All 18 combinations take the same CPU fallback here: composed, validated, resolved and planned,
    while training runs once per distinct code path (``test_distinct_paths_train_and_record_what_ran``)."""
    cfg = compose_cfg([f"agent={agent}", f"hardware={hardware}", f"preset={preset}"])
    validate(cfg)
    runtime = hardware_module.resolve(cfg.hardware, algo_class(cfg.agent.algo), cfg.agent.device)
    assert runtime.device == "cpu" and not runtime.cuda_graphs and not runtime.tf32
    if hardware != "cpu":  # why it runs on the CPU is recorded, never silent
        expected = "has none" if agent == "sac" else "trains on CPU"
        assert any(expected in note for note in runtime.notes)
    env = build_eval_env(cfg)
    plan = planner.for_run(cfg, env.observation_space, env.action_space, runtime.device)
    assert plan.total > 0


def applied(model: BaseAlgorithm) -> dict[str, Any]:
    """What the model really does, read from the model itself (plain SB3 has no switch: nothing applied)."""
    return {
        "device": model.device.type,
        "amp": model.amp if isinstance(model, FastSAC) else "none",
        "cuda_graphs": bool(model.cuda_graphs) if isinstance(model, FastSAC | FastPPO | FastA2C) else False,
        "compile": model.compile_mode if isinstance(model, FastSAC) else "none",
    }


@pytest.mark.parametrize("hardware", HARDWARE)
@pytest.mark.parametrize(
    "agent_algo",
    [("sac", "bess_rl.agents.fast_sac.FastSAC"), ("sac", "stable_baselines3.SAC"),
     ("ppo", "bess_rl.agents.fast_onpolicy.FastPPO"), ("ppo", "stable_baselines3.PPO"),
     ("a2c", "bess_rl.agents.fast_onpolicy.FastA2C"), ("a2c", "stable_baselines3.A2C")],
)  # fmt: skip
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_recorded_runtime_is_what_the_model_applies(agent_algo, hardware, amp):
    """run_info's runtime (``Runtime.as_dict``) equals the model's own switches, AMP asked or not."""
    agent, algo = agent_algo
    overrides = [f"agent={agent}", f"agent.algo={algo}", f"hardware={hardware}", f"hardware.amp={amp}"]
    cfg = compose_cfg([*overrides, "hardware.compile=default", *COMMON, *TINY[agent]])
    runtime = hardware_module.resolve(cfg.hardware, algo_class(cfg.agent.algo), cfg.agent.device)
    model = build_model(cfg, make_vec_env(small_env, n_envs=cfg.agent.n_envs), runtime)
    recorded = {k: runtime.as_dict()[k] for k in ("device", "amp", "cuda_graphs", "compile")}
    assert recorded == applied(model)
    if algo.startswith("stable_baselines3") and (amp != "none" and hardware == "cpu"):
        assert any("has no bf16 autocast" in note for note in runtime.notes)


@pytest.mark.parametrize(
    ("agent", "overrides"),
    [("sac", ["hardware=rtx4060"]), ("sac", ["agent.algo=stable_baselines3.SAC", "hardware.amp=bf16"]),
     ("ppo", ["hardware=cuda"]), ("a2c", ["hardware=cpu"])],
)  # fmt: skip
def test_distinct_paths_train_and_record_what_ran(tmp_path, agent, overrides):
    cfg = compose_cfg([f"agent={agent}", *overrides, *COMMON, *TINY[agent]])
    metrics = run(cfg, tmp_path)
    assert metrics["device"] == "cpu"
    assert metrics["total_timesteps"] >= cfg.agent.total_timesteps
    for name in ("metrics.json", "run_info.json", "resolved_config.yaml", "model.zip", "progress.csv"):
        assert (tmp_path / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
    info = json.loads((tmp_path / "run_info.json").read_text())
    model = algo_class(cfg.agent.algo).load(tmp_path / "model.zip", device="cpu")
    saved = {k: info["runtime"][k] for k in ("amp", "cuda_graphs", "compile")}
    assert saved == {k: v for k, v in applied(model).items() if k != "device"}
    assert algo_class(info["runtime"]["algo"]) is algo_class(cfg.agent.algo)
    refs = metrics["references"]
    assert refs["lp_optimum"]["co2_kg"] <= refs["rule_based"]["co2_kg"] * (1 + 1e-7)


def test_run_folder_has_plot_and_metrics(tmp_path):
    cfg = compose_cfg(["agent=ppo", "scenario.window_hours=168", "progress_bar=false", *TINY["ppo"]])
    metrics = run(cfg, tmp_path)
    assert (tmp_path / "dispatch_week.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("co2_kg", "co2_reduction_pct", "lp_gap_closed_pct", "ev_unmet_kwh", "timesteps_per_hour",
                "peak_memory_mb"):  # fmt: skip
        assert saved[key] == pytest.approx(metrics[key])
    assert saved["peak_memory_mb"] > 50 and saved["timesteps_per_hour"] > 0
    assert saved["gradient_updates"] == 2  # gradient steps: 1 rollout of 64 x 1 epoch in minibatches of 32


@pytest.mark.parametrize("agent", ["ppo", "sac"])
def test_replay_gives_identical_metrics(tmp_path, agent):
    cfg = compose_cfg([f"agent={agent}", *COMMON, *TINY[agent]])
    run(cfg, tmp_path)
    replayed, diffs = replay(tmp_path)
    assert diffs == []
    assert replayed["co2_kg"] == json.loads((tmp_path / "metrics.json").read_text())["co2_kg"]


def test_strict_hardware_refuses_to_fall_back(tmp_path):
    from bess_rl.experiment.hardware import HardwareError

    cfg = compose_cfg(["hardware=rtx4060", "hardware.strict=true", *COMMON, *TINY["sac"]])
    with pytest.raises(HardwareError, match="asks for CUDA but this machine has none"):
        run(cfg, tmp_path)


@pytest.mark.parametrize(
    ("overrides", "asker"),
    [(["hardware=rtx4060"], "hardware=rtx4060"), (["hardware=cpu", "agent.device=cuda"], "agent.device=cuda")],
)
def test_the_cuda_fallback_names_the_setting_that_asked_for_cuda(monkeypatch, overrides, asker):
    """``agent.device=cuda`` on the CPU profile was said as "hardware=cpu asks for CUDA"."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_cfg(["agent=sac", *overrides])
    runtime = hardware_module.resolve(cfg.hardware, FastSAC, cfg.agent.device)
    assert runtime.device == "cpu"
    assert f"{asker} asks for CUDA but this machine has none: running on CPU" in " ".join(runtime.notes)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("agent.n_envs=0", "agent.n_envs must be > 0, got 0"),
        ("agent.hparams.batch_size=-4", "agent.hparams.batch_size must be > 0, got -4"),
        ("agent.hparams.net_arch=[0]", "net_arch sizes must be > 0"),
        ("objective=co3", "objective 'co3' is not one of"),
        ("seed=abc", "seed must be an integer, got 'abc'"),
        ("plot=maybe", "plot must be true or false, got 'maybe'"),
        ("hardware.compile=fastest", "hardware.compile must be one of"),
    ],
)
def test_nonsense_values_fail_validation(override, message):
    cfg = compose_cfg(["agent=sac", override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_minibatch_larger_than_rollout_is_refused():
    cfg = compose_cfg(["agent=ppo", "agent.hparams.n_steps=64"])
    with pytest.raises(ConfigError, match="exceeds the rollout n_envs x n_steps = 64"):
        validate(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agent=sacc"], "Could not find 'agent/sacc'"),
        (["agent.hparams.batch_size=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
        (["scenario.eval_data=citylearn_building_1[0:9]"], """quote a value with brackets: 'scenario.eval_data="c"""),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path, args, message):
    """Hydra's composition errors and a schema type error: one line from the real entry point, in a process
    of its own (they are refused before torch is imported)."""
    proc = cli(*args, "progress_bar=false", cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("arg", "hint"),
    [
        ("scenario.hourly_path=~/x.csv", """(quote a value with such characters: 'scenario.hourly_path="~/x.csv"')"""),
        ("scenario.hourly_path=/tmp/a,b.csv",
         """add -m to sweep; quote a path or text with one: 'scenario.hourly_path="/tmp/a,b.csv"')"""),
    ],
)  # fmt: skip
def test_a_value_hydra_takes_only_quoted_is_told_how_to_quote_it(tmp_path, capfd, arg, hint):
    """Hydra's hint (a line of its own, which the one line cut) or none: now the override that works."""
    proc = run_cli(arg, cwd=tmp_path, capfd=capfd)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.rstrip().endswith(hint), proc.stderr


def test_our_own_input_errors_are_one_clear_line(tmp_path, capfd):
    proc = run_cli("scenario.hourly_path=/no/such.csv", "progress_bar=false", cwd=tmp_path, capfd=capfd)
    assert proc.returncode == 2
    assert "scenario file not found: /no/such.csv" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agent.hparams.batch_sise=3"], "Could not override 'agent.hparams.batch_sise'"),
        (["hardware.amp=fp8"], "Invalid value 'fp8', expected one of [none, bf16, fp16]"),
    ],
)
def test_composition_errors_name_the_override(args, message):
    """Hydra refuses these at compose time; its message (with its cause, as the CLI prints) names the fix."""
    with pytest.raises(HydraException) as excinfo:
        compose_cfg(args)
    assert message in f"{excinfo.value} {excinfo.value.__cause__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agent.n_envs=0"], "agent.n_envs must be > 0, got 0"),
        (["site.soc_min=1.5"], "site needs 0 <= soc_min < soc_max <= 1"),
        (["scenario.episode_hours=100000"], "scenario.episode_hours must be in [1, 168], got 100000"),
        (["scenario.forecast_hours=-1"], "scenario.forecast_hours must be >= 0, got -1"),
    ],
)
def test_bad_values_are_user_errors_before_training(tmp_path, args, message):
    """What the entry point prints as one line (``USER_ERRORS``), raised before any training."""
    with pytest.raises(USER_ERRORS, match=re.escape(message)):
        run(compose_cfg([*args, *COMMON]), tmp_path)
    assert not RunDir(tmp_path).model.exists()


@pytest.mark.parametrize(
    ("overrides", "algo", "amp"),
    [
        (["hardware=cpu"], "FastSAC", "none"),
        (["hardware=cpu", "hardware.amp=bf16"], "FastSAC", "bf16"),  # CPU autocast when the CPU profile asks
        (["hardware=rtx4060"], "FastSAC", "none"),  # a GPU profile's AMP is off after the CPU fallback
        (["agent.algo=stable_baselines3.SAC", "hardware.amp=bf16"], "SAC", "none"),  # SB3 has no autocast
    ],
)
def test_sac_update_path_follows_config(overrides, algo, amp):
    cfg = compose_cfg(["agent=sac", *overrides, *COMMON, *TINY["sac"]])
    runtime = hardware_module.resolve(cfg.hardware, algo_class(cfg.agent.algo), cfg.agent.device)
    model = build_model(cfg, make_vec_env(small_env), runtime)
    assert type(model).__name__ == algo and runtime.amp == amp
    assert isinstance(model.replay_buffer, DeviceReplayBuffer) == (algo == "FastSAC")


def test_acceleration_switches_are_recorded_off_for_on_policy_agents():
    cfg = compose_cfg(["agent=ppo", "hardware=cpu", "hardware.amp=bf16", "hardware.compile=default"])
    runtime = hardware_module.resolve(cfg.hardware, algo_class(cfg.agent.algo), cfg.agent.device)
    assert (runtime.amp, runtime.compile) == ("none", "none")
    assert any("FastPPO has no bf16 autocast" in note for note in runtime.notes)
    assert any("FastPPO does not compile its update" in note for note in runtime.notes)


def test_compile_on_a_cpu_without_a_compiler_is_refused_before_training(monkeypatch):
    """A CPU compile builds C++ kernels: without a compiler the run stops in one line, not inside inductor;
    an agent that compiles nothing does not need one."""
    monkeypatch.setenv("CXX", "no-such-c++")
    cfg = compose_cfg(["agent=sac", "hardware=cpu", "hardware.compile=default"])
    with pytest.raises(hardware_module.HardwareError, match="needs a C\\+\\+ compiler: no-such-c\\+\\+ not found"):
        hardware_module.resolve(cfg.hardware, algo_class(cfg.agent.algo), cfg.agent.device)
    ppo = compose_cfg(["agent=ppo", "hardware=cpu", "hardware.compile=default"])
    assert hardware_module.resolve(ppo.hardware, algo_class(ppo.agent.algo), ppo.agent.device).compile == "none"


@pytest.mark.parametrize(("agent", "cls"), [("ppo", FastPPO), ("a2c", FastA2C), ("sac", FastSAC)])
def test_cuda_graphs_reach_every_fast_agent_on_a_gpu(agent, cls, monkeypatch, no_tf32):
    """On a GPU (faked: only the resolution is checked) ``hardware.cuda_graphs`` reaches PPO/A2C too,
    while AMP and compile stay with the class that declares them (FastSAC)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = compose_cfg([f"agent={agent}", "hardware=rtx4060", "agent.device=cuda"])
    runtime = hardware_module.resolve(cfg.hardware, cls, cfg.agent.device)
    assert runtime.device == "cuda" and runtime.cuda_graphs
    want = {"cuda_graphs": True} if agent != "sac" else {"amp": "bf16", "cuda_graphs": True, "compile_mode": "none"}
    assert runtime.switches(capabilities(cls)) == want
    assert runtime.switches(capabilities(PPO)) == {}  # plain SB3 takes none


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [(PPO, {"n_steps": 32, "batch_size": 32, "n_epochs": 1}), (SAC, {"train_freq": 3, "learning_starts": 500})],
)
def test_progress_total_is_the_steps_learn_runs(cls, kwargs):
    """SB3 overshoots the requested steps to whole collections; the progress bar and log use the real count."""
    model = cls("MlpPolicy", make_vec_env(PvBessEvEnv, n_envs=2), policy_kwargs={"net_arch": [8]}, seed=0, **kwargs)
    model.learn(70)
    assert model.num_timesteps == steps_to_run(model, 70) > 70  # 2 rollouts of 2 x 32; 12 blocks of 2 x 3

"""``python -m bess_rl.doctor``: statuses and exit codes on this machine, and the GPU smoke tests where there is one."""

from __future__ import annotations

import pytest
import torch

from bess_rl.agents import onednn_linear
from bess_rl.agents.capabilities import cpu_compiler
from bess_rl.experiment.config import compose_config
from bess_rl.site.env import PvBessEvEnv
from bess_rl.tools import doctor as doctor_module
from bess_rl.tools.doctor import Wants, check_config, check_cuda_graph, main

GPU_ITEMS = ("CUDA", "GPU", "fp16", "TF32", "CUDA graph")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")


def doctor(capsys: pytest.CaptureFixture[str], *overrides: str) -> tuple[int, dict[str, str], str]:
    """Exit code, {item: status} and the printed report."""
    rc = main(list(overrides))
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line[:4] in ("PASS", "WARN", "FAIL", "SKIP")]
    return rc, {line[6:17].strip(): line[:4] for line in lines}, out


def test_cpu_profile_exits_0(capsys):
    rc, status, out = doctor(capsys, "hardware=cpu")
    assert rc == 0, out
    assert "FAIL" not in status.values()
    assert status["torch"] == status["config"] == status["memory"] == "PASS"
    # a real autocast matmul on the CPU here; a CPU without bf16 instructions is told it gains nothing
    assert status["bf16"] == ("PASS" if onednn_linear.native_bf16() or torch.cuda.is_available() else "WARN")
    if not torch.cuda.is_available():
        assert {item: status[item] for item in GPU_ITEMS} == dict.fromkeys(GPU_ITEMS, "SKIP")


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    ("overrides", "offered"),
    [
        ((), True),
        (("hardware.amp=bf16",), False),
        (("agent=ppo",), False),
        (("agent.algo=stable_baselines3.SAC",), False),
    ],
)
def test_bf16_tip_only_where_the_cpu_and_the_update_have_bf16_and_it_is_off(monkeypatch, native, overrides, offered):
    monkeypatch.setattr(onednn_linear, "native_bf16", lambda: native)
    check, _ = check_config(compose_config(["hardware=cpu", *overrides]))
    assert check.status == "PASS", check.value
    assert ("tip: this CPU multiplies bf16 natively" in check.value) == (offered and native)


def test_a_missing_cpu_compiler_fails_only_where_compile_is_asked(capsys, monkeypatch):
    assert doctor(capsys, "hardware=cpu")[1]["compile"] == ("PASS" if cpu_compiler() else "WARN")
    monkeypatch.setenv("CXX", "no-such-c++")
    rc, status, out = doctor(capsys, "hardware=cpu")
    assert rc == 0 and status["compile"] == "WARN" and "no-such-c++ not found" in out
    rc, status, _ = doctor(capsys, "hardware=cpu", "hardware.compile=default")
    assert rc == 1 and status["compile"] == "FAIL"


@without_cuda
def test_strict_gpu_profile_without_cuda_fails_on_cuda(capsys):
    rc, status, out = doctor(capsys, "hardware=rtx4060", "hardware.strict=true")
    assert rc == 1
    assert status["CUDA"] == status["config"] == "FAIL"
    assert "FAIL  config      hardware=rtx4060 asks for CUDA but this machine has none" in out
    assert status["memory@cuda"] == "PASS"  # the after preset still fits the 4060 it asks for


@without_cuda
def test_gpu_profile_without_cuda_warns_and_plans_both_devices(capsys):
    rc, status, out = doctor(capsys, "hardware=rtx4060")
    assert rc == 0, out
    assert status["CUDA"] == status["config"] == "WARN"
    assert status["memory"] == status["memory@cuda"] == "PASS"
    assert "of host RAM (budget 8.6 GB)" in out and "of GPU memory (budget 8.6 GB)" in out


@without_cuda
@pytest.mark.parametrize(
    ("algo", "where"), [("bess_rl.agents.fast_sac.FastSAC", "device"), ("stable_baselines3.SAC", "host")]
)
def test_gpu_memory_plan_puts_the_replay_buffer_where_the_run_does(capsys, algo, where):
    """FastSAC keeps its replay buffer on the GPU, SB3 in host RAM: the doctor plans what ``train.run`` checks."""
    _, status, out = doctor(capsys, "hardware=rtx4060", "preset=before", f"agent.algo={algo}")
    gpu_plan = out.split("memory@cuda")[1]
    assert status["memory@cuda"] == "PASS"
    obs = PvBessEvEnv().observation_space.shape[0]
    gb = 5_000_000 * (2 * obs * 4 + (2 + 3) * 4) / 1e9  # rows x (obs, next obs, 2 actions + reward, done, timeout)
    assert f"replay buffer   {where:<6}   {gb:.2f} GB" in gpu_plan


def test_algo_that_does_not_import_skips_the_gpu_memory_plan(capsys):
    rc, status, out = doctor(capsys, "hardware=rtx4060", "agent.algo=nowhere.Algo")
    assert rc == 1 and status["config"] == "FAIL"
    assert status["memory@cuda"] == "SKIP" and "no estimate: agent.algo 'nowhere.Algo' is not allowed" in out


def test_config_that_does_not_compose_is_a_fail_line(capsys):
    rc, status, out = doctor(capsys, "agent=sacc")
    assert rc == 1
    assert status["config"] == "FAIL" and "Could not find 'agent/sacc'" in out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["agent.hparams.gamma=2"], "agent.hparams.gamma must be a number in (0, 1], got 2.0"),
        (["seed=-1"], "seed must be in [0, 4294967295], got -1"),
        (["site.pv_kwp=nan"], "site.pv_kwp must be a finite number, got nan"),
        (["scenario.forecast_hours=10000"], "scenario.forecast_hours must be <= 168, got 10000"),
        (["hardware.memory_budget_gb=nan"], "hardware.memory_budget_gb must be a number in (0, inf) (or null)"),
        (["population.size=2", "population.gamma=[0.5,7]"], "population.gamma[1] must be a number in (0, 1], got 7.0"),
    ],
)
def test_a_value_a_run_refuses_is_a_fail_line(overrides, message):
    """Every user error of ``validate`` (InputError, SiteError, ...), not only a ConfigError, was a traceback."""
    check, runtime = check_config(compose_config(["hardware=cpu", *overrides]))
    assert (check.status, runtime) == ("FAIL", None) and check.value.startswith(message)


def test_a_forecast_the_env_refuses_is_a_fail_line_and_no_memory_plan(capsys):
    """The env's own check of ``scenario.forecast_hours``, said as a run says it (``make_env``), not its ValueError."""
    rc, status, out = doctor(capsys, "hardware=cpu", "scenario.forecast_hours=-1")
    assert rc == 1 and status["config"] == "FAIL" and status["memory"] == "SKIP"
    assert "FAIL  config      scenario.forecast_hours must be >= 0, got -1\n" in out


def test_over_budget_plan_fails_with_the_halved_overrides(capsys):
    rc, status, out = doctor(capsys, "preset=before", "hardware.memory_budget_gb=0.5")
    assert rc == 1
    assert status["memory"] == "FAIL"
    assert "agent.hparams.buffer_size=2500000 agent.hparams.batch_size=256" in out


@pytest.mark.gpu
def test_cuda_graph_smoke_test_passes_on_a_gpu(capsys):
    graph = check_cuda_graph(Wants.of(compose_config(["hardware=cuda"])))
    assert graph.status == "PASS", graph.value
    rc, status, out = doctor(capsys, "hardware=rtx4060", "hardware.strict=true")
    assert status["CUDA graph"] == status["CUDA"] == status["GPU"] == "PASS", out
    assert rc == 0, out


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_is_the_usage_not_an_override(capsys, monkeypatch, flag):
    """``--help`` prints what is checked, that the arguments are Hydra overrides and the exit codes; no check runs."""
    monkeypatch.setattr(doctor_module, "run_checks", lambda overrides: pytest.fail("the checklist ran"))
    with pytest.raises(SystemExit) as exc:
        main(["hardware=cpu", flag])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the text to the terminal's width
    assert out.startswith("usage: python -m bess_rl.doctor")
    for said in ("CUDA graph capture", "memory plan", "Hydra overrides, as python -m bess_rl takes them", "exit codes"):
        assert said in out


def test_an_unknown_option_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--hardware", "cpu"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("error: unrecognized arguments: --hardware")

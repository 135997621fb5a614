"""The benchmark: runs every agent on a tiny time budget and writes complete, self-consistent JSON."""

from __future__ import annotations

import json
import platform
import time

import pytest
import torch

from bess_rl.agents import onednn_linear
from bess_rl.tools import bench
from bess_rl.tools.bench import at_threads, interleaved, main, parse_args


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """``main`` sets the torch thread count for the process; give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_tiny(extra: list[str]) -> dict:
    return main(["--presets", "before", "--seconds", "0.1", "--rounds", "1", "--prefill", "600", *extra])


def check_sac_rows(rows: list[dict], variants: set[str], launches: str, batch_size: int = 512) -> None:
    skipped = [r for r in rows if r.get("status") == "skipped"]
    rows = [r for r in rows if r not in skipped]
    # --count-launches: every torch variant's kernels (cuda) or top-level operators (cpu) per update
    assert all(r[launches] > 0 for r in rows if r["variant"] != "sbx")
    assert not any(launches in r for r in rows if r["variant"] == "sbx")
    assert {r["variant"] for r in rows} | {r["variant"] for r in skipped} == variants
    assert all(r["variant"] == "sbx" and "not installed" in r["note"] for r in skipped)
    base = next(r for r in rows if r["variant"].split()[0] == "sb3")
    for r in rows:
        assert r["grad_steps_per_s"] > 0 and r["collect_steps_per_s"] > 0 and r["batch_size"] == batch_size
        assert r["updates_per_env_step"] == 1024  # the "before" preset: 1,024 gradient steps per env step
        implied = 3600 / (1 / r["collect_steps_per_s"] + r["updates_per_env_step"] / r["grad_steps_per_s"])
        assert r["env_steps_per_hour"] == pytest.approx(implied)
        assert r["speedup_grad_steps_per_s"] == pytest.approx(r["grad_steps_per_s"] / base["grad_steps_per_s"])
    assert base["speedup_grad_steps_per_s"] == 1.0


def rows_by_agent(tmp_path, monkeypatch, agents: list[str], extra: list[str]) -> dict[str, list[dict]]:
    """The bench's rows per agent, from the JSON at its default path, checked against what ``main`` returned."""
    monkeypatch.setenv("BESS_RL_ROOT", str(tmp_path))  # the default JSON path is <root>/outputs/bench/<time>.json
    report = run_tiny(["--agents", *agents, "--device", "cpu", *extra])
    (path,) = (tmp_path / "outputs" / "bench").glob("*.json")
    data = json.loads(path.read_text())
    assert data["results"] == report["results"] and data["machine"]["cpu_count"] >= 1
    machine = data["machine"]  # which CPU kernels the SAC rows ran on
    assert (machine["onednn_fp32"], machine["native_bf16"]) == (onednn_linear.fast_fp32(), onednn_linear.native_bf16())
    assert machine["onednn_fp32"] == machine["torch_cpu_capability"].startswith("AVX512")
    if platform.machine() == "x86_64" and machine["native_bf16"]:  # the flags that make bf16 native are named
        assert {"avx512_bf16", "amx_bf16"} & set(machine["cpu_features"])
    assert torch.get_num_threads() == data["torch_threads"] == 1
    by_agent: dict[str, list[dict]] = {}
    for row in data["results"]:
        by_agent.setdefault(row["agent"], []).append(row)
    assert set(by_agent) == {"env", *agents}
    assert by_agent["env"][0]["env_steps_per_s"] > 0
    return by_agent


@pytest.mark.slow  # every SAC variant, profiled and timed
def test_bench_writes_json_with_every_sac_variant(tmp_path, monkeypatch):
    """Every SAC variant, a population and (``--compile``) their compiled steps, each compiled at the
    thread count it is timed at, all at the preset with ``--overrides`` applied (smaller nets, to keep
    this test short). ``torch.compile`` returns the step untraced here: the compile tests trace these
    same steps, and three traces would take ~20 s."""
    steps: list[str] = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: steps.append(fn.__qualname__) or fn)
    extra = ["--population", "2", "--count-launches", "--compile", "default"]
    extra += ["--overrides", "agent.hparams.batch_size=64", "agent.hparams.net_arch=[32,32]"]
    by_agent = rows_by_agent(tmp_path, monkeypatch, ["sac"], extra)
    populations = [row for row in by_agent["sac"] if row["variant"].startswith("population 2")]
    assert {row["variant"] for row in populations} == {"population 2", "population 2 compile default"}
    assert all(row["grad_steps_per_s"] > 0 and row["ops_per_update"] > 0 for row in populations)
    compiled = [row for row in by_agent["sac"] if "compile" in row["variant"]]
    assert all(row["torch_threads"] == 1 for row in compiled)
    assert sorted(steps) == ["ManualUpdate._update"] * 2 + ["Population._update"], steps  # one per compiled row
    by_agent["sac"] = [row for row in by_agent["sac"] if row not in populations]
    variants = {"sb3", "fast eager", "fast bf16", "fast mkl", "sbx", "fast compile default"}
    variants.add("fast bf16 compile default")
    check_sac_rows(by_agent["sac"], variants, "ops_per_update", batch_size=64)
    assert all(row["net_arch"] == [32, 32] for row in by_agent["sac"] if "status" not in row)


def test_bench_writes_json_with_the_on_policy_agents(tmp_path, monkeypatch):
    """Each on-policy agent's rows, over rollouts of the preset with ``--overrides`` applied (shorter)."""
    extra = ["--overrides", "agent.n_envs=4", "agent.hparams.n_steps=128"]
    by_agent = rows_by_agent(tmp_path, monkeypatch, ["ppo", "a2c"], extra)
    for agent in ("ppo", "a2c"):
        sb3, fast = by_agent[agent]
        assert (sb3["variant"], fast["variant"]) == ("sb3", "fast") and sb3["speedup_env_steps_per_hour"] == 1.0
        for row in (sb3, fast):
            assert row["env_steps_per_s"] > 0 and row["rollout_steps"] == 4 * 128 and "status" not in row
            assert row["env_steps_per_hour"] == pytest.approx(row["env_steps_per_s"] * 3600)
        assert fast["speedup_env_steps_per_hour"] == pytest.approx(fast["env_steps_per_s"] / sb3["env_steps_per_s"])


def test_at_threads_runs_the_job_at_its_count_and_restores():
    seen = []
    job = at_threads(lambda: seen.append(torch.get_num_threads()) or 1, 2)
    assert job() == 1 and seen == [2] and torch.get_num_threads() == 1


def test_interleaved_rates_follow_the_work_done():
    def job(units: int):
        def run() -> int:
            time.sleep(0.01)
            return units

        return run

    rates = interleaved({"one": job(1), "three": job(3)}, seconds=0.3, device="cpu")
    assert 10 < rates["one"] <= 100  # at most one unit per 10 ms sleep (a busy CI machine oversleeps)
    assert rates["three"] / rates["one"] == pytest.approx(3, rel=0.4)  # counting calls would give 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["agent.hparams.batch_size=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
        (["agent.hparams.batch_size=0"], "agent.hparams.batch_size must be > 0, got 0"),
        (["agent.hparams.nope=3"], "Key 'nope' not in"),
        (["hardware.amp=bf16"], "the bench times agent.hparams.* and agent.n_envs only"),
        (["agent.hparams.gamma=2"], "agent.hparams.gamma must be a number in (0, 1], got 2.0"),  # an InputError
        (["agent.hparams.learning_rate=nan"], "agent.hparams.learning_rate must be a number in (0, inf), got nan"),
    ],
)
def test_bad_overrides_are_one_line_before_anything_is_timed(overrides, message, capsys):
    """Refused by the parser (exit 2, one line): a bad value, or a key the bench would silently ignore."""
    with pytest.raises(SystemExit) as exc:
        parse_args(["--agents", "sac", "--overrides", *overrides])
    assert exc.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("python -m bess_rl.bench: error: --overrides") and message in error, error


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_refused_without_a_gpu():
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda"])


@pytest.mark.gpu
def test_bench_on_cuda_compares_graphs(tmp_path):
    report = run_tiny(
        ["--agents", "sac", "a2c", "--device", "cuda", "--count-launches", "--json", str(tmp_path / "b.json")]
    )
    sac = [r for r in report["results"] if r["agent"] == "sac"]
    check_sac_rows(sac, {"sb3", "fast eager", "fast bf16", "fast graphs", "fast graphs+bf16"}, "kernels_per_update")
    assert all(r["device"].startswith("cuda") for r in sac)
    a2c = {r["variant"]: r for r in report["results"] if r["agent"] == "a2c"}
    assert set(a2c) == {"sb3", "fast", "sb3 cuda", "fast cuda", "fast graphs cuda"}
    assert all(r["device"].startswith("cuda") == name.endswith("cuda") for name, r in a2c.items())
    assert all(r["env_steps_per_s"] > 0 for r in a2c.values())


def test_each_job_runs_once_per_round_at_least():
    calls = {"a": 0, "b": 0}

    def job(name: str):
        def run() -> int:
            calls[name] += 1
            return 1

        return run

    interleaved({"a": job("a"), "b": job("b")}, seconds=1e-9, device="cpu", rounds=2)
    assert calls == {"a": 2, "b": 2}


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--seconds", "nan"), ("--seconds", "inf"), ("--seconds", "0"), ("--seconds", "-1"), ("--rounds", "0"),
     ("--prefill", "-1"), ("--threads", "0"), ("--sac-threads", "0"), ("--population", "0"), ("--seed", "-1"),
     ("--heap-keep-mb", "-1"), ("--heap-keep-mb", "2048"), ("--rounds", "two")],
)  # fmt: skip
def test_bad_sizes_are_one_argparse_line_naming_the_option(flag, value, capsys):
    """A NaN time box passes every ``<=`` and times nothing (a ZeroDivisionError after the prefill)."""
    with pytest.raises(SystemExit) as exc:
        parse_args(["--agents", "sac", flag, value])
    assert exc.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"python -m bess_rl.bench: error: argument {flag}: ") and value in error, error


def test_heap_keep_mb_takes_what_training_takes(capsys):
    """glibc's mallopt takes bytes as a C int: 2,048 MB and more wrapped around, yet the JSON recorded them applied."""
    assert parse_args(["--agents", "ppo", "--heap-keep-mb", "2047"]).heap_keep_mb == 2047
    assert parse_args(["--agents", "ppo", "--heap-keep-mb", "none"]).heap_keep_mb is None
    with pytest.raises(SystemExit):
        parse_args(["--agents", "ppo", "--heap-keep-mb", "4096"])
    assert capsys.readouterr().err.strip().endswith("argument --heap-keep-mb: must be in [0, 2047] (or none), got 4096")


def test_json_path_that_cannot_be_written_is_refused_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "bench_env", lambda *args: pytest.fail("measured"))
    (tmp_path / "file").write_text("")
    for path, problem in [(tmp_path, "is a folder"), (tmp_path / "file" / "b.json", "is a file, not a folder")]:
        with pytest.raises(SystemExit) as exc:
            main(["--agents", "ppo", "--presets", "before", "--json", str(path)])
        assert exc.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"python -m bess_rl.bench: error: --json {path}: ") and problem in error, error
    new = tmp_path / "new" / "folder" / "b.json"  # missing folders are made, as the write would
    assert parse_args(["--agents", "ppo", "--presets", "before", "--json", str(new)]).json == new
    assert new.parent.is_dir() and not any(new.parent.iterdir())


def interrupted_main(argv: list[str]) -> SystemExit:
    """``main``'s exit on Ctrl-C; a KeyboardInterrupt that escapes fails the test instead of ending pytest."""
    try:
        main(argv)
    except SystemExit as exc:
        return exc
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main as a traceback")
    pytest.fail("main returned")


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_says_in_one_line_where_the_finished_measurements_are(tmp_path, monkeypatch, capsys):
    path = tmp_path / "b.json"
    argv = ["--agents", "ppo", "--presets", "before", "--seconds", "0.05", "--rounds", "1", "--json", str(path)]
    monkeypatch.setattr(bench, "bench_on_policy", ctrl_c)  # the env measurement is in the JSON, PPO's is not
    assert interrupted_main(argv).code == 130
    assert capsys.readouterr().err.strip() == f"interrupted: the 1 measurement(s) finished are in {path}"
    assert [row["agent"] for row in json.loads(path.read_text())["results"]] == ["env"]

    path.unlink()
    monkeypatch.setattr(bench, "bench_env", ctrl_c)
    assert interrupted_main(argv).code == 130
    assert capsys.readouterr().err.strip() == "interrupted: nothing measured"
    assert not path.exists()

"""``python -m bess_rl`` and ``python -m bess_rl.<tool>``: what they do before and around a command's ``main``."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import bess_rl.__main__ as entry
from bess_rl import startup, tools
from bess_rl.experiment import checkpoint
from bess_rl.experiment.config import CONF_DIR
from tests.helpers import COMMON, TINY, run_cli

# Put on PYTHONPATH as sitecustomize: the process sends itself SIGINT at the first import ``name`` for which
# ``{when}`` holds.
INTERRUPT_AT_IMPORT = """
import os, signal, sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if {when}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)

sys.meta_path.insert(0, Interrupt())
"""


def interrupt(*_args: object) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_while_a_tool_imports_is_one_line_and_130(monkeypatch, capsys):
    monkeypatch.setattr(importlib, "import_module", interrupt)
    with pytest.raises(SystemExit) as stop:
        tools.forward("references")
    assert stop.value.code == 130 and capsys.readouterr().err == "interrupted: nothing done yet\n"


@pytest.mark.parametrize(("returned", "code"), [(2, 2), (0, 0), ({"results": []}, 0)])  # bench returns its report
def test_a_tool_s_exit_code_is_what_its_main_returns(monkeypatch, returned, code):
    monkeypatch.setattr(importlib, "import_module", lambda name: SimpleNamespace(main=lambda: returned))
    with pytest.raises(SystemExit) as stop:
        tools.forward("bench")
    assert stop.value.code == code


def test_ctrl_c_outside_training_s_own_handling_is_one_line_and_130(monkeypatch, capsys):
    monkeypatch.setattr(entry, "main", interrupt)
    with pytest.raises(SystemExit) as stop:
        entry.cli()
    assert stop.value.code == 130
    assert capsys.readouterr().err == "interrupted: finished runs and checkpoints are kept\n"


def _told_fail_after_a_failed_tell() -> None:
    """The sweeper tells FAIL when its ``tell`` of a finished trial raised: Optuna refuses that second ``tell`` with a
    ValueError, raised while handling the storage's error."""
    from optuna.exceptions import StorageInternalError

    def second_tell() -> None:
        raise ValueError("Values were told. Values cannot be specified when state is TrialState.FAIL.")

    try:
        raise StorageInternalError("An exception is raised during the commit.\nline two")
    except StorageInternalError:
        second_tell()


def _down() -> None:
    from optuna.exceptions import StorageInternalError

    raise StorageInternalError("An exception is raised during the commit.\nline two")


@pytest.mark.parametrize("down", [_down, _told_fail_after_a_failed_tell], ids=["raised", "under-a-second-tell"])
def test_a_storage_that_went_down_mid_sweep_is_one_line_and_exit_1(monkeypatch, capsys, down):
    """The sweeper's own call into a database that stopped answering raised a traceback (a real server stopped
    mid-trial: the ValueError of the sweeper's second ``tell``, over the storage's error)."""
    monkeypatch.setattr(entry, "main", down)
    with pytest.raises(SystemExit) as stop:
        entry.cli()
    err = capsys.readouterr().err
    assert stop.value.code == 1 and err.count("\n") == 1
    assert err.startswith("error: the study's storage failed during the sweep (An exception is raised during the ")
    assert "resume the study" in err


# Inside torch's import, once torch._subclasses.fake_tensor registered its exit hook (which logs at INFO).
IN_TORCH = "name.startswith('torch.') and hasattr(sys.modules.get('torch._subclasses.fake_tensor'), 'dump_cache_stats')"


@pytest.mark.slow  # processes of their own, for a real SIGINT
@pytest.mark.parametrize(
    ("command", "when", "said"),
    [
        (["bess_rl", "agent=sac"], "name == 'gymnasium'", "nothing done yet"),  # bess_rl/__init__.py, imported first
        (["bess_rl", "agent=sac"], "name == 'hydra'", "nothing done yet"),  # bess_rl/__main__.py's, before cli()
        (["bess_rl", "agent=sac"], IN_TORCH, "finished runs and checkpoints are kept"),  # and no torch INFO lines
        (["bess_rl.evaluate", "no-such-run"], "name == 'gymnasium'", "nothing done yet"),
        (["bess_rl.evaluate", "no-such-run"], "name == 'torch'", "nothing done yet"),  # the tool's, in forward
    ],
    ids=["run-gymnasium", "run-hydra", "run-torch", "tool-gymnasium", "tool-torch"],
)
def test_ctrl_c_at_any_import_of_the_start_is_one_line_and_130(tmp_path, command, when, said):
    (tmp_path / "sitecustomize.py").write_text(INTERRUPT_AT_IMPORT.format(when=when))
    path = os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "BESS_RL_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", *command], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 130 and proc.stderr == f"interrupted: {said}\n", proc.stderr


def test_every_tool_shim_is_a_command_the_start_guards():
    shims = {p.stem for p in Path(startup.__file__).parent.glob("*.py") if "forward(" in p.read_text()}
    assert shims == set(startup.TOOLS)


def test_an_import_outside_the_commands_keeps_python_s_ctrl_c(monkeypatch):
    """bess_rl imported by a script, a test or another program's ``python -m``: their Ctrl-C stays theirs."""
    for argv, orig in [
        (["x.py"], ["python", "x.py"]),
        (["-m"], ["python", "-m", "pytest"]),
        (["-m"], ["python", "-m"]),
    ]:
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.setattr(sys, "orig_argv", orig)
        assert startup.starting_module() not in startup.COMMANDS
    monkeypatch.setattr(sys, "orig_argv", ["python", "-X", "importtime", "-m", "bess_rl.report"])
    assert startup.starting_module() == "bess_rl.report"


def test_on_windows_the_package_says_where_it_runs_in_one_line():
    """Without this, the first import of fcntl (run folders' locks) was a traceback."""
    code = "import sys; sys.platform = 'win32'; import bess_rl"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "bess_rl runs on Linux and macOS; on Windows, run it inside WSL2 (CUDA works there)"
    ]


@pytest.mark.slow
def test_a_built_wheel_runs_from_anywhere_with_its_own_configs_and_data(tmp_path):
    """``pip install .`` (not editable) installs the wheel: its configs and data must be inside it, and a run
    launched outside the checkout must find them and write only under where it was launched."""
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(root / "pyproject.toml", src)
    shutil.copy(root / "README.md", src)
    shutil.copytree(root / "bess_rl", src / "bess_rl", ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "."]
    subprocess.run(build, cwd=src, check=True, capture_output=True, timeout=300)
    (wheel,) = (src / "dist").glob("bess_rl-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert {p.name for p in (site / "bess_rl" / "conf").iterdir()} == {p.name for p in CONF_DIR.iterdir()}

    launch = tmp_path / "elsewhere"
    launch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "BESS_RL_CACHE_DIR": str(launch / "cache")}
    env.pop("BESS_RL_ROOT", None)
    args = ["agent=ppo", *COMMON, *TINY["ppo"]]
    done = subprocess.run(
        [sys.executable, "-m", "bess_rl", *args], cwd=launch, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (metrics,) = (launch / "outputs" / "runs").glob("ppo-after/*/metrics.json")
    config = yaml.safe_load((metrics.parent / "resolved_config.yaml").read_text())
    assert config["agent"]["algo"].startswith("bess_rl.")
    assert (metrics.parent / "bess_rl.log").is_file()  # the job's name, not python -m's "__main__"
    info = json.loads((metrics.parent / "run_info.json").read_text())
    assert info["git_commit"] == "unknown (not a git checkout)"


def test_help_names_the_command_its_examples_and_the_other_commands():
    done = subprocess.run([sys.executable, "-m", "bess_rl", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "__main__" not in done.stdout
    assert done.stdout.startswith("python -m bess_rl: train an RL controller")
    assert "agent: a2c, ppo, sac" in done.stdout
    assert all(f".{tool}" in done.stdout for tool in startup.TOOLS)


def test_a_reader_that_went_away_ends_the_command_quietly():
    """``python -m bess_rl --help | head``: it said "error: cannot create None (Broken pipe)"."""
    command = [sys.executable, "-m", "bess_rl", "--help"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


@pytest.mark.slow  # a training process of its own
def test_a_reader_that_went_away_before_the_result_table_ends_the_run_quietly(tmp_path):
    """``python -m bess_rl ... | head -1``: Hydra said "Error executing job with overrides" on the way out."""
    command = [sys.executable, "-m", "bess_rl", *COMMON, "agent=ppo", *TINY["ppo"]]
    env = {**os.environ, "BESS_RL_ROOT": str(tmp_path)}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Error executing job" not in err and "Traceback" not in err, err
    assert list(tmp_path.glob("outputs/runs/*/*/metrics.json"))  # the run itself is complete


def test_a_command_started_with_ctrl_c_ignored_keeps_ignoring_it(monkeypatch):
    """A script's background job (``nohup``, ``cmd &``) starts with SIGINT ignored: Python keeps it so, and so do
    the start's guard and training's checkpoint handler now (they took it over); SIGTERM still checkpoints."""
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "bess_rl"])
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.getsignal(signal.SIGTERM)
    try:
        startup.guard()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        stop = checkpoint.StopRequest()
        stop.install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop.restore()
        assert signal.getsignal(signal.SIGTERM) is previous[1]
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def test_hydra_flags_that_exclude_each_other_are_one_line(tmp_path, capfd):
    """``-m`` with ``--cfg`` was a ValueError traceback from inside Hydra."""
    done = run_cli("-m", "hparams_search=ppo_optuna", "--cfg", "job", cwd=tmp_path, capfd=capfd)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified"
    ]


def test_a_flag_hydra_does_not_know_names_the_command(tmp_path, capfd):
    """Hydra's argparse named the command after ``sys.argv[0]``: "__main__.py: error: unrecognized arguments"."""
    done = run_cli("--nosuchflag", cwd=tmp_path, capfd=capfd)
    assert done.returncode == 2 and "__main__" not in done.stderr
    assert done.stderr.startswith("usage: python -m bess_rl [--help]")
    assert done.stderr.strip().splitlines()[-1] == "python -m bess_rl: error: unrecognized arguments: --nosuchflag"

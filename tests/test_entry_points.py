"""``python -m bess_rl`` and ``python -m bess_rl.<tool>``: what they do before and around a command's ``main``."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import bess_rl.__main__ as entry
from bess_rl import startup, tools

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


def test_a_storage_that_went_down_mid_sweep_is_one_line_and_exit_1(monkeypatch, capsys):
    """The sweeper's own call into a database that stopped answering raised a traceback."""
    from optuna.exceptions import StorageInternalError

    def down() -> None:
        raise StorageInternalError("An exception is raised during the commit.\nline two")

    monkeypatch.setattr(entry, "main", down)
    with pytest.raises(SystemExit) as stop:
        entry.cli()
    err = capsys.readouterr().err
    assert stop.value.code == 1 and err.count("\n") == 1
    assert err.startswith("error: the study's storage failed during the sweep (") and "resume the study" in err


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

"""``python -m bess_rl`` and ``python -m bess_rl.<tool>``: what they do before and around a command's ``main``."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest

import bess_rl.__main__ as entry
from bess_rl import tools


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

"""The run folder's atomic writes: whole files, readable by whoever a plain ``open()`` would let read them."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from bess_rl.experiment.provenance import git_commit
from bess_rl.experiment.run_dir import atomic_write_text, write_json


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path, umask):
    """On a cluster's shared filesystem a 0600 metrics.json (tempfile.mkstemp's mode) hides results from
    the other users; under umask 022 it must be 0644 like every other file of the run, under 077 0600."""
    previous = os.umask(umask)
    try:
        (tmp_path / "plain.txt").write_text("")  # what open() gives
        written = [write_json(tmp_path / "metrics.json", {"a": 1}), atomic_write_text(tmp_path / "c.yaml", "a: 1\n")]
        atomic_write_text(tmp_path / "c.yaml", "a: 2\n")  # replacing a file: the same mode again
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in [tmp_path / "plain.txt", *written]}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "metrics.json", "plain.txt"]  # no temporary left
    assert (tmp_path / "c.yaml").read_text() == "a: 2\n"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "c.yaml", "old\n")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["c.yaml"]


def test_the_commit_is_the_checkout_s_own_never_a_surrounding_repository_s(tmp_path):
    """An installed bess_rl inside another project's repository (its venv there) recorded that project's commit."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    site = tmp_path / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    assert git_commit(tmp_path) == sha
    (tmp_path / "f").write_text("y")
    assert git_commit(tmp_path) == sha + "+dirty"
    assert git_commit(site) == "unknown (not a git checkout)"

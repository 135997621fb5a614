"""Fixtures; the hooks that run ``slow`` tests first and skip ``gpu``-marked ones without CUDA, the one that
sizes ``-n auto``, and the one that gives the suite Python's own Ctrl-C."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import torch

from bess_rl.site.params import SiteParams
from bess_rl.site.scenario import Scenario
from tests.helpers import SMALL_SITE, make_scenario
from tests.pg import pg_server, pg_url  # noqa: F401  (fixtures: a throwaway PostgreSQL server)


def pytest_configure(config: pytest.Config) -> None:
    """Take Ctrl-C as Python does by default, whatever the suite was started from: a shell starts a background
    job (``pytest &``, ``nohup``) with SIGINT ignored, every process inherits that, and the tests that send
    SIGINT to a command then saw it run on to its end (the child's /proc status: SigIgn had SIGINT's bit)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per CPU. Measured on 2 cores (warm compile cache): 174-179 s with two
    workers, 190 s with three, whose extra imports, fixtures and contention outweigh filling the waits
    (subprocesses starting, signals, heartbeats) once the slow tests run first."""
    return os.cpu_count() or 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` tests first: the xdist workers start them early and end on short tests, instead of one
    worker finishing a 40-s test alone. ``@pytest.mark.gpu`` tests need CUDA: skipped here, with the
    reason, when this machine has none."""
    items.sort(key=lambda item: "slow" not in item.keywords)  # stable: file order within each part
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def session_folders(tmp_path_factory: pytest.TempPathFactory):
    """Folders in pytest's own temporary one, for this session (subprocesses inherit the variables):
    SB3's default logger (``learn`` on a model with none set) would make one under /tmp at each call;
    one references cache for every test's runs, since each test's root would otherwise solve the same
    week again in each process it starts (the cache itself: test_references)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3")))
        mp.setenv("BESS_RL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny MLPs run many times faster on one thread than on two contended ones (2-core machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def scenario() -> Scenario:
    return make_scenario()


@pytest.fixture
def site() -> SiteParams:
    return dataclasses.replace(SMALL_SITE)  # a copy: a test may change it


@pytest.fixture
def no_tf32():
    """Full float32 matmuls for exact comparisons (a GPU profile turns TF32 on); restored afterwards by
    assignment: monkeypatch's undo deletes these module attributes and breaks later reads."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

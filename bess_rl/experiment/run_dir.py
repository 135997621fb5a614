"""The run folder's layout and every write to it, in one place.

Why: train, resume, replay, report and the checkpoint all read and write the same files; their names
live here only, and each write is atomic (a temporary file in the same folder, flushed to disk, then
renamed over the old one), so a kill or a full disk leaves either the old file or the new one.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

CONFIG = "resolved_config.yaml"
POPULATION_CONFIG = "population_config.yaml"
RUN_INFO = "run_info.json"
METRICS = "metrics.json"
MODEL = "model.zip"
# The model of the best periodic held-out evaluation (SB3 EvalCallback's name, bess_rl.experiment.evaluation).
BEST_MODEL = "best_model.zip"
EVALUATIONS = "evaluations"  # folders ``python -m bess_rl.evaluate`` writes
CHECKPOINT = "checkpoint"
PROGRESS = "progress.csv"
EARLIER_PROGRESS = "progress.before_resume.csv"  # the rows written before a resume, while it trains
OOM_RETRY = "oom_retry.json"
DISPATCH_PLOT = "dispatch_week.png"
REPLAYS = "replays"
EXPORT = "export"  # what ``python -m bess_rl.export`` writes
REQUIRED = ("seed", "agent", "preset", "scenario", "site", "hardware")  # top-level keys every run config has
HYDRA = ".hydra"
LOCK = ".lock"
RESUMES = "resumes"  # a resume's Hydra log and config, inside the run folder it continues


class RunDirError(ValueError):
    """A run folder file that is missing or cannot be read."""


class WriteError(RunDirError):
    """A file of the run folder that could not be written (a full disk, a quota, a folder removed meanwhile).

    The files written before are as they were (each write is atomic); the run adds what a resume can go on
    from (``bess_rl.experiment.train.failed_write``).
    """

    def __init__(self, path: Path, exc: OSError) -> None:
        super().__init__(f"cannot write {path}: {exc.strerror or exc}")
        self.path, self.errno = path, exc.errno


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError of the block, which writes ``path``, into a ``WriteError`` naming it: one line for the user
    instead of a traceback from deep in SB3, TensorBoard or zipfile."""
    try:
        yield
    except OSError as exc:
        raise WriteError(path, exc) from None


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path``, with its suffix, for a writer that takes a path and picks the format by it
    (SB3's ``save``, matplotlib's ``savefig``): renamed over ``path`` once written and flushed, removed if the
    block fails, so a kill or a full disk leaves the old file (or none), never half of one, and no temporary."""
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(8)}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a flushed temporary file and a rename (no half-written file).

    The file gets the mode a plain ``open()`` would give it: created with 0o666, the kernel applies the
    umask (or the folder's default ACL), where ``tempfile.mkstemp``'s 0o600 would hide the results from
    the other users of a shared filesystem. No umask is read: ``os.umask`` can only be read by setting
    it, which races with every other thread creating files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """JSON with sorted keys (stable diffs), written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def resume_command(path: Path | str) -> str:
    """``python -m bess_rl resume=<path>`` as a shell takes it and Hydra's override grammar parses it: a path with
    a character that grammar does not take unquoted (a space, ``~``, ``,``, ``(``, a non-ASCII letter) is quoted
    for Hydra, and the whole override for the shell (``"resume='<path>'"``, the form a user would type)."""
    text = str(path)
    if re.fullmatch(r"[A-Za-z0-9_./-]+", text):
        return f"python -m bess_rl resume={text}"
    if not set(text) & set("'\"$`\\!"):
        return f"python -m bess_rl \"resume='{text}'\""
    quoted = f'"{text}"' if '"' not in text else "'{}'".format(text.replace("'", "\\'"))
    return f"python -m bess_rl {shlex.quote(f'resume={quoted}')}"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from the run folder, or one line saying why it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} does not hold a JSON object")
    return data


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder (``outputs/runs/<agent>-<preset>/<time>`` or a sweep job's folder)."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def population_config(self) -> Path:
        """A population's folder holds its whole config here (each member's is in ``member_<i>/``): what its
        resume reads in place of ``config``."""
        return self.path / POPULATION_CONFIG

    @property
    def run_info(self) -> Path:
        return self.path / RUN_INFO

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def model(self) -> Path:
        return self.path / MODEL

    @property
    def best_model(self) -> Path:
        return self.path / BEST_MODEL

    @property
    def evaluations(self) -> Path:
        return self.path / EVALUATIONS

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def progress(self) -> Path:
        return self.path / PROGRESS

    @property
    def earlier_progress(self) -> Path:
        return self.path / EARLIER_PROGRESS

    @property
    def oom_retry(self) -> Path:
        return self.path / OOM_RETRY

    @property
    def dispatch_plot(self) -> Path:
        return self.path / DISPATCH_PLOT

    @property
    def replays(self) -> Path:
        return self.path / REPLAYS

    @property
    def export(self) -> Path:
        return self.path / EXPORT

    @property
    def hydra_config(self) -> Path:
        return self.path / HYDRA / "config.yaml"

    @property
    def hydra_overrides(self) -> Path:
        """The overrides Hydra launched the run (a sweep's trial: its fixed and searched ones) with."""
        return self.path / HYDRA / "overrides.yaml"

    def save_model(self, model: BaseAlgorithm, path: Path | None = None) -> Path:
        """``model`` as model.zip, or ``path`` (best_model.zip), through ``atomic_path``: SB3 writes its zip in
        place, and a full disk left half of one. A failed write is a ``WriteError``."""
        target = path or self.model
        with writing(target), atomic_path(target) as tmp:
            model.save(tmp)
        return target

    def holds_config(self) -> bool:
        """Whether this is a run's or a population's folder (what ``load_config`` reads is there)."""
        return self.config.is_file() or self.population_config.is_file()

    def load_config(self) -> DictConfig:
        """The resolved config this run (or population) was trained with."""
        if not self.path.exists():
            raise RunDirError(f"{self.path} does not exist")
        path = self.population_config if self.population_config.is_file() else self.config
        if not path.is_file():
            raise RunDirError(f"{self.path} is not a bess_rl run folder (no {CONFIG})")
        try:
            cfg = OmegaConf.load(path)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise RunDirError(f"{path} cannot be read ({type(exc).__name__})") from None
        if not isinstance(cfg, DictConfig):
            raise RunDirError(f"{path} does not hold a config mapping")
        missing = [key for key in REQUIRED if key not in cfg]
        if missing:
            raise RunDirError(f"{path} is incomplete (no {', '.join(missing)}): truncated or edited?")
        return cfg

    def update_run_info(self, **fields: Any) -> None:
        """Set fields of run_info.json; a field that holds a list gets the value appended."""
        info = read_json(self.run_info) if self.run_info.is_file() else {}
        for key, value in fields.items():
            if isinstance(info.get(key), list):
                info[key].append(value)
            else:
                info[key] = value
        write_json(self.run_info, info)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder for one process (two resumes of one run must not both train into it).

        An flock on ``.lock``: the kernel releases it when the process dies, even on SIGKILL.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"cannot use {self.path} as the run folder ({exc.strerror or exc})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirError(
                    f"{self.path} is in use by another bess_rl process (a resume already running?)"
                ) from None
            yield
        finally:
            os.close(fd)


def _create_unique(base: Path) -> Path:
    """``base``, or ``base_1``, ``base_2``, ... whichever this process creates first (``mkdir`` is exclusive)."""
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create the run folder under {base.parent} ({exc.strerror or exc})") from None
    for n in range(10_000):
        path = base if n == 0 else base.with_name(f"{base.name}_{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunDirError(f"cannot create the run folder {path} ({exc.strerror or exc})") from None
    raise RunDirError(f"no free run folder name next to {base}")


_CREATED: dict[tuple[str, str], str] = {}


def unique_run_dir(base: str, resume: str | None = None) -> str:
    """OmegaConf resolver of ``hydra.run.dir``: a folder no other run shares, created here.

    Two runs started in the same second get ``<time>`` and ``<time>_1``. A resume of a run folder logs
    into ``<run>/resumes/<time>`` instead, so it creates no empty run folder; a ``resume=`` that names no
    run folder gets a temporary folder, removed at exit, since the resume is refused before anything is written.
    Resolved once per process and argument: Hydra reads ``hydra.run.dir`` more than once.
    """
    key = (str(base), str(resume))
    if key not in _CREATED:
        if resume is None:
            _CREATED[key] = str(_create_unique(Path(base)))
        elif RunDir(Path(resume)).holds_config() and os.access(resume, os.W_OK):
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            _CREATED[key] = str(_create_unique(Path(resume) / RESUMES / stamp))
        else:
            _CREATED[key] = tempfile.mkdtemp(prefix="bess_rl-refused-resume-")
            atexit.register(shutil.rmtree, _CREATED[key], ignore_errors=True)  # only Hydra's own log lands there
    return _CREATED[key]


def _unique_run_dir_or_exit(base: str, resume: str | None = None) -> str:
    """``unique_run_dir`` for Hydra: it resolves ``hydra.run.dir`` outside the task function, where an
    exception is printed as a traceback, so an unusable output folder ends the process with one line."""
    try:
        return unique_run_dir(base, resume)
    except RunDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def unique_sweep_dir(path: str) -> str:
    """``path`` or the first free ``path-N``, created here (``mkdir`` is exclusive): two sweeps started in the
    same second would otherwise write their trials into one folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 0
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}-{n}"


_launching: weakref.ref[DictConfig] | None = None  # the sweep config whose hydra.sweep.dir creates the folder


def launch_sweep(config: DictConfig) -> None:
    """Make ``config`` (the launching process's sweep config) the one config whose ``hydra.sweep.dir``
    creates its folder when first read (bess_rl.experiment.sweeper.SweepFolder calls this)."""
    global _launching
    _launching = weakref.ref(config)


def _sweep_dir_resolver(path: str, _root_: DictConfig) -> str:
    """``${unique_sweep_dir:<path>}``: the folder ``unique_sweep_dir`` creates, for the launching sweep's config
    only; in any other config ``path`` itself, and nothing is created.

    Why: OmegaConf resolves a value it merges another over (an experiment's ``hydra.sweep.dir`` over
    conf/hydra's), in every compose: the sweep's, each job's (in the launching process and again in a
    joblib or submitit worker) and a test's, each of which made an empty folder. The folder is kept in the
    config's resolver cache, which Hydra copies into every job's config and pickles to the workers, so they
    all read the same folder (OmegaConf's ``use_cache`` cannot be used: it excludes ``_root_``).
    """
    cache = OmegaConf.get_cache(_root_)["unique_sweep_dir"]
    if path not in cache:
        if _launching is None or _launching() is not _root_:
            return path
        cache[path] = unique_sweep_dir(path)
    return cache[path]


def register_resolvers() -> None:
    """Make ``${unique_run_dir:<base>,${resume}}`` and ``${unique_sweep_dir:<path>}`` available to the
    configs (``__main__`` calls it; idempotent)."""
    if not OmegaConf.has_resolver("unique_run_dir"):
        OmegaConf.register_new_resolver("unique_run_dir", _unique_run_dir_or_exit)
    if not OmegaConf.has_resolver("unique_sweep_dir"):
        OmegaConf.register_new_resolver("unique_sweep_dir", _sweep_dir_resolver)

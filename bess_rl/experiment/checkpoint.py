"""Interruption-safe training: checkpoint on SIGINT/SIGTERM/SIGUSR2/SIGHUP, resume bit-for-bit, numerical guards.

Why at a rollout start: there SB3's state is consistent (the last transition is stored, the last
update done, nothing half-collected), so saving model + optimizers (SB3's zip), the replay buffer,
the training envs and every RNG there, and restoring them, continues the run exactly as if it
had never stopped: on CPU with a fixed seed a resumed run ends with the same metrics.

Nothing in a checkpoint is unpickled on resume: env, buffer and RNG state are arrays (``arrays.npz``,
read with ``allow_pickle=False``) and JSON, model.zip is loaded by ``safe_load`` with every pickled
field replaced from the run's config. A folder swap that a kill cannot break keeps one complete
checkpoint at every moment (``save``), and ``state.json`` records the inputs it was trained on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from bess_rl.agents.fast_sac import DeviceReplayBuffer
from bess_rl.agents.population import Population
from bess_rl.experiment import fingerprint as fingerprints
from bess_rl.experiment.build import algo_class
from bess_rl.experiment.run_dir import CHECKPOINT, RunDirError, read_json, write_json
from bess_rl.experiment.safe_load import load_model, read_npz
from bess_rl.site.env import PvBessEvEnv

log = logging.getLogger(__name__)

CHECKPOINT_DIR = CHECKPOINT
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGUSR2": 140, "SIGHUP": 129}
# Ctrl-C, a kill, the warning Slurm (``--signal``) and submitit send ahead of a time limit or a preemption, and a
# terminal or ssh session that went away (SIGHUP: without it a dropped connection lost the whole run).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP)
MODEL, ARRAYS, TRAINING, RNG, STATE = "model.zip", "arrays.npz", "training.json", "rng.json", "state.json"
# A population checkpoint: member_<i>/ checkpoints beside these (Population.state).
POPULATION_ARRAYS, POPULATION_COUNTS = "population.npz", "population.json"
# Monitor's per-episode bookkeeping; SB3 ReplayBuffer arrays; model attributes SB3 would pickle.
MONITOR_FIELDS = (
    "t_start",
    "rewards",
    "needs_reset",
    "episode_returns",
    "episode_lengths",
    "episode_times",
    "total_steps",
)
BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
MODEL_ARRAYS = ("_last_obs", "_last_episode_starts", "_last_original_obs")
MODEL_DEQUES = ("ep_info_buffer", "ep_success_buffer")


class TrainingInterrupted(Exception):
    """Training stopped on a signal after its checkpoint was written."""

    def __init__(self, signame: str, step: int, path: Path) -> None:
        super().__init__(f"interrupted by {signame} at step {step}; checkpoint saved to {path}")
        self.signame, self.step, self.path = signame, step, path

    @property
    def exit_code(self) -> int:
        return SIGNAL_EXIT_CODES.get(self.signame, 1)


class NumericalError(RuntimeError):
    """A loss, observation or weight became NaN/inf: the run stops instead of training on garbage."""


class CheckpointError(ValueError):
    """A resume that cannot work: no checkpoint, another agent's checkpoint, a finished run."""


def _rng_state(model: BaseAlgorithm) -> dict[str, Any]:
    np_state, py_state = np.random.get_state(), random.getstate()
    return {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "action_space": model.action_space.np_random.bit_generator.state,
    }


def _restore_rng(model: BaseAlgorithm, state: dict[str, Any], torch_state: torch.Tensor) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), *npy[2:]))
    model.action_space.np_random.bit_generator.state = state["action_space"]
    torch.set_rng_state(torch_state)


def _fsync(path: Path) -> None:
    """Flush a written file or folder to disk: a rename is durable only once what it points to is."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _siblings(directory: Path) -> tuple[Path, Path]:
    """``checkpoint.tmp`` (being written) and ``checkpoint.old`` (being replaced) next to ``directory``."""
    return directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")


def current(directory: Path) -> Path | None:
    """The complete checkpoint: ``directory``, or where a kill mid-swap left it (newest first); None if none.

    A folder is complete once its ``state.json`` exists: ``save`` writes that file last.
    """
    tmp, old = _siblings(directory)
    for candidate in (directory, tmp, old) if not directory.exists() else (directory,):
        if (candidate / STATE).is_file():
            return candidate
    return None


def recover(directory: Path) -> None:
    """Finish a swap a kill interrupted: the complete checkpoint becomes ``directory``, leftovers go."""
    found = current(directory)
    if found is not None and found != directory:
        found.rename(directory)
        _fsync(directory.parent)
    for leftover in _siblings(directory):
        shutil.rmtree(leftover, ignore_errors=True)


def discard(directory: Path) -> None:
    """Remove the checkpoint once the run's results are on disk."""
    for path in (directory, *_siblings(directory)):
        shutil.rmtree(path, ignore_errors=True)


def _env_state(envs: VecEnv) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Each training env's and Monitor's state as JSON fields plus arrays (``env<i>.<name>``)."""
    if not isinstance(envs, DummyVecEnv):
        raise CheckpointError(f"cannot checkpoint a {type(envs).__name__}: training envs must be a DummyVecEnv")
    fields, arrays = [], {}
    for i, wrapped in enumerate(envs.envs):
        env = wrapped.unwrapped
        if not isinstance(wrapped, Monitor) or not isinstance(env, PvBessEvEnv):
            raise CheckpointError(f"cannot checkpoint training env {i} of type {type(wrapped).__name__}")
        env_fields, env_arrays = env.state()
        monitor = {key: getattr(wrapped, key) for key in MONITOR_FIELDS}
        fields.append({"env": env_fields, "monitor": monitor})
        arrays |= {f"env{i}.{key}": value for key, value in env_arrays.items()}
    return fields, arrays


def _restore_envs(envs: VecEnv, fields: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> None:
    if len(fields) != envs.num_envs:
        raise CheckpointError(f"the checkpoint holds {len(fields)} training envs, the config {envs.num_envs}")
    for i, (wrapped, saved) in enumerate(zip(envs.envs, fields, strict=True)):
        prefix = f"env{i}."
        wrapped.unwrapped.restore(
            saved["env"], {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        )
        for key in MONITOR_FIELDS:
            setattr(wrapped, key, saved["monitor"][key])


def _buffer_state(model: BaseAlgorithm) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The filled rows of the replay buffer as arrays (``buffer.<name>``), plus its position."""
    buf = getattr(model, "replay_buffer", None)
    if buf is None:
        return {}, {}
    fields = {"pos": int(buf.pos), "full": bool(buf.full)}
    rows = buf.size()
    if isinstance(buf, DeviceReplayBuffer):
        return fields, {"buffer.data": buf.data[: rows * buf.n_envs].cpu().numpy()}
    arrays = {f"buffer.{k}": getattr(buf, k)[:rows] for k in BUFFER_ARRAYS if getattr(buf, k, None) is not None}
    return fields, arrays


def _restore_buffer(model: BaseAlgorithm, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    buf = getattr(model, "replay_buffer", None)
    if buf is None:
        return
    buf.pos, buf.full = int(fields["pos"]), bool(fields["full"])
    rows = buf.size()
    try:
        if isinstance(buf, DeviceReplayBuffer):
            buf.data[: rows * buf.n_envs].copy_(torch.from_numpy(arrays["buffer.data"]))
            buf.rows.fill_(rows * buf.n_envs)
            return
        for key in BUFFER_ARRAYS:
            if getattr(buf, key, None) is not None:
                getattr(buf, key)[:rows] = arrays[f"buffer.{key}"]
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's replay buffer does not fit this config's ({exc})") from None


def _model_state(model: BaseAlgorithm) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Collection state SB3 would cloudpickle into model.zip: the last observation and episode stats."""
    arrays = {f"model.{k}": getattr(model, k) for k in MODEL_ARRAYS if getattr(model, k) is not None}
    fields = {k: list(getattr(model, k) or []) for k in MODEL_DEQUES}
    return fields, arrays


def _restored_model_state(fields: dict[str, Any], arrays: dict[str, np.ndarray], window: int) -> dict[str, Any]:
    """``_model_state`` as the values ``safe_load.load_model`` puts in place of the zip's pickles."""
    state: dict[str, Any] = {k: arrays.get(f"model.{k}") for k in MODEL_ARRAYS}
    state |= {k: deque(fields[k], maxlen=window) for k in MODEL_DEQUES}
    return state


def _write(path: Path, write: Any) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def save(model: BaseAlgorithm, directory: Path, agent: str, reason: str, fingerprint: dict[str, Any]) -> Path:
    """Write a complete checkpoint of ``model`` into ``directory`` (``replace_folder``: a kill at any point
    leaves one)."""
    return replace_folder(
        directory,
        lambda tmp: _write_model(model, tmp, agent, reason, fingerprint),
        f"checkpoint at step {model.num_timesteps}",
    )


def replace_folder(directory: Path, fill: Callable[[Path], None], what: str) -> Path:
    """Fill ``checkpoint.tmp`` with ``fill`` (its ``state.json`` last), then swap it in for ``directory``.

    The swap renames the old folder aside, the new one into place, and deletes the old one last, so
    ``current`` always finds a complete checkpoint. A failed write (a full disk) removes the partial
    folder and keeps the previous checkpoint; ``what`` names the checkpoint in that error.
    """
    recover(directory)
    tmp, old = _siblings(directory)
    try:
        tmp.mkdir(parents=True)
        try:
            fill(tmp)
        except BaseException:  # a state that cannot be checkpointed, a second Ctrl-C: no partial folder stays
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync(tmp)
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        _fsync(directory.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = "the previous checkpoint is kept" if current(directory) else "no earlier checkpoint exists"
        raise CheckpointError(f"{what} could not be written to {directory} ({exc.strerror or exc}); {kept}") from None
    shutil.rmtree(old, ignore_errors=True)
    return directory


def _write_model(model: BaseAlgorithm, folder: Path, agent: str, reason: str, fingerprint: dict[str, Any]) -> None:
    """Everything ``load`` needs of ``model`` into the existing ``folder``; ``state.json`` last, which marks
    it complete."""
    model.save(folder / MODEL)
    _fsync(folder / MODEL)
    env_fields, env_arrays = _env_state(model.get_env())
    buffer_fields, buffer_arrays = _buffer_state(model)
    model_fields, model_arrays = _model_state(model)
    arrays = env_arrays | buffer_arrays | model_arrays | {"torch_rng": torch.get_rng_state().numpy()}
    _write(folder / ARRAYS, lambda f: np.savez(f, **arrays))
    vec = {"seeds": list(model.get_env()._seeds), "options": list(model.get_env()._options)}
    training = {"envs": env_fields, "vec_env": vec, "buffer": buffer_fields, "model": model_fields}
    _write(folder / TRAINING, lambda f: f.write(json.dumps(training).encode()))
    _write(folder / RNG, lambda f: f.write(json.dumps(_rng_state(model)).encode()))
    meta = {"agent": agent, "algo": type(model).__module__ + "." + type(model).__qualname__}
    meta |= {"num_timesteps": model.num_timesteps, "reason": reason, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(folder / STATE, meta | {"fingerprint": fingerprint})


def save_population(
    pop: Population, directory: Path, reason: str, fingerprint: dict[str, Any], members: list[dict[str, Any]]
) -> Path:
    """Every member (``Population.member_model``: a FastSAC checkpoint each, ``member_<i>/``) and the
    population's own state in one folder, swapped in whole, so a kill never leaves members at different steps.

    :param fingerprint: the population config's (``state.json``); ``members``: each member config's.
    """

    def fill(tmp: Path) -> None:
        for i, member_fingerprint in enumerate(members):
            folder = tmp / f"member_{i}"
            folder.mkdir()
            _write_model(pop.member_model(i), folder, "sac", reason, member_fingerprint)
            _fsync(folder)
        counts, arrays = pop.state()
        _write(tmp / POPULATION_ARRAYS, lambda f: np.savez(f, **arrays))
        _write(tmp / POPULATION_COUNTS, lambda f: f.write(json.dumps(counts).encode()))
        meta = {"agent": "sac", "population": pop.size, "num_timesteps": pop.num_timesteps, "reason": reason}
        write_json(tmp / STATE, meta | {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "fingerprint": fingerprint})

    return replace_folder(directory, fill, f"population checkpoint at step {pop.num_timesteps}")


def load_population(
    directory: Path,
    pop: Population,
    device: str,
    fingerprint: dict[str, Any],
    members: list[dict[str, Any]],
    **overrides: Any,
) -> None:
    """Put ``save_population``'s checkpoint back into ``pop`` (a fresh population of the same config), refused
    like ``load`` when its inputs or its size differ."""
    state, found = _complete(directory)
    if state.get("population") != pop.size:
        held = f"a population of {state['population']}" if state.get("population") else "a single run's"
        raise CheckpointError(f"{directory} holds {held} checkpoint, the config a population of {pop.size}")
    _refuse_changed(state, fingerprint)
    loaded = [
        load(found / f"member_{i}", "sac", template, device, member, **overrides)
        for i, (template, member) in enumerate(zip(pop.members, members, strict=True))
    ]
    try:
        pop.restore(loaded, read_json(found / POPULATION_COUNTS), read_npz(found / POPULATION_ARRAYS))
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:  # an edited or foreign file
        raise CheckpointError(f"{found} does not match this population ({type(exc).__name__}: {exc})") from None


def read_state(directory: Path) -> dict[str, Any]:
    """state.json of the complete checkpoint (wherever a kill mid-swap left it)."""
    found = current(directory)
    if found is None:
        raise CheckpointError(f"no checkpoint in {directory.parent} (missing {CHECKPOINT_DIR}/{STATE})")
    state = read_json(found / STATE)
    for key, kind in (("agent", str), ("num_timesteps", int)):
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{found / STATE} has no valid {key!r}")
    return state


def _complete(directory: Path) -> tuple[dict[str, Any], Path]:
    """The complete checkpoint's state.json and the folder it is in (wherever a kill mid-swap left it)."""
    state = read_state(directory)
    found = current(directory)
    assert found is not None  # read_state found it
    return state, found


def _refuse_changed(state: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """Refuse, naming what changed, a checkpoint whose inputs (config, scenario files, package versions) differ
    from ``fingerprint``."""
    changed = fingerprints.differences(state.get("fingerprint"), fingerprint)
    if changed:
        raise CheckpointError(f"resume refused, the inputs differ from the checkpoint's: {'; '.join(changed)}")


def load(
    directory: Path, agent: str, template: BaseAlgorithm, device: str, fingerprint: dict[str, Any], **overrides: Any
) -> BaseAlgorithm:
    """The model, its envs, replay buffer and RNGs exactly as ``save`` left them, nothing unpickled.

    ``template`` is a fresh model of the run's config: its envs receive the saved env state and its
    classes, schedules and spaces replace what model.zip would unpickle. A checkpoint whose inputs
    (config, scenario files, package versions) differ from ``fingerprint`` is refused, naming what changed.
    ``overrides`` replace saved attributes (e.g. FastSAC's ``cuda_graphs`` when a GPU run resumes on CPU).
    """
    state, found = _complete(directory)
    if state["agent"] != agent:
        raise CheckpointError(f"{directory} holds a {state['agent']} checkpoint, not {agent}")
    expected = type(template).__module__ + "." + type(template).__qualname__
    if algo_class(str(state.get("algo"))) is not type(template):
        raise CheckpointError(f"{directory} holds a {state['algo']} checkpoint, the config trains {expected}")
    _refuse_changed(state, fingerprint)
    arrays = read_npz(found / ARRAYS)
    training = read_json(found / TRAINING)
    rng = read_json(found / RNG)
    try:
        envs = template.get_env()
        _restore_envs(envs, training["envs"], arrays)
        envs._seeds, envs._options = list(training["vec_env"]["seeds"]), list(training["vec_env"]["options"])
        restored = _restored_model_state(training["model"], arrays, template._stats_window_size)
        model = load_model(found / MODEL, type(template), template, restored, device, **overrides)
        _restore_buffer(model, training["buffer"], arrays)
        _restore_rng(model, rng, torch.from_numpy(arrays["torch_rng"]))
    except (CheckpointError, RunDirError):
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:  # an edited or foreign file
        raise CheckpointError(f"{found} does not match this run ({type(exc).__name__}: {exc})") from None
    return model


class StopRequest:
    """While installed, SIGINT, SIGTERM, SIGUSR2 and SIGHUP only set ``requested`` (the signal's name), for the loop to
    checkpoint at its next consistent point; a second signal raises KeyboardInterrupt (the user really wants
    out). A signal the process ignores stays ignored (SIGINT of a script's background job, ``nohup``), as
    Python leaves it. ``restore`` puts the previous handlers back (a launcher's own, e.g. submitit's SIGUSR2)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        log.warning("%s received: checkpointing at the next consistent point, then stopping", self.requested)

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Guard(BaseCallback):
    """Checkpoints on SIGINT/SIGTERM/SIGUSR2/SIGHUP (and every ``every_steps``) and stops on non-finite numbers.

    Signals only set a flag (``StopRequest``): the work happens at the next rollout start, where the state is
    consistent, or at the end of training when the signal came during the last rollout. A model with
    a ``should_stop`` hook (FastSAC) polls the flag inside its long update, so SIGTERM takes effect in
    well under a second of gradient steps. Previous signal handlers are restored when training ends.
    When training completes, a "trained" checkpoint keeps the result until metrics.json is written.
    """

    def __init__(
        self, agent: str, directory: Path, every_steps: int | None = None, fingerprint: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.agent, self.directory, self.every_steps = agent, directory, every_steps
        self.fingerprint = fingerprint or {}
        self.stop = StopRequest()
        self._last_saved = 0

    @property
    def requested(self) -> str | None:
        return self.stop.requested

    def _on_training_start(self) -> None:
        self._last_saved = self.model.num_timesteps
        self.stop.install()
        if hasattr(self.model, "should_stop"):
            self.model.should_stop = lambda: self.requested is not None
            self.model.finish_train()  # the rest of an update a signal cut short before the checkpoint

    def restore_handlers(self) -> None:
        self.stop.restore()
        if hasattr(self.model, "should_stop"):
            self.model.should_stop = None

    def _stop_if_requested(self) -> None:
        if self.requested is not None:
            save(self.model, self.directory, self.agent, self.requested, self.fingerprint)
            self.restore_handlers()
            raise TrainingInterrupted(self.requested, self.model.num_timesteps, self.directory)

    def _on_training_end(self) -> None:
        self._check_finite()
        self._stop_if_requested()
        save(self.model, self.directory, self.agent, "trained", self.fingerprint)
        self.restore_handlers()

    def _on_rollout_start(self) -> None:
        self._check_finite()
        self._stop_if_requested()
        step = self.model.num_timesteps
        if self.every_steps and step - self._last_saved >= self.every_steps:
            save(self.model, self.directory, self.agent, "periodic", self.fingerprint)
            self._last_saved = step

    def _on_step(self) -> bool:
        rewards = self.locals.get("rewards")
        if rewards is not None and not np.all(np.isfinite(rewards)):
            raise NumericalError(f"{self.agent}: non-finite reward at step {self.num_timesteps}")
        obs = self.locals.get("new_obs")
        if isinstance(obs, np.ndarray) and not np.all(np.isfinite(obs)):
            raise NumericalError(f"{self.agent}: non-finite observation at step {self.num_timesteps}")
        return True

    def _check_finite(self) -> None:
        """Losses the last update logged, and the weights themselves."""
        for key, value in self.model.logger.name_to_value.items():
            if "loss" in key and isinstance(value, float) and not math.isfinite(value):
                raise NumericalError(f"{self.agent}: {key} is {value} at step {self.model.num_timesteps}")
        for name, param in self.model.policy.named_parameters():
            if not torch.isfinite(param).all():
                raise NumericalError(
                    f"{self.agent}: weight {name} became non-finite at step {self.model.num_timesteps} "
                    "(try a lower agent.hparams.learning_rate)"
                )

"""Interruption-safe training: checkpoint on SIGINT/SIGTERM, resume bit-for-bit, numerical guards.

Why at a rollout start: there SB3's state is consistent (the last transition is stored, the last
update done, nothing half-collected), so saving model + optimizers (SB3's zip), the replay buffer,
the vectorised envs and every RNG there, and restoring them, continues the run exactly as if it
had never stopped: on CPU with a fixed seed a resumed run ends with the same metrics.

Checkpoints are pickles and torch files: they are loaded only from the run folder the user names
with ``resume=``, and torch tensors are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from bess_rl.experiment.run_dir import CHECKPOINT, write_json

log = logging.getLogger(__name__)

CHECKPOINT_DIR = CHECKPOINT
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


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


def save(model: BaseAlgorithm, directory: Path, agent: str, reason: str) -> Path:
    """Write a complete checkpoint; atomic (a temp folder renamed), so a crash mid-save loses nothing."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(tmp / "model.zip")
    if isinstance(model, OffPolicyAlgorithm):
        model.save_replay_buffer(tmp / "replay_buffer.pkl")
    with open(tmp / "envs.pkl", "wb") as f:
        pickle.dump(model.get_env(), f)
    torch.save(torch.get_rng_state(), tmp / "torch_rng.pt")
    meta = {"agent": agent, "algo": type(model).__module__ + "." + type(model).__qualname__}
    meta |= {"num_timesteps": model.num_timesteps, "reason": reason, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    (tmp / "rng.json").write_text(json.dumps(_rng_state(model)))
    write_json(tmp / "state.json", meta)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def read_state(directory: Path) -> dict[str, Any]:
    path = directory / "state.json"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {directory.parent} (missing {CHECKPOINT_DIR}/state.json)")
    return json.loads(path.read_text())


def load(directory: Path, agent: str, device: str, **overrides: Any) -> BaseAlgorithm:
    """The model, its envs, replay buffer and RNGs exactly as ``save`` left them.

    ``overrides`` replace saved attributes (e.g. FastSAC's ``cuda_graphs`` when a GPU run resumes on CPU).
    """
    state = read_state(directory)
    if state["agent"] != agent:
        raise CheckpointError(f"{directory} holds a {state['agent']} checkpoint, not {agent}")
    with open(directory / "envs.pkl", "rb") as f:
        envs: VecEnv = pickle.load(f)  # noqa: S301 - only from the run folder the user named
    model = get_class(state["algo"]).load(
        directory / "model.zip", env=envs, device=device, force_reset=False, **overrides
    )
    if isinstance(model, OffPolicyAlgorithm):
        model.load_replay_buffer(directory / "replay_buffer.pkl")
    torch_rng = torch.load(directory / "torch_rng.pt", weights_only=True)
    _restore_rng(model, json.loads((directory / "rng.json").read_text()), torch_rng)
    return model


class Guard(BaseCallback):
    """Checkpoints on SIGINT/SIGTERM (and every ``every_steps``) and stops on non-finite numbers.

    Signals only set a flag: the work happens at the next rollout start, where the state is
    consistent. Previous signal handlers are restored when training ends.
    """

    def __init__(self, agent: str, directory: Path, every_steps: int | None = None) -> None:
        super().__init__()
        self.agent, self.directory, self.every_steps = agent, directory, every_steps
        self.requested: str | None = None
        self._last_saved = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:  # a second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        self.requested = name
        log.warning("%s received: checkpointing at the next rollout start, then stopping", name)

    def _on_training_start(self) -> None:
        self._last_saved = self.model.num_timesteps
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _on_training_end(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_rollout_start(self) -> None:
        self._check_finite()
        step = self.model.num_timesteps
        if self.requested is not None:
            save(self.model, self.directory, self.agent, self.requested)
            self._on_training_end()
            raise TrainingInterrupted(self.requested, step, self.directory)
        if self.every_steps and step - self._last_saved >= self.every_steps:
            save(self.model, self.directory, self.agent, "periodic")
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

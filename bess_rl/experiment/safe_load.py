"""Load a Stable-Baselines3 model zip without running code from it.

Why: SB3's ``save`` writes classes, schedules and spaces into the zip's ``data`` JSON as cloudpickle
(``{":serialized:": ...}``), and its ``load`` unpickles them: a crafted run folder runs its code there.
Here every serialized field is replaced (SB3's ``custom_objects``) by the value a model built from the
run's own config holds, or by training state the checkpoint stored as arrays and JSON; the weights and
optimiser states are ``.pth`` files that SB3 2.x loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import inspect
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm

from bess_rl.experiment.run_dir import RunDirError

SERIALIZED = ":serialized:"
SB3_ALGORITHMS = (A2C, DDPG, DQN, PPO, SAC, TD3)


def first_line(exc: BaseException) -> str:
    """An exception as its type and the first line of its message, for a file that cannot be read."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def model_data(path: Path) -> dict[str, Any]:
    """The ``data`` JSON of a model zip, read as JSON: none of its serialized fields is unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:  # JSON and unicode errors are ValueErrors
        raise RunDirError(f"{path} cannot be read ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} has no model data")
    return data


def check_algorithm(path: Path, data: dict[str, Any], template: BaseAlgorithm) -> None:
    """Refuse a zip whose fields are not those ``template``'s SB3 algorithm saves.

    Why: the zip names no algorithm, and A2C and PPO share their policy class, so SB3 loads an A2C zip as
    PPO without a word (PPO's clip range and epochs then come from the defaults). Its fields are its
    algorithm's attributes, though: PPO saves ``clip_range``, ``n_epochs``, ..., A2C does not. Only SB3's
    own constructor parameters are compared, so a zip from before this project added an attribute to its
    fast classes (or after it removed one) still loads.
    """
    buffer = io.BytesIO()
    template.save(buffer)  # what SB3 writes for this config (pickled, never unpickled)
    with zipfile.ZipFile(buffer) as archive:
        expected = json.loads(archive.read("data")).keys()
    own = sb3_parameters(sb3_algorithm(type(template)))
    known = set().union(*(sb3_parameters(cls) for cls in SB3_ALGORITHMS))
    extra, missing = sorted((data.keys() - expected) & known), sorted((expected - data.keys()) & own)
    name = type(template).__name__
    why = [f"has {listed(extra)}, which {name} does not save"] if extra else []
    why += [f"lacks {name}'s {listed(missing)}"] if missing else []
    if why:
        raise RunDirError(f"{path} was saved by another algorithm: it {' and '.join(why)}")


def sb3_algorithm(cls: type[BaseAlgorithm]) -> type[BaseAlgorithm]:
    """The SB3 algorithm a class derives from (``FastPPO`` -> ``PPO``): the first of SB3's algorithms in its MRO."""
    return next((base for base in cls.__mro__ if base in SB3_ALGORITHMS), cls)


def sb3_parameters(cls: type[BaseAlgorithm]) -> set[str]:
    """The constructor parameters of an algorithm: SB3 keeps each as the attribute ``save`` writes."""
    return set(inspect.signature(cls.__init__).parameters)


def listed(names: list[str], most: int = 4) -> str:
    """The first ``most`` names, comma-separated: enough to recognise an algorithm, in one line."""
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def load_model(
    path: Path,
    algo: type[BaseAlgorithm],
    template: BaseAlgorithm,
    state: dict[str, Any],
    device: str,
    **overrides: Any,
) -> BaseAlgorithm:
    """``algo.load(path)`` on ``template``'s env with no field unpickled, refused if another algorithm saved it.

    :param template: a fresh model of the same config; gives the classes, schedules and spaces.
    :param state: training state saved beside the zip (last observation, episode buffers); wins over the zip.
    :param overrides: attributes to set on the loaded model (the hardware switches of this machine).
    """
    data = model_data(path)
    custom = dict(state)
    for key in (k for k, v in data.items() if isinstance(v, dict) and SERIALIZED in v):
        if key not in custom:
            if not hasattr(template, key):
                raise RunDirError(f"{path}: serialized field {key!r} is not one this config defines; not loaded")
            custom[key] = getattr(template, key)
    check_algorithm(path, data, template)
    try:
        return algo.load(
            path, env=template.get_env(), custom_objects=custom, device=device, force_reset=False, **overrides
        )
    except Exception as exc:  # a truncated or edited zip fails in zipfile, torch or SB3, with many types
        raise RunDirError(f"{path} cannot be loaded ({first_line(exc)})") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read without pickle (``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise RunDirError(f"{path} cannot be read ({first_line(exc)})") from None

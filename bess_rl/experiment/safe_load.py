"""Load a Stable-Baselines3 model zip without running code from it.

Why: SB3's ``save`` writes classes, schedules and spaces into the zip's ``data`` JSON as cloudpickle
(``{":serialized:": ...}``), and its ``load`` unpickles them: a crafted run folder runs its code there.
Here every serialized field is replaced (SB3's ``custom_objects``) by the value a model built from the
run's own config holds, or by training state the checkpoint stored as arrays and JSON; the weights and
optimiser states are ``.pth`` files that SB3 2.x loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

from bess_rl.experiment.run_dir import RunDirError

SERIALIZED = ":serialized:"


def first_line(exc: BaseException) -> str:
    """An exception as its type and the first line of its message, for a file that cannot be read."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def serialized_fields(path: Path) -> list[str]:
    """The ``data`` fields of a model zip that SB3 would unpickle."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:  # JSON and unicode errors are ValueErrors
        raise RunDirError(f"{path} cannot be read ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} has no model data")
    return [k for k, v in data.items() if isinstance(v, dict) and SERIALIZED in v]


def load_model(
    path: Path,
    algo: type[BaseAlgorithm],
    template: BaseAlgorithm,
    state: dict[str, Any],
    device: str,
    **overrides: Any,
) -> BaseAlgorithm:
    """``algo.load(path)`` on ``template``'s env with no field unpickled.

    :param template: a fresh model of the same config; gives the classes, schedules and spaces.
    :param state: training state saved beside the zip (last observation, episode buffers); wins over the zip.
    :param overrides: attributes to set on the loaded model (the hardware switches of this machine).
    """
    custom = dict(state)
    for key in serialized_fields(path):
        if key not in custom:
            if not hasattr(template, key):
                raise RunDirError(f"{path}: serialized field {key!r} is not one this config defines; not loaded")
            custom[key] = getattr(template, key)
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

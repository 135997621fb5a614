"""``python -m bess_rl.export <run dir> --format onnx|torchscript [--best]``: the deterministic policy as a file.

Why: a site controller runs the policy without Python RL libraries. A plain trace of ``model.policy``
leaves out what ``predict(deterministic=True)`` does around it, so the exported graph includes it:
observations cast to float32 (a Box observation is not otherwise preprocessed), the deterministic
action (Gaussian mean, tanh-squashed for SAC), then for a squashed policy the rescaling from [-1, 1] to
the action Box and for an unsquashed one the clip to it. Writes ``<run dir>/export/policy.onnx`` or
``policy.pt``, each with its own description (``policy.onnx.json`` / ``policy.pt.json``: the model it
came from, input and output layout), so exporting one format does not misdescribe the other.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from bess_rl.experiment.errors import USER_ERRORS, interrupted
from bess_rl.experiment.evaluation import load_trained
from bess_rl.experiment.run_dir import RunDir, RunDirError, atomic_write_bytes, write_json
from bess_rl.tools import cannot_write

FILES = {"onnx": "policy.onnx", "torchscript": "policy.pt"}
SHARED_DESCRIPTION = "policy.json"  # older exports wrote one for both formats: it described only the last


class DeterministicPolicy(torch.nn.Module):
    """``predict(obs, deterministic=True)`` as a module: batch of observations in, actions in the Box out."""

    def __init__(self, model: BaseAlgorithm) -> None:
        super().__init__()
        self.policy = model.policy
        self.squash = bool(model.policy.squash_output)
        space = model.action_space
        self.register_buffer("low", torch.as_tensor(space.low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(space.high, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        actions = self.policy._predict(obs.float(), deterministic=True)
        if self.squash:  # BasePolicy.unscale_action
            return self.low + 0.5 * (actions + 1.0) * (self.high - self.low)
        return torch.maximum(torch.minimum(actions, self.high), self.low)


def export(run_dir: Path, fmt: str, best: bool = False) -> Path:
    """Write the policy file and its description into ``<run dir>/export``; returns the policy file.

    Each file is written under a temporary name and renamed (``atomic_write_bytes``): a Ctrl-C or a failed
    export leaves the earlier file whole. The policy is serialised in memory first, so every write is Python's
    and a refused one names its path (torch's own file writer says only "open file failed").
    """
    model, cfg = load_trained(run_dir, best)
    module = DeterministicPolicy(model).eval()
    obs_space = model.observation_space
    example = torch.as_tensor(np.stack([obs_space.sample(), obs_space.sample()]), dtype=torch.float32)
    buffer = io.BytesIO()
    with torch.no_grad():
        if fmt == "torchscript":
            buffer.write(torch.jit.trace(module, example).save_to_buffer())
        else:
            torch.onnx.export(
                module, (example,), buffer, input_names=["obs"], output_names=["action"],
                dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}}, dynamo=False,
            )  # fmt: skip
    out = RunDir(run_dir).export
    path = out / FILES[fmt]
    layout: dict[str, Any] = {
        "format": fmt,
        "file": path.name,
        "model": RunDir(run_dir).best_model.name if best else RunDir(run_dir).model.name,
        "model_timesteps": model.num_timesteps,
        "agent": cfg.agent.name,
        "input": {"name": "obs", "dtype": "float32", "shape": ["batch", *obs_space.shape],
                  "low": obs_space.low.tolist(), "high": obs_space.high.tolist()},
        "output": {"name": "action", "shape": ["batch", *model.action_space.shape],
                   "low": model.action_space.low.tolist(), "high": model.action_space.high.tolist()},
        "observation_layout": "bess_rl.site.env module docstring (forecast_hours "
        f"{cfg.scenario.forecast_hours})",
    }  # fmt: skip
    try:
        atomic_write_bytes(path, buffer.getvalue())
        write_json(description(path), layout)
        (out / SHARED_DESCRIPTION).unlink(missing_ok=True)
    except OSError as exc:  # a run folder that refuses files (read-only, immutable, full)
        raise RunDirError(cannot_write(exc, out)) from None
    return path


def description(path: Path) -> Path:
    """The JSON file describing one exported policy file: ``policy.onnx`` -> ``policy.onnx.json``."""
    return path.with_name(f"{path.name}.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bess_rl.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--format", choices=sorted(FILES), default="onnx")
    parser.add_argument("--best", action="store_true", help="best_model.zip (best periodic evaluation) not model.zip")
    args = parser.parse_args(argv)
    try:
        path = export(args.run_dir, args.format, args.best)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # torch's ONNX exporter needs the onnx package
        print(f"error: {exc}; install the export extra: pip install -e '.[export]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted(f"{RunDir(args.run_dir).export} is as it was")
    print(f"written {path} and {description(path).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

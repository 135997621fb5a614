"""``python -m bess_rl agent=sac hardware=rtx4060``: the Hydra entry point."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from bess_rl.checkpoint import CheckpointError, NumericalError, TrainingInterrupted
from bess_rl.config import ConfigError, register_configs
from bess_rl.folders import register_resolvers
from bess_rl.hardware import HardwareError
from bess_rl.planner import MemoryBudgetError
from bess_rl.scenario import ScenarioError
from bess_rl.site import SiteError
from bess_rl.sweeper import apply_budget
from bess_rl.train import objective_value, print_table, resume_config, run

log = logging.getLogger("bess_rl")
# Failures with a message meant for the user: one line, no traceback (a sweep records them as failed).
USER_ERRORS = (
    ConfigError,
    ScenarioError,
    SiteError,
    HardwareError,
    CheckpointError,
    NumericalError,
    MemoryBudgetError,
)

register_configs()
register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    with open_dict(cfg):
        cfg.overrides = overrides
    try:
        if cfg.resume:
            run_dir = Path(cfg.resume)
            metrics = run(resume_config(run_dir, cfg, overrides), run_dir, resume=True)
        else:
            apply_budget(cfg)
            metrics = run(cfg, Path(hc.runtime.output_dir))
    except TrainingInterrupted as exc:
        if hc.mode == RunMode.MULTIRUN:
            raise  # one interrupted trial is a failed trial, not the end of the sweep
        log.warning("%s\nresume with: python -m bess_rl resume=%s", exc, exc.path.parent)
        sys.exit(exc.exit_code)
    except USER_ERRORS as exc:
        if hc.mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed and goes on
        log.error("%s", exc)
        sys.exit(2 if not isinstance(exc, NumericalError) else 1)
    print_table(metrics)
    return objective_value(metrics, cfg.objective)


if __name__ == "__main__":
    main()

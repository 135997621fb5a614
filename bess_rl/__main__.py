"""``python -m bess_rl agent=sac hardware=rtx4060``: the Hydra entry point."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from bess_rl.config import ConfigError, register_configs
from bess_rl.hardware import HardwareError
from bess_rl.scenario import ScenarioError
from bess_rl.site import SiteError
from bess_rl.train import objective_value, print_table, run

log = logging.getLogger("bess_rl")
USER_ERRORS = (ConfigError, ScenarioError, SiteError, HardwareError)

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    hc = HydraConfig.get()
    with open_dict(cfg):
        cfg.overrides = list(hc.overrides.task)
    try:
        metrics = run(cfg, Path(hc.runtime.output_dir))
    except USER_ERRORS as exc:
        if hc.mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed and goes on
        log.error("%s", exc)
        sys.exit(2)
    print_table(metrics)
    return objective_value(metrics, cfg.objective)


if __name__ == "__main__":
    main()

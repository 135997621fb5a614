"""``python -m bess_rl agent=sac hardware=rtx4060``: the Hydra entry point."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from bess_rl.experiment.budget import apply_budget
from bess_rl.experiment.config import ConfigError, register_configs
from bess_rl.experiment.run_dir import register_resolvers
from bess_rl.experiment.sweep_stop import fail_running_trial

log = logging.getLogger("bess_rl")

register_configs()
register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | tuple[float, ...] | None:
    # Imported here, not above: torch and SB3 take seconds to import, and a mistyped override
    # (refused by Hydra before this function runs) should not wait for them.
    from bess_rl.experiment import population_run
    from bess_rl.experiment.checkpoint import NumericalError, TrainingInterrupted
    from bess_rl.experiment.errors import USER_ERRORS
    from bess_rl.experiment.train import objective_value, print_table, resume_config, run

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    with open_dict(cfg):
        cfg.overrides = overrides
    try:
        if cfg.resume is not None:
            if not str(cfg.resume).strip():
                raise ConfigError("resume= needs a run folder, e.g. resume=outputs/runs/sac-after/<time>")
            run_dir = Path(cfg.resume)
            metrics = run(resume_config(run_dir, cfg, overrides), run_dir, resume=True)
        else:
            apply_budget(cfg)
            if cfg.population.size > 1:  # N members, each its own run folder: a table and objective per member
                members = population_run.run(cfg, Path(hc.runtime.output_dir))
                for metrics in members:
                    print_table(metrics)
                return population_run.objective(members, cfg.objective)
            metrics = run(cfg, Path(hc.runtime.output_dir))
    except TrainingInterrupted as exc:
        if hc.mode == RunMode.MULTIRUN:
            trial = fail_running_trial(hc.sweeper, overrides)
            log.warning("%s; sweep stopped%s", exc, f" (trial {trial} marked failed)" if trial is not None else "")
        else:
            log.warning("%s\nresume with: python -m bess_rl resume=%s", exc, exc.path.parent)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training: the last checkpoint stays
        log.warning("interrupted")
        sys.exit(130)
    except MemoryError as exc:
        if hc.mode == RunMode.MULTIRUN:
            raise
        log.error("out of memory (%s): lower the scenario size or the agent's buffer/batch", type(exc).__name__)
        sys.exit(2)
    except USER_ERRORS as exc:
        if hc.mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed and goes on
        log.error("%s", exc)
        sys.exit(2 if not isinstance(exc, NumericalError) else 1)
    print_table(metrics)
    return objective_value(metrics, cfg.objective)


if __name__ == "__main__":
    main()

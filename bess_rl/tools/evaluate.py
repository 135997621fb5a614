"""``python -m bess_rl.evaluate <run dir> [--best] [scenario=NAME] [scenario.KEY=V] [site=NAME] [site.KEY=V]``.

Why: a trained agent should be judged on data it never saw, and on other sites or years, without
retraining (``replay`` retrains). This loads the run's model.zip (or best_model.zip) and scores it on
the evaluation part of the run's scenario with the overrides applied, against references on the same
data; it prints the table training prints and writes ``<run dir>/evaluations/<time>/``. Bad input is one
line and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bess_rl.experiment.build import build_eval_env, build_references
from bess_rl.experiment.config import ConfigError, compose_config, validate
from bess_rl.experiment.errors import USER_ERRORS
from bess_rl.experiment.evaluation import (
    NoEvalPartError,
    check_spaces,
    comparison_traces,
    evaluate_part,
    load_trained,
    require_eval_part,
)
from bess_rl.experiment.plots import dispatch_week
from bess_rl.experiment.run_dir import RunDir, atomic_write_text, write_json
from bess_rl.experiment.train import print_table

GROUPS = ("scenario", "site")  # config groups an override may swap whole


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The run's config with ``scenario=NAME`` / ``site=NAME`` groups swapped and dotted keys set."""
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or key.split(".")[0] not in GROUPS:
            raise ConfigError(f"override {override!r}: give scenario=NAME, site=NAME, scenario.KEY=V or site.KEY=V")
        try:
            if key in GROUPS:
                OmegaConf.update(cfg, key, compose_config([override])[key], merge=False)
            else:
                cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([override]))
        except Exception as exc:  # OmegaConf: bad key or value; Hydra: no such group option
            raise ConfigError(f"override {override!r}: {str(exc).splitlines()[0]}") from None
    return cfg


def evaluate(run_dir: Path, overrides: list[str], best: bool = False) -> tuple[dict[str, Any], Path]:
    """Score the run's model on the (overridden) scenario's evaluation part; returns metrics and folder."""
    model, cfg = load_trained(run_dir, best)
    cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    require_eval_part(cfg.scenario)
    env = build_eval_env(cfg)
    check_spaces(model, env)
    refs = build_references(cfg, env)  # the MPC as the run configured it
    scored, result = evaluate_part(model, env, refs)
    metrics = {
        "agent": cfg.agent.name,
        "preset": cfg.preset.name,
        "seed": cfg.seed,
        "held_out": True,
        "model": RunDir(run_dir).best_model.name if best else RunDir(run_dir).model.name,
        "run_dir": str(run_dir),
        "scenario": cfg.scenario.name,
        "overrides": overrides,
        **scored,
    }
    out = RunDir(run_dir).evaluations / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    write_json(RunDir(out).metrics, metrics)
    atomic_write_text(out / "evaluated_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    title = f"{cfg.agent.name} ({cfg.preset.name}) dispatch, {cfg.scenario.name} evaluation part"
    others = comparison_traces(env, refs)
    dispatch_week(result.trace, RunDir(out).dispatch_plot, title, timestamps=env.scenario.timestamps, others=others)
    return metrics, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bess_rl.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="scenario=NAME, site=NAME, scenario.KEY=VALUE, site.KEY=VALUE")
    parser.add_argument("--best", action="store_true", help="best_model.zip (best periodic evaluation) not model.zip")
    args = parser.parse_intermixed_args(argv)  # options may stand between the overrides
    try:
        metrics, out = evaluate(args.run_dir, args.overrides, args.best)
    except (*USER_ERRORS, NoEvalPartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(metrics)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

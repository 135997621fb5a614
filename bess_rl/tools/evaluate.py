"""``python -m bess_rl.evaluate <run dir> [--best] [scenario=NAME] [scenario.KEY=V] [site=NAME] [site.KEY=V]``.

Why: a trained agent should be judged on data it never saw, and on other sites or years, without
retraining (``replay`` retrains). This loads the run's model.zip (or best_model.zip) and scores it on
the evaluation part of the run's scenario with the overrides applied, against references on the same
data; it prints the table training prints and the site used (a scenario brings its own site, as in
training), and writes ``<run dir>/evaluations/<time>/`` whole or not at all. Bad input and Ctrl-C are one
line and write nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bess_rl.experiment.build import build_eval_env, build_references
from bess_rl.experiment.config import ConfigError, ScenarioConfig, compose_config, one_line, validate
from bess_rl.experiment.errors import USER_ERRORS, interrupted
from bess_rl.experiment.evaluation import (
    NoEvalPartError,
    check_spaces,
    comparison_traces,
    evaluate_part,
    load_trained,
    require_eval_part,
)
from bess_rl.experiment.plots import dispatch_week
from bess_rl.experiment.run_dir import RunDir, RunDirError, atomic_write_text, write_json
from bess_rl.experiment.train import print_table
from bess_rl.site.params import SiteParams
from bess_rl.tools import cannot_write

GROUPS = ("scenario", "site")  # config groups an override may swap whole
GROUP_SCHEMAS = {"scenario": ScenarioConfig, "site": SiteParams}  # what their values are checked against


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The run's config with ``scenario=NAME`` / ``site=NAME`` groups swapped, then dotted keys set.

    Swaps are composed as training composes them: a scenario brings its own site (``site: ${scenario}``
    in conf/train.yaml) unless ``site=NAME`` is given too, so a house is not run with the mall's sizes.
    Both groups are held to their schemas, so a wrong type or an unknown key is refused, not ignored.
    """
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or key.split(".")[0] not in GROUPS:
            raise ConfigError(f"override {override!r}: give scenario=NAME, site=NAME, scenario.KEY=V or site.KEY=V")
    swaps = [o for o in overrides if o.partition("=")[0] in GROUPS]
    swapped: set[str] = set()
    if swaps:
        try:
            composed = compose_config(swaps)
        except Exception as exc:  # Hydra: no such group option
            raise ConfigError(f"override {' '.join(swaps)!r}: {one_line(exc)}") from None
        swapped = set(GROUPS) if any(o.startswith("scenario=") for o in swaps) else {"site"}
        for group in swapped:
            cfg[group] = composed[group]
    for group in set(GROUPS) - swapped:
        try:
            cfg[group] = OmegaConf.merge(OmegaConf.structured(GROUP_SCHEMAS[group]), cfg[group])
        except Exception as exc:  # OmegaConf: a key or type this version's schema does not have
            raise ConfigError(f"the run's saved {group} does not fit the {group} schema: {one_line(exc)}") from None
    for override in overrides:
        if override in swaps:
            continue
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([override]))
        except Exception as exc:  # OmegaConf: unknown key or a value of the wrong type
            raise ConfigError(f"override {override!r}: {one_line(exc)}") from None
    return cfg


def site_label(cfg: DictConfig, overrides: list[str]) -> str:
    """Which conf/site option the evaluated site comes from and the ``site.KEY`` overrides on it.

    Why: the site config holds sizes, not a name; it follows the scenario unless ``site=NAME`` picked
    it, in this evaluation or in the run's training overrides (``cfg.overrides``).
    """
    trained = list(cfg.get("overrides") or [])
    chosen = {k: v for k, _, v in (o.partition("=") for o in overrides) if k in GROUPS}
    if chosen:
        name, edits = chosen.get("site", chosen.get("scenario")), overrides
    else:
        named = [o.partition("=")[2] for o in trained if o.startswith("site=")]
        name, edits = (named[-1] if named else cfg.scenario.name), trained + overrides
    site_edits = [o for o in edits if o.startswith("site.")]
    return f"{name} with {' '.join(site_edits)}" if site_edits else str(name)


def site_sizes(site: DictConfig) -> str:
    """The sizes that tell a house from a mall, for the line naming the evaluated site."""
    cap = f", import cap {site.import_cap_kw:g} kW" if site.import_cap_kw is not None else ""
    return f"pv_kwp {site.pv_kwp:g}, bess {site.bess_capacity_kwh:g} kWh / {site.bess_power_kw:g} kW{cap}"


def evaluate(run_dir: Path, overrides: list[str], best: bool = False) -> tuple[dict[str, Any], Path]:
    """Score the run's model on the (overridden) scenario's evaluation part; returns metrics and folder."""
    model, cfg = load_trained(run_dir, best)
    site = site_label(cfg, overrides)
    cfg = apply_overrides(cfg, overrides)
    validate(cfg)  # what a training run checks before it starts
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
        "site": f"{site} ({site_sizes(cfg.site)})",
        "overrides": overrides,
        **scored,
    }
    out = RunDir(run_dir).evaluations / datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    tmp = out.with_name(f".{out.name}.tmp")  # renamed once complete: Ctrl-C or a crash leaves no half folder
    try:
        write_json(RunDir(tmp).metrics, metrics)
        atomic_write_text(tmp / "evaluated_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        title = f"{cfg.agent.name} ({cfg.preset.name}) dispatch, {cfg.scenario.name} evaluation part"
        others = comparison_traces(env, refs)
        dispatch_week(result.trace, RunDir(tmp).dispatch_plot, title, timestamps=env.scenario.timestamps, others=others)
        tmp.rename(out)
    except OSError as exc:  # a run folder that refuses files (read-only, immutable, full): nothing is kept
        raise RunDirError(cannot_write(exc, out.parent)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):  # an evaluations/ made for this one is not left behind empty
            out.parent.rmdir()
    return metrics, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bess_rl.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],  # without a default, argparse counts a "*" positional as required: "required: run_dir, overrides"
        help="scenario=NAME, site=NAME, scenario.KEY=VALUE, site.KEY=VALUE",
    )
    parser.add_argument("--best", action="store_true", help="best_model.zip (best periodic evaluation) not model.zip")
    args = parser.parse_intermixed_args(argv)  # options may stand between the overrides
    try:
        metrics, out = evaluate(args.run_dir, args.overrides, args.best)
    except (*USER_ERRORS, NoEvalPartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted(f"no evaluation written ({RunDir(args.run_dir).evaluations} is as it was)")
    print_table(metrics)
    print(f"model: {metrics['model']}; site: {metrics['site']}")  # --best: which zip was scored, on the console too
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

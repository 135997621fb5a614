"""``python -m bess_rl.references [overrides]``: the reference CO2 table of a scenario and site."""

from __future__ import annotations

import sys
import time

from rich.console import Console

from bess_rl.baselines.references import co2_table, compute_references
from bess_rl.experiment.build import build_eval_env
from bess_rl.experiment.config import compose_config
from bess_rl.experiment.errors import USER_ERRORS


def main(argv: list[str] | None = None) -> int:
    """Print the references for these Hydra overrides (``scenario=...``, ``site.*``), as the main command takes."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print("usage: python -m bess_rl.references [scenario=NAME] [site.KEY=VALUE ...] [scenario.KEY=VALUE ...]")
        return 0
    try:
        cfg = compose_config(args)
        env = build_eval_env(cfg)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    refs = compute_references(env)
    rows = [(name, r["co2_kg"], r["ev_unmet_kwh"]) for name, r in refs.table().items()]
    Console().print(co2_table(rows, env.scenario.hours))
    print(f"computed in {time.perf_counter() - t0:.1f} s")
    return 0

"""``python -m bess_rl.references [overrides]``: the references table of a scenario and site."""

from __future__ import annotations

import sys
import time

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from bess_rl.baselines.references import co2_table, compute_references
from bess_rl.experiment.build import build_eval_env, build_mpc_settings
from bess_rl.experiment.config import compose_config, one_line, validate
from bess_rl.experiment.errors import USER_ERRORS, interrupted
from bess_rl.experiment.input_checks import own_data_warning


def main(argv: list[str] | None = None) -> int:
    """Print the references for these Hydra overrides (``scenario=...``, ``site.*``), as the main command takes."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(
            "usage: python -m bess_rl.references [scenario=NAME] [site.KEY=VALUE ...] [scenario.KEY=VALUE ...] "
            "[mpc.horizon_hours=H] [mpc.every_hours=K]\n"
            "Every reference on the evaluation data of that config, ranked by penalised kg (CO2 + penalty x EV "
            "unmet), with the seconds each took."
        )
        return 0
    try:
        return print_references(args)
    except KeyboardInterrupt:
        return interrupted("nothing written (this command only prints)")


def print_references(args: list[str]) -> int:
    """The references table and their timings, or one line saying why the overrides are unusable. The config
    is checked as ``python -m bess_rl`` checks it (``validate``): the references solve the same files."""
    try:
        cfg = compose_config(args)
        validate(cfg)
        env = build_eval_env(cfg)
        mpc = build_mpc_settings(cfg.mpc)
    except (*USER_ERRORS, HydraException, OmegaConfBaseException) as exc:
        return _error(exc)
    # Said before the minutes of solving, not after.
    warnings = [own_data_warning(cfg, args)]
    if mpc.solve_every_hours != mpc.every_hours:
        warnings.append(
            f"mpc.every_hours={mpc.every_hours} is past mpc.horizon_hours={mpc.horizon_hours}: a plan "
            f"ends at its horizon, so the MPC re-solves every {mpc.solve_every_hours} h"
        )
    for warning in filter(None, warnings):
        print(f"warning: {warning}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        refs = compute_references(env, mpc)
    except USER_ERRORS as exc:  # e.g. an LP HiGHS cannot solve (LpError)
        return _error(exc)
    table = co2_table(refs.table(), env.scenario.hours)
    console = Console()
    if not console.is_terminal:  # a pipe or a file: rich's 80 columns would cut the numbers (11,373,1…)
        unbounded = console.options.update_width(sys.maxsize)
        console.width = max(console.width, console.measure(table, options=unbounded).maximum)
    console.print(table)
    timing = ", ".join(f"{name} {s:.1f} s (CPU {refs.cpu_seconds[name]:.1f} s)" for name, s in refs.seconds.items())
    mpc_desc = f"MPC re-solved every {mpc.solve_every_hours} h over {mpc.horizon_hours} h"
    print(f"computed in {time.perf_counter() - t0:.1f} s ({timing}; {mpc_desc})")
    return 0


def _error(exc: BaseException) -> int:
    """A user's error: one line on stderr, exit code 2."""
    print(f"error: {one_line(exc)}", file=sys.stderr)
    return 2

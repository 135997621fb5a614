"""bess_rl: RL controllers for a PV + battery + EV-charging site that minimise grid CO2."""

import sys

from bess_rl import startup

startup.guard()  # before gymnasium: python -m bess_rl[.<tool>] imports this package first

if sys.platform == "win32":  # run folders rely on flock and on fsync of folders, which Windows lacks
    raise SystemExit("bess_rl runs on Linux and macOS; on Windows, run it inside WSL2 (CUDA works there)")

from gymnasium.envs.registration import register, registry  # noqa: E402

from bess_rl.site.env import ENV_ID  # noqa: E402

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="bess_rl.site.env:PvBessEvEnv")

__all__ = ["ENV_ID"]

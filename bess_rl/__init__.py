"""bess_rl: RL controllers for a PV + battery + EV-charging site that minimise grid CO2."""

from gymnasium.envs.registration import register, registry

from bess_rl.site.env import ENV_ID

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="bess_rl.site.env:PvBessEvEnv")

__all__ = ["ENV_ID"]

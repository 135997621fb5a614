"""``python -m bess_rl.doctor``: the command lives in ``bess_rl.tools.doctor``."""

from bess_rl.tools import forward

if __name__ == "__main__":
    forward("doctor")

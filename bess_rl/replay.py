"""``python -m bess_rl.replay``: the command lives in ``bess_rl.tools.replay``."""

from bess_rl.tools import forward

if __name__ == "__main__":
    forward("replay")

"""``python -m bess_rl.evaluate``: the command lives in ``bess_rl.tools.evaluate``."""

from bess_rl.tools import forward

if __name__ == "__main__":
    forward("evaluate")

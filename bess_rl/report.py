"""``python -m bess_rl.report``: the command lives in ``bess_rl.tools.report``."""

from bess_rl.tools import forward

if __name__ == "__main__":
    forward("report")

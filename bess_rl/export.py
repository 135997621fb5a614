"""``python -m bess_rl.export``: the command lives in ``bess_rl.tools.export``."""

from bess_rl.tools import forward

if __name__ == "__main__":
    forward("export")

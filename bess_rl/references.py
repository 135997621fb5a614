"""``python -m bess_rl.references``: the command lives in ``bess_rl.tools.references``."""

from bess_rl.tools import forward

if __name__ == "__main__":
    forward("references")

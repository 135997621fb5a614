"""``python -m bess_rl.bench``: the command lives in ``bess_rl.tools.bench``."""

from bess_rl.tools import forward

if __name__ == "__main__":
    forward("bench")

"""``python -m bess_rl.replay``: the command lives in ``bess_rl.tools.replay``."""

from bess_rl.tools.replay import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m bess_rl.evaluate``: the command lives in ``bess_rl.tools.evaluate``."""

from bess_rl.tools.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())

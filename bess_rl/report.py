"""``python -m bess_rl.report``: the command lives in ``bess_rl.tools.report``."""

from bess_rl.tools.report import main

if __name__ == "__main__":
    raise SystemExit(main())

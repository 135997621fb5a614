"""``python -m bess_rl.doctor``: the command lives in ``bess_rl.tools.doctor``."""

from bess_rl.tools.doctor import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m bess_rl.bench``: the command lives in ``bess_rl.tools.bench``."""

from bess_rl.tools.bench import main

if __name__ == "__main__":
    main()

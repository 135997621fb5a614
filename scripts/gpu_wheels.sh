#!/usr/bin/env bash
# Wheels for scripts/gpu_check.sh: the packages a lent GPU machine's image lacks (it has PyTorch, numpy,
# pandas, scipy, matplotlib, ...), at the versions installed in .venv, for its CPython 3.12 on x86-64.
set -eu
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
pins=$(.venv/bin/python - <<'PY'
from importlib.metadata import version
names = """stable_baselines3 gymnasium farama-notifications hydra-core omegaconf hydra-optuna-sweeper
hydra-joblib-launcher optuna sqlalchemy alembic mako cmaes colorlog cliff autopage cmd2 stevedore
prettytable pyperclip rich-argparse wcwidth pvlib pytz tzdata""".split()
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
# shellcheck disable=SC2086  # one argument per pin
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pins
# antlr4-python3-runtime (Hydra's parser runtime) is published as a source archive only: build its pure wheel.
.venv/bin/python -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(.venv/bin/python -c \
  'from importlib.metadata import version; print(version("antlr4-python3-runtime"))')"
ls .whl

"""Run every bad input of tests/faults.py through the real command line and tabulate what it printed.

Why: the test suite checks the table in-process; this shows what a user sees (exit code, the last
stderr line, whether a traceback appeared) and counts the clean one-line errors.

    python scripts/fault_table.py --out /tmp/fault_table.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults import BAD_INPUTS, write_files  # noqa: E402
from tests.helpers import COMMON  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    write_files()
    rows, clean = ["| overrides | exit | message (last stderr line) | traceback |", "|---|---|---|---|"], 0
    for overrides, expected in BAD_INPUTS:
        with tempfile.TemporaryDirectory() as root:
            env = {**os.environ, "BESS_RL_ROOT": root}
            proc = subprocess.run([sys.executable, "-m", "bess_rl", *COMMON, *overrides], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=300)  # fmt: skip
        lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
        traceback = "Traceback" in proc.stderr
        ok = proc.returncode != 0 and not traceback and expected in proc.stderr
        clean += ok
        last = next((line for line in reversed(lines) if expected in line), lines[-1] if lines else "")
        rows.append(
            f"| `{' '.join(overrides)}` | {proc.returncode} | {last.strip()[:160]} | {'yes' if traceback else 'no'} |"
        )
        print(rows[-1], flush=True)
    rows.append(
        f"\n{clean} of {len(BAD_INPUTS)} bad inputs: a clean error (non-zero exit, the expected line, no traceback)"
    )
    args.out.write_text("\n".join(rows) + "\n")
    print(rows[-1])
    return 0 if clean == len(BAD_INPUTS) else 1


if __name__ == "__main__":
    sys.exit(main())

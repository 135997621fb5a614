#!/usr/bin/env bash
# The suite side by side: an old commit against a new one, alternating, a cold compile cache each run.
# Set-up, once:
#   git clone -q /work/main /tmp/ab_old && git -C /tmp/ab_old checkout -q bc228c0
#   git clone -q /work/main /tmp/ab_new
#   (cd /tmp/ab_old && bash scripts/setup.sh) && (cd /tmp/ab_new && bash scripts/setup.sh)
for round in 1 2; do
  for side in old new; do
    rm -rf /tmp/torchinductor_root  # as on a fresh CI machine
    cd "/tmp/ab_$side" || exit 1
    start=$(date +%s.%N)
    out=$( { /usr/bin/time -f "user %U sys %S" .venv/bin/python -m pytest -q -p no:cacheprovider 2>&1 | tail -1; } 2>&1 )
    end=$(date +%s.%N)
    echo "round $round $side: $(echo "$out" | tr '\n' ' ') wall $(python3 -c "print(round($end - $start, 1))")"
  done
done

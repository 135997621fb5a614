#!/usr/bin/env bash
# One row per defect this audit fixed: exit code, whether a traceback appeared, and the last line a user sees.
# Run with the checkout to test first on PYTHONPATH, e.g. for the commit before the fixes:
#   git worktree add /tmp/before <commit>; bash before_after.sh /tmp/before > before.md
#   bash before_after.sh "$PWD" > after.md
set -u
CODE=$1
PY=${PY:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python}
export PYTHONPATH=$CODE
W=$(mktemp -d)
SMALL="scenario=iquitos scenario.window_hours=168 progress_bar=false plot=false"
PPO="agent=ppo agent.total_timesteps=64 agent.hparams.n_steps=64 agent.hparams.batch_size=32 agent.hparams.n_epochs=1 agent.hparams.net_arch=[16]"
SWEEP="-m $SMALL hparams_search=ppo_optuna hydra.sweeper.n_trials=1 $PPO"
FILE="scenario=iquitos scenario.hours=168 scenario.window_hours=null progress_bar=false plot=false $PPO"
"$PY" - "$W" <<'PYEOF'
import sys
w = sys.argv[1]
rows = [f"{0.5 if 8 <= h % 24 < 17 else 0.0},{1000 + h % 24}" for h in range(168)]
open(f"{w}/dst.csv", "w").write("\n".join(["timestamp,pv_kw_per_kwp,load_kw", *[
    f"2024-03-{1 + h // 24:02d}T{h % 24:02d}:00:00{'+01:00' if h < 100 else '+02:00'},{r}" for h, r in enumerate(rows)]]) + "\n")
open(f"{w}/bomdup.csv", "w").write("\ufeff" + "\n".join(["pv_kw_per_kwp,load_kw,pv_kw_per_kwp", *[r + ",0.9" for r in rows]]) + "\n")
open(f"{w}/huge.csv", "w").write("\n".join(["pv_kw_per_kwp,load_kw", "0.1,1e300", *rows[1:]]) + "\n")
PYEOF
echo "| case | exit | traceback | last line |"
echo "|---|---|---|---|"
row() {  # row NAME ARGS...: run python -m ARGS in a fresh root
  local name=$1; shift
  export BESS_RL_ROOT=$(mktemp -d -p "$W"); cd "$BESS_RL_ROOT"
  timeout 300 "$PY" -m "$@" > out.txt 2>&1; local rc=$?
  local last; last=$(grep -v "Warning\|warnings.warn\|^\s*$" out.txt | tail -1 | sed 's/^\[[^]]*\]\[[^]]*\]\[*[A-Z]*\]* *-* *//' | cut -c1-150 | tr '|' '/')
  echo "| $name | $rc | $(grep -q Traceback out.txt && echo yes || echo no) | ${last//$W/<tmp>} |"
}
row "sweep: study_name=null" bess_rl $SWEEP hydra.sweeper.study_name=null
row "sweep: n_jobs=0" bess_rl $SWEEP hydra.sweeper.n_jobs=0
row "sweep: objective=nosuch" bess_rl $SWEEP objective=nosuch
row "sweep: mistyped key" bess_rl $SWEEP 'agent.hparams.learnin_rate=interval(1e-5,1e-3)'
row "sweep: interval(1.0,0.9)" bess_rl $SWEEP 'agent.hparams.gae_lambda=interval(1.0,0.9)'
row "sweep: storage sqlite:///" bess_rl $SWEEP "hydra.sweeper.storage='sqlite:///'"
row "sweep: max_failure_rate=2" bess_rl $SWEEP hydra.sweeper.max_failure_rate=2
row "doctor agent.hparams.gamma=2" bess_rl.doctor agent.hparams.gamma=2
row "bench --heap-keep-mb 99999" bess_rl.bench --heap-keep-mb 99999 --agents ppo --presets before --seconds 0.1 --rounds 1
row "references: a 1e300 load" bess_rl.references $FILE scenario.hourly_path=$W/huge.csv
row "a DST timestamp column" bess_rl $FILE scenario.hourly_path=$W/dst.csv
row "a BOM and a repeated column" bess_rl $FILE scenario.hourly_path=$W/bomdup.csv
row "override with ~ in a path" bess_rl $SMALL 'scenario.hourly_path=~/x.csv'
# SIGHUP while training: is a checkpoint kept?
export BESS_RL_ROOT=$(mktemp -d -p "$W"); cd "$BESS_RL_ROOT"
timeout 300 "$PY" -m bess_rl $SMALL agent=sac agent.total_timesteps=20000 agent.hparams.buffer_size=5000 agent.hparams.learning_starts=20 agent.hparams.gradient_steps=2 agent.hparams.batch_size=16 'agent.hparams.net_arch=[16]' > out.txt 2>&1 &
P=$!; until grep -q "training sac" out.txt || ! kill -0 $P 2>/dev/null; do sleep 0.2; done; sleep 2; kill -HUP $P; wait $P; rc=$?
echo "| SIGHUP while training | $rc | $(grep -q Traceback out.txt && echo yes || echo no) | checkpoint kept: $(ls -d outputs/runs/*/*/checkpoint >/dev/null 2>&1 && echo yes || echo no) |"
# SIGTERM while the references are solved (the full year: about half a minute)
export BESS_RL_ROOT=$(mktemp -d -p "$W"); cd "$BESS_RL_ROOT"
timeout 300 "$PY" -m bess_rl scenario=iquitos progress_bar=false plot=false $PPO > out.txt 2>&1 &
P=$!; until grep -q "solving the references" out.txt || ! kill -0 $P 2>/dev/null; do sleep 0.2; done; sleep 1; kill -TERM $P; wait $P; rc=$?
last=$(tail -1 out.txt | sed 's/^\[[^]]*\]\[[^]]*\]\[*[A-Z]*\]* *-* *//' | cut -c1-110)
echo "| SIGTERM while the references are solved | $rc | $(grep -q Traceback out.txt && echo yes || echo no) | ${last//$W/<tmp>}; folders left: $(ls -d outputs/runs/*/* 2>/dev/null | wc -l) |"
rm -rf "$W"

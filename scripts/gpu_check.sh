#!/usr/bin/env bash
# The GPU checks of issues 4 and 13 in one call on a lent GPU machine: GPU-marked tests, the doctor, the CUDA
# benchmark (SAC at "after" with kernels per update and populations of 1, 4, 16 and 32; PPO and A2C at
# "after"), a short PPO run with the captured update. Step limits sum to ~9.5 min: one device call.
# The machine has PyTorch but not this project's other dependencies: `bash scripts/gpu_wheels.sh` puts their
# wheels in .whl/ (git-ignored), which must travel to the GPU machine with the checkout.
# Logs and JSON go to $OUT; each step is time-boxed so one slow step cannot eat the others' time.
set -u
export PYTHONUNBUFFERED=1 BESS_RL_ROOT=/tmp/bess_root OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" "$BESS_RL_ROOT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"
step() { local name=$1 limit=$2; shift 2; echo "=== $name"; timeout "$limit" "$@" >"$OUT/$name.log" 2>&1;
         echo "=== $name rc=$?"; grep -v "Warning\|warnings.warn\|^$" "$OUT/$name.log" | tail -n "${TAIL:-25}"; }
TAIL=8 step gpu_tests 150 python3 -m pytest -q -m gpu -p no:cacheprovider
TAIL=4 step doctor 45 python3 -m bess_rl.tools.doctor hardware=rtx4060
TAIL=22 step bench_sac 210 python3 -m bess_rl.tools.bench --agents sac --presets after --device cuda --seconds 2 \
  --count-launches --population 1 4 16 32 --json "$OUT/bench_sac.json"
TAIL=14 step bench_onpolicy 90 python3 -m bess_rl.tools.bench --agents ppo a2c --presets after --device cuda --seconds 1 \
  --json "$OUT/bench_onpolicy.json"
TAIL=14 step train_ppo 60 python3 -m bess_rl agent=ppo preset=after hardware=rtx4060 agent.device=cuda \
  agent.total_timesteps=8192 plot=false
(cd "$BESS_RL_ROOT" && tar czf "$OUT/runs.tgz" --exclude='*.zip' --exclude='*.pkl' outputs) 2>/dev/null

#!/usr/bin/env bash
# Create .venv and install bess_rl with its test tools, from this repository's own files.
# torch is pinned first to the release whose CPU wheel our machines carry; a CUDA machine may
# install any torch in pyproject's range instead before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
# cluster + dashboard + export: the PostgreSQL, submitit, dashboard and ONNX tests run too; one resolve
# with pyproject's pins, so no extra can move optuna past 2.x or SQLAlchemy past 1.4.
.venv/bin/python -m pip install --quiet -e ".[dev,cluster,dashboard,export]"
# pip byte-compiles every package it installs but an editable one: compiled here, or where
# PYTHONDONTWRITEBYTECODE is set every process (each sweep worker, each test subprocess) compiles
# bess_rl's sources again (~0.3 s of CPU a process).
.venv/bin/python -m compileall -q bess_rl

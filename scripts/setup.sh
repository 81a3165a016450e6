#!/usr/bin/env bash
# Set up a fresh machine: a venv in .venv with the package and the extras named in $EXTRAS
# (torch/torchvision as pip resolves them; nothing is pinned). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev,train,hub}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"

#!/usr/bin/env bash
# Set up a fresh machine and run the project's checks: a venv in .venv, the package with its dev
# extras (torch/torchvision as pip resolves them; nothing is pinned), ruff, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/ruff check .
.venv/bin/python -m pytest -n 2 --durations=10 "$@"

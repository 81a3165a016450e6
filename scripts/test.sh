#!/usr/bin/env bash
# Set up a fresh machine and run the project's checks: ruff, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -n 2 --durations=10 "$@"

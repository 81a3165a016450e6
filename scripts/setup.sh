#!/usr/bin/env bash
# Set up a fresh machine: a venv in .venv with the package and the extras named in $EXTRAS
# (torch/torchvision as pip resolves them; nothing is pinned). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev,train}
# pip's torch on Linux is the CUDA build: the venv takes about 6 GiB. Say so before pip fills the disk.
NEED_MIB=6144
if ! { [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; }; then
    free_mib=$(( $(df -Pk . | awk 'NR == 2 {print $4}') / 1024 ))
    if [ "$free_mib" -lt "$NEED_MIB" ]; then
        echo "setup: the venv needs about $NEED_MIB MiB (torch and its CUDA libraries), but only $free_mib MiB is free under $PWD." >&2
        echo "setup: free some space there, or clone the project onto a larger disk, then run scripts/setup.sh again." >&2
        exit 1
    fi
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"

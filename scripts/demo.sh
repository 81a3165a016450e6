#!/usr/bin/env bash
# The main job on a fresh, offline machine: set up, train resnet18_spa briefly on the digits data set
# that ships with scikit-learn, evaluate it honestly (checkpoint chosen on a held-out validation
# split, test split once), then re-evaluate the chosen weights with the validation command.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=train bash scripts/setup.sh
RUN=${RUN:-runs/demo-resnet18_spa-digits}
.venv/bin/python -m train --dataset digits --model resnet18_spa --epochs "${EPOCHS:-6}" -b 64 --amp \
    --log-interval 0 --output "$RUN" --overwrite
.venv/bin/python -m train.validate --run "$RUN" --split test --output-json "$RUN/validate_test.json"
echo
echo "run directory: $RUN"
echo "  results (the numbers, with data set, budget, seed, hardware): $RUN/results.json"
echo "  chosen weights:                                              $RUN/model_best.safetensors"
echo "  per-epoch metrics and curves:                                $RUN/summary.csv, $RUN/curves.png"
echo "  resumable training state:                                    $RUN/last.pth.tar"

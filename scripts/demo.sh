#!/usr/bin/env bash
# The main job on a fresh, offline machine: set up; train resnet18_spa briefly on the digits data set
# that ships with scikit-learn; evaluate it honestly (checkpoint chosen on a validation split held out
# of train, test split once); export the run as a Hub repository, publish it into a local mirror,
# serve the mirror over the Hub's HTTP API (olah), reload the model with pretrained=True and check
# that it scores exactly what its model card says.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=train,hub bash scripts/setup.sh
RUN=${RUN:-runs/demo-resnet18_spa-digits}
.venv/bin/python -m train --dataset digits --model resnet18_spa --epochs "${EPOCHS:-6}" -b 64 --amp \
    --log-interval 0 --output "$RUN" --overwrite
.venv/bin/python -m hub.demo "$RUN"
echo
echo "run directory: $RUN"
echo "  results (numbers, data set, budget, seed, hardware): $RUN/results.json"
echo "  chosen weights:                                     $RUN/model_best.safetensors"
echo "  per-epoch metrics and curves:                       $RUN/summary.csv, $RUN/curves.png"
echo "  resumable training state:                           $RUN/last.pth.tar"
echo "  Hub repository (model card, config, weights):       $RUN/hub-repo/"
echo "  local Hub mirror (olah layout):                     $RUN/hub-mirror/models/"

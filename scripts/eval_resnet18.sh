#!/usr/bin/env bash
# The paper's evaluation command: evaluate a ResNet-18 checkpoint (official or ours; SimAM is recognised).
#   scripts/eval_resnet18.sh DATA CHECKPOINT [main_imagenet.py flags...]   (GPUS=0,1,2,3 by default)
#   DRY_RUN=1 scripts/eval_resnet18.sh DATA CHECKPOINT     # print the command only
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
help_if_asked "$0" 4 2 "$@"
cd "$(dirname "$0")/.."
DATA=$1; CHECKPOINT=$2; shift 2
run_or_print python main_imagenet.py "$DATA" --gpu "${GPUS:-0,1,2,3}" -j 20 -a resnet18 -e --resume "$CHECKPOINT" "$@"

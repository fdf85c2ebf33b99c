#!/usr/bin/env bash
# The paper's ResNet-18 command: SimAM-ResNet-18 on 4 GPUs, 100 epochs (extra flags are passed on).
#   scripts/train_resnet18_simam.sh DATA [--gpu 0,1,2,3] [main_imagenet.py flags...]
#   DRY_RUN=1 scripts/train_resnet18_simam.sh DATA     # print the command only
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
help_if_asked "$0" 4 1 "$@"
cd "$(dirname "$0")/.."
DATA=$1; shift
run_or_print python main_imagenet.py "$DATA" --gpu "${GPUS:-0,1,2,3}" --epochs 100 -j 20 -a resnet18 \
    --attention_type simam --attention_param 0.1 "$@"

#!/usr/bin/env bash
# The paper's MobileNetV2 command: SimAM-MobileNetV2 on 4 GPUs, 150 epochs, lr 0.05, cosine, wd 4e-5.
#   scripts/train_mobilenet_v2_simam.sh DATA [main_imagenet.py flags...]   (GPUS=0,1,2,3 by default)
#   DRY_RUN=1 scripts/train_mobilenet_v2_simam.sh DATA     # print the command only
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
help_if_asked "$0" 4 1 "$@"
cd "$(dirname "$0")/.."
DATA=$1; shift
run_or_print python main_imagenet.py "$DATA" --gpu "${GPUS:-0,1,2,3}" --epochs 150 -j 20 -a mobilenet_v2 \
    --attention_type simam --attention_param 0.1 --lr .05 --cos_lr --wd 4e-5 "$@"

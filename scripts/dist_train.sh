#!/usr/bin/env bash
# torchrun launcher for one node or several: one process per GPU on each node.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 scripts/dist_train.sh DATA --config configs/resnet50_simam.yaml
#   Environment: NNODES (1), NODE_RANK (0), NPROC_PER_NODE (the node's GPU count, 1 without GPUs),
#   MASTER_ADDR (127.0.0.1), MASTER_PORT (29500), MAX_RESTARTS (3). Run the same command on every node with its NODE_RANK.
#   A dead worker makes torchrun restart the workers (up to MAX_RESTARTS times); they continue from the run folder's
#   newest checkpoint (--resume auto), losing at most --checkpoint-interval minutes of training.
#   DRY_RUN=1 scripts/dist_train.sh DATA ...     # print the command only
set -euo pipefail
source "$(dirname "$0")/_launch.sh"
help_if_asked "$0" 8 1 "$@"
cd "$(dirname "$0")/.."
if [ -z "${NPROC_PER_NODE:-}" ]; then
    NPROC_PER_NODE=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
run_or_print python -m torch.distributed.run --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
    --nproc_per_node "$NPROC_PER_NODE" --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    --max-restarts "${MAX_RESTARTS:-3}" main_imagenet.py --resume auto "$@"

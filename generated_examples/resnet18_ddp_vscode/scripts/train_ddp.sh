#!/usr/bin/env bash
# Multi-process training with torchrun: the same command from a laptop to many GPU nodes.
#
#   bash scripts/train_ddp.sh NPROC [train.py options]
#
# NPROC is the number of processes on this node: one per GPU (`gpu` starts one per visible GPU),
# or for example 2 on a machine without GPUs (CPU processes over gloo). Everything after NPROC
# goes to train.py; --batch-size is per process, so the global batch is NPROC x nodes x batch.
#
# One node:
#   bash scripts/train_ddp.sh 2 --epochs 1 --max-steps 4
# Several nodes: the same line on every node, with where to meet (any free port on node0):
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29500 bash scripts/train_ddp.sh 8 --resume auto
#   NNODES=2 NODE_RANK=1 RDZV_ENDPOINT=node0:29500 bash scripts/train_ddp.sh 8 --resume auto
# On SLURM, scripts/slurm.sbatch does this for you.
#
# Environment variables:
#   NNODES          nodes taking part (default 1), or MIN:MAX to let the job run elastically
#   NODE_RANK       this node's index, 0..NNODES-1 (default: $SLURM_NODEID, else 0)
#   RDZV_ENDPOINT   HOST:PORT of the c10d rendezvous, reachable from every node; needed when
#                   NNODES > 1. Unset on one node: torchrun --standalone picks a free port.
#   RDZV_ID         an id shared by every node of one run (default: $SLURM_JOB_ID, else none)
#   MAX_RESTARTS    after a failure, restart all processes this many times (default 0); each
#                   restart resumes from the newest checkpoint (--resume auto is added for you)
#   OMP_NUM_THREADS CPU threads per process (default: this machine's cores / NPROC)
#   TRAIN_SCRIPT    the Python script torchrun starts (default: train.py of this project)
set -euo pipefail

usage="usage: bash scripts/train_ddp.sh NPROC [train.py options]   (NPROC: a number, or gpu)"
if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    echo "$usage" >&2
    exit 2
fi
nproc_per_node="$1"
shift
if ! [[ "$nproc_per_node" =~ ^([1-9][0-9]*|gpu|cpu|auto)$ ]]; then
    echo "error: NPROC must be a positive number or gpu, not '$nproc_per_node'" >&2
    echo "$usage" >&2
    exit 2
fi

project_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
train_script="${TRAIN_SCRIPT:-$project_dir/train.py}"
nnodes="${NNODES:-1}"
node_rank="${NODE_RANK:-${SLURM_NODEID:-0}}"
rdzv_endpoint="${RDZV_ENDPOINT:-}"
rdzv_id="${RDZV_ID:-${SLURM_JOB_ID:-none}}"
max_restarts="${MAX_RESTARTS:-0}"

# Each process gets its share of the cores: more threads than cores makes every process slower.
if [[ -z "${OMP_NUM_THREADS:-}" && "$nproc_per_node" =~ ^[0-9]+$ ]]; then
    cores="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
    threads=$((cores / nproc_per_node))
    export OMP_NUM_THREADS=$((threads > 0 ? threads : 1))
fi

if [[ "$nnodes" == "1" && -z "$rdzv_endpoint" ]]; then
    rendezvous=(--standalone)
elif [[ -z "$rdzv_endpoint" ]]; then
    echo "error: NNODES=$nnodes needs RDZV_ENDPOINT=HOST:PORT (a host every node can reach)" >&2
    exit 2
else
    rendezvous=(
        --nnodes "$nnodes" --node-rank "$node_rank"
        --rdzv-backend c10d --rdzv-endpoint "$rdzv_endpoint" --rdzv-id "$rdzv_id"
    )
fi

# A restarted worker group must continue from the last checkpoint, not start over.
if [[ "$max_restarts" != "0" ]]; then
    has_resume=false
    for arg in "$@"; do
        [[ "$arg" == --resume || "$arg" == --resume=* ]] && has_resume=true
    done
    if [[ "$has_resume" == false ]]; then
        set -- --resume auto "$@"
    fi
fi

if ! command -v torchrun >/dev/null; then
    echo "error: torchrun not found: activate the environment where PyTorch is installed" >&2
    exit 127
fi

# train.py's command line checked once, here: a mistake is one line, not one from every process
# followed by torchrun's report of their failures.
if [[ -z "${TRAIN_SCRIPT:-}" ]]; then
    python "$project_dir/options.py" "$@"
fi

set -x
exec torchrun "${rendezvous[@]}" --nproc-per-node "$nproc_per_node" \
    --max-restarts "$max_restarts" "$train_script" "$@"

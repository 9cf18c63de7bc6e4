#!/bin/sh
# Tile-feature extraction on all GPUs of one machine (or several, with NNODES / NODE_RANK / MASTER_ADDR):
# torchrun starts one rank per GPU; each extracts its own deterministic share of the slides (see
# patches/pathology/distributed.py). Rerunning finishes only what is missing.
#
#   GPUS=4 SLIDES=/data/wsi OUT=/data/feats/virchow2 WEIGHTS=/models/virchow2/model.safetensors \
#       sh shell/pathology/extract_features_multi_gpu.sh [extra extract flags, e.g. --layout trident]
#
# Relative paths are relative to the repository root (the script runs from there).
# WEIGHTS: a weights file / HF snapshot folder, or hf-hub (gated: log in first); ENCODER (virchow2), WORKERS (8).
# On a machine without CUDA the ranks run on the CPU (GPUS = processes); SLURM: extract_features_slurm.sbatch.
set -e
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
GPUS=${GPUS:-$("$PYTHON" -c "import torch; print(max(1, torch.cuda.device_count()))")}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29531}
SLIDES=${SLIDES:?set SLIDES to a slide, a folder of slides or a list file}
OUT=${OUT:?set OUT to the feature folder}
"$PYTHON" -m torch.distributed.run --nproc_per_node="$GPUS" --nnodes="$NNODES" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
    -m patches.pathology.extract --slides "$SLIDES" --out "$OUT" --encoder "${ENCODER:-virchow2}" \
    ${WEIGHTS:+--weights "$WEIGHTS"} --num-workers "${WORKERS:-8}" --no-progress "$@"

#!/bin/sh
# Brainfound stage 1: DDPM pretraining of the conditional UNet on 2D slices (torchrun + accelerate; mixed precision on GPU).
#
#   sh shell/brainfound/stage1_pretrain_ddpm.sh [--set train.max_steps=1000 ...]
#   GPUS=8 CONFIG=my_ddpm.yaml sh shell/brainfound/stage1_pretrain_ddpm.sh
#
# CONFIG (default patches/brainfound/configs/ddpm.yaml) holds the data manifest, condition text model and schedule.
# Re-running with the same output_dir resumes from its latest checkpoint (--resume never starts over).
set -e
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
GPUS=${GPUS:-1}
CONFIG=${CONFIG:-patches/brainfound/configs/ddpm.yaml}
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m patches.brainfound.pretrain_ddpm \
    --config "$CONFIG" "$@"

#!/bin/sh
# Brainfound stage 2: contrastive scan-report pretraining (momentum encoders + queues), then zero-shot eval.
#
#   sh shell/brainfound/stage2_pretrain_clip.sh [--set train.max_steps=1000 ...]
#   GPUS=8 CONFIG=my_clip.yaml sh shell/brainfound/stage2_pretrain_clip.sh
#
# CONFIG (default patches/brainfound/configs/clip.yaml): init_from = the stage-1 output dir. The export
# <output_dir>/vision_encoder is what stage 3 loads. accelerate launch works as well:
#   accelerate launch --num_processes 8 -m patches.brainfound.pretrain_clip --config ...
set -e
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
GPUS=${GPUS:-1}
CONFIG=${CONFIG:-patches/brainfound/configs/clip.yaml}
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m patches.brainfound.pretrain_clip \
    --config "$CONFIG" "$@"

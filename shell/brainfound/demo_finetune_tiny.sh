#!/bin/sh
# Brainfound stage 3, tiny: the embedded tiny InternVL (pretrained/InternVL-tiny) keeps its LLM and gets the tiny
# brainfound_unet encoder trained in stage 2 (work_dirs/brainfound_tiny/stage2/vision_encoder) + the per-token
# `mlp` projector; trained on the synthetic Brainfound-format data (data/demo_brainfound/stage3: key `meditk`,
# placeholder `<meditk>`, .npz volumes). Everything trains: the tiny LLM starts from random weights.
#
#   sh shell/brainfound/demo_finetune_tiny.sh [extra finetune flags, e.g. --max_steps 20]
#
# ENCODER (the stage-2 output), MODEL, META_PATH, OUTPUT_DIR override the paths; GPUS / PER_DEVICE_BATCH_SIZE /
# BATCH_SIZE as in shell/common.sh.
GPUS=${GPUS:-1}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-8}
DEFAULT_BATCH_SIZE=8  # global batch unless BATCH_SIZE is set (raised to PER_DEVICE_BATCH_SIZE x processes if smaller)
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/brainfound_tiny/stage3}
MODEL=${MODEL:-pretrained/InternVL-tiny}
META_PATH=${META_PATH:-data/demo_brainfound/stage3/train_meta.json}
ENCODER=${ENCODER:-work_dirs/brainfound_tiny/stage2/vision_encoder}
. "$(dirname "$0")/../common.sh"

internvl_finetune \
    --model_name_or_path "$MODEL" \
    --meta_path "$META_PATH" \
    --plugins patches.brainfound \
    --vision_model brainfound_unet \
    --vision_overrides "{\"pretrained_path\": \"$ENCODER\"}" \
    --projector mlp \
    --conv_style internvl2_5 \
    --force_image_size 112 \
    --down_sample_ratio 0.5 \
    --freeze_llm False \
    --freeze_mlp False \
    --freeze_backbone False \
    --grad_checkpoint False \
    --max_seq_length 256 \
    --num_train_epochs 20 \
    --learning_rate 1e-3 \
    --weight_decay 0.01 \
    --warmup_ratio 0.05 \
    --lr_scheduler_type cosine \
    --logging_steps 4 \
    --save_strategy steps \
    --save_steps 100 \
    --save_total_limit 1 \
    --dataloader_num_workers 0 \
    --seed 42 \
    --report_to tensorboard \
    "$@"

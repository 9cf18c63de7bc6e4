#!/bin/sh
# Finetune the embedded tiny default (pretrained/InternVL-tiny, random weights) on the 2D demo data (data/demo),
# the training step of `make demo`. Everything trains (vision encoder, projector, LLM): the tiny model starts
# from random weights, so the vision side must learn too. Run from the repo root after
# `python pretrained/build_tiny.py` and `python data/build_demo.py`:
#
#   GPUS=1 sh shell/demo/finetune_tiny.sh
#   GPUS=2 PER_DEVICE_BATCH_SIZE=2 sh shell/demo/finetune_tiny.sh --deepspeed zero_stage2_config.json
#
# Global batch 16 (GRADIENT_ACC follows GPUS and PER_DEVICE_BATCH_SIZE). MODEL, META_PATH and OUTPUT_DIR override
# the paths; extra flags (e.g. --max_steps 20) pass through. Environment and CPU fallback: see shell/common.sh.
GPUS=${GPUS:-1}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-16}
BATCH_SIZE=${BATCH_SIZE:-16}
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/demo/internvl_tiny_finetune}
MODEL=${MODEL:-pretrained/InternVL-tiny}
META_PATH=${META_PATH:-data/demo/train_meta.json}
. "$(dirname "$0")/../common.sh"

internvl_finetune \
    --model_name_or_path "$MODEL" \
    --meta_path "$META_PATH" \
    --conv_style internvl2_5 \
    --force_image_size 112 \
    --max_dynamic_patch 4 \
    --down_sample_ratio 0.5 \
    --dynamic_image_size True \
    --use_thumbnail True \
    --ps_version v2 \
    --freeze_llm False \
    --freeze_mlp False \
    --freeze_backbone False \
    --grad_checkpoint False \
    --max_seq_length 512 \
    --num_train_epochs 3 \
    --learning_rate 1e-3 \
    --weight_decay 0.01 \
    --warmup_ratio 0.05 \
    --lr_scheduler_type cosine \
    --logging_steps 10 \
    --save_strategy steps \
    --save_steps 100 \
    --save_total_limit 2 \
    --dataloader_num_workers 0 \
    --seed 42 \
    --report_to tensorboard \
    "$@"

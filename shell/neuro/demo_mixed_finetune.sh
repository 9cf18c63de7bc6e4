#!/bin/sh
# Fine-tune a two-tower tiny model (image: InternViT, volume: brain3d_vit_tiny; made by
# `python -m internvl.tools.compose_towers`, see shell/neuro/demo_mixed.sh) on data/demo_mixed: every row feeds a
# photo to the image tower and a volume to the volume tower in one prompt. Everything trains. MODEL, META_PATH,
# OUTPUT_DIR override the paths; extra flags pass through. Environment and CPU fallback: shell/common.sh.
GPUS=${GPUS:-1}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-16}
DEFAULT_BATCH_SIZE=16  # global batch unless BATCH_SIZE is set (raised to PER_DEVICE_BATCH_SIZE x processes if smaller)
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/demo_mixed/finetune}
MODEL=${MODEL:-work_dirs/demo_mixed/start}
META_PATH=${META_PATH:-data/demo_mixed/train_meta.json}
. "$(dirname "$0")/../common.sh"

internvl_finetune \
    --model_name_or_path "$MODEL" \
    --meta_path "$META_PATH" \
    --plugins patches.neuro \
    --conv_style internvl2_5 \
    --force_image_size 112 \
    --down_sample_ratio 0.5 \
    --dynamic_image_size False \
    --freeze_llm False \
    --freeze_mlp False \
    --freeze_backbone False \
    --grad_checkpoint False \
    --max_seq_length 256 \
    --num_train_epochs 12 \
    --learning_rate 5e-4 \
    --weight_decay 0.01 \
    --warmup_ratio 0.05 \
    --lr_scheduler_type cosine \
    --logging_steps 5 \
    --save_strategy steps \
    --save_steps 100 \
    --save_total_limit 1 \
    --dataloader_num_workers 0 \
    --seed 42 \
    --report_to tensorboard \
    "$@"

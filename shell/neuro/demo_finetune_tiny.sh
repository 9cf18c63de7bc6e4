#!/bin/sh
# Finetune the embedded tiny InternVL (pretrained/InternVL-tiny, random weights) on the synthetic neuro demo
# (data/demo_neuro, from `python data/build_demo.py --neuro`), with its vision side replaced by a tiny 3D ViT:
# brain3d_vit_tiny (32^3 volumes at 1.5 mm, 8^3 patches -> 64 tokens) + spatial_pool_mlp (2x2x2 pooling -> 8
# <IMG_CONTEXT> tokens per volume). Everything trains: encoder, projector and LLM all start from random weights.
#
#   sh shell/neuro/demo_finetune_tiny.sh [extra finetune flags, e.g. --max_steps 20]
#
# MODEL, META_PATH, OUTPUT_DIR override the paths; GPUS / PER_DEVICE_BATCH_SIZE / BATCH_SIZE as in shell/common.sh.
GPUS=${GPUS:-1}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-16}
DEFAULT_BATCH_SIZE=16  # global batch unless BATCH_SIZE is set (raised to PER_DEVICE_BATCH_SIZE x processes if smaller)
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/demo_neuro/brain3d_tiny_finetune}
MODEL=${MODEL:-pretrained/InternVL-tiny}
META_PATH=${META_PATH:-data/demo_neuro/train_meta.json}
. "$(dirname "$0")/../common.sh"

internvl_finetune \
    --model_name_or_path "$MODEL" \
    --meta_path "$META_PATH" \
    --plugins patches.neuro \
    --vision_model brain3d_vit_tiny \
    --vision_overrides '{"preprocess": {"target_spacing": [1.5, 1.5, 1.5]}}' \
    --projector spatial_pool_mlp \
    --projector_config '{"pool": 2}' \
    --conv_style internvl2_5 \
    --force_image_size 112 \
    --down_sample_ratio 0.5 \
    --freeze_llm False \
    --freeze_mlp False \
    --freeze_backbone False \
    --grad_checkpoint False \
    --max_seq_length 256 \
    --num_train_epochs 10 \
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

#!/bin/sh
# Fine-tune the two-tower tiny model of the grounding demo (image: InternViT at one 112 px tile; volume:
# brain3d_vit_tiny + spatial_pool_mlp; made by `python -m internvl.tools.compose_towers`, see demo.sh) on
# data/demo_grounding: "Where is the lesion?" -> <ref>lesion</ref><box>[[...]]</box>, 2D and 3D rows mixed.
# Everything trains (both towers, projectors, LLM): the tiny model starts from random weights.
# MODEL, META_PATH, OUTPUT_DIR override the paths; extra flags pass through (the last occurrence wins).
# Environment and CPU fallback: shell/common.sh. Hyperparameters: see the "Grounding demo" section of README.md.
GPUS=${GPUS:-1}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-16}
BATCH_SIZE=${BATCH_SIZE:-16}
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/demo_grounding/finetune}
MODEL=${MODEL:-work_dirs/demo_grounding/start}
META_PATH=${META_PATH:-data/demo_grounding/train_meta.json}
. "$(dirname "$0")/../../common.sh"

internvl_finetune \
    --model_name_or_path "$MODEL" \
    --meta_path "$META_PATH" \
    --plugins patches.neuro \
    --conv_style internvl2_5 \
    --force_image_size 112 \
    --max_dynamic_patch 1 \
    --down_sample_ratio 0.5 \
    --freeze_llm False \
    --freeze_mlp False \
    --freeze_backbone False \
    --grad_checkpoint False \
    --max_seq_length 256 \
    --num_train_epochs 6 \
    --learning_rate 1e-3 \
    --weight_decay 0.01 \
    --warmup_ratio 0.05 \
    --lr_scheduler_type cosine \
    --logging_steps 50 \
    --save_strategy steps \
    --save_steps 200 \
    --save_total_limit 1 \
    --dataloader_num_workers 0 \
    --seed 42 \
    --report_to tensorboard \
    "$@"

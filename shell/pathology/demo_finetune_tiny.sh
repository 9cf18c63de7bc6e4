#!/bin/sh
# Finetune the embedded tiny InternVL (pretrained/InternVL-tiny, random weights) on the synthetic pathology demo
# (data/demo_pathology, from `python data/build_demo.py --pathology`) to write slide reports (grade + survival
# risk). The vision side is replaced: slide_features (bags of cached virchow2_tiny tile features, 192-d) +
# perceiver_resampler (8 learned latents -> 8 <IMG_CONTEXT> tokens per slide). The tile encoder is not in the
# loop: training reads the feature files. Everything else trains (aggregator and LLM start from random weights).
# max_tiles 16: every demo slide has 22-28 tissue tiles; training sees a random 16-tile subset of each slide per
# step (augmentation), evaluation 16 evenly spaced tiles.
#
#   sh shell/pathology/demo_finetune_tiny.sh [extra finetune flags, e.g. --max_steps 20]
#
# MODEL, META_PATH, OUTPUT_DIR override the paths; GPUS / PER_DEVICE_BATCH_SIZE / BATCH_SIZE as in shell/common.sh.
GPUS=${GPUS:-1}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-8}
DEFAULT_BATCH_SIZE=8  # global batch unless BATCH_SIZE is set (raised to PER_DEVICE_BATCH_SIZE x processes if smaller)
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/demo_pathology/slide_tiny_finetune}
MODEL=${MODEL:-pretrained/InternVL-tiny}
META_PATH=${META_PATH:-data/demo_pathology/meta_train.json}
. "$(dirname "$0")/../common.sh"

internvl_finetune \
    --model_name_or_path "$MODEL" \
    --meta_path "$META_PATH" \
    --plugins patches.pathology \
    --vision_model slide_features \
    --vision_overrides '{"feature_dim": 192, "tile_encoder": "virchow2_tiny", "tile_encoder_seed": 0, "max_tiles": 16}' \
    --projector perceiver_resampler \
    --projector_config '{"num_tokens": 8, "dim": 128, "heads": 4, "depth": 1}' \
    --conv_style internvl2_5 \
    --force_image_size 112 \
    --down_sample_ratio 0.5 \
    --freeze_llm False \
    --freeze_mlp False \
    --freeze_backbone False \
    --grad_checkpoint False \
    --max_seq_length 256 \
    --num_train_epochs 80 \
    --learning_rate 1e-3 \
    --weight_decay 0.01 \
    --warmup_ratio 0.05 \
    --lr_scheduler_type cosine \
    --logging_steps 10 \
    --save_strategy steps \
    --save_steps 100 \
    --save_total_limit 1 \
    --dataloader_num_workers 0 \
    --seed 42 \
    --report_to tensorboard \
    "$@"

#!/bin/sh
# BrainVLM-style 3D T1 fine-tuning: an InternVL chat checkpoint keeps its LLM (LoRA rank 16, base frozen) and gets a
# new vision side: brain3d_vit (3D ViT-B, Conv3d patch embedding, 128^3 volume at 1.5 mm, 16^3 patches -> 512
# tokens) and a BLIP-2 Q-Former with 32 learned queries (BrainVLM's adapter) -> 32 <IMG_CONTEXT> tokens per volume.
# The normal start is a pretrained encoder: JEPA-pretrain brain3d_vit (or classify) with `python -m patches.neuro.train
# -c CONFIG.yaml` (patches/neuro/README.md, "Training the encoders") and pass its checkpoint as PRETRAINED (backbone
# under REMOVE_PREFIX, default teacher_encoder.; student_encoder. or backbone. for a classifier); it loads strictly
# (a key or shape mismatch stops the run naming the file). Without PRETRAINED the encoder starts untrained.
# The Q-Former starts untrained; both are trained fully.
#
#   sh shell/neuro/brain3d_t1_finetune_lora.sh [extra finetune flags]
#   MODEL=pretrained/InternVL2_5-1B META_PATH=my_meta.json GPUS=8 sh shell/neuro/brain3d_t1_finetune_lora.sh
#
# Data: meta JSON like shell/neuro/data/brain3d_t1_example.json; rows name their volumes under "volume" (NIfTI file
# or DICOM series folder; recipes in patches/neuro/README.md). VISION_MODEL, VISION_OVERRIDES, PROJECTOR and
# PROJECTOR_CONFIG override the vision side (e.g. PROJECTOR=spatial_pool_mlp PROJECTOR_CONFIG='{"pool": 2}').
# --force_image_size / --down_sample_ratio must match the checkpoint (448 / 0.5 for InternVL2.5); they are unused
# by the volume path. Environment (GPUS, PER_DEVICE_BATCH_SIZE, BATCH_SIZE, OUTPUT_DIR, ...): shell/common.sh.
GPUS=${GPUS:-8}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-4}
DEFAULT_BATCH_SIZE=64  # global batch unless BATCH_SIZE is set (raised to PER_DEVICE_BATCH_SIZE x processes if smaller)
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/neuro/brain3d_t1_lora}
MODEL=${MODEL:-pretrained/InternVL2_5-1B}
META_PATH=${META_PATH:-shell/neuro/data/brain3d_t1_example.json}
VISION_MODEL=${VISION_MODEL:-brain3d_vit}
PRETRAINED=${PRETRAINED:-}
REMOVE_PREFIX=${REMOVE_PREFIX:-teacher_encoder.}
BACKBONE='"volume_shape": [128, 128, 128], "patch_size": [16, 16, 16], "preprocess": {"modality": "mri", "target_spacing": [1.5, 1.5, 1.5]}'
if [ -n "$PRETRAINED" ]; then
    BACKBONE="$BACKBONE, \"pretrained\": \"$PRETRAINED\", \"remove_prefix\": \"$REMOVE_PREFIX\""
fi
VISION_OVERRIDES=${VISION_OVERRIDES:-"{$BACKBONE}"}
PROJECTOR=${PROJECTOR:-qformer}
PROJECTOR_CONFIG=${PROJECTOR_CONFIG:-'{"num_queries": 32, "hidden_size": 768, "num_layers": 12, "num_heads": 12}'}
. "$(dirname "$0")/../common.sh"

internvl_finetune \
    --model_name_or_path "$MODEL" \
    --meta_path "$META_PATH" \
    --plugins patches.neuro \
    --vision_model "$VISION_MODEL" \
    --vision_overrides "$VISION_OVERRIDES" \
    --projector "$PROJECTOR" \
    --projector_config "$PROJECTOR_CONFIG" \
    --conv_style internvl2_5 \
    --freeze_llm True \
    --use_llm_lora 16 \
    --freeze_backbone False \
    --freeze_mlp False \
    --grad_checkpoint True \
    --max_seq_length 2048 \
    --num_train_epochs 3 \
    --learning_rate 1e-4 \
    --weight_decay 0.05 \
    --warmup_ratio 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps 10 \
    --save_strategy steps \
    --save_steps 500 \
    --save_total_limit 2 \
    --dataloader_num_workers 4 \
    --skip_bad_samples True \
    --deepspeed zero_stage1_config.json \
    --report_to tensorboard \
    "$@"

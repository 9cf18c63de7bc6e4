#!/bin/sh
# BrainVLM-style resting-state fMRI fine-tuning: InternVL chat checkpoint, LLM LoRA rank 16 (base frozen), new vision
# side brain3d_vit_4d (spatio-temporal patches: 96^3 x 20 frames at 2 mm cut into 16^3 x 5 -> 6^3 x 4 = 864 tokens;
# a Linear over flattened patches, factorised space/time position embeddings) + BLIP-2 Q-Former (32 queries).
# Each item is a window of NUM_FRAMES consecutive frames of a 4D NIfTI run (random start in training when the
# meta entry sets data_augment, centred otherwise); the whole run is preprocessed once and cached as uint8.
#
#   sh shell/neuro/rsfmri_finetune_lora.sh [extra finetune flags]
#
# Data: meta JSON like shell/neuro/data/rsfmri_example.json; rows name the run under "fmri" (a 4D NIfTI, MNI-
# registered as in BrainVLM/UK Biobank). VISION_MODEL, VISION_OVERRIDES, PROJECTOR, PROJECTOR_CONFIG override the
# vision side. Environment (GPUS, PER_DEVICE_BATCH_SIZE, BATCH_SIZE, OUTPUT_DIR, ...): shell/common.sh.
GPUS=${GPUS:-8}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-2}
DEFAULT_BATCH_SIZE=64  # global batch unless BATCH_SIZE is set (raised to PER_DEVICE_BATCH_SIZE x processes if smaller)
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/neuro/rsfmri_lora}
MODEL=${MODEL:-pretrained/InternVL2_5-1B}
META_PATH=${META_PATH:-shell/neuro/data/rsfmri_example.json}
VISION_MODEL=${VISION_MODEL:-brain3d_vit_4d}
VISION_OVERRIDES=${VISION_OVERRIDES:-'{"volume_shape": [96, 96, 96], "patch_size": [16, 16, 16], "num_frames": 20, "frame_patch": 5, "preprocess": {"modality": "mri", "target_spacing": [2.0, 2.0, 2.0]}}'}
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

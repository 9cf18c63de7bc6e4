#!/bin/sh
# BrainVLM's joint setup: one InternVL LLM reads a subject's T1 volume and resting-state fMRI run in one prompt,
# each through its own vision tower: T1 -> brain3d_vit (3D ViT-B, 128^3 at 1.5 mm, 16^3 patches) + Q-Former (32
# queries); rsfMRI -> brain3d_vit_4d (96^3 x 20 frames at 2 mm, 16^3 x 5 patches) + Q-Former (32 queries). The
# LLM base is frozen (LoRA rank 16). The checkpoint's image tower (InternViT + mlp1) stays in the model and trains
# like the others (--freeze_backbone/--freeze_mlp apply to every tower), so the example meta JSON mixes ordinary
# image rows in against forgetting; a step without image rows runs it on a dummy tile times zero. Both 3D encoders
# and Q-Formers start untrained and train fully.
#
#   sh shell/neuro/brainvlm_joint_t1_rsfmri_lora.sh [extra finetune flags]
#   MODEL=pretrained/InternVL2_5-1B META_PATH=my_meta.json GPUS=8 sh shell/neuro/brainvlm_joint_t1_rsfmri_lora.sh
#
# Data: meta JSON like shell/neuro/data/brainvlm_joint_example.json; each row names both inputs,
# {"volume": "sub-01/T1w.nii.gz", "fmri": "sub-01/rest_bold.nii.gz", "conversations": [{"from": "human",
# "value": "T1: <image>\nrsfMRI: <image>\nWhat is the subject's sex?"}, ...]}: the placeholders are filled in the
# order of the row's keys. T1_MODEL / T1_OVERRIDES / T1_PROJECTOR / T1_PROJECTOR_CONFIG and FMRI_MODEL / ... override
# each tower. Environment (GPUS, PER_DEVICE_BATCH_SIZE, BATCH_SIZE, OUTPUT_DIR, ...): shell/common.sh.
GPUS=${GPUS:-8}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-2}
DEFAULT_BATCH_SIZE=64  # global batch unless BATCH_SIZE is set (raised to PER_DEVICE_BATCH_SIZE x processes if smaller)
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/neuro/brainvlm_joint_lora}
MODEL=${MODEL:-pretrained/InternVL2_5-1B}
META_PATH=${META_PATH:-shell/neuro/data/brainvlm_joint_example.json}
QFORMER='{"num_queries": 32, "hidden_size": 768, "num_layers": 12, "num_heads": 12}'
T1_MODEL=${T1_MODEL:-brain3d_vit}
T1_OVERRIDES=${T1_OVERRIDES:-'{"volume_shape": [128, 128, 128], "patch_size": [16, 16, 16], "preprocess": {"modality": "mri", "target_spacing": [1.5, 1.5, 1.5]}}'}
T1_PROJECTOR=${T1_PROJECTOR:-qformer}
T1_PROJECTOR_CONFIG=${T1_PROJECTOR_CONFIG:-$QFORMER}
FMRI_MODEL=${FMRI_MODEL:-brain3d_vit_4d}
FMRI_OVERRIDES=${FMRI_OVERRIDES:-'{"volume_shape": [96, 96, 96], "patch_size": [16, 16, 16], "num_frames": 20, "frame_patch": 5, "preprocess": {"modality": "mri", "target_spacing": [2.0, 2.0, 2.0]}}'}
FMRI_PROJECTOR=${FMRI_PROJECTOR:-qformer}
FMRI_PROJECTOR_CONFIG=${FMRI_PROJECTOR_CONFIG:-$QFORMER}
. "$(dirname "$0")/../common.sh"

internvl_finetune \
    --model_name_or_path "$MODEL" \
    --meta_path "$META_PATH" \
    --plugins patches.neuro \
    --vision_model "volume=$T1_MODEL" \
    --vision_overrides "volume=$T1_OVERRIDES" \
    --projector "volume=$T1_PROJECTOR" \
    --projector_config "volume=$T1_PROJECTOR_CONFIG" \
    --vision_model "fmri=$FMRI_MODEL" \
    --vision_overrides "fmri=$FMRI_OVERRIDES" \
    --projector "fmri=$FMRI_PROJECTOR" \
    --projector_config "fmri=$FMRI_PROJECTOR_CONFIG" \
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

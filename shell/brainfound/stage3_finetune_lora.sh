#!/bin/sh
# Brainfound stage 3: InternVL instruction tuning with the Brainfound UNet as the vision encoder. An InternVL chat
# checkpoint keeps its LLM (LoRA rank 16, base frozen); its vision side is replaced by `brainfound_unet` (diffusers
# UNet2DConditionModel, down path at t = 0, 256 px slices -> 81 tokens x 4096 per slice) initialised from the
# stage-2 export, with the per-token `mlp` projector (LayerNorm -> Linear -> GELU -> Linear, Brainfound's mlp1).
# The UNet gets LoRA rank 16 on to_q / to_v / proj (Brainfound's targets); the projector trains fully.
#
#   sh shell/brainfound/stage3_finetune_lora.sh [extra finetune flags]
#   MODEL=pretrained/InternVL2_5-8B ENCODER=work_dirs/brainfound/stage2/vision_encoder GPUS=8 \
#       sh shell/brainfound/stage3_finetune_lora.sh
#
# Data: Brainfound's mcq.jsonl / qa.jsonl as they are (key "meditk", placeholder "<meditk>", .npz volumes), listed
# in a meta JSON (META_PATH; example: shell/brainfound/data/brainfound_example.json). NUM_SLICES (default 32) slices
# per scan -> 32 x 81 = 2592 <IMG_CONTEXT> tokens; VISION_OVERRIDES replaces the whole encoder override object.
# Note: --use_backbone_lora freezes the UNet's base weights and, through peft, also the feature head (new in this
# stage apart from its first conv); set BACKBONE_LORA=0 to train the encoder fully instead.
# --force_image_size / --down_sample_ratio must match the checkpoint (448 / 0.5 for InternVL2.5); the slice
# path does not use them. Environment (GPUS, PER_DEVICE_BATCH_SIZE, BATCH_SIZE, OUTPUT_DIR, ...): shell/common.sh.
GPUS=${GPUS:-8}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-1}
DEFAULT_BATCH_SIZE=32  # global batch unless BATCH_SIZE is set (raised to PER_DEVICE_BATCH_SIZE x processes if smaller)
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/brainfound/stage3_lora}
MODEL=${MODEL:-pretrained/InternVL2_5-8B}
META_PATH=${META_PATH:-shell/brainfound/data/brainfound_example.json}
ENCODER=${ENCODER:-work_dirs/brainfound/stage2/vision_encoder}
NUM_SLICES=${NUM_SLICES:-32}
BACKBONE_LORA=${BACKBONE_LORA:-16}
VISION_OVERRIDES=${VISION_OVERRIDES:-"{\"pretrained_path\": \"$ENCODER\", \"num_slices\": $NUM_SLICES, \"slice_select\": \"first\"}"}
. "$(dirname "$0")/../common.sh"

internvl_finetune \
    --model_name_or_path "$MODEL" \
    --meta_path "$META_PATH" \
    --plugins patches.brainfound \
    --vision_model brainfound_unet \
    --vision_overrides "$VISION_OVERRIDES" \
    --projector mlp \
    --conv_style internvl2_5 \
    --freeze_llm True \
    --use_llm_lora 16 \
    --freeze_backbone False \
    --use_backbone_lora "$BACKBONE_LORA" \
    --freeze_mlp False \
    --grad_checkpoint True \
    --max_seq_length 4096 \
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

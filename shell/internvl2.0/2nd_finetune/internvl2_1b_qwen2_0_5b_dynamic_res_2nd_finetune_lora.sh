#!/bin/sh
# InternVL2-1B (InternViT-300M + Qwen2-0.5B): lora finetune.
# InternVL's second-stage finetune with LoRA (r=16) on the LLM; vision encoder and MLP frozen.
# Values from InternVL's internvl_chat/shell/internvl2.0/2nd_finetune/internvl2_1b_qwen2_0_5b_dynamic_res_2nd_finetune_lora.sh.
# Run from the repo root:
#
#   GPUS=2 BATCH_SIZE=16 PER_DEVICE_BATCH_SIZE=4 \
#       sh shell/internvl2.0/2nd_finetune/internvl2_1b_qwen2_0_5b_dynamic_res_2nd_finetune_lora.sh [extra flags]
#
# MODEL (default pretrained/InternVL2-1B) and META_PATH (default shell/data/internvl_1_2_finetune_custom.json,
# an example: point it at your own meta JSON) select the checkpoint and the data.
# Environment and CPU fallback: see shell/common.sh.
# Differences from InternVL's script: no --overwrite_output_dir (re-running resumes from the last complete
# checkpoint), --bf16 only on GPUs, MASTER_PORT/OUTPUT_DIR taken from the environment.
GPUS=${GPUS:-2}
DEFAULT_BATCH_SIZE=16  # global batch unless BATCH_SIZE is set (raised to PER_DEVICE_BATCH_SIZE x processes if smaller)
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-4}
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/internvl_chat_v2_0/internvl2_1b_qwen2_0_5b_dynamic_res_2nd_finetune_lora}
MODEL=${MODEL:-pretrained/InternVL2-1B}
META_PATH=${META_PATH:-shell/data/internvl_1_2_finetune_custom.json}
. "$(dirname "$0")/../../common.sh"

internvl_finetune \
    --model_name_or_path "$MODEL" \
    --conv_style Hermes-2 \
    --meta_path "$META_PATH" \
    --force_image_size 448 \
    --max_dynamic_patch 6 \
    --down_sample_ratio 0.5 \
    --drop_path_rate 0.0 \
    --freeze_llm True \
    --freeze_mlp True \
    --freeze_backbone True \
    --use_llm_lora 16 \
    --vision_select_layer -1 \
    --dataloader_num_workers 4 \
    --num_train_epochs 1 \
    --eval_strategy no \
    --save_strategy steps \
    --save_steps 200 \
    --save_total_limit 1 \
    --learning_rate 4e-5 \
    --weight_decay 0.01 \
    --warmup_ratio 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps 1 \
    --max_seq_length 4096 \
    --do_train True \
    --grad_checkpoint True \
    --group_by_length True \
    --dynamic_image_size True \
    --use_thumbnail True \
    --ps_version v2 \
    --deepspeed zero_stage1_config.json \
    --report_to tensorboard \
    "$@"

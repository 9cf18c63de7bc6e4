#!/bin/sh
# Slide-report fine-tuning: InternVL2.5 (LLM with LoRA r=16) reading whole-slide images through Virchow-2 tile
# features aggregated by a Perceiver resampler to 256 tokens per slide. Run from the repo root.
#
# 1. Features (once; the tile encoder is not in the training loop). Virchow-2 weights are gated
#    (CC-BY-NC-ND-4.0): accept the terms on the hub, log in (huggingface-cli login or HF_TOKEN), then
#      python -m patches.pathology.extract --slides /data/wsi --encoder virchow2 --weights hf-hub \
#          --out /data/feats/virchow2 --mpp 0.5 --tile 224 --batch-size 256 --num-workers 8 --precision fp16
#    (or --weights /path/to/model.safetensors offline). Re-running resumes; failures go to errors.jsonl.
# 2. JSONL + meta from the clinical CSV (slide, grade, survival_months, censorship|event[, split]):
#      python -m patches.pathology.make_dataset --csv clinical.csv --features /data/feats/virchow2 \
#          --out /data/wsi_reports --wsi-root /data/wsi
#    (shell/pathology/data/virchow2_wsi_reports_example.json shows the meta format.)
# 3. This script:
#      GPUS=8 BATCH_SIZE=64 PER_DEVICE_BATCH_SIZE=2 META_PATH=/data/wsi_reports/meta_train.json \
#          sh shell/pathology/virchow2_wsi_finetune_lora.sh [extra flags]
# 4. Evaluation (grade accuracy / balanced accuracy / macro-F1 / confusion matrix, C-index, Kaplan-Meier, log-rank):
#      python eval/custom_eval.py --plugins patches.pathology --model $OUTPUT_DIR \
#          --data /data/wsi_reports/meta_test.json --out results.json --max-new-tokens 64
#
# The checkpoint's own vision side is replaced: slide_features (2560-d Virchow-2 bags, LayerNorm, up to max_tiles
# tiles per slide, random subsets while training) with its aggregator inside (perceiver_resampler: 256 latents,
# PRISM2-like; "aggregator": "abmil" for attention-MIL pooling), then the per-token mlp projector to the LLM.
# Aggregator and projector start untrained and are trained in full (freeze_backbone False, freeze_mlp False); the
# LLM is frozen except its LoRA adapters. LoRA on the aggregator instead of full training:
#      sh shell/pathology/virchow2_wsi_finetune_lora.sh --use_backbone_lora 8 --freeze_backbone True
# (adapters on the aggregator's linear layers; its attention projections and latents stay as they are).
# Features made by TRIDENT or CLAM (.h5 with features/coords, or .pt) work as they are: name the encoder in the
# meta entry ("feature_encoder": "virchow2") or a sidecar <file>.json when the file does not say.
# MODEL (default pretrained/InternVL2_5-1B), META_PATH and OUTPUT_DIR override the paths; GPUS / BATCH_SIZE /
# PER_DEVICE_BATCH_SIZE and the CPU fallback as in shell/common.sh.
GPUS=${GPUS:-8}
DEFAULT_BATCH_SIZE=64  # global batch unless BATCH_SIZE is set (raised to PER_DEVICE_BATCH_SIZE x processes if smaller)
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-2}
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/pathology/internvl2_5_1b_virchow2_wsi_lora}
MODEL=${MODEL:-pretrained/InternVL2_5-1B}
META_PATH=${META_PATH:-shell/pathology/data/virchow2_wsi_reports_example.json}
. "$(dirname "$0")/../common.sh"

internvl_finetune \
    --model_name_or_path "$MODEL" \
    --meta_path "$META_PATH" \
    --plugins patches.pathology \
    --vision_model slide_features \
    --vision_overrides '{"feature_dim": 2560, "tile_encoder": "virchow2", "mpp": 0.5, "max_tiles": 8192, "aggregator": "perceiver_resampler", "aggregator_config": {"num_tokens": 256, "dim": 1024, "heads": 16, "depth": 2}}' \
    --projector mlp \
    --conv_style internvl2_5 \
    --use_fast_tokenizer False \
    --freeze_llm True \
    --freeze_mlp False \
    --freeze_backbone False \
    --use_llm_lora 16 \
    --dataloader_num_workers 4 \
    --num_train_epochs 3 \
    --eval_strategy no \
    --save_strategy steps \
    --save_steps 200 \
    --save_total_limit 2 \
    --learning_rate 1e-4 \
    --weight_decay 0.01 \
    --warmup_ratio 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps 1 \
    --max_seq_length 2048 \
    --do_train True \
    --grad_checkpoint True \
    --group_by_length True \
    --deepspeed zero_stage1_config.json \
    --report_to tensorboard \
    "$@"

#!/bin/sh
# The three Brainfound stages, tiny, end to end on synthetic data (2 CPU cores: minutes; re-running reuses finished
# stages: delete work_dirs/brainfound_tiny to start over).
#
#   sh shell/brainfound/demo.sh
#
# 0. data/demo_brainfound (python -m patches.brainfound.demo) and pretrained/InternVL-tiny if missing;
# 1. stage 1: DDPM on 2D slices (configs/tiny_ddpm.yaml) -> work_dirs/brainfound_tiny/stage1 (loss.png), then
#    a generated grid samples_CT.png;
# 2. stage 2: contrastive pretraining from the stage-1 UNet (configs/tiny_clip.yaml) -> .../stage2, with zero-shot
#    normal-vs-hemorrhage on held-out scans (.../stage2/zero_shot/metrics.json, roc.png);
# 3. stage 3: tiny InternVL + the stage-2 encoder (shell/brainfound/demo_finetune_tiny.sh) -> .../stage3, then
#    eval/custom_eval.py on the Brainfound-format test rows (brainfound_mcq + open_qa) -> .../results.json.
# On CPU one intra-op thread per process (OMP_NUM_THREADS=1 unless set): the tiny models are dispatch-bound.
set -e
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
W=work_dirs/brainfound_tiny
now() { date +%s; }

[ -f pretrained/InternVL-tiny/config.json ] || "$PYTHON" pretrained/build_tiny.py
"$PYTHON" -m patches.brainfound.demo

t0=$(now)
if [ -f $W/stage1/unet/config.json ]; then echo "stage 1: using $W/stage1"; else
    "$PYTHON" -m patches.brainfound.pretrain_ddpm --config patches/brainfound/configs/tiny_ddpm.yaml; fi
"$PYTHON" -m patches.brainfound.generate --model $W/stage1 --modality CT --num 8 --steps 25 --scheduler ddim
t1=$(now)
if [ -f $W/stage2/vision_encoder/config.json ]; then echo "stage 2: using $W/stage2"; else
    "$PYTHON" -m patches.brainfound.pretrain_clip --config patches/brainfound/configs/tiny_clip.yaml; fi
"$PYTHON" -m patches.brainfound.zero_shot --model $W/stage2 --data data/demo_brainfound/stage2/test.jsonl \
    --classes normal,hemorrhage --templates "impression : {} .|{} ."
t2=$(now)
if [ -f $W/stage3/model.safetensors ]; then echo "stage 3: using $W/stage3"; else
    OUTPUT_DIR=$W/stage3 sh shell/brainfound/demo_finetune_tiny.sh; fi
"$PYTHON" eval/custom_eval.py --plugins patches.brainfound --model $W/stage3 \
    --data data/demo_brainfound/stage3/test_meta.json --out $W/results.json --batch-size 8 --max-new-tokens 40 \
    --no-resume
t3=$(now)
echo "brainfound demo: stage 1 + generation $((t1 - t0)) s, stage 2 + zero-shot $((t2 - t1)) s," \
    "stage 3 + eval $((t3 - t2)) s; results in $W/{stage1/loss.png,stage1/samples_CT.png,stage2/zero_shot,results.json}"

#!/bin/sh
# The three Brainfound stages, tiny, end to end on synthetic data (2 CPU cores: minutes; re-running reuses finished
# stages: delete work_dirs/brainfound_tiny to start over).
#
#   sh shell/brainfound/demo.sh
#
# 0. data/demo_brainfound (python -m patches.brainfound.demo) and pretrained/InternVL-tiny if missing;
# 1. stage 1: DDPM on 2D slices (configs/tiny_ddpm.yaml) -> work_dirs/brainfound_tiny/stage1 (loss.png), then
#    a generated grid samples_CT.png; both with Brainfound's launcher line
#    (accelerate launch --num_processes=1 --config_file single.yaml ...);
# 2. stage 2: contrast + captioning from the stage-1 UNet with Brainfound's pretrain flags under torchrun
#    (--model tiny = configs/tiny_clip.yaml) -> .../stage2: generated-report BLEU/ROUGE/METEOR on held-out scans
#    before the first step (valid/step_0) and every 10 epochs (valid/epoch_NNN), then zero_shot_cls with the same
#    flags: normal-vs-hemorrhage (.../stage2/zero_shot/metrics.json, roc.png);
# 3. stage 3: tiny InternVL + the stage-2 encoder (shell/brainfound/demo_finetune_tiny.sh) on mcq + qa + report
#    rows -> .../stage3, then eval/custom_eval.py on the Brainfound-format test rows (brainfound_mcq, open_qa,
#    brainfound_report) -> .../results.json.
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
# `accelerate launch` (the module form: no dependence on the venv's bin/ being on PATH)
ACCELERATE="$PYTHON -m accelerate.commands.launch --num_processes=1 --config_file shell/brainfound/single.yaml"
if [ -f $W/stage1/unet/config.json ]; then echo "stage 1: using $W/stage1"; else
    $ACCELERATE -m patches.brainfound.pretrain_ddpm --config patches/brainfound/configs/tiny_ddpm.yaml; fi
$ACCELERATE -m patches.brainfound.generate --model $W/stage1 --modality CT --num 8 --steps 25 --scheduler ddim
t1=$(now)
# Brainfound's stage-2 flags (its published values, scaled to the tiny run: 50 epochs of 6 batches, lr 1e-3)
FLAGS="--exp_name stage2 --output_root $W --model tiny --epochs 50 --sentence_shuffle false --validation true \
    --valid_save_image_freq 8 --tie_text_encoder_decoder false --momentum 0.996 --lr 1e-3 --valid_freq 10 \
    --batch_size 8 --train_print_freq 20"
if [ -f $W/stage2/vision_encoder/config.json ]; then echo "stage 2: using $W/stage2"; else
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 -m patches.brainfound.pretrain $FLAGS; fi
"$PYTHON" -m patches.brainfound.zero_shot_cls $FLAGS
"$PYTHON" - "$W/stage2/valid" <<'PY'
import json, pathlib, sys
runs = sorted(pathlib.Path(sys.argv[1]).glob("*/metrics.json"),
              key=lambda p: (p.parent.name != "step_0", p.parent.name))  # before stage 2 first, then by epoch
for p in runs:
    m = json.loads(p.read_text())
    print(f"stage-2 reports {p.parent.name:>10}: BLEU-4 {m['bleu4']:.4f}  ROUGE-L {m['rouge_l']:.4f}  "
          f"METEOR {m['meteor']:.4f}")
PY
t2=$(now)
if [ -f $W/stage3/model.safetensors ]; then echo "stage 3: using $W/stage3"; else
    OUTPUT_DIR=$W/stage3 sh shell/brainfound/demo_finetune_tiny.sh; fi
"$PYTHON" eval/custom_eval.py --plugins patches.brainfound --model $W/stage3 \
    --data data/demo_brainfound/stage3/test_meta.json --out $W/results.json --batch-size 8 --max-new-tokens 64 \
    --no-resume
t3=$(now)
echo "brainfound demo: stage 1 + generation $((t1 - t0)) s, stage 2 + zero-shot $((t2 - t1)) s," \
    "stage 3 + eval $((t3 - t2)) s; results in" \
    "$W/{stage1/loss.png,stage1/samples_CT.png,stage2/valid,stage2/zero_shot,results.json}"

#!/bin/sh
# The grounding demo end to end (`make demo-grounding`): "Where is the lesion?" answered with a 2D or 3D box.
#
#   sh shell/demo/grounding/demo.sh     # ~9 min on 2 shared CPU cores; re-running reuses data, model and finetune
#
# 1. pretrained/InternVL-tiny (python pretrained/build_tiny.py) if missing; data/demo_grounding
#    (shell/demo/grounding/make_data.py: synthetic images and NIfTI volumes with one bright lesion each);
# 2. python -m internvl.tools.compose_towers: the tiny model's image tower (InternViT, one 112 px tile) kept, a
#    volume tower added (brain3d_vit_tiny, 8^3 patches -> 64 tokens, spatial_pool_mlp with pool 1 and a position
#    code per token; untrained) -> $OUT/start, evaluated as is ("before"). The volumes are z-scored (NeuroVFM's MRI
#    mean/std): on the plain [0, 1] scale the untrained patch embedding's content was ~10x weaker than its
#    position embedding and the 3D answers stayed one constant box in our tries;
# 3. shell/demo/grounding/finetune.sh on the 2D and 3D training rows (everything trains), evaluated ("after");
# 4. the fixed centre-box baseline (report.py centre) scored with eval/custom_eval.py --predictions;
# 5. one table (report.py table, also $OUT/table.md): mean IoU and acc@0.5 (2D), mean IoU, acc@0.25 and acc@0.5
#    (3D), unparsed rates, for before / after / centre; and the wall time of each step ($OUT/timings.txt).
# OUT (default work_dirs/demo_grounding), PYTHON, and extra finetune flags (passed to finetune.sh) pass through.
set -e
cd "$(dirname "$0")/../../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-work_dirs/demo_grounding}
DATA=${DATA:-data/demo_grounding}
export PYTHON
mkdir -p "$OUT"
TIMES="$OUT/timings.txt"
: >"$TIMES"
T_START=$(date +%s)

timed() {  # timed LABEL COMMAND...: run COMMAND, append "LABEL seconds" to $TIMES
    _label=$1
    shift
    _t0=$(date +%s)
    "$@"
    echo "$_label $(($(date +%s) - _t0))" >>"$TIMES"
}

evaluate() {  # evaluate MODEL RESULTS.json
    "$PYTHON" eval/custom_eval.py --plugins patches.neuro --model "$1" --data "$DATA/test_meta.json" --out "$2" \
        --batch-size 100 --max-new-tokens 40 --no-resume --no-progress
}

echo "== 1/5 tiny model and grounding data"
[ -f pretrained/InternVL-tiny/config.json ] || timed build_tiny "$PYTHON" pretrained/build_tiny.py
timed build_data "$PYTHON" shell/demo/grounding/make_data.py --out "$DATA"
[ -f "$OUT/start/model.safetensors" ] || timed compose "$PYTHON" -m internvl.tools.compose_towers \
    pretrained/InternVL-tiny "$OUT/start" --plugins patches.neuro \
    --vision_model volume=brain3d_vit_tiny \
    --vision_overrides 'volume={"preprocess": {"target_spacing": [1.5, 1.5, 1.5], "zscore": "neurovfm"}}' \
    --projector volume=spatial_pool_mlp --projector_config 'volume={"pool": 1, "pos_embed": true}'
echo "== 2/5 evaluate before training"
timed eval_before evaluate "$OUT/start" "$OUT/before.json"
echo "== 3/5 finetune"
if [ -f "$OUT/finetune/model.safetensors" ]; then
    echo "grounding demo: using the finished model in $OUT/finetune (delete it to train again)"
else
    export MODEL="$OUT/start" META_PATH="$DATA/train_meta.json" OUTPUT_DIR="$OUT/finetune"
    timed finetune sh shell/demo/grounding/finetune.sh "$@"
fi
echo "== 4/5 evaluate after training"
timed eval_after evaluate "$OUT/finetune" "$OUT/after.json"
echo "== 5/5 centre-box baseline"
timed centre_baseline "$PYTHON" shell/demo/grounding/report.py centre --data "$DATA" --out "$OUT/centre.jsonl"
timed eval_centre "$PYTHON" eval/custom_eval.py --data "$DATA/test_meta.json" --predictions "$OUT/centre.jsonl" \
    --out "$OUT/centre.json" --no-progress

echo
"$PYTHON" shell/demo/grounding/report.py table before="$OUT/before.json" after="$OUT/after.json" \
    centre="$OUT/centre.json" --markdown "$OUT/table.md"
echo "total $(($(date +%s) - T_START))" >>"$TIMES"
echo "wall time (s):"
sed 's/^/  /' "$TIMES"
echo "results: $OUT/{before,after,centre}.json (plots under $OUT/*_plots/), table: $OUT/table.md"

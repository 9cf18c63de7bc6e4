#!/bin/sh
# The mixed-modality demo end to end (`make demo-mixed`): one model, two vision towers, answers that need both.
#
#   sh shell/neuro/demo_mixed.sh      # a few minutes on 2 CPU cores; re-running reuses the data and the model
#
# 1. pretrained/InternVL-tiny (python pretrained/build_tiny.py) if missing;
# 2. data/demo_mixed (python -m patches.neuro.demo_mixed): per case a red/blue photo and a brain volume with or
#    without a lesion; the answer ("red, yes" ...) needs both (chance 0.25, one input alone at most 0.5);
# 3. python -m internvl.tools.compose_towers: the tiny model's image tower (InternViT) kept, a volume tower added
#    (brain3d_vit_tiny + spatial_pool_mlp, untrained) -> $OUT/start, evaluated as is ("before");
# 4. fine-tune $OUT/start on the mixed rows (both towers, projectors and the LLM train), evaluate again ("after").
# OUT (default work_dirs/demo_mixed) and extra finetune flags pass through.
set -e
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-work_dirs/demo_mixed}

[ -f pretrained/InternVL-tiny/config.json ] || "$PYTHON" pretrained/build_tiny.py
"$PYTHON" -m patches.neuro.demo_mixed --out data/demo_mixed
[ -f "$OUT/start/model.safetensors" ] || "$PYTHON" -m internvl.tools.compose_towers pretrained/InternVL-tiny \
    "$OUT/start" --plugins patches.neuro \
    --vision_model volume=brain3d_vit_tiny \
    --vision_overrides 'volume={"preprocess": {"target_spacing": [1.5, 1.5, 1.5]}}' \
    --projector volume=spatial_pool_mlp --projector_config 'volume={"pool": 2}'
evaluate() {
    "$PYTHON" eval/custom_eval.py --plugins patches.neuro --model "$1" --data data/demo_mixed/test_meta.json \
        --out "$2" --batch-size 16 --max-new-tokens 8 --no-resume
}
evaluate "$OUT/start" "$OUT/before.json"
if [ -f "$OUT/finetune/model.safetensors" ]; then
    echo "mixed demo: using the finished model in $OUT/finetune (delete it to train again)"
else
    MODEL="$OUT/start" OUTPUT_DIR="$OUT/finetune" sh shell/neuro/demo_mixed_finetune.sh "$@"
fi
evaluate "$OUT/finetune" "$OUT/after.json"
echo "mixed demo: chance 0.25; before in $OUT/before.json, after in $OUT/after.json"

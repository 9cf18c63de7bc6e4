#!/bin/sh
# The neuro demo end to end (the `make demo-neuro` target): tiny model -> synthetic volumes -> fine-tune -> evaluate.
#
#   sh shell/neuro/demo.sh            # ~ a few minutes on 2 CPU cores; re-running reuses the data and the model
#
# 1. pretrained/InternVL-tiny (python pretrained/build_tiny.py) if missing;
# 2. data/demo_neuro (python data/build_demo.py --neuro): NIfTI volumes in four voxel orientations and CT DICOM
#    series; the answer (lesion side: left/right/none, presence: yes/no) is only in the voxels;
# 3. shell/neuro/demo_finetune_tiny.sh: tiny InternVL + brain3d_vit_tiny + spatial_pool_mlp, all trained;
# 4. eval/custom_eval.py on the held-out volumes (task neuro_classification): accuracy, balanced accuracy,
#    macro-F1 per question kind, confusion matrices under work_dirs/demo_neuro/results_plots/.
# OUTPUT_DIR (default work_dirs/demo_neuro/brain3d_tiny_finetune) and extra finetune flags pass through.
set -e
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/demo_neuro/brain3d_tiny_finetune}
RESULTS=${RESULTS:-work_dirs/demo_neuro/results.json}

[ -f pretrained/InternVL-tiny/config.json ] || "$PYTHON" pretrained/build_tiny.py
"$PYTHON" data/build_demo.py --neuro
if [ -f "$OUTPUT_DIR/model.safetensors" ]; then
    echo "neuro demo: using the finished model in $OUTPUT_DIR (delete it to train again)"
else
    sh shell/neuro/demo_finetune_tiny.sh "$@"
fi
"$PYTHON" eval/custom_eval.py --plugins patches.neuro --model "$OUTPUT_DIR" --data data/demo_neuro/test_meta.json \
    --out "$RESULTS" --batch-size 16 --max-new-tokens 8 --no-resume
echo "neuro demo: chance is 0.333 (lesion side) and 0.5 (presence); results in $RESULTS"

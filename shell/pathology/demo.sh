#!/bin/sh
# The pathology demo end to end (the `make demo-pathology` target): synthetic slides -> tile features ->
# fine-tune -> evaluate. A few minutes on 2 CPU cores; re-running reuses the data, the features and the model.
#
#   sh shell/pathology/demo.sh
#
# 1. pretrained/InternVL-tiny (python pretrained/build_tiny.py) if missing;
# 2. data/demo_pathology (python data/build_demo.py --pathology -> patches.pathology.demo.build): 72 pyramidal
#    slides (Aperio .svs at 40x and generic .tiff at 20x) whose texture encodes grade G1-G3, survival consistent
#    with grade, virchow2_tiny features at 0.5 µm/px through the extraction code, JSONL + meta files;
# 3. shell/pathology/demo_finetune_tiny.sh: tiny InternVL + slide_features + perceiver_resampler (8 tokens);
# 4. eval/custom_eval.py on the 24 held-out slides (task pathology_report): grade accuracy / balanced accuracy /
#    macro-F1 / confusion matrix, C-index of the stated risk group, Kaplan-Meier by predicted group, log-rank p;
#    plots under work_dirs/demo_pathology/results_plots/. Then the same test slides again through the "wsi" media
#    kind (slides named directly, features looked up in the cache), which must give the same predictions.
# OUTPUT_DIR (default work_dirs/demo_pathology/slide_tiny_finetune) and extra finetune flags pass through.
set -e
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/demo_pathology/slide_tiny_finetune}
RESULTS=${RESULTS:-work_dirs/demo_pathology/results.json}

[ -f pretrained/InternVL-tiny/config.json ] || "$PYTHON" pretrained/build_tiny.py
"$PYTHON" data/build_demo.py --pathology
if [ -f "$OUTPUT_DIR/model.safetensors" ]; then
    echo "pathology demo: using the finished model in $OUTPUT_DIR (delete it to train again)"
else
    sh shell/pathology/demo_finetune_tiny.sh "$@"
fi
"$PYTHON" eval/custom_eval.py --plugins patches.pathology --model "$OUTPUT_DIR" \
    --data data/demo_pathology/meta_test.json --out "$RESULTS" --batch-size 8 --max-new-tokens 48 --no-resume
"$PYTHON" eval/custom_eval.py --plugins patches.pathology --model "$OUTPUT_DIR" \
    --data data/demo_pathology/meta_test_wsi.json --out "${RESULTS%.json}_wsi.json" --batch-size 8 \
    --max-new-tokens 48 --no-resume
"$PYTHON" - "$RESULTS" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]["by_task"]["pathology_report"]
print(f"pathology demo (held-out slides, n={m['grade_n']}): grade accuracy {m['grade_accuracy']:.3f} "
      f"(majority-class chance {m['grade_chance_accuracy']:.3f}), balanced accuracy {m['grade_balanced_accuracy']:.3f}, "
      f"C-index {m['c_index']} (chance 0.5; the reference reports reach {m.get('c_index_reference')}), "
      f"log-rank p {m.get('logrank_p')}")
PY

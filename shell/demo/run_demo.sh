#!/bin/sh
# The whole demo (what `make demo` runs), from the repo root with the environment made by `make venv`:
#   1. build the tiny model (pretrained/InternVL-tiny) and the 2D demo data (data/demo)
#   2. evaluate the untrained tiny model on the demo test set (eval/custom_eval.py)
#   3. finetune it: GPUS=${GPUS:-1} sh shell/demo/finetune_tiny.sh
#   4. evaluate the finetuned model, then chat once with it (inference_v2.py)
# and print the MCQ accuracy before/after and the wall time of each piece.
# WORK (default work_dirs/demo) holds the finetune output and the evaluation results; a re-run resumes the
# finetune from its last checkpoint (delete WORK to start over). Extra arguments go to the finetune launcher.
set -e
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
WORK=${WORK:-work_dirs/demo}
OUTPUT_DIR=${OUTPUT_DIR:-$WORK/internvl_tiny_finetune}
GPUS=${GPUS:-1}
export PYTHON OUTPUT_DIR GPUS
mkdir -p "$WORK"
TIMES="$WORK/timings.txt"
: >"$TIMES"

timed() {  # timed LABEL COMMAND...: run COMMAND, append "LABEL seconds" to $TIMES
    _label=$1
    shift
    _t0=$(date +%s)
    "$@"
    echo "$_label $(($(date +%s) - _t0))" >>"$TIMES"
}

accuracy() {  # accuracy RESULTS.json: the mcq accuracy custom_eval recorded
    "$PYTHON" -c 'import json, sys
print("%.3f" % json.load(open(sys.argv[1]))["metrics"]["by_task"]["mcq"]["accuracy"])' "$1"
}

first_mcq() {  # first_mcq FIELD: the first demo MCQ test row's image path or question (without <image>)
    "$PYTHON" -c 'import json, sys
row = json.loads(open("data/demo/test_mcq.jsonl").readline())
print("data/demo/" + row["image"] if sys.argv[1] == "image" else row["conversations"][0]["value"].replace("<image>\n", ""))' "$1"
}

echo "== 1/5 tiny model and demo data"
timed build_tiny "$PYTHON" pretrained/build_tiny.py
timed build_demo "$PYTHON" data/build_demo.py
echo "== 2/5 evaluate before training"
timed eval_before "$PYTHON" eval/custom_eval.py --model pretrained/InternVL-tiny --data data/demo/test_meta.json \
    --out "$WORK/eval_before.json" --max-new-tokens 8 --no-resume --no-progress
echo "== 3/5 finetune (GPUS=$GPUS)"
timed finetune sh shell/demo/finetune_tiny.sh "$@"
echo "== 4/5 evaluate after training"
timed eval_after "$PYTHON" eval/custom_eval.py --model "$OUTPUT_DIR" --data data/demo/test_meta.json \
    --out "$WORK/eval_after.json" --max-new-tokens 8 --no-resume --no-progress
echo "== 5/5 chat with the finetuned model"
IMAGE=$(first_mcq image)
QUESTION=$(first_mcq question)
echo "image: $IMAGE"
echo "question: $QUESTION"
timed chat "$PYTHON" inference_v2.py --model "$OUTPUT_DIR" --image "$IMAGE" --question "$QUESTION" --max-new-tokens 8

echo
echo "MCQ accuracy before training: $(accuracy "$WORK/eval_before.json")"
echo "MCQ accuracy after training:  $(accuracy "$WORK/eval_after.json")"
echo "wall time (s):"
sed 's/^/  /' "$TIMES"

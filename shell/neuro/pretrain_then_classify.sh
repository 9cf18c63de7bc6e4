#!/bin/sh
# NeuroVFM's two workflows on synthetic studies, CPU-sized: JEPA pretraining from scratch, then lesion-presence
# classification with the frozen pretrained backbone, and the same classifier on a random-init frozen backbone.
#
#   sh shell/neuro/pretrain_then_classify.sh        # minutes on 2 CPU cores; prints both validation AUROCs
#
# Outputs: work_dirs/neuro_train/{pretrain_tiny,classify_tiny,classify_tiny_random_init}/ (tb/, csv/, models/).
# Then plug the backbone into the VLM:  --vision_model neurovfm_tokens --vision_overrides
#   '{"token_size": [2, 8, 8], "hidden_size": 48, "depth": 2, "num_heads": 4, "pe_dim": 12, "mlp_ratio": 2.0,
#     "pretrained": "work_dirs/neuro_train/pretrain_tiny/models/last.ckpt", "remove_prefix": "teacher_encoder."}'
set -e
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny models: extra threads only contend on a shared CPU
"$PYTHON" -m patches.neuro.train.demo_data --out data/demo_neuro_train
run() {  # a config, unless its run already finished (last.ckpt present)
    root=$("$PYTHON" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['infra']['exp_root'])" "$1")
    if [ -f "$root/models/last.ckpt" ]; then echo "$root: finished run kept (delete it to train again)"
    else "$PYTHON" -m patches.neuro.train -c "$1"; fi
}
run shell/neuro/config/pretrain_tiny.yaml
run shell/neuro/config/classify_tiny.yaml
# the random-init baseline: the same config without training.load_backbone
mkdir -p work_dirs/neuro_train
"$PYTHON" - <<'PY'
import yaml
cfg = yaml.safe_load(open("shell/neuro/config/classify_tiny.yaml"))
cfg["training"].pop("load_backbone")
cfg["infra"]["exp_root"] = "work_dirs/neuro_train/classify_tiny_random_init"
yaml.safe_dump(cfg, open("work_dirs/neuro_train/classify_tiny_random_init.yaml", "w"))
PY
run work_dirs/neuro_train/classify_tiny_random_init.yaml
"$PYTHON" - <<'PY'
import json
for name in ("classify_tiny", "classify_tiny_random_init"):
    best = json.load(open(f"work_dirs/neuro_train/{name}/models/last.json"))
    print(f"{name}: best val AUROC (lesion) {best['best']['value']:.3f} at epoch {best['best']['epoch']}; "
          f"last epoch {best['metrics']['val/auc_epoch']:.3f}")
PY

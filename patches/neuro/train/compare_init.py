"""Does pretraining help? One classification config run with its ``load_backbone`` and without it (random init),
over several seeds; prints and writes the validation AUROC table (last epoch and best epoch per run).

    python -m patches.neuro.train.compare_init -c shell/neuro/config/classify_tiny.yaml --seeds 0 1 2 \\
        --out work_dirs/neuro_train/compare_init [--data-root data/demo_neuro_train]

``--data-root`` replaces the config's ``data/demo_neuro_train`` paths (e.g. a build with more validation
studies). Each run is a normal ``python -m patches.neuro.train`` run under ``<out>/<variant>-seed<k>/``; finished
runs are kept and re-read. The result is ``<out>/summary.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

import yaml

from patches.neuro.train.__main__ import main as train_main


def _run(cfg: dict, root: str) -> dict:
    if not os.path.exists(os.path.join(root, "models", "last.json")):
        cfg = dict(cfg, infra=dict(cfg["infra"], exp_root=root))
        os.makedirs(root, exist_ok=True)
        path = root + ".yaml"
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg, fh)
        if train_main(["-c", path]) != 0:
            raise SystemExit(f"error: {path}: run failed")
    with open(os.path.join(root, "models", "last.json"), encoding="utf-8") as fh:
        state = json.load(fh)
    return {"last": state["metrics"]["val/auc_epoch"], "best": state["best"]["value"], "best_epoch": state["best"]["epoch"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", required=True, help="a VisionClassificationSystem config with load_backbone")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="work_dirs/neuro_train/compare_init")
    p.add_argument("--data-root", default=None, help="replaces data/demo_neuro_train in the config's paths")
    a = p.parse_args(argv)
    text = open(a.config, encoding="utf-8").read()
    if a.data_root:
        text = text.replace("data/demo_neuro_train", a.data_root)
    base = yaml.safe_load(text)
    if not (base.get("training") or {}).get("load_backbone"):
        p.error(f"{a.config}: needs training.load_backbone (the pretrained variant)")
    table: dict[str, list[dict]] = {"pretrained": [], "random_init": []}
    for seed in a.seeds:
        for variant in table:
            cfg = yaml.safe_load(yaml.safe_dump(base))
            cfg["infra"]["seed"] = seed
            if variant == "random_init":
                cfg["training"].pop("load_backbone")
            table[variant].append(dict(seed=seed, **_run(cfg, os.path.join(a.out, f"{variant}-seed{seed}"))))
    summary = {v: {"runs": rows, "last_mean": statistics.mean(r["last"] for r in rows),
                   "last_sd": statistics.pstdev(r["last"] for r in rows),
                   "best_mean": statistics.mean(r["best"] for r in rows)} for v, rows in table.items()}
    with open(os.path.join(a.out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    for v, s in summary.items():
        print(f"{v}: val AUROC last epoch {s['last_mean']:.3f} +- {s['last_sd']:.3f} (best {s['best_mean']:.3f}) "
              f"over seeds {a.seeds}: {[round(r['last'], 3) for r in s['runs']]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

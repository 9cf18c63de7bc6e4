"""Synthetic studies for the YAML training examples, from the neuro demo's generator (``patches.neuro.demo``).

``build(out)`` writes ``<out>/studies/study_NNNN/`` (an MRI phantom ``t1.nii.gz`` in a random voxel orientation and
spacing, or every fourth a head CT DICOM series ``ct/``, whose CT windows are then all three), lesion none / left /
right in turn, plus ``labels.csv`` (``study_id,lesion``: lesion presence), ``mode_mapping.csv`` (``study_id,mode``)
and ``{train,val}_studies.txt`` (what ``shell/neuro/config/*.yaml`` read). An identical existing build is kept.

    python -m patches.neuro.train.demo_data --out data/neuro_train_demo [--n-train 48] [--n-val 24] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import random

from tqdm import tqdm

from internvl.fileio import atomic_directory, build_is_current
from patches.neuro.demo import _case

VERSION = 1


def build(out: str = "data/neuro_train_demo", *, n_train: int = 48, n_val: int = 24, seed: int = 0) -> str:
    info = {"generator": "patches.neuro.train.demo_data", "version": VERSION, "n_train": n_train, "n_val": n_val,
            "seed": seed}
    if build_is_current(out, info):
        return out
    rng = random.Random(seed)
    with atomic_directory(out) as tmp:
        tmp = str(tmp)
        rows, splits = [], {"train": [], "val": []}
        for i in tqdm(range(n_train + n_val), desc="synthetic studies"):
            study = f"study_{i:04d}"
            case = _case(rng, i, "studies", tmp, rel_dir=f"studies/{study}")
            rows.append((study, case["modality"], int(case["lesion"] != "none")))
            splits["train" if i < n_train else "val"].append(study)
        with open(os.path.join(tmp, "labels.csv"), "w", encoding="utf-8") as fh:
            fh.write("study_id,lesion\n" + "".join(f"{s},{y}\n" for s, _, y in rows))
        with open(os.path.join(tmp, "mode_mapping.csv"), "w", encoding="utf-8") as fh:
            fh.write("study_id,mode\n" + "".join(f"{s},{m}\n" for s, m, _ in rows))
        for split, names in splits.items():
            with open(os.path.join(tmp, f"{split}_studies.txt"), "w", encoding="utf-8") as fh:
                fh.write("\n".join(names) + "\n")
        with open(os.path.join(tmp, "build_info.json"), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/neuro_train_demo")
    p.add_argument("--n-train", type=int, default=48)
    p.add_argument("--n-val", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.n_train < 3 or a.n_val < 3:
        p.error("--n-train and --n-val must be >= 3")
    print(build(a.out, n_train=a.n_train, n_val=a.n_val, seed=a.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

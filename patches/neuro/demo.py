"""Synthetic neuro demo: small brain volumes whose answer is in the voxels (lesion side / presence).

``build(out_dir)`` writes, from one seed:

* ``volumes/{train,test}/NNNN.nii.gz``: MRI-like phantoms (``synthetic.phantom``) saved in a random voxel
  orientation (RAS, LPI, PSR, LAS) at a random spacing (1.0-1.4 mm), so the reader's reorientation and
  resampling are exercised; every fourth case is a head CT written as a DICOM series folder
  (``volumes/*/NNNN_ct/``, pydicom, slope/intercept, shuffled file names) and referenced as
  ``{"path": ..., "modality": "ct", "ct_windows": ["brain"]}`` (one brain-window channel, like the MRI).
* lesion: none / left / right in equal numbers; a bright sphere in that hemisphere (MRI ~2.5x brain, CT an
  acute bleed ~75 HU).
* ``train.jsonl``: two questions per volume, mixed: "Which hemisphere holds the bright lesion?" (left / right /
  none) and "Is there a lesion?" (yes / no); rows carry ``task: neuro_classification`` and ``classes``.
* ``test_side.jsonl`` / ``test_presence.jsonl`` on held-out volumes, ``train_meta.json`` / ``test_meta.json``
  (the meta entries set ``volume_cache_dir`` so the second epoch reads uint8 from the cache), and
  ``build_info.json`` with every parameter; an identical existing build is kept (``force`` rebuilds).
  The folder is built in a temporary sibling and swapped in whole.

Chance is 1/3 for the side question and 1/2 for presence (2/3 of the volumes have a lesion). The matching
training run is ``shell/neuro/demo.sh`` (tiny InternVL + ``brain3d_vit_tiny`` + ``spatial_pool_mlp``); measured
results are in ``patches/neuro/README.md`` (presence is learned; the side is the harder, spatial question).

    python -m patches.neuro.demo --out data/demo_neuro [--n-train 360] [--n-test 90] [--seed 0] [--force]
"""
from __future__ import annotations

import argparse
import json
import os
import random

import numpy as np
from tqdm import tqdm

from internvl.fileio import atomic_directory, build_is_current
from patches.neuro.synthetic import phantom, save_nifti, write_dicom_series

GENERATOR_VERSION = 2
SIDE_QUESTIONS = ("Which hemisphere holds the bright lesion? Answer left, right or none.",
                  "In which hemisphere is the lesion? Answer left, right or none.")
PRESENCE_QUESTIONS = ("Is there a lesion in this brain volume? Answer yes or no.",
                      "Does this scan show a lesion? Answer yes or no.")
SIDE_CLASSES = ["left", "right", "none"]
PRESENCE_CLASSES = ["yes", "no"]
ORIENTATIONS = ("RAS", "LPI", "PSR", "LAS")
# the preprocessing the demo model uses (written into the encoder config by the launcher)
VISION_OVERRIDES = {"preprocess": {"target_spacing": [1.5, 1.5, 1.5]}}


def _case(rng: random.Random, idx: int, split: str, folder: str, rel_dir: str | None = None) -> dict:
    """One phantom case written under ``folder`` (``volumes/<split>/NNNN...``, or ``<rel_dir>/{t1.nii.gz,ct/}``)."""
    lesion = SIDE_CLASSES[idx % 3]
    shape = (rng.randint(34, 42), rng.randint(38, 46), rng.randint(30, 38))
    spacing = tuple(round(rng.uniform(1.0, 1.4), 2) for _ in range(3))
    is_ct = idx % 4 == 3
    seed = rng.randrange(1 << 30)
    arr = phantom(shape, lesion=None if lesion == "none" else lesion, modality="ct" if is_ct else "mri",
                  seed=seed, lesion_radius=rng.uniform(0.25, 0.35))
    name = f"{idx:04d}"
    if is_ct:
        rel = f"{rel_dir}/ct" if rel_dir else f"volumes/{split}/{name}_ct"
        write_dicom_series(np.rint(arr), os.path.join(folder, rel), spacing=spacing, seed=seed)
        ref = {"path": rel, "modality": "ct", "ct_windows": ["brain"]}
    else:
        rel = f"{rel_dir}/t1.nii.gz" if rel_dir else f"volumes/{split}/{name}.nii.gz"
        save_nifti(arr, os.path.join(folder, rel), spacing=spacing, axcodes=rng.choice(ORIENTATIONS))
        ref = rel
    return {"name": name, "ref": ref, "lesion": lesion, "modality": "ct" if is_ct else "mri"}


def _row(case: dict, split: str, kind: str, rng: random.Random) -> dict:
    if kind == "side":
        q, a, classes = rng.choice(SIDE_QUESTIONS), case["lesion"], SIDE_CLASSES
    else:
        q, a, classes = rng.choice(PRESENCE_QUESTIONS), ("no" if case["lesion"] == "none" else "yes"), PRESENCE_CLASSES
    return {"id": f"{split}-{case['name']}-{kind}", "volume": case["ref"],
            "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}],
            "task": "neuro_classification", "classes": classes, "lesion": case["lesion"],
            "modality": case["modality"]}


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def _entry(out_dir: str, annotation: str, n: int, **extra) -> dict:
    return {"root": out_dir, "annotation": os.path.join(out_dir, annotation), "data_augment": False,
            "repeat_time": 1, "length": n, "volume_cache_dir": os.path.join(out_dir, "cache"), **extra}


def build(out_dir: str = "data/demo_neuro", *, seed: int = 0, n_train: int = 360, n_test: int = 90,
          force: bool = False) -> str:
    """Write the demo into ``out_dir`` (see the module docstring); returns ``out_dir``."""
    info = {"generator": "patches.neuro.demo", "version": GENERATOR_VERSION, "seed": seed, "n_train": n_train,
            "n_test": n_test, "vision_overrides": VISION_OVERRIDES}
    if not force and build_is_current(out_dir, info):
        return out_dir
    rng = random.Random(seed)
    with atomic_directory(out_dir) as tmp:
        tmp = str(tmp)
        cases = {}
        for split, n in (("train", n_train), ("test", n_test)):
            cases[split] = [_case(rng, i, split, tmp) for i in tqdm(range(n), desc=f"neuro demo {split} volumes")]
        train_rows = [_row(c, "train", kind, rng) for c in cases["train"] for kind in ("side", "presence")]
        rng.shuffle(train_rows)
        _write_jsonl(os.path.join(tmp, "train.jsonl"), train_rows)
        _write_jsonl(os.path.join(tmp, "test_side.jsonl"), [_row(c, "test", "side", rng) for c in cases["test"]])
        _write_jsonl(os.path.join(tmp, "test_presence.jsonl"),
                     [_row(c, "test", "presence", rng) for c in cases["test"]])
        metas = {"train_meta.json": {"neuro_demo_train": _entry(out_dir, "train.jsonl", len(train_rows))},
                 "test_meta.json": {
                     "neuro_side": _entry(out_dir, "test_side.jsonl", n_test, task="neuro_classification"),
                     "neuro_presence": _entry(out_dir, "test_presence.jsonl", n_test, task="neuro_classification")}}
        for name, meta in metas.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as fh:
                json.dump(meta, fh, indent=2)
        with open(os.path.join(tmp, "vision_overrides.json"), "w", encoding="utf-8") as fh:
            json.dump(VISION_OVERRIDES, fh)
        with open(os.path.join(tmp, "build_info.json"), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/demo_neuro")
    p.add_argument("--n-train", type=int, default=360, help="training volumes (two questions each)")
    p.add_argument("--n-test", type=int, default=90, help="held-out volumes (one row per question kind)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if an identical build exists")
    args = p.parse_args(argv)
    if args.n_train < 3 or args.n_test < 3:
        p.error("--n-train and --n-test must be >= 3 (one volume per class)")
    print(build(args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

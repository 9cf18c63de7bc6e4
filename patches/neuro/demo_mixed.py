"""Mixed-modality demo: every answer needs a 2D image *and* a 3D volume, read by two vision towers of one model.

``build(out_dir)`` writes, from one seed:

* per case a photo-like PNG (``images/{split}/NNNN.png``: a red or a blue background with noise and a few random
  grey shapes) and an MRI-like brain volume (``volumes/{split}/NNNN.nii.gz``: ``synthetic.phantom``, with or
  without a bright lesion, saved in a random voxel orientation at a random spacing);
* ``train.jsonl`` / ``test.jsonl``: one row per case with both keys, ``{"image": ..., "volume": ..., ...}``, and the
  question "Photo: <image> Volume: <image> What colour is the photo, and does the volume show a lesion?" whose
  answer is one of ``red, yes`` / ``red, no`` / ``blue, yes`` / ``blue, no`` (balanced). The placeholders are
  filled in row-key order: the photo goes to the image tower, the volume to the volume tower. Chance is 0.25, and
  a model that reads only one of the two inputs cannot beat 0.5.
* ``train_meta.json`` / ``test_meta.json`` (task ``neuro_classification`` with the four classes), ``build_info.json``;
  an identical existing build is kept (``force`` rebuilds).

The run: ``shell/neuro/demo_mixed.sh`` (tiny InternVL's image tower + a ``brain3d_vit_tiny`` volume tower added with
``python -m internvl.tools.compose_towers``, evaluated before and after fine-tuning); numbers in the README.

    python -m patches.neuro.demo_mixed --out data/demo_mixed [--n-train 240] [--n-test 80] [--seed 0] [--force]
"""
from __future__ import annotations

import argparse
import json
import os
import random

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from internvl.fileio import atomic_directory, build_is_current
from patches.neuro.synthetic import phantom, save_nifti

GENERATOR_VERSION = 1
CLASSES = ["red, yes", "red, no", "blue, yes", "blue, no"]
QUESTION = ("Photo: <image>\nVolume: <image>\nWhat colour is the photo, and does the volume show a lesion? "
            "Answer like 'red, yes'.")
COLOURS = {"red": (200, 40, 40), "blue": (40, 60, 200)}
ORIENTATIONS = ("RAS", "LPI", "PSR", "LAS")
IMAGE_SIZE = 112


def _photo(rng: random.Random, colour: str) -> Image.Image:
    base = np.array(COLOURS[colour], dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 18, (IMAGE_SIZE, IMAGE_SIZE, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 3)):
        x, y, r = rng.randint(10, 100), rng.randint(10, 100), rng.randint(5, 18)
        grey = rng.randint(90, 200)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(grey, grey, grey))
    return img


def _case(rng: random.Random, idx: int, split: str, folder: str) -> dict:
    answer = CLASSES[idx % 4]
    colour, lesion = answer.split(", ")
    name = f"{idx:04d}"
    image_rel = f"images/{split}/{name}.png"
    _photo(rng, colour).save(os.path.join(folder, image_rel))
    shape = (rng.randint(34, 42), rng.randint(38, 46), rng.randint(30, 38))
    spacing = tuple(round(rng.uniform(1.0, 1.4), 2) for _ in range(3))
    arr = phantom(shape, lesion=rng.choice(["left", "right"]) if lesion == "yes" else None, modality="mri",
                  seed=rng.randrange(1 << 30), lesion_radius=rng.uniform(0.25, 0.35))
    volume_rel = f"volumes/{split}/{name}.nii.gz"
    save_nifti(arr, os.path.join(folder, volume_rel), spacing=spacing, axcodes=rng.choice(ORIENTATIONS))
    return {"id": f"{split}-{name}", "image": image_rel, "volume": volume_rel,
            "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": answer}],
            "task": "neuro_classification", "classes": CLASSES}


def _write(folder: str, split: str, n: int, rng: random.Random) -> None:
    for sub in ("images", "volumes"):
        os.makedirs(os.path.join(folder, sub, split), exist_ok=True)
    rows = [_case(rng, i, split, folder) for i in tqdm(range(n), desc=f"mixed demo {split}", leave=False)]
    rng.shuffle(rows)
    with open(os.path.join(folder, f"{split}.jsonl"), "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def build(out_dir: str = "data/demo_mixed", *, seed: int = 0, n_train: int = 240, n_test: int = 80,
          force: bool = False) -> str:
    """Write the demo into ``out_dir`` (see the module docstring); returns ``out_dir``."""
    info = {"generator": "patches.neuro.demo_mixed", "version": GENERATOR_VERSION, "seed": seed,
            "n_train": n_train, "n_test": n_test}
    if not force and build_is_current(out_dir, info):
        return out_dir
    rng = random.Random(seed)
    out_abs = os.path.abspath(out_dir)
    with atomic_directory(out_dir) as tmp:
        tmp = str(tmp)
        for split, n in (("train", n_train), ("test", n_test)):
            _write(tmp, split, n, rng)
            meta = {f"mixed_{split}": {"root": out_abs, "annotation": os.path.join(out_abs, f"{split}.jsonl"),
                                       "data_augment": False, "repeat_time": 1, "length": n,
                                       "volume_cache_dir": os.path.join(out_abs, "cache")}}
            with open(os.path.join(tmp, f"{split}_meta.json"), "w", encoding="utf-8") as fh:
                json.dump(meta, fh, indent=2)
        with open(os.path.join(tmp, "build_info.json"), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)
    return out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/demo_mixed")
    p.add_argument("--n-train", type=int, default=240)
    p.add_argument("--n-test", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    print(build(args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Synthetic grounding demo data: images and volumes with one bright lesion, "Where is the lesion?" -> a box.

Why: the grounding demo (``shell/demo/grounding/demo.sh``) needs a task whose answer is a box that only the pixels
(or voxels) give, built offline from one seed in seconds.

* 2D (``images/{split}/NNNN.png``): an RGB image of a random size (``IMAGE_SIDES``: 96-224 px per side, so the
  aspect ratio varies) with a noisy, smoothly shaded grey background and one bright "lesion", a filled ellipse or
  rectangle of random size (``LESION_FRACTION`` of each side) at a random position. The answer box is the lesion's
  tight pixel box (first covered pixel to the end edge of the last one) normalised on 0-1000 relative to the
  original image with ``internvl.grounding.normalize_2d``: ``<ref>lesion</ref><box>[[x1, y1, x2, y2]]</box>``.
* 3D (``volumes/{split}/NNNN.nii.gz``): the volume is generated directly in the neuro reader's preprocessed frame:
  a ``VOLUME_SHAPE`` (D, H, W) = 32^3 array (``brain3d_vit_tiny``'s grid) at ``SPACING_MM`` = 1.5 mm (the demo's
  ``target_spacing``), holding a noisy ellipsoidal "head" (~100) and a bright ellipsoidal lesion (~250). It is
  written with nibabel (``patches.neuro.synthetic.save_nifti``) in a random voxel orientation (RAS, LPS, PSR, LAI)
  with the affine that makes it the same anatomy, so the reader's reorientation to RAS and its (x, y, z) ->
  (D, H, W) transpose give back exactly the generated array; resampling (spacing already 1.5 mm) and crop/pad
  (shape already 32^3) leave it unchanged. Nothing moves, so the box is computed on the generated array: the
  3D grammar of ``internvl.grounding`` (x along the preprocessed array's last axis W, y along H, z along D),
  i.e. ``[[W1, H1, D1, W2, H2, D2]]`` on 0-1000 where 0 is the start edge of the first voxel and 1000 the end edge
  of the last (D: inferior->superior, H: posterior->anterior, W: left->right). The test
  (``tests/eval_grounding/test_grounding_demo_data.py``) reads the files back through ``VolumePreprocessor`` and
  checks the box encloses the lesion there.

Output (``--out``, default ``data/demo_grounding``; generated, git-ignored)::

    images/{train,test}/NNNN.png, volumes/{train,test}/NNNN.nii.gz
    train_2d.jsonl, train_3d.jsonl, test_2d.jsonl, test_3d.jsonl   rows with task "grounding"
    train_meta.json          {"grounding_2d_train": ..., "grounding_3d_train": ...} (no augmentation: a flip
                             would move the lesion but not the box; 2D: one 112 px tile, max_dynamic_patch 1)
    test_meta.json           {"grounding_2d": {..., "task": "grounding"}, "grounding_3d": {...}}
    build_info.json          every parameter that shaped the files; an identical build is kept

    python shell/demo/grounding/make_data.py [--out data/demo_grounding] [--n-train-2d 2000] [--n-train-3d 2000]
        [--n-test 100] [--seed 0] [--force]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(REPO / "internvl_chat"), str(REPO)]  # runnable as a script from the repo root

from internvl.fileio import atomic_directory, build_is_current  # noqa: E402
from internvl.grounding import SCALE, format_grounded, normalize_2d  # noqa: E402

GENERATOR_VERSION = 1
PHRASE = "lesion"
QUESTION = "<image>\nWhere is the lesion?"
IMAGE_SIDES = (96, 224)
LESION_FRACTION = (0.15, 0.4)
VOLUME_SHAPE = (32, 32, 32)
SPACING_MM = 1.5
LESION_RADIUS_VOXELS = (2.5, 6.0)
ORIENTATIONS = ("RAS", "LPS", "PSR", "LAI")


def draw_image(rng: random.Random) -> tuple[Image.Image, np.ndarray]:
    """A noisy image with one bright lesion and the lesion's boolean mask ``[H, W]``."""
    nrng = np.random.default_rng(rng.randrange(1 << 30))
    width, height = rng.randint(*IMAGE_SIDES), rng.randint(*IMAGE_SIDES)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gx, gy = rng.uniform(-30, 30), rng.uniform(-30, 30)  # a smooth shading so the background is not flat
    base = rng.uniform(60, 110) + gx * (xx / width - 0.5) + gy * (yy / height - 0.5)
    w = max(4, round(width * rng.uniform(*LESION_FRACTION)))
    h = max(4, round(height * rng.uniform(*LESION_FRACTION)))
    x0, y0 = rng.randint(0, width - w), rng.randint(0, height - h)
    if rng.random() < 0.5:  # ellipse inscribed in the w x h cell
        cx, cy = x0 + w / 2, y0 + h / 2
        mask = ((xx + 0.5 - cx) / (w / 2)) ** 2 + ((yy + 0.5 - cy) / (h / 2)) ** 2 <= 1.0
    else:
        mask = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
    grey = base + np.where(mask, rng.uniform(110, 150), 0.0) + nrng.normal(0, 15, (height, width))
    tint = np.array([1.0, rng.uniform(0.9, 1.0), rng.uniform(0.85, 1.0)], dtype=np.float32)
    rgb = np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)
    return Image.fromarray(rgb), mask


def mask_box_2d(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight pixel box ``(x1, y1, x2, y2)`` of a mask ``[H, W]``: start edge of the first pixel, end of the last."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def draw_volume(rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """A ``VOLUME_SHAPE`` (D, H, W) array with one bright ellipsoidal lesion inside a head, and the lesion mask."""
    nrng = np.random.default_rng(rng.randrange(1 << 30))
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) + 0.5 for n in VOLUME_SHAPE], indexing="ij")
    centre = [n / 2 + rng.uniform(-1.5, 1.5) for n in VOLUME_SHAPE]
    head = sum(((g - c) / (0.46 * n)) ** 2 for g, c, n in zip(grid, centre, VOLUME_SHAPE)) <= 1.0
    radii = [rng.uniform(*LESION_RADIUS_VOXELS) for _ in VOLUME_SHAPE]
    while True:  # a lesion centre whose whole ellipsoid lies inside the head
        lc = [rng.uniform(r + 1, n - r - 1) for r, n in zip(radii, VOLUME_SHAPE)]
        lesion = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, lc, radii)) <= 1.0
        if lesion.any() and not (lesion & ~head).any():
            break
    vol = nrng.normal(0, 3, VOLUME_SHAPE).clip(0)
    vol[head] = 100.0 + nrng.normal(0, 10, int(head.sum()))
    vol[lesion] = 250.0 + nrng.normal(0, 12, int(lesion.sum()))
    return vol.astype(np.float32), lesion


def mask_box_3d(mask: np.ndarray) -> tuple[int, ...]:
    """Tight voxel box ``(w1, h1, d1, w2, h2, d2)`` of a mask ``[D, H, W]`` (end edges exclusive), in the grammar's
    axis order (x along W, y along H, z along D)."""
    idx = np.nonzero(mask)[::-1]
    return tuple(int(i.min()) for i in idx) + tuple(int(i.max()) + 1 for i in idx)


def normalize_3d(box_vox, shape) -> tuple[int, ...]:
    """Voxel-edge box ``(w1, h1, d1, w2, h2, d2)`` on an array of ``shape`` ``(D, H, W)`` -> 0-1000
    (``round(v / n * 1000)`` per axis, as in 2D)."""
    sizes = tuple(shape)[::-1]
    n = len(sizes)
    return tuple(round(v / sizes[i % n] * SCALE) for i, v in enumerate(box_vox))


def _row(rid: str, key: str, ref: str, box: tuple[int, ...]) -> dict:
    return {"id": rid, key: ref, "task": "grounding",
            "conversations": [{"from": "human", "value": QUESTION},
                              {"from": "gpt", "value": format_grounded([box], PHRASE)}]}


def _case_2d(rng: random.Random, split: str, idx: int, folder: str) -> dict:
    img, mask = draw_image(rng)
    rel = f"images/{split}/{idx:04d}.png"
    img.save(os.path.join(folder, rel))
    return _row(f"{split}-2d-{idx:04d}", "image", rel, normalize_2d(mask_box_2d(mask), *img.size))


def _case_3d(rng: random.Random, split: str, idx: int, folder: str) -> dict:
    from patches.neuro.synthetic import save_nifti

    vol, lesion = draw_volume(rng)
    rel = f"volumes/{split}/{idx:04d}.nii.gz"
    # the reader reorients to RAS and transposes (x, y, z) -> (D, H, W): hand it the RAS-ordered (W, H, D) array
    save_nifti(np.ascontiguousarray(vol.transpose(2, 1, 0)), os.path.join(folder, rel),
               spacing=(SPACING_MM,) * 3, axcodes=rng.choice(ORIENTATIONS))
    return _row(f"{split}-3d-{idx:04d}", "volume", rel, normalize_3d(mask_box_3d(lesion), VOLUME_SHAPE))


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def _entry(root: str, annotation: str, n: int, **extra) -> dict:
    return {"root": root, "annotation": os.path.join(root, annotation), "data_augment": False,
            "repeat_time": 1, "length": n, **extra}


def build(out_dir: str = "data/demo_grounding", *, seed: int = 0, n_train_2d: int = 2000, n_train_3d: int = 2000,
          n_test: int = 100, force: bool = False) -> str:
    """Write the demo into ``out_dir`` (module docstring); an identical existing build is kept. Returns ``out_dir``."""
    from tqdm import tqdm

    info = {"generator": "shell/demo/grounding/make_data.py", "version": GENERATOR_VERSION, "seed": seed,
            "n_train_2d": n_train_2d, "n_train_3d": n_train_3d, "n_test": n_test}
    if not force and build_is_current(out_dir, info):
        return out_dir
    rng = random.Random(seed)
    root = os.path.abspath(out_dir)
    vol_opts = {"volume_cache_dir": os.path.join(root, "cache")}
    img_opts = {"max_dynamic_patch": 1}
    with atomic_directory(out_dir) as tmp:
        tmp = str(tmp)
        for sub in ("images/train", "images/test", "volumes/train", "volumes/test"):
            os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        jobs = [("train", _case_2d, n_train_2d), ("train", _case_3d, n_train_3d), ("test", _case_2d, n_test),
                ("test", _case_3d, n_test)]
        rows: dict[tuple, list] = {}
        for split, make, n in jobs:
            rows[split, make] = [make(rng, split, i, tmp)
                                 for i in tqdm(range(n), desc=f"grounding demo {split} {make.__name__[-2:]}",
                                               leave=False)]
        for kind, make in (("2d", _case_2d), ("3d", _case_3d)):
            _write_jsonl(os.path.join(tmp, f"train_{kind}.jsonl"), rows["train", make])
            _write_jsonl(os.path.join(tmp, f"test_{kind}.jsonl"), rows["test", make])
        metas = {"train_meta.json": {"grounding_2d_train": _entry(root, "train_2d.jsonl", n_train_2d, **img_opts),
                                     "grounding_3d_train": _entry(root, "train_3d.jsonl", n_train_3d, **vol_opts)},
                 "test_meta.json": {"grounding_2d": _entry(root, "test_2d.jsonl", n_test, task="grounding",
                                                           **img_opts),
                                    "grounding_3d": _entry(root, "test_3d.jsonl", n_test, task="grounding",
                                                           **vol_opts)}}
        for name, meta in metas.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as fh:
                json.dump(meta, fh, indent=2)
        with open(os.path.join(tmp, "build_info.json"), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)
    return out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/demo_grounding")
    p.add_argument("--n-train-2d", type=int, default=2000)
    p.add_argument("--n-train-3d", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=100, help="test rows per kind (2D and 3D)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even when an identical build exists")
    args = p.parse_args(argv)
    for name in ("n_train_2d", "n_train_3d", "n_test"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    print(build(args.out, seed=args.seed, n_train_2d=args.n_train_2d, n_train_3d=args.n_train_3d,
                n_test=args.n_test, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

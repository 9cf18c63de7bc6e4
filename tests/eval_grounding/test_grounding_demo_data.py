"""The grounding demo's data (``shell/demo/grounding/make_data.py``): every answer is a box in the grammar of
``internvl.grounding`` that encloses the lesion, 2D on the original image and 3D in the frame of the volume as the
neuro reader's preprocessing returns it (read back from the NIfTI files, whatever their voxel orientation); and
the centre-box baseline (``report.py centre``) writes one scorable prediction per test row."""
from __future__ import annotations

import importlib.util
import json
import os
import random
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from internvl import grounding

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"grounding_demo_{name}", REPO / "shell/demo/grounding" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_data = _load("make_data")
report = _load("report")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gd") / "demo_grounding"
    make_data.build(str(out), seed=3, n_train_2d=6, n_train_3d=6, n_test=4)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _box(row: dict, dims: int) -> tuple[float, ...]:
    (group,) = grounding.parse_grounded(row["conversations"][-1]["value"], row["id"], dims=dims)
    assert group.phrase == "lesion" and len(group.boxes) == 1
    return group.boxes[0]


def test_2d_box_encloses_the_drawn_lesion_tightly():
    rng = random.Random(0)
    for _ in range(30):
        img, mask = make_data.draw_image(rng)
        width, height = img.size
        x1, y1, x2, y2 = grounding.to_pixels_2d(make_data.normalize_2d(make_data.mask_box_2d(mask), width, height),
                                                width, height)
        ys, xs = np.nonzero(mask)
        tol = 0.5 * max(width, height) / grounding.SCALE + 1e-9  # rounding to 0-1000
        assert x1 <= xs.min() + tol and xs.max() + 1 <= x2 + tol and y1 <= ys.min() + tol and ys.max() + 1 <= y2 + tol
        assert x2 - x1 <= xs.max() + 1 - xs.min() + 2 * tol and y2 - y1 <= ys.max() + 1 - ys.min() + 2 * tol


def test_2d_files_bright_inside_the_box(built):
    rows = _rows(built / "test_2d.jsonl") + _rows(built / "train_2d.jsonl")
    assert rows and all(r["task"] == "grounding" and "image" in r for r in rows)
    sizes = set()
    for row in rows:
        grey = np.asarray(Image.open(built / row["image"]).convert("L"), dtype=np.float32)
        height, width = grey.shape
        sizes.add((width, height))
        x1, y1, x2, y2 = (round(v) for v in grounding.to_pixels_2d(_box(row, 2), width, height))
        inside = np.zeros_like(grey, dtype=bool)
        inside[y1:y2, x1:x2] = True
        assert grey[inside].mean() > grey[~inside].mean() + 50, row["id"]
    assert len(sizes) > 1  # several image sizes / aspect ratios


def test_3d_box_encloses_the_lesion_in_the_preprocessed_frame(built):
    from patches.neuro.encoders.brain3d_vit import PRESETS
    from patches.neuro.preprocess import VolumePreprocessor
    from patches.neuro.readers import VolumeReader
    from patches.neuro.volume_io import read_volume

    assert tuple(PRESETS["brain3d_vit_tiny"]["volume_shape"]) == make_data.VOLUME_SHAPE
    pre = VolumePreprocessor({"target_spacing": [make_data.SPACING_MM] * 3, "volume_shape": make_data.VOLUME_SHAPE})
    rows = _rows(built / "test_3d.jsonl") + _rows(built / "train_3d.jsonl")
    orientations = set()
    for row in rows:
        path = str(built / row["volume"])
        orientations.add("".join(nib.aff2axcodes(nib.load(path).affine)))
        vol = read_volume(path)
        assert pre.prepare(vol).array.shape == (1, *make_data.VOLUME_SHAPE)  # what the volume tower gets
        # the same geometry steps on the raw intensities (lesion ~250, head ~100): (D, H, W) after reorientation,
        # resampling and crop/pad
        arr, spacing, _ = pre.reorient(vol)
        arr, _ = pre.resample(arr, spacing)
        arr = pre.crop_or_pad(arr, make_data.VOLUME_SHAPE, 0)
        lesion = arr > 175
        box = _box(row, 3)
        assert box == make_data.normalize_3d(make_data.mask_box_3d(lesion), arr.shape), row["id"]
        # the grammar's axis order is (x, y, z) = (W, H, D): back to array order [D, H, W]
        lo = [int(round(v * n / grounding.SCALE)) for v, n in zip(box[:3], arr.shape[::-1])][::-1]
        hi = [int(round(v * n / grounding.SCALE)) for v, n in zip(box[3:], arr.shape[::-1])][::-1]
        inside = np.zeros(arr.shape, dtype=bool)
        inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        assert lesion.sum() >= 8 and not (lesion & ~inside).any(), row["id"]
        # the core's own box geometry agrees: the lesion's voxel box in the file's axes, mapped by the reader
        raw = np.asarray(nib.load(path).dataobj) > 175
        idx = np.nonzero(raw)
        file_box = [int(i.min()) for i in idx] + [int(i.max()) for i in idx]  # first and last voxel, inclusive
        reader = VolumeReader(types.SimpleNamespace(vision_config=types.SimpleNamespace(
            in_channels=1, preprocess={"target_spacing": [make_data.SPACING_MM] * 3,
                                       "volume_shape": list(make_data.VOLUME_SHAPE)})), {})
        mapped = reader.map_boxes(path, [file_box], "voxel")[0]
        assert max(abs(a - b) for a, b in zip(mapped, box)) <= 1, (row["id"], mapped, box)
    assert len(orientations) > 1  # written in several voxel orientations, all mapped back to one frame


def test_metas_name_the_grounding_task(built):
    test_meta = json.loads((built / "test_meta.json").read_text())
    assert {e["task"] for e in test_meta.values()} == {"grounding"}
    assert set(test_meta) == {"grounding_2d", "grounding_3d"}
    train_meta = json.loads((built / "train_meta.json").read_text())
    assert all(e["data_augment"] is False for e in train_meta.values())  # a flip would move the lesion, not the box


def test_centre_baseline_predictions(built, tmp_path):
    out = tmp_path / "centre.jsonl"
    boxes = report.write_centre(str(built), str(out))
    preds = _rows(out)
    test_ids = [r["id"] for kind in ("2d", "3d") for r in _rows(built / f"test_{kind}.jsonl")]
    assert [p["id"] for p in preds] == test_ids
    for kind, dims in (("2d", 2), ("3d", 3)):
        box = boxes[kind]
        assert len(box) == 2 * dims and grounding.box_problem(list(box), dims) is None
        centre = [(box[a] + box[a + dims]) / 2 for a in range(dims)]
        assert all(abs(c - 500) <= 0.5 for c in centre)
    assert os.path.getsize(out) > 0

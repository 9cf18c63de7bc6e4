"""The neuro demo builder: files, balanced labels, every reference readable, answers recoverable from voxels."""
from __future__ import annotations

import json
import os
import types

import numpy as np

from internvl.media.base import resolve_ref
from internvl.model.vision.base import create_vision_model
from patches.neuro.demo import VISION_OVERRIDES, build
from patches.neuro.readers import VolumeReader


def test_build_small_demo(tmp_path):
    out = str(tmp_path / "demo_neuro")
    assert build(out, n_train=8, n_test=6, seed=3) == out
    for name in ("train.jsonl", "test_side.jsonl", "test_presence.jsonl", "train_meta.json", "test_meta.json"):
        assert os.path.exists(os.path.join(out, name)), name
    train = [json.loads(line) for line in open(os.path.join(out, "train.jsonl"))]
    test = [json.loads(line) for line in open(os.path.join(out, "test_side.jsonl"))]
    assert len(train) == 16 and len(test) == 6
    assert sorted(r["conversations"][1]["value"] for r in test) == ["left", "left", "none", "none", "right", "right"]
    assert any(isinstance(r["volume"], dict) and os.path.isdir(os.path.join(out, r["volume"]["path"])) for r in train)
    meta = json.load(open(os.path.join(out, "test_meta.json")))
    assert {e["task"] for e in meta.values()} == {"neuro_classification"}
    # every reference loads through the reader with the demo's preprocessing; the lesion side is in the voxels
    enc = create_vision_model("brain3d_vit_tiny", **VISION_OVERRIDES)
    reader = VolumeReader(types.SimpleNamespace(vision_config=enc.config), {})
    for row in test:
        (x,) = reader.load(resolve_ref(row["volume"], out))
        assert x.shape == (1, 32, 32, 32)
        if row["lesion"] != "none":
            v = x[0].numpy()
            # MRI: the lesion is the brightest tissue; CT brain window: a bleed (~0.9), below the saturated skull
            lesion = (v > 0.8) & (v < 0.99) if row["modality"] == "ct" else v >= np.percentile(v, 99.7)
            bright = lesion.sum(axis=(0, 1))
            left, right = bright[:16].sum(), bright[16:].sum()
            assert (left > right) == (row["lesion"] == "left"), row["id"]
    # an identical rebuild is skipped (files untouched)
    stamp = os.path.getmtime(os.path.join(out, "train.jsonl"))
    build(out, n_train=8, n_test=6, seed=3)
    assert os.path.getmtime(os.path.join(out, "train.jsonl")) == stamp

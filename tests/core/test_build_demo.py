"""data/build_demo.py: determinism, split sizes, row format, labels that match the pixels, one tile per image,
and the plugin dispatch flags."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bd():
    spec = importlib.util.spec_from_file_location("build_demo_under_test", REPO / "data" / "build_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def demo(bd, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    bd.build(str(out), seed=3, n_train=400, n_test_mcq=60, n_test_open=20)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _digest(folder: Path, names=("train.jsonl", "test_mcq.jsonl", "test_open.jsonl")) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update((folder / name).read_bytes())
    for png in sorted((folder / "images").rglob("*.png")):
        h.update(png.relative_to(folder).as_posix().encode() + png.read_bytes())
    return h.hexdigest()


def test_split_sizes_and_meta(demo):
    from internvl.data.meta import load_meta

    train, mcq, open_ = (_rows(demo / n) for n in ("train.jsonl", "test_mcq.jsonl", "test_open.jsonl"))
    assert (len(train), len(mcq), len(open_)) == (400, 60, 20)
    assert Counter(r["task"] for r in train) == {"mcq": 300, "open_qa": 100}
    assert {r["task"] for r in mcq} == {"mcq"} and {r["task"] for r in open_} == {"open_qa"}
    assert len(list((demo / "images" / "train").glob("*.png"))) == 400
    specs = {s.name: s for s in load_meta(str(demo / "test_meta.json"))}
    assert specs["demo_mcq"].task == "mcq" and specs["demo_open"].task == "open_qa"
    (train_spec,) = load_meta(str(demo / "train_meta.json"))
    assert Path(train_spec.annotation) == demo / "train.jsonl"
    assert all((Path(train_spec.root) / r["image"]).is_file() for r in train)


def test_same_seed_same_bytes_other_seed_differs(bd, demo, tmp_path):
    again = tmp_path / "again"
    bd.build(str(again), seed=3, n_train=400, n_test_mcq=60, n_test_open=20)
    assert _digest(again) == _digest(demo)
    other = tmp_path / "other"
    bd.build(str(other), seed=4, n_train=400, n_test_mcq=60, n_test_open=20)
    assert _digest(other) != _digest(demo)


def test_rebuild_is_skipped_unless_forced_or_changed(bd, tmp_path, capsys):
    out = tmp_path / "d"
    bd.build(str(out), n_train=8, n_test_mcq=4, n_test_open=2)
    stamp = (out / "train.jsonl").stat().st_mtime_ns
    bd.build(str(out), n_train=8, n_test_mcq=4, n_test_open=2)
    assert "up to date" in capsys.readouterr().out and (out / "train.jsonl").stat().st_mtime_ns == stamp
    bd.build(str(out), n_train=10, n_test_mcq=4, n_test_open=2)
    assert len(_rows(out / "train.jsonl")) == 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_mcq_rows_are_internvl_style_and_letters_uniform(demo):
    rows = [r for r in _rows(demo / "train.jsonl") if r["task"] == "mcq"] + _rows(demo / "test_mcq.jsonl")
    for r in rows:
        human, gpt = r["conversations"]
        assert human["value"].startswith("<image>\n")
        assert human["value"].endswith("Answer with the option's letter from the given choices directly.")
        assert sorted(r["options"]) == ["blue", "green", "red", "yellow"]
        for letter, colour in zip("ABCD", r["options"]):
            assert f"\n{letter}. {colour}\n" in human["value"]
        assert r["options"]["ABCD".index(gpt["value"])] == r["attributes"]["colour"]
    letters = Counter(r["conversations"][1]["value"] for r in rows)
    assert set(letters) == set("ABCD") and min(letters.values()) > 0.15 * len(rows)  # ~0.25 each
    # the question text alone carries no information about the answer: same stem for every colour
    stems = {r["conversations"][0]["value"].split("\nA. ")[0] for r in rows}
    assert len(stems) <= 3


def test_labels_match_pixels(demo):
    """The colour (and shape) in the rows is what the image shows: nearest palette colour of the non-background
    pixels gives the label for every image, so the task is solvable from pixels alone."""
    from internvl.evaluation.metrics import normalize_answer

    rows = _rows(demo / "test_mcq.jsonl") + _rows(demo / "test_open.jsonl")
    palette = {name: np.array(rgb, float) for name, rgb in {"red": (215, 40, 40), "green": (40, 165, 60),
                                                              "blue": (45, 85, 220),
                                                              "yellow": (235, 200, 35)}.items()}
    for r in rows:
        px = np.asarray(Image.open(demo / r["image"]).convert("RGB"), float).reshape(-1, 3)
        coloured = px[px.max(1) - px.min(1) > 60]  # backgrounds are grey
        assert len(coloured) > 0.15 * len(px)  # at least a 0.6-side triangle
        mean = coloured.mean(0)
        guess = min(palette, key=lambda k: np.abs(palette[k] - mean).sum())
        assert guess == r["attributes"]["colour"]
        if r["task"] == "open_qa":
            assert normalize_answer(r["conversations"][1]["value"]) in (r["attributes"]["colour"],
                                                                         r["attributes"]["shape"])


def test_each_image_is_one_tile_for_the_tiny_model_settings(demo):
    from internvl.media.image import ImageReader

    config = types.SimpleNamespace(image_size=112, dynamic_image_size=True, use_thumbnail=True,
                                   min_dynamic_patch=1, max_dynamic_patch=4, pad2square=False, vision_config=None)
    reader = ImageReader(config, {})
    row = _rows(demo / "test_mcq.jsonl")[0]
    tiles = reader.load(str(demo / row["image"]))
    assert len(tiles) == 1 and tuple(tiles[0].shape) == (3, 112, 112)


def test_plugin_flags_dispatch_and_fail_clearly(bd, tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("patches.zz_fake_demo_plugin.demo")
    fake.build = lambda out_dir, seed=0: calls.append((out_dir, seed)) or "built"  # takes seed, not force
    monkeypatch.setitem(sys.modules, "patches.zz_fake_demo_plugin", types.ModuleType("patches.zz_fake_demo_plugin"))
    monkeypatch.setitem(sys.modules, "patches.zz_fake_demo_plugin.demo", fake)
    assert bd.build_plugin("zz_fake_demo_plugin", str(tmp_path / "x"), seed=7, force=True) == "built"
    assert calls == [(str(tmp_path / "x"), 7)]
    with pytest.raises(SystemExit, match="patches.zz_absent_plugin.demo is not available"):
        bd.build_plugin("zz_absent_plugin", str(tmp_path / "y"))
    no_build = types.ModuleType("patches.zz_fake_demo_plugin.demo")
    monkeypatch.setitem(sys.modules, "patches.zz_fake_demo_plugin.demo", no_build)
    with pytest.raises(SystemExit, match="no build"):
        bd.build_plugin("zz_fake_demo_plugin", str(tmp_path / "z"))


def test_cli_selects_builders(bd, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(bd, "build", lambda out, **kw: built.append(("core", out)))
    monkeypatch.setattr(bd, "build_plugin", lambda name, out, **kw: built.append((name, out)))
    bd.main(["--out", str(tmp_path / "d")])
    assert built == [("core", str(tmp_path / "d"))]
    built.clear()
    bd.main(["--neuro", "--plugin-root", str(tmp_path)])
    assert built == [("neuro", str(tmp_path / "demo_neuro"))]
    built.clear()
    bd.main(["--all", "--plugin-root", str(tmp_path), "--out", str(tmp_path / "d")])
    assert [b[0] for b in built] == ["core", "pathology", "neuro", "brainfound"]

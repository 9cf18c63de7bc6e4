"""Extraction inputs and reruns: ``--slides`` as one slide / a folder / a list file, one-line errors for bad
paths, truncated outputs and temporary leftovers on a rerun, a slide smaller than one tile, TRIDENT layout."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from patches.pathology.extract import discover_slides, main
from patches.pathology.features import read_features
from patches.pathology.slide_list import SlideListError

TINY = ["--encoder", "virchow2_tiny", "--random-init-seed", "0", "--no-progress", "--batch-size", "16"]


def _summary(out: Path) -> dict:
    return json.loads((out / "extract_summary.json").read_text())


def test_slides_as_file_folder_or_list(slide_dir, tmp_path):
    svs = slide_dir / "g3_aperio.svs"
    assert discover_slides(str(svs)) == [svs]  # a slide file is one slide, not a list to decode
    assert [p.name for p in discover_slides(str(slide_dir))] == ["g1_generic.tiff", "g2_generic.tiff",
                                                                 "g3_aperio.svs"]
    (tmp_path / "list.txt").write_text(f"# two slides\n{svs}\n{slide_dir / 'g1_generic.tiff'}\n")
    assert discover_slides(str(tmp_path / "list.txt")) == [svs, slide_dir / "g1_generic.tiff"]
    (tmp_path / "list.csv").write_text("patient,slide\np1,g2.tiff\n")
    assert discover_slides(str(tmp_path / "list.csv")) == [tmp_path / "g2.tiff"]  # relative to the list
    (tmp_path / "cols.csv").write_text("patient,file\np1,g2.tiff\n")
    with pytest.raises(SlideListError, match="cols.csv: CSV list needs a 'slide'"):
        discover_slides(str(tmp_path / "cols.csv"))
    (tmp_path / "blob.dat").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(SlideListError, match="blob.dat: not a slide OpenSlide recognises and not a text list"):
        discover_slides(str(tmp_path / "blob.dat"))
    out = tmp_path / "feats"
    assert main(["--slides", str(svs), "--out", str(out), *TINY, "--mpp", "1.0"]) == 0
    assert [p.name for p in out.glob("*.h5")] == ["g3_aperio.h5"]


@pytest.mark.parametrize("spec", ["missing.svs", "missing_folder"])
def test_nonexistent_slides_path_is_one_line(spec, tmp_path, capsys):
    assert main(["--slides", str(tmp_path / spec), "--out", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / spec}: no such file or folder"
    assert not (tmp_path / "o").exists()  # refused before any work


def test_rerun_redoes_truncated_output_and_removes_leftovers(slide_dir, wsi_fixtures, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("g1_generic.tiff", "g2_generic.tiff"):
        shutil.copy(slide_dir / name, slides / name)
    shutil.copy(wsi_fixtures / "small.svs", slides / "small.svs")  # 16 x 16 px: smaller than one 224-px tile
    out = tmp_path / "feats"
    args = ["--slides", str(slides), "--out", str(out), *TINY, "--mpp", "1.0"]
    assert main(args) == 2
    summary = _summary(out)
    assert summary["counts"] == {"ok": 2, "failed": 1}  # a counted failure, not an "empty" file
    error = json.loads((out / "errors.jsonl").read_text().splitlines()[0])
    assert "small.svs: slide is 16 x 16 px at level 0, smaller than one tile" in error["error"]
    assert not (out / "small.h5").exists()
    good = (out / "g1_generic.h5").read_bytes()
    (out / "g1_generic.h5").write_bytes(good[: len(good) // 3])  # truncated, e.g. by a full disk
    (out / ".tmp-abc123.h5").write_bytes(b"half-written by a killed run")
    assert main(args) == 2  # small.svs still fails; the rest is not aborted
    summary = _summary(out)
    assert summary["counts"] == {"ok": 1, "skipped (finished)": 1, "failed": 1}
    assert (out / "g1_generic.h5").read_bytes() == good  # redone, identical
    assert not list(out.glob(".tmp-*"))


def test_trident_layout_is_written_read_and_resumed(slide_dir, tmp_path):
    out = tmp_path / "trident"
    args = ["--slides", str(slide_dir / "g1_generic.tiff"), "--out", str(out), *TINY, "--layout", "trident"]
    assert main(args) == 0
    path = out / "20x_224px_0px_overlap" / "features_virchow2_tiny" / "g1_generic.h5"
    with h5py.File(path) as h5:
        assert h5["features"].dtype == np.float32 and h5["features"].attrs["encoder"] == "virchow2_tiny"
        coords = h5["coords"].attrs
        assert (coords["patch_size"], coords["patch_size_level0"], coords["target_magnification"]) == (224, 224, 20)
        assert coords["level0_width"] == 1344 and coords["name"] == "g1_generic"
    ours = tmp_path / "ours"
    assert main([*args[:-2], "--out", str(ours)]) == 0
    a, b = read_features(str(path)), read_features(str(ours / "g1_generic.h5"))
    assert np.array_equal(a.coords, b.coords) and np.allclose(a.features, b.features, atol=1e-2, rtol=1e-3)
    before = path.read_bytes()
    assert main(args) == 0 and _summary(out)["counts"] == {"skipped (finished)": 1} and path.read_bytes() == before


def test_cucim_reader_matches_openslide(slide_dir, tmp_path):
    pytest.importorskip("cucim", reason="cuCIM is optional (pip install cucim-cu12)")
    from patches.pathology.wsi import make_tile_reader, open_slide, plan_tiles, slide_info

    for name in ("g1_generic.tiff", "g3_aperio.svs"):  # read as is, and 448 px read + resized to 224
        path = str(slide_dir / name)
        handle = open_slide(path)
        plan = plan_tiles(handle, slide_info(handle, path), 0.5, 224)
        handle.close()
        ours, cucim = make_tile_reader("openslide", path, plan), make_tile_reader("cucim", path, plan)
        a, ia, _ = ours.read_batch(plan.coords[:6])
        b, ib, bad = cucim.read_batch(plan.coords[:6])
        assert ia == ib and not bad and all(np.array_equal(x, y) for x, y in zip(a, b))
    out = tmp_path / "feats"
    assert main(["--slides", str(slide_dir / "g1_generic.tiff"), "--out", str(out), *TINY, "--reader", "cucim"]) == 0


def test_cucim_reader_missing_is_one_line(slide_dir, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("cucim") is not None:
        pytest.skip("cuCIM is installed here")
    assert main(["--slides", str(slide_dir), "--out", str(tmp_path / "o"), *TINY, "--reader", "cucim"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --reader cucim: cuCIM is not installed")


def test_settings_key_tracks_what_changes_the_numbers():
    from patches.pathology.extract import ExtractSettings, settings_key
    from patches.pathology.tile_pipeline import resolve_precision

    class Cfg:
        encoder_name, preset, tile_size, weights_source = "virchow2_tiny", "virchow2_tiny", 224, "seed 0"

    base = settings_key(Cfg, ExtractSettings())
    assert resolve_precision("auto", "cpu") == "fp32"
    assert base == settings_key(Cfg, ExtractSettings(precision="fp32"))  # auto on CPU is fp32: same files
    assert base == settings_key(Cfg, ExtractSettings(num_workers=8, prefetch=4, batch_size=7))  # speed only
    for changed in (ExtractSettings(compile=True), ExtractSettings(reader="cucim"), ExtractSettings(precision="bf16"),
                    ExtractSettings(mpp=1.0)):
        assert settings_key(Cfg, changed) != base


def test_no_weights_is_one_line(slide_dir, tmp_path, capsys):
    code = main(["--slides", str(slide_dir), "--out", str(tmp_path / "o"), "--encoder", "virchow2_tiny"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: no weights for encoder")

"""Feature extraction CLI: files and attributes, resume (also after a kill), bad slides under --skip-errors."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from patches.pathology.extract import discover_slides, main
from patches.pathology.features import read_features

TINY = ["--encoder", "virchow2_tiny", "--random-init-seed", "0", "--no-progress", "--batch-size", "16"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _single_threaded_main(argv):
    torch.set_num_threads(1)  # the parent's intra-op thread pool does not survive fork()
    main(argv)


def _errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]


def test_extract_writes_features_coords_and_provenance(slide_dir, tmp_path):
    out = tmp_path / "feats"
    assert main(["--slides", str(slide_dir), "--out", str(out), *TINY]) == 0
    files = sorted(p.name for p in out.glob("*.h5"))
    assert files == ["g1_generic.h5", "g2_generic.h5", "g3_aperio.h5"]
    ff = read_features(str(out / "g3_aperio.h5"))
    assert ff.features.shape[1] == 192 and len(ff.features) == len(ff.coords) > 0
    assert (ff.coords % 448 == 0).all()  # 40x slide: 224 px at 0.5 µm/px = 448 level-0 px
    a = ff.attrs
    assert a["encoder"] == "virchow2_tiny" and a["target_mpp"] == 0.5 and a["tile_size"] == 224
    assert a["tile_size_level0"] == 448 and a["slide_mpp"] == 0.25 and a["objective_power"] == 40
    assert a["source_hash"].startswith("sha256:") and a["weights_source"] == "random-init seed=0"
    assert 0 < a["tissue_threshold"] < 255 and json.loads(a["tissue_params"])["method"] == "otsu"
    assert len(a["params_key"]) == 64 and len(a["cache_key"]) == 64
    with h5py.File(out / "g3_aperio.h5") as h5:
        assert h5["features"].dtype == np.float16 and h5["bad_coords"].shape == (0, 2)
    g1 = read_features(str(out / "g1_generic.h5"))
    assert (g1.coords % 224 == 0).all() and g1.attrs["vendor"] == "generic-tiff"
    # resumable: a second run skips every finished slide and leaves the files untouched
    before = {p.name: _sha(p) for p in out.glob("*.h5")}
    assert main(["--slides", str(slide_dir), "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "extract_summary.json").read_text())
    assert summary["counts"] == {"skipped (finished)": 3}
    assert before == {p.name: _sha(p) for p in out.glob("*.h5")}
    # other settings -> other key -> re-extracted, not mistaken for finished
    assert main(["--slides", str(slide_dir), "--out", str(out), *TINY, "--mpp", "1.0"]) == 0
    assert json.loads((out / "extract_summary.json").read_text())["counts"] == {"ok": 3}
    assert read_features(str(out / "g1_generic.h5")).attrs["tile_size_level0"] == 448


def test_killed_extraction_resumes_to_identical_files(slide_dir, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(6):
        src = sorted(slide_dir.iterdir())[i % 3]
        shutil.copy(src, slides / f"s{i}{src.suffix}")
    args = ["--slides", str(slides), *TINY, "--mpp", "1.0"]  # 10x: a few tiles per slide keeps the test fast
    killed_out, clean_out = tmp_path / "killed", tmp_path / "clean"
    # a forked child runs the CLI entry point (no second interpreter start-up) and is SIGKILLed mid-run
    proc = multiprocessing.get_context("fork").Process(target=_single_threaded_main,
                                                       args=([*args, "--out", str(killed_out)],))
    proc.start()
    deadline = time.time() + 120
    while time.time() < deadline and not list(killed_out.glob("s*.h5")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    done_at_kill = sorted(p.name for p in killed_out.glob("s*.h5"))
    assert 1 <= len(done_at_kill) < 6, f"kill came too late to test resuming: {done_at_kill}"
    for f in done_at_kill:  # whatever is there under a final name is complete and readable
        assert len(read_features(str(killed_out / f)).features) > 0
    assert main([*args, "--out", str(killed_out)]) == 0
    summary = json.loads((killed_out / "extract_summary.json").read_text())
    assert summary["counts"]["skipped (finished)"] == len(done_at_kill)
    assert main([*args, "--out", str(clean_out)]) == 0
    resumed = {p.name: _sha(p) for p in killed_out.glob("s*.h5")}
    clean = {p.name: _sha(p) for p in clean_out.glob("s*.h5")}
    assert len(clean) == 6 and resumed == clean  # byte-identical feature files


def test_bad_slides_are_logged_and_skipped(slide_dir, broken_dir, tmp_path):
    listing = tmp_path / "slides.txt"
    names = [broken_dir / "truncated.tiff", broken_dir / "two_bad_tiles.tiff", broken_dir / "photo.png",
             slide_dir / "g2_generic.tiff"]
    listing.write_text("# one slide per line\n" + "\n".join(str(n) for n in names) + "\n")
    out = tmp_path / "feats"
    assert main(["--slides", str(listing), "--out", str(out), *TINY]) == 2  # some failed: non-zero, but finished
    assert (out / "g2_generic.h5").exists()
    errors = {Path(e["slide"]).name: e for e in _errors(out)}
    assert "not a whole-slide image" in errors["truncated.tiff"]["error"]
    assert "photo.png" in errors["photo.png"]["error"] and "'image' media kind" in errors["photo.png"]["error"]
    bad = errors["two_bad_tiles.tiff"]
    assert bad["status"] == "failed" and "unreadable" in bad["error"] and "tile at level-0 (" in bad["error"]
    assert len(bad["bad_tiles"]) >= 2 and all(len(t) == 3 for t in bad["bad_tiles"])
    # a larger budget keeps the slide, excluding (and logging) the bad tiles
    out2 = tmp_path / "feats2"
    assert main(["--slides", str(broken_dir), "--out", str(out2), *TINY, "--max-bad-fraction", "0.5"]) == 2
    ff = read_features(str(out2 / "two_bad_tiles.h5"))
    with h5py.File(out2 / "two_bad_tiles.h5") as h5:
        bad_coords = np.asarray(h5["bad_coords"])
    assert len(bad_coords) >= 2 and not set(map(tuple, bad_coords)) & set(map(tuple, ff.coords))
    logged = [e for e in _errors(out2) if e["status"] == "tiles excluded"]
    assert logged and sorted(map(tuple, bad_coords.tolist())) == sorted((t[0], t[1]) for t in logged[0]["bad_tiles"])


def test_no_skip_errors_stops_at_first_bad_slide(slide_dir, broken_dir, tmp_path):
    listing = tmp_path / "slides.txt"
    listing.write_text(f"{broken_dir / 'truncated.tiff'}\n{slide_dir / 'g1_generic.tiff'}\n")
    out = tmp_path / "feats"
    assert main(["--slides", str(listing), "--out", str(out), *TINY, "--no-skip-errors"]) == 2
    assert not (out / "g1_generic.h5").exists() and len(_errors(out)) == 1


def test_fixture_slides_through_the_cli(wsi_fixtures, tmp_path):
    slides = discover_slides(str(wsi_fixtures))
    names = sorted(p.name for p in slides)
    assert names == ["boxes.tiff", "boxes_0.dcm", "small.svs", "unopenable.tiff", "unreadable.svs"]  # one per DICOM
    out = tmp_path / "feats"
    assert main(["--slides", str(wsi_fixtures), "--out", str(out), *TINY, "--tile", "8", "--mpp", "0.499",
                 "--tissue", "none"]) == 2
    errors = {Path(e["slide"]).name: e for e in _errors(out)}
    assert "Unsupported TIFF compression" in errors["unopenable.tiff"]["error"]
    assert "352.8" in errors["boxes.tiff"]["error"]
    coords = sorted((t[0], t[1]) for t in errors["unreadable.svs"]["bad_tiles"])
    assert coords == [(0, 0), (0, 8), (8, 0), (8, 8)] and "Bogus marker length" in errors["unreadable.svs"]["error"]
    for ok in ("small.h5", "boxes_0.h5"):
        assert read_features(str(out / ok)).features.shape == (4, 192)

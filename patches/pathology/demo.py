"""Synthetic pathology demo data: small pyramidal slides whose texture encodes a grade, survival consistent with it.

``build(out_dir)`` writes, all from one seed:

* ``slides/``: pyramidal tiled TIFFs with real resolution tags, so OpenSlide reads the scale: even slides are
  Aperio-flavoured ``.svs`` at 40x (0.25 µm/px, ``AppMag = 40|MPP = 0.25`` in the description; OpenSlide reports
  vendor aperio, mpp and objective power), odd ones generic ``.tiff`` at 0.5 µm/px (scale from the TIFF
  resolution tags only). Both are read at 0.5 µm/px by the same code (40x slides through a resize).
* Texture: pink stroma with purple "nuclei" on a grey background; the grade sets nuclear size and density
  (G1 small and sparse ... G3 large and crowded), with per-slide stain jitter and a random tissue outline.
* ``clinical.csv``: slide, grade, survival_months, event, censorship, split (grade-stratified, 1/3 test).
  Survival is Weibull (shape 2) with scale 60 / 28 / 12 months for G1 / G2 / G3, censored uniformly between 12
  and 96 months, so grade predicts risk but not exactly (the true grade itself reaches a C-index of ~0.76).
* ``features/``: tile features from ``virchow2_tiny`` (the Virchow-2 code path, random init seed 0) at 0.5 µm/px,
  224-px tiles, by ``extract.run`` (the same code as the CLI).
* the JSONL/meta files of ``make_dataset.write_dataset`` (the same code a user runs on a real CSV):
  ``train.jsonl`` / ``test.jsonl`` (rows ``{"features": ..., "conversations": [...], "grade", "survival_months",
  "event", "task": "pathology_report"}``), ``test_wsi.jsonl`` (the test rows naming the slides: ``"wsi"``),
  ``meta_train.json`` / ``meta_test.json`` / ``meta_test_wsi.json``, ``risk_bins.json``; the answer is the report
  template of ``report.py`` with tertile risk bins from the training split. ``build_info.json`` comes last.

    python -m patches.pathology.demo --out data/demo_pathology [--per-grade 24] [--seed 0]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time

import numpy as np
from scipy import ndimage

from patches.pathology.make_dataset import assign_split, write_dataset

GENERATOR_VERSION = 2
GRADE_TEXTURE = {1: (1.2, 0.10), 2: (2.2, 0.24), 3: (3.4, 0.40)}  # nucleus blob sigma (px at 0.5 µm/px), coverage
SURVIVAL_SCALE = {1: 60.0, 2: 28.0, 3: 12.0}  # Weibull scale (months); shape 2
BACKGROUND, STROMA, NUCLEUS = (242, 240, 243), (232, 158, 196), (78, 46, 132)


def synth_tissue(rng: np.random.Generator, size: int, grade: int) -> np.ndarray:
    """RGB uint8 [size, size, 3] at 0.5 µm/px: tissue blob with grade-dependent nuclei on background."""
    coarse = ndimage.gaussian_filter(rng.standard_normal((size // 32, size // 32)), 2.0)
    yy, xx = np.mgrid[0:coarse.shape[0], 0:coarse.shape[1]] / (coarse.shape[0] - 1) - 0.5
    outline = coarse / (coarse.std() + 1e-6) * 0.35 - np.hypot(yy, xx) * 4
    tissue = ndimage.zoom(outline, size / coarse.shape[0], order=1)[:size, :size] > np.quantile(outline, 0.45)
    sigma, coverage = GRADE_TEXTURE[grade]
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    nuclei = field > np.quantile(field, 1 - coverage)
    stain = 1 + rng.uniform(-0.06, 0.06, size=3)
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUND
    img[tissue] = np.asarray(STROMA) * stain
    img[tissue & nuclei] = np.asarray(NUCLEUS) * stain
    return np.clip(img, 0, 255).astype(np.uint8)


def write_pyramid(path: str, level0: np.ndarray, mpp: float, downsamples=(1, 4, 16), aperio_mag: int | None = None,
                  tile: int = 256) -> None:
    """Tiled pyramidal TIFF that OpenSlide reads with its scale: resolution tags on every level (pixels/cm) and,
    for ``aperio_mag``, an Aperio ImageDescription (vendor aperio, MPP and AppMag). Written atomically."""
    import tifffile
    from PIL import Image

    tmp = path + ".tmp"
    h, w = level0.shape[:2]
    with tifffile.TiffWriter(tmp) as tw:
        for i, ds in enumerate(downsamples):
            if ds == 1:
                arr = level0
            else:
                arr = np.asarray(Image.fromarray(level0).resize((max(1, w // ds), max(1, h // ds)),
                                                                Image.Resampling.BOX))
            if min(arr.shape[:2]) < 16:
                break
            per_cm = 1e4 / (mpp * ds)
            desc = None
            if i == 0 and aperio_mag:
                desc = (f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) "
                        f"|AppMag = {aperio_mag}|MPP = {mpp}|Filename = synthetic")
            tw.write(arr, tile=(tile, tile), photometric="rgb", compression="zlib", compressionargs={"level": 1},
                     resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1,
                     description=desc, metadata=None)
    os.replace(tmp, path)


def make_slide(path: str, grade: int, rng: np.random.Generator, size_um: float = 672.0,
               objective: int = 20) -> None:
    """One synthetic slide of ``size_um`` µm square at 20x (generic TIFF, 0.5 µm/px) or 40x (Aperio, 0.25)."""
    base = synth_tissue(rng, int(round(size_um / 0.5)), grade)
    if objective == 40:
        write_pyramid(path, np.repeat(np.repeat(base, 2, 0), 2, 1), 0.25, (1, 4, 16), aperio_mag=40)
    else:
        write_pyramid(path, base, 0.5, (1, 4, 16))


def simulate_survival(rng: np.random.Generator, grades) -> tuple[np.ndarray, np.ndarray]:
    """Weibull (shape 2) survival with a grade-dependent scale, uniform censoring: (months, event)."""
    true = np.asarray([SURVIVAL_SCALE[g] for g in grades]) * rng.weibull(2.0, size=len(grades))
    censor = rng.uniform(12, 96, size=len(grades))
    months = np.minimum(true, censor)
    return np.round(np.maximum(months, 0.5), 1), (true <= censor).astype(int)


def _write_json(path: str, obj) -> None:
    with open(path + ".tmp", "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(path + ".tmp", path)


def build(out_dir: str, per_grade: int = 24, seed: int = 0, test_fraction: float = 1 / 3, size_um: float = 672.0,
          extract: bool = True, num_workers: int = 0, progress: bool = True) -> dict:
    """Write the demo data set into ``out_dir`` (see module docstring); returns a summary dict.

    ``build_info.json`` (written last) records every parameter; a rebuild with equal parameters is skipped, and an
    interrupted build (no build_info.json) is redone, reusing finished feature files whose slides are unchanged.
    """
    params = {"generator_version": GENERATOR_VERSION, "per_grade": per_grade, "seed": seed,
              "test_fraction": test_fraction, "size_um": size_um, "extract": extract}
    info_path = os.path.join(out_dir, "build_info.json")
    if os.path.exists(info_path):
        with open(info_path) as fh:
            info = json.load(fh)
        if info.get("params") == params:
            print(f"{out_dir}: up to date (same parameters)")
            return info["summary"]
        os.unlink(info_path)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    slides_dir = os.path.join(out_dir, "slides")
    os.makedirs(slides_dir, exist_ok=True)
    grades = np.repeat([1, 2, 3], per_grade)
    rng.shuffle(grades)
    months, events = simulate_survival(rng, grades)
    records = []
    for i, grade in enumerate(grades):
        objective = 40 if i % 2 == 0 else 20
        name = f"slide_{i:03d}" + (".svs" if objective == 40 else ".tiff")
        make_slide(os.path.join(slides_dir, name), int(grade), np.random.default_rng([seed, i]), size_um, objective)
        records.append({"slide": name, "grade": int(grade), "survival_months": float(months[i]),
                        "event": int(events[i]), "split": "", "line": f"demo slide {i}"})
    assign_split(records, test_fraction, seed)
    with open(os.path.join(out_dir, "clinical.csv.tmp"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["slide", "grade", "survival_months", "event", "censorship", "split"])
        writer.writeheader()
        writer.writerows({**{k: r[k] for k in ("slide", "grade", "survival_months", "event", "split")},
                          "censorship": 1 - r["event"]} for r in records)
    os.replace(os.path.join(out_dir, "clinical.csv.tmp"), os.path.join(out_dir, "clinical.csv"))
    summary = {"slides": len(records), "events": int(events.sum())}
    if extract:
        summary["extraction"] = extract_features(out_dir, [f"slides/{r['slide']}" for r in records], num_workers,
                                                 progress)
        summary.update(write_dataset(records, os.path.join(out_dir, "features"), out_dir, wsi_root=slides_dir))
    summary["seconds"] = round(time.perf_counter() - started, 1)
    _write_json(info_path, {"params": params, "summary": summary})
    return summary


def extract_features(out_dir: str, slides: list[str], num_workers: int = 0, progress: bool = True) -> dict:
    """Features for every demo slide with ``virchow2_tiny`` (seed 0), through ``extract.run``."""
    from pathlib import Path

    from patches.pathology.extract import ExtractSettings, load_encoder, run

    encoder = load_encoder("virchow2_tiny", random_init_seed=0)
    settings = ExtractSettings(mpp=0.5, tile_size=224, batch_size=32, num_workers=num_workers)
    summary = run([Path(out_dir) / s for s in slides], encoder, settings, os.path.join(out_dir, "features"),
                  skip_errors=False, progress=progress)
    done = [s for s in summary["slides"] if s.get("status") == "ok"]
    tiles = sum(s["n_tiles"] for s in done)
    seconds = sum(s["seconds"] for s in done)
    return {"counts": summary["counts"], "tiles": tiles,
            "tiles_per_s": round(tiles / seconds, 1) if seconds else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="synthetic WSI demo data for the pathology plugin")
    ap.add_argument("--out", default="data/demo_pathology")
    ap.add_argument("--per-grade", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-extract", action="store_true", help="slides, CSV and bins only")
    ap.add_argument("--num-workers", type=int, default=0)
    args = ap.parse_args(argv)
    summary = build(args.out, per_grade=args.per_grade, seed=args.seed, extract=not args.no_extract,
                    num_workers=args.num_workers)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

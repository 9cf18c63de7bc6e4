"""Tile-feature extraction for whole-slide images: one resumable HDF5 file per slide.

    python -m patches.pathology.extract --slides DIR|LIST --encoder virchow2 --weights PATH|hf-hub --out FEATS_DIR \
        [--mpp 0.5 | --magnification 20] [--tile 224] [--batch-size 64] [--num-workers 4]

For each slide: scale from the properties (``wsi.py``), tissue mask and grid, tiles read in batches (DataLoader
workers each hold their own OpenSlide handle), embedded by a registered tile encoder, written atomically as
``FEATS_DIR/<slide>.h5`` (``features.py``). A rerun skips slides whose file was written with the same settings for
the same slide bytes, so a killed run resumes where it stopped and gives identical files.

Failures: a slide that cannot be opened or scaled fails with its reason; unreadable tiles are retried on a fresh
handle, then excluded and reported with their level-0 coordinates, and the slide fails if more than
``--max-bad-fraction`` of its tiles are unreadable. Every failure and every excluded tile goes to
``FEATS_DIR/errors.jsonl``. By default (``--skip-errors``) the run goes on to the next slide and exits with status 2
at the end if any slide failed; ``--no-skip-errors`` stops at the first failure.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from patches.pathology.features import (is_finished, params_key, source_fingerprint, source_hash,
                                        write_features)
from patches.pathology.tissue import TissueParams
from patches.pathology.wsi import (SLIDE_EXTENSIONS, BadTile, SlideError, TileReader, open_slide, plan_tiles,
                                   slide_info, target_mpp_for)

logger = logging.getLogger(__name__)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BadTilesError(SlideError):
    """More unreadable tiles than the budget allows; ``bad`` lists them with coordinates."""

    def __init__(self, message: str, bad: list[BadTile]):
        super().__init__(message)
        self.bad = bad


@dataclass
class ExtractSettings:
    mpp: float | None = 0.5
    magnification: float | None = None
    tile_size: int | None = None          # None: the encoder preset's tile size (224 for Virchow-2)
    batch_size: int = 64
    num_workers: int = 0
    tissue: TissueParams = field(default_factory=TissueParams)
    slide_mpp: float | None = None        # override when the slide's scale tags are missing or wrong
    max_bad_fraction: float = 0.05
    precision: str = "fp32"
    device: str = "cpu"

    def resolved_tile(self, encoder_config) -> int:
        return int(self.tile_size or getattr(encoder_config, "tile_size", 224))


def encoder_identity(cfg) -> dict:
    """The parts of a tile encoder's config that change its numbers (plus the weights' identity)."""
    keys = ("encoder_name", "preset", "timm_arch", "timm_kwargs", "image_mean", "image_std", "embedding",
            "image_size", "crop_pct")
    return {**{k: getattr(cfg, k, None) for k in keys}, "weights_source": getattr(cfg, "weights_source", None)}


def settings_key(encoder_config, settings: ExtractSettings) -> str:
    """Hash of everything that shapes a feature file except the slide itself (see ``features.py``)."""
    return params_key({"encoder": encoder_identity(encoder_config), "mpp": settings.mpp,
                       "magnification": settings.magnification,
                       "tile_size": settings.resolved_tile(encoder_config),
                       "tissue": settings.tissue.to_dict(), "slide_mpp": settings.slide_mpp,
                       "precision": settings.precision})


def load_encoder(name: str, weights: str | None = None, random_init_seed: int | None = None,
                 device: str = "cpu", **overrides):
    """A registered tile encoder with weights, or a seeded random init when explicitly asked for."""
    from internvl.model.vision.base import create_vision_model

    if weights is None and random_init_seed is None:
        raise ValueError(f"no weights for encoder {name!r}: pass --weights PATH (or 'hf-hub' to download the gated "
                         f"checkpoint with your Hugging Face login), or --random-init-seed N for tests and demos")
    if random_init_seed is not None:
        torch.manual_seed(int(random_init_seed))
    encoder = create_vision_model(name, **overrides)
    if not (hasattr(encoder, "embed") and hasattr(encoder, "preprocess")):
        raise TypeError(f"vision model {name!r} is not a tile encoder (needs .preprocess and .embed)")
    if weights:
        encoder.load_weights(weights)
    else:
        encoder.config.weights_source = f"random-init seed={int(random_init_seed)}"
    return encoder.to(device).eval()


class _TileBatches(torch.utils.data.Dataset):
    """Batch ``i`` = tiles ``coords[i*bs:(i+1)*bs]``; each DataLoader worker opens its own slide handle."""

    def __init__(self, reader: TileReader, coords: np.ndarray, batch_size: int):
        self.reader, self.coords, self.batch_size = reader, coords, batch_size

    def __len__(self) -> int:
        return (len(self.coords) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i: int):
        start = i * self.batch_size
        tiles, index, bad = self.reader.read_batch(self.coords[start:start + self.batch_size])
        stack = np.stack(tiles) if tiles else np.zeros((0, 1, 1, 3), np.uint8)
        return stack, np.asarray(index, np.int64) + start, [(b.x, b.y, b.error) for b in bad]


def _keep_numpy(batch):
    return batch


@torch.inference_mode()
def extract_slide(path: str, encoder, settings: ExtractSettings, out_path: str, key: str | None = None,
                  progress: bool = True) -> dict:
    """Extract one slide to ``out_path``; returns a summary (raises ``SlideError`` on failure)."""
    started = time.perf_counter()
    key = key or settings_key(encoder.config, settings)
    fingerprint = source_fingerprint(path)
    handle = open_slide(path)
    try:
        info = slide_info(handle, path, settings.slide_mpp)
        target = target_mpp_for(info, settings.mpp, settings.magnification)
        plan = plan_tiles(handle, info, target, settings.resolved_tile(encoder.config), settings.tissue)
    finally:
        handle.close()
    coords = plan.coords
    reader = TileReader(path, plan)
    loader = torch.utils.data.DataLoader(_TileBatches(reader, coords, settings.batch_size), batch_size=None,
                                         num_workers=settings.num_workers, collate_fn=_keep_numpy)
    dim = int(encoder.config.embedding_dim)
    feats = np.zeros((len(coords), dim), np.float16)
    got = np.zeros(len(coords), bool)
    bad: list[BadTile] = []
    device = next(encoder.parameters()).device
    autocast = PRECISIONS[settings.precision] if settings.precision != "fp32" else None
    bar = tqdm(total=len(coords), desc=Path(path).name, unit="tile", leave=False, disable=not progress)
    try:
        for tiles, index, bad_batch in loader:
            bad.extend(BadTile(x, y, err) for x, y, err in bad_batch)
            if len(index):
                x = encoder.preprocess(torch.from_numpy(tiles).to(device))
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    emb = encoder.embed(x)
                feats[index] = emb.float().cpu().numpy().astype(np.float16)
                got[index] = True
            bar.update(len(index) + len(bad_batch))
    finally:
        bar.close()
        reader.close()
    if bad and len(bad) > settings.max_bad_fraction * max(1, len(coords)):
        listed = "; ".join(str(b) for b in bad[:5])
        raise BadTilesError(f"{path}: {len(bad)} of {len(coords)} tiles unreadable (budget "
                            f"{settings.max_bad_fraction:.0%}): {listed}{' ...' if len(bad) > 5 else ''}", bad)
    attrs = {"encoder": getattr(encoder.config, "encoder_name", encoder.config.preset),
             "encoder_config": encoder_identity(encoder.config), "weights_source": encoder.config.weights_source,
             "feature_dim": dim, "slide_mpp": info.mpp, "mpp_source": info.mpp_source,
             "objective_power": info.objective_power, "vendor": info.vendor,
             "level0_width": info.dimensions[0], "level0_height": info.dimensions[1],
             "tissue_params": settings.tissue.to_dict(), "precision": settings.precision,
             "source_file": os.path.abspath(path), "source_hash": source_hash(path), **fingerprint,
             "params_key": key, **plan.attrs()}
    attrs["cache_key"] = params_key({"params": key, "source": attrs["source_hash"]})
    write_features(out_path, feats[got], coords[got], attrs, bad_coords=[(b.x, b.y) for b in bad],
                   tissue_fraction=plan.tissue_fractions[got])
    seconds = time.perf_counter() - started
    return {"slide": str(path), "status": "ok" if len(coords) else "empty", "n_tiles": int(got.sum()),
            "n_bad": len(bad), "bad_tiles": [[b.x, b.y, b.error] for b in bad], "seconds": round(seconds, 3),
            "tiles_per_s": round(len(coords) / seconds, 2) if seconds > 0 else None, "out": out_path}


# ---- slide discovery ----------------------------------------------------------------------------------------
def discover_slides(spec: str) -> list[Path]:
    """Slides under a folder (recursive, one per DICOM folder, MIRAX data folders skipped) or in a list file.

    A list file is a text file with one path per line (``#`` comments; relative to the list's folder) or a CSV
    with a ``slide`` or ``path`` column.
    """
    p = Path(spec)
    if p.is_dir():
        found, dicom_dirs = [], set()
        mirax_dirs = {f.with_suffix("") for f in p.rglob("*.mrxs")}
        for f in sorted(p.rglob("*")):
            if not f.is_file() or f.suffix.lower() not in SLIDE_EXTENSIONS:
                continue
            if any(d in f.parents for d in mirax_dirs):
                continue
            if f.suffix.lower() == ".dcm":
                if f.parent in dicom_dirs:
                    continue
                dicom_dirs.add(f.parent)
            found.append(f)
        return found
    if not p.is_file():
        raise FileNotFoundError(f"{spec}: neither a folder of slides nor a list file")
    with open(p, newline="") as fh:
        head = fh.readline()
        fh.seek(0)
        if p.suffix.lower() == ".csv" or "," in head:
            rows = list(csv.DictReader(fh))
            column = next((c for c in ("slide", "path", "wsi") if rows and c in rows[0]), None)
            if column is None:
                raise ValueError(f"{spec}: CSV needs a 'slide' or 'path' column (has {list(rows[0]) if rows else []})")
            names = [r[column] for r in rows]
        else:
            names = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    return [Path(n) if os.path.isabs(n) else p.parent / n for n in names]


def output_name(slide: Path) -> str:
    return slide.stem


def _append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def run(slides: list[Path], encoder, settings: ExtractSettings, out_dir: str, skip_errors: bool = True,
        progress: bool = True) -> dict:
    """Extract every slide not already finished; returns the run summary (also written to the folder)."""
    os.makedirs(out_dir, exist_ok=True)
    names = Counter(output_name(s) for s in slides)
    clashes = sorted(n for n, c in names.items() if c > 1)
    if clashes:
        raise ValueError(f"slides share output names {clashes[:5]}: give them distinct file names or extract the "
                         f"groups into separate --out folders")
    key = settings_key(encoder.config, settings)
    error_log = os.path.join(out_dir, "errors.jsonl")
    results, status = [], Counter()
    for slide in tqdm(slides, desc="slides", unit="slide", disable=not progress):
        out_path = os.path.join(out_dir, output_name(slide) + ".h5")
        try:
            if os.path.exists(slide) and is_finished(out_path, key, source_fingerprint(str(slide)), str(slide)):
                status["skipped (finished)"] += 1
                continue
            result = extract_slide(str(slide), encoder, settings, out_path, key=key, progress=progress)
        except (SlideError, OSError, ValueError) as exc:
            status["failed"] += 1
            bad = [[b.x, b.y, b.error] for b in getattr(exc, "bad", [])]
            _append_jsonl(error_log, {"slide": str(slide), "status": "failed", "error": str(exc),
                                      "error_type": type(exc).__name__, "bad_tiles": bad, "params_key": key})
            logger.error("slide failed: %s", exc)
            results.append({"slide": str(slide), "status": "failed", "error": str(exc)})
            if not skip_errors:
                raise
            continue
        status[result["status"]] += 1
        if result["n_bad"]:
            status["slides with excluded tiles"] += 1
            _append_jsonl(error_log, {"slide": str(slide), "status": "tiles excluded", "error":
                                      f"{result['n_bad']} unreadable tiles excluded (within budget)",
                                      "bad_tiles": result["bad_tiles"], "params_key": key})
        if result["status"] == "empty":
            logger.warning("%s: no tissue tiles at %s µm/px; wrote an empty feature file", slide, settings.mpp)
        results.append(result)
    summary = {"out_dir": out_dir, "params_key": key, "counts": dict(status), "slides": results}
    tmp = os.path.join(out_dir, ".extract_summary.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(summary, fh, indent=1)
    os.replace(tmp, os.path.join(out_dir, "extract_summary.json"))
    return summary


def build_parser() -> argparse.ArgumentParser:
    from internvl.registry import add_plugins_argument

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", required=True, help="folder of slides (recursive) or a list file (.txt / .csv)")
    ap.add_argument("--encoder", default="virchow2", help="registered tile encoder (virchow2, uni, ...)")
    ap.add_argument("--weights", help="weights file or HF snapshot folder, or 'hf-hub' for the gated hub repo")
    ap.add_argument("--random-init-seed", type=int, help="no weights: seeded random init (tests/demos only)")
    ap.add_argument("--out", required=True, help="folder for <slide>.h5 feature files")
    scale = ap.add_mutually_exclusive_group()
    scale.add_argument("--mpp", type=float, help="target µm/px (default 0.5 = 20x)")
    scale.add_argument("--magnification", type=float, help="target objective power instead of --mpp")
    ap.add_argument("--tile", type=int, help="tile side in pixels at the target scale (default: encoder's)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=0, help="tile-reading worker processes")
    ap.add_argument("--slide-mpp", type=float, help="override every slide's level-0 µm/px (missing/wrong tags)")
    ap.add_argument("--tissue", choices=("otsu", "none"), default="otsu")
    ap.add_argument("--min-tissue-fraction", type=float, default=TissueParams.min_tile_fraction)
    ap.add_argument("--min-tissue-area-um2", type=float, default=TissueParams.min_area_um2)
    ap.add_argument("--max-bad-fraction", type=float, default=0.05, help="unreadable tiles a slide may lose")
    ap.add_argument("--skip-errors", action=argparse.BooleanOptionalAction, default=True,
                    help="log a failed slide and continue (default); --no-skip-errors stops at the first")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    ap.add_argument("--no-progress", action="store_true")
    add_plugins_argument(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    from internvl.registry import load_plugins

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    load_plugins(args.plugins)
    try:
        encoder = load_encoder(args.encoder, args.weights, args.random_init_seed, args.device)
    except (ValueError, OSError) as exc:  # no/wrong weights, gated or offline hub: say so, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    settings = ExtractSettings(
        mpp=None if args.magnification else (args.mpp or 0.5), magnification=args.magnification,
        tile_size=args.tile, batch_size=args.batch_size, num_workers=args.num_workers, slide_mpp=args.slide_mpp,
        tissue=TissueParams(method=args.tissue, min_tile_fraction=args.min_tissue_fraction,
                            min_area_um2=args.min_tissue_area_um2),
        max_bad_fraction=args.max_bad_fraction, precision=args.precision, device=args.device)
    slides = discover_slides(args.slides)
    if not slides:
        print(f"no slides found in {args.slides} (extensions {', '.join(SLIDE_EXTENSIONS)})", file=sys.stderr)
        return 1
    try:
        summary = run(slides, encoder, settings, args.out, skip_errors=args.skip_errors,
                      progress=not args.no_progress)
    except (SlideError, OSError, ValueError) as exc:
        print(f"stopped (--no-skip-errors): {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary["counts"]))
    if summary["counts"].get("failed"):
        print(f"{summary['counts']['failed']} slide(s) failed; see {os.path.join(args.out, 'errors.jsonl')}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

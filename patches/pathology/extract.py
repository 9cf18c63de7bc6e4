"""Tile-feature extraction for whole-slide images: one resumable HDF5 file per slide, on one or many devices.

    python -m patches.pathology.extract --slides SLIDE|DIR|LIST --encoder virchow2 --weights PATH|hf-hub \
        --out FEATS_DIR [--mpp 0.5 | --magnification 20] [--tile 224] [--batch-size 64] [--num-workers 4] \
        [--precision auto] [--compile] [--reader openslide|cucim] [--layout internvl|trident]
    torchrun --nproc_per_node=N [--nnodes ...] -m patches.pathology.extract ...   (one device per rank)

For each slide: scale from the properties (``wsi.py``), tissue mask and grid, tiles read in batches by DataLoader
workers (each with its own slide handle) while the encoder runs (``tile_pipeline.py``), embedded by a registered
tile encoder, written atomically as ``FEATS_DIR/<slide>.h5`` (``features.py``; ``--layout trident`` writes
TRIDENT's ``<mag>x_<tile>px_0px_overlap/features_<encoder>/<slide>.h5`` instead). A rerun skips slides whose file
was written with the same settings for the same slide bytes, redoes unreadable (truncated) outputs and removes
``.tmp-*.h5`` files a killed run left, so it finishes only what is missing and gives identical files. Under
torchrun each rank takes a deterministic share of the slides (``distributed.py``); rank 0 merges the error logs
and writes one summary.

Failures: a slide that cannot be opened or scaled, or is smaller than one tile, fails with its reason; unreadable
tiles are retried on a fresh handle, then excluded and reported with their level-0 coordinates, and the slide fails
if more than ``--max-bad-fraction`` of its tiles are unreadable. Every failure and every excluded tile goes to
``FEATS_DIR/errors.jsonl``. By default (``--skip-errors``) the run goes on to the next slide and exits with status 2
at the end if any slide failed; ``--no-skip-errors`` stops at the first failure. Bad command-line input (a
``--slides`` path that does not exist, no weights) is one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from patches.pathology.distributed import (RankContext, append_jsonl, error_log_path, merge_error_logs,
                                           merge_summaries, rank_summary_path, shard, write_json_atomic)
from patches.pathology.features import (FeatureFileError, LAYOUTS, cleanup_temporary, feature_path, is_finished,
                                        params_key, source_fingerprint, source_hash, write_features)
from patches.pathology.slide_list import SLIDE_EXTENSIONS, SlideListError, discover_slides, output_name
from patches.pathology.tile_pipeline import (PRECISIONS, embed_batches, make_loader, prepare_encoder,
                                             resolve_precision)
from patches.pathology.tissue import TissueParams
from patches.pathology.wsi import (BadTile, SlideError, make_tile_reader, open_slide, plan_tiles, slide_info,
                                   target_mpp_for)

logger = logging.getLogger(__name__)


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
    prefetch: int = 2                     # batches each worker reads ahead
    tissue: TissueParams = field(default_factory=TissueParams)
    slide_mpp: float | None = None        # override when the slide's scale tags are missing or wrong
    max_bad_fraction: float = 0.05
    precision: str = "auto"               # auto: bf16/fp16 on GPU, fp32 on CPU
    device: str = "cpu"
    compile: bool = False                 # torch.compile the embedding function
    reader: str = "openslide"             # or "cucim" (installed separately)
    layout: str = "internvl"              # or "trident"

    def resolved_tile(self, encoder_config) -> int:
        return int(self.tile_size or getattr(encoder_config, "tile_size", 224))

    def resolved_precision(self) -> str:
        return resolve_precision(self.precision, self.device)


def encoder_identity(cfg) -> dict:
    """The parts of a tile encoder's config that change its numbers (plus the weights' identity)."""
    keys = ("encoder_name", "preset", "timm_arch", "timm_kwargs", "image_mean", "image_std", "embedding",
            "image_size", "crop_pct")
    return {**{k: getattr(cfg, k, None) for k in keys}, "weights_source": getattr(cfg, "weights_source", None)}


def settings_key(encoder_config, settings: ExtractSettings) -> str:
    """Hash of everything that shapes a feature file except the slide itself (see ``features.py``).

    The reader backend and worker counts do not change the numbers and are left out; ``torch.compile`` may (kernel
    fusion reorders float operations), so it is in the key when on.
    """
    shaping = {"encoder": encoder_identity(encoder_config), "mpp": settings.mpp,
               "magnification": settings.magnification, "tile_size": settings.resolved_tile(encoder_config),
               "tissue": settings.tissue.to_dict(), "slide_mpp": settings.slide_mpp,
               "precision": settings.resolved_precision()}
    if settings.compile:
        shaping["compile"] = True
    if settings.reader != "openslide":  # another JPEG decoder may give other pixels
        shaping["reader"] = settings.reader
    return params_key(shaping)


def load_encoder(name: str, weights: str | None = None, random_init_seed: int | None = None,
                 device: str = "cpu", **overrides):
    """A registered tile encoder with weights, or a seeded random init when explicitly asked for."""
    from internvl.model.vision.base import create_vision_model, vision_model_spec

    if weights is None and random_init_seed is None:
        raise ValueError(f"no weights for encoder {name!r}: pass --weights PATH (or 'hf-hub' to download the gated "
                         f"checkpoint with your Hugging Face login), or --random-init-seed N for tests and demos")
    if random_init_seed is not None:
        torch.manual_seed(int(random_init_seed))
    from patches.pathology.encoders import TimmTileEncoder, tile_encoder_names

    if vision_model_spec(name).encoder_class is not TimmTileEncoder:
        raise ValueError(f"vision model {name!r} is not a tile encoder (registered tile encoders: "
                         f"{', '.join(tile_encoder_names())})")
    encoder = create_vision_model(name, **overrides)
    if weights:
        encoder.load_weights(weights)
    else:
        encoder.config.weights_source = f"random-init seed={int(random_init_seed)}"
    return encoder.to(device).eval()


@torch.inference_mode()
def extract_slide(path: str, encoder, settings: ExtractSettings, out_path: str, key: str | None = None,
                  progress: bool = True, embed=None) -> dict:
    """Extract one slide to ``out_path``; returns a summary (raises ``SlideError`` on failure).

    ``embed`` is the embedding function to call (``tile_pipeline.prepare_encoder``; default ``encoder.embed``).
    """
    started = time.perf_counter()
    key = key or settings_key(encoder.config, settings)
    precision = resolve_precision(settings.precision, str(next(encoder.parameters()).device))
    fingerprint = source_fingerprint(path)
    handle = open_slide(path)
    try:
        info = slide_info(handle, path, settings.slide_mpp)
        target = target_mpp_for(info, settings.mpp, settings.magnification)
        plan = plan_tiles(handle, info, target, settings.resolved_tile(encoder.config), settings.tissue)
    finally:
        handle.close()
    if plan.n_grid == 0:
        raise SlideError(f"{path}: slide is {info.dimensions[0]} x {info.dimensions[1]} px at level 0, smaller "
                         f"than one tile ({plan.tile_size_level0} level-0 px = {plan.tile_size} px at "
                         f"{plan.target_mpp:g} µm/px)")
    coords = plan.coords
    reader = make_tile_reader(settings.reader, path, plan)
    cuda = str(next(encoder.parameters()).device).startswith("cuda")
    loader = make_loader(reader, coords, settings.batch_size, settings.num_workers, settings.prefetch,
                         pin_memory=cuda)
    bar = tqdm(total=len(coords), desc=Path(path).name, unit="tile", leave=False, disable=not progress)
    try:
        feats, got, bad = embed_batches(loader, encoder, embed or encoder.embed, len(coords), precision,
                                        on_batch=bar.update)
    finally:
        bar.close()
        reader.close()
    if bad and len(bad) > settings.max_bad_fraction * max(1, len(coords)):
        listed = "; ".join(str(b) for b in bad[:5])
        raise BadTilesError(f"{path}: {len(bad)} of {len(coords)} tiles unreadable (budget "
                            f"{settings.max_bad_fraction:.0%}): {listed}{' ...' if len(bad) > 5 else ''}", bad)
    dim = int(encoder.config.embedding_dim)
    attrs = {"encoder": encoder.config.encoder_name,
             "encoder_config": encoder_identity(encoder.config), "weights_source": encoder.config.weights_source,
             "feature_dim": dim, "slide_mpp": info.mpp, "mpp_source": info.mpp_source,
             "objective_power": info.objective_power, "vendor": info.vendor,
             "level0_width": info.dimensions[0], "level0_height": info.dimensions[1],
             "tissue_params": settings.tissue.to_dict(), "precision": precision,
             "source_file": os.path.abspath(path), "source_hash": source_hash(path), **fingerprint,
             "params_key": key, **plan.attrs()}
    attrs["cache_key"] = params_key({"params": key, "source": attrs["source_hash"]})
    write_features(out_path, feats[got], coords[got], attrs, bad_coords=[(b.x, b.y) for b in bad],
                   tissue_fraction=plan.tissue_fractions[got], layout=settings.layout)
    seconds = time.perf_counter() - started
    return {"slide": str(path), "status": "ok" if len(coords) else "empty", "n_tiles": int(got.sum()),
            "n_bad": len(bad), "bad_tiles": [[b.x, b.y, b.error] for b in bad], "seconds": round(seconds, 3),
            "tiles_per_s": round(len(coords) / seconds, 2) if seconds > 0 else None, "out": out_path}


# ---- a run over many slides (one rank's share) -----------------------------------------------------------------
def _finished(out_path: str, key: str, slide: Path) -> bool:
    """Finished with these settings for this slide; an unreadable (e.g. truncated) output is not, and is redone."""
    try:
        return os.path.exists(slide) and is_finished(out_path, key, source_fingerprint(str(slide)), str(slide))
    except FeatureFileError as exc:
        logger.warning("%s; extracting the slide again", exc)
        return False


def run(slides: list[Path], encoder, settings: ExtractSettings, out_dir: str, skip_errors: bool = True,
        progress: bool = True, ctx: RankContext | None = None) -> dict:
    """Extract this rank's share of ``slides`` that is not already finished; returns the run summary.

    With one process the summary is written at the end; with several, every rank writes its part and rank 0
    merges them after the final barrier (``distributed.py``). ``errors.jsonl`` gets every failure.
    """
    ctx = ctx or RankContext()
    os.makedirs(out_dir, exist_ok=True)
    names = Counter(output_name(s) for s in slides)
    clashes = sorted(n for n, c in names.items() if c > 1)
    if clashes:
        raise ValueError(f"slides share output names {clashes[:5]}: give them distinct file names or extract the "
                         f"groups into separate --out folders")
    key = settings_key(encoder.config, settings)
    encoder_name = encoder.config.encoder_name
    if ctx.rank == 0:  # leftovers of a killed run, before any rank starts writing
        removed = cleanup_temporary(out_dir)
        if removed:
            logger.warning("removed %d unfinished temporary file(s) of an interrupted run in %s", removed, out_dir)
        merge_error_logs(out_dir)
        for stale in Path(out_dir).glob(".summary.rank*.json"):
            stale.unlink(missing_ok=True)
    ctx.barrier()
    mine = shard(slides, ctx.rank, ctx.world_size)
    encoder, embed = prepare_encoder(encoder, settings.device, settings.compile)
    error_log = error_log_path(out_dir, ctx)
    results, status, started = [], Counter(), time.perf_counter()
    desc = f"slides (rank {ctx.rank}/{ctx.world_size})" if ctx.distributed else "slides"
    for slide in tqdm(mine, desc=desc, unit="slide", disable=not progress):
        out_path = feature_path(out_dir, output_name(slide), settings.layout, encoder=encoder_name,
                                mpp=settings.mpp, magnification=settings.magnification,
                                tile_size=settings.resolved_tile(encoder.config))
        try:
            if _finished(out_path, key, slide):
                status["skipped (finished)"] += 1
                results.append({"slide": str(slide), "status": "skipped (finished)", "rank": ctx.rank})
                continue
            result = extract_slide(str(slide), encoder, settings, out_path, key=key, progress=progress,
                                   embed=embed)
        except (SlideError, OSError, ValueError) as exc:
            status["failed"] += 1
            bad = [[b.x, b.y, b.error] for b in getattr(exc, "bad", [])]
            append_jsonl(error_log, {"slide": str(slide), "status": "failed", "error": str(exc),
                                     "error_type": type(exc).__name__, "bad_tiles": bad, "params_key": key,
                                     "rank": ctx.rank})
            logger.error("slide failed: %s", exc)
            results.append({"slide": str(slide), "status": "failed", "error": str(exc), "rank": ctx.rank})
            if not skip_errors:
                raise
            continue
        status[result["status"]] += 1
        if result["n_bad"]:
            status["slides with excluded tiles"] += 1
            append_jsonl(error_log, {"slide": str(slide), "status": "tiles excluded", "error":
                                     f"{result['n_bad']} unreadable tiles excluded (within budget)",
                                     "bad_tiles": result["bad_tiles"], "params_key": key, "rank": ctx.rank})
        if result["status"] == "empty":
            logger.warning("%s: no tissue tiles at %s µm/px; wrote an empty feature file", slide, settings.mpp)
        results.append({**result, "rank": ctx.rank})
    seconds = time.perf_counter() - started
    tiles = sum(r.get("n_tiles", 0) for r in results)
    part = {"rank": ctx.rank, "device": str(settings.device), "counts": dict(status), "slides_assigned": len(mine),
            "tiles": tiles, "seconds": round(seconds, 3),
            "tiles_per_s": round(tiles / seconds, 2) if tiles and seconds > 0 else 0.0, "slides": results}
    header = {"out_dir": out_dir, "params_key": key, "layout": settings.layout}
    write_json_atomic(rank_summary_path(out_dir, ctx.rank), part)
    ctx.barrier()
    if ctx.rank != 0:
        return {**header, "counts": dict(status), "ranks": [part], "slides": results}
    merge_error_logs(out_dir)
    return merge_summaries(out_dir, ctx.world_size, header)


def build_parser() -> argparse.ArgumentParser:
    from internvl.registry import add_plugins_argument

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", required=True, help="one slide file, a folder of slides (recursive) or a list file "
                                                    "(.txt one path per line / .csv with a slide|path column)")
    ap.add_argument("--encoder", default="virchow2", help="registered tile encoder (virchow2, uni, ...)")
    ap.add_argument("--weights", help="weights file or HF snapshot folder, or 'hf-hub' for the gated hub repo")
    ap.add_argument("--random-init-seed", type=int, help="no weights: seeded random init (tests/demos only)")
    ap.add_argument("--out", required=True, help="folder for <slide>.h5 feature files")
    scale = ap.add_mutually_exclusive_group()
    scale.add_argument("--mpp", type=float, help="target µm/px (default 0.5 = 20x)")
    scale.add_argument("--magnification", type=float, help="target objective power instead of --mpp")
    ap.add_argument("--tile", type=int, help="tile side in pixels at the target scale (default: encoder's)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", type=int, default=0, help="tile-reading worker processes (per rank)")
    ap.add_argument("--prefetch", type=int, default=2, help="batches each worker reads ahead")
    ap.add_argument("--slide-mpp", type=float, help="override every slide's level-0 µm/px (missing/wrong tags)")
    ap.add_argument("--tissue", choices=("otsu", "none"), default="otsu")
    ap.add_argument("--min-tissue-fraction", type=float, default=TissueParams.min_tile_fraction)
    ap.add_argument("--min-tissue-area-um2", type=float, default=TissueParams.min_area_um2)
    ap.add_argument("--max-bad-fraction", type=float, default=0.05, help="unreadable tiles a slide may lose")
    ap.add_argument("--skip-errors", action=argparse.BooleanOptionalAction, default=True,
                    help="log a failed slide and continue (default); --no-skip-errors stops at the first")
    ap.add_argument("--device", default=None, help="cpu, cuda (= cuda:LOCAL_RANK under torchrun) or cuda:N "
                                                   "(default: cuda when available)")
    ap.add_argument("--precision", choices=["auto", *sorted(PRECISIONS)], default="auto",
                    help="autocast dtype (auto: bf16, or fp16 on GPUs without bf16; fp32 on CPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the tile encoder (long warm-up)")
    ap.add_argument("--reader", choices=("openslide", "cucim"), default="openslide",
                    help="tile reader (cucim: pip install cucim-cu12; TIFF/SVS only)")
    ap.add_argument("--layout", choices=LAYOUTS, default="internvl",
                    help="trident: <out>/<mag>x_<tile>px_0px_overlap/features_<encoder>/<slide>.h5, float32")
    ap.add_argument("--dist-timeout-hours", type=float, default=72.0, help="longest wait at the final barrier")
    ap.add_argument("--no-progress", action="store_true")
    # start-up: only these modules are imported here; the installed plugins (entry points, ~3 s) are scanned only
    # if --encoder names something no loaded module registered (the registry does that on a miss)
    add_plugins_argument(ap)
    return ap


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    import importlib
    import importlib.util

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        slides = discover_slides(args.slides)
    except SlideListError as exc:
        return _error(str(exc))
    if not slides:
        return _error(f"{args.slides}: no slides found (extensions {', '.join(SLIDE_EXTENSIONS)})")
    if args.reader == "cucim" and importlib.util.find_spec("cucim") is None:
        return _error("--reader cucim: cuCIM is not installed (pip install cucim-cu12); or use --reader openslide")
    for module in args.plugins:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return _error(f"--plugins {module}: cannot import it ({exc})")
    ctx = RankContext.from_env()
    device = ctx.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        encoder = load_encoder(args.encoder, args.weights, args.random_init_seed, "cpu")
    except (ValueError, OSError, KeyError) as exc:  # no/wrong weights, gated or offline hub: say so, no traceback
        return _error(str(exc).strip("'\""))
    settings = ExtractSettings(
        mpp=None if args.magnification else (args.mpp or 0.5), magnification=args.magnification,
        tile_size=args.tile, batch_size=args.batch_size, num_workers=args.num_workers, prefetch=args.prefetch,
        slide_mpp=args.slide_mpp, tissue=TissueParams(method=args.tissue, min_tile_fraction=args.min_tissue_fraction,
                                                      min_area_um2=args.min_tissue_area_um2),
        max_bad_fraction=args.max_bad_fraction, precision=args.precision, device=device, compile=args.compile,
        reader=args.reader, layout=args.layout)
    ctx.start(args.dist_timeout_hours)
    try:
        summary = run(slides, encoder, settings, args.out, skip_errors=args.skip_errors,
                      progress=not args.no_progress, ctx=ctx)
    except (SlideError, OSError, ValueError) as exc:
        print(f"stopped (--no-skip-errors): {exc}", file=sys.stderr)
        return 2
    finally:
        ctx.close()
    if ctx.rank == 0:
        print(json.dumps(summary["counts"]))
    failed = summary["counts"].get("failed")
    if failed:
        if ctx.rank == 0:
            print(f"{failed} slide(s) failed; see {os.path.join(args.out, 'errors.jsonl')}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

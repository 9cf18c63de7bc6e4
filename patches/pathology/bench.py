"""Tile-reading and extraction throughput, one table: is the extractor as fast as OpenSlide lets it be?

    python -m patches.pathology.bench [--slide PATH] [--size 20480] [--max-tiles 2000] [--workers 0 1 2] \
        [--e2e-workers 0 2] [--repeat 3] [--gpu-workers 8] [--json out.json]

Rows, all on the same slide and (for the read rows) the same level-0 coordinates (tissue tiles of 224 px at
0.5 µm/px, at most ``--max-tiles`` of them, evenly spaced):

* ``openslide read_region``: a bare loop, one handle, ``read_region`` -> RGB -> numpy: the ceiling;
* ``our reader, N workers``: the DataLoader + ``TileReader`` path ``extract.py`` uses (``tile_pipeline.py``);
* ``end-to-end, N workers``: ``extract.extract_slide`` over the whole slide with the tiny Virchow-2-shaped encoder
  (``virchow2_tiny``, random weights): slide hash, tissue mask, reads, embedding, HDF5 write;
* GPU rows (only with CUDA): Virchow-2 (full size, random weights: same FLOPs) bf16 embedding of random tiles
  (compute only), and end-to-end extraction with it; otherwise printed as "not measured (no GPU)".

Without ``--slide`` a 20,480 x 20,480 px pyramidal TIFF (0.5 µm/px, zlib tiles, levels 1/4/16/64, synthetic
tissue on about half of it) is generated once into ``--cache-dir`` with tifffile, tile by tile (no 1.2 GB array).
Read rows are timed ``--repeat`` times, interleaved (so a load spike hits every row alike), after one untimed
warm-up pass; the table shows the median. Numbers depend on the machine and its load: report them with both
(the header line prints CPU count and load average).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

BIG_SIZE = 20480


def make_big_slide(path: str, size: int = BIG_SIZE, tile: int = 256, mpp: float = 0.5, seed: int = 0) -> str:
    """A ``size`` x ``size`` px pyramidal tiled TIFF OpenSlide reads at ``mpp``, written tile by tile (atomic)."""
    import tifffile
    from scipy import ndimage

    from patches.pathology.demo import BACKGROUND, synth_tissue

    rng = np.random.default_rng(seed)
    pool = [synth_tissue(rng, 1024, g) for g in (1, 2, 3)]
    n = size // tile
    field = ndimage.gaussian_filter(rng.standard_normal((n, n)), 4.0)
    tissue = field > np.quantile(field, 0.5)
    blank = np.empty((tile, tile, 3), np.uint8)
    blank[:] = BACKGROUND
    level1 = np.empty((size // 4, size // 4, 3), np.uint8)
    q = tile // 4

    def tiles():
        for i in range(n):
            for j in range(n):
                if tissue[i, j]:
                    src = pool[(i + j) % 3]
                    y, x = (i * 97) % (1024 - tile), (j * 131) % (1024 - tile)
                    block = np.ascontiguousarray(src[y:y + tile, x:x + tile])
                else:
                    block = blank
                level1[i * q:(i + 1) * q, j * q:(j + 1) * q] = block.reshape(q, 4, q, 4, 3).mean((1, 3))
                yield block

    tmp = path + ".tmp"
    opts = dict(photometric="rgb", compression="zlib", compressionargs={"level": 1}, resolutionunit="CENTIMETER",
                metadata=None)
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        tw.write(tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), subfiletype=0,
                 resolution=(1e4 / mpp, 1e4 / mpp), **opts)
        level = level1
        for ds in (4, 16, 64):
            tw.write(level, tile=(tile, tile), subfiletype=1, resolution=(1e4 / (mpp * ds),) * 2, **opts)
            h, w = level.shape[0] // 4, level.shape[1] // 4
            level = level[:h * 4, :w * 4].reshape(h, 4, w, 4, 3).mean((1, 3)).astype(np.uint8)
    os.replace(tmp, path)
    return path


def _plan(path: str, mpp: float, tile: int, max_tiles: int | None):
    from patches.pathology.wsi import open_slide, plan_tiles, slide_info

    handle = open_slide(path)
    try:
        info = slide_info(handle, path)
        plan = plan_tiles(handle, info, mpp, tile)
    finally:
        handle.close()
    coords = plan.coords
    if max_tiles and len(coords) > max_tiles:
        coords = coords[np.linspace(0, len(coords) - 1, max_tiles).round().astype(int)]
    return info, plan, coords


def _bare_openslide(path: str, plan, coords) -> int:
    import openslide
    from PIL import Image

    handle = openslide.OpenSlide(path)
    for x, y in coords:
        region = handle.read_region((int(x), int(y)), plan.level, (plan.read_size, plan.read_size)).convert("RGB")
        if plan.read_size != plan.tile_size:
            region = region.resize((plan.tile_size, plan.tile_size), Image.Resampling.BICUBIC)
        np.asarray(region)
    handle.close()
    return len(coords)


def _our_reader(path: str, plan, coords, workers: int, batch_size: int) -> int:
    from patches.pathology.tile_pipeline import make_loader
    from patches.pathology.wsi import TileReader

    reader = TileReader(path, plan)
    n = sum(len(index) for _, index, _ in make_loader(reader, coords, batch_size, workers))
    reader.close()
    return n


def _timed(fn) -> tuple[int, float]:
    started = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - started


def _e2e(path: str, encoder, workers: int, batch_size: int, device: str, embed=None) -> tuple[int, float]:
    from patches.pathology.extract import ExtractSettings, extract_slide

    settings = ExtractSettings(num_workers=workers, batch_size=batch_size, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        result = extract_slide(path, encoder, settings, os.path.join(tmp, "out.h5"), progress=False, embed=embed)
    return result["n_tiles"], result["seconds"]


def _gpu_rows(path: str, batch_size: int, workers: int) -> list[dict]:
    import torch

    from patches.pathology.extract import load_encoder
    from patches.pathology.tile_pipeline import prepare_encoder

    encoder, embed = prepare_encoder(load_encoder("virchow2", random_init_seed=0), "cuda")
    x = torch.randn(batch_size, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            embed(x)
        torch.cuda.synchronize()
        started, iters = time.perf_counter(), 10
        for _ in range(iters):
            embed(x)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    rows = [{"row": f"Virchow-2 bf16 embedding (GPU, batch {batch_size}, compute only)", "tiles": iters * batch_size,
             "seconds": seconds}]
    n, s = _e2e(path, encoder, workers, batch_size, "cuda", embed)
    rows.append({"row": f"end-to-end, Virchow-2 bf16 on GPU, {workers} workers", "tiles": n, "seconds": s})
    return rows


def run_bench(args) -> dict:
    import torch

    from patches.pathology.extract import load_encoder

    path = args.slide
    if path is None:
        os.makedirs(args.cache_dir, exist_ok=True)
        path = os.path.join(args.cache_dir, f"bench_{args.size}px_0.5mpp.tiff")
        if not os.path.exists(path):
            print(f"generating {path} ({args.size} x {args.size} px) ...", flush=True)
            make_big_slide(path, args.size)
    info, plan, coords = _plan(path, args.mpp, args.tile, args.max_tiles)
    _bare_openslide(path, plan, coords)  # warm-up: OS page cache and OpenSlide's own
    read_rows = {"openslide read_region (bare loop)": lambda: _bare_openslide(path, plan, coords)}
    for w in args.workers:
        read_rows[f"our reader, {w} workers"] = (lambda w=w: _our_reader(path, plan, coords, w, args.batch_size))
    times = {name: [] for name in read_rows}
    for _ in range(args.repeat):
        for name, fn in read_rows.items():
            times[name].append(_timed(fn))
    rows = [{"row": name, "tiles": runs[0][0], "seconds": statistics.median(s for _, s in runs),
             "passes_tiles_per_s": [round(n / s, 1) for n, s in runs]} for name, runs in times.items()]
    tiny = load_encoder("virchow2_tiny", random_init_seed=0)
    for w in args.e2e_workers:
        n, s = _e2e(path, tiny, w, args.batch_size, "cpu")
        rows.append({"row": f"end-to-end, tiny encoder on CPU, {w} workers", "tiles": n, "seconds": s})
    if torch.cuda.is_available():
        rows += _gpu_rows(path, 256, args.gpu_workers)
    else:
        rows += [{"row": "Virchow-2 bf16 embedding (GPU)", "note": "not measured (no GPU)"},
                 {"row": "end-to-end, Virchow-2 bf16 on GPU", "note": "not measured (no GPU)"}]
    bare = rows[0]["tiles"] / rows[0]["seconds"]
    for r in rows:
        if "seconds" in r:
            r["tiles_per_s"] = round(r["tiles"] / r["seconds"], 1)
            r["vs_bare"] = round(r["tiles_per_s"] / bare, 2)
    return {"slide": path, "level0": list(info.dimensions), "read_level": plan.level, "read_size": plan.read_size,
            "read_tiles": int(len(coords)), "tissue_tiles": int(len(plan.coords)), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_avg": [round(v, 2) for v in os.getloadavg()],
            "rows": rows}


def format_table(result: dict) -> str:
    head = (f"slide {os.path.basename(result['slide'])} {result['level0'][0]} x {result['level0'][1]} px, "
            f"{result['tissue_tiles']} tissue tiles (224 px at 0.5 µm/px), read rows on {result['read_tiles']} of "
            f"them; {result['cpu_count']} CPUs, load average {result['load_avg']}")
    lines = [head, "", "| what | tiles | seconds | tiles/s | vs bare OpenSlide |", "|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if "note" in r:
            lines.append(f"| {r['row']} | | | {r['note']} | |")
        else:
            lines.append(f"| {r['row']} | {r['tiles']} | {r['seconds']:.2f} | {r['tiles_per_s']:.1f} | "
                         f"{r['vs_bare']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", help="slide to measure (default: a generated --size px pyramidal TIFF)")
    ap.add_argument("--size", type=int, default=BIG_SIZE, help="side of the generated slide in pixels")
    ap.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "internvl_med", "bench"))
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--tile", type=int, default=224)
    ap.add_argument("--max-tiles", type=int, default=2000, help="coordinates for the read rows")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--e2e-workers", type=int, nargs="*", default=[0, 2])
    ap.add_argument("--gpu-workers", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the result as JSON here")
    args = ap.parse_args(argv)
    result = run_bench(args)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

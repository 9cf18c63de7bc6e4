"""Tile-reading throughput on CPU (no encoder): how fast ``TileReader`` feeds an extraction run.

    python -m patches.pathology.bench [--slides DIR|LIST] [--mpp 0.5] [--tile 224] [--workers 0 2] [--repeat 2]

Without ``--slides`` it generates two synthetic slides (8192 x 8192 px Aperio-style 40x, read through the 448 -> 224
resize path, and 4096 x 4096 px generic 20x, read directly) in a temporary folder. For each slide and worker
count it reads the full tissue grid through the same DataLoader batching that ``extract.py`` uses, ``--repeat``
times (the first pass includes cold OpenSlide caches), and prints tiles/s per pass as JSON. Numbers depend on the
machine and its load: report them with the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch


def _time_reads(path: str, mpp: float, tile: int, workers: int, batch_size: int) -> dict:
    from patches.pathology.extract import _keep_numpy, _TileBatches
    from patches.pathology.wsi import TileReader, open_slide, plan_tiles, slide_info

    handle = open_slide(path)
    info = slide_info(handle, path)
    plan = plan_tiles(handle, info, mpp, tile)
    handle.close()
    reader = TileReader(path, plan)
    loader = torch.utils.data.DataLoader(_TileBatches(reader, plan.coords, batch_size), batch_size=None,
                                         num_workers=workers, collate_fn=_keep_numpy)
    started = time.perf_counter()
    n = bad = 0
    for tiles, index, bad_batch in loader:
        n += len(index)
        bad += len(bad_batch)
    seconds = time.perf_counter() - started
    reader.close()
    return {"slide": os.path.basename(path), "level": plan.level, "read_size": plan.read_size, "tiles": n,
            "bad": bad, "workers": workers, "seconds": round(seconds, 3), "tiles_per_s": round(n / seconds, 1)}


def synthetic_slides(folder: str) -> list[str]:
    from patches.pathology.demo import make_slide

    rng = np.random.default_rng(0)
    paths = [os.path.join(folder, "bench_40x.svs"), os.path.join(folder, "bench_20x.tiff")]
    make_slide(paths[0], 3, rng, 2048.0, 40)   # 8192 px at 0.25 µm/px
    make_slide(paths[1], 2, rng, 2048.0, 20)   # 4096 px at 0.5 µm/px
    return paths


def main(argv=None) -> int:
    from patches.pathology.extract import discover_slides

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", help="folder or list file (default: two generated slides)")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--tile", type=int, default=224)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        slides = [str(p) for p in discover_slides(args.slides)] if args.slides else synthetic_slides(tmp)
        results = [{**_time_reads(s, args.mpp, args.tile, w, args.batch_size), "pass": r}
                   for s in slides for w in args.workers for r in range(args.repeat)]
    print(json.dumps({"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                      "load_avg": os.getloadavg(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

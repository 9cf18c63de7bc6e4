"""Throughput of the volume pipeline: raw NIfTI load + preprocess vs. cached (uint8) reads, in volumes/s.

Writes ``n`` synthetic T1-like volumes (int16, gzip NIfTI, MNI-like 182 x 218 x 182 at 1 mm by default, LPI
voxel order so reorientation is real work), then times, single-process:

* ``raw``: ``read_volume`` + ``VolumePreprocessor.prepare`` (reorient, resample to ``--spacing``, percentile
  scaling, mask, crop/pad to ``--shape``) + the uint8 round trip, i.e. an uncached read;
* ``cache_fill``: the same through an empty ``VolumeCache`` (adds hashing + the atomic write);
* ``cached``: reads served from the warm cache (safetensors uint8 -> float32), plus ``finalize``;
* ``sizing``: ``VolumeReader.item_shapes_many`` (what packing plans with: the item shape from the NIfTI header and
  the preprocessor's geometry, no voxel data), checked equal to the loaded shape.

Each phase reports volumes per wall-clock second and per CPU second of the process (the latter is what to
compare on a shared machine; torch may use more than one thread, so CPU time can exceed wall time).

    python -m patches.neuro.bench [--n 8] [--size 182 218 182] [--shape 128 128 128] [--spacing 1.5] [--out f.json]

``--cached-reads`` times only the cached-read path on in-memory random volumes (1 and 3 channels, ``--shape``):
``dequantize`` alone, a full cached read + ``finalize``, and ``np.load`` of the same float32 array as the floor
(what pretraining pays per read; it reads each cached volume many times).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from patches.neuro.cache import VolumeCache, prepared_volume
from patches.neuro.preprocess import VolumePreprocessor
from patches.neuro.synthetic import phantom, save_nifti


def _time(fn, paths) -> tuple[float, float]:
    """(volumes per wall-clock second, volumes per CPU second of this process: robust to a busy machine)."""
    t, c = time.perf_counter(), time.process_time()
    for p in paths:
        fn(p)
    return len(paths) / (time.perf_counter() - t), len(paths) / (time.process_time() - c)


def _reader(pre: VolumePreprocessor):
    """A ``VolumeReader`` whose encoder config asks for exactly ``pre``'s preprocessing (one channel, MRI)."""
    from types import SimpleNamespace

    from patches.neuro.readers import VolumeReader

    vision = SimpleNamespace(in_channels=1, preprocess=pre.config.params())
    return VolumeReader(SimpleNamespace(vision_config=vision), {})


def run(n: int = 8, size=(182, 218, 182), shape=(128, 128, 128), spacing: float = 1.5, workdir: str | None = None):
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        paths = []
        for i in range(n):
            vol = (phantom(size, lesion=("left", "right", None)[i % 3], seed=i) * 40).astype(np.int16)
            paths.append(save_nifti(vol, os.path.join(tmp, f"t1_{i}.nii.gz"), axcodes="LPI"))
        file_mb = sum(os.path.getsize(p) for p in paths) / n / 2**20
        pre = VolumePreprocessor(dict(target_spacing=(spacing,) * 3, volume_shape=tuple(shape)))
        cache = VolumeCache(os.path.join(tmp, "cache"))
        raw = _time(lambda p: pre.finalize(prepared_volume(p, pre).array), paths)
        fill = _time(lambda p: prepared_volume(p, pre, cache=cache), paths)
        cached = _time(lambda p: pre.finalize(prepared_volume(p, pre, cache=cache).array), paths * 5)
        reader = _reader(pre)
        sizing = _time(lambda p: reader.item_shapes_many([p]), paths * 5)
        if reader.item_shapes_many(paths[:1]) != [[tuple(pre.finalize(prepared_volume(paths[0], pre).array).shape)]]:
            raise AssertionError("item_shapes_many disagrees with the loaded shape")
        entry_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache.root) for f in fs) / n / 2**20
    return {"n": n, "source_shape": list(size), "source_file_mb": round(file_mb, 2), "out_shape": list(shape),
            "spacing_mm": spacing, "cache_entry_mb": round(entry_mb, 2),
            "raw_volumes_per_s": round(raw[0], 2), "raw_volumes_per_cpu_s": round(raw[1], 2),
            "cache_fill_volumes_per_s": round(fill[0], 2), "cache_fill_volumes_per_cpu_s": round(fill[1], 2),
            "cached_volumes_per_s": round(cached[0], 1), "cached_volumes_per_cpu_s": round(cached[1], 1),
            "sizing_volumes_per_s": round(sizing[0], 1), "sizing_volumes_per_cpu_s": round(sizing[1], 1),
            "load_average": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count()}


def run_cached_reads(shape=(128, 128, 128), reps: int = 100) -> dict:
    from patches.neuro.cache import dequantize, quantize
    from patches.neuro.preprocess import Prepared

    res = {}
    for chans in (1, 3):
        a = np.random.default_rng(0).random((chans, *shape), dtype=np.float32)
        q, off, sc = quantize(a)
        with tempfile.TemporaryDirectory() as tmp:
            cache, key = VolumeCache(tmp), "0" * 64
            cache.put(key, Prepared(a, a[0] > 0.5, (1.0, 1.0, 1.0), {}))
            pre = VolumePreprocessor(dict(volume_shape=None, target_spacing=None,
                                          modality="ct" if chans == 3 else "mri"))
            np.save(os.path.join(tmp, "x.npy"), a)
            timings = {}
            for name, fn in (("dequantize_ms", lambda: dequantize(q, off, sc)),
                             ("cached_read_ms", lambda: pre.finalize(cache.get(key).array)),
                             ("np_load_float32_ms", lambda: np.load(os.path.join(tmp, "x.npy")))):
                fn()
                t = time.perf_counter()
                for _ in range(reps):
                    fn()
                timings[name] = round((time.perf_counter() - t) / reps * 1e3, 2)
        timings["cached_volumes_per_s"] = round(1e3 / timings["cached_read_ms"], 1)
        res[f"{chans}x{'x'.join(map(str, shape))}"] = timings
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--size", type=int, nargs=3, default=(182, 218, 182), help="source volume voxels (1 mm)")
    p.add_argument("--shape", type=int, nargs=3, default=(128, 128, 128), help="preprocessed D H W")
    p.add_argument("--spacing", type=float, default=1.5)
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    p.add_argument("--cached-reads", action="store_true", help="time only the cached-read path (see above)")
    a = p.parse_args(argv)
    res = run_cached_reads(tuple(a.shape)) if a.cached_reads else run(a.n, tuple(a.size), tuple(a.shape), a.spacing)
    print(json.dumps(res, indent=2))
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=2)
        os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

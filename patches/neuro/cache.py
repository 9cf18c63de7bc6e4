"""Cache of preprocessed volumes: uint8 + per-channel offset/scale, keyed by source content and every parameter.

Why: reading, reorienting and resampling a 256^3 volume costs far more than a training step of a small 3D
encoder, and uint8 after windowing/scaling is the field's storage norm (4x smaller than float32). The key is
``sha256(source_digest, PreprocessConfig.params(), expected ndim, CACHE_FORMAT)``: the file's *content* hash (not its name or
mtime) and every preprocessing parameter, so editing the pipeline or the file never reuses a stale entry
(MONAI's PersistentDataset ignores the transforms unless told otherwise, the trap this avoids).

Public API:

* ``VolumeCache(root)``: ``.key(digest, config, ndim)``, ``.get(key) -> Prepared | None``, ``.put(key, prepared)``.
  Entries are ``<root>/<key[:2]>/<key>.safetensors`` (``data`` uint8, ``offset``/``scale`` float32 per channel,
  ``mask`` uint8, JSON metadata), written to a temporary file and ``os.replace``d (never half-written).
* ``prepared_volume(path, preprocessor, *, cache=None, ndim=3, series_uid=None) -> Prepared``: read + prepare,
  through the cache when one is given. Without a cache the same uint8 round trip is applied, so results do not
  depend on whether a cache is used.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from patches.neuro.preprocess import PreprocessConfig, Prepared, VolumePreprocessor
from patches.neuro.volume_io import VolumeError, read_volume, source_digest

CACHE_FORMAT = "neuro-volume-cache-v1"


def quantize(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel (axis 0) uint8 quantisation; returns ``(q, offset, scale)`` with ``x ~= offset + q * scale``."""
    flat = array.reshape(array.shape[0], -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
    shape = (-1,) + (1,) * (array.ndim - 1)
    q = np.rint((array - lo.reshape(shape)) / scale.reshape(shape))
    return np.clip(q, 0, 255).astype(np.uint8), lo.astype(np.float32), scale


def dequantize(q: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``offset + q * scale`` as float32 with ONE allocation: the multiply casts uint8 -> float32 inside the
    ufunc loop straight into the output, and the offset is added in place (the former version made two float
    temporaries and a redundant final copy; measured in patches/neuro/README.md)."""
    shape = (-1,) + (1,) * (q.ndim - 1)
    out = np.multiply(q, scale.reshape(shape).astype(np.float32, copy=False), dtype=np.float32)
    out += offset.reshape(shape).astype(np.float32, copy=False)
    return out


def roundtrip(prep: Prepared) -> Prepared:
    q, off, sc = quantize(prep.array)
    return Prepared(dequantize(q, off, sc), prep.mask, prep.spacing, dict(prep.meta))


class VolumeCache:
    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)
        os.makedirs(self.root, exist_ok=True)

    @staticmethod
    def key(digest: str, config: PreprocessConfig, ndim: int | tuple = 3) -> str:
        blob = json.dumps({"format": CACHE_FORMAT, "source": digest, "params": config.params(),
                           "ndim": list(ndim) if isinstance(ndim, (tuple, list)) else ndim}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], f"{key}.safetensors")

    def get(self, key: str) -> Prepared | None:
        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            tensors = load_file(path)
            with safe_open(path, framework="numpy") as fh:
                meta = json.loads(fh.metadata()["meta"])
        except Exception as exc:  # a damaged entry is reported, not silently rebuilt over
            raise VolumeError(f"{path}: unreadable volume-cache entry ({type(exc).__name__}: {exc}); delete it "
                              f"to rebuild") from exc
        arr = dequantize(tensors["data"], tensors["offset"], tensors["scale"])
        return Prepared(arr, tensors["mask"].view(bool), tuple(meta["spacing"]), meta)  # 0/1 bytes: a view, no copy

    def put(self, key: str, prep: Prepared) -> str:
        path = self.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        q, off, sc = quantize(prep.array)
        meta = dict(prep.meta, spacing=list(prep.spacing), key=key)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=os.path.dirname(path))
        os.close(fd)
        try:
            save_file({"data": q, "offset": off, "scale": sc, "mask": prep.mask.astype(np.uint8)}, tmp,
                      metadata={"meta": json.dumps(meta), "format": CACHE_FORMAT})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path


def prepared_volume(path: str, preprocessor: VolumePreprocessor, *, cache: VolumeCache | None = None,
                    ndim: int = 3, series_uid: str | None = None) -> Prepared:
    """Read ``path`` and run the cached part of the preprocessing (through ``cache`` when given)."""
    if cache is None:
        return roundtrip(preprocessor.prepare(read_volume(path, ndim=ndim, series_uid=series_uid)))
    key = cache.key(source_digest(path, series_uid), preprocessor.config, ndim)
    hit = cache.get(key)
    if hit is not None:
        return hit
    prep = preprocessor.prepare(read_volume(path, ndim=ndim, series_uid=series_uid))
    cache.put(key, prep)
    return roundtrip(prep)

"""Slide feature files (HDF5): layout, atomic writes, and the cache key that says what shaped them.

One file per slide:

* ``features`` [N, D] float16: one embedding per tissue tile (row order = ``coords`` order, row-major grid);
* ``coords`` [N, 2] int64: (x, y) top-left of each tile in the level-0 pixel frame;
* ``bad_coords`` [M, 2] int64: tiles that could not be read (after a retry on a fresh handle), excluded;
* ``tissue_fraction`` [N] float32: tissue share of each kept tile's footprint;
* attributes: ``encoder``, ``encoder_config`` (JSON), ``weights_source``, ``target_mpp``, ``tile_size``,
  ``tile_size_level0``, ``level``, ``level_downsample``, ``slide_mpp``, ``mpp_source``, ``objective_power``,
  ``tissue_threshold``, ``tissue_params`` (JSON), ``source_file``, ``source_hash``, ``source_size``,
  ``source_mtime_ns``, ``params_key`` and ``cache_key``, ``format_version``.

``params_key`` hashes every setting that changes the numbers (encoder config and weights identity, mpp, tile size,
tissue parameters, slide-scale override, compute precision, format version); ``cache_key`` adds the slide's content
hash. Files are written to a temporary name in the same folder and ``os.replace``d, so a killed run never leaves a
file that looks finished. Datasets are written without HDF5 timestamps so reruns give byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

FORMAT_VERSION = 1


class FeatureFileError(Exception):
    """A feature file that is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class FeatureFile:
    path: str
    features: np.ndarray
    coords: np.ndarray
    attrs: dict


def canonical_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def params_key(settings: dict) -> str:
    return canonical_hash({"format_version": FORMAT_VERSION, **settings})


def slide_files(path: str) -> list[Path]:
    """The files whose bytes make up one slide (MIRAX: the .mrxs and its data folder; DICOM: the series folder)."""
    p = Path(path)
    if p.suffix.lower() == ".mrxs":
        companion = p.with_suffix("")
        extra = sorted(f for f in companion.rglob("*") if f.is_file()) if companion.is_dir() else []
        return [p, *extra]
    if p.suffix.lower() == ".dcm":
        return sorted(f for f in p.parent.iterdir() if f.suffix.lower() == ".dcm")
    return [p]


def source_fingerprint(path: str) -> dict:
    """Cheap identity (size, mtime) used to skip finished slides without re-hashing gigabytes."""
    files = slide_files(path)
    stats = [f.stat() for f in files]
    return {"source_size": int(sum(s.st_size for s in stats)), "source_mtime_ns": int(max(s.st_mtime_ns for s in stats))}


def source_hash(path: str, chunk: int = 1 << 22) -> str:
    """sha256 over the slide's files (names and bytes)."""
    digest = hashlib.sha256()
    for f in slide_files(path):
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def _encode_attr(value):
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    if value is None:
        return "null"
    return value


def write_features(path: str, features: np.ndarray, coords: np.ndarray, attrs: dict,
                   bad_coords: np.ndarray | None = None, tissue_fraction: np.ndarray | None = None) -> None:
    """Write one slide's feature file atomically (temporary file in the same folder, then ``os.replace``)."""
    features = np.asarray(features, dtype=np.float16)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if len(features) != len(coords):
        raise ValueError(f"{path}: {len(features)} feature rows but {len(coords)} coordinates")
    bad = np.zeros((0, 2), np.int64) if bad_coords is None else np.asarray(bad_coords, np.int64).reshape(-1, 2)
    frac = np.ones(len(coords), np.float32) if tissue_fraction is None else np.asarray(tissue_fraction, np.float32)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".h5", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", libver="earliest", track_order=False) as h5:
            opts = dict(track_times=False)
            h5.create_dataset("features", data=features, chunks=(max(1, min(len(features), 1024)), features.shape[1])
                              if len(features) else None, **opts)
            h5.create_dataset("coords", data=coords, **opts)
            h5.create_dataset("bad_coords", data=bad, **opts)
            h5.create_dataset("tissue_fraction", data=frac, **opts)
            for key in sorted(attrs):
                h5.attrs[key] = _encode_attr(attrs[key])
            h5.attrs["format_version"] = FORMAT_VERSION
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_attrs(path: str) -> dict:
    try:
        with h5py.File(path, "r") as h5:
            return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
    except OSError as exc:
        raise FeatureFileError(f"{path}: not a readable HDF5 feature file ({exc})") from exc


def read_features(path: str) -> FeatureFile:
    """Load a feature file written by ``write_features`` (float32 features)."""
    if not os.path.isfile(path):
        raise FeatureFileError(f"{path}: feature file not found")
    try:
        with h5py.File(path, "r") as h5:
            if "features" not in h5 or "coords" not in h5:
                raise FeatureFileError(f"{path}: no 'features'/'coords' datasets (keys: {sorted(h5.keys())})")
            features = np.asarray(h5["features"], dtype=np.float32)
            coords = np.asarray(h5["coords"], dtype=np.int64)
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}
    except OSError as exc:
        raise FeatureFileError(f"{path}: not a readable HDF5 feature file ({exc})") from exc
    if features.ndim != 2 or coords.shape != (len(features), 2):
        raise FeatureFileError(f"{path}: features {features.shape} and coords {coords.shape} do not match")
    if not np.isfinite(features).all():
        bad = int((~np.isfinite(features)).any(axis=1).sum())
        raise FeatureFileError(f"{path}: {bad} feature rows contain NaN/inf")
    return FeatureFile(path=str(path), features=features, coords=coords, attrs=attrs)


def is_finished(path: str, key: str, fingerprint: dict, slide: str | None = None) -> bool:
    """True when ``path`` was written with the same settings for the same slide.

    Same size and mtime is taken as the same slide; with ``slide`` given, a changed mtime falls back to comparing
    the content hash (a slide rewritten with identical bytes is still finished).
    """
    if not os.path.isfile(path):
        return False
    attrs = read_attrs(path)
    if attrs.get("params_key") != key or int(attrs.get("source_size", -1)) != fingerprint["source_size"]:
        return False
    if int(attrs.get("source_mtime_ns", -1)) == fingerprint["source_mtime_ns"]:
        return True
    return slide is not None and attrs.get("source_hash") == source_hash(slide)

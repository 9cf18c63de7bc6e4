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

``layout="trident"`` (``extract --layout trident``) writes TRIDENT's layout instead: the file goes to
``<out>/<mag>x_<tile>px_0px_overlap/features_<encoder>/<slide>.h5`` with ``features`` as float32 (attributes
``name``, ``savetodir``, ``encoder``) and ``coords`` carrying TRIDENT's coordinate attributes (``patch_size``,
``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``overlap``, ``name``,
``level0_width``, ``level0_height``, ``savetodir``); our provenance stays in the root attributes, so resuming
works the same.

``read_features`` also reads other tools' files: TRIDENT/CLAM ``.h5`` (``features`` [N, D] or [1, N, D], ``coords``;
any float dtype) and ``.pt`` files holding a tensor [N, D] (CLAM's ``pt_files``) or a dict with ``features``
(and optionally ``coords``), loaded with ``torch.load(weights_only=True)``. Their encoder identity is the root or
``features`` attribute ``encoder`` when present, else a sidecar JSON next to the file (``<file>.json`` or
``<stem>.json``, ``{"encoder": "uni"}``); ``FeatureFile.encoder_source`` says which (the ``features`` media kind
also accepts a meta-JSON option ``feature_encoder``). TRIDENT's encoder names are mapped to ours (``uni_v1`` ->
``uni``, ``uni_v2`` -> ``uni2_h``, ``hoptimus0`` -> ``h_optimus_0``, ``gigapath`` -> ``prov_gigapath``), and the
TRIDENT layout is written with TRIDENT's names (folder ``features_uni_v1``, ``encoder`` attribute).
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
LAYOUTS = ("internvl", "trident")
# TRIDENT's patch-encoder names (its ``enc_name``) -> ours, where they differ (virchow, virchow2 are the same)
FROM_TRIDENT = {"uni_v1": "uni", "uni_v2": "uni2_h", "hoptimus0": "h_optimus_0", "gigapath": "prov_gigapath"}
TO_TRIDENT = {ours: theirs for theirs, ours in FROM_TRIDENT.items()}
TEMP_PREFIX = ".tmp-"


class FeatureFileError(Exception):
    """A feature file that is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class FeatureFile:
    path: str
    features: np.ndarray
    coords: np.ndarray | None      # None: a .pt file without coordinates
    attrs: dict
    encoder: str | None = None     # which tile encoder made the features, when known
    encoder_source: str = ""       # "file" | "sidecar <path>" | "" (unknown)


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


def magnification_tag(mpp: float | None, magnification: float | None) -> str:
    """TRIDENT's magnification folder tag: ``20x`` for 0.5 µm/px (10 / mpp), or the magnification given."""
    mag = float(magnification) if magnification else 10.0 / float(mpp)
    return f"{mag:g}x"


def feature_path(out_dir: str, stem: str, layout: str = "internvl", *, encoder: str = "", mpp: float | None = 0.5,
                 magnification: float | None = None, tile_size: int = 224) -> str:
    """Where one slide's feature file goes for ``layout``."""
    if layout == "internvl":
        return os.path.join(out_dir, stem + ".h5")
    if layout != "trident":
        raise ValueError(f"unknown feature layout {layout!r}; one of {LAYOUTS}")
    folder = f"{magnification_tag(mpp, magnification)}_{int(tile_size)}px_0px_overlap"
    return os.path.join(out_dir, folder, f"features_{TO_TRIDENT.get(encoder, encoder)}", stem + ".h5")


def cleanup_temporary(out_dir: str) -> int:
    """Remove ``.tmp-*.h5`` files a killed run left (under ``out_dir``, any depth); returns how many."""
    removed = 0
    for tmp in Path(out_dir).rglob(TEMP_PREFIX + "*.h5"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _trident_attrs(path: str, attrs: dict) -> tuple[dict, dict]:
    name, folder = Path(path).stem, os.path.dirname(os.path.abspath(path))
    level0_mag = attrs.get("objective_power") or 10.0 / float(attrs["slide_mpp"])
    target_mag = 10.0 / float(attrs["target_mpp"])
    coords = {"patch_size": int(attrs["tile_size"]), "patch_size_level0": int(attrs["tile_size_level0"]),
              "level0_magnification": float(level0_mag), "target_magnification": float(target_mag), "overlap": 0,
              "name": name, "level0_width": int(attrs["level0_width"]), "level0_height": int(attrs["level0_height"]),
              "savetodir": folder}
    encoder = str(attrs.get("encoder", ""))
    return {"name": name, "savetodir": folder, "encoder": TO_TRIDENT.get(encoder, encoder)}, coords


def write_features(path: str, features: np.ndarray, coords: np.ndarray, attrs: dict,
                   bad_coords: np.ndarray | None = None, tissue_fraction: np.ndarray | None = None,
                   layout: str = "internvl") -> None:
    """Write one slide's feature file atomically (temporary file in the same folder, then ``os.replace``)."""
    features = np.asarray(features, dtype=np.float32 if layout == "trident" else np.float16)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if len(features) != len(coords):
        raise ValueError(f"{path}: {len(features)} feature rows but {len(coords)} coordinates")
    bad = np.zeros((0, 2), np.int64) if bad_coords is None else np.asarray(bad_coords, np.int64).reshape(-1, 2)
    frac = np.ones(len(coords), np.float32) if tissue_fraction is None else np.asarray(tissue_fraction, np.float32)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".h5", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", libver="earliest", track_order=False) as h5:
            opts = dict(track_times=False)
            feats = h5.create_dataset("features", data=features, chunks=(max(1, min(len(features), 1024)),
                                                                         features.shape[1])
                                      if len(features) else None, **opts)
            xy = h5.create_dataset("coords", data=coords, **opts)
            h5.create_dataset("bad_coords", data=bad, **opts)
            h5.create_dataset("tissue_fraction", data=frac, **opts)
            if layout == "trident":
                feat_attrs, coord_attrs = _trident_attrs(path, attrs)
                for key, value in feat_attrs.items():
                    feats.attrs[key] = value
                for key, value in coord_attrs.items():
                    xy.attrs[key] = value
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


def _decode(attrs) -> dict:
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}


def _read_h5(path: str):
    try:
        with h5py.File(path, "r") as h5:
            if "features" not in h5:
                raise FeatureFileError(f"{path}: no 'features' dataset (keys: {sorted(h5.keys())})")
            features = np.asarray(h5["features"], dtype=np.float32)
            coords = np.asarray(h5["coords"], dtype=np.int64) if "coords" in h5 else None
            attrs = {**_decode(h5["features"].attrs), **_decode(h5.attrs)}  # root attributes win
    except OSError as exc:
        raise FeatureFileError(f"{path}: not a readable HDF5 feature file ({exc})") from exc
    return features, coords, attrs


def _read_pt(path: str):
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of many kinds; re-raised naming the file
        raise FeatureFileError(f"{path}: not a readable torch feature file ({type(exc).__name__}: {exc})") from exc
    coords = None
    if isinstance(obj, dict):
        if "features" not in obj:
            raise FeatureFileError(f"{path}: a dict without 'features' (keys: {sorted(map(str, obj))})")
        coords = obj.get("coords")
        obj = obj["features"]
    if not isinstance(obj, torch.Tensor):
        raise FeatureFileError(f"{path}: holds a {type(obj).__name__}, not a feature tensor [N, D]")
    features = obj.detach().float().numpy()
    if coords is not None:
        coords = np.asarray(coords.numpy() if isinstance(coords, torch.Tensor) else coords, dtype=np.int64)
    return features, coords, {}


def _sidecar_encoder(path: str) -> tuple[str | None, str]:
    p = Path(path)
    for side in (Path(str(p) + ".json"), p.with_suffix(".json")):
        if side.is_file():
            try:
                meta = json.loads(side.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise FeatureFileError(f"{side}: sidecar of {path} is not valid JSON ({exc})") from exc
            if not isinstance(meta, dict) or not isinstance(meta.get("encoder"), str):
                raise FeatureFileError(f"{side}: sidecar of {path} needs a string 'encoder' field")
            return meta["encoder"], f"sidecar {side}"
    return None, ""


def read_features(path: str) -> FeatureFile:
    """Load a feature file (ours, TRIDENT/CLAM ``.h5`` or ``.pt``) as float32 features; errors name the file."""
    if not os.path.isfile(path):
        raise FeatureFileError(f"{path}: feature file not found")
    reader = _read_pt if path.endswith((".pt", ".pth")) else _read_h5
    features, coords, attrs = reader(path)
    if features.ndim == 3 and features.shape[0] == 1:  # a batch of one slide
        features = features[0]
    if coords is not None and coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if features.ndim != 2:
        raise FeatureFileError(f"{path}: features have shape {features.shape}, expected [N_tiles, D]")
    if coords is not None and coords.shape != (len(features), 2):
        raise FeatureFileError(f"{path}: features {features.shape} and coords {coords.shape} do not match")
    if not np.isfinite(features).all():
        bad = int((~np.isfinite(features)).any(axis=1).sum())
        raise FeatureFileError(f"{path}: {bad} feature rows contain NaN/inf")
    encoder, source = (str(attrs["encoder"]), "file") if attrs.get("encoder") else _sidecar_encoder(path)
    encoder = FROM_TRIDENT.get(encoder, encoder)  # TRIDENT's "uni_v1" is our "uni"
    return FeatureFile(path=str(path), features=features, coords=coords, attrs=attrs, encoder=encoder,
                       encoder_source=source)


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

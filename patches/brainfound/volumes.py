"""Volumes for Brainfound: a raw ``[D, H, W]`` array (axial slices first) plus its modality.

NIfTI files and DICOM series are read by the neuro plugin's public API (``patches.neuro.api.read_volume``: validation,
rescale, typed errors naming the file) and reoriented by its ``VolumePreprocessor.reorient`` (RAS, then
``(D, H, W) = (z, y, x)``), with no resampling and no intensity change: Brainfound windows the HU values itself.

Brainfound's own preprocessed files are ``.npz`` (its ``meditk`` JSONL) and ``.npy``; their layout is not
published, so it is a parameter: ``array_layout`` "DHW" (slices first; default) or "HWD" (nibabel order, slices
last), and ``npz_key`` picks the array in an ``.npz`` (default: its only array, else the first of ``data``,
``image``, ``volume``, ``arr_0``). Values are HU for CT and raw intensities for MRI. ``.npy`` volumes are memory
mapped, so reading one slice (stage 1) does not read the whole file.

Modality: the caller's (row / manifest / config) wins; else DICOM's Modality (CT -> "CT", MR -> "MRI"); else the
path heuristic Brainfound used (``t1`` / ``t2`` / ``pub_mri`` in the path, otherwise CT) when ``guess=True``.
"""
from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from internvl.media.base import MediaError

ARRAY_SUFFIXES = (".npy", ".npz")
_NPZ_KEYS = ("data", "image", "volume", "arr_0")


@dataclass
class RawVolume:
    array: np.ndarray  # [D, H, W], HU for CT
    modality: str | None
    path: str


def guess_modality(path: str) -> str:
    """Brainfound's stage-1 rule: the modality named in the path (t1 / t2 / pub_mri), otherwise CT."""
    low = path.lower()
    if re.search(r"pub[_-]?mri", low):
        return "pub_mri"
    if re.search(r"(^|[^a-z0-9])t1", low):
        return "T1"
    if re.search(r"(^|[^a-z0-9])t2", low):
        return "T2"
    return "CT"


def _load_array(path: str, npz_key: str | None, mmap: bool) -> np.ndarray:
    try:
        if path.endswith(".npy"):
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            key = npz_key or (keys[0] if len(keys) == 1 else next((k for k in _NPZ_KEYS if k in keys), None))
            if key is None or key not in keys:
                raise MediaError(f"{path}: cannot tell which array is the volume (keys {keys}); set npz_key")
            return npz[key]
    except MediaError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise MediaError(f"{path}: unreadable array file ({type(exc).__name__}: {exc})") from exc


def read_array_volume(path: str, *, npz_key: str | None = None, array_layout: str = "DHW",
                      mmap: bool = False, check_finite: bool = True) -> np.ndarray:
    """A ``.npy`` / ``.npz`` volume as ``[D, H, W]`` (a view of a memory map when ``mmap`` and ``.npy``)."""
    if not os.path.isfile(path):
        raise MediaError(f"{path}: file not found")
    arr = _load_array(path, npz_key, mmap)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise MediaError(f"{path}: expected a 3D volume, got an array of shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise MediaError(f"{path}: array dtype {arr.dtype} is not a real number type")
    if array_layout == "HWD":
        arr = np.moveaxis(arr, -1, 0)
    elif array_layout != "DHW":
        raise ValueError(f"array_layout must be 'DHW' or 'HWD', got {array_layout!r}")
    if check_finite and np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(np.asarray(arr))).sum())
        raise MediaError(f"{path}: {bad} NaN/Inf voxels")
    return arr


def read_raw_volume(path: str, *, modality: str | None = None, npz_key: str | None = None,
                    array_layout: str = "DHW", series_uid: str | None = None, guess: bool = False,
                    mmap: bool = False) -> RawVolume:
    """Any supported volume -> ``RawVolume([D, H, W], modality, path)``; errors are ``MediaError`` naming it."""
    path = os.fspath(path)
    if path.lower().endswith(ARRAY_SUFFIXES):
        arr = read_array_volume(path, npz_key=npz_key, array_layout=array_layout, mmap=mmap)
        return RawVolume(arr, modality or (guess_modality(path) if guess else None), path)
    from patches.neuro.api import PreprocessConfig, VolumePreprocessor, read_volume

    vol = read_volume(path, ndim=3, series_uid=series_uid)
    file_mod = {"CT": "CT", "MR": "MRI"}.get(vol.meta.get("modality") or "")
    if modality and file_mod and (file_mod == "CT") != (str(modality).upper() == "CT"):
        raise MediaError(f"{path}: DICOM Modality says {file_mod} but {modality!r} was given")
    arr, _, _ = VolumePreprocessor(PreprocessConfig(target_spacing=None, volume_shape=None)).reorient(vol)
    return RawVolume(arr, modality or file_mod or (guess_modality(path) if guess else None), path)


def volume_depth(path: str, *, npz_key: str | None = None, array_layout: str = "DHW") -> int:
    """Number of axial slices (cheap for ``.npy``: header only)."""
    if path.lower().endswith(".npy"):
        return int(read_array_volume(path, array_layout=array_layout, mmap=True, check_finite=False).shape[0])
    return int(read_raw_volume(path, npz_key=npz_key, array_layout=array_layout).array.shape[0])

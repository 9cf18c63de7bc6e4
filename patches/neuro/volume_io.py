"""Volume reader: NIfTI (nibabel, 3D and 4D) and DICOM series (pydicom) -> one validated ``Volume``.

Public API (the Brainfound plugin reuses it; keep it stable):

* ``read_volume(path, *, ndim=3, series_uid=None) -> Volume``
    ``path``: a NIfTI file (``.nii``, ``.nii.gz``, ``.hdr``/``.img``, anything nibabel opens) or a folder holding
    one DICOM series (``series_uid`` picks one when the folder holds several). ``ndim``: the dimensionality the
    caller expects, ``3`` (volume), ``4`` (time series, e.g. rsfMRI) or ``(3, 4)``. The whole file is decoded here,
    so truncated or corrupt data fail at load time, never mid-training.
* ``Volume(array, affine, spacing, meta)``
    ``array``: float32 ``ndarray`` in the file's voxel order, ``[i, j, k]`` or ``[i, j, k, t]``; DICOM rescale
    (slope/intercept) and NIfTI ``scl_slope``/``scl_inter`` already applied exactly once (CT is in HU).
    ``affine``: 4x4 voxel -> world (RAS+, mm, nibabel convention; DICOM LPS is converted).
    ``spacing``: voxel size in mm along ``i, j, k`` (for DICOM the slice spacing comes from the positions, not
    from SliceThickness). ``meta``: ``{"path", "format" ("nifti"|"dicom"), "modality" ("CT"|"MR"|None),
    "series_uid", "time_step" (4D), "axcodes", "files"}``.
* ``read_nifti_geometry(path, *, ndim=3) -> (affine, shape)``: a NIfTI file's geometry from its header, with the
    refusals ``read_volume`` can make from the header alone (what sizing for packing and box placement use).
* ``source_digest(path, series_uid=None) -> str``: content hash of the file (or of every file of the series),
    memoised per process by (path, size, mtime); what the preprocessed-volume cache is keyed by.
* Errors: ``VolumeError`` (a ``MediaError``) and its subclasses ``CorruptVolumeError``, ``UnsupportedDimError``,
    ``NonFiniteError``, ``InconsistentSeriesError``, ``MultipleSeriesError``; every message starts with the path.

What is refused instead of silently going wrong (see shared/research/neuro3d.md section 3.7): 2D data (also a 3D
array with a singleton spatial axis) or 5D data, NaN/Inf voxels, truncated/corrupt gzip or pixel data, a degenerate
affine, NIfTI without orientation (sform and qform codes 0), and for DICOM: several series in one folder, mixed
orientations, duplicate slice positions, gaps in slice spacing, slices not stacked along the normal (gantry tilt),
multi-frame (enhanced) objects, and files without pixel data.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import nibabel as nib
import numpy as np

from internvl.media.base import MediaError

__all__ = ["Volume", "read_volume", "source_digest", "VolumeError", "CorruptVolumeError", "UnsupportedDimError",
           "NonFiniteError", "InconsistentSeriesError", "MultipleSeriesError", "NIFTI_SUFFIXES"]

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img", ".img.gz", ".mgz", ".mgh")


class VolumeError(MediaError):
    """A volume that cannot be used as it is; the message starts with the file or folder."""


class CorruptVolumeError(VolumeError):
    """Truncated, corrupt or undecodable data."""


class UnsupportedDimError(VolumeError):
    """2D where 3D/4D is expected, 5D, or a 4D file where 3D is expected."""


class NonFiniteError(VolumeError):
    """NaN or Inf voxels."""


class InconsistentSeriesError(VolumeError):
    """A DICOM series with a gap, duplicate positions, mixed orientations or a tilted stack."""


class MultipleSeriesError(VolumeError):
    """A folder holding several DICOM series and no ``series_uid`` choosing one."""

    def __init__(self, message: str, series: dict[str, dict]):
        super().__init__(message)
        self.series = series


@dataclass
class Volume:
    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_4d(self) -> bool:
        return self.array.ndim == 4

    @property
    def axcodes(self) -> tuple[str, ...]:
        return tuple(nib.aff2axcodes(self.affine))


def _expected(ndim) -> tuple[int, ...]:
    dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if not dims or any(d not in (3, 4) for d in dims):
        raise ValueError(f"ndim must be 3, 4 or a tuple of them, got {ndim!r}")
    return dims


def read_volume(path: str | os.PathLike, *, ndim: int | Iterable[int] = 3, series_uid: str | None = None) -> Volume:
    """Read and validate one volume (see the module docstring). Raises ``VolumeError`` naming ``path``."""
    path = os.fspath(path)
    dims = _expected(ndim)
    if not os.path.exists(path):
        raise VolumeError(f"{path}: file not found")
    if os.path.isdir(path):
        from patches.neuro.dicom_series import read_dicom_series

        vol = read_dicom_series(path, series_uid=series_uid)
    elif path.lower().endswith(".dcm"):
        raise UnsupportedDimError(f"{path}: a single DICOM file is one 2D slice; pass the folder holding the "
                                  f"whole series")
    else:
        if series_uid is not None:
            raise VolumeError(f"{path}: series_uid given but this is not a DICOM folder")
        vol = _read_nifti(path)
    _check_dims(path, vol.array.shape, dims)
    _check_finite(path, vol.array)
    _check_affine(path, vol.affine)
    return vol


def _open_nifti(path: str):
    """The nibabel image of a NIfTI file, header checked (single DICOM slice, unreadable, no orientation codes);
    no voxel data decoded."""
    if _is_dicom_file(path):
        raise UnsupportedDimError(f"{path}: a single DICOM file is one 2D slice; pass the folder holding the "
                                  f"whole series")
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises ImageFileError/OSError/EOFError/...: all mean "unreadable"
        raise CorruptVolumeError(f"{path}: cannot open as NIfTI/neuro-image ({type(exc).__name__}: {exc})") from exc
    codes = [int(img.header[k]) for k in ("sform_code", "qform_code") if k in img.header]
    if codes and not any(codes):
        raise VolumeError(f"{path}: sform_code and qform_code are both 0, so the orientation is unknown "
                          f"(nibabel would assume LAS); fix the header (e.g. fslorient) before using it")
    return img


def read_nifti_geometry(path: str | os.PathLike, *, ndim: int | Iterable[int] = 3) -> tuple[np.ndarray, tuple]:
    """(4x4 voxel -> world affine, shape with trailing singleton axes dropped) of a NIfTI file from its header
    alone, refused as ``read_volume`` refuses them (missing file, single DICOM slice, unreadable header, no
    orientation codes, degenerate affine, 2D/5D or an unexpected dimensionality). No voxel data is decoded, so what
    only the data shows (NaN, truncation) is left to ``read_volume``."""
    path = os.fspath(path)
    dims = _expected(ndim)
    if not os.path.isfile(path):
        raise VolumeError(f"{path}: file not found" if not os.path.exists(path) else
                          f"{path}: a folder (a DICOM series: its geometry needs read_volume)")
    img = _open_nifti(path)
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_affine(path, affine)
    shape = _squeezed_shape(img.shape)
    _check_dims(path, shape, dims)
    return affine, shape


def _read_nifti(path: str) -> Volume:
    img = _open_nifti(path)
    header = img.header
    try:
        # np.asarray(dataobj) applies scl_slope/scl_inter once and forces the whole (gzip) payload to decode now
        data = np.asarray(img.dataobj, dtype=np.float32)
    except FileNotFoundError as exc:
        raise CorruptVolumeError(f"{path}: the header's image file is missing ({exc})") from exc
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        raise CorruptVolumeError(f"{path}: truncated or corrupt image data ({type(exc).__name__}: {exc})") from exc
    zooms = tuple(float(z) for z in header.get_zooms())
    data = _squeeze_trailing(data)
    meta = {"path": path, "format": "nifti", "modality": None, "series_uid": None, "files": [path]}
    if data.ndim == 4:
        step = zooms[3] if len(zooms) > 3 else 0.0
        unit = header.get_xyzt_units()[1] if hasattr(header, "get_xyzt_units") else "unknown"
        meta["time_step"] = step / 1000.0 if unit == "msec" else step
        meta["time_unit"] = unit
    spacing = tuple(float(s) for s in np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0)))
    vol = Volume(data, np.asarray(img.affine, dtype=np.float64), spacing, meta)
    _check_affine(path, vol.affine)  # before axcodes: a degenerate affine has none
    vol.meta["axcodes"] = "".join(vol.axcodes) if data.ndim >= 3 else None
    return vol


def _is_dicom_file(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _squeezed_shape(shape) -> tuple[int, ...]:
    """``shape`` without trailing singleton axes beyond the third (NIfTI often stores 3D as X*Y*Z*1)."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _squeeze_trailing(data: np.ndarray) -> np.ndarray:
    """Drop trailing singleton axes beyond the third; spatial axes stay."""
    return data.reshape(_squeezed_shape(data.shape))


def _check_dims(path: str, shape: tuple[int, ...], dims: tuple[int, ...]) -> None:
    want = " or ".join(f"{d}D" for d in dims)
    shape, ndim = tuple(shape), len(shape)
    if ndim < 3 or min(shape[:3]) < 2:
        raise UnsupportedDimError(f"{path}: shape {shape} is 2D (a spatial axis has < 2 voxels); "
                                  f"expected a {want} volume")
    if ndim > 4:
        raise UnsupportedDimError(f"{path}: shape {shape} is {ndim}D; expected {want}")
    if ndim not in dims:
        hint = (" (a 4D time series; use the 'fmri' media kind, or select one volume)" if ndim == 4 else
                " (a 3D volume where a 4D time series is expected)")
        raise UnsupportedDimError(f"{path}: shape {shape} is {ndim}D{hint}; expected {want}")
    if ndim == 4 and shape[3] < 2:
        raise UnsupportedDimError(f"{path}: 4D with {shape[3]} time point(s); expected a time series")


def _check_finite(path: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        n_nan = int(np.isnan(arr).sum())
        raise NonFiniteError(f"{path}: {int(bad.sum())} non-finite voxels ({n_nan} NaN, {int(bad.sum()) - n_nan} Inf) "
                             f"of {arr.size}; refusing rather than propagating them (mask or fill them explicitly)")


def _check_affine(path: str, affine: np.ndarray) -> None:
    lin = affine[:3, :3]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(lin)) < 1e-9:
        raise VolumeError(f"{path}: degenerate voxel-to-world affine {np.round(lin, 4).tolist()}")


# ------------------------------------------------------------------------------------------------ hashing
_DIGESTS: dict[tuple, str] = {}


def _file_digest(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    got = _DIGESTS.get(key)
    if got is None:
        h = hashlib.blake2b(digest_size=20)
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        got = _DIGESTS[key] = h.hexdigest()
    return got


def source_digest(path: str | os.PathLike, series_uid: str | None = None) -> str:
    """Content hash of a volume's source: the file, or every file in a DICOM folder (+ the chosen series)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VolumeError(f"{path}: file not found")
    if not os.path.isdir(path):
        parts = [_file_digest(path)]
        # an Analyze/NIfTI pair: the .img holds the voxels
        for other in _pair_of(path):
            if os.path.exists(other):
                parts.append(_file_digest(other))
    else:
        names = sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
        parts = [f"{n}:{_file_digest(os.path.join(path, n))}" for n in names]
        parts.append(f"series={series_uid}")
    return hashlib.blake2b("|".join(parts).encode(), digest_size=20).hexdigest()


def _pair_of(path: str) -> list[str]:
    low = path.lower()
    if low.endswith(".hdr"):
        return [path[:-4] + ".img", path[:-4] + ".img.gz"]
    return []

"""DICOM series assembly for ``read_volume``: one folder -> one validated 3D ``Volume`` (pydicom).

Why its own module: DICOM folders fail in ways NIfTI files do not, and common readers stack them anyway
(shared/research/neuro3d.md 3.5, 3.7: MONAI stacks a gapped or mixed-orientation series without a word). Here:

* files are grouped by SeriesInstanceUID; a folder with several series is refused with the list of series
  (uid, number, description, file count) unless ``series_uid`` picks one;
* one ImageOrientationPatient per series (else "mixed orientations"), slices sorted by the projection of
  ImagePositionPatient on the slice normal (row x column), never by InstanceNumber or file name;
* duplicate positions, gaps (a step off the median by more than ``GAP_TOLERANCE``) and stacks not running along
  the normal (gantry tilt / shear) are refused; the slice spacing is the median position step;
* RescaleSlope/RescaleIntercept are applied exactly once per slice (``pydicom.pixels.apply_rescale``), so CT is HU;
* multi-frame (enhanced) objects, files without pixel data, colour images and undecodable pixel data are refused
  with the file named (compressed syntaxes may need ``pylibjpeg``/``gdcm`` installed).
"""
from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale

from patches.neuro.volume_io import (CorruptVolumeError, InconsistentSeriesError, MultipleSeriesError, UnsupportedDimError,
                                     Volume, VolumeError)

GAP_TOLERANCE = 0.10        # relative deviation of a slice step from the median step that counts as a gap
ORIENTATION_TOLERANCE = 1e-4  # absolute difference of direction cosines that counts as another orientation
DUPLICATE_TOLERANCE = 1e-3  # mm: two slices closer than this along the normal are duplicates
TILT_TOLERANCE_DEG = 0.5    # max angle between the stacking direction and the slice normal
_IGNORED_NAMES = {"DICOMDIR"}


def _scan(folder: str) -> dict[str, list[tuple[str, pydicom.Dataset]]]:
    series: dict[str, list[tuple[str, pydicom.Dataset]]] = defaultdict(list)
    names = sorted(n for n in os.listdir(folder)
                   if os.path.isfile(os.path.join(folder, n)) and not n.startswith(".") and n not in _IGNORED_NAMES)
    if not names:
        raise VolumeError(f"{folder}: folder holds no files (expected one DICOM series)")
    for name in names:
        fp = os.path.join(folder, name)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except InvalidDicomError as exc:
            raise CorruptVolumeError(f"{fp}: not a DICOM file ({exc}); a series folder must hold only the "
                                     f"series' files") from exc
        except Exception as exc:  # truncated header, bad VR, ...: name the file
            raise CorruptVolumeError(f"{fp}: unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
        uid = ds.get("SeriesInstanceUID")
        if not uid:
            raise VolumeError(f"{fp}: no SeriesInstanceUID; cannot tell which series the slice belongs to")
        series[str(uid)].append((fp, ds))
    return series


def describe_series(folder: str) -> dict[str, dict]:
    """``{series_uid: {"number", "description", "modality", "files"}}`` for every series in ``folder``."""
    out = {}
    for uid, items in _scan(folder).items():
        ds = items[0][1]
        out[uid] = {"number": ds.get("SeriesNumber"), "description": str(ds.get("SeriesDescription", "")),
                    "modality": ds.get("Modality"), "files": len(items)}
    return out


def read_dicom_series(folder: str, *, series_uid: str | None = None) -> Volume:
    series = _scan(folder)
    if series_uid is None and len(series) > 1:
        info = {uid: {"number": its[0][1].get("SeriesNumber"), "description": str(its[0][1].get("SeriesDescription", "")),
                      "modality": its[0][1].get("Modality"), "files": len(its)} for uid, its in series.items()}
        listing = "; ".join(f"{uid} (#{v['number']} {v['modality']} '{v['description']}', {v['files']} files)"
                            for uid, v in sorted(info.items()))
        raise MultipleSeriesError(f"{folder}: folder holds {len(series)} DICOM series; choose one with series_uid "
                                  f"(a reference {{\"path\": ..., \"series_uid\": ...}}): {listing}", info)
    if series_uid is not None:
        if series_uid not in series:
            raise VolumeError(f"{folder}: no series with SeriesInstanceUID {series_uid}; present: {sorted(series)}")
        items = series[series_uid]
    else:
        series_uid, items = next(iter(series.items()))
    where = f"{folder} (series {series_uid})"
    return _assemble(where, series_uid, items)


def _vec(ds: pydicom.Dataset, key: str, fp: str, n: int) -> np.ndarray:
    val = ds.get(key)
    if val is None or len(val) != n:
        raise VolumeError(f"{fp}: missing or malformed {key}; cannot place the slice in space")
    return np.asarray([float(v) for v in val], dtype=np.float64)


def _assemble(where: str, series_uid: str, items: list[tuple[str, pydicom.Dataset]]) -> Volume:
    for fp, ds in items:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(f"{fp}: multi-frame (enhanced) DICOM is not supported (per-frame geometry and rescale); "
                              f"convert the series to NIfTI (e.g. dcm2niix) first")
    if len(items) < 2:
        raise UnsupportedDimError(f"{where}: a single slice is 2D; expected a 3D series ({items[0][0]})")
    iops = [_vec(ds, "ImageOrientationPatient", fp, 6) for fp, ds in items]
    distinct: list[tuple[np.ndarray, list[str]]] = []
    for (fp, _), iop in zip(items, iops):
        for ref, files in distinct:
            if np.max(np.abs(ref - iop)) <= ORIENTATION_TOLERANCE:
                files.append(os.path.basename(fp))
                break
        else:
            distinct.append((iop, [os.path.basename(fp)]))
    if len(distinct) > 1:
        listing = "; ".join(f"{np.round(o, 4).tolist()} in {fs[:3]}{'...' if len(fs) > 3 else ''}" for o, fs in distinct)
        raise InconsistentSeriesError(f"{where}: mixed orientations ({len(distinct)} ImageOrientationPatient values: "
                                      f"{listing}); this is not one stack of parallel slices")
    row, col = iops[0][:3], iops[0][3:]
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3:
        raise VolumeError(f"{where}: ImageOrientationPatient {iops[0].tolist()} is not two orthonormal vectors")
    ipps = np.stack([_vec(ds, "ImagePositionPatient", fp, 3) for fp, ds in items])
    pos = ipps @ normal
    order = np.argsort(pos, kind="stable")
    items = [items[i] for i in order]
    pos, ipps = pos[order], ipps[order]
    steps = np.diff(pos)
    names = [os.path.basename(fp) for fp, _ in items]
    dup = np.nonzero(steps < DUPLICATE_TOLERANCE)[0]
    if dup.size:
        pairs = ", ".join(f"{names[i]} and {names[i + 1]} at {pos[i]:.3f} mm" for i in dup[:5])
        raise InconsistentSeriesError(f"{where}: duplicate slice positions ({dup.size}): {pairs}")
    spacing_z = float(np.median(steps))
    off = np.nonzero(np.abs(steps - spacing_z) > GAP_TOLERANCE * spacing_z)[0]
    if off.size:
        gaps = ", ".join(f"{steps[i]:.2f} mm between {names[i]} ({pos[i]:.2f}) and {names[i + 1]} ({pos[i + 1]:.2f})"
                         for i in off[:5])
        raise InconsistentSeriesError(f"{where}: slice spacing is not uniform (median {spacing_z:.3f} mm; "
                                      f"{gaps}); missing slices or a gap, refusing to stack")
    travel = ipps[-1] - ipps[0]
    cosang = float(travel @ normal / np.linalg.norm(travel))
    if np.degrees(np.arccos(min(1.0, cosang))) > TILT_TOLERANCE_DEG:
        raise InconsistentSeriesError(f"{where}: slices are not stacked along their normal (angle "
                                      f"{np.degrees(np.arccos(min(1.0, cosang))):.1f} deg: gantry tilt or shear); "
                                      f"resample it (e.g. dcm2niix) first")
    slices, modality = [], items[0][1].get("Modality")
    shape0 = None
    for fp, _ in items:
        ds = _read_pixels(fp)
        arr = ds.pixel_array
        if arr.ndim != 2:
            raise VolumeError(f"{fp}: pixel data of shape {arr.shape}; expected one grayscale 2D slice")
        if shape0 is None:
            shape0 = arr.shape
        elif arr.shape != shape0:
            raise InconsistentSeriesError(f"{where}: {fp} is {arr.shape}, other slices are {shape0}")
        # slope/intercept applied exactly once, per slice (they may differ between slices)
        slices.append(np.asarray(apply_rescale(arr, ds), dtype=np.float32).T)
    spacing_xy = [float(v) for v in items[0][1].get("PixelSpacing", [])]
    if len(spacing_xy) != 2 or min(spacing_xy) <= 0:
        raise VolumeError(f"{items[0][0]}: missing or invalid PixelSpacing")
    data = np.stack(slices, axis=2)  # [i (column), j (row), k (slice)]
    lps = np.eye(4)
    lps[:3, 0] = row * spacing_xy[1]
    lps[:3, 1] = col * spacing_xy[0]
    lps[:3, 2] = normal * spacing_z
    lps[:3, 3] = ipps[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> RAS (nibabel convention)
    meta = {"path": where.split(" (series")[0], "format": "dicom", "modality": str(modality) if modality else None,
            "series_uid": series_uid, "files": [fp for fp, _ in items], "slice_positions": pos.tolist(),
            "rescale_applied": True}
    vol = Volume(data, affine, (spacing_xy[1], spacing_xy[0], spacing_z), meta)
    vol.meta["axcodes"] = "".join(vol.axcodes)
    return vol


def _read_pixels(fp: str) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(fp)
    except Exception as exc:
        raise CorruptVolumeError(f"{fp}: unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise VolumeError(f"{fp}: no pixel data (a DICOMDIR/report/presentation object?); not an image slice")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise VolumeError(f"{fp}: {ds.get('SamplesPerPixel')} samples per pixel (colour); expected grayscale")
    try:
        ds.pixel_array  # decode now: truncated pixel data or a missing decoder fail here, named
    except Exception as exc:
        raise CorruptVolumeError(f"{fp}: cannot decode pixel data ({type(exc).__name__}: {exc}); truncated, or the "
                                 f"transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')} needs a decoder "
                                 f"(pip install pylibjpeg pylibjpeg-openjpeg / python-gdcm)") from exc
    return ds

"""Boxes on volumes: a row's ``voxel`` or ``world`` boxes -> 0-1000 boxes in the prepared ``[D, H, W]`` frame.

What the ``volume``/``fmri`` readers' ``map_boxes`` runs (``internvl.media.base.MediaReader.map_boxes``; row format
and the 0-1000 grammar in ``internvl.grounding``). The geometry is the preprocessor's own
(``VolumePreprocessor.voxel_to_output``: the same orientation transform, resampled size and crop/pad offsets that
``prepare`` applies to the array), so image and box cannot disagree:

1. source box -> extent in the file's voxel-centre coordinates: a ``voxel`` box ``[i1, j1, k1, i2, j2, k2]``
   (first and last voxel, inclusive) covers ``i1 - 0.5 .. i2 + 0.5``; a ``world`` box (two opposite corners, mm,
   RAS+) has its 8 corners mapped by the inverse affine (``nibabel.affines.apply_affine``) and the axis-aligned
   box around them is taken (an oblique affine makes it larger than the world box; that is the tightest box in
   the voxel grid that holds it);
2. the extent must lie inside the file (``check_in_view``, else ``BoxOutOfViewError``);
3. MONAI's ``apply_affine_to_boxes`` maps it by ``voxel_to_output`` (a permutation/flip/scale/shift, so its two
   corners suffice) to edge coordinates of the prepared grid, which must lie inside the kept field of view;
4. axes reordered to the grammar's (x, y, z) = (W, H, D) and normalised with ``round(edge / N * 1000)``.

The source geometry (affine, shape) is read from the NIfTI header (no voxel data) or, for a DICOM folder, from the
full series read (``read_volume``; the only way to know its geometry).
"""
from __future__ import annotations

import itertools
import os

import nibabel as nib
import numpy as np

from internvl.grounding import check_in_view, normalize_edges
from internvl.media.base import BoxesUnsupportedError
from patches.neuro.preprocess import VolumePreprocessor
from patches.neuro.volume_io import read_nifti_geometry, read_volume


def source_geometry(path: str, series_uid: str | None = None, ndim: int = 3) -> tuple[np.ndarray, tuple[int, ...]]:
    """(4x4 voxel -> world affine, spatial shape) of a volume file, as ``read_volume`` reports them."""
    if os.path.isdir(path) or series_uid is not None:
        vol = read_volume(path, ndim=ndim, series_uid=series_uid)
        return vol.affine, tuple(vol.array.shape[:3])
    affine, shape = read_nifti_geometry(path, ndim=ndim)
    return affine, shape[:3]


def source_extent(box, space: str, affine: np.ndarray) -> np.ndarray:
    """``[lo_i, lo_j, lo_k, hi_i, hi_j, hi_k]`` in the file's voxel-centre coordinates (module docstring, step 1)."""
    b = np.asarray(box, dtype=np.float64)
    if space == "voxel":
        return np.concatenate([b[:3] - 0.5, b[3:] + 0.5])
    if space == "world":
        corners = np.array(list(itertools.product(*zip(b[:3], b[3:]))))
        vox = nib.affines.apply_affine(np.linalg.inv(affine), corners)
        return np.concatenate([vox.min(axis=0), vox.max(axis=0)])
    raise BoxesUnsupportedError(f"volumes take 'voxel' or 'world' boxes, got space {space!r}")


def map_volume_boxes(path: str, preprocessor: VolumePreprocessor, boxes, space: str, *,
                     series_uid: str | None = None, ndim: int = 3) -> list[tuple[int, ...]]:
    """Source boxes of ``path`` -> 0-1000 ``(x1, y1, z1, x2, y2, z2)`` boxes of the prepared volume."""
    import torch
    from monai.apps.detection.transforms.box_ops import apply_affine_to_boxes

    affine, shape = source_geometry(path, series_uid, ndim)
    to_output, out_shape = preprocessor.voxel_to_output(affine, shape)
    out = []
    for box in boxes:
        what = f"{path}: {space} box {list(box)}"
        extent = source_extent(box, space, affine)
        check_in_view([(lo + 0.5, hi + 0.5) for lo, hi in zip(extent[:3], extent[3:])], shape,
                      f"{what} (file grid {'x'.join(map(str, shape))})", "ijk")
        mapped = apply_affine_to_boxes(torch.as_tensor(extent[None], dtype=torch.float64),
                                       torch.as_tensor(to_output, dtype=torch.float64))[0].numpy()
        lo_hi_dhw = list(zip(mapped[:3], mapped[3:]))
        out.append(normalize_edges(lo_hi_dhw[::-1], out_shape[::-1],
                                   f"{what} (prepared grid D, H, W = {'x'.join(map(str, out_shape))})"))
    return out

"""Fixtures for box-aware preprocessing tests: minimal reader configs (the attributes readers read) and a lesion
volume / bright-rectangle images written with nibabel and PIL."""
from __future__ import annotations

import types

import numpy as np
import pytest

# the lesion volume, RAS voxel order [x, y, z]; anisotropic spacing so resampling happens, crop on z/y, pad on x
SHAPE, SPACING, ORIGIN = (30, 26, 22), (1.0, 1.5, 2.0), (-15.0, -20.0, -22.0)
LESION = ((18, 23), (8, 12), (6, 10))  # first and last voxel (inclusive) of the lesion along x, y, z
PREPROCESS = {"target_spacing": [1.0, 1.0, 1.0], "volume_shape": [40, 36, 36]}  # (D, H, W)


def lesion_volume() -> np.ndarray:
    arr = np.full(SHAPE, 100.0, dtype=np.float32)
    (x1, x2), (y1, y2), (z1, z2) = LESION
    arr[x1:x2 + 1, y1:y2 + 1, z1:z2 + 1] = 250.0
    return arr


def world_box(lesion=LESION) -> list[float]:
    """The lesion's outer voxel edges in world mm (RAS), ``[x1, y1, z1, x2, y2, z2]``."""
    lo = [o + s * (a - 0.5) for o, s, (a, _) in zip(ORIGIN, SPACING, lesion)]
    hi = [o + s * (b + 0.5) for o, s, (_, b) in zip(ORIGIN, SPACING, lesion)]
    return lo + hi


def volume_reader(**preprocess):
    from patches.neuro.readers import VolumeReader

    vision = types.SimpleNamespace(in_channels=1, preprocess={**PREPROCESS, **preprocess})
    return VolumeReader(types.SimpleNamespace(vision_config=vision), {})


def image_reader(**options):
    from internvl.media.image import ImageReader

    cfg = types.SimpleNamespace(image_size=28, dynamic_image_size=True, use_thumbnail=True, min_dynamic_patch=1,
                                max_dynamic_patch=6, pad2square=False, vision_config=types.SimpleNamespace())
    return ImageReader(cfg, options)


@pytest.fixture(scope="module")
def lesion_files(tmp_path_factory):
    """The same lesion volume saved as NIfTI in RAS, LPS and PSR voxel order (same world position)."""
    from patches.neuro.synthetic import save_nifti

    root = tmp_path_factory.mktemp("lesion")
    return {ax: save_nifti(lesion_volume(), str(root / f"lesion_{ax}.nii.gz"), spacing=SPACING, axcodes=ax,
                           origin=ORIGIN) for ax in ("RAS", "LPS", "PSR")}

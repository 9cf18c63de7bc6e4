"""Tissue mask for tiling: Otsu on HSV saturation of a low-resolution view, small blobs removed.

H&E tissue is coloured (saturated) while glass and background are grey/white, so a global Otsu threshold on the
saturation channel of a ~8 µm/px thumbnail separates the two on most slides. The threshold never goes below
``min_saturation`` so a blank slide (all background, Otsu splitting noise) yields no tissue instead of random
tiles. Connected components smaller than ``min_area_um2`` (dust, debris) are dropped. A grid tile is kept when at
least ``min_tile_fraction`` of its footprint is tissue.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class TissueParams:
    method: str = "otsu"              # "otsu" or "none" (every grid tile)
    mask_mpp: float = 8.0             # µm/px of the view the mask is computed on (~1.25x)
    max_side: int = 4096              # cap on the mask's longer side (pixels)
    min_saturation: float = 15.0      # floor on the threshold (0..255)
    min_area_um2: float = 10_000.0    # components smaller than (100 µm)^2 are dropped
    min_tile_fraction: float = 0.25   # tissue fraction a tile footprint needs to be kept

    def to_dict(self) -> dict:
        return asdict(self)


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold for uint8 values: the cut maximising between-class variance (returns 0..255)."""
    hist = np.bincount(values.ravel().astype(np.uint8), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256, dtype=np.float64)
    weight0 = np.cumsum(hist)
    weight1 = total - weight0
    mean0_num = np.cumsum(hist * levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean0 = mean0_num / weight0
        mean1 = (mean0_num[-1] - mean0_num) / weight1
        between = weight0 * weight1 * (mean0 - mean1) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    # class 0 is values <= t; the threshold separating "> t" is t itself
    return float(np.argmax(between))


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (0..255) of an RGB uint8 image, via PIL's HSV conversion."""
    from PIL import Image

    return np.asarray(Image.fromarray(rgb, "RGB").convert("HSV"), dtype=np.uint8)[..., 1]


def mask_from_rgb(rgb: np.ndarray, mask_mpp: float, params: TissueParams) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of an RGB view at ``mask_mpp`` µm/px and the saturation threshold used."""
    sat = saturation(rgb)
    threshold = max(otsu_threshold(sat), float(params.min_saturation))
    mask = sat > threshold
    if params.min_area_um2 > 0 and mask.any():
        labels, n = ndimage.label(mask)
        areas = np.bincount(labels.ravel(), minlength=n + 1) * (mask_mpp ** 2)
        small = areas < params.min_area_um2
        small[0] = True  # background label
        mask = ~small[labels]
    return mask, threshold


def tissue_mask(handle, slide_mpp: float, params: TissueParams) -> tuple[np.ndarray, tuple[float, float], float]:
    """Mask of a whole slide: (mask [h, w] bool, level-0 pixels per mask pixel (x, y), threshold)."""
    width, height = handle.dimensions
    factor = max(params.mask_mpp / slide_mpp, max(width, height) / params.max_side, 1.0)
    size = (max(1, int(math.ceil(width / factor))), max(1, int(math.ceil(height / factor))))
    thumb = np.asarray(handle.get_thumbnail(size).convert("RGB"), dtype=np.uint8)
    scale = (width / thumb.shape[1], height / thumb.shape[0])
    mask, threshold = mask_from_rgb(thumb, slide_mpp * (scale[0] + scale[1]) / 2, params)
    return mask, scale, threshold


def tile_tissue_fraction(mask: np.ndarray, scale: tuple[float, float], coords: np.ndarray,
                         footprint: int) -> np.ndarray:
    """Fraction of each level-0 tile footprint that the mask marks as tissue (summed-area table lookup)."""
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    x0 = np.clip(np.floor(coords[:, 0] / scale[0]).astype(np.int64), 0, w - 1)
    y0 = np.clip(np.floor(coords[:, 1] / scale[1]).astype(np.int64), 0, h - 1)
    x1 = np.clip(np.ceil((coords[:, 0] + footprint) / scale[0]).astype(np.int64), x0 + 1, w)
    y1 = np.clip(np.ceil((coords[:, 1] + footprint) / scale[1]).astype(np.int64), y0 + 1, h)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return (inside / ((x1 - x0) * (y1 - y0))).astype(np.float32)

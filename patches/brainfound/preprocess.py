"""Brainfound slice preprocessing: CT windows, MRI per-slice scaling, volume -> slice stack, 2D augmentations.

Brainfound feeds its UNet 3-channel (grey replicated) 2D slices scaled to [-1, 1]:

* CT (Hounsfield units): a window (width, centre) clips to [centre - width/2, centre + width/2] and maps that range
  to [0, 1]. Stage 1 draws one of four windows per slice, (160,40) (80,40) (1400,400) (250,40); stages 2 and 3 use
  (160,40). We map the window bounds themselves to 0/1 (standard windowing); Brainfound min-max-scales the clipped
  array, which is the same thing whenever the slice reaches both bounds (air and bone in any head CT).
* MRI: per-slice min-max to [0, 1] (a constant slice, e.g. an all-zero pad slice, maps to 0).
* Then (x - 0.5) / 0.5.

Augmentations (training only; torch, no MONAI dependency) follow Brainfound's MONAI chains: random scale-crop with
an edge scale in [0.9, 1.1] (a scale above 1 is capped at the full image, as MONAI's RandScaleCrop does), resize,
random flips of both axes, random 90-degree rotation (stage 1) or a small random rotation (stage 2), optional
gamma-contrast jitter, clip to [0, 1]. Every random draw comes from an explicit ``torch.Generator`` so a sample's
augmentation is a pure function of (seed, epoch, index): resumed runs see exactly the same data.

A slice stack from a volume ([D, H, W], slice axis first) takes ``num_slices`` slices by ``slice_select``:
``uniform`` (evenly spaced over the volume; the default), ``first`` (Brainfound stage 2: slices 1..S, i.e.
``[1:S+1]``) or ``center`` (the middle S). Volumes with fewer slices are zero-padded symmetrically (pad slices are
0 before normalisation, i.e. -1 after, as in Brainfound).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CT_WINDOWS_STAGE1: tuple[tuple[float, float], ...] = ((160, 40), (80, 40), (1400, 400), (250, 40))
CT_WINDOW_DEFAULT: tuple[float, float] = (160, 40)
MRI_MODALITIES = ("T1", "T2", "pub_mri", "MRI", "FLAIR", "DWI")
SLICE_SELECT = ("uniform", "first", "center")


def is_ct(modality: str) -> bool:
    return str(modality).upper() == "CT"


def window_ct(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip HU to the window (width, centre) and map it to [0, 1]."""
    width, centre = float(window[0]), float(window[1])
    if width <= 0:
        raise ValueError(f"CT window width must be > 0, got {window}")
    lo = centre - width / 2.0
    return np.clip((hu.astype(np.float32) - lo) / width, 0.0, 1.0)


def minmax_per_slice(vol: np.ndarray) -> np.ndarray:
    """Min-max each slice of ``[..., H, W]`` to [0, 1]; a constant slice becomes 0."""
    x = vol.astype(np.float32)
    lo = x.min(axis=(-2, -1), keepdims=True)
    hi = x.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def to_unit(arr: np.ndarray, modality: str, window: tuple[float, float] | None = None) -> np.ndarray:
    """Raw slice(s) -> [0, 1]: CT window (``window`` or the default 160/40) or MRI per-slice min-max."""
    if is_ct(modality):
        return window_ct(arr, window or CT_WINDOW_DEFAULT)
    return minmax_per_slice(arr)


def select_slices(depth: int, num_slices: int, how: str = "uniform") -> tuple[list[int], int, int]:
    """Indices to keep and (pad_before, pad_after) so that the result has exactly ``num_slices`` slices."""
    if how not in SLICE_SELECT:
        raise ValueError(f"slice_select must be one of {SLICE_SELECT}, got {how!r}")
    if num_slices <= 0 or depth == num_slices:
        return list(range(depth)), 0, 0
    if depth > num_slices:
        if how == "uniform":
            idx = np.linspace(0, depth - 1, num_slices).round().astype(int).tolist()
        elif how == "first":  # Brainfound: data[1:S+1]
            idx = list(range(1, num_slices + 1))
        else:
            start = (depth - num_slices) // 2
            idx = list(range(start, start + num_slices))
        return idx, 0, 0
    pad = num_slices - depth
    return list(range(depth)), pad // 2, pad - pad // 2


def volume_to_unit_slices(vol: np.ndarray, modality: str, num_slices: int, *, slice_select: str = "uniform",
                          window: tuple[float, float] | None = None) -> torch.Tensor:
    """``[D, H, W]`` raw volume -> ``[S, H, W]`` float tensor in [0, 1] (``num_slices <= 0`` keeps all D)."""
    if vol.ndim != 3:
        raise ValueError(f"expected a [D, H, W] volume, got shape {tuple(vol.shape)}")
    idx, before, after = select_slices(vol.shape[0], num_slices, slice_select)
    unit = torch.from_numpy(to_unit(np.asarray(vol[idx]), modality, window))
    if before or after:
        unit = torch.cat([unit.new_zeros(before, *unit.shape[1:]), unit, unit.new_zeros(after, *unit.shape[1:])])
    return unit


def resize_slices(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[..., H, W]`` -> ``[..., size, size]`` (bilinear, antialiased when shrinking)."""
    if x.shape[-2:] == (size, size):
        return x
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:]).float()
    shrink = x.shape[-1] > size or x.shape[-2] > size
    out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return out.reshape(*lead, size, size)


def to_model_input(unit: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` in [0, 1] -> ``[..., 3, H, W]`` in [-1, 1] (grey replicated to RGB)."""
    x = unit.clamp(0.0, 1.0)
    return ((x - 0.5) / 0.5).unsqueeze(-3).expand(*x.shape[:-2], 3, *x.shape[-2:]).contiguous()


@dataclass
class SliceAugment:
    """Brainfound's 2D augmentations, applied identically to every slice of ``[..., H, W]`` in [0, 1]."""

    size: int = 256
    scale: tuple[float, float] = (0.9, 1.1)
    flip: bool = True
    rot90: bool = True
    rotate_rad: float = 0.0
    gamma_prob: float = 0.0
    gamma: tuple[float, float] = (0.97, 1.03)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]

        def u(a: float, b: float) -> float:
            return a + (b - a) * float(torch.rand((), generator=g))

        ch, cw = min(h, max(1, round(h * u(*self.scale)))), min(w, max(1, round(w * u(*self.scale))))
        top = int(torch.randint(0, h - ch + 1, (), generator=g))
        left = int(torch.randint(0, w - cw + 1, (), generator=g))
        x = resize_slices(x[..., top:top + ch, left:left + cw], self.size)
        if self.flip:
            if float(torch.rand((), generator=g)) < 0.5:
                x = x.flip(-2)
            if float(torch.rand((), generator=g)) < 0.5:
                x = x.flip(-1)
        if self.rot90:
            k = int(torch.randint(0, 4, (), generator=g))
            x = torch.rot90(x, k, dims=(-2, -1))
        if self.rotate_rad > 0:
            x = _rotate(x, u(-self.rotate_rad, self.rotate_rad))
        if self.gamma_prob > 0 and float(torch.rand((), generator=g)) < self.gamma_prob:
            x = x.clamp(0, 1) ** u(*self.gamma)
        return x.clamp(0.0, 1.0)


def _rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate ``[..., H, W]`` about the centre by ``angle`` radians (bilinear, zeros outside)."""
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])
    c, s = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=flat.dtype).expand(flat.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    return F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False).reshape(
        *lead, *x.shape[-2:])


def sample_generator(seed: int, *keys: int) -> torch.Generator:
    """A generator seeded by (seed, keys...), e.g. (seed, epoch, index): reproducible per-sample randomness."""
    mixed = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(k) & 0xFFFFFFFF for k in keys]])
    return torch.Generator().manual_seed(int(mixed.generate_state(1, dtype=np.uint64)[0] >> 1))

"""Volume augmentations with MONAI: spatial (foreground-keeping random crop, flips, in-plane axis permutations) and
intensity (gamma, brightness/contrast before normalisation, Gaussian noise after it), seeded, off at evaluation.

Why: NeuroVFM trains its backbone with exactly these (random crop with foreground detection, flips on each axis,
axis permutations; gamma, brightness/contrast, post-normalisation noise); we compose MONAI's transforms instead of
re-writing them. Used by the YAML training (``patches.neuro.train``: ``dataset.*.params.augment`` = spatial,
``system.params.enable_aug`` = intensity) and by the VLM fine-tune (a meta-JSON entry's ``data_augment: true``
turns on both for ``volume`` rows; ``volume_augment: {...}`` overrides ``AugmentConfig`` fields).

* ``AugmentConfig`` (frozen; ``from_dict`` refuses unknown keys).
* ``VolumeAugmenter(config)``: ``.spatial(image [C, D, H, W], mask [D, H, W], seed)`` -> both, transformed alike;
  ``.intensity(image, seed)`` on [0, 1] data; ``.noise(image, seed)`` after z-scoring. Each call seeds its MONAI
  chain from ``seed`` (same seed, same result; the caller derives seeds from run seed, epoch and index so a
  resumed run repeats them). The random crop first crops to the foreground bounding box (MONAI
  ``CropForegroundd`` on the mask) and then takes a random window of at most ``crop_size`` inside it, so a
  foreground that fits in ``crop_size`` is kept whole and a crop never lands on background only.
* Laterality: a left-right flip changes the answer to "which hemisphere?" questions; drop that axis
  (``flip_axes: [0, 1]``; W is the left-right axis of RAS volumes) for such tasks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class AugmentConfig:
    crop_size: tuple | None = None        # voxels (D, H, W); None: no crop
    flip_axes: tuple = (0, 1, 2)          # spatial axes (D, H, W) flipped with flip_prob each
    flip_prob: float = 0.5
    permute_axes: tuple | None = (1, 2)   # two axes swapped/rotated (RandRotate90 in their plane); None: off
    permute_prob: float = 0.5
    keep_shape: bool = False              # permute only when both axes have one size (fixed-grid encoders)
    gamma: tuple = (0.7, 1.5)
    gamma_prob: float = 0.3
    contrast: float = 0.1                 # intensity scaled by (1 + U(-c, c))
    brightness: float = 0.1               # intensity shifted by U(-b, b)
    contrast_brightness_prob: float = 0.3
    noise_std: float = 0.05               # Gaussian noise after normalisation
    noise_prob: float = 0.3

    def __post_init__(self):
        if self.crop_size is not None:
            object.__setattr__(self, "crop_size", tuple(int(v) for v in self.crop_size))
            if len(self.crop_size) != 3 or min(self.crop_size) < 1:
                raise ValueError(f"crop_size must be 3 positive voxel counts (D, H, W), got {self.crop_size}")
        object.__setattr__(self, "flip_axes", tuple(int(a) for a in self.flip_axes))
        if set(self.flip_axes) - {0, 1, 2}:
            raise ValueError(f"flip_axes must be among 0, 1, 2 (D, H, W), got {self.flip_axes}")
        if self.permute_axes is not None:
            object.__setattr__(self, "permute_axes", tuple(int(a) for a in self.permute_axes))
            if len(self.permute_axes) != 2 or set(self.permute_axes) - {0, 1, 2} or len(set(self.permute_axes)) != 2:
                raise ValueError(f"permute_axes must be two different axes among 0, 1, 2, got {self.permute_axes}")
        for name in ("flip_prob", "permute_prob", "gamma_prob", "contrast_brightness_prob", "noise_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "AugmentConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d or {}) - names
        if unknown:
            raise ValueError(f"unknown volume augmentation option(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**(d or {}))

    def params(self) -> dict:
        return asdict(self)


def _seed(seed) -> int:
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


class VolumeAugmenter:
    def __init__(self, config: AugmentConfig | dict | None = None):
        # MONAI is imported here, not at module level: importing the plugin (every run) should not pay for it
        from monai.transforms import (Compose, RandAdjustContrastd, RandFlipd, RandGaussianNoised, RandRotate90d,
                                      RandScaleIntensityd, RandShiftIntensityd)

        self.config = config if isinstance(config, AugmentConfig) else AugmentConfig.from_dict(config)
        c, keys = self.config, ["image", "mask"]
        self._flips = [RandFlipd(keys, prob=c.flip_prob, spatial_axis=a) for a in c.flip_axes]
        self._rotate = (RandRotate90d(keys, prob=c.permute_prob, max_k=3, spatial_axes=c.permute_axes)
                        if c.permute_axes else None)
        self._intensity = Compose([
            RandAdjustContrastd(["image"], prob=c.gamma_prob, gamma=c.gamma),
            RandScaleIntensityd(["image"], factors=c.contrast, prob=c.contrast_brightness_prob),
            RandShiftIntensityd(["image"], offsets=c.brightness, prob=c.contrast_brightness_prob)])
        self._noise = RandGaussianNoised(["image"], prob=c.noise_prob, std=c.noise_std)

    def spatial(self, image: torch.Tensor, mask: torch.Tensor, seed) -> tuple[torch.Tensor, torch.Tensor]:
        """``image [C, D, H, W]``, ``mask [D, H, W]`` (bool or 0/1) -> cropped/flipped/permuted alike."""
        from monai.transforms import CropForegroundd, RandSpatialCropd

        c = self.config
        data = {"image": torch.as_tensor(image), "mask": torch.as_tensor(mask)[None].float()}
        chain = []
        if c.crop_size is not None and bool(data["mask"].any()):
            chain.append(CropForegroundd(["image", "mask"], source_key="mask", select_fn=lambda m: m > 0.5,
                                         allow_smaller=True))
        chain += self._flips
        if self._rotate is not None:
            a, b = c.permute_axes
            if not c.keep_shape or image.shape[1 + a] == image.shape[1 + b]:
                chain.append(self._rotate)
        rng_seed = _seed(seed)
        out = data
        for i, t in enumerate(chain):
            if hasattr(t, "set_random_state"):
                t.set_random_state(seed=(rng_seed + i) % (2 ** 32))
            out = t(out)
            if isinstance(t, CropForegroundd):  # then a random window of at most crop_size inside the box
                shape = out["image"].shape[1:]
                roi = tuple(min(s, w) for s, w in zip(shape, c.crop_size))
                crop = RandSpatialCropd(["image", "mask"], roi_size=roi, random_size=False)
                crop.set_random_state(seed=(rng_seed + 97) % (2 ** 32))
                out = crop(out)
        return _plain(out["image"]).contiguous(), _plain(out["mask"])[0] > 0.5

    def intensity(self, image: torch.Tensor, seed) -> torch.Tensor:
        """Gamma and brightness/contrast on [0, 1] data (before normalisation)."""
        self._intensity.set_random_state(seed=_seed(seed))
        return _plain(self._intensity({"image": torch.as_tensor(image)})["image"]).contiguous()

    def noise(self, image: torch.Tensor, seed) -> torch.Tensor:
        """Gaussian noise, applied after normalisation."""
        self._noise.set_random_state(seed=_seed(seed))
        return _plain(self._noise({"image": torch.as_tensor(image)})["image"]).contiguous()

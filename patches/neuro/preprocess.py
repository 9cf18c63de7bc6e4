"""Volume preprocessing: ``Volume`` -> normalised ``[C, D, H, W]`` (or ``[C, T, D, H, W]``) + foreground mask.

Public API (reused by the Brainfound plugin):

* ``PreprocessConfig`` (frozen dataclass; ``PreprocessConfig.from_dict(d)`` ignores no key silently: unknown keys
  raise). Every field is part of the cache key (``params()``), so a changed pipeline never reuses a stale cache.
* ``VolumePreprocessor(config)``:
    ``.prepare(volume) -> Prepared(array, mask, spacing, meta)``: the deterministic part (cached):
        1. reorient to ``orientation`` (default RAS) by axis permutation/flip only (``nibabel.orientations``;
           oblique data goes to the closest canonical orientation, no resampling), then transpose the voxel axes
           ``(x, y, z)`` to ``(D, H, W) = (z, y, x)``: D runs inferior->superior, H posterior->anterior,
           W left->right for RAS;
        2. resample to ``target_spacing`` (mm along D, H, W; ``None`` keeps the native grid) with trilinear
           interpolation (torch); 4D series are resampled frame by frame on the same grid;
        3. intensity to [0, 1] per channel: MRI -> clip to the ``mri_percentiles`` (0.5, 99.5) then min-max;
           CT (HU) -> one channel per window in ``ct_windows`` (NeuroVFM: brain [0, 80], blood/subdural
           [-20, 180], bone [-800, 2000]), each clipped and scaled; fMRI -> the same percentile scaling over
           the whole run;
        4. foreground mask: CT HU > ``ct_foreground_hu`` (-500, NeuroVFM); MRI > ``mri_foreground_percentile``
           (10th, NeuroVFM) of the (temporal-mean) intensities;
        5. centre crop / zero pad to ``volume_shape`` (D, H, W; ``None`` keeps the resampled shape); padding is
           background (value 0, mask 0). For 4D, ``num_frames`` is NOT applied here (the cache keeps all frames).
    ``.finalize(prepared_array, *, train) -> torch.Tensor``: the per-read part (not cached): CT window choice
        (``window_mode`` "stack": all windows as channels; "sample": one window drawn with ``window_probs`` in
        training, the first in evaluation; "series": each window becomes a series of a study), temporal crop to
        ``num_frames`` (random in training, centred otherwise) and the optional z-score (``zscore``: NeuroVFM's
        per-view mean/std, or explicit ``[[mean, std], ...]``).
    ``.voxel_to_output(affine, shape)``: the geometry of steps 1, 2 and 5 as one 4x4 matrix (file voxel ->
        prepared grid), built from the same pieces the array steps call, for placing boxes (``patches.neuro.boxes``).
    ``.out_channels``: channels of the finalised item (what the encoder's ``in_channels`` must be).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from patches.neuro.volume_io import Volume, VolumeError

PIPELINE_VERSION = 1  # bump when the code of a step changes meaning; part of the cache key

CT_WINDOWS: dict[str, tuple[float, float]] = {  # HU [lo, hi] = level -/+ width/2 (NeuroVFM)
    "brain": (0.0, 80.0),      # W80 / L40
    "blood": (-20.0, 180.0),   # W200 / L80 (subdural)
    "bone": (-800.0, 2000.0),  # W2800 / L600
}
NEUROVFM_ZSCORE: dict[str, tuple[float, float]] = {  # per-view mean/std on the [0, 1] scale (NeuroVFM)
    "mri": (0.3141, 0.2623), "brain": (0.4139, 0.4059), "blood": (0.3184, 0.3605), "bone": (0.2719, 0.1875),
}


def _tuple(v, n=None, cast=float):
    if v is None:
        return None
    out = tuple(cast(x) for x in (v if isinstance(v, (list, tuple)) else [v] * (n or 1)))
    if n is not None and len(out) != n:
        raise ValueError(f"expected {n} values, got {v!r}")
    return out


@dataclass(frozen=True)
class PreprocessConfig:
    modality: str = "mri"                       # "mri" | "ct"
    orientation: str = "RAS"                    # canonical axcodes of (x, y, z) before the (D, H, W) transpose
    target_spacing: tuple | None = (1.0, 1.0, 1.0)  # mm along (D, H, W); None keeps native spacing
    volume_shape: tuple | None = (128, 128, 128)    # (D, H, W) after crop/pad; None keeps the resampled shape
    mri_percentiles: tuple = (0.5, 99.5)
    mri_foreground_percentile: float = 10.0
    ct_windows: tuple = ("brain", "blood", "bone")  # names in CT_WINDOWS or [lo, hi] pairs
    ct_foreground_hu: float = -500.0
    window_mode: str = "stack"                  # "stack" | "sample" | "series"
    window_probs: tuple | None = (0.7, 0.15, 0.15)
    num_frames: int | None = None               # 4D: frames per item (temporal crop after the cache)
    zscore: Any = None                          # None | "neurovfm" | [[mean, std], ...] per output channel
    version: int = PIPELINE_VERSION

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass normalisation)
        set_("modality", str(self.modality).lower())
        if self.modality in ("mr", "t1", "t2", "flair"):
            set_("modality", "mri")
        if self.modality not in ("mri", "ct"):
            raise ValueError(f"modality must be 'mri' or 'ct', got {self.modality!r}")
        set_("target_spacing", _tuple(self.target_spacing, 3))
        set_("volume_shape", _tuple(self.volume_shape, 3, int))
        set_("mri_percentiles", _tuple(self.mri_percentiles, 2))
        wins = tuple(w if isinstance(w, str) else _tuple(w, 2) for w in self.ct_windows)
        for w in wins:
            if isinstance(w, str) and w not in CT_WINDOWS:
                raise ValueError(f"unknown CT window {w!r}; known: {sorted(CT_WINDOWS)} or give [lo, hi] in HU")
        set_("ct_windows", wins)
        set_("window_probs", _tuple(self.window_probs))
        if self.window_mode not in ("stack", "sample", "series"):
            raise ValueError(f"window_mode must be stack|sample|series, got {self.window_mode!r}")
        if self.window_mode == "sample" and self.window_probs and len(self.window_probs) != len(wins):
            raise ValueError(f"window_probs {self.window_probs} needs one probability per window {wins}")
        if isinstance(self.zscore, (list, tuple)):
            set_("zscore", tuple(_tuple(p, 2) for p in self.zscore))
        elif self.zscore not in (None, "neurovfm"):
            raise ValueError(f"zscore must be None, 'neurovfm' or [[mean, std], ...], got {self.zscore!r}")
        # checked here, not at the first read: a config that cannot normalise fails before training, by name
        names = self.window_names() if self.modality == "ct" else ["mri"]
        if self.zscore == "neurovfm" and set(names) - set(NEUROVFM_ZSCORE):
            raise ValueError(f"no NeuroVFM z-score statistics for window(s) {sorted(set(names) - set(NEUROVFM_ZSCORE))}"
                             f"; give zscore=[[mean, std], ...]")
        per_read = 1 if self.modality == "ct" and self.window_mode == "sample" else len(names)
        if isinstance(self.zscore, tuple) and len(self.zscore) != per_read:
            raise ValueError(f"zscore gives {len(self.zscore)} mean/std pairs for {per_read} channel(s) {names}")
        if len(self.orientation) != 3 or set(self.orientation.upper()) - set("RLAPSI"):
            raise ValueError(f"orientation must be 3 axcodes like 'RAS' or 'RPI', got {self.orientation!r}")
        set_("orientation", self.orientation.upper())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown volume preprocessing option(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)

    def params(self) -> dict[str, Any]:
        """Every parameter, JSON-normalised (what the cache key hashes)."""
        return json.loads(json.dumps(asdict(self)))

    def replace(self, **changes) -> "PreprocessConfig":
        d = asdict(self)
        d.update(changes)
        return PreprocessConfig(**d)

    def window_names(self) -> list[str]:
        return [w if isinstance(w, str) else f"{w[0]:g}..{w[1]:g}" for w in self.ct_windows]


@dataclass
class Prepared:
    array: np.ndarray                 # float32 [C, D, H, W] or [C, T, D, H, W], values in [0, 1]
    mask: np.ndarray                  # bool [D, H, W]
    spacing: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)


class VolumePreprocessor:
    """Applies a ``PreprocessConfig`` (see the module docstring)."""

    def __init__(self, config: PreprocessConfig | dict[str, Any]):
        self.config = config if isinstance(config, PreprocessConfig) else PreprocessConfig.from_dict(dict(config))

    # ------------------------------------------------------------------------------------------ geometry
    # One geometry, used by the arrays (reorient/resample/crop_or_pad) and by boxes (voxel_to_output): the
    # orientation transform, the resampled size and the crop/pad offsets are computed here and nowhere else.
    def orientation_transform(self, affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
        """(nibabel ``ornt`` from the file's axes to ``orientation``, 4x4 new-voxel -> file-voxel matrix)."""
        cur = nib.orientations.io_orientation(affine)
        xform = nib.orientations.ornt_transform(cur, nib.orientations.axcodes2ornt(self.config.orientation))
        return xform, nib.orientations.inv_ornt_aff(xform, tuple(shape[:3]))

    def reorient(self, vol: Volume) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
        """Array with axes (D, H, W[, T]) in the canonical orientation, its spacing (D, H, W), the new affine."""
        xform, new_to_file = self.orientation_transform(vol.affine, vol.array.shape)
        arr = nib.orientations.apply_orientation(vol.array, xform)
        affine = vol.affine @ new_to_file
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        perm = (2, 1, 0) + tuple(range(3, arr.ndim))
        arr = np.ascontiguousarray(np.transpose(arr, perm), dtype=np.float32)
        return arr, (float(zooms[2]), float(zooms[1]), float(zooms[0])), affine

    def resampled_size(self, shape, spacing) -> tuple[int, int, int]:
        """(D, H, W) after resampling a grid of ``shape`` with voxel ``spacing`` to ``target_spacing``."""
        target = self.config.target_spacing
        if target is None:
            return tuple(int(n) for n in shape[:3])
        return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape[:3], spacing, target))

    def resample(self, arr: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, tuple]:
        size = self.resampled_size(arr.shape, spacing)
        if size == arr.shape[:3]:
            return arr, spacing
        t = torch.from_numpy(arr)
        t = t.unsqueeze(0) if t.ndim == 4 else t
        if t.ndim == 3:
            t = t[None, None]
        else:  # [1, D, H, W, T] -> [1, T, D, H, W]: frames as channels on one grid
            t = t.permute(0, 4, 1, 2, 3)
        # align_corners=False: voxel edges map onto voxel edges, a pure scale by size / shape in edge coordinates
        out = F.interpolate(t, size=size, mode="trilinear", align_corners=False)
        out = out[0, 0] if arr.ndim == 3 else out[0].permute(1, 2, 3, 0)
        new_spacing = tuple(n * s / m for n, s, m in zip(arr.shape[:3], spacing, size))
        return np.ascontiguousarray(out.numpy()), new_spacing

    @staticmethod
    def crop_pad_offset(have: int, want: int) -> int:
        """Index shift of a centre crop (negative) or zero pad (positive) from ``have`` to ``want`` voxels."""
        return (want - have) // 2 if have < want else -((have - want) // 2)

    @classmethod
    def crop_or_pad(cls, arr: np.ndarray, shape: tuple[int, int, int], lead: int) -> np.ndarray:
        """Centre-crop / zero-pad the three spatial axes starting at axis ``lead``."""
        out = arr
        for ax, want in enumerate(shape):
            axis = lead + ax
            have = out.shape[axis]
            shift = cls.crop_pad_offset(have, want)
            if have > want:
                out = np.take(out, np.arange(-shift, -shift + want), axis=axis)
            elif have < want:
                pad = [(0, 0)] * out.ndim
                pad[axis] = (shift, want - have - shift)
                out = np.pad(out, pad)
        return out

    def voxel_to_output(self, affine: np.ndarray, shape) -> tuple[np.ndarray, tuple[int, int, int]]:
        """(4x4 matrix from the file's voxel-centre coordinates ``(i, j, k)`` to EDGE coordinates ``(d, h, w)`` of
        the prepared ``[D, H, W]`` grid (0 = start edge of its first voxel), that grid's shape): reorientation,
        the (x, y, z) -> (D, H, W) transpose, resampling (a scale in edge coordinates, ``align_corners=False``)
        and crop/pad, composed from the same pieces ``prepare`` uses."""
        _, new_to_file = self.orientation_transform(affine, shape)
        file_to_new = np.linalg.inv(new_to_file)
        new_shape = np.rint(np.abs(file_to_new[:3, :3]) @ np.asarray(shape[:3], dtype=float)).astype(int)
        zooms = np.sqrt(((affine @ new_to_file)[:3, :3] ** 2).sum(axis=0))
        dhw_shape, dhw_spacing = tuple(int(n) for n in new_shape[::-1]), tuple(float(z) for z in zooms[::-1])
        size = self.resampled_size(dhw_shape, dhw_spacing)
        final = self.config.volume_shape or size
        transpose = np.eye(4)[[2, 1, 0, 3]]                               # (x, y, z) -> (D, H, W)
        centre_to_edge = np.eye(4)
        centre_to_edge[:3, 3] = 0.5
        scale = np.diag([m / n for m, n in zip(size, dhw_shape)] + [1.0])  # resampling, edge coordinates
        shift = np.eye(4)
        shift[:3, 3] = [self.crop_pad_offset(h, w) for h, w in zip(size, final)]
        return shift @ scale @ centre_to_edge @ transpose @ file_to_new, tuple(int(v) for v in final)

    # ------------------------------------------------------------------------------------------ intensity
    def _intensity(self, arr: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
        """[0, 1] channels ``[C, D, H, W(, T)]`` and the foreground mask ``[D, H, W]``."""
        cfg = self.config
        spatial_mean = arr.mean(axis=3) if arr.ndim == 4 else arr
        if cfg.modality == "ct":
            chans = []
            for w in cfg.ct_windows:
                lo, hi = CT_WINDOWS[w] if isinstance(w, str) else w
                chans.append((np.clip(arr, lo, hi) - lo) / (hi - lo))
            mask = spatial_mean > cfg.ct_foreground_hu
            return np.stack(chans).astype(np.float32), mask
        lo, hi = np.percentile(arr, cfg.mri_percentiles)
        if not hi > lo:
            raise VolumeError(f"{where}: intensities are constant between the {cfg.mri_percentiles} percentiles "
                              f"({lo:g}); blank or corrupt image")
        scaled = (np.clip(arr, lo, hi) - lo) / (hi - lo)
        thr = np.percentile(spatial_mean, cfg.mri_foreground_percentile)
        return scaled[None].astype(np.float32), spatial_mean > thr

    # ------------------------------------------------------------------------------------------ pipeline
    def prepare(self, vol: Volume) -> Prepared:
        where = vol.meta.get("path", "<volume>")
        modality = vol.meta.get("modality")
        if modality in ("CT", "MR") and {"CT": "ct", "MR": "mri"}[modality] != self.config.modality:
            raise VolumeError(f"{where}: DICOM Modality is {modality} but preprocessing is configured for "
                              f"{self.config.modality!r}; set modality per reference ({{\"path\": ..., "
                              f"\"modality\": ...}}) or in the config")
        arr, spacing, affine = self.reorient(vol)
        arr, spacing = self.resample(arr, spacing)
        chans, mask = self._intensity(arr, where)
        if arr.ndim == 4:  # [C, D, H, W, T] -> [C, T, D, H, W]
            chans = np.ascontiguousarray(np.moveaxis(chans, -1, 1))
        if self.config.volume_shape is not None:
            chans = self.crop_or_pad(chans, self.config.volume_shape, chans.ndim - 3)
            mask = self.crop_or_pad(mask, self.config.volume_shape, 0)
        meta = {"source": where, "orientation": self.config.orientation, "spacing": list(spacing),
                "shape": list(chans.shape), "modality": self.config.modality}
        return Prepared(np.ascontiguousarray(chans, dtype=np.float32), np.ascontiguousarray(mask, dtype=bool),
                        spacing, meta)

    @property
    def out_channels(self) -> int:
        cfg = self.config
        if cfg.modality == "ct" and cfg.window_mode == "stack":
            return len(cfg.ct_windows)
        return 1

    def _zscore_stats(self, names: list[str]) -> list[tuple[float, float]] | None:
        z = self.config.zscore
        if z is None:
            return None
        if z == "neurovfm":
            return [NEUROVFM_ZSCORE[n] if n in NEUROVFM_ZSCORE else _no_stats(n) for n in names]
        if len(z) != len(names):
            raise ValueError(f"zscore gives {len(z)} mean/std pairs for {len(names)} channels {names}")
        return list(z)

    def finalize(self, array: np.ndarray, *, train: bool = False, where: str = "<volume>") -> torch.Tensor:
        """Per-read step: window choice, temporal crop, z-score. Returns an item (or a series stack for
        ``window_mode='series'``: ``[n_windows, 1, D, H, W]``)."""
        cfg = self.config
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        names = self.config.window_names() if cfg.modality == "ct" else ["mri"]
        if cfg.modality == "ct" and cfg.window_mode == "sample":
            if train:
                probs = torch.tensor(cfg.window_probs or [1.0] * len(names), dtype=torch.float64)
                k = int(torch.multinomial(probs / probs.sum(), 1))
            else:
                k = 0
            x, names = x[k:k + 1], [names[k]]
        if x.ndim == 5 and cfg.num_frames is not None:
            t = x.shape[1]
            if t < cfg.num_frames:
                raise VolumeError(f"{where}: {t} frames but num_frames={cfg.num_frames}")
            start = int(torch.randint(0, t - cfg.num_frames + 1, ())) if train else (t - cfg.num_frames) // 2
            x = x[:, start:start + cfg.num_frames]
        stats = self._zscore_stats(names)
        if stats is not None:
            mean = torch.tensor([m for m, _ in stats]).view(-1, *([1] * (x.ndim - 1)))
            std = torch.tensor([s for _, s in stats]).view(-1, *([1] * (x.ndim - 1)))
            x = (x - mean) / std
        if cfg.modality == "ct" and cfg.window_mode == "series":
            x = x.unsqueeze(1)
        return x.contiguous()


def _no_stats(name: str):
    raise ValueError(f"no NeuroVFM z-score statistics for window {name!r}; give zscore=[[mean, std], ...]")

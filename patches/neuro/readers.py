"""Media readers ``volume`` (3D MRI/CT, single series or multi-series studies) and ``fmri`` (4D rsfMRI).

A JSONL row names its volumes under the ``volume`` (or ``fmri``) key; each reference fills one ``<image>``:

* ``"sub-01/T1w.nii.gz"`` or a DICOM folder ``"sub-01/ct_dicom"``                      -> one item
* ``{"path": "study/dicom", "series_uid": "1.2...", "modality": "ct"}``                  -> one item
  (any ``PreprocessConfig`` field may be overridden per reference; ``series_uid`` picks a series in a folder)
* a study: ``{"paths": ["t1.nii.gz", "t2.nii.gz", "flair.nii.gz"], "modality": "mri"}`` (or a list nested in the
  row's list of references, ``"volume": [["t1...", "t2..."]]``: a row's top-level list is one reference per
  placeholder), or one CT split into its windows ``{"path": "ct.nii.gz", "modality": "ct", "window_mode": "series"}``:
  - ``study_mode="pool"`` (default when the encoder has ``study_pooling`` != "none"): ONE item
    ``[S, C, D, H, W]`` that the encoder's attention-MIL pooler aggregates (NeuroVFM aggregate-then-classify);
  - ``study_mode="concat"``: S items in the one placeholder (the series' tokens side by side).
  To give each series its own ``<image>`` block instead, list the series as separate references.

Items are ``[C, D, H, W]`` (``fmri``: ``[C, T, D, H, W]``) float tensors. Preprocessing parameters
(``PreprocessConfig``) come from ``config.vision_config`` (attributes of the same name, e.g. ``volume_shape``,
``num_frames``, then its ``preprocess`` dict), then data options (keys of the same name, then the
``volume_preprocess`` dict), then the reference. ``volume_cache_dir`` (option or ``$NEURO_VOLUME_CACHE``) turns on
the uint8 cache. Encoders that remove background tokens (``append_foreground_mask=True`` in their config) get
the foreground mask as an extra last channel.

Augmentation: with ``is_train`` (the core passes it for meta-JSON entries with ``data_augment: true``) volume
items get ``patches.neuro.augment`` (MONAI flips, in-plane axis permutation when it keeps the shape, gamma,
brightness/contrast, noise after the z-score); ``volume_augment: {...}`` in the entry overrides its
``AugmentConfig`` fields (e.g. ``{"flip_axes": [0, 1]}`` for left/right questions, whose answer a W flip changes).
Off otherwise and always at evaluation.

Boxes: ``map_boxes`` places a row's ``voxel``/``world`` boxes (``internvl.grounding``) in the prepared grid
(``patches.neuro.boxes``); not for multi-file studies nor under spatial augmentation (refused, named error).

Aliases: other row keys for the same reader go in ``VOLUME_KIND_ALIASES`` below (one place; e.g. Brainfound's
``meditk`` if that plugin wants this reader rather than its own).
"""
from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

import numpy as np
import torch

from internvl.media.base import BoxesUnsupportedError, MediaError, MediaReader, register_media_reader
from patches.neuro.augment import AugmentConfig, VolumeAugmenter
from patches.neuro.cache import VolumeCache, prepared_volume
from patches.neuro.preprocess import PreprocessConfig, VolumePreprocessor
from patches.neuro.volume_io import read_nifti_geometry

VOLUME_KIND_ALIASES: tuple[str, ...] = ()
FMRI_KIND_ALIASES: tuple[str, ...] = ()
_FIELDS = [f.name for f in fields(PreprocessConfig)]
_REF_KEYS = {"path", "paths", "file", "series_uid"}


def preprocess_config_for(vision_config, options: dict[str, Any] | None = None,
                          overrides: dict[str, Any] | None = None) -> PreprocessConfig:
    """Merge preprocessing parameters: encoder config attributes < its ``preprocess`` dict < options < ref."""
    d: dict[str, Any] = {}
    for name in _FIELDS:
        if name != "version" and hasattr(vision_config, name):
            d[name] = getattr(vision_config, name)
    d.update(getattr(vision_config, "preprocess", None) or {})
    options = options or {}
    d.update({k: options[k] for k in _FIELDS if k in options and k != "version"})
    d.update(options.get("volume_preprocess") or {})
    d.update(overrides or {})
    return PreprocessConfig.from_dict(d)


def _splits_windows(cfg: PreprocessConfig) -> bool:
    """A CT read whose windows become the series of a study (``window_mode="series"``)."""
    return cfg.modality == "ct" and cfg.window_mode == "series"


class VolumeReader(MediaReader):
    kind = "volume"
    ndim = 3
    option_names = frozenset(f for f in _FIELDS if f != "version") | {"volume_preprocess", "volume_cache_dir", "volume_augment",
                                                                      "study_mode"}

    def __init__(self, config, options: dict[str, Any] | None = None):
        super().__init__(config, options)
        self.vision_config = config.vision_config
        self.base = preprocess_config_for(self.vision_config, self.options)
        self.append_mask = bool(getattr(self.vision_config, "append_foreground_mask", False))
        want = getattr(self.vision_config, "in_channels", None)
        if want is None:
            raise ValueError(f"vision encoder {getattr(self.vision_config, 'encoder_name', '?')!r} declares no "
                             f"in_channels; it does not read volumes (use brain3d_vit / neurovfm_tokens)")
        self.in_channels = int(want)
        have = VolumePreprocessor(self.base).out_channels
        if have != int(want):
            raise ValueError(f"preprocessing gives {have} channel(s) (modality={self.base.modality}, "
                             f"window_mode={self.base.window_mode}, windows={self.base.window_names()}) but the "
                             f"encoder expects in_channels={want}")
        cache_dir = self.options.get("volume_cache_dir") or os.environ.get("NEURO_VOLUME_CACHE")
        self.cache = VolumeCache(cache_dir) if cache_dir else None
        pooling = getattr(self.vision_config, "study_pooling", "none") or "none"
        self.study_mode = self.options.get("study_mode") or ("pool" if pooling != "none" else "concat")
        if self.study_mode not in ("pool", "concat"):
            raise ValueError(f"study_mode must be 'pool' or 'concat', got {self.study_mode!r}")
        if self.study_mode == "pool" and pooling == "none":
            raise ValueError("study_mode='pool' needs an encoder with study_pooling='grid' or 'bag'")
        aug = dict(self.options.get("volume_augment") or {})
        aug.setdefault("keep_shape", True)  # fixed-grid encoders (brain3d_vit) keep their token grid
        self.augment_config = AugmentConfig.from_dict(aug)  # options checked now, MONAI built on first use
        self._augmenter = None

    @property
    def augmenter(self) -> VolumeAugmenter:
        if self._augmenter is None:
            self._augmenter = VolumeAugmenter(self.augment_config)
        return self._augmenter

    # --------------------------------------------------------------------------------------------- refs
    def _series(self, ref: Any) -> tuple[list[tuple[str, str | None, PreprocessConfig]], bool]:
        """(series list [(path, series_uid, config)], is_study)."""
        if isinstance(ref, str):
            return [(ref, None, self.base)], _splits_windows(self.base)
        if isinstance(ref, (list, tuple)):
            if not ref:
                raise MediaError("empty study reference (an empty list of series)")
            out = [s for r in ref for s in self._series(r)[0]]
            return out, True
        if isinstance(ref, dict):
            extra = {k: v for k, v in ref.items() if k not in _REF_KEYS}
            where = ref.get("path") or ref.get("file") or ref.get("paths")
            try:
                cfg = self.base.replace(**extra) if extra else self.base
            except (TypeError, ValueError) as exc:
                raise MediaError(f"{where}: bad preprocessing override {extra}: {exc}") from exc
            if "paths" in ref:
                subs = [self._series(p)[0][0] for p in ref["paths"]]
                return [(p, uid, cfg) for p, uid, _ in subs], True
            path = ref.get("path") or ref.get("file")
            if not path:
                raise MediaError(f"volume reference {ref} names no 'path'")
            return [(path, ref.get("series_uid"), cfg)], _splits_windows(cfg)
        raise MediaError(f"unsupported volume reference {ref!r} (a path, a dict with 'path'/'paths', or a list)")

    def _load_one(self, path: str, uid: str | None, cfg: PreprocessConfig, train: bool) -> list[torch.Tensor]:
        pre = VolumePreprocessor(cfg)
        prep = prepared_volume(path, pre, cache=self.cache, ndim=self.ndim, series_uid=uid)
        array, mask = prep.array, prep.mask
        augment = train and self.ndim == 3
        if augment:  # seeds from torch's generator: the trainer seeds it (per worker), so runs repeat
            seeds = torch.randint(0, 2 ** 31 - 1, (3,)).tolist()
            img, m = self.augmenter.spatial(torch.from_numpy(array), torch.from_numpy(mask), seeds[0])
            array, mask = self.augmenter.intensity(img, seeds[1]).numpy(), m.numpy()
        item = pre.finalize(array, train=train, where=path)
        if augment:
            item = self.augmenter.noise(item, seeds[2])
        series = list(item) if _splits_windows(cfg) else [item]
        if series[0].shape[0] != self.in_channels:
            raise MediaError(f"{path}: preprocessing {dict(modality=cfg.modality, window_mode=cfg.window_mode)} gives "
                             f"{series[0].shape[0]} channel(s); the encoder reads {self.in_channels}")
        if self.append_mask:
            if not mask.any():
                raise MediaError(f"{path}: no foreground voxels (mask empty); nothing for the encoder to read")
            m = torch.from_numpy(np.asarray(mask, dtype=np.float32))
            series = [torch.cat([s, m.expand(1, *s.shape[1:-3], *m.shape)], 0) for s in series]
        return series

    def load(self, ref: Any, *, is_train: bool = False) -> list[torch.Tensor]:
        series, is_study = self._series(ref)
        items = [it for p, uid, cfg in series for it in self._load_one(p, uid, cfg, is_train)]
        if not is_study or self.study_mode == "concat":
            return items
        return [self._stack(items, series)]

    def _stack(self, items: list[torch.Tensor], series) -> torch.Tensor:
        names = [p for p, _, _ in series]
        chans = {it.shape[0] for it in items}
        if len(chans) > 1:
            raise MediaError(f"study {names}: series have different channel counts {sorted(chans)}; "
                             f"cannot pool them into one study")
        shapes = {tuple(it.shape) for it in items}
        if len(shapes) > 1:
            if not self.append_mask:
                raise MediaError(f"study {names}: series shapes differ {sorted(shapes)}; set volume_shape so "
                                 f"they share one grid, or use study_mode='concat'")
            # background-removing encoders: pad to the common shape with background (value 0, mask 0)
            big = tuple(max(s) for s in zip(*shapes))
            items = [torch.nn.functional.pad(it, [p for d in reversed(range(1, it.ndim))
                                                  for p in (0, big[d] - it.shape[d])]) for it in items]
        return torch.stack(items)

    # --------------------------------------------------------------------------------------------- sizing
    def item_shapes_many(self, refs: list[Any]) -> list[list[torch.Size]]:
        """The shapes ``load(ref)`` gives (evaluation reads), from NIfTI headers: no voxel data is read, so planning
        packs (``internvl.train.packing``) over a cohort does not decode every volume. The spatial grid is the
        preprocessor's own geometry (``VolumePreprocessor.voxel_to_output``), the channels its
        ``out_channels`` (+ the foreground mask), fMRI frames ``num_frames`` (or all). A reference a header cannot
        settle is loaded instead, so it sizes exactly and fails with the reader's own error: DICOM series (their
        geometry needs the whole series), channels the encoder does not read, too few frames, a study whose series
        cannot share one grid. What the header alone refuses (``read_nifti_geometry``: wrong dimensionality, a
        spatial axis under 2 voxels, no orientation codes, a degenerate affine) raises the reader's own error. Voxel-level problems (NaN, a blank
        image, truncated data) surface when the sample is built, as for images."""
        return [self._shapes(ref) for ref in refs]

    def _shapes(self, ref: Any) -> list[torch.Size]:
        series, is_study = self._series(ref)
        shapes: list[torch.Size] = []
        for path, uid, cfg in series:
            one = self._header_shapes(path, uid, cfg)
            if one is None:
                return [item.shape for item in self.load(ref)]
            shapes += one
        if not is_study or self.study_mode == "concat":
            return shapes
        if len(set(shapes)) > 1 and not self.append_mask:
            return [item.shape for item in self.load(ref)]  # raises the reader's "shapes differ" error
        return [torch.Size([len(shapes), *(max(dims) for dims in zip(*shapes))])]

    def _header_shapes(self, path: str, uid: str | None, cfg: PreprocessConfig) -> list[torch.Size] | None:
        """Shapes of the items one NIfTI file gives (header refusals raised as ``read_volume`` raises them), or
        ``None`` when only a full read can tell."""
        if uid is not None or os.path.isdir(path):
            return None
        pre = VolumePreprocessor(cfg)
        if pre.out_channels != self.in_channels:
            return None  # the full read names the mismatch
        affine, dims = read_nifti_geometry(path, ndim=self.ndim)
        _, grid = pre.voxel_to_output(affine, dims[:3])
        frames: list[int] = []
        if self.ndim == 4:
            if cfg.num_frames is not None and dims[3] < cfg.num_frames:
                return None
            frames = [cfg.num_frames if cfg.num_frames is not None else dims[3]]
        channels = pre.out_channels + (1 if self.append_mask else 0)
        n_items = len(cfg.window_names()) if _splits_windows(cfg) else 1
        return [torch.Size([channels, *frames, *grid])] * n_items

    def map_boxes(self, ref: Any, boxes, space: str, *, is_train: bool = False) -> list[tuple[int, ...]]:
        """``voxel``/``world`` boxes of a one-file reference -> 0-1000 boxes of its prepared ``[D, H, W]`` grid
        through the preprocessor's own geometry (``patches.neuro.boxes``). Refused (``BoxesUnsupportedError``)
        for studies of several files and under spatial augmentation (flips, permutations and crops move the
        voxels, not the text)."""
        from patches.neuro.boxes import map_volume_boxes

        aug = self.augment_config
        if is_train and self.ndim == 3 and (aug.crop_size is not None or (aug.flip_axes and aug.flip_prob > 0)
                                            or (aug.permute_axes and aug.permute_prob > 0)):
            raise BoxesUnsupportedError(f"{ref}: spatial augmentation would move the volume but not its boxes; for "
                                        f"grounding data set volume_augment {{\"flip_axes\": [], \"permute_axes\": "
                                        f"null, \"crop_size\": null}} or data_augment false")
        series, _ = self._series(ref)
        if len({(p, uid) for p, uid, _ in series}) != 1:
            raise BoxesUnsupportedError(f"{ref}: boxes on a study of several files; give the series the box is on as "
                                        f"its own reference")
        path, uid, cfg = series[0]
        return map_volume_boxes(path, VolumePreprocessor(cfg), boxes, space, series_uid=uid, ndim=self.ndim)

    def check(self, ref: Any) -> None:
        """Full read + validation + preprocessing (and cache fill): bad files fail here, before training."""
        self.load(ref, is_train=False)


class FmriReader(VolumeReader):
    kind = "fmri"
    ndim = 4

    def _series(self, ref):
        series, is_study = super()._series(ref)
        if is_study:
            raise MediaError(f"{ref}: multi-run fMRI studies are not supported; give one 4D run per reference")
        return series, is_study


register_media_reader("volume", aliases=VOLUME_KIND_ALIASES)(VolumeReader)
register_media_reader("fmri", aliases=FMRI_KIND_ALIASES)(FmriReader)

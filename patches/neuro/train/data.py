"""Studies on disk -> seeded, augmented, normalised volume items for JEPA pretraining and study classification.

Layout (NeuroVFM's): ``<raw_data_dir>/<study>/<series>`` where a series is a NIfTI file (``.nii``/``.nii.gz``) or a
DICOM series folder (a study folder holding ``.dcm`` files directly is one series). ``mode_mapping`` gives each
study's modality; a CT series whose path (below the study folder) names a window (``brain``/``BrainWindow``,
``blood``/``BloodWindow``, ``bone``/``BoneWindow``) gets that window only, otherwise all three.

* ``discover(cfg, split)``: the split's ``Series`` (unknown studies, missing folders, empty studies: errors).
* ``prefill(series, ...)``: reads, checks and caches every series once before training (uint8 ``VolumeCache`` in
  ``data.cache_dir``), so a bad file stops the run at the start with its name, not in epoch 7.
* ``StudyData(...)[(epoch, unit)]``: one unit (a series, or a whole study with ``use_study_sampler`` and always
  for classification) as ``{"items": [Tensor [C + 1, D, H, W]], "study": id, "label": ...}``: the last channel is
  the foreground mask. Per read: window choice (pretraining: one window drawn with ``ct_window_probs``;
  classification: every window as its own series of the study bag), spatial augmentation / foreground-keeping
  random crop to ``max_crop_size`` tokens (``augment`` / ``random_crop``; centre crop of the foreground box
  otherwise), intensity augmentation on [0, 1] (``enable_aug``), z-score with NeuroVFM's per-view statistics
  (``normalization_stats_list``), noise after it, then a centre crop to whole tokens. Every random choice is
  seeded by ``(seed, epoch, unit, series)``: identical across workers, runs and resumes.
* ``batches(n_units, loader_cfg, seed, epoch, rank, world)``: seeded order, ``batch_size``, ``drop_last``, and a
  rank's share for multi-GPU.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from patches.neuro.augment import AugmentConfig, VolumeAugmenter
from patches.neuro.cache import VolumeCache, prepared_volume
from patches.neuro.preprocess import CT_WINDOWS, NEUROVFM_ZSCORE, VolumePreprocessor
from patches.neuro.readers import preprocess_config_for
from patches.neuro.train.schema import ConfigError
from patches.neuro.volume_io import VolumeError

WINDOW_KEYWORDS = {"brain": ("brainwindow", "brain"), "blood": ("bloodwindow", "blood"),
                   "bone": ("bonewindow", "bone")}
VIEWS = ("mri", "brain", "blood", "bone")  # order of normalization_stats_list


class DataError(ValueError):
    """A data problem naming the file or study (the CLI prints it as ``error: <file>: ...``, exit 2)."""


@dataclass(frozen=True)
class Series:
    study: str
    path: str
    modality: str
    windows: tuple  # () for MRI; CT window names


def ct_windows_of(rel_path: str) -> tuple:
    low = rel_path.lower()
    named = [w for w, keys in WINDOW_KEYWORDS.items() if any(k in low for k in keys)]
    return tuple(named[:1]) if len(named) == 1 else tuple(CT_WINDOWS)


def _series_in(study_dir: str) -> list[str]:
    entries = sorted(os.listdir(study_dir))
    if any(e.lower().endswith(".dcm") for e in entries):
        return [study_dir]
    out = []
    for e in entries:
        p = os.path.join(study_dir, e)
        if os.path.isdir(p) or e.endswith((".nii", ".nii.gz")):
            out.append(p)
    return out


def discover(cfg: dict, split: str) -> list[Series]:
    data = cfg["data"]
    root = data["raw_data_dir"] or data["data_dir"]
    out = []
    for study in data["dataset"][split]["studies"]:
        if study not in data["mode_mapping"]:
            raise ConfigError(f"data.dataset.{split}.studies: study {study!r} has no entry in data.mode_mapping")
        sdir = os.path.join(root, study)
        if not os.path.isdir(sdir):
            raise DataError(f"{sdir}: study folder not found (data.dataset.{split}.studies)")
        paths = _series_in(sdir)
        if not paths:
            raise DataError(f"{sdir}: no series (NIfTI files or DICOM folders) in this study")
        mod = data["mode_mapping"][study]
        for p in paths:
            rel = os.path.relpath(p, sdir)
            out.append(Series(study, p, mod, ct_windows_of(rel) if mod == "ct" else ()))
    return out


def read_labels(path: str, studies: list[str], loss: str, out_dim: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """Label names and ``study -> float array`` (bce/regression: one value per column; ce: the class index)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise DataError(f"{path}: study_labels file not found") from None
    if not rows or "study_id" not in rows[0]:
        raise DataError(f"{path}: needs a header with study_id and one column per label")
    names = [c for c in rows[0] if c != "study_id"]
    table = {}
    for line, r in enumerate(rows, start=2):
        try:
            vals = np.array([float(r[c]) for c in names], dtype=np.float32)
        except (TypeError, ValueError):
            raise DataError(f"{path}:{line}: non-numeric label in {r}") from None
        if not np.isfinite(vals).all():
            raise DataError(f"{path}:{line}: missing/NaN label in {r}")
        table[r["study_id"]] = vals
    missing = [s for s in studies if s not in table]
    if missing:
        raise DataError(f"{path}: no labels for studies {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if loss == "ce":
        if len(names) == 1:
            table = {k: v[:1] for k, v in table.items()}
            bad = [k for k, v in table.items() if v[0] != int(v[0]) or not 0 <= v[0] < out_dim]
            if bad:
                raise DataError(f"{path}: ce labels must be class indices in [0, {out_dim}) (proj_params.out_dim), "
                                f"bad for {bad[:5]}")
        else:
            if len(names) != out_dim:
                raise ConfigError(f"system.params.model_hyperparams.proj_params.out_dim: {out_dim} but {path} has "
                                  f"{len(names)} one-hot columns")
            bad = [k for k, v in table.items() if sorted(v.tolist()) != [0.0] * (len(v) - 1) + [1.0]]
            if bad:
                raise DataError(f"{path}: one-hot ce rows need exactly one 1, bad for {bad[:5]}")
            table = {k: np.array([float(v.argmax())], dtype=np.float32) for k, v in table.items()}
    elif len(names) != out_dim:
        raise ConfigError(f"system.params.model_hyperparams.proj_params.out_dim: {out_dim} but {path} has "
                          f"{len(names)} label column(s) {names}")
    elif loss == "bce":
        bad = [k for k, v in table.items() if not set(v.tolist()) <= {0.0, 1.0}]
        if bad:
            raise DataError(f"{path}: bce labels must be 0 or 1, bad for {bad[:5]}")
    return names, table


class StudyData(torch.utils.data.Dataset):
    """Units of one split; index with ``(epoch, unit)`` (see the module docstring)."""

    def __init__(self, series: list[Series], *, encoder_config, cfg: dict, split: str, train: bool,
                 study_level: bool, all_windows: bool, labels: dict | None = None):
        self.cfg, self.split, self.train = cfg, split, train
        data = cfg["data"]
        self.params = data["dataset"][split]["params"]
        sysp = cfg["system"]["params"]
        self.enable_aug = bool(sysp["enable_aug"]) and train
        self.seed = cfg["infra"]["seed"]
        self.all_windows = all_windows
        self.labels = labels
        self.cache = VolumeCache(data["cache_dir"]) if data["cache_dir"] else None
        self.encoder_config = encoder_config
        token = getattr(encoder_config, "token_size", None) or encoder_config.patch_size
        self.token = tuple(token)
        crop = self.params["max_crop_size"]
        self.crop_voxels = tuple(t * s for t, s in zip(crop, token)) if crop else None
        aug = dict(data["augment"])
        if self.crop_voxels:
            aug["crop_size"] = self.crop_voxels
        try:
            self.augmenter = VolumeAugmenter(AugmentConfig.from_dict(aug))
            self.cropper = VolumeAugmenter(AugmentConfig(crop_size=self.crop_voxels, flip_axes=(), permute_axes=None))
        except ValueError as exc:
            raise ConfigError(f"data.augment: {exc}") from None
        stats = sysp["normalization_stats_list"]
        self.norm = ({v: (stats[0][i], stats[1][i]) for i, v in enumerate(VIEWS)} if stats
                     else dict(NEUROVFM_ZSCORE))
        self.series = series
        if study_level:
            order = list(dict.fromkeys(s.study for s in series))
            self.units = [[s for s in series if s.study == st] for st in order]
        else:
            self.units = [[s] for s in series]

    def preprocessor(self, s: Series) -> VolumePreprocessor:
        over = {"modality": s.modality, "window_mode": "stack", "zscore": None}
        if s.modality == "ct":
            over["ct_windows"] = list(s.windows)
        try:
            cfg = preprocess_config_for(self.encoder_config, {"volume_preprocess": self.cfg["data"]["preprocess"]}, over)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"data.preprocess: {exc}") from None
        return VolumePreprocessor(cfg)

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, key) -> dict:
        epoch, unit = key
        ep = epoch if self.train else 10 ** 6  # evaluation draws are fixed across epochs
        items = []
        for j, s in enumerate(self.units[unit]):
            items += self._series_items(s, (self.seed, ep, unit, j))
        out = {"items": items, "study": self.units[unit][0].study, "unit": unit}
        if self.labels is not None:
            out["label"] = torch.from_numpy(self.labels[out["study"]])
        return out

    def _series_items(self, s: Series, seed) -> list[torch.Tensor]:
        try:
            prep = prepared_volume(s.path, self.preprocessor(s), cache=self.cache)
        except VolumeError as exc:
            raise DataError(str(exc)) from None
        arr, mask = torch.from_numpy(prep.array), torch.from_numpy(prep.mask)
        names = list(s.windows) if s.modality == "ct" else ["mri"]
        if self.all_windows or len(names) == 1:
            picks = list(range(len(names)))
        else:
            probs = [self.params["ct_window_probs"][list(CT_WINDOWS).index(n)] for n in names]
            rng = np.random.default_rng([*seed, 1])
            picks = [int(rng.choice(len(names), p=np.asarray(probs) / sum(probs)))]
        out = []
        for k in picks:
            img, m = arr[k:k + 1], mask
            if self.params["augment"] and self.train:
                img, m = self.augmenter.spatial(img, m, [*seed, k, 2])
            elif self.crop_voxels:
                img, m = (self.cropper.spatial(img, m, [*seed, k, 3]) if self.params["random_crop"] and self.train
                          else _centre_crop(img, m, self.crop_voxels))
            if self.enable_aug:
                img = self.augmenter.intensity(img, [*seed, k, 4])
            mean, std = self.norm[names[k]]
            img = (img - mean) / std
            if self.enable_aug:
                img = self.augmenter.noise(img, [*seed, k, 5])
            img, m = _whole_tokens(img, m, self.token)  # what neurovfm_tokens would crop anyway; brain3d_vit needs it
            out.append(torch.cat([img.float(), m[None].float()], 0))
        return out


def _centre_crop(img: torch.Tensor, mask: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre a window of at most ``size`` on the foreground bounding box (deterministic, evaluation)."""
    nz = mask.nonzero()
    lo, hi = (nz.min(0).values, nz.max(0).values + 1) if len(nz) else (torch.zeros(3), torch.tensor(mask.shape))
    sl = []
    for a in range(3):
        n = min(int(size[a]), mask.shape[a])
        centre = (int(lo[a]) + int(hi[a])) // 2
        start = max(0, min(centre - n // 2, mask.shape[a] - n))
        sl.append(slice(start, start + n))
    return img[:, sl[0], sl[1], sl[2]], mask[sl[0], sl[1], sl[2]]


def _whole_tokens(img: torch.Tensor, mask: torch.Tensor, token) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre-crop each axis to a whole number of tokens (crops and permutations leave any size)."""
    sl = [slice((n - n // t * t) // 2, (n - n // t * t) // 2 + n // t * t) if n >= t else slice(0, n)
          for n, t in zip(mask.shape, token)]
    return img[:, sl[0], sl[1], sl[2]], mask[sl[0], sl[1], sl[2]]


def prefill(datasets: list[StudyData]) -> None:
    """Read, check and cache every series once (see the module docstring)."""
    todo = [(d, s) for d in datasets for s in d.series]
    for d, s in tqdm(todo, desc="check + cache series", disable=len(todo) < 2):
        try:
            prep = prepared_volume(s.path, d.preprocessor(s), cache=d.cache)
        except VolumeError as exc:
            raise DataError(str(exc)) from None
        if not prep.mask.any():
            raise DataError(f"{s.path}: no foreground voxels; nothing to train on")


def batches(n_units: int, loader: dict, seed: int, epoch: int, *, train: bool, rank: int = 0, world: int = 1):
    """Lists of ``(epoch, unit)`` keys for this rank (see the module docstring)."""
    shuffle = loader["shuffle"] if loader["shuffle"] is not None else train
    order = np.random.default_rng([seed, epoch, 7]).permutation(n_units) if shuffle else np.arange(n_units)
    bs = loader["batch_size"]
    n = n_units // bs if loader["drop_last"] else math.ceil(n_units / bs)
    out = [[(epoch, int(u)) for u in order[i * bs:(i + 1) * bs]] for i in range(n)]
    if world > 1:
        out = out[:len(out) // world * world][rank::world]  # equal counts per rank keep DDP in step
    return out

"""Datasets of the Brainfound stages: 2D slices (stage 1) and whole scans with reports / labels (stage 2, zero-shot).

Stage 1 manifest (JSONL, one volume per line; paths relative to the manifest's folder):
``{"path": "vols/ct_0001.npy", "modality": "CT"}`` (``modality`` optional: Brainfound's path rule otherwise).
Every axial slice of every volume is a sample. The slice index (depth of each volume) is cached in
``cache_dir/slice_index-<hash>.json``, keyed by each file's path, size and mtime and by the reading options, so
it is rebuilt whenever any of them changes. A volume that cannot be read is a counted, logged skip while at most
``max_bad_files`` are bad; one more raises with the file named.

Scan JSONL (stage 2 and zero-shot): ``{"volume": "scan.npz", "report": "...", "label": "hemorrhage",
"modality": "CT"}``; the path key may also be ``meditk`` or ``path``, the text key ``text`` or ``caption``.
A scan becomes ``[num_slices, 3, H, W]`` exactly as the ``meditk`` reader builds it for stage 3 (same window, slice
selection and scaling), so the three stages see one preprocessing.

``sentence_shuffle`` (Brainfound's flag; training only) shuffles a report's sentences (split after ``.``, ``。``,
``!``, ``?``, ``;``, ``；``) for each sample.

Randomness (CT window draw, augmentation, sentence order) comes from a generator seeded by (seed, epoch, index):
a resumed run reproduces the data of an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from internvl.media.base import MediaError
from patches.brainfound.preprocess import (CT_WINDOWS_STAGE1, SliceAugment, is_ct, minmax_per_slice,
                                           resize_slices, sample_generator, to_model_input,
                                           volume_to_unit_slices, window_ct)
from patches.brainfound.volumes import guess_modality, read_array_volume, read_raw_volume, volume_depth

logger = logging.getLogger(__name__)


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: each line must be a JSON object")
            rows.append((lineno, row))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _abs(root: Path, p: str) -> str:
    return p if os.path.isabs(p) else str(root / p)


@lru_cache(maxsize=2)
def _cached_volume(path: str, npz_key: str | None, layout: str) -> np.ndarray:
    return read_raw_volume(path, npz_key=npz_key, array_layout=layout).array


class SliceDataset(Dataset):
    """Stage 1: every axial slice of the manifest's volumes -> ``{"pixel_values": [3,S,S], "modality": int}``."""

    def __init__(self, manifest: str, modalities: list[str], image_size: int, *, cache_dir: str,
                 ct_windows=CT_WINDOWS_STAGE1, augment: SliceAugment | None = None, seed: int = 0,
                 npz_key: str | None = None, array_layout: str = "DHW", max_bad_files: int = 0):
        root = Path(manifest).resolve().parent
        self.image_size, self.augment, self.seed, self.epoch = int(image_size), augment, int(seed), 0
        self.ct_windows = [tuple(w) for w in ct_windows]
        self.npz_key, self.layout = npz_key, array_layout
        self.modalities = list(modalities)
        self.files: list[tuple[str, int]] = []  # (path, modality index)
        for lineno, row in read_jsonl(manifest):
            if "path" not in row:
                raise ValueError(f"{manifest}:{lineno}: no 'path'")
            path = _abs(root, row["path"])
            mod = row.get("modality") or guess_modality(row["path"])
            if mod not in self.modalities:
                raise ValueError(f"{manifest}:{lineno}: modality {mod!r} is not one of {self.modalities}")
            self.files.append((path, self.modalities.index(mod)))
        depths = self._depths(cache_dir, max_bad_files)
        self.index = [(i, z) for i, d in enumerate(depths) for z in range(d)]
        if not self.index:
            raise ValueError(f"{manifest}: no readable slices")
        logger.info("stage-1 slices: %d from %d volumes", len(self.index), sum(d > 0 for d in depths))

    def _depths(self, cache_dir: str, max_bad: int) -> list[int]:
        keyed = []
        for path, _ in self.files:
            st = os.stat(path) if os.path.exists(path) else None
            keyed.append([path, st.st_size if st else -1, st.st_mtime_ns if st else -1])
        key = hashlib.sha256(json.dumps([keyed, self.npz_key, self.layout]).encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"slice_index-{key}.json"
        if cache.is_file():
            return json.loads(cache.read_text())["depths"]
        depths, bad = [], 0
        for path, _ in self.files:
            try:
                depths.append(volume_depth(path, npz_key=self.npz_key, array_layout=self.layout))
            except MediaError as exc:
                bad += 1
                if bad > max_bad:
                    raise MediaError(f"{exc} (bad volume {bad} > max_bad_files={max_bad})") from exc
                logger.warning("skipping unreadable volume (%d/%d allowed): %s", bad, max_bad, exc)
                depths.append(0)
        from internvl.fileio import atomic_write_text

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps({"files": keyed, "depths": depths, "skipped": bad}), cache)
        return depths

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def _slice(self, path: str, z: int) -> np.ndarray:
        if path.endswith(".npy"):
            sl = np.asarray(read_array_volume(path, array_layout=self.layout, mmap=True, check_finite=False)[z])
        else:
            sl = np.asarray(_cached_volume(path, self.npz_key, self.layout)[z])
        if not np.isfinite(sl).all():
            raise MediaError(f"{path}: slice {z} has NaN/Inf voxels")
        return sl.astype(np.float32)

    def __getitem__(self, i: int) -> dict[str, Any]:
        vi, z = self.index[i]
        path, mod = self.files[vi]
        g = sample_generator(self.seed, self.epoch, i)
        sl = self._slice(path, z)
        if is_ct(self.modalities[mod]):
            k = int(torch.randint(0, len(self.ct_windows), (), generator=g)) if self.augment else 0
            unit = torch.from_numpy(window_ct(sl, self.ct_windows[k]))
        else:
            unit = torch.from_numpy(minmax_per_slice(sl))
        unit = self.augment(unit, g) if self.augment else resize_slices(unit, self.image_size)
        return {"pixel_values": to_model_input(unit), "modality": mod}


class ScanDataset(Dataset):
    """Stage 2 / zero-shot: one scan per row -> slices ``[S, 3, H, W]``, report text, label index, modality."""

    PATH_KEYS = ("volume", "meditk", "path")
    TEXT_KEYS = ("report", "text", "caption")

    def __init__(self, jsonl: str, *, modalities: list[str], default_modality: str, num_slices: int,
                 image_size: int, slice_select: str = "uniform", ct_window=(160, 40),
                 augment: SliceAugment | None = None, seed: int = 0, classes: list[str] | None = None,
                 need_text: bool = True, npz_key: str | None = None, array_layout: str = "DHW",
                 sentence_shuffle: bool = False):
        root = Path(jsonl).resolve().parent
        self.modalities, self.classes = list(modalities), classes
        self.num_slices, self.image_size, self.slice_select = int(num_slices), int(image_size), slice_select
        self.ct_window, self.augment, self.seed, self.epoch = tuple(ct_window), augment, int(seed), 0
        self.npz_key, self.layout, self.sentence_shuffle = npz_key, array_layout, bool(sentence_shuffle)
        self.rows: list[dict[str, Any]] = []
        for lineno, row in read_jsonl(jsonl):
            where = f"{jsonl}:{lineno}"
            key = next((k for k in self.PATH_KEYS if k in row), None)
            if key is None:
                raise ValueError(f"{where}: no volume path (one of {self.PATH_KEYS})")
            path = _abs(root, row[key])
            if not os.path.exists(path):
                raise FileNotFoundError(f"{where}: {path} not found")
            text = next((row[k] for k in self.TEXT_KEYS if k in row), None)
            if need_text and not (isinstance(text, str) and text.strip()):
                raise ValueError(f"{where}: no report text (one of {self.TEXT_KEYS})")
            mod = row.get("modality") or default_modality
            if mod not in self.modalities:
                raise ValueError(f"{where}: modality {mod!r} is not one of {self.modalities}")
            label = -1
            if classes is not None:
                if row.get("label") not in classes:
                    raise ValueError(f"{where}: label {row.get('label')!r} is not one of {classes}")
                label = classes.index(row["label"])
            self.rows.append({"path": path, "text": text or "", "modality": self.modalities.index(mod),
                              "label": label, "where": where})

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        vol = read_raw_volume(row["path"], npz_key=self.npz_key, array_layout=self.layout)
        unit = volume_to_unit_slices(vol.array, self.modalities[row["modality"]], self.num_slices,
                                     slice_select=self.slice_select, window=self.ct_window)
        g = sample_generator(self.seed, self.epoch, i)
        if self.augment:
            unit = self.augment(unit, g)
        else:
            unit = resize_slices(unit, self.image_size)
        text = shuffle_sentences(row["text"], g) if self.sentence_shuffle else row["text"]
        return {"pixel_values": to_model_input(unit), "text": text, "label": row["label"],
                "modality": row["modality"], "reference": row["text"]}


_SENTENCE_END = re.compile(r"(?<=[.。!?;；])\s+")


def shuffle_sentences(text: str, g: torch.Generator) -> str:
    """The report's sentences in a random order drawn from ``g`` (one sentence: unchanged)."""
    parts = [p for p in _SENTENCE_END.split(text.strip()) if p]
    if len(parts) < 2:
        return text
    order = torch.randperm(len(parts), generator=g).tolist()
    return " ".join(parts[k] for k in order)


def collate_scans(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {"pixel_values": torch.stack([b["pixel_values"] for b in batch]),
            "text": [b["text"] for b in batch],
            "reference": [b["reference"] for b in batch],
            "label": torch.tensor([b["label"] for b in batch]),
            "modality": torch.tensor([b["modality"] for b in batch])}

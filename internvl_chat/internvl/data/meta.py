"""InternVL's meta JSON (``--meta_path``): which JSONL datasets to train on, where their media live, how often.

Format: ``{"<name>": {"root": DIR, "annotation": FILE.jsonl, "data_augment": bool, "repeat_time": float,
"length": int, "max_dynamic_patch": int, "task": str, ...}, ...}``.

* ``root`` and ``annotation`` are required; ``annotation`` must end in ``.jsonl``. ``data_augment`` defaults to
  false and ``repeat_time`` to 1 (InternVL requires both). ``length`` is informational (as in InternVL).
* Any other key must be a data option that a registered media reader declares (``max_dynamic_patch``,
  ``dynamic_image_size``, a plugin reader's ``volume_shape`` ...): it overrides the run's options for this dataset.
  An unknown key (a typo such as ``max_dynamic_patchh``) is a ``MetaError`` naming the key and the file, with the
  known keys listed; ``task`` is carried along for evaluation/logging. ``length`` must be an integer,
  ``data_augment`` a boolean.
* Relative ``root``/``annotation`` paths: InternVL resolves them against the working directory (its scripts run
  from ``internvl_chat/``). We do too when that path exists; otherwise they resolve against the directory of the
  meta file, so a meta file shipped next to its data works from anywhere. Media references inside the JSONL
  resolve against ``root``.
* ``repeat_time``: ``r < 1`` keeps a **random** subset of ``int(n * r)`` lines drawn with a fixed seed (InternVL
  keeps the *first* ``int(n * r)`` lines, which biases toward whatever the file starts with); ``r >= 1`` keeps
  ``int(r)`` full copies plus a random subset of ``int(n * (r - int(r)))`` lines (InternVL's finetune requires an
  integer). The seed is ``seed`` mixed with a CRC of the dataset name, so every run (and every process) draws the
  same lines.
"""
from __future__ import annotations

import json
import logging
import os
import random
import zlib
from dataclasses import dataclass, field
from typing import Any

from internvl.errors import InputError
from internvl.media import known_option_names

logger = logging.getLogger(__name__)

DATASET_KEYS = ("root", "annotation", "data_augment", "repeat_time", "length", "task")


class MetaError(InputError, ValueError):
    """A malformed meta JSON; the message names the meta file and the dataset entry."""


@dataclass
class DatasetSpec:
    """One entry of a meta JSON, with paths resolved."""

    name: str
    root: str
    annotation: str
    data_augment: bool = False
    repeat_time: float = 1.0
    length: int | None = None
    task: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # per-dataset media-reader overrides
    meta_path: str | None = None

    @property
    def max_dynamic_patch(self) -> int | None:
        return self.options.get("max_dynamic_patch")


def resolve_meta_path(path: str, meta_dir: str) -> str:
    """Absolute/URL paths as is; relative: the working directory if it exists there, else the meta file's dir."""
    if os.path.isabs(path) or "://" in path:
        return path
    if os.path.exists(path):
        return os.path.abspath(path)
    return os.path.normpath(os.path.join(meta_dir, path))


def load_meta(meta_path: str) -> list[DatasetSpec]:
    """Parse and validate a meta JSON file into ``DatasetSpec`` entries (in file order)."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError as exc:
        raise MetaError(f"{meta_path}: meta file not found") from exc
    except json.JSONDecodeError as exc:
        raise MetaError(f"{meta_path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(meta, dict) or not meta:
        raise MetaError(f"{meta_path}: expected a non-empty object {{name: {{root, annotation, ...}}}}")
    meta_dir = os.path.dirname(os.path.abspath(meta_path))
    specs = []
    for name, entry in meta.items():
        where = f"{meta_path} [{name}]"
        if not isinstance(entry, dict):
            raise MetaError(f"{where}: entry must be an object")
        for key in ("root", "annotation"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise MetaError(f"{where}: missing or empty {key!r}")
        if not entry["annotation"].endswith(".jsonl"):
            raise MetaError(f"{where}: annotation {entry['annotation']!r} must be a .jsonl file")
        repeat = entry.get("repeat_time", 1)
        if not isinstance(repeat, (int, float)) or isinstance(repeat, bool) or repeat <= 0:
            raise MetaError(f"{where}: repeat_time must be a number > 0, got {repeat!r}")
        mdp = entry.get("max_dynamic_patch")
        if mdp is not None and (not isinstance(mdp, int) or isinstance(mdp, bool) or mdp < 1):
            raise MetaError(f"{where}: max_dynamic_patch must be an integer >= 1, got {mdp!r}")
        length = entry.get("length")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 0):
            raise MetaError(f"{where}: length must be a non-negative integer, got {length!r}")
        if not isinstance(entry.get("data_augment", False), bool):
            raise MetaError(f"{where}: data_augment must be true or false, got {entry['data_augment']!r}")
        options = {k: v for k, v in entry.items() if k not in DATASET_KEYS}
        unknown = sorted(set(options) - known_option_names())
        if unknown:
            raise MetaError(f"{where}: unknown key(s) {unknown}; a dataset entry takes {list(DATASET_KEYS)} and the "
                            f"data options of the registered media readers {sorted(known_option_names())} (is the "
                            f"plugin that reads this option installed or passed with --plugins?)")
        specs.append(DatasetSpec(name=name, root=resolve_meta_path(entry["root"], meta_dir),
                                 annotation=resolve_meta_path(entry["annotation"], meta_dir),
                                 data_augment=bool(entry.get("data_augment", False)), repeat_time=float(repeat),
                                 length=entry.get("length"), task=entry.get("task"), options=options,
                                 meta_path=os.path.abspath(meta_path)))
    return specs


def select_lines(n: int, repeat_time: float, seed: int = 0, name: str = "") -> list[int]:
    """Indices (into the ``n`` annotation lines) a dataset with ``repeat_time`` uses; see the module docstring."""
    rng = random.Random((seed * 1_000_003) ^ zlib.crc32(name.encode("utf-8")))
    whole, frac = int(repeat_time), repeat_time - int(repeat_time)
    out = list(range(n)) * whole
    k = int(n * frac)
    if k:
        out += sorted(rng.sample(range(n), k))
    if n and not out:
        logger.warning("dataset %r: repeat_time %s of %d lines keeps no line", name, repeat_time, n)
    return out


__all__ = ["DATASET_KEYS", "DatasetSpec", "MetaError", "load_meta", "resolve_meta_path", "select_lines"]

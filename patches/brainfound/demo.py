"""Synthetic demo data for the three tiny Brainfound stages (``build(out_dir)``; ``python -m patches.brainfound.demo``).

Writes, under ``out_dir`` (default ``data/demo_brainfound``):

* ``stage1/``: ``vols/*.npy`` CT (HU) and T1/T2 volumes + ``manifest.jsonl`` for ``pretrain_ddpm``;
* ``stage2/``: ``scans/*.npz`` CT scans of two classes (normal / hemorrhage) with short reports,
  ``train.jsonl`` and a held-out ``test.jsonl`` (with ``label``) for ``pretrain_clip`` and ``zero_shot``;
* ``stage3/``: Brainfound-format ``mcq.jsonl`` / ``qa.jsonl`` (key ``meditk``, placeholder ``<meditk>``, .npz
  volumes), their test splits, and the meta JSON the core finetune reads.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same files.
``shell/brainfound/demo.sh`` builds this and runs the three tiny stages.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from patches.brainfound.synthetic import synthetic_head, synthetic_report
from patches.brainfound.weights import atomic_write_text

DEFAULT_OUT = "data/demo_brainfound"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def _save_npz(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, data=arr)
    os.replace(tmp, path)


def _jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def build_stage1(out: Path, rng: np.random.Generator, n_ct: int = 16, n_mri: int = 8, depth: int = 8,
                 size: int = 48) -> Path:
    (out / "vols").mkdir(parents=True, exist_ok=True)
    rows = []
    lesions = ("normal", "hemorrhage", "infarction", "tumor")
    for i in range(n_ct + n_mri):
        mod = "CT" if i < n_ct else ("T1" if i % 2 else "T2")
        vol = synthetic_head(rng, depth, size, lesions[i % len(lesions)], mod)
        name = f"vols/{mod.lower()}_{i:03d}.npy"
        _save_npy(out / name, vol.astype(np.float32))
        rows.append({"path": name, "modality": mod})
    _jsonl(out / "manifest.jsonl", rows)
    return out / "manifest.jsonl"


def build_stage2(out: Path, rng: np.random.Generator, n_train: int = 48, n_test: int = 24, depth: int = 8,
                 size: int = 48, classes=("normal", "hemorrhage")) -> tuple[Path, Path]:
    (out / "scans").mkdir(parents=True, exist_ok=True)
    splits = {"train": n_train, "test": n_test}
    paths = []
    for split, n in splits.items():
        rows = []
        for i in range(n):
            label = classes[i % len(classes)]
            name = f"scans/{split}_{i:03d}.npz"
            _save_npz(out / name, synthetic_head(rng, depth, size, label, "CT").astype(np.int16))
            rows.append({"volume": name, "report": synthetic_report(rng, label), "label": label, "modality": "CT"})
        _jsonl(out / f"{split}.jsonl", rows)
        paths.append(out / f"{split}.jsonl")
    return paths[0], paths[1]


def build(out_dir: str | os.PathLike = DEFAULT_OUT, seed: int = 0) -> dict[str, str]:
    """Write all demo data; returns the main paths."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    manifest = build_stage1(out / "stage1", rng)
    train, test = build_stage2(out / "stage2", rng)
    return {"stage1_manifest": str(manifest), "stage2_train": str(train), "stage2_test": str(test)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for key, path in build(args.out, args.seed).items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()

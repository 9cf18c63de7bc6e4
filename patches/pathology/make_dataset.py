"""Clinical CSV + feature files -> InternVL JSONL/meta for slide-report fine-tuning and evaluation.

    python -m patches.pathology.make_dataset --csv clinical.csv --features FEATS_DIR --out DATA_DIR \
        [--test-fraction 0.2 --seed 0] [--wsi-root SLIDES_DIR]

CSV columns: ``slide`` (file name or stem; the feature file is ``FEATS_DIR/<stem>.h5``), ``grade`` (1-4, or
``G1``..``G4``), ``survival_months``, and ``event`` (1 = death observed) or ``censorship`` (1 = censored); an
optional ``split`` column (train/test) is used as given, otherwise a grade-stratified split is drawn with ``--seed``.
Rows with a missing feature file or unparseable values are errors naming the CSV line (nothing is dropped
silently). Outputs: ``train.jsonl``, ``test.jsonl``, ``meta_train.json``, ``meta_test.json`` and ``risk_bins.json``
(tertile cut points from the training split's uncensored months, see ``report.py``); with ``--wsi-root`` also
``test_wsi.jsonl`` / ``meta_test_wsi.json`` naming the slides (``"wsi"``) instead of the features.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np

from patches.pathology.report import RiskBins, write_report

QUESTION = "Write the pathology report for this whole-slide image: tumour grade and survival risk."


class ClinicalError(ValueError):
    """A clinical CSV row that cannot be used; the message names file and line."""


def read_clinical(path: str) -> list[dict]:
    rows = []
    with open(path, newline="") as fh:
        for line, rec in enumerate(csv.DictReader(fh), start=2):
            where = f"{path}:{line}"
            try:
                grade = int(str(rec["grade"]).strip().upper().lstrip("G"))
                months = float(rec["survival_months"])
                if "event" in rec and rec["event"] not in (None, ""):
                    event = int(float(rec["event"]))
                else:
                    event = 1 - int(float(rec["censorship"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ClinicalError(f"{where}: needs slide, grade, survival_months and event or censorship "
                                    f"({type(exc).__name__}: {exc})") from exc
            if grade not in (1, 2, 3, 4) or months < 0 or event not in (0, 1):
                raise ClinicalError(f"{where}: grade {grade}, months {months}, event {event} out of range")
            rows.append({"slide": rec["slide"].strip(), "grade": grade, "survival_months": months, "event": event,
                         "split": (rec.get("split") or "").strip().lower(), "line": where})
    if not rows:
        raise ClinicalError(f"{path}: no rows")
    return rows


def assign_split(rows: list[dict], test_fraction: float, seed: int) -> None:
    """Keep given splits; otherwise a grade-stratified random split (deterministic for a seed)."""
    if all(r["split"] in ("train", "test") for r in rows):
        return
    if any(r["split"] for r in rows):
        bad = next(r for r in rows if r["split"] not in ("train", "test"))
        raise ClinicalError(f"{bad['line']}: split must be 'train' or 'test' on every row (or absent on all)")
    rng = np.random.default_rng(seed)
    for grade in sorted({r["grade"] for r in rows}):
        group = [r for r in rows if r["grade"] == grade]
        order = rng.permutation(len(group))
        n_test = int(round(len(group) * test_fraction))
        for rank, i in enumerate(order):
            group[i]["split"] = "test" if rank < n_test else "train"


def _atomic_write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def write_dataset(rows: list[dict], features_dir: str, out_dir: str, wsi_root: str | None = None,
                  data_augment: bool = True) -> dict:
    """Write JSONL + meta files for rows that already carry a split; returns a small summary."""
    os.makedirs(out_dir, exist_ok=True)
    train = [r for r in rows if r["split"] == "train"]
    bins = RiskBins.from_training([r["survival_months"] for r in train], [r["event"] for r in train])
    bins.save(os.path.join(out_dir, "risk_bins.json"))
    root = os.path.abspath(out_dir)
    parts: dict[str, list[dict]] = {"train": [], "test": []}
    if wsi_root:
        parts["test_wsi"] = []
    for r in rows:
        stem = Path(r["slide"]).stem
        feature_file = os.path.join(features_dir, stem + ".h5")
        if not os.path.isfile(feature_file):
            raise ClinicalError(f"{r['line']}: no feature file {feature_file} (run python -m "
                                f"patches.pathology.extract first)")
        report = write_report(r["grade"], bins.group(r["survival_months"]), bins)
        row = {"id": stem, "features": os.path.relpath(os.path.abspath(feature_file), root),
               "conversations": [{"from": "human", "value": "<image>\n" + QUESTION},
                                 {"from": "gpt", "value": report}],
               "grade": r["grade"], "survival_months": r["survival_months"], "event": r["event"],
               "task": "pathology_report"}
        parts[r["split"]].append(row)
        if wsi_root and r["split"] == "test":
            slide = os.path.relpath(os.path.abspath(os.path.join(wsi_root, r["slide"])), root)
            parts["test_wsi"].append({**{k: v for k, v in row.items() if k != "features"}, "wsi": slide})
    for name, part in parts.items():
        annotation = os.path.join(root, f"{name}.jsonl")
        _atomic_write(annotation, "".join(json.dumps(row) + "\n" for row in part))
        entry = {"root": root, "annotation": annotation, "data_augment": data_augment and name == "train",
                 "repeat_time": 1, "length": len(part), "task": "pathology_report"}
        if name == "test_wsi":
            entry["feature_cache"] = os.path.abspath(features_dir)
        _atomic_write(os.path.join(out_dir, f"meta_{name}.json"),
                      json.dumps({f"{Path(out_dir).name}_{name}": entry}, indent=1))
    return {"train": len(parts["train"]), "test": len(parts["test"]), "risk_bins": [bins.short, bins.long]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", required=True)
    ap.add_argument("--features", required=True, help="folder of <slide>.h5 from patches.pathology.extract")
    ap.add_argument("--out", required=True)
    ap.add_argument("--wsi-root", help="slide folder: also write test rows that name the slides ('wsi')")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = read_clinical(args.csv)
    assign_split(rows, args.test_fraction, args.seed)
    print(json.dumps(write_dataset(rows, args.features, args.out, args.wsi_root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

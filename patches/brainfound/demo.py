"""Synthetic demo data for the three tiny Brainfound stages (``build(out_dir)``; ``python -m patches.brainfound.demo``).

Writes, under ``out_dir`` (default ``data/demo_brainfound``):

* ``stage1/``: ``vols/*.npy`` CT (HU) and T1/T2 volumes + ``manifest.jsonl`` for ``pretrain_ddpm``;
* ``stage2/``: ``scans/*.npz`` CT scans of two classes (normal / hemorrhage) with templated reports (findings
  phrases of the scan's class in random order + ``impression : <class> .``; ``synthetic.synthetic_report``),
  ``train.jsonl`` and a held-out ``test.jsonl`` (with ``label``) for stage 2 (contrast + captioning), its
  report validation, and zero-shot classification;
* ``stage3/``: Brainfound-format ``mcq.jsonl`` / ``qa.jsonl`` (key ``meditk``, placeholder ``<meditk>``, .npz
  volumes, inline ``A: ... B: ...`` options), their test splits, and ``train_meta.json`` / ``test_meta.json``
  (test tasks: ``brainfound_mcq`` and ``open_qa``), and report rows ``report.jsonl`` / ``test_report.jsonl``
  (write the report of the scan -> a templated report; test task ``brainfound_report``) for the same scans. The
  answers depend only on the voxels (normal vs hemorrhage). Report texts come from their own generator
  (``seed + 1``), so adding them left the other rows as they were.

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
from internvl.fileio import atomic_write_text

DEFAULT_OUT = "data/demo_brainfound"
GENERATOR_VERSION = 4  # bump when the generated content changes


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def _save_npz(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, data=arr)
    os.replace(tmp, path)


def _jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), path)


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


MCQ_QUESTION = "Is there an abnormal hyperdense lesion in the brain parenchyma?"
MCQ_OPTIONS = ("there is a hyperdense lesion", "no abnormal density", "the image cannot be assessed",
               "only a bone abnormality")
IMPRESSION = {"normal": "no significant abnormality on plain brain ct.",
              "hemorrhage": "intraparenchymal hemorrhage."}
FINDINGS = {"normal": "brain parenchyma without abnormal density. ventricles normal. midline centered.",
            "hemorrhage": "hyperdense focus in the brain parenchyma. ventricles normal. midline centered."}


def _mcq_row(rng: np.random.Generator, i: int, ref: str, label: str, task: str | None) -> dict:
    """Brainfound mcq.jsonl layout: options inline ("A: ... B: ..."), answer one letter, order shuffled."""
    order = rng.permutation(len(MCQ_OPTIONS))
    letters = "ABCD"
    opts = " ".join(f"{letters[j]}: {MCQ_OPTIONS[k]}" for j, k in enumerate(order))
    answer = letters[list(order).index(0 if label == "hemorrhage" else 1)]
    row = {"id": i, "meditk": ref, "conversations": [
        {"from": "human", "value": f"<meditk>\n{MCQ_QUESTION} {opts}"}, {"from": "gpt", "value": answer}]}
    return {**row, "task": task} if task else row


def _qa_row(i: int, ref: str, label: str, test: bool) -> dict:
    """Brainfound qa.jsonl layout: describe the image, then write the impression. Test rows keep only the first
    turn (findings): with it as chat history, the impression could be read off the reference findings."""
    turns = [{"from": "human", "value": "<meditk>\nDescribe the image."}, {"from": "gpt", "value": FINDINGS[label]},
             {"from": "human", "value": "Write the diagnostic impression."}, {"from": "gpt", "value": IMPRESSION[label]}]
    return {"id": i, "meditk": ref, "conversations": turns[:2] if test else turns}


REPORT_PROMPT = "Write the radiology report of this scan."


def _report_row(i: int, ref: str, report: str) -> dict:
    return {"id": i, "meditk": ref, "conversations": [{"from": "human", "value": f"<meditk>\n{REPORT_PROMPT}"},
                                                      {"from": "gpt", "value": report}]}


def build_stage3(out: Path, rng: np.random.Generator, n_train: int = 96, n_test: int = 24, depth: int = 8,
                 size: int = 48, report_rng: np.random.Generator | None = None) -> dict[str, Path]:
    """Brainfound-format instruction data (.npz volumes, ``meditk`` key, ``<meditk>`` placeholder) + meta JSONs."""
    (out / "post_data_npz").mkdir(parents=True, exist_ok=True)
    report_rng = report_rng or np.random.default_rng(1)
    rows: dict[str, list] = {"mcq": [], "qa": [], "report": [], "test_mcq": [], "test_qa": [], "test_report": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            label = ("normal", "hemorrhage")[int(rng.integers(2))]
            ref = f"post_data_npz/{split}_{i:03d}.npz"
            _save_npz(out / ref, synthetic_head(rng, depth, size, label, "CT").astype(np.int16))
            pre = "" if split == "train" else "test_"
            rows[pre + "mcq"].append(_mcq_row(rng, i, ref, label, None))
            rows[pre + "qa"].append(_qa_row(i, ref, label, split == "test"))
            rows[pre + "report"].append(_report_row(i, ref, synthetic_report(report_rng, label)))
    for name, r in rows.items():
        _jsonl(out / f"{name}.jsonl", r)

    def entry(name: str, task: str | None = None) -> dict:
        e = {"root": str(out), "annotation": str(out / f"{name}.jsonl"), "data_augment": False, "repeat_time": 1,
             "length": len(rows[name])}
        return {**e, "task": task} if task else e

    metas = {"train_meta.json": {"brainfound_mcq": entry("mcq"), "brainfound_qa": entry("qa"),
                                 "brainfound_report": entry("report")},
             "test_meta.json": {"brainfound_mcq": entry("test_mcq", "brainfound_mcq"),
                                "brainfound_qa": entry("test_qa", "open_qa"),
                                "brainfound_report": entry("test_report", "brainfound_report")}}
    for name, meta in metas.items():
        atomic_write_text(json.dumps(meta, indent=1) + "\n", out / name)
    return {"stage3_train_meta": out / "train_meta.json", "stage3_test_meta": out / "test_meta.json"}


def build(out_dir: str | os.PathLike = DEFAULT_OUT, seed: int = 0, force: bool = False) -> dict[str, str]:
    """Write all demo data (skipped when ``build_info.json`` shows an identical build); returns the main paths.

    The data is built in a temporary sibling folder and swapped in whole (``internvl.fileio.atomic_directory``),
    so an interrupted build leaves the previous demo or none, never a half-written one."""
    from internvl.fileio import atomic_directory

    out = Path(out_dir)
    info = {"generator": GENERATOR_VERSION, "seed": seed}
    paths = {"stage1_manifest": out / "stage1/manifest.jsonl", "stage2_train": out / "stage2/train.jsonl",
             "stage2_test": out / "stage2/test.jsonl", "stage3_train_meta": out / "stage3/train_meta.json",
             "stage3_test_meta": out / "stage3/test_meta.json"}
    done = out / "build_info.json"
    if not force and done.is_file() and json.loads(done.read_text()) == info:
        return {k: str(v) for k, v in paths.items()}
    with atomic_directory(out) as tmp:
        rng = np.random.default_rng(seed)
        build_stage1(tmp / "stage1", rng)
        build_stage2(tmp / "stage2", rng)
        build_stage3(tmp / "stage3", rng, report_rng=np.random.default_rng(seed + 1))
        for meta in ("train_meta.json", "test_meta.json"):  # roots as the caller named the folder, not the tmp one
            text = (tmp / "stage3" / meta).read_text().replace(str(tmp), str(out))
            atomic_write_text(text, tmp / "stage3" / meta)
        atomic_write_text(json.dumps(info) + "\n", tmp / "build_info.json")
    return {k: str(v) for k, v in paths.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if an identical build is present")
    args = p.parse_args(argv)
    for key, path in build(args.out, args.seed, args.force).items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()

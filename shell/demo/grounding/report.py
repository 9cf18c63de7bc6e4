"""The grounding demo's fixed baseline and its results table (used by ``shell/demo/grounding/demo.sh``).

* ``centre``: writes a predictions JSONL (``{"id", "answer"}`` per test row, what ``eval/custom_eval.py
  --predictions`` scores) that answers every test row with one fixed box per kind: centred in the image/volume
  (500 on every axis) with the median width/height(/depth) of the *training* boxes of that kind. It sees no
  pixel and no test answer; it is what a model that learnt only the typical lesion size would say.
* ``table``: reads the ``custom_eval.py`` results of the runs (``NAME=results.json`` ...) and prints one table:
  per run, 2D mean IoU and acc@0.5, 3D mean IoU, acc@0.25 and acc@0.5, and the unparsed rate of each; also
  written as Markdown to ``--markdown``.

    python shell/demo/grounding/report.py centre --data data/demo_grounding --out centre.jsonl
    python shell/demo/grounding/report.py table before=b.json after=a.json centre=c.json [--markdown t.md]

Bad input (a missing or unreadable file, a results file without the grounding datasets): one ``error:`` line,
exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(REPO / "internvl_chat"), str(REPO)]  # runnable as a script from the repo root

from internvl import grounding  # noqa: E402
from internvl.errors import DataError, run_cli  # noqa: E402

KINDS = {"2d": "grounding_2d", "3d": "grounding_3d"}  # file suffix -> dataset name in test_meta.json
COLUMNS = (("2d", "mean_iou", "2D mIoU"), ("2d", "acc_iou50", "2D acc@0.5"), ("2d", "unparsed_rate", "2D unparsed"),
           ("3d", "mean_iou", "3D mIoU"), ("3d", "acc_iou25", "3D acc@0.25"), ("3d", "acc_iou50", "3D acc@0.5"),
           ("3d", "unparsed_rate", "3D unparsed"))


def _rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise DataError(path, "missing_file", "not found (build the data: shell/demo/grounding/make_data.py)")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}", "bad_json", str(exc)) from None
    return rows


def _answer_box(row: dict, where: str) -> tuple[float, ...]:
    try:
        answer = row["conversations"][-1]["value"]
    except (KeyError, IndexError, TypeError):
        raise DataError(where, "bad_row", "expected a row with conversations ending in the answer") from None
    groups = grounding.parse_grounded(answer, where)
    if len(groups) != 1 or len(groups[0].boxes) != 1:
        raise DataError(where, "bad_row", "expected one <box> with one box in the answer")
    return groups[0].boxes[0]


def centre_box(train_rows: list[dict], where: str) -> tuple[int, ...]:
    """The box centred at 500 on every axis with the median per-axis size of the training boxes."""
    boxes = [_answer_box(r, f"{where}:{i + 1}") for i, r in enumerate(train_rows)]
    half = len(boxes[0]) // 2
    sizes = [statistics.median(b[half + a] - b[a] for b in boxes) for a in range(half)]
    lo = tuple(round(500 - s / 2) for s in sizes)
    return lo + tuple(round(500 + s / 2) for s in sizes)


def write_centre(data_dir: str, out: str) -> dict[str, tuple[int, ...]]:
    """Write the centre-box predictions for ``test_2d.jsonl`` and ``test_3d.jsonl``; returns the boxes by kind."""
    boxes, lines = {}, []
    for kind in KINDS:
        train = os.path.join(data_dir, f"train_{kind}.jsonl")
        boxes[kind] = centre_box(_rows(train), train)
        answer = grounding.format_grounded([boxes[kind]], "lesion")
        test = os.path.join(data_dir, f"test_{kind}.jsonl")
        for number, row in enumerate(_rows(test), 1):
            if not isinstance(row, dict) or row.get("id") is None:
                raise DataError(f"{test}:{number}", "bad_row", "a test row needs an 'id'")
            lines.append(json.dumps({"id": row["id"], "answer": answer}))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, out)
    return boxes


def _metrics(path: str) -> dict[str, dict]:
    if not os.path.isfile(path):
        raise DataError(path, "missing_file", "results file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            by_dataset = json.load(fh)["metrics"]["by_dataset"]
        return {kind: by_dataset[name]["grounding"] for kind, name in KINDS.items()}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(path, "bad_results", f"no grounding metrics for {sorted(KINDS.values())} ({exc!r})")


def table(runs: list[tuple[str, str]]) -> str:
    """Markdown table of ``(name, results.json)`` runs."""
    head = ["run"] + [c[2] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(COLUMNS)) + "|"]
    for name, path in runs:
        m = _metrics(path)
        cells = []
        for kind, key, _ in COLUMNS:
            v = m[kind].get(key)
            cells.append("n/a" if v is None else f"{v:.3f}")
        lines.append("| " + " | ".join([name] + cells) + " |")
    n = _metrics(runs[0][1])
    lines.append(f"\n(test rows: 2D {n['2d']['n']}, 3D {n['3d']['n']})")
    return "\n".join(lines)


def run(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("centre", help="write the centre-box predictions JSONL")
    c.add_argument("--data", default="data/demo_grounding")
    c.add_argument("--out", required=True)
    t = sub.add_parser("table", help="print the results table")
    t.add_argument("runs", nargs="+", metavar="NAME=RESULTS.json")
    t.add_argument("--markdown", help="also write the table here")
    args = p.parse_args(argv)
    if args.cmd == "centre":
        boxes = write_centre(args.data, args.out)
        print(f"centre boxes: 2D {list(boxes['2d'])}, 3D {list(boxes['3d'])} -> {args.out}")
        return 0
    runs = []
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            p.error(f"expected NAME=RESULTS.json, got {item!r}")
        runs.append((name, path))
    text = table(runs)
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(run))

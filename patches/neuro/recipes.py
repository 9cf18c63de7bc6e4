"""Dataset recipes: study-level label CSVs -> InternVL JSONL rows with BrainVLM-style questions.

``sex_age``: a CSV with a volume column (``path``; a NIfTI file or DICOM folder relative to the JSONL's root) and
``sex`` and/or ``age`` columns gives, per subject, one classification row (``neuro_classification``, classes
female/male) and one regression row (``neuro_regression``, age in whole years). Rows whose label is missing
are counted and reported, never invented; a sex value other than the accepted spellings is an error naming the
CSV line. ``--media-key fmri`` writes rsfMRI rows instead.

    python -m patches.neuro.recipes sex_age --csv labels.csv --out train.jsonl [--path-column path] [--id-column subject]
"""
from __future__ import annotations

import argparse
import csv
import json
import os

SEX_QUESTION = "Estimate the sex of the subject from this {what}. Answer female or male."
AGE_QUESTION = "Estimate the age of the subject in years from this {what}."
WHAT = {"volume": "T1-weighted brain MRI", "fmri": "resting-state fMRI run"}
SEX_VALUES = {"f": "female", "female": "female", "2": "female", "m": "male", "male": "male", "1": "male"}


def sex_age_rows(csv_path: str, *, path_column: str = "path", id_column: str | None = None,
                 media_key: str = "volume") -> tuple[list[dict], dict[str, int]]:
    """(rows, counts) from the CSV; ``counts`` has ``subjects``, ``sex_rows``, ``age_rows``, ``missing_*``."""
    rows, counts = [], {"subjects": 0, "sex_rows": 0, "age_rows": 0, "missing_sex": 0, "missing_age": 0}
    what = WHAT[media_key]
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if path_column not in (reader.fieldnames or []):
            raise ValueError(f"{csv_path}: no {path_column!r} column (columns: {reader.fieldnames})")
        for line, rec in enumerate(reader, start=2):
            counts["subjects"] += 1
            sid = rec.get(id_column) if id_column else os.path.splitext(os.path.basename(rec[path_column]))[0]
            sex = (rec.get("sex") or "").strip().lower()
            if sex:
                if sex not in SEX_VALUES:
                    raise ValueError(f"{csv_path}:{line}: sex {rec['sex']!r} is none of {sorted(SEX_VALUES)}")
                rows.append(_row(f"{sid}-sex", media_key, rec[path_column], SEX_QUESTION.format(what=what),
                                 SEX_VALUES[sex], "neuro_classification", classes=["female", "male"]))
                counts["sex_rows"] += 1
            else:
                counts["missing_sex"] += 1
            age = (rec.get("age") or "").strip()
            if age:
                try:
                    years = float(age)
                except ValueError as exc:
                    raise ValueError(f"{csv_path}:{line}: age {age!r} is not a number") from exc
                rows.append(_row(f"{sid}-age", media_key, rec[path_column], AGE_QUESTION.format(what=what),
                                 str(int(round(years))), "neuro_regression"))
                counts["age_rows"] += 1
            else:
                counts["missing_age"] += 1
    return rows, counts


def _row(rid: str, key: str, path: str, question: str, answer: str, task: str, **extra) -> dict:
    return {"id": rid, key: path, "task": task, **extra,
            "conversations": [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", choices=["sex_age"])
    p.add_argument("--csv", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--path-column", default="path")
    p.add_argument("--id-column", default=None)
    p.add_argument("--media-key", default="volume", choices=sorted(WHAT))
    a = p.parse_args(argv)
    rows, counts = sex_age_rows(a.csv, path_column=a.path_column, id_column=a.id_column, media_key=a.media_key)
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    os.replace(tmp, a.out)
    print(json.dumps({"out": a.out, **counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Synthetic demo data and the CSV -> JSONL builder: slides OpenSlide reads with scale, grade in the texture,
survival consistent with grade, rows whose reports parse back to the truth."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from patches.pathology import demo
from patches.pathology.make_dataset import ClinicalError, assign_split, read_clinical, write_dataset
from patches.pathology.report import parse_grade, parse_risk
from patches.pathology.tasks import c_index
from patches.pathology.wsi import open_slide, slide_info


def test_texture_darkens_with_grade():
    means = [demo.synth_tissue(np.random.default_rng(0), 256, g).mean() for g in (1, 2, 3)]
    assert means[0] > means[1] > means[2]  # more and larger hematoxylin nuclei


def test_survival_is_consistent_with_grade():
    grades = np.repeat([1, 2, 3], 200)
    months, events = demo.simulate_survival(np.random.default_rng(0), grades)
    medians = [np.median(months[grades == g]) for g in (1, 2, 3)]
    assert medians[0] > medians[1] > medians[2]
    assert 0.7 < c_index(months, grades, events) < 0.85 and 0.6 < events.mean() < 0.95


def test_build_small_demo(tmp_path):
    out = tmp_path / "demo"
    summary = demo.build(str(out), per_grade=4, size_um=448, progress=False)
    assert summary["slides"] == 12 and (summary["train"], summary["test"]) == (9, 3)  # stratified: 1 per grade
    assert summary["extraction"]["counts"] == {"ok": 12}
    with open(out / "clinical.csv") as fh:
        clinical = list(csv.DictReader(fh))
    for rec in clinical:
        handle = open_slide(str(out / "slides" / rec["slide"]))
        info = slide_info(handle, rec["slide"])
        handle.close()
        if rec["slide"].endswith(".svs"):
            assert (info.vendor, info.mpp, info.objective_power) == ("aperio", 0.25, 40)
        else:
            assert (info.vendor, info.mpp) == ("generic-tiff", 0.5)
        assert int(rec["event"]) + int(rec["censorship"]) == 1
    rows = [json.loads(line) for part in ("train", "test") for line in (out / f"{part}.jsonl").open()]
    assert len(rows) == 12 and all((out / r["features"]).is_file() for r in rows)
    for row in rows:
        report = row["conversations"][1]["value"]
        assert parse_grade(report) == row["grade"] and parse_risk(report) is not None
    meta = json.loads((out / "meta_test_wsi.json").read_text())
    entry = next(iter(meta.values()))
    assert entry["feature_cache"].endswith("features") and entry["task"] == "pathology_report"
    assert all((out / json.loads(line)["wsi"]).is_file() for line in (out / "test_wsi.jsonl").open())
    info = (out / "build_info.json").stat().st_mtime_ns
    assert demo.build(str(out), per_grade=4, size_um=448, progress=False) == summary  # same params: skipped
    assert (out / "build_info.json").stat().st_mtime_ns == info


def test_clinical_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "clinical.csv"
    path.write_text("slide,grade,survival_months,censorship\na.svs,G2,10.5,0\nb.svs,two,3,1\n")
    with pytest.raises(ClinicalError, match="clinical.csv:3"):
        read_clinical(str(path))
    path.write_text("slide,grade,survival_months,event\na.svs,G2,10.5,1\nb.svs,5,3,1\n")
    with pytest.raises(ClinicalError, match="clinical.csv:3.*out of range"):
        read_clinical(str(path))


def test_split_is_stratified_and_missing_features_fail(tmp_path):
    rows = [{"slide": f"s{i}.svs", "grade": 1 + i % 3, "survival_months": 5.0 + i, "event": i % 2, "split": "",
             "line": f"x:{i}"} for i in range(30)]
    assign_split(rows, 0.2, seed=0)
    for g in (1, 2, 3):
        assert sum(r["split"] == "test" for r in rows if r["grade"] == g) == 2
    with pytest.raises(ClinicalError, match="x:0: no feature file .*s0.h5"):
        write_dataset(rows, str(tmp_path / "feats"), str(tmp_path / "out"))

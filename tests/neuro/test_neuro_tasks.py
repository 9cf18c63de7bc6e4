"""neuro_classification and neuro_regression: parsing free text and the metrics (checked against hand values)."""
from __future__ import annotations

import os

import pytest

from internvl.evaluation.base import create_task


def _run(task, pairs, tmp_path, **extra):
    recs = [task.score(pred, {"id": i, "reference": ref, **extra}) for i, (pred, ref) in enumerate(pairs)]
    return recs, task.aggregate(recs, str(tmp_path))


def test_classification_parsing_and_metrics(tmp_path):
    task = create_task("neuro_classification", classes=["left", "right", "none"])
    pairs = [("The lesion is in the left hemisphere.", "left"), ("Right.", "right"), ("right", "left"),
             ("I cannot tell", "none"), ("none", "none"), ("LEFT side", "left")]
    recs, m = _run(task, pairs, tmp_path)
    assert [r["pred_label"] for r in recs] == ["left", "right", "right", "<unparsed>", "none", "left"]
    assert m["n"] == 6 and m["n_unparsed"] == 1
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recalls: left 2/3, right 1/1, none 1/2 -> balanced accuracy 13/18
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    # F1: left P=1 R=2/3 -> .8; right P=.5 R=1 -> 2/3; none P=1 R=.5 -> 2/3
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 2 / 3) / 3)
    assert m["auroc"] is None and os.path.exists(m["plots"][0])
    assert m["confusion_matrix"]["labels"][-1] == "<unparsed>"


def test_classification_first_mention_and_synonyms(tmp_path):
    task = create_task("neuro_classification", classes=["yes", "no"], synonyms={"yes": ["present"]})
    assert task.score("Present: a bleed. No midline shift.", {"reference": "yes"})["pred_label"] == "yes"
    assert task.score("no, nothing", {"reference": "no"})["correct"]
    assert task.score("yesterday", {"reference": "no"})["pred_label"] == "<unparsed>"


def test_classification_auroc_with_scores(tmp_path):
    task = create_task("neuro_classification", classes=["yes", "no"])
    rows = [("yes", "yes", 0.9), ("yes", "no", 0.6), ("no", "yes", 0.4), ("no", "no", 0.1)]
    recs = [task.score(p, {"reference": r, "scores": {"yes": s, "no": 1 - s}}) for p, r, s in rows]
    m = task.aggregate(recs, str(tmp_path))
    # labels sorted ["no", "yes"]; positive "yes" scores: pos {0.9, 0.4}, neg {0.6, 0.1} -> 3 of 4 pairs
    assert m["auroc"] == pytest.approx(0.75)


def test_classification_without_class_list(tmp_path):
    task = create_task("neuro_classification")
    recs, m = _run(task, [("Female", "female"), ("male", "female"), ("Male", "male")], tmp_path)
    assert m["accuracy"] == pytest.approx(2 / 3) and m["classes"] == ["female", "male"]


def test_regression(tmp_path):
    task = create_task("neuro_regression")
    pairs = [("The subject is about 62 years old.", "60"), ("age: 71.5", "70"), ("unknown", "50"), ("40", "45")]
    recs, m = _run(task, pairs, tmp_path)
    assert [r["pred_value"] for r in recs] == [62.0, 71.5, None, 40.0]
    assert m["n_unparsed"] == 1
    assert m["mae"] == pytest.approx((2 + 1.5 + 5) / 3)
    import numpy as np
    from scipy.stats import pearsonr

    assert m["pearson_r"] == pytest.approx(pearsonr([60, 70, 45], [62, 71.5, 40])[0])
    assert os.path.exists(m["plots"][0])
    with pytest.raises(ValueError, match="holds no number"):
        task.score("5", {"reference": "n/a"})
    assert np.isfinite(m["rmse"])


def test_sex_age_recipe(tmp_path):
    from patches.neuro.recipes import sex_age_rows

    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("subject,path,sex,age\ns1,s1/T1.nii.gz,F,63.4\ns2,s2/T1.nii.gz,male,\ns3,s3/T1.nii.gz,,40\n")
    rows, counts = sex_age_rows(str(csv_path), id_column="subject")
    assert counts == {"subjects": 3, "sex_rows": 2, "age_rows": 2, "missing_sex": 1, "missing_age": 1}
    assert rows[0]["volume"] == "s1/T1.nii.gz" and rows[0]["conversations"][1]["value"] == "female"
    assert rows[1]["task"] == "neuro_regression" and rows[1]["conversations"][1]["value"] == "63"
    # a recipe row scores with its task
    task = create_task(rows[0]["task"])
    assert task.score("The subject is female.", {**rows[0], "reference": "female"})["correct"]
    csv_path.write_text("subject,path,sex\ns1,a.nii,X\n")
    with pytest.raises(ValueError, match="labels.csv:2: sex 'X'"):
        sex_age_rows(str(csv_path))

"""Report template and parsing; grade and survival tasks; C-index sign against lifelines and a pairwise count."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from internvl.evaluation.base import create_task
from patches.pathology.report import RiskBins, parse_grade, parse_risk, write_report
from patches.pathology.tasks import c_index


def _harrell_by_hand(months, risk, events) -> float:
    """Comparable pairs: the shorter time is an observed event; concordant when that one has the higher risk."""
    num = den = 0.0
    for i, j in itertools.permutations(range(len(months)), 2):
        if months[i] < months[j] and events[i]:
            den += 1
            num += 1.0 if risk[i] > risk[j] else (0.5 if risk[i] == risk[j] else 0.0)
    return num / den


def test_c_index_sign_against_lifelines_and_pairwise_count():
    from lifelines.utils import concordance_index

    rng = np.random.default_rng(0)
    months = rng.exponential(30, 80)  # no tied times: the hand count below ignores time ties
    events = rng.random(80) < 0.6
    risk = -months + rng.normal(0, 15, 80)  # higher risk = shorter survival, noisily
    ours = c_index(months, risk, events)
    assert ours == pytest.approx(_harrell_by_hand(months, risk, events))
    assert ours == pytest.approx(concordance_index(months, -risk, events))  # lifelines wants survival-like scores
    assert ours > 0.6 and concordance_index(months, risk, events) == pytest.approx(1 - ours)
    assert c_index([1, 2, 3], [3, 2, 1], [1, 1, 1]) == 1.0 and c_index([1, 2, 3], [1, 2, 3], [1, 1, 1]) == 0.0
    groups = rng.integers(0, 3, 80)  # tied risk groups count one half
    assert c_index(months, groups, events) == pytest.approx(_harrell_by_hand(months, groups, events))


def test_report_template_round_trips():
    bins = RiskBins.from_training([5, 10, 15, 20, 25, 30, 100], [1, 1, 1, 1, 1, 1, 0])
    assert (bins.short, bins.long) == (13.3, 21.7)  # tertiles of the uncensored months only
    assert [bins.group(m) for m in (3, 15, 21.7, 40)] == ["high", "intermediate", "low", "low"]
    text = write_report(2, "intermediate", bins)
    assert text == ("Tumour grade: G2 (moderately differentiated). "
                    "Survival risk: intermediate (expected survival 13.3 to 21.7 months).")
    assert parse_grade(text) == 2 and parse_risk(text) == ("intermediate", 1)
    for s, g in (("grade III carcinoma", 3), ("Grade: 1", 1), ("a G 2 tumour", 2), ("grade is high", None),
                 ("no grade given", None)):
        assert parse_grade(s) == g, s
    assert parse_risk("High-risk disease") == ("high", 2) and parse_risk("risk group: low") == ("low", 0)
    assert parse_risk("Survival risk unclear") is None
    with pytest.raises(ValueError):
        write_report(5, "low", bins)


def test_grade_task_metrics_and_confusion_png(tmp_path):
    task = create_task("tumour_grade")
    truth = [1, 1, 2, 2, 3, 3, 3, 1]
    preds = ["Tumour grade: G1", "G1", "G2", "G3 tumour", "Tumour grade: G3", "G3", "gibberish", "grade 2"]
    records = [task.score(p, {"grade": t, "id": str(i)}) for i, (p, t) in enumerate(zip(preds, truth))]
    m = task.aggregate(records, str(tmp_path))
    assert m["grade_n"] == 8 and m["grade_n_unparsed"] == 1
    assert m["grade_accuracy"] == pytest.approx(5 / 8)
    assert m["grade_balanced_accuracy"] == pytest.approx(np.mean([2 / 3, 1 / 2, 2 / 3]))
    assert m["grade_labels"] == ["G1", "G2", "G3", "unparsed"]
    assert m["grade_confusion_matrix"][2] == [0, 0, 2, 1]
    assert (tmp_path / "tumour_grade_confusion.png").stat().st_size > 1000
    rec = task.score("G2", {"reference": "Tumour grade: G2 (moderately ...)"})  # grade read from the reference
    assert rec["grade_true"] == 2 and rec["grade_correct"]


def test_survival_task_cindex_km_and_logrank(tmp_path):
    rng = np.random.default_rng(1)
    groups = rng.choice(["low", "intermediate", "high"], 60)
    scale = {"low": 60, "intermediate": 25, "high": 8}
    months = np.array([rng.exponential(scale[g]) for g in groups]).round(1) + 0.1
    events = (rng.random(60) < 0.7).astype(int)
    task = create_task("survival")
    records = [task.score(f"Tumour grade: G2. Survival risk: {g}.", {"survival_months": m, "censorship": 1 - e,
                                                                  "reference": f"Survival risk: {g}"})
               for g, m, e in zip(groups, months, events)]
    records.append(task.score("no idea", {"survival_months": 5.0, "event": 1}))
    m = task.aggregate(records, str(tmp_path))
    risk = [{"low": 0, "intermediate": 1, "high": 2}[g] for g in groups]
    assert m["c_index"] == pytest.approx(c_index(months, risk, events)) and m["c_index"] > 0.65
    assert m["survival_n"] == 61 and m["survival_n_unparsed"] == 1 and m["logrank_p"] < 0.01
    assert (tmp_path / "survival_km_by_risk_group.png").stat().st_size > 1000
    with pytest.raises(KeyError, match="event"):
        task.score("x", {"survival_months": 3})


def test_pathology_report_task_scores_both(tmp_path):
    task = create_task("pathology_report")
    rows = [({"grade": 1, "survival_months": 50, "event": 0}, "Tumour grade: G1. Survival risk: low."),
            ({"grade": 3, "survival_months": 6, "event": 1}, "Tumour grade: G3. Survival risk: high."),
            ({"grade": 2, "survival_months": 20, "event": 1}, "Tumour grade: G3. Survival risk: intermediate.")]
    m = task.aggregate([task.score(p, s) for s, p in rows], str(tmp_path))
    assert m["grade_accuracy"] == pytest.approx(2 / 3) and m["c_index"] == 1.0 and len(m["plots"]) == 2

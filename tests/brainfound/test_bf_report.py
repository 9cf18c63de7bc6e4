"""Report metrics and the ``brainfound_report`` eval task (no model: scoring and aggregation only)."""
from __future__ import annotations

import pytest


def test_report_metrics_use_the_core_bleu_rouge_and_nltk_meteor():
    from internvl.evaluation import metrics as core
    from patches.brainfound.report_eval import meteor, report_metrics

    ref = "hyperdense bleeding in the parenchyma . impression : hemorrhage ."
    same = report_metrics([ref], [ref])
    assert same["bleu4"] == pytest.approx(1.0) and same["rouge_l"] == pytest.approx(1.0) and same["meteor"] > 0.99
    hyp = "hyperdense bleed in the parenchyma . impression : normal ."
    res = report_metrics([hyp, "x"], [ref, ref])
    assert res["bleu4"] == pytest.approx(core.corpus_bleu4([hyp, "x"], [ref, ref]))
    assert res["rouge_l"] == pytest.approx((core.rouge_l(hyp, ref) + core.rouge_l("x", ref)) / 2)
    # METEOR: "bleed" matches "bleeding" by its Porter stem; no WordNet synonyms (none installed, none needed)
    assert meteor("acute bleeding", "acute bleed") > meteor("acute hemorrhage", "acute bleed")
    assert meteor("", ref) == 0.0
    with pytest.raises(ValueError, match="2 generated reports but 1 references"):
        report_metrics(["a", "b"], ["a"])


def test_brainfound_report_task_is_registered_and_scores(tmp_path):
    import patches.brainfound  # noqa: F401  (registers the tasks)
    from internvl.evaluation.base import create_task, list_tasks

    assert "brainfound_report" in list_tasks()
    task = create_task("brainfound_report")
    ref = "no abnormal density . midline centered . impression : normal ."
    records = []
    for pred in (ref, "midline centered . impression : normal .", ""):
        records.append({"prediction": pred, "reference": ref, **task.score(pred, {"reference": ref})})
    assert records[0]["bleu4"] == pytest.approx(1.0) and records[2]["meteor"] == 0.0
    assert records[0]["rouge_l"] > records[1]["rouge_l"] > records[2]["rouge_l"]
    agg = task.aggregate(records, str(tmp_path))
    assert agg["n"] == 3 and 0 < agg["bleu4_corpus"] < 1 and (tmp_path / "brainfound_report_scores.png").is_file()
    with pytest.raises(ValueError, match="no reference report"):
        task.score("x", {})

"""Report metrics through their packages on tiny local data (no network): METEOR (nltk, on a tiny WordNet the
test writes), BERTScore (bert-score, on a tiny BERT the test builds and saves); and the "not computed" reports
with the path looked in for a missing wordnet, a missing model folder, a model absent from the hub cache, a
missing radeval package and GREEN without its remote-code opt-in."""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from internvl.evaluation import report_metrics
from internvl.evaluation.report_metrics import ReportMetricOptions, compute, parse_metric_names

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _records(pairs):
    return [{"uid": f"d:{i}", "task": "open_qa", "dataset": "d", "prediction": p, "reference": r}
            for i, (p, r) in enumerate(pairs)]


def test_parse_metric_names():
    assert parse_metric_names("meteor, bertscore,meteor") == ["meteor", "bertscore"]
    assert parse_metric_names("") == []
    with pytest.raises(ValueError, match="unknown report metric"):
        parse_metric_names("meteor,cider")


def test_meteor_not_computed_names_the_paths(tmp_path, monkeypatch):
    import nltk

    empty = tmp_path / "empty_nltk_data"
    empty.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(empty)])
    records = _records([("a cat", "a cat")])
    status = compute(records, ["meteor"])
    assert status["meteor"].startswith("not computed: wordnet not found at") and str(empty) in status["meteor"]
    assert "meteor" not in records[0]


def test_meteor_on_a_tiny_wordnet(tmp_path):
    """Runs in a subprocess: nltk keeps the first wordnet it loads for the life of the process."""
    sys.path.insert(0, str(HERE))
    from tiny_wordnet import write_tiny_wordnet

    write_tiny_wordnet(tmp_path / "nltk_data", {"n": [(["car", "auto"], "a motor car"), (["dog"], "a dog")],
                                               "v": [(["sit"], "be seated")]})
    code = ("from internvl.evaluation.report_metrics import compute; "
            "from nltk.translate.meteor_score import meteor_score; "
            "rows = [{'uid': 'a', 'task': 'open_qa', 'dataset': 'd', 'prediction': 'the auto sat', "
            "'reference': 'the car sat'}, {'uid': 'b', 'task': 'open_qa', 'dataset': 'd', "
            "'prediction': 'the dog sat', 'reference': 'the car sat'}]; "
            "print(compute(rows, ['meteor'])['meteor']); print(rows[0]['meteor'], rows[1]['meteor']); "
            "print(meteor_score([['the', 'car', 'sat']], ['the', 'auto', 'sat']))")
    env = dict(os.environ, NLTK_DATA=str(tmp_path / "nltk_data"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    status, values, direct = res.stdout.strip().splitlines()[-3:]
    synonym, other = map(float, values.split())
    assert status.startswith("computed")
    assert synonym == pytest.approx(float(direct))
    assert synonym > other  # "auto" matches "car" through the WordNet synonym stage only (not exact, not stem)


def test_bertscore_on_a_tiny_local_model(tiny_bert, monkeypatch):
    from bert_score import BERTScorer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pairs = [("a lesion is present", "a lesion is present"), ("no mass", "large mass left"), ("normal brain", "x")]
    records = _records(pairs)
    status = compute(records, ["bertscore"], ReportMetricOptions(bertscore_model=str(tiny_bert)))
    assert status["bertscore"].startswith("computed (bert-score F1") and "layer 2" in status["bertscore"]
    _, _, f1 = BERTScorer(model_type=str(tiny_bert), num_layers=2).score([p for p, _ in pairs],
                                                                          [[r] for _, r in pairs])
    assert [r["bertscore"] for r in records] == pytest.approx(f1.tolist(), abs=1e-6)
    assert records[0]["bertscore"] == pytest.approx(1.0, abs=1e-5) and records[1]["bertscore"] < 0.99


def test_missing_models_are_not_computed(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "empty_hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    missing_dir = tmp_path / "no_such_model"
    records = _records([("a", "a")])
    status = compute(records, ["bertscore"], ReportMetricOptions(bertscore_model=str(missing_dir)))
    assert status["bertscore"] == f"not computed: {missing_dir} not found at {missing_dir}"
    status = compute(records, ["bertscore"], ReportMetricOptions(bertscore_model="roberta-large"))
    assert status["bertscore"] == f"not computed: roberta-large not found at {cache} (hub cache)"
    assert "bertscore" not in records[0]


def test_radeval_missing_and_models_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    records = _records([("no effusion", "no pleural effusion")])
    try:
        import radeval  # noqa: F401
        installed = True
    except ImportError:
        installed = False
    if not installed:
        status = compute(records, ["radgraph", "ratescore", "green"])
        for name in ("radgraph", "ratescore", "green"):
            assert status[name] == "not computed: radeval is not installed (pip install -e '.[report-metrics]')"
    # with the package importable (a stand-in module here when it is not installed), the local-model checks run
    # before radeval is called: nothing is downloaded and a missing model is named with where it was looked for
    if not installed:
        monkeypatch.setitem(sys.modules, "radeval", types.ModuleType("radeval"))
    cache = tmp_path / "empty_hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    status = compute(records, ["ratescore", "green"])
    assert status["ratescore"] == f"not computed: {report_metrics.RATESCORE_MODELS[0]} not found at {cache} (hub cache)"
    assert "trust_remote_code" in status["green"] and "--allow-remote-code-green" in status["green"]
    status = compute(records, ["green"], ReportMetricOptions(allow_remote_code_green=True))
    assert status["green"] == f"not computed: {report_metrics.GREEN_MODEL} not found at {cache} (hub cache)"


def test_aggregates_carry_means_and_reasons():
    records = _records([("a", "a"), ("b", "c")])
    for r, v in zip(records, (1.0, 0.5)):
        r["meteor"] = v
    tree = {"by_task": {"open_qa": {"n": 2}}, "by_dataset": {}}
    tree["by_dataset"]["d"] = tree["by_task"]
    report_metrics.add_aggregates(tree, records, {"meteor": "computed (x)", "bertscore": "not computed: y"})
    assert tree["by_task"]["open_qa"]["meteor"] == 0.75
    assert tree["by_task"]["open_qa"]["not_computed"] == {"bertscore": "not computed: y"}

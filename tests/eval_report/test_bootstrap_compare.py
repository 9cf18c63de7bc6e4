"""Bootstrap intervals and the paired comparison of runs (``internvl.evaluation.bootstrap`` / ``compare``), and the
``custom_eval.py compare`` command line: numbers checked against scipy and simple cases, bad input exits 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from internvl.evaluation import bootstrap
from internvl.evaluation.compare import CompareError, compare_runs, format_table

REPO = Path(__file__).resolve().parents[2]


def test_mean_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = bootstrap.mean_ci(rng.random(30) < 0.6)
    large = bootstrap.mean_ci(rng.random(600) < 0.6)
    for ci in (small, large):
        assert ci["low"] < ci["mean"] < ci["high"]
    assert (large["high"] - large["low"]) < (small["high"] - small["low"]) / 2
    # a 0/1 mean over 600 rows: the percentile interval is close to the normal one, +-1.96 sqrt(p(1-p)/n)
    half = 1.96 * np.sqrt(large["mean"] * (1 - large["mean"]) / 600)
    assert abs((large["high"] - large["low"]) / 2 - half) < 0.01
    assert bootstrap.mean_ci([1.0, 1.0, 1.0]) == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 3}
    assert bootstrap.mean_ci([0.5])["low"] is None


def test_paired_difference():
    rng = np.random.default_rng(1)
    a = (rng.random(200) < 0.5).astype(float)
    flip = rng.random(200) < 0.3
    b = np.where(flip, 1.0, a)  # b fixes 30 % of the rows
    res = bootstrap.paired_difference(a, b)
    assert res["diff"] == pytest.approx(b.mean() - a.mean())
    assert 0 < res["low"] < res["diff"] < res["high"]
    assert res["p_value"] < 0.001
    same = bootstrap.paired_difference(a, a)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    noise = bootstrap.paired_difference(a, rng.permutation(a))
    assert noise["low"] < 0 < noise["high"] and noise["p_value"] > 0.05
    with pytest.raises(ValueError, match="differ in number"):
        bootstrap.paired_difference([1, 0], [1])


def _results(correct: list[bool], f1: list[float], question="Q?") -> dict:
    samples = [{"uid": f"mcq:{i + 1}", "dataset": "mcq", "task": "mcq", "source": "t.jsonl", "line": i + 1,
                "question": question, "reference": "A", "prediction": "A" if c else "B", "correct": c,
                "chance": 0.25} for i, c in enumerate(correct)]
    samples += [{"uid": f"open:{i + 1}", "dataset": "open", "task": "open_qa", "source": "o.jsonl", "line": i + 1,
                 "question": "q", "reference": "r", "prediction": "p", "exact_match": float(v == 1), "token_f1": v,
                 "bleu4": 0.0, "rouge_l": v} for i, v in enumerate(f1)]
    acc = float(np.mean(correct))
    mean_f1 = float(np.mean(f1))
    mcq = {"n": len(correct), "accuracy": acc, "chance": 0.25}
    open_qa = {"n": len(f1), "exact_match": float(np.mean([v == 1 for v in f1])), "token_f1": mean_f1,
               "bleu4": 0.0, "rouge_l": mean_f1, "bleu4_corpus": 0.1}
    return {"model": "m", "data": "d", "samples": samples,
            "metrics": {"by_task": {"mcq": mcq, "open_qa": open_qa},
                        "by_dataset": {"mcq": {"mcq": mcq}, "open": {"open_qa": open_qa}}}}


def test_compare_runs_pairs_rows(tmp_path):
    rng = np.random.default_rng(2)
    a_correct = [bool(x) for x in rng.random(80) < 0.3]
    b_correct = [bool(c or r < 0.5) for c, r in zip(a_correct, rng.random(80))]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_results(a_correct, [0.0, 0.5, 1.0, 0.5])))
    b.write_text(json.dumps(_results(b_correct, [1.0, 0.5, 1.0, 1.0])))
    result = compare_runs([str(a), str(b)])
    rows = {(r["task"], r["metric"]): r for r in result["comparisons"][0]["rows"]}
    acc = rows[("mcq", "accuracy")]
    assert acc["diff"] == pytest.approx(np.mean(b_correct) - np.mean(a_correct))
    assert acc["low"] <= acc["diff"] <= acc["high"] and acc["p_value"] < 0.01
    assert ("mcq", "chance") not in rows  # mcq declares accuracy as its only row-mean metric
    assert rows[("open_qa", "token_f1")]["diff"] == pytest.approx(0.375)
    assert ("open_qa", "bleu4_corpus") not in rows  # corpus-level: no pairing
    assert "accuracy" in format_table(result["comparisons"][0])


def test_compare_refuses_other_test_sets(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_results([True, False], [1.0])))
    b.write_text(json.dumps(_results([True, True], [1.0], question="another question")))
    with pytest.raises(CompareError, match="different test sets"):
        compare_runs([str(a), str(b)])


def test_compare_cli(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_results([False] * 20, [0.0, 0.0])))
    b.write_text(json.dumps(_results([True] * 20, [1.0, 1.0])))
    cmd = [sys.executable, str(REPO / "eval" / "custom_eval.py"), "compare"]
    res = subprocess.run(cmd + [str(a), str(b), "--html", str(tmp_path / "c.html")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "accuracy" in ln)
    assert "+1.0000" in line and "[+1.0000, +1.0000]" in line
    html = (tmp_path / "c.html").read_text()
    assert "accuracy" in html and "+1.0000" in html
    (tmp_path / "bad.json").write_text("{not json")
    for bad, message in (([str(a), str(tmp_path / "missing.json")], "cannot read"),
                         ([str(a), str(tmp_path / "bad.json")], "not JSON"), ([str(a)], "at least two")):
        res = subprocess.run(cmd + bad + ["--no-html"], capture_output=True, text=True)
        assert res.returncode == 2 and res.stderr.startswith("error:") and message in res.stderr, res.stderr
        assert "Traceback" not in res.stderr

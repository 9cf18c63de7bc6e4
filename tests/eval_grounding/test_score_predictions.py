"""``custom_eval.py --predictions``: saved answers scored exactly like the model-in-the-loop run, and every
mismatch between a predictions file and its test set is one ``error:`` line naming the predictions file and line."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from internvl.evaluation.predictions import PredictionsError, score_predictions
from internvl.evaluation.runner import evaluate, load_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("build_demo_for_pred", REPO / "data" / "build_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("preddemo") / "demo"
    mod.build(str(out), seed=2, n_train=2, n_test_mcq=6, n_test_open=4)
    return out


@pytest.fixture(scope="module")
def model_run(tiny_model_dir, demo, tmp_path_factory):
    model, tokenizer = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    out = tmp_path_factory.mktemp("modelrun") / "results.json"
    return evaluate(str(tiny_model_dir), str(demo / "test_meta.json"), str(out), model=model, tokenizer=tokenizer,
                    max_new_tokens=4, progress=False)


def _write(path: Path, lines) -> Path:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def _answers(results: dict, key=lambda r: r["id"] if r["id"] is not None else r["uid"]) -> list[dict]:
    return [{"id": key(r), "answer": r["prediction"]} for r in results["samples"]]


def _cli(*args):
    return subprocess.run([sys.executable, str(REPO / "eval" / "custom_eval.py"), *map(str, args)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "INTERNVL_NO_PLUGINS": "1"})


def test_predictions_give_the_model_runs_metrics(model_run, demo, tmp_path):
    preds = _write(tmp_path / "answers.jsonl", reversed(_answers(model_run)))  # order does not matter
    out = tmp_path / "scored.json"
    proc = _cli("--data", demo / "test_meta.json", "--predictions", preds, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scored = json.loads(out.read_text())
    strip = lambda m: json.loads(json.dumps(m).replace("scored_plots", "X").replace("results_plots", "X"))
    assert strip(scored["metrics"]) == strip(model_run["metrics"])
    assert scored["row_metrics"] == model_run["row_metrics"]
    assert scored["model"] is None and scored["predictions"] == str(preds.resolve())
    assert scored["summary"]["n_scored"] == 10 and scored["summary"]["n_missing"] == 0 and scored["missing"] == []
    assert (tmp_path / "scored.html").is_file()
    assert all((tmp_path / p).is_file() for m in scored["metrics"]["by_task"].values() for p in m["plots"])


def test_rows_without_id_match_by_uid(demo, tmp_path):
    rows = [json.loads(ln) for ln in (demo / "test_mcq.jsonl").read_text().splitlines() if ln.strip()]
    for r in rows:
        r.pop("id", None)
    data = _write(tmp_path / "noid.jsonl", rows)  # scoring reads no media: the image paths need not resolve
    preds = _write(tmp_path / "p.jsonl", [{"id": f"noid:{i + 1}", "answer": "A"} for i in range(len(rows))])
    res = score_predictions(str(data), str(preds), str(tmp_path / "r.json"), html=False)
    assert res["summary"]["n_scored"] == len(rows)
    assert all(s["prediction"] == "A" and s["pred_letter"] == "A" for s in res["samples"])


@pytest.mark.parametrize("case,lines,needle", [
    ("unknown", [{"id": "nope", "answer": "A"}], "p.jsonl:2: id 'nope' names no test row"),
    ("duplicate", ["FIRST"], "p.jsonl:2: duplicate prediction for id 'test_00000' (first at line 1)"),
    ("malformed", ["{not json"], "p.jsonl:2: not a JSON line"),
    ("no answer", [{"id": "x"}], "p.jsonl:2: 'answer' must be a string"),
])
def test_mismatches_are_one_error_line(demo, tmp_path, capsys, case, lines, needle):
    rows = [json.loads(ln) for ln in (demo / "test_mcq.jsonl").read_text().splitlines() if ln.strip()]
    first = {"id": rows[0]["id"], "answer": "A"}
    preds = _write(tmp_path / "p.jsonl", [first] + [first if ln == "FIRST" else ln for ln in lines])
    spec = importlib.util.spec_from_file_location("custom_eval_cli", REPO / "eval" / "custom_eval.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    code = cli.main(["--data", str(demo / "test_mcq.jsonl"), "--predictions", str(preds), "--out",
                     str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_missing_predictions_error_or_counted(demo, tmp_path):
    rows = [json.loads(ln) for ln in (demo / "test_mcq.jsonl").read_text().splitlines() if ln.strip()]
    preds = _write(tmp_path / "p.jsonl", [{"id": r["id"], "answer": "B"} for r in rows[:4]])
    with pytest.raises(PredictionsError, match=r"p\.jsonl: no prediction for 2 test row\(s\), first .*test_mcq\.jsonl:5"):
        score_predictions(str(demo / "test_mcq.jsonl"), str(preds), str(tmp_path / "r.json"), html=False)
    res = score_predictions(str(demo / "test_mcq.jsonl"), str(preds), str(tmp_path / "r.json"), allow_missing=True,
                            html=False)
    assert res["summary"]["n_missing"] == 2 and res["summary"]["n_scored"] == 4
    assert [m["line"] for m in res["missing"]] == [5, 6]
    assert res["metrics"]["by_task"]["mcq"]["n"] == 4


def test_duplicate_test_ids_are_named(demo, tmp_path):
    rows = [json.loads(ln) for ln in (demo / "test_mcq.jsonl").read_text().splitlines() if ln.strip()][:2]
    rows[1]["id"] = rows[0]["id"]
    data = _write(tmp_path / "dup.jsonl", rows)
    preds = _write(tmp_path / "p.jsonl", [{"id": rows[0]["id"], "answer": "A"}])
    with pytest.raises(PredictionsError, match=r"dup\.jsonl:2: test row id .* also used by .*dup\.jsonl:1"):
        score_predictions(str(data), str(preds), str(tmp_path / "r.json"), html=False)


def test_inference_v2_answers_score_like_the_model_run(tiny_model_dir, model_run, demo, tmp_path):
    """What ``inference_v2.py --jsonl`` writes is a valid predictions file and gives the model run's metrics."""
    spec = importlib.util.spec_from_file_location("inference_v2_for_pred", REPO / "inference_v2.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    answers = tmp_path / "answers.jsonl"
    assert inference.main(["--model", str(tiny_model_dir), "--jsonl", str(demo / "test_mcq.jsonl"), "--out",
                           str(answers), "--max-new-tokens", "4", "--device", "cpu"]) == 0
    scored = score_predictions(str(demo / "test_mcq.jsonl"), str(answers), str(tmp_path / "r.json"), html=False)
    ours = {k: v for k, v in scored["metrics"]["by_task"]["mcq"].items() if k != "plots"}
    theirs = {k: v for k, v in model_run["metrics"]["by_dataset"]["demo_mcq"]["mcq"].items() if k != "plots"}
    assert ours == theirs
    assert [s["prediction"] for s in scored["samples"]] == \
        [s["prediction"] for s in model_run["samples"] if s["dataset"] == "demo_mcq"]

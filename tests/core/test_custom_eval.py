"""The evaluator end to end on the tiny model: CLI and results.json schema, batching, resume after a crash,
the skip budget for unreadable media, multi-turn / system / text-only / multi-image rows, reader options."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from internvl.data.processor import RowProcessor
from internvl.evaluation.runner import evaluate, load_model, read_samples

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("build_demo_for_eval", REPO / "data" / "build_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("evaldemo") / "demo"
    mod.build(str(out), seed=1, n_train=4, n_test_mcq=10, n_test_open=5)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    return str(tiny_model_dir), model, tokenizer


def _run(tiny, data, out, **kw):
    model_dir, model, tokenizer = tiny
    kw.setdefault("max_new_tokens", 4)
    return evaluate(model_dir, str(data), str(out), model=kw.pop("model", model), tokenizer=tokenizer,
                    progress=False, **kw)


def test_cli_writes_results_schema_plots_and_table(tiny_model_dir, demo, tmp_path):
    out = tmp_path / "res" / "results.json"
    env = {**os.environ, "INTERNVL_NO_PLUGINS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "eval" / "custom_eval.py"), "--model", str(tiny_model_dir),
                           "--data", str(demo / "test_meta.json"), "--out", str(out), "--batch-size", "4",
                           "--max-new-tokens", "4", "--no-progress"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "demo_mcq" in proc.stdout and "accuracy=" in proc.stdout and "exact_match=" in proc.stdout
    res = json.loads(out.read_text())
    assert res["schema_version"] == 1 and res["generation"]["do_sample"] is False
    assert res["summary"]["n_rows"] == res["summary"]["n_scored"] == 15 and res["skipped"] == []
    assert set(res["metrics"]["by_task"]) == {"mcq", "open_qa"}
    assert set(res["metrics"]["by_dataset"]) == {"demo_mcq", "demo_open"}
    mcq = res["metrics"]["by_dataset"]["demo_mcq"]["mcq"]
    assert mcq["n"] == 10 and mcq["chance"] == 0.25 and 0.0 <= mcq["accuracy"] <= 1.0
    for s in res["samples"]:
        assert {"uid", "id", "dataset", "line", "task", "question", "reference", "prediction"} <= set(s)
        assert isinstance(s["prediction"], str)
    plots = [p for m in res["metrics"]["by_task"].values() for p in m["plots"]]
    assert plots and all((out.parent / p).is_file() for p in plots)
    assert not (out.parent / "results.json.partial.jsonl").exists()


def test_batching_does_not_change_greedy_predictions(tiny, demo, tmp_path):
    one = _run(tiny, demo / "test_mcq.jsonl", tmp_path / "b1.json", batch_size=1, limit=6)
    many = _run(tiny, demo / "test_mcq.jsonl", tmp_path / "b5.json", batch_size=5, limit=6)
    assert [s["prediction"] for s in one["samples"]] == [s["prediction"] for s in many["samples"]]
    assert len(one["samples"]) == 6


class _CrashingModel:
    """The real model, except that the n-th generate_text call dies (a killed run)."""

    def __init__(self, model, crash_on: int):
        self._model, self._crash_on, self._calls = model, crash_on, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate_text(self, *args, **kwargs):
        self._calls += 1
        if self._calls == self._crash_on:
            raise KeyboardInterrupt("simulated kill")
        return self._model.generate_text(*args, **kwargs)


def test_resume_after_a_crash_reuses_finished_predictions(tiny, demo, tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        _run(tiny, demo / "test_mcq.jsonl", out, batch_size=3, model=_CrashingModel(tiny[1], crash_on=2))
    partial = Path(str(out) + ".partial.jsonl")
    lines = partial.read_text().splitlines()
    assert len(lines) == 1 + 3 and not out.exists()
    done = {json.loads(ln)["uid"]: json.loads(ln)["prediction"] for ln in lines[1:]}
    res = _run(tiny, demo / "test_mcq.jsonl", out, batch_size=3)
    assert res["summary"]["n_resumed"] == 3 and res["summary"]["n_scored"] == 10
    assert all(s["prediction"] == done[s["uid"]] for s in res["samples"] if s["uid"] in done)
    assert not partial.exists()
    # other generation settings: the old partial file does not apply
    with pytest.raises(KeyboardInterrupt):
        _run(tiny, demo / "test_mcq.jsonl", out, batch_size=3, model=_CrashingModel(tiny[1], crash_on=2))
    res = _run(tiny, demo / "test_mcq.jsonl", out, batch_size=3, max_new_tokens=3)
    assert res["summary"]["n_resumed"] == 0


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _turns(*values):
    return [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(values)]


def test_unreadable_media_fails_or_is_skipped_within_budget(tiny, demo, tmp_path):
    rows = [json.loads(ln) for ln in (demo / "test_open.jsonl").read_text().splitlines()]
    rows[1]["image"] = "images/test/missing.png"
    for r in rows:
        r["image"] = str(demo / r["image"])
    data = _jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(RuntimeError, match="missing.png"):
        _run(tiny, data, tmp_path / "fail.json", batch_size=2)
    res = _run(tiny, data, tmp_path / "skip.json", batch_size=2, max_skip=1, resume=False)
    assert res["summary"]["n_skipped"] == 1 and res["summary"]["n_scored"] == len(rows) - 1
    assert res["skipped"][0]["line"] == 2 and "missing.png" in res["skipped"][0]["error"]


def test_multiturn_system_textonly_and_multi_image_rows(tiny, demo, tmp_path):
    img = "images/test/00000.png"
    rows = [
        {"image": img, "conversations": [{"from": "system", "value": "Be brief."}, *_turns("<image>\nColour?", "red")]},
        {"image": img, "conversations": _turns("<image>\nWhat is it?", "a shape", "Which colour?", "red")},
        {"conversations": _turns("Say red.", "red")},
        {"image": [img, "images/test/00001.png"], "conversations": _turns("<image>\n<image>\nSame colour?", "no")},
        {"image": img, "conversations": _turns("No placeholder: colour?", "red")},
    ]
    data = _jsonl(demo / "mixed.jsonl", rows)
    res = _run(tiny, data, tmp_path / "m.json", batch_size=4)
    assert res["summary"]["n_scored"] == 5 and {s["task"] for s in res["samples"]} == {"open_qa"}
    bad = _jsonl(demo / "bad.jsonl", [{"image": img, "conversations": _turns("<image> <image> two?", "x")}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: 2 '<image>' placeholder\(s\) in the user turns but 1 media"):
        _run(tiny, bad, tmp_path / "bad.json")


def test_meta_reader_options_reach_the_image_reader(tiny, tmp_path):
    Image.new("RGB", (448, 112), (200, 30, 30)).save(tmp_path / "wide.png")
    rows = [{"image": "wide.png", "conversations": _turns("<image>\nColour?", "red")}]
    _jsonl(tmp_path / "w.jsonl", rows)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"one": {"root": str(tmp_path), "annotation": str(tmp_path / "w.jsonl"),
                                        "max_dynamic_patch": 1},
                                "four": {"root": str(tmp_path), "annotation": str(tmp_path / "w.jsonl")}}))
    model = tiny[1]
    by_name = {s.dataset: s for s in read_samples(str(meta))}
    assert model.config.max_dynamic_patch == 4

    def n_items(proc, s):
        return len(proc.prompt_inputs(s.row, s.where, root=s.root, dataset_options=s.options).items)

    proc = RowProcessor(model.config, tiny[2])
    assert n_items(proc, by_name["one"]) == 1 and n_items(proc, by_name["four"]) == 5  # 4x1 grid + thumbnail
    cli = RowProcessor(model.config, tiny[2], options={"max_dynamic_patch": 2})  # --max-num 2; the meta entry wins
    assert n_items(cli, by_name["four"]) == 3 and n_items(cli, by_name["one"]) == 1


def test_unscorable_rows_fail_before_any_generation(tiny, tmp_path):
    rows = [{"conversations": _turns("Say red.", "red")},
            {"task": "mcq", "conversations": _turns("Which colour? (no options listed)", "A")}]
    data = _jsonl(tmp_path / "u.jsonl", rows)
    with pytest.raises(ValueError, match=r"u.jsonl:2: task .mcq. cannot score this row .*no options"):
        _run(tiny, data, tmp_path / "u.json", model=_CrashingModel(tiny[1], crash_on=1))
    with pytest.raises(KeyError, match="no_such_task_here"):
        _run(tiny, data, tmp_path / "u.json", task="no_such_task_here", model=_CrashingModel(tiny[1], crash_on=1))


def test_rows_the_training_dataset_rejects_are_rejected(tiny, demo, tmp_path):
    img = str(demo / "images/test/00000.png")
    rows = [{"image": [img, img], "conversations": _turns("two images, no placeholder", "x")},
            {"image": img, "video": "clip.mp4", "conversations": _turns("<image>\nq", "x")}]
    data = _jsonl(tmp_path / "r.jsonl", rows)
    proc = RowProcessor(tiny[1].config, tiny[2])
    first, second = read_samples(str(data))
    with pytest.raises(ValueError, match=r"r.jsonl:1: 0 '<image>' placeholder\(s\) in the user turns but 2"):
        proc.prompt_inputs(first.row, first.where, root=first.root)
    with pytest.raises(ValueError, match="r.jsonl:2: row has 'video' media but no media reader is registered"):
        proc.prompt_inputs(second.row, second.where, root=second.root)

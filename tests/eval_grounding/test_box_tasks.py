"""The ``grounding`` and ``detection`` eval tasks: IoU accuracy, precision/recall and torchmetrics mAP against
hand-computed values (identical, nested, no overlap), unparsed answers counted, malformed references named, and
the whole path through ``custom_eval.py --predictions`` with the box overlay plot."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from internvl.evaluation import create_task
from internvl.grounding import MalformedBoxError
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _sample(reference: str, **row) -> dict:
    return {"reference": reference, "where": "g.jsonl:3", "media_root": None, **row}


def _score(task, pairs):
    return [{**task.score(pred, _sample(ref)), "source": "g.jsonl", "line": i + 1}
            for i, (ref, pred) in enumerate(pairs)]


def test_grounding_iou_accuracy_and_unparsed(tmp_path):
    task = create_task("grounding")
    ref = "<ref>lesion</ref><box>[[0, 0, 100, 100]]</box>"
    records = _score(task, [
        (ref, "<ref>lesion</ref><box>[[0, 0, 100, 100]]</box>"),   # identical: 1
        (ref, "[[20, 20, 80, 80]]"),                                 # nested: 0.36
        (ref, "<box>[[10, 10, 90, 90]]</box>"),                      # nested: 0.64
        (ref, "<box>[[200, 200, 300, 300]]</box>"),                  # no overlap: 0
        (ref, "I cannot tell"),                                      # unparsed: 0
    ])
    assert [r["iou"] for r in records] == pytest.approx([1.0, 0.36, 0.64, 0.0, 0.0])
    agg = task.aggregate(records, str(tmp_path))
    assert agg["n"] == 5 and agg["mean_iou"] == pytest.approx(2.0 / 5)
    assert agg["acc_iou50"] == pytest.approx(2 / 5) and "acc_iou25" not in agg
    assert agg["n_unparsed"] == 1 and agg["unparsed_rate"] == pytest.approx(0.2)
    assert [Path(p).name for p in agg["plots"]] == ["grounding_iou.png"]  # no images: no overlay


def test_grounding_matches_phrases_and_3d_thresholds(tmp_path):
    task = create_task("grounding")
    ref = "<ref>a</ref><box>[[0, 0, 0, 100, 100, 100]]</box><ref>b</ref><box>[[500, 500, 500, 600, 600, 600]]</box>"
    # b answered first: matched by phrase, not position; a's box is half of the reference (IoU 0.5)
    pred = "<ref>b</ref><box>[[500, 500, 500, 600, 600, 600]]</box><ref>a</ref><box>[[0, 0, 0, 100, 100, 50]]</box>"
    rec = task.score(pred, _sample(ref))
    assert rec["ious"] == pytest.approx([0.5, 1.0]) and rec["hit50"] == 1.0
    low = task.score("<box>[[0, 0, 0, 100, 100, 30]]</box>", _sample(ref))  # a: 0.3 by position, b: missing
    assert low["ious"] == pytest.approx([0.3, 0.0]) and low["hit25"] == 0.5 and low["hit50"] == 0.0
    agg = task.aggregate([{**rec, "source": "v", "line": 1}, {**low, "source": "v", "line": 2}], str(tmp_path))
    assert agg["acc_iou25"] == pytest.approx(0.75) and agg["acc_iou50"] == pytest.approx(0.5)
    assert agg["mean_iou"] == pytest.approx((0.75 + 0.15) / 2)


@pytest.mark.parametrize("reference,needle", [
    ("<box>[[0, 0, 100]]</box>", "g.jsonl:3: box [0, 0, 100]: 3 numbers"),
    ("<box>[[10, 0, 5, 100]]</box>", "g.jsonl:3: box [10, 0, 5, 100]: x1 > x2"),
    ("<box>[[0, 0, 10, 10], [0, 0, 20, 20]]</box>", "exactly one box per phrase"),
    ("no box at all", "exactly one box per phrase"),
])
def test_grounding_reference_errors_are_named(reference, needle):
    with pytest.raises(MalformedBoxError) as info:
        create_task("grounding").score("[[0, 0, 1, 1]]", _sample(reference))
    assert needle in str(info.value)


def _coco_ap(hits_in_rank_order, n_true):
    """101-point interpolated AP (COCO) of a ranked list of hit/miss flags, by hand."""
    tp = fp = 0
    points = []
    for hit in hits_in_rank_order:
        tp, fp = tp + hit, fp + (not hit)
        points.append((tp / n_true, tp / (tp + fp)))
    ap = 0.0
    for k in range(101):
        r = k / 100
        ap += max([p for rec, p in points if rec >= r - 1e-12], default=0.0)
    return ap / 101


def test_detection_precision_recall_and_map_against_hand_values(tmp_path):
    task = create_task("detection")
    two = "<ref>nodule</ref><box>[[0, 0, 100, 100], [500, 500, 600, 600]]</box>"

    def agg(pairs):
        return task.aggregate(_score(task, pairs), str(tmp_path))

    same = agg([(two, "<box>[[500, 500, 600, 600], [0, 0, 100, 100]]</box>")])
    assert (same["precision50"], same["recall50"], same["map"], same["map_50"]) == (1.0, 1.0, 1.0, 1.0)
    none = agg([(two, "<box>[[200, 200, 300, 300]]</box>")])
    assert (none["precision50"], none["recall50"], none["map"]) == (0.0, 0.0, 0.0)
    # nested, IoU 0.64: a hit at the thresholds 0.50, 0.55, 0.60 of COCO's ten, a miss at 0.75
    nested = agg([("<box>[[0, 0, 100, 100]]</box>", "<box>[[10, 10, 90, 90]]</box>")])
    assert nested["map_50"] == pytest.approx(1.0) and nested["map_75"] == pytest.approx(0.0)
    assert nested["map"] == pytest.approx(0.3, abs=1e-6)
    # one of two found, no false positive: precision 1, recall 0.5, AP = 51/101
    half = agg([(two, "[[0, 0, 100, 100]]")])
    assert (half["precision50"], half["recall50"]) == (1.0, 0.5)
    assert half["map_50"] == pytest.approx(_coco_ap([True], 2), abs=1e-4) == pytest.approx(51 / 101, abs=1e-4)
    # unparsed answer: counted, no detections
    empty = agg([(two, "nothing found"), (two, "[[0, 0, 100, 100], [500, 500, 600, 600]]")])
    assert empty["n_unparsed"] == 1 and empty["recall50"] == 0.5 and empty["precision50"] == 1.0


def test_detection_3d_has_precision_recall_and_no_map(tmp_path):
    task = create_task("detection")
    recs = _score(task, [("<box>[[0, 0, 0, 100, 100, 100]]</box>", "[[0, 0, 0, 100, 100, 100], [1, 1, 1, 2, 2, 2]]")])
    out = task.aggregate(recs, str(tmp_path))
    assert (out["precision50"], out["recall50"]) == (0.5, 1.0) and "map" not in out and "map" in out["not_computed"]


def test_predictions_mode_scores_grounding_with_overlay_plot(tmp_path, capsys):
    rows, preds = [], []
    for i, (w, h) in enumerate([(64, 32), (40, 80)]):
        Image.new("RGB", (w, h), (30, 30, 30)).save(tmp_path / f"img{i}.png")
        rows.append({"id": f"r{i}", "image": f"img{i}.png", "task": "grounding",
                     "conversations": [{"from": "human", "value": "<image>\nWhere is <ref>the spot</ref>?"},
                                       {"from": "gpt", "value": "<ref>the spot</ref><box>[[100, 100, 500, 500]]</box>"}]})
        preds.append({"id": f"r{i}", "answer": "<ref>the spot</ref><box>[[100, 100, 500, 500]]</box>" if i == 0
                      else "somewhere"})
    data, answers = tmp_path / "ground.jsonl", tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers.write_text("".join(json.dumps(p) + "\n" for p in preds))
    spec = importlib.util.spec_from_file_location("custom_eval_cli_g", REPO / "eval" / "custom_eval.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "res.json"
    assert cli.main(["--data", str(data), "--predictions", str(answers), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    m = res["metrics"]["by_task"]["grounding"]
    assert (m["n"], m["mean_iou"], m["acc_iou50"], m["n_unparsed"]) == (2, 0.5, 0.5, 1)
    assert {Path(p).name for p in m["plots"]} == {"grounding_iou.png", "grounding_boxes.png"}
    assert all((tmp_path / p).is_file() for p in m["plots"])
    # a malformed reference box: one error line naming the test row, exit status 2
    rows[1]["conversations"][1]["value"] = "<ref>the spot</ref><box>[[600, 100, 500, 500]]</box>"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert cli.main(["--data", str(data), "--predictions", str(answers), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {data}:2: box [600, 100, 500, 500]: x1 > x2"), err

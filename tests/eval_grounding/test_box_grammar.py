"""``internvl.grounding``: strict parsing of data boxes (named errors with file:line), lenient parsing of answers
(malformed candidates counted, never repaired), writing, 2D normalisation, and IoU against a hand computation."""
from __future__ import annotations

import pytest
from internvl.grounding import (
    MalformedBoxError,
    box_iou,
    format_grounded,
    normalize_2d,
    parse_answer,
    parse_grounded,
    to_pixels_2d,
)


def test_strict_parses_2d_and_3d_groups():
    text = "<ref>left lesion</ref><box>[[10, 20, 30, 40], [0, 0, 1000, 1000]]</box>\n<box>[[1,2,3,4]]</box>"
    groups = parse_grounded(text, "t.jsonl:1")
    assert [g.phrase for g in groups] == ["left lesion", None]
    assert groups[0].boxes == [(10, 20, 30, 40), (0, 0, 1000, 1000)] and groups[1].boxes == [(1, 2, 3, 4)]
    vol = parse_grounded("<ref>mass</ref><box>[[100, 200, 300, 400, 500, 600]]</box>", "v.jsonl:2", dims=3)
    assert vol[0].boxes == [(100, 200, 300, 400, 500, 600)]
    assert parse_grounded("no box here, <ref>phrase only</ref>", "q.jsonl:1") == []


@pytest.mark.parametrize("text,reason", [
    ("<box>[[1, 2, 3]]</box>", "3 numbers, expected 4 (2D) or 6 (3D)"),
    ("<box>[[1, 2, 3, 4, 5]]</box>", "5 numbers"),
    ("<box>[[50, 2, 30, 4]]</box>", "x1 > x2 (50 > 30)"),
    ("<box>[[1, 2, 50, 4, 5, 6]]</box>", "z1 > z2 (50 > 6)"),
    ("<box>[[1, 2, 3, 1001]]</box>", "coordinates must lie in 0..1000"),
    ("<box>[[-1, 2, 3, 4]]</box>", "coordinates must lie in 0..1000"),
    ("<box>[[1, 2, 3, 4]]", "unbalanced <box> / </box> tags"),
    ("<box>[1, 2, 3, 4]</box>", "expected [[x1, y1, x2, y2], ...]"),
    ("<box>[[a, 2, 3, 4]]</box>", "not numbers"),
    ("<box>[[1, 2, 3, 4], [1, 2, 3, 4, 5, 6]]</box>", "6 numbers, expected 4"),
    ("<box>[[1, 2, 3, 4]]</box><box>[[1, 2, 3, 4, 5, 6]]</box>", "6 numbers, expected 4"),
])
def test_malformed_boxes_raise_named_error_with_file_line(text, reason):
    with pytest.raises(MalformedBoxError) as info:
        parse_grounded(text, "data/test.jsonl:17")
    assert str(info.value).startswith("data/test.jsonl:17: ") and reason in str(info.value)
    assert info.value.reason == "malformed_box"


def test_dims_is_enforced():
    with pytest.raises(MalformedBoxError, match="4 numbers, expected 6"):
        parse_grounded("<box>[[1, 2, 3, 4]]</box>", "v.jsonl:1", dims=3)


def test_lenient_answer_counts_malformed_and_reads_bare_lists():
    ans = parse_answer("I think <ref>lesion</ref><box>[[10, 20, 30, 40], [90, 20, 30, 40], [1, 2]]</box>.")
    assert ans.boxes == [(10, 20, 30, 40)] and ans.n_malformed == 2 and ans.groundings[0].phrase == "lesion"
    bare = parse_answer("The lesion is at [[100, 120, 300, 330]] in the image")
    assert bare.boxes == [(100, 120, 300, 330)] and bare.n_malformed == 0
    assert parse_answer("no idea").boxes == [] and parse_answer("").n_malformed == 0
    assert parse_answer("[[1, 2, 3, 4]]", dims=3).n_malformed == 1  # a 2D box where a 3D one is asked for


def test_format_round_trips_and_2d_normalisation():
    text = format_grounded([(10.4, 20, 30, 40)], "spot")
    assert text == "<ref>spot</ref><box>[[10, 20, 30, 40]]</box>"
    assert parse_grounded(text, "x:1")[0].boxes == [(10, 20, 30, 40)]
    assert normalize_2d((32, 10, 64, 30), width=64, height=40) == (500, 250, 1000, 750)
    assert to_pixels_2d((500, 250, 1000, 750), 64, 40) == (32, 10, 64, 30)


def _reference_iou(a, b):
    """Intersection over union by hand (any dimension; boxes are (mins..., maxs...))."""
    d = len(a) // 2
    inter, vol_a, vol_b = 1.0, 1.0, 1.0
    for i in range(d):
        inter *= max(0.0, min(a[i + d], b[i + d]) - max(a[i], b[i]))
        vol_a *= a[i + d] - a[i]
        vol_b *= b[i + d] - b[i]
    return inter / (vol_a + vol_b - inter)


@pytest.mark.parametrize("a,b", [
    ((0, 0, 10, 10), (0, 0, 10, 10)),              # identical
    ((0, 0, 10, 10), (20, 20, 30, 30)),            # no overlap
    ((0, 0, 10, 10), (10, 0, 20, 10)),             # touching edge
    ((0, 0, 10, 10), (2, 2, 8, 8)),                # nested
    ((0, 0, 10, 10), (5, 5, 15, 15)),              # partial
    ((0, 0, 0, 10, 10, 10), (0, 0, 0, 10, 10, 10)),
    ((0, 0, 0, 10, 10, 10), (20, 20, 20, 30, 30, 30)),
    ((0, 0, 0, 10, 10, 10), (2, 2, 2, 8, 8, 8)),
    ((0, 0, 0, 10, 10, 10), (5, 5, 5, 15, 15, 15)),
])
def test_iou_matches_hand_computation(a, b):
    assert box_iou([a], [b])[0, 0] == pytest.approx(_reference_iou(a, b), abs=1e-6)

"""3D box plots of the ``grounding``/``detection`` tasks: three orthogonal slices through the reference box centre
with the reference and predicted boxes, written per dataset next to the 2D overlays; a scored reference that
names row boxes instead of holding tokens is a named error."""
from __future__ import annotations

import pytest
from PIL import Image

from internvl.evaluation import create_task
from internvl.evaluation.plots import draw_box_planes, new_figure

TRUE = "<ref>lesion</ref><box>[[100, 200, 300, 400, 500, 600]]</box>"


def _records(task, preds):
    return [{**task.score(p, {"reference": TRUE, "where": "v.jsonl:1", "media_root": None}), "source": "v.jsonl",
             "line": i + 1} for i, p in enumerate(preds)]


@pytest.mark.parametrize("name", ["grounding", "detection"])
def test_3d_slice_figure_is_written(tmp_path, name):
    task = create_task(name)
    recs = _records(task, ["<box>[[150, 250, 350, 450, 550, 650]]</box>", "no idea", "[[0, 0, 0, 50, 50, 50]]"])
    out = task.aggregate(recs, str(tmp_path))
    figure = tmp_path / f"{name}_boxes_3d.png"
    assert str(figure) in out["plots"] and figure.is_file()
    with Image.open(figure) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 3 * 150  # three rows of three slices
    assert not (tmp_path / f"{name}_boxes.png").exists()  # no 2D rows: no 2D overlay


def test_planes_show_cross_sections_through_the_true_centre():
    _, axes = new_figure(1, 3)
    draw_box_planes(axes, [(100, 200, 300, 400, 500, 600)], [(150, 250, 350, 450, 550, 650), (0, 0, 0, 50, 50, 50)])
    axial, coronal, sagittal = axes
    assert axial.get_title() == "axial (z = 450)" and sagittal.get_title() == "sagittal (x = 250)"
    rects = [(p.get_x(), p.get_y(), p.get_width(), p.get_height(), p.get_linestyle()) for p in axial.patches]
    assert rects[0][:4] == (100, 200, 300, 300) and rects[1][:4] == (150, 250, 300, 300)  # x-y cross sections
    assert rects[2][4] == ":"  # the far box does not cross z = 450: drawn dotted (projection)
    assert [(p.get_x(), p.get_y()) for p in coronal.patches][:2] == [(100, 300), (150, 350)]  # x-z
    assert [(p.get_x(), p.get_y()) for p in sagittal.patches][:2] == [(200, 300), (250, 350)]  # y-z


def test_reference_naming_row_boxes_is_a_named_error():
    from internvl.grounding import MalformedBoxError

    with pytest.raises(MalformedBoxError, match=r"v.jsonl:1: the reference names row boxes \['lesion'\]"):
        create_task("grounding").score("x", {"reference": "<ref>lesion</ref><box>lesion</box>", "where": "v.jsonl:1",
                                             "boxes": {"lesion": {"space": "pixel", "coords": [[0, 0, 1, 1]]}}})

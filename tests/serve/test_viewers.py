"""The media viewers without a browser: which viewer a file gets (plugins' before the core image viewer), the
slide viewer's zoom and pan over Deep Zoom tiles and its tissue grid, the volume viewer's slices, slice position and
CT windows, thumbnails for the HTML report."""
from __future__ import annotations

import numpy as np
import pytest

from internvl.serve.viewers import ViewerError, ViewState, crop_box, viewer_for_path
from serve_models import FIXTURE_SLIDE, synthetic_slide, synthetic_volume


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("viewer_media")
    Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(root / "noise.png")
    return {"image": root / "noise.png", "slide": synthetic_slide(root / "slide.tiff"),
            "volume": synthetic_volume(root / "head.nii.gz"), "root": root}


def test_viewer_choice(media):
    assert viewer_for_path(str(media["image"])).kind == "image"
    assert viewer_for_path(str(media["slide"])).kind == "wsi"  # a .tiff that OpenSlide reads: the slide viewer
    assert viewer_for_path(str(media["volume"])).kind == "volume"
    (media["root"] / "notes.txt").write_text("x")
    with pytest.raises(ViewerError, match="no registered viewer"):
        viewer_for_path(str(media["root"] / "notes.txt"))
    with pytest.raises(ViewerError, match="not found"):
        viewer_for_path(str(media["root"] / "missing.png"))


def test_crop_box_clamps():
    assert crop_box(100, 50, ViewState()) == (0, 0, 100, 50)
    assert crop_box(100, 50, ViewState(zoom=4, center=(1.0, 0.0))) == (75, 0, 100, 12)


def test_slide_zoom_pan_and_grid(media):
    viewer = viewer_for_path(str(media["slide"]))
    handle = viewer.open(str(media["slide"]))
    try:
        assert "tissue tiles" in viewer.info(handle) and handle.grid
        whole = np.asarray(viewer.render(handle, ViewState(overlay=False)))
        with_grid = np.asarray(viewer.render(handle, ViewState(overlay=True)))
        assert whole.std() > 10 and (whole != with_grid).any()
        left = np.asarray(viewer.render(handle, ViewState(zoom=8, center=(0.3, 0.5), overlay=False)))
        right = np.asarray(viewer.render(handle, ViewState(zoom=8, center=(0.7, 0.5), overlay=False)))
        assert left.shape == right.shape == (512, 512, 3)
        assert (left != right).any() and left.std() > 10
        # zoomed in, one view pixel covers fewer slide pixels: the 8x view is not the 1x view scaled
        assert not np.array_equal(left, whole)
    finally:
        viewer.close(handle)


@pytest.mark.skipif(not FIXTURE_SLIDE.is_file(), reason=f"fixture slide {FIXTURE_SLIDE} absent (no ../shared)")
def test_fixture_slide_without_scale_still_renders():
    viewer = viewer_for_path(str(FIXTURE_SLIDE))
    handle = viewer.open(str(FIXTURE_SLIDE))
    try:
        assert "no tissue grid" in viewer.info(handle)  # 352.8 µm/px from a 72-dpi tag: no grid, still a view
        assert np.asarray(viewer.render(handle, ViewState())).std() > 10
    finally:
        viewer.close(handle)


def test_volume_slices_and_windows(media):
    viewer = viewer_for_path(str(media["volume"]))
    handle = viewer.open(str(media["volume"]))
    assert viewer.default_window(handle) == "brain" and "48x48x48" in viewer.info(handle)
    views = {w: np.asarray(viewer.render(handle, ViewState(window=w))) for w in viewer.window_presets}
    assert set(views) == {"auto", "brain", "blood", "bone"}
    assert all(v.std() > 10 for v in views.values())
    assert not np.array_equal(views["brain"], views["bone"])
    middle = views["brain"]
    edge = np.asarray(viewer.render(handle, ViewState(window="brain", slice=0.1)))
    assert not np.array_equal(middle, edge)


def test_thumbnails(media):
    for key in ("image", "slide", "volume"):
        thumb = viewer_for_path(str(media[key])).thumbnail(str(media[key]), 96)
        assert max(thumb.size) <= 96 and np.asarray(thumb).std() > 5


@pytest.mark.skipif(not FIXTURE_SLIDE.is_file(), reason=f"fixture slides absent at {FIXTURE_SLIDE.parent}")
def test_unreadable_slide_is_a_viewer_error_naming_the_tile():
    from internvl.evaluation.html_report import thumbnail

    path = str(FIXTURE_SLIDE.parent / "unreadable.svs")  # opens, but its tile data is corrupt
    viewer = viewer_for_path(path)
    handle = viewer.open(path)
    with pytest.raises(ViewerError, match="unreadable.svs: Deep Zoom tile"):
        viewer.render(handle, ViewState())
    viewer.close(handle)
    image, note = thumbnail("wsi", path)
    assert image is None and "Bogus marker length" in note

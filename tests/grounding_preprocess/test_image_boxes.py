"""2D pixel boxes: 0-1000 relative to the original image, so dynamic tiling (any grid, any aspect ratio) leaves
them unchanged, and the box still marks the bright region in the tiled canvas; out-of-view is a named error."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from internvl.grounding import normalize_2d, to_pixels_2d
from internvl.media.base import BoxesUnsupportedError, BoxOutOfViewError
from internvl.media.image import choose_grid
from tests.grounding_preprocess.conftest import image_reader

SIZES = {"1:1": (300, 300), "3:1": (600, 200), "1:4": (100, 400)}


def _image(path, size, box):
    arr = np.full((size[1], size[0], 3), 40, np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 250
    Image.fromarray(arr).save(path)
    return str(path)


def _bright_bbox(arr):
    ys, xs = np.nonzero(arr.mean(axis=2) > 145)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("ratio", list(SIZES))
def test_pixel_box_survives_dynamic_tiling(tmp_path, ratio):
    w, h = SIZES[ratio]
    box = (w // 5, h // 3, w // 2, h // 2)
    path = _image(tmp_path / f"{ratio.replace(':', 'x')}.png", (w, h), box)
    readers = [image_reader(max_dynamic_patch=n) for n in (1, 4, 12)] + [image_reader(dynamic_image_size=False)]
    tokens = {r.max_num if r.dynamic else 0: r.map_boxes(path, [box], "pixel")[0] for r in readers}
    assert set(tokens.values()) == {normalize_2d(box, w, h)}  # only the original size matters
    (t,) = set(tokens.values())
    # the bright region of the original lies in the box (to one unit of 0-1000)
    px = to_pixels_2d(t, w, h)
    bx = _bright_bbox(np.asarray(Image.open(path).convert("RGB")))
    assert all(abs(a - b) <= max(w, h) / 1000 for a, b in zip(px, bx))
    # and in the tiled canvas the model sees (tiles reassembled, thumbnail dropped), the same box marks it
    for reader in readers[:3]:
        tiles = reader.tiles(path)
        cols, rows = choose_grid(w, h, reader.min_num, reader.max_num, reader.image_size)
        s = reader.image_size
        canvas = np.zeros((rows * s, cols * s, 3), np.uint8)
        for i, tile in enumerate(tiles[:cols * rows]):
            canvas[(i // cols) * s:(i // cols + 1) * s, (i % cols) * s:(i % cols + 1) * s] = np.asarray(tile)
        seen = to_pixels_2d(t, cols * s, rows * s)
        got = _bright_bbox(canvas)
        assert all(abs(a - b) <= 1.5 for a, b in zip(seen, got)), (reader.max_num, (cols, rows), seen, got)


def test_out_of_view_and_wrong_space(tmp_path):
    path = _image(tmp_path / "a.png", (120, 80), (10, 10, 30, 30))
    reader = image_reader()
    assert reader.map_boxes(path, [[0, 0, 120, 80]], "pixel") == [(0, 0, 1000, 1000)]  # the whole image
    assert reader.map_boxes(path, [[0, 0, 120.4, 80]], "pixel") == [(0, 0, 1000, 1000)]  # within tolerance
    for box in ([100, 10, 125, 30], [130, 10, 140, 30], [-5, 0, 10, 10]):
        with pytest.raises(BoxOutOfViewError, match="field of view"):
            reader.map_boxes(path, [box], "pixel")
    with pytest.raises(BoxesUnsupportedError, match="'pixel'"):
        reader.map_boxes(path, [[0, 0, 0, 5, 5, 5]], "world")

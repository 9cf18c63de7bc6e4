"""Fixtures for the pathology tests: generated slides (always), broken slides made from them, the tiny encoder."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import patches.pathology  # noqa: F401  (registers encoders, projectors, readers, tasks)


def corrupt_tiff_tiles(path: Path, level0_points: list[tuple[int, int]]) -> None:
    """Overwrite the compressed bytes of the level-0 TIFF tiles containing the given pixels with junk."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        tiles_across = -(-page.imagewidth // page.tilewidth)
        spans = []
        for x, y in level0_points:
            index = (y // page.tilelength) * tiles_across + (x // page.tilewidth)
            spans.append((page.dataoffsets[index], page.databytecounts[index]))
    with open(path, "r+b") as fh:
        for offset, count in spans:
            fh.seek(offset)
            fh.write(bytes((i * 37 + 11) % 256 for i in range(count)))


@pytest.fixture(scope="session")
def slide_dir(tmp_path_factory) -> Path:
    """Generated slides: grade-3 Aperio 40x .svs, grade-1 generic 20x .tiff, grade-2 generic .tiff."""
    from patches.pathology.demo import make_slide

    out = tmp_path_factory.mktemp("slides")
    rng = np.random.default_rng(7)
    make_slide(str(out / "g3_aperio.svs"), 3, rng, 672, 40)
    make_slide(str(out / "g1_generic.tiff"), 1, rng, 672, 20)
    make_slide(str(out / "g2_generic.tiff"), 2, rng, 672, 20)
    return out


@pytest.fixture(scope="session")
def broken_dir(tmp_path_factory, slide_dir) -> Path:
    """A slide with two corrupt level-0 tiles, one truncated TIFF, one PNG: copies of generated slides."""
    from PIL import Image

    out = tmp_path_factory.mktemp("broken")
    shutil.copy(slide_dir / "g1_generic.tiff", out / "two_bad_tiles.tiff")
    corrupt_tiff_tiles(out / "two_bad_tiles.tiff", [(700, 700), (300, 900)])
    data = (slide_dir / "g2_generic.tiff").read_bytes()
    (out / "truncated.tiff").write_bytes(data[: len(data) // 50])
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(out / "photo.png")
    return out


@pytest.fixture(scope="session")
def tiny_encoder():
    from patches.pathology.extract import load_encoder

    return load_encoder("virchow2_tiny", random_init_seed=0)

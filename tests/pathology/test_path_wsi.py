"""WSI reading: scale from properties, level arithmetic, tissue mask, tile grid, bad tiles; generated slides always,
OpenSlide's real-format fixtures (../shared/fixtures/wsi) when present."""
from __future__ import annotations

import numpy as np
import pytest

from patches.pathology.tissue import TissueParams, mask_from_rgb, otsu_threshold, tile_tissue_fraction
from patches.pathology.wsi import (BadTile, SlideError, TileReader, _mpp_from_properties, choose_level,
                                   magnification_from_mpp, open_slide, plan_tiles, slide_info, target_mpp_for)


def _info(path, **kw):
    handle = open_slide(str(path))
    return handle, slide_info(handle, str(path), **kw)


@pytest.mark.parametrize("props,mpp,source", [
    ({"openslide.mpp-x": "0.2527"}, 0.2527, "openslide.mpp-x"),
    ({"aperio.MPP": "0.499"}, 0.499, "aperio.MPP"),
    ({"openslide.comment": "Aperio |AppMag = 20|MPP = 0.4990|x"}, 0.499, "openslide.comment MPP"),
    ({"tiff.XResolution": "20000", "tiff.ResolutionUnit": "centimeter"}, 0.5, "tiff.XResolution (centimeter)"),
    ({"tiff.XResolution": "101600", "tiff.ResolutionUnit": "inch"}, 0.25, "tiff.XResolution (inch)"),
    ({"openslide.objective-power": "40"}, 0.25, "10 / openslide.objective-power"),
    ({"tiff.XResolution": "72", "tiff.ResolutionUnit": "none"}, None, ""),
])
def test_mpp_fallback_chain(props, mpp, source):
    got, src = _mpp_from_properties(props)
    assert (got is None and mpp is None) or got == pytest.approx(mpp)
    assert src == source


def test_magnification_buckets():
    assert [magnification_from_mpp(m) for m in (0.25, 0.5, 1.0, 2.0)] == [40, 20, 10, 5]


def test_generated_aperio_40x_is_read_at_20x_through_a_resize(slide_dir):
    handle, info = _info(slide_dir / "g3_aperio.svs")
    assert info.vendor == "aperio" and info.mpp == pytest.approx(0.25) and info.objective_power == 40
    assert target_mpp_for(info, magnification=20) == pytest.approx(0.5)
    plan = plan_tiles(handle, info, 0.5, 224)
    # wanted downsample 2, levels (1, 4, 16): read 448 px at level 0 and resize; footprint 448 level-0 px
    assert (plan.level, plan.read_size, plan.tile_size_level0) == (0, 448, 448)
    assert plan.n_grid == 36 and 0 < len(plan.coords) < 36  # 2688 px / 448 = 6 x 6
    assert (plan.coords % 448 == 0).all()
    reader = TileReader(info.path, plan)
    tile = reader.read(*plan.coords[0])
    assert tile.shape == (224, 224, 3) and tile.dtype == np.uint8
    reader.close()
    handle.close()


def test_generated_generic_tiff_scale_from_resolution_tags(slide_dir):
    handle, info = _info(slide_dir / "g1_generic.tiff")
    assert info.vendor == "generic-tiff" and info.mpp == pytest.approx(0.5) and info.objective_power is None
    assert target_mpp_for(info, magnification=20) == pytest.approx(0.5)  # 10 / magnification convention
    plan = plan_tiles(handle, info, 0.5, 224)
    assert (plan.level, plan.read_size, plan.tile_size_level0) == (0, 224, 224)
    # at 2 µm/px (5x) level 1 (downsample 4) is read directly: coordinates stay in the level-0 frame
    plan5 = plan_tiles(handle, info, 2.0, 56, TissueParams(method="none"))
    assert (plan5.level, plan5.read_size, plan5.tile_size_level0) == (1, 56, 224)
    assert plan5.coords.max() == 1344 - 224
    with pytest.raises(SlideError, match="finer than the slide"):
        plan_tiles(handle, info, 0.25, 224)
    handle.close()


def test_choose_level_never_upsamples():
    class I:  # noqa: E742 - minimal stand-in
        level_downsamples = (1.0, 4.0, 16.0)
    assert [choose_level(I, d) for d in (1, 2, 3.9, 3.95, 4.0, 4.5, 15, 40)] == [0, 0, 0, 1, 1, 1, 1, 2]


def test_otsu_and_min_area_filter():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(10, 3, 5000), rng.normal(90, 5, 5000)]).clip(0, 255).astype(np.uint8)
    upper = np.arange(10000) >= 5000
    assert ((values > otsu_threshold(values)) == upper).all()
    rgb = np.full((200, 200, 3), 240, np.uint8)
    rgb[20:120, 20:120] = (230, 150, 190)   # 100x100 px blob at 8 µm/px = 0.64 mm²: kept
    rgb[180:183, 180:183] = (230, 150, 190)  # 3x3 px speck = 576 µm²: dropped
    mask, threshold = mask_from_rgb(rgb, 8.0, TissueParams())
    assert mask[50, 50] and not mask[181, 181] and not mask[5, 5]
    assert threshold >= TissueParams().min_saturation
    blank, _ = mask_from_rgb(np.full((64, 64, 3), 241, np.uint8) + np.random.default_rng(1).integers(
        0, 3, (64, 64, 3), dtype=np.uint8), 8.0, TissueParams())
    assert not blank.any()  # background noise is never tissue


def test_tile_fraction_uses_level0_footprints():
    mask = np.zeros((10, 10), bool)
    mask[:5, :5] = True  # mask pixel = 16 level-0 px
    coords = np.array([[0, 0], [80, 0], [40, 40]])
    frac = tile_tissue_fraction(mask, (16.0, 16.0), coords, 80)
    assert frac.tolist() == pytest.approx([1.0, 0.0, 0.25])


def test_corrupt_tiles_reported_with_coordinates_and_handle_reopened(broken_dir):
    handle, info = _info(broken_dir / "two_bad_tiles.tiff")
    plan = plan_tiles(handle, info, 0.5, 224, TissueParams(method="none"))
    handle.close()
    reader = TileReader(info.path, plan)
    tiles, index, bad = reader.read_batch(plan.coords)
    assert len(bad) >= 2 and len(tiles) + len(bad) == len(plan.coords)
    assert all(isinstance(b, BadTile) for b in bad)
    assert any(b.x <= 700 < b.x + 224 and b.y <= 700 < b.y + 224 for b in bad)
    assert "tile at level-0" in str(bad[0]) and reader.reopened >= 2
    reader.close()


def test_unopenable_files_raise_naming_the_file(broken_dir, tmp_path):
    for name, pattern in (("truncated.tiff", "not a whole-slide image"), ("photo.png", "'image' media kind")):
        with pytest.raises(SlideError, match=pattern) as err:
            open_slide(str(broken_dir / name))
        assert name in str(err.value)
    with pytest.raises(SlideError, match="file not found"):
        open_slide(str(tmp_path / "missing.svs"))


# ---- OpenSlide's real-format fixtures --------------------------------------------------------------------------
def test_fixture_aperio_svs_mpp_and_magnification(wsi_fixtures):
    handle, info = _info(wsi_fixtures / "small.svs")
    assert info.vendor == "aperio" and info.mpp == pytest.approx(0.499) and info.objective_power == 20
    assert target_mpp_for(info, magnification=10) == pytest.approx(0.998)
    handle.close()


def test_fixture_generic_tiff_pyramid_levels(wsi_fixtures):
    path = wsi_fixtures / "boxes.tiff"
    with pytest.raises(SlideError, match="352.8.*not a microscope scale"):
        _info(path)  # 72-dpi default resolution tag: refused, with the fix in the message
    handle, info = _info(path, slide_mpp=0.25)
    assert info.level_downsamples[:2] == (1.0, 2.0)
    plan = plan_tiles(handle, info, 0.5, 32, TissueParams(method="none"))  # downsample 2 -> level 1 exactly
    assert (plan.level, plan.read_size, plan.tile_size_level0) == (1, 32, 64)
    plan = plan_tiles(handle, info, 1.5, 20, TissueParams(method="none"))  # downsample 6 -> level 2 (4.016)
    assert plan.level == 2 and plan.read_size == round(20 * 6 / info.level_downsamples[2])
    assert plan.tile_size_level0 == 120 and plan.n_grid == 4  # 300x250 level 0: 2 x 2 tiles of 120
    tiles, index, bad = TileReader(info.path, plan).read_batch(plan.coords)
    assert not bad and tiles[0].shape == (20, 20, 3)
    handle.close()


def test_fixture_dicom_wsi(wsi_fixtures):
    handle, info = _info(wsi_fixtures / "boxes_0.dcm")
    assert info.vendor == "dicom" and info.mpp == pytest.approx(0.499) and info.objective_power == 20
    plan = plan_tiles(handle, info, 0.499, 8, TissueParams(method="none"))
    tiles, _, bad = TileReader(info.path, plan).read_batch(plan.coords)
    assert len(tiles) == 4 and not bad
    handle.close()


def test_fixture_png_rejected_with_pointer_to_image_kind(wsi_fixtures):
    with pytest.raises(SlideError, match="boxes.png.*'image' media kind"):
        open_slide(str(wsi_fixtures / "boxes.png"))


def test_fixture_unreadable_svs_reports_coordinates(wsi_fixtures):
    handle, info = _info(wsi_fixtures / "unreadable.svs")
    with pytest.raises(SlideError, match="unreadable.svs.*tissue mask.*Bogus marker length"):
        plan_tiles(handle, info, 0.499, 8)  # the low-resolution read for the mask already fails
    plan = plan_tiles(handle, info, 0.499, 8, TissueParams(method="none"))
    handle.close()
    _, _, bad = TileReader(info.path, plan).read_batch(plan.coords)
    assert [(b.x, b.y) for b in bad] == [(0, 0), (8, 0), (0, 8), (8, 8)]
    assert "Bogus marker length" in bad[0].error


def test_fixture_unopenable_tiff(wsi_fixtures):
    with pytest.raises(SlideError, match="unopenable.tiff.*Unsupported TIFF compression"):
        open_slide(str(wsi_fixtures / "unopenable.tiff"))

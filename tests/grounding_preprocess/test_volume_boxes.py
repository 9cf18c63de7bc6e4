"""Volume boxes (``world``/``voxel``) through the neuro reader's own geometry: orientation-independent tokens that
enclose the lesion in the array the reader returns; out-of-view boxes are named errors."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from internvl.media.base import BoxesUnsupportedError, BoxOutOfViewError
from tests.grounding_preprocess.conftest import LESION, volume_reader, world_box

# by hand: x 30 vox @1 mm, padded to W=36 (+3): edges 18..24 -> 21..27; y 26 @1.5 mm -> 39, cropped to H=36 (-1):
# 12..19.5 -> 11..18.5; z 22 @2 mm -> 44, cropped to D=40 (-2): 12..22 -> 10..20. (x, y, z) = (W, H, D) axes.
EXPECTED = (round(21 / 36 * 1000), round(11 / 36 * 1000), round(10 / 40 * 1000),
            round(27 / 36 * 1000), round(18.5 / 36 * 1000), round(20 / 40 * 1000))


def _box_in_voxels(tokens, shape_dhw):
    """0-1000 (x, y, z) box -> (lo, hi) edge intervals along (D, H, W)."""
    d, h, w = shape_dhw
    x1, y1, z1, x2, y2, z2 = tokens
    return [(z1 * d / 1000, z2 * d / 1000), (y1 * h / 1000, y2 * h / 1000), (x1 * w / 1000, x2 * w / 1000)]


@pytest.mark.parametrize("space", ["world", "voxel"])
def test_same_tokens_in_every_orientation_and_box_encloses_lesion(lesion_files, space):
    reader = volume_reader()
    tokens = {}
    for axcodes, path in lesion_files.items():
        if space == "world":
            box = world_box()
        else:  # the lesion's first/last voxel in this file's own axes
            idx = np.argwhere(np.asarray(nib.load(path).dataobj) > 200)
            box = [*idx.min(0).tolist(), *idx.max(0).tolist()]
        (tokens[axcodes],) = reader.map_boxes(path, [box], space)
        item = reader.load(path)[0][0].numpy()  # [D, H, W] as the encoder gets it
        assert item.shape == (40, 36, 36)
        centres = np.argwhere(item > 0.5) + 0.5
        lo_hi = _box_in_voxels(tokens[axcodes], item.shape)
        unit = np.array(item.shape) / 1000  # one token unit in voxels
        lo, hi = np.array([a for a, _ in lo_hi]), np.array([b for _, b in lo_hi])
        assert (centres >= lo - unit).all() and (centres <= hi + unit).all(), axcodes  # box holds every lesion voxel
        inner = np.argwhere(np.ones(item.shape, bool)) + 0.5
        inner = inner[((inner >= lo + 1) & (inner <= hi - 1)).all(axis=1)]
        assert len(inner) and (item[tuple((inner - 0.5).astype(int).T)] > 0.5).all(), axcodes  # and is tight
    for axcodes, t in tokens.items():
        assert max(abs(a - b) for a, b in zip(t, EXPECTED)) <= 1, (axcodes, t, EXPECTED)


def test_lpi_world_box_on_the_native_grid(tmp_path):
    """No resampling or crop (native grid): the tokens are the lesion's voxel edges over the array size."""
    from patches.neuro.synthetic import save_nifti
    from tests.grounding_preprocess.conftest import ORIGIN, SPACING, lesion_volume

    path = save_nifti(lesion_volume(), str(tmp_path / "v.nii.gz"), spacing=SPACING, axcodes="LPI", origin=ORIGIN)
    reader = volume_reader(target_spacing=None, volume_shape=None)
    (tokens,) = reader.map_boxes(path, [world_box()], "world")
    (x1, x2), (y1, y2), (z1, z2) = LESION
    want = (x1 / 30, y1 / 26, z1 / 22, (x2 + 1) / 30, (y2 + 1) / 26, (z2 + 1) / 22)
    assert tokens == tuple(round(v * 1000) for v in want)


@pytest.mark.parametrize("box", [
    [-15.0, -20.0, -22.0, -10.0, -15.0, -20.5],  # inside the file but in the z slab the crop to D=40 removes
    [100.0, 0.0, 0.0, 110.0, 5.0, 5.0],          # outside the file
    [10.0, 0.0, 0.0, 20.0, 5.0, 5.0],            # partly outside (x reaches 5.5 mm past the padded edge)
])
def test_out_of_view_world_box_is_named_error(lesion_files, box):
    with pytest.raises(BoxOutOfViewError, match="field of view"):
        volume_reader().map_boxes(lesion_files["RAS"], [box], "world")


def test_voxel_box_outside_file_and_pixel_space_refused(lesion_files):
    reader = volume_reader()
    with pytest.raises(BoxOutOfViewError):
        reader.map_boxes(lesion_files["RAS"], [[0, 0, 0, 30, 5, 5]], "voxel")  # index 30 of 30 voxels
    with pytest.raises(BoxesUnsupportedError, match="'voxel' or 'world'"):
        reader.map_boxes(lesion_files["RAS"], [[0, 0, 5, 5]], "pixel")


def test_spatial_augmentation_refuses_boxes(lesion_files):
    reader = volume_reader()
    assert reader.map_boxes(lesion_files["RAS"], [world_box()], "world", is_train=False)
    with pytest.raises(BoxesUnsupportedError, match="spatial augmentation"):
        reader.map_boxes(lesion_files["RAS"], [world_box()], "world", is_train=True)
    from patches.neuro.readers import VolumeReader

    still = VolumeReader(reader.config, {"volume_augment": {"flip_axes": [], "permute_axes": None}})
    assert still.map_boxes(lesion_files["RAS"], [world_box()], "world", is_train=True) == \
        reader.map_boxes(lesion_files["RAS"], [world_box()], "world")


def test_oblique_affine_world_box_encloses_lesion(tmp_path):
    """A 20-degree oblique acquisition: the world box (around the lesion's 8 world corners) is mapped corner by
    corner, so the box in the prepared grid still holds every lesion voxel (it cannot be tight)."""
    from tests.grounding_preprocess.conftest import lesion_volume

    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.0, 1.0, 1.0])
    affine[:3, 3] = [-10, 5, -12]
    path = str(tmp_path / "oblique.nii.gz")
    nib.save(nib.Nifti1Image(lesion_volume(), affine), path)
    (x1, x2), (y1, y2), (z1, z2) = LESION
    corners = np.array([[i, j, k] for i in (x1 - .5, x2 + .5) for j in (y1 - .5, y2 + .5) for k in (z1 - .5, z2 + .5)])
    world = nib.affines.apply_affine(affine, corners)
    reader = volume_reader(target_spacing=None, volume_shape=None)
    (tokens,) = reader.map_boxes(path, [[*world.min(0), *world.max(0)]], "world")
    item = reader.load(path)[0][0].numpy()
    lo_hi = _box_in_voxels(tokens, item.shape)
    centres = np.argwhere(item > 0.5) + 0.5
    unit = np.array(item.shape) / 1000
    assert (centres >= np.array([lo for lo, _ in lo_hi]) - unit).all()
    assert (centres <= np.array([hi for _, hi in lo_hi]) + unit).all()
    size = np.array([hi - lo for lo, hi in lo_hi])
    tight = np.array([z2 - z1 + 1, y2 - y1 + 1, x2 - x1 + 1])  # RAS-closest grid: (D, H, W) = (z, y, x)
    assert (size >= tight - 2 * unit).all() and size[1:].sum() > tight[1:].sum()  # larger in the rotated plane


def test_dicom_series_gives_the_same_tokens(tmp_path):
    """The same lesion as an axial DICOM series (LPS, slices in shuffled file order): geometry from the series."""
    from patches.neuro.synthetic import write_dicom_series
    from tests.grounding_preprocess.conftest import ORIGIN, SPACING, lesion_volume

    folder = write_dicom_series(lesion_volume(), str(tmp_path / "mr"), spacing=SPACING, modality="MR", origin=ORIGIN)
    reader = volume_reader()
    (tokens,) = reader.map_boxes(folder, [world_box()], "world")
    assert max(abs(a - b) for a, b in zip(tokens, EXPECTED)) <= 1, (tokens, EXPECTED)
    item = reader.load(folder)[0][0].numpy()
    centres = np.argwhere(item > 0.5) + 0.5
    lo_hi = _box_in_voxels(tokens, item.shape)
    unit = np.array(item.shape) / 1000
    assert (centres >= np.array([a for a, _ in lo_hi]) - unit).all()
    assert (centres <= np.array([b for _, b in lo_hi]) + unit).all()

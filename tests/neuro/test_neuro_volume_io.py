"""read_volume on real shipped volumes (nibabel, pydicom) and on broken files: what loads, what is refused, and
that refusals name the file."""
from __future__ import annotations

import gzip
import os
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from patches.neuro.synthetic import phantom, save_nifti, write_dicom_series
from patches.neuro.volume_io import (CorruptVolumeError, InconsistentSeriesError, MultipleSeriesError,
                                     NonFiniteError, UnsupportedDimError, VolumeError, read_volume, source_digest)
from internvl.media.base import MediaError


# ------------------------------------------------------------------------------------------- nibabel files
def test_anatomical_t1_loads_with_geometry(nib_data):
    vol = read_volume(nib_data / "anatomical.nii")
    assert vol.array.shape == (33, 41, 25) and vol.array.dtype == np.float32
    assert vol.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert vol.axcodes == ("L", "A", "S")
    assert vol.meta["format"] == "nifti"


def test_functional_4d(nib_data):
    vol = read_volume(nib_data / "functional.nii", ndim=4)
    assert vol.array.shape == (17, 21, 3, 20)
    assert vol.meta["time_step"] == pytest.approx(2.0)
    with pytest.raises(UnsupportedDimError, match="functional.nii.*4D.*expected 3D"):
        read_volume(nib_data / "functional.nii", ndim=3)


def test_example4d_gz(nib_data):
    vol = read_volume(nib_data / "example4d.nii.gz", ndim=(3, 4))
    assert vol.array.shape == (128, 96, 24, 2)


def test_nan_voxels_refused(nib_data):
    with pytest.raises(NonFiniteError, match=r"resampled_anat_moved.nii: 153 non-finite voxels \(153 NaN"):
        read_volume(nib_data / "resampled_anat_moved.nii")


def test_missing_image_of_pair_refused(nib_data):
    with pytest.raises(CorruptVolumeError, match="nifti1.hdr.*image file is missing"):
        read_volume(nib_data / "nifti1.hdr")


def test_3d_file_where_4d_expected(nib_data):
    with pytest.raises(UnsupportedDimError, match="anatomical.nii.*3D volume where a 4D"):
        read_volume(nib_data / "anatomical.nii", ndim=4)


# ------------------------------------------------------------------------------------------- generated bad files
def _img(shape, dtype=np.float32):
    return nib.Nifti1Image(np.random.default_rng(0).normal(size=shape).astype(dtype), np.eye(4))


@pytest.mark.parametrize("shape,what", [((64, 64), "2D"), ((64, 64, 1), "2D"), ((8, 8, 8, 1, 3), "5D")])
def test_wrong_dimensionality_refused(tmp_path, shape, what):
    path = tmp_path / "bad.nii.gz"
    nib.save(_img(shape), path)
    with pytest.raises(UnsupportedDimError, match=f"bad.nii.gz.*{what}"):
        read_volume(path, ndim=(3, 4))


def test_trailing_singleton_is_3d(tmp_path):
    path = tmp_path / "v.nii"
    nib.save(_img((6, 7, 8, 1)), path)
    assert read_volume(path).array.shape == (6, 7, 8)


def test_truncated_gzip_fails_at_load(tmp_path):
    good = tmp_path / "good.nii.gz"
    nib.save(_img((32, 32, 32)), good)
    blob = good.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptVolumeError, match="truncated.nii.gz"):
        read_volume(bad)


def test_corrupt_gzip_body_fails_at_load(tmp_path):
    raw = tmp_path / "v.nii"
    nib.save(_img((32, 32, 32)), raw)
    comp = bytearray(gzip.compress(raw.read_bytes()))
    for i in range(len(comp) // 2, len(comp) // 2 + 64):
        comp[i] ^= 0xFF
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(bytes(comp))
    with pytest.raises(CorruptVolumeError, match="corrupt.nii.gz"):
        read_volume(bad)


@pytest.mark.parametrize("content", [b"", b"not a nifti at all" * 50])
def test_garbage_files_refused(tmp_path, content):
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(content)
    with pytest.raises(CorruptVolumeError, match="garbage.nii.gz"):
        read_volume(bad)


def test_unknown_orientation_refused(tmp_path):
    img = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), None)  # no affine: sform/qform codes 0
    path = tmp_path / "noorient.nii"
    nib.save(img, path)
    with pytest.raises(VolumeError, match="noorient.nii.*orientation is unknown"):
        read_volume(path)


def test_errors_are_media_errors(tmp_path):
    with pytest.raises(MediaError, match="nope.nii"):
        read_volume(tmp_path / "nope.nii")


# ------------------------------------------------------------------------------------------- pydicom series
def test_ct5n_series(dicom_dirs):
    vol = read_volume(dicom_dirs / "98892001" / "CT5N")
    assert vol.array.shape == (16, 16, 5)
    assert vol.spacing == pytest.approx((0.488281, 0.488281, 2.5))
    assert vol.meta["modality"] == "CT" and vol.meta["format"] == "dicom"
    # slope 1 / intercept -1024 applied once: HU range -888..85 (raw stored values would be 136..1109)
    assert vol.array.min() == pytest.approx(-888) and vol.array.max() == pytest.approx(85)
    # sorted along the normal, not by file name
    pos = vol.meta["slice_positions"]
    assert pos == sorted(pos)
    assert vol.axcodes == ("L", "P", "S")


def test_gapped_series_refused(dicom_dirs):
    with pytest.raises(InconsistentSeriesError, match=r"CT2 \(series .*not uniform.*202.50 mm between 17106"):
        read_volume(dicom_dirs / "77654033" / "CT2")


@pytest.mark.parametrize("sub,n", [("98892001/CT2N", 2), ("98892003/MR700", 7)])
def test_mixed_orientation_refused(dicom_dirs, sub, n):
    with pytest.raises(InconsistentSeriesError, match=f"{sub.split('/')[1]}.*mixed orientations \\({n} "):
        read_volume(dicom_dirs / sub)


def test_folder_with_several_series_lists_them_and_uid_selects(dicom_dirs):
    folder = dicom_dirs / "98892003" / "MR2"
    with pytest.raises(MultipleSeriesError, match="MR2: folder holds 3 DICOM series; choose one with series_uid") as ei:
        read_volume(folder)
    uids = sorted(ei.value.series)
    assert len(uids) == 3 and all(u in str(ei.value) for u in uids)
    # choosing one: that series is itself a 3-plane localizer, so the next refusal names it
    with pytest.raises(InconsistentSeriesError, match=f"series {uids[0]}.*mixed orientations"):
        read_volume(folder, series_uid=uids[0])
    with pytest.raises(VolumeError, match="no series with SeriesInstanceUID 1.2.3"):
        read_volume(folder, series_uid="1.2.3")


def test_single_slice_series_is_2d(dicom_dirs):
    folder = dicom_dirs / "98892003" / "MR1"
    uid = sorted(ei for ei in _series_uids(folder))[0]
    with pytest.raises(UnsupportedDimError, match="single slice is 2D"):
        read_volume(folder, series_uid=uid)


def _series_uids(folder):
    return {str(pydicom.dcmread(folder / f, stop_before_pixels=True).SeriesInstanceUID) for f in os.listdir(folder)}


def test_duplicate_positions_refused(dicom_dirs, tmp_path):
    src = dicom_dirs / "98892001" / "CT5N"
    shutil.copytree(src, tmp_path / "dup")
    ds = pydicom.dcmread(src / "2062")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "dup" / "copy_of_2062")
    with pytest.raises(InconsistentSeriesError, match="duplicate slice positions.*2062"):
        read_volume(tmp_path / "dup")


def test_single_dicom_file_and_truncated_pixels(tmp_path):
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    with pytest.raises(UnsupportedDimError, match="CT_small.dcm: a single DICOM file is one 2D slice"):
        read_volume(ct)
    trunc = get_testdata_file("MR_truncated.dcm")
    if trunc is None:
        pytest.skip("pydicom's MR_truncated.dcm is not installed (download-only)")
    folder = tmp_path / "trunc"
    folder.mkdir()
    shutil.copy(trunc, folder / "a.dcm")
    ds = pydicom.dcmread(trunc)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) + 5]
    ds.save_as(folder / "b.dcm")
    with pytest.raises(CorruptVolumeError, match="cannot decode pixel data"):
        read_volume(folder)


def test_non_dicom_file_in_series_folder(tmp_path):
    write_dicom_series(np.zeros((8, 8, 4)), str(tmp_path / "s"))
    (tmp_path / "s" / "notes.txt").write_text("hello")
    with pytest.raises(CorruptVolumeError, match="notes.txt: not a DICOM file"):
        read_volume(tmp_path / "s")


def test_synthetic_series_rescale_applied_once(tmp_path):
    arr = np.rint(phantom((12, 10, 6), modality="ct", seed=3))
    write_dicom_series(arr, str(tmp_path / "s"), spacing=(0.9, 0.8, 2.5), slope=2.0, intercept=-1000.0)
    vol = read_volume(tmp_path / "s")
    assert vol.spacing == pytest.approx((0.9, 0.8, 2.5))
    # LPS storage flipped x and y; the stored integers were (HU + 1000) / 2
    np.testing.assert_allclose(vol.array[::-1, ::-1, :], np.rint((arr + 1000) / 2) * 2 - 1000)


def test_source_digest_tracks_content(tmp_path):
    p = tmp_path / "v.nii"
    save_nifti(phantom((8, 8, 8)), str(p))
    d1 = source_digest(p)
    save_nifti(phantom((8, 8, 8), seed=1), str(p))
    assert source_digest(p) != d1


def test_sheared_stack_refused(tmp_path):
    folder = tmp_path / "tilt"
    write_dicom_series(np.zeros((8, 8, 5)), str(folder), spacing=(1.0, 1.0, 2.0))
    for name in os.listdir(folder):  # move each slice sideways by 0.5 mm per mm of height: a tilted gantry
        ds = pydicom.dcmread(folder / name)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * z, z]
        ds.save_as(folder / name)
    with pytest.raises(InconsistentSeriesError, match="not stacked along their normal.*gantry tilt"):
        read_volume(folder)


def test_multiframe_dicom_refused(tmp_path):
    import nibabel

    src = os.path.join(os.path.dirname(nibabel.__file__), "nicom", "tests", "data", "philips_mprage.dcm.gz")
    if not os.path.exists(src):
        pytest.skip(f"nibabel's enhanced multi-frame test file is not installed ({src})")
    folder = tmp_path / "mf"
    folder.mkdir()
    (folder / "mprage.dcm").write_bytes(gzip.decompress(open(src, "rb").read()))
    with pytest.raises(VolumeError, match="mprage.dcm: multi-frame .* not supported"):
        read_volume(folder)

"""VolumePreprocessor: orientation invariance, spacing/shape, MRI and CT intensity rules, masks, 4D, per-read steps."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from patches.neuro.preprocess import CT_WINDOWS, NEUROVFM_ZSCORE, PreprocessConfig, VolumePreprocessor
from patches.neuro.synthetic import phantom, save_nifti, write_dicom_series
from patches.neuro.volume_io import Volume, read_volume


@pytest.mark.parametrize("modality", ["mri", "ct"])
def test_same_volume_in_other_orientations_gives_identical_arrays(tmp_path, modality):
    arr = np.rint(phantom((20, 24, 16), lesion="left", modality=modality, seed=1))
    kw = dict(spacing=(1.0, 1.0, 2.0), origin=(3.0, -4.0, 5.0))
    paths = [save_nifti(arr, str(tmp_path / f"{code}.nii.gz"), axcodes=code, **kw) for code in ("RAS", "LPI", "PSR")]
    if modality == "ct":
        paths.append(write_dicom_series(arr, str(tmp_path / "dicom"), spacing=(1.0, 1.0, 2.0), origin=kw["origin"]))
    pre = VolumePreprocessor(dict(modality=modality, target_spacing=(2.0, 1.5, 1.5), volume_shape=(8, 16, 16)))
    outs = [pre.prepare(read_volume(p)) for p in paths]
    assert {read_volume(p).axcodes for p in paths} >= {("R", "A", "S"), ("L", "P", "I"), ("P", "S", "R")}
    for o in outs[1:]:
        np.testing.assert_array_equal(o.array, outs[0].array)
        np.testing.assert_array_equal(o.mask, outs[0].mask)


def test_canonical_axes_are_z_y_x_in_ras(tmp_path):
    # voxel value encodes its RAS position: W must run to the right (x), H anterior (y), D superior (z)
    x, y, z = np.meshgrid(np.arange(10), np.arange(12), np.arange(14), indexing="ij")
    arr = (x + 20 * y + 400 * z).astype(np.float32) + 1.0
    path = save_nifti(arr, str(tmp_path / "v.nii.gz"), axcodes="LPI")
    pre = VolumePreprocessor(dict(target_spacing=None, volume_shape=None, mri_percentiles=(0.0, 100.0)))
    out = pre.prepare(read_volume(path)).array[0]
    assert out.shape == (14, 12, 10)
    np.testing.assert_allclose(out * (arr.max() - arr.min()) + arr.min(), arr.transpose(2, 1, 0), rtol=1e-5)


def test_resample_and_crop_pad(nib_data):
    vol = read_volume(nib_data / "anatomical.nii")  # 33 x 41 x 25 at 2 mm, LAS
    pre = VolumePreprocessor(dict(target_spacing=(1.0, 1.0, 1.0), volume_shape=None))
    out = pre.prepare(vol)
    assert out.array.shape == (1, 50, 82, 66)  # (z, y, x) at 1 mm
    assert out.spacing == pytest.approx((1.0, 1.0, 1.0))
    fixed = VolumePreprocessor(dict(target_spacing=(1.0, 1.0, 1.0), volume_shape=(64, 64, 80))).prepare(vol)
    assert fixed.array.shape == (1, 64, 64, 80) and fixed.mask.shape == (64, 64, 80)
    # padded depth rows are background (0, not foreground); cropped H keeps the centre
    assert fixed.array[0, :7].max() == 0 and not fixed.mask[:7].any()
    np.testing.assert_array_equal(fixed.array[0, 7:57, :, 7:73], out.array[0, :, 9:73, :])


def test_mri_percentile_scaling(nib_data):
    vol = read_volume(nib_data / "anatomical.nii")
    pre = VolumePreprocessor(dict(target_spacing=None, volume_shape=None))
    out = pre.prepare(vol).array
    lo, hi = np.percentile(vol.array, [0.5, 99.5])
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.mean(out == 1.0) == pytest.approx(np.mean(vol.array >= hi), abs=2e-3)
    assert np.mean(out == 0.0) == pytest.approx(np.mean(vol.array <= lo), abs=2e-3)


def test_ct_windows_and_mask():
    hu = np.array([-1000.0, -600, -400, -20, 0, 40, 80, 180, 2000, 3000], np.float32)
    arr = np.tile(hu[:, None, None], (1, 2, 2))
    vol = Volume(arr, np.eye(4), (1.0, 1.0, 1.0), {"path": "mem", "modality": "CT"})
    out = VolumePreprocessor(dict(modality="ct", target_spacing=None, volume_shape=None)).prepare(vol)
    x = out.array[:, 0, 0, :]  # [3 windows, W=x]
    for c, name in enumerate(("brain", "blood", "bone")):
        lo, hi = CT_WINDOWS[name]
        np.testing.assert_allclose(x[c], np.clip((hu - lo) / (hi - lo), 0, 1), rtol=1e-6)
    np.testing.assert_array_equal(out.mask[0, 0], hu > -500)


def test_modality_mismatch_refused():
    vol = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4), (1, 1, 1), {"path": "ctdir", "modality": "CT"})
    with pytest.raises(Exception, match="ctdir: DICOM Modality is CT but preprocessing is configured for 'mri'"):
        VolumePreprocessor(dict(target_spacing=None, volume_shape=None)).prepare(vol)


def test_constant_volume_refused():
    vol = Volume(np.full((6, 6, 6), 7.0, np.float32), np.eye(4), (1, 1, 1), {"path": "blank.nii"})
    with pytest.raises(Exception, match="blank.nii: intensities are constant"):
        VolumePreprocessor(dict(target_spacing=None, volume_shape=None)).prepare(vol)


def test_window_modes_and_zscore():
    arr = np.random.default_rng(0).uniform(0, 1, (3, 4, 5, 6)).astype(np.float32)
    stack = VolumePreprocessor(dict(modality="ct", zscore="neurovfm"))
    out = stack.finalize(arr)
    m, s = NEUROVFM_ZSCORE["blood"]
    torch.testing.assert_close(out[1], torch.from_numpy((arr[1] - m) / s))
    assert stack.out_channels == 3
    sample = VolumePreprocessor(dict(modality="ct", window_mode="sample", window_probs=(0.0, 0.0, 1.0)))
    assert sample.out_channels == 1
    torch.testing.assert_close(sample.finalize(arr, train=True)[0], torch.from_numpy(arr[2]))
    torch.testing.assert_close(sample.finalize(arr, train=False)[0], torch.from_numpy(arr[0]))
    series = VolumePreprocessor(dict(modality="ct", window_mode="series")).finalize(arr)
    assert series.shape == (3, 1, 4, 5, 6)


def test_fmri_4d_pipeline(nib_data):
    vol = read_volume(nib_data / "functional.nii", ndim=4)
    pre = VolumePreprocessor(dict(target_spacing=(4.0, 4.0, 4.0), volume_shape=(8, 24, 20), num_frames=8))
    prep = pre.prepare(vol)
    assert prep.array.shape == (1, 20, 8, 24, 20)  # [C, T, D, H, W], all frames kept for the cache
    assert prep.mask.shape == (8, 24, 20)
    item = pre.finalize(prep.array, train=False)
    assert item.shape == (1, 8, 8, 24, 20)
    torch.testing.assert_close(item, torch.from_numpy(prep.array[:, 6:14]))
    # frames are resampled on one grid, not mixed: frame 0 of the output is frame 0 of the input resampled
    one = VolumePreprocessor(dict(target_spacing=(4.0, 4.0, 4.0), volume_shape=(8, 24, 20)))
    arr0, sp0, _ = one.reorient(Volume(vol.array[..., 0], vol.affine, vol.spacing, dict(vol.meta)))
    arr0, _ = one.resample(arr0, sp0)
    arrt, spt, _ = one.reorient(vol)
    arrt, _ = one.resample(arrt, spt)
    np.testing.assert_allclose(arrt[..., 0], arr0, rtol=1e-5, atol=1e-3)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown volume preprocessing option"):
        PreprocessConfig.from_dict({"volume_shpe": (1, 2, 3)})
    with pytest.raises(ValueError, match="unknown CT window"):
        PreprocessConfig(ct_windows=("stroke",))
    assert PreprocessConfig(ct_windows=([-100, 300],)).window_names() == ["-100..300"]
    assert dataclasses.asdict(PreprocessConfig(modality="T1"))["modality"] == "mri"
    # z-scores that cannot apply fail when the config is made, not at the first read of a training run
    with pytest.raises(ValueError, match=r"no NeuroVFM z-score statistics for window\(s\) \['-100..300'\]"):
        PreprocessConfig(modality="ct", ct_windows=("brain", [-100, 300]), zscore="neurovfm")
    with pytest.raises(ValueError, match=r"zscore gives 2 mean/std pairs for 3 channel\(s\)"):
        PreprocessConfig(modality="ct", zscore=[[0.4, 0.4], [0.3, 0.3]])
    assert PreprocessConfig(modality="ct", window_mode="sample", zscore=[[0.4, 0.4]]).zscore == ((0.4, 0.4),)
    assert PreprocessConfig(zscore="neurovfm").zscore == "neurovfm"  # MRI has its statistics

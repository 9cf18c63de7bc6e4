"""Volume cache: every preprocessing parameter and the file content are in the key; cached == uncached."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from patches.neuro.cache import VolumeCache, dequantize, prepared_volume, quantize
from patches.neuro.preprocess import PreprocessConfig, VolumePreprocessor
from patches.neuro.synthetic import phantom, save_nifti
from patches.neuro.volume_io import VolumeError

# one changed value per field; the test fails if a field is added without being listed here
CHANGED = {
    "modality": "ct", "orientation": "RPI", "target_spacing": (1.0, 1.0, 4.0), "volume_shape": (64, 64, 64),
    "mri_percentiles": (1.0, 99.0), "mri_foreground_percentile": 5.0, "ct_windows": ("brain",),
    "ct_foreground_hu": -400.0, "window_mode": "sample", "window_probs": (0.5, 0.25, 0.25), "num_frames": 10,
    "zscore": "neurovfm", "version": 999,
}


def test_every_parameter_changes_the_key():
    base = PreprocessConfig()
    names = [f.name for f in dataclasses.fields(PreprocessConfig)]
    assert sorted(CHANGED) == sorted(names), "list a changed value for every PreprocessConfig field"
    k0 = VolumeCache.key("digest", base)
    keys = {k0}
    for name in names:
        changed = dataclasses.replace(base, **{name: CHANGED[name]})
        assert changed.params() != base.params()
        k = VolumeCache.key("digest", changed)
        assert k not in keys, f"changing {name} did not change the cache key"
        keys.add(k)
    assert VolumeCache.key("other-digest", base) != k0
    assert VolumeCache.key("digest", base, ndim=4) != k0


def test_cached_read_equals_uncached_and_file_change_invalidates(tmp_path):
    path = save_nifti(phantom((30, 34, 28), lesion="right"), str(tmp_path / "v.nii.gz"), spacing=(1.2, 1.2, 1.5))
    pre = VolumePreprocessor(dict(target_spacing=(1.5, 1.5, 1.5), volume_shape=(24, 24, 24)))
    cache = VolumeCache(tmp_path / "cache")
    first = prepared_volume(path, pre, cache=cache)
    entries = [os.path.join(d, f) for d, _, fs in os.walk(cache.root) for f in fs]
    assert len(entries) == 1 and entries[0].endswith(".safetensors")
    assert not any(os.path.basename(e).startswith(".tmp") for e in entries)
    second = prepared_volume(path, pre, cache=cache)
    uncached = prepared_volume(path, pre, cache=None)
    np.testing.assert_array_equal(first.array, second.array)
    np.testing.assert_array_equal(second.array, uncached.array)
    np.testing.assert_array_equal(second.mask, uncached.mask)
    assert second.spacing == pytest.approx(uncached.spacing)
    # same name, new content: a new entry, new values
    save_nifti(phantom((30, 34, 28), lesion="left"), path, spacing=(1.2, 1.2, 1.5))
    third = prepared_volume(path, pre, cache=cache)
    assert len([f for _, _, fs in os.walk(cache.root) for f in fs]) == 2
    assert not np.array_equal(third.array, second.array)
    # a changed parameter: another entry
    prepared_volume(path, VolumePreprocessor(dict(target_spacing=(1.5, 1.5, 1.5), volume_shape=(24, 24, 20))),
                    cache=cache)
    assert len([f for _, _, fs in os.walk(cache.root) for f in fs]) == 3


def test_quantisation_error_bound():
    x = np.random.default_rng(0).uniform(-3, 5, (2, 9, 9, 9)).astype(np.float32)
    q, off, sc = quantize(x)
    assert q.dtype == np.uint8
    err = np.abs(dequantize(q, off, sc) - x).max(axis=(1, 2, 3))
    assert np.all(err <= sc / 2 + 1e-6)


def test_damaged_entry_is_reported(tmp_path):
    path = save_nifti(phantom((16, 16, 16)), str(tmp_path / "v.nii"))
    pre = VolumePreprocessor(dict(target_spacing=None, volume_shape=None))
    cache = VolumeCache(tmp_path / "c")
    prepared_volume(path, pre, cache=cache)
    entry = next(os.path.join(d, f) for d, _, fs in os.walk(cache.root) for f in fs)
    with open(entry, "r+b") as fh:
        fh.truncate(40)
    with pytest.raises(VolumeError, match="unreadable volume-cache entry"):
        prepared_volume(path, pre, cache=cache)


def test_dequantize_single_allocation_matches_the_formula():
    from patches.neuro.cache import dequantize, quantize

    a = np.random.default_rng(3).normal(size=(3, 6, 7, 5)).astype(np.float32)
    q, off, sc = quantize(a)
    out = dequantize(q, off, sc)
    ref = q.astype(np.float64) * sc.reshape(-1, 1, 1, 1) + off.reshape(-1, 1, 1, 1)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == a.shape
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    assert np.abs(out - a).max() <= sc.max() / 2 + 1e-6  # within half a quantisation step

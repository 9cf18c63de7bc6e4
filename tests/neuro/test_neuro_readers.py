"""The ``volume`` and ``fmri`` media readers: refs (path, dict, study list), study modes, config merging, mask
channel for background-removing encoders, token counts through the core, and refusals naming the file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from internvl.media.base import MEDIA_READERS, MediaError
from internvl.model.vision.base import create_vision_model
from patches.neuro.readers import FmriReader, VolumeReader, preprocess_config_for
from patches.neuro.synthetic import phantom, save_nifti, write_dicom_series


@pytest.fixture
def vols(tmp_path):
    out = {}
    for i, name in enumerate(("t1", "t2", "flair")):
        out[name] = save_nifti(phantom((36, 40, 32), lesion="left", seed=i), str(tmp_path / f"{name}.nii.gz"),
                               spacing=(1.1, 1.1, 1.2))
    ct = np.rint(phantom((36, 40, 16), lesion="right", modality="ct", seed=7))
    out["ct_dicom"] = write_dicom_series(ct, str(tmp_path / "ct"), spacing=(1.0, 1.0, 2.5))
    return out


def test_registered_kinds():
    assert MEDIA_READERS.get("volume") is VolumeReader and MEDIA_READERS.get("fmri") is FmriReader


def test_single_volume_item_and_token_count(vols, make_chat_config, tmp_path):
    enc = create_vision_model("brain3d_vit_tiny", preprocess={"target_spacing": [1.5, 1.5, 1.5]})
    cfg = make_chat_config(enc.config, "spatial_pool_mlp")
    reader = VolumeReader(cfg, {"volume_cache_dir": str(tmp_path / "cache")})
    items = reader.load(vols["t1"])
    assert len(items) == 1 and items[0].shape == (1, 32, 32, 32) and items[0].dtype == torch.float32
    assert reader.load(vols["t1"], is_train=True)[0].shape == (1, 32, 32, 32)  # augmented (data_augment), same grid
    assert cfg.num_context_tokens(items[0]) == 8  # 4^3 grid pooled by 2
    again = reader.load(vols["t1"])  # from the cache
    torch.testing.assert_close(again[0], items[0])


def test_ct_dicom_ref_dict_and_window_modes(vols, make_chat_config):
    enc = create_vision_model("brain3d_vit_tiny", in_channels=3, preprocess={"modality": "ct"})
    reader = VolumeReader(make_chat_config(enc.config), {})
    (item,) = reader.load(vols["ct_dicom"])
    assert item.shape == (3, 32, 32, 32)
    # brain window: the bleed (75 HU) is saturated, bone window: near its low end
    assert float(item[0].max()) == 1.0 and float(item[2].max()) > 0.6
    with pytest.raises(ValueError, match="preprocessing gives 1 channel.*in_channels=3"):
        VolumeReader(make_chat_config(enc.config), {"volume_preprocess": {"window_mode": "sample"}})
    # per-reference override: an MRI config reading a CT DICOM must be told, and is told by the reference
    mri = VolumeReader(make_chat_config(create_vision_model("brain3d_vit_tiny").config), {})
    with pytest.raises(MediaError, match="DICOM Modality is CT"):
        mri.load(vols["ct_dicom"])
    (one,) = mri.load({"path": vols["ct_dicom"], "modality": "ct", "window_mode": "sample"})
    assert one.shape == (1, 32, 32, 32)
    with pytest.raises(MediaError, match="ct: preprocessing .* gives 3 channel.*reads 1"):
        mri.load({"path": vols["ct_dicom"], "modality": "ct"})
    with pytest.raises(MediaError, match="bad preprocessing override"):
        mri.load({"path": vols["t1"], "volume_shap": [1, 2, 3]})


def test_study_pool_and_concat(vols, make_chat_config):
    study = [vols["t1"], vols["t2"], vols["flair"]]
    pooled_cfg = make_chat_config(create_vision_model("brain3d_vit_tiny", study_pooling="grid").config)
    (item,) = VolumeReader(pooled_cfg, {}).load(study)
    assert item.shape == (3, 1, 32, 32, 32)
    assert pooled_cfg.num_context_tokens(item) == 64
    (same,) = VolumeReader(pooled_cfg, {}).load({"paths": study})
    torch.testing.assert_close(same, item)
    concat_cfg = make_chat_config(create_vision_model("brain3d_vit_tiny").config)
    items = VolumeReader(concat_cfg, {}).load(study)
    assert len(items) == 3 and all(i.shape == (1, 32, 32, 32) for i in items)
    torch.testing.assert_close(items[1], item[1])
    with pytest.raises(ValueError, match="study_mode='pool' needs"):
        VolumeReader(concat_cfg, {"study_mode": "pool"})


def test_ct_windows_as_series_study(vols, make_chat_config):
    cfg = make_chat_config(create_vision_model("brain3d_vit_tiny", study_pooling="bag", mil_heads=2,
                                               preprocess={"modality": "ct", "window_mode": "series"}).config)
    (item,) = VolumeReader(cfg, {}).load(vols["ct_dicom"])
    assert item.shape == (3, 1, 32, 32, 32) and cfg.num_context_tokens(item) == 2


def test_neurovfm_gets_mask_channel_and_ragged_study(vols, make_chat_config):
    enc = create_vision_model("neurovfm_tokens_tiny", study_pooling="bag",
                              preprocess={"target_spacing": [2.0, 1.0, 1.0]})
    cfg = make_chat_config(enc.config, "volume_perceiver", {"num_queries": 4, "num_heads": 4})
    reader = VolumeReader(cfg, {})
    (t1,) = reader.load({"path": vols["t1"]})
    assert t1.shape[0] == 2 and set(torch.unique(t1[1]).tolist()) <= {0.0, 1.0}
    assert t1.shape[1:] == (19, 44, 40)  # variable shape: 1.2 mm * 32 / 2 mm, 1.1 * 40, 1.1 * 36
    n = type(enc).num_tokens(enc.config, t1)
    assert 0 < n < 9 * 5 * 5 and enc([t1])[0].shape[0] == n
    # different-shaped series of a study are padded with background (mask 0), which adds no token
    (study,) = reader.load([vols["t1"], {"path": vols["ct_dicom"], "modality": "ct", "window_mode": "sample"}])
    assert study.shape[0] == 2
    assert type(enc).num_tokens(enc.config, study) == 1
    assert cfg.num_context_tokens(study) == 4


def test_fmri_reader(nib_data, make_chat_config):
    enc = create_vision_model("brain3d_vit_4d_tiny", volume_shape=(8, 24, 16), patch_size=(4, 8, 8),
                              preprocess={"target_spacing": [8.0, 4.0, 4.0]})
    cfg = make_chat_config(enc.config, "spatial_pool_mlp")
    reader = FmriReader(cfg, {})
    (item,) = reader.load(str(nib_data / "functional.nii"), is_train=True)
    assert item.shape == (1, 4, 8, 24, 16)
    assert enc(item[None]).shape == (1, 2 * 2 * 3 * 2, 64)
    with pytest.raises(MediaError, match="anatomical.nii.*3D volume where a 4D"):
        reader.load(str(nib_data / "anatomical.nii"))
    with pytest.raises(MediaError, match="multi-run"):
        reader.load([str(nib_data / "functional.nii")] * 2)


def test_check_reads_everything(tmp_path, make_chat_config, nib_data):
    reader = VolumeReader(make_chat_config(create_vision_model("brain3d_vit_tiny").config), {})
    blob = (nib_data / "example4d.nii.gz").read_bytes()
    bad = tmp_path / "half.nii.gz"
    bad.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(MediaError, match="half.nii.gz"):
        reader.check(str(bad))
    with pytest.raises(MediaError, match="resampled_anat_moved.nii.*NaN"):
        reader.check(str(nib_data / "resampled_anat_moved.nii"))


def test_config_merge_order(make_chat_config):
    enc = create_vision_model("brain3d_vit_tiny", preprocess={"modality": "ct", "target_spacing": [2, 2, 2]})
    got = preprocess_config_for(enc.config, {"target_spacing": [3, 3, 3], "volume_preprocess": {"zscore": "neurovfm"}},
                                {"orientation": "RPI"})
    assert got.volume_shape == (32, 32, 32) and got.modality == "ct"
    assert got.target_spacing == (3.0, 3.0, 3.0) and got.zscore == "neurovfm" and got.orientation == "RPI"
    with pytest.raises(ValueError, match="declares no in_channels"):
        VolumeReader(make_chat_config(type("C", (), {"encoder_name": "intern_vit"})()), {})



# ---------------------------------------------------------------------------------------------- sizing from headers
def test_item_shapes_from_headers_equal_the_loaded_shapes(vols, tmp_path, nib_data, make_chat_config, monkeypatch):
    """``item_shapes_many`` (what packing plans with) gives the shapes ``load`` gives, and for NIfTI files reads no
    voxel data; DICOM series are read in full; a file the reader refuses is refused by sizing too."""
    from patches.neuro import readers
    from patches.neuro.synthetic import phantom, save_nifti

    psr = save_nifti(phantom((36, 40, 32), seed=3), str(tmp_path / "psr.nii.gz"), spacing=(1.1, 0.9, 1.7),
                     axcodes="PSR")
    ct = save_nifti(np.rint(phantom((30, 34, 14), modality="ct", seed=4)), str(tmp_path / "ct.nii.gz"),
                    spacing=(0.8, 0.8, 3.0), axcodes="LPS")
    fixed = make_chat_config(create_vision_model("brain3d_vit_tiny",
                                                 preprocess={"target_spacing": [1.5, 1.5, 1.5]}).config)
    grid = make_chat_config(create_vision_model("brain3d_vit_tiny", study_pooling="grid").config)
    ct_stack = make_chat_config(create_vision_model("brain3d_vit_tiny", in_channels=3,
                                                    preprocess={"modality": "ct"}).config)
    ct_series = make_chat_config(create_vision_model("brain3d_vit_tiny", study_pooling="bag", mil_heads=2,
                                                     preprocess={"modality": "ct", "window_mode": "series"}).config)
    vfm = make_chat_config(create_vision_model("neurovfm_tokens_tiny", study_pooling="bag",
                                               preprocess={"target_spacing": [2.0, 1.0, 1.0]}).config,
                           "volume_perceiver", {"num_queries": 4, "num_heads": 4})
    fmri = make_chat_config(create_vision_model("brain3d_vit_4d_tiny", volume_shape=(8, 24, 16), patch_size=(4, 8, 8),
                                                preprocess={"target_spacing": [8.0, 4.0, 4.0]}).config)
    study = [vols["t1"], vols["t2"], psr]
    cases = [  # (reader, ref, sized from headers alone)
        (VolumeReader(fixed, {}), vols["t1"], True),
        (VolumeReader(fixed, {}), psr, True),
        (VolumeReader(vfm, {}), psr, True),  # variable grid + foreground-mask channel
        (VolumeReader(vfm, {}), {"path": ct, "modality": "ct", "window_mode": "sample"}, True),
        (VolumeReader(vfm, {}), [vols["t1"], psr], True),  # ragged study, padded to one grid
        (VolumeReader(grid, {}), [vols["t1"], vols["t2"], vols["flair"]], True),
        (VolumeReader(grid, {"study_mode": "concat"}), {"paths": study}, True),
        (VolumeReader(ct_stack, {}), ct, True),
        (VolumeReader(ct_series, {}), ct, True),  # windows as the series of a study
        (VolumeReader(ct_series, {"study_mode": "concat"}), ct, True),
        (FmriReader(fmri, {}), str(nib_data / "functional.nii"), True),
        (VolumeReader(ct_stack, {}), vols["ct_dicom"], False),  # DICOM: the whole series is read
        (VolumeReader(vfm, {}), [vols["t1"], {"path": vols["ct_dicom"], "modality": "ct", "window_mode": "sample"}],
         False),
    ]
    for reader, ref, from_headers in cases:
        loaded = [[item.shape for item in reader.load(ref)]]
        if from_headers:
            with monkeypatch.context() as m:
                m.setattr(readers, "prepared_volume", lambda *a, **k: pytest.fail(f"{ref}: voxel data read"))
                assert reader.item_shapes_many([ref]) == loaded, ref
        else:
            assert reader.item_shapes_many([ref]) == loaded, ref
    with pytest.raises(MediaError, match="anatomical.nii.*3D volume where a 4D"):
        FmriReader(fmri, {}).item_shapes_many([str(nib_data / "anatomical.nii")])
    # what the reader refuses from a header is refused by sizing too, with the same named error, not planned
    import nibabel as nib

    flat = save_nifti(phantom((30, 34, 1), seed=5), str(tmp_path / "flat.nii.gz"))
    no_codes = nib.load(vols["t2"])
    no_codes = nib.Nifti1Image(np.asarray(no_codes.dataobj), no_codes.affine, no_codes.header.copy())
    no_codes.set_sform(None, code=0)
    no_codes.set_qform(None, code=0)
    nib.save(no_codes, str(tmp_path / "no_codes.nii.gz"))
    squashed = nib.Nifti1Image(phantom((30, 34, 20), seed=6).astype(np.float32), None)
    squashed.set_qform(None, code=0)
    squashed.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)  # every slice mapped onto one plane
    nib.save(squashed, str(tmp_path / "squashed.nii.gz"))
    assert abs(np.linalg.det(nib.load(str(tmp_path / "squashed.nii.gz")).affine[:3, :3])) < 1e-9
    refused = [(VolumeReader(fixed, {}), flat, "2D"), (VolumeReader(fixed, {}), str(tmp_path / "no_codes.nii.gz"),
                                                       "sform_code and qform_code are both 0"),
               (VolumeReader(fixed, {}), str(tmp_path / "squashed.nii.gz"), "degenerate voxel-to-world affine"),
               (VolumeReader(fixed, {}), {"path": ct, "modality": "ct"}, "gives 3 channel"),
               (VolumeReader(vfm, {}), [vols["t1"], {"path": ct, "modality": "ct"}], "gives 3 channel")]
    for reader, ref, message in refused:
        with pytest.raises(MediaError, match=message):
            reader.load(ref)
        with pytest.raises(MediaError, match=message):
            reader.item_shapes_many([ref])
    native = VolumeReader(grid, {"volume_preprocess": {"volume_shape": None}})  # each series keeps its own grid
    with pytest.raises(MediaError, match="series shapes differ"):
        native.load([vols["t1"], psr])
    with pytest.raises(MediaError, match="series shapes differ"):
        native.item_shapes_many([[vols["t1"], psr]])

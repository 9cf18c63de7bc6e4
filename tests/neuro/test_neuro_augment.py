"""MONAI volume augmentations: shapes, determinism under a seed, the random crop keeps the foreground, identity at
evaluation (training data and the VLM ``volume`` reader), unknown options refused."""
from __future__ import annotations

import pytest
import torch

from patches.neuro.augment import AugmentConfig, VolumeAugmenter


def _volume():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 12, 40, 36, generator=g)
    mask = torch.zeros(12, 40, 36, dtype=torch.bool)
    mask[3:9, 10:26, 8:20] = True
    img[0][mask] += 1.0  # foreground brighter: its voxels can be recognised after flips/rotations
    return img, mask


def test_spatial_shapes_and_seed_determinism():
    img, mask = _volume()
    aug = VolumeAugmenter({"crop_size": (8, 32, 32)})
    a, ma = aug.spatial(img, mask, (1, 2, 3))
    b, mb = aug.spatial(img, mask, (1, 2, 3))
    assert a.shape[0] == 1 and ma.shape == a.shape[1:] and ma.dtype == torch.bool
    assert all(s <= c for s, c in zip(a.shape[1:], (8, 32, 32)))
    assert torch.equal(a, b) and torch.equal(ma, mb)
    outs = {aug.spatial(img, mask, (1, 2, s))[0].sum().item() for s in range(8)}
    assert len(outs) > 1  # different seeds, different draws
    assert torch.equal(aug.intensity(img, 5), aug.intensity(img, 5)) and torch.equal(aug.noise(img, 5), aug.noise(img, 5))
    changed = [not torch.equal(aug.intensity(img, s), img) for s in range(8)] + [not torch.equal(aug.noise(img, s), img)
                                                                                   for s in range(8)]
    assert any(changed)


def test_flips_and_permutation_move_image_and_mask_together():
    img, mask = _volume()
    aug = VolumeAugmenter({"flip_prob": 1.0, "permute_prob": 1.0})
    out, m = aug.spatial(img, mask, 3)
    assert out.shape[1] == 12 and sorted(out.shape[2:]) == [36, 40]  # D kept; H/W may swap
    assert int(m.sum()) == int(mask.sum()) and bool((out[0][m] > 1.0).all())  # mask still marks the bright voxels


def test_random_crop_keeps_the_foreground():
    img, mask = _volume()  # foreground box 6 x 16 x 12
    whole = VolumeAugmenter(AugmentConfig(crop_size=(8, 20, 20), flip_axes=(), permute_axes=None))
    for s in range(6):
        _, m = whole.spatial(img, mask, s)
        assert int(m.sum()) == int(mask.sum())  # the box fits: the whole foreground is kept
    part = VolumeAugmenter(AugmentConfig(crop_size=(4, 8, 8), flip_axes=(), permute_axes=None))
    for s in range(6):
        out, m = part.spatial(img, mask, s)
        assert out.shape == (1, 4, 8, 8) and bool(m.all())  # inside the foreground box: never background only


def test_unknown_or_bad_options_refused():
    with pytest.raises(ValueError, match=r"unknown volume augmentation option\(s\) \['flips'\]"):
        AugmentConfig.from_dict({"flips": 1})
    with pytest.raises(ValueError, match="flip_axes must be among"):
        AugmentConfig(flip_axes=(3,))
    with pytest.raises(ValueError, match="gamma_prob must be in"):
        AugmentConfig(gamma_prob=2)


def test_training_items_identity_at_evaluation(neuro_studies):
    from internvl.model.vision.base import create_vision_model
    from patches.neuro.train.config import check_config
    from patches.neuro.train.data import StudyData, discover
    import yaml
    from pathlib import Path

    raw = yaml.safe_load((Path(__file__).parents[2] / "shell/neuro/config/pretrain_tiny.yaml").read_text()
                         .replace("data/demo_neuro_train", str(neuro_studies)))
    cfg = check_config(raw)
    enc = create_vision_model("neurovfm_tokens_tiny")
    kw = dict(encoder_config=enc.config, cfg=cfg, study_level=False, all_windows=False)
    series = discover(cfg, "val")
    val_aug = StudyData(series, split="train", train=False, **kw)  # train split params (augment: true), not training
    cfg_off = check_config({**raw, "data": {**raw["data"], "dataset": {**raw["data"]["dataset"], "train": {
        **raw["data"]["dataset"]["train"], "params": {**raw["data"]["dataset"]["train"]["params"], "augment": False,
                                                       "random_crop": False}}}}})
    plain = StudyData(series, split="train", train=False, **dict(kw, cfg=cfg_off))
    for i in range(len(series)):
        assert torch.equal(val_aug[(0, i)]["items"][0], plain[(0, i)]["items"][0])
    train = StudyData(series, split="train", train=True, **kw)
    assert torch.equal(train[(2, 0)]["items"][0], train[(2, 0)]["items"][0])  # seeded by (seed, epoch, unit)
    assert not all(torch.equal(train[(e, 0)]["items"][0], train[(0, 0)]["items"][0]) for e in range(1, 4))


def test_vlm_reader_augments_only_in_training(tmp_path, make_chat_config):
    from internvl.model.vision.base import create_vision_model
    from patches.neuro.readers import VolumeReader
    from patches.neuro.synthetic import phantom, save_nifti

    save_nifti(phantom((30, 34, 28), lesion="left"), str(tmp_path / "t1.nii.gz"))
    enc = create_vision_model("brain3d_vit_tiny")
    reader = VolumeReader(make_chat_config(enc.config), {"volume_augment": {"flip_prob": 1.0, "noise_prob": 1.0}})
    ev1, ev2 = reader.load(str(tmp_path / "t1.nii.gz")), reader.load(str(tmp_path / "t1.nii.gz"))
    assert torch.equal(ev1[0], ev2[0])
    torch.manual_seed(0)
    tr = reader.load(str(tmp_path / "t1.nii.gz"), is_train=True)
    assert tr[0].shape == ev1[0].shape and not torch.equal(tr[0], ev1[0])
    with pytest.raises(ValueError, match="unknown volume augmentation"):
        VolumeReader(make_chat_config(enc.config), {"volume_augment": {"rotate": 1}})

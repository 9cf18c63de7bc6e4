"""Brainfound data: CT windows / MRI scaling / slice selection / augmentation, volume files, the ``meditk`` kind
(Brainfound's mcq.jsonl / qa.jsonl rows through the core dataset), and bad input named in errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from internvl.media import MEDIA_READERS, MediaError
from patches.brainfound.preprocess import (SliceAugment, minmax_per_slice, sample_generator, select_slices,
                                           volume_to_unit_slices, window_ct)
from patches.brainfound.synthetic import synthetic_head
from patches.brainfound.volumes import guess_modality, read_raw_volume

LLM = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=32, intermediate_size=64,
           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
           max_position_embeddings=2048)


def test_ct_window_and_mri_scaling():
    hu = np.array([[-1000.0, -40.0, 40.0, 120.0, 2000.0]])
    assert window_ct(hu, (160, 40)).tolist() == [[0.0, 0.0, 0.5, 1.0, 1.0]]
    assert window_ct(hu, (1400, 400)).tolist()[0][2] == pytest.approx((40 + 300) / 1400)
    mri = np.stack([np.arange(4.0).reshape(2, 2), np.full((2, 2), 7.0)])
    out = minmax_per_slice(mri)
    np.testing.assert_allclose(out[0], [[0, 1 / 3], [2 / 3, 1]], rtol=1e-6)
    assert out[1].tolist() == [[0, 0], [0, 0]]


@pytest.mark.parametrize("depth,how,expect", [
    (10, "first", ([1, 2, 3, 4], 0, 0)),  # Brainfound stage 2: [1:S+1]
    (10, "center", ([3, 4, 5, 6], 0, 0)),
    (10, "uniform", ([0, 3, 6, 9], 0, 0)),
    (4, "first", ([0, 1, 2, 3], 0, 0)),
    (1, "uniform", ([0], 1, 2)),  # zero-padded symmetrically
])
def test_slice_selection(depth, how, expect):
    assert select_slices(depth, 4, how) == expect


def test_volume_to_slices_pads_black_and_augment_is_seeded():
    vol = synthetic_head(np.random.default_rng(0), depth=2, size=40, lesion="hemorrhage")
    unit = volume_to_unit_slices(vol, "CT", 4)
    assert unit.shape == (4, 40, 40) and unit[0].abs().sum() == 0 and unit[-1].abs().sum() == 0
    aug = SliceAugment(size=32, rotate_rad=0.2, gamma_prob=1.0)
    a, b = aug(unit, sample_generator(0, 1, 2)), aug(unit, sample_generator(0, 1, 2))
    c = aug(unit, sample_generator(0, 1, 3))
    assert a.shape == (4, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= a.min() and a.max() <= 1


def test_array_volume_files(tmp_path):
    vol = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.savez(tmp_path / "one.npz", anything=vol)
    np.savez(tmp_path / "two.npz", a=vol, b=vol)
    np.save(tmp_path / "hwd.npy", np.moveaxis(vol, 0, -1))
    assert read_raw_volume(str(tmp_path / "one.npz")).array.shape == (2, 3, 4)
    assert read_raw_volume(str(tmp_path / "two.npz"), npz_key="b").array.shape == (2, 3, 4)
    with pytest.raises(MediaError, match=r"two\.npz.*npz_key"):
        read_raw_volume(str(tmp_path / "two.npz"))
    np.testing.assert_array_equal(read_raw_volume(str(tmp_path / "hwd.npy"), array_layout="HWD").array, vol)
    bad = vol.copy()
    bad[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(MediaError, match=r"nan\.npy: 1 NaN"):
        read_raw_volume(str(tmp_path / "nan.npy"))
    np.save(tmp_path / "flat.npy", vol[0])
    with pytest.raises(MediaError, match=r"flat\.npy: expected a 3D"):
        read_raw_volume(str(tmp_path / "flat.npy"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(MediaError, match=r"junk\.npz: unreadable"):
        read_raw_volume(str(tmp_path / "junk.npz"))
    assert [guess_modality(p) for p in ("a/t1_x.npy", "b/T2/y.npy", "pub_mri/z.npy", "ct/q.npy")] == \
        ["T1", "T2", "pub_mri", "CT"]


def test_nifti_goes_through_the_neuro_reader(tmp_path):
    import nibabel as nib

    vol = synthetic_head(np.random.default_rng(1), depth=6, size=24)
    # nibabel (x, y, z) order with z the axial axis; RAS affine
    nib.save(nib.Nifti1Image(np.transpose(vol, (2, 1, 0)), np.eye(4)), str(tmp_path / "ct.nii.gz"))
    raw = read_raw_volume(str(tmp_path / "ct.nii.gz"), modality="CT")
    assert raw.array.shape == (6, 24, 24)
    np.testing.assert_allclose(raw.array, vol, atol=1e-3)


def _chat_config(tokenizer, **vision):
    from internvl.model.internvl_chat import InternVLChatConfig

    return InternVLChatConfig.build(vision="brainfound_unet", vision_overrides={"preset": "tiny", **vision},
                                    llm_config=dict(LLM, vocab_size=len(tokenizer)), projector="mlp",
                                    template="internvl2_5")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_meditk_reader_items(tmp_path, tokenizer):
    vol = synthetic_head(np.random.default_rng(2), depth=10, size=48)
    np.savez(tmp_path / "scan.npz", data=vol.astype(np.int16))
    cfg = _chat_config(tokenizer)
    reader = MEDIA_READERS.get("meditk")(cfg, {})
    assert reader.placeholder == "<meditk>"
    items = reader.load(str(tmp_path / "scan.npz"))
    assert len(items) == 4 and items[0].shape == (3, 32, 32)
    assert items[0].min() >= -1 and items[0].max() <= 1
    assert cfg.num_context_tokens(items[0]) == 9
    per_ref = reader.load({"path": str(tmp_path / "scan.npz"), "num_slices": 6, "slice_select": "first"})
    assert len(per_ref) == 6
    with pytest.raises(MediaError, match="unknown meditk option"):
        reader.load({"path": str(tmp_path / "scan.npz"), "slices": 3})
    with pytest.raises(MediaError, match="missing.npz: file not found"):
        reader.load(str(tmp_path / "missing.npz"))


def test_brainfound_jsonl_rows_through_the_core_dataset(tmp_path, tokenizer):
    """Brainfound's mcq.jsonl / qa.jsonl row shapes (key meditk, placeholder <meditk>, .npz) load unchanged."""
    from internvl.train.dataset import SupervisedDataset
    from internvl.data.meta import load_meta

    (tmp_path / "post_data_npz").mkdir()
    for i in range(2):
        np.savez(tmp_path / "post_data_npz" / f"{i}.npz",
                 data=synthetic_head(np.random.default_rng(i), depth=8, size=40).astype(np.int16))
    mcq = {"id": 24000, "meditk": "post_data_npz/0.npz", "conversations": [
        {"from": "human", "value": "<meditk>\n在这幅CT图像中，脑实质的病变情况如何？A: 有明显异常密度影 B: 没有明显异常密度影 "
                                   "C: 有轻微异常影 D: 无法判断"},
        {"from": "gpt", "value": "B"},
        {"from": "human", "value": "根据CT图像，中线结构如何？A: 偏离 B: 居中 C: 不确定 D: 改变"},
        {"from": "gpt", "value": "B"}]}
    qa = {"id": 0, "meditk": "post_data_npz/1.npz", "conversations": [
        {"from": "human", "value": "<meditk>\n请描述该图像。"}, {"from": "gpt", "value": "脑实质未见异常密度影。"},
        {"from": "human", "value": "请书写诊断意见。"}, {"from": "gpt", "value": "头颅CT平扫未见明显异常。"}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(mcq, ensure_ascii=False) + "\n" +
                                          json.dumps(qa, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "meta.json").write_text(json.dumps({"bf": {"root": str(tmp_path),
                                                           "annotation": str(tmp_path / "train.jsonl")}}))
    config = _chat_config(tokenizer)
    ds = SupervisedDataset(load_meta(str(tmp_path / "meta.json"))[0], tokenizer, config, max_seq_length=512)
    ctx = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    for i in range(2):
        s = ds[i]
        assert int((s["input_ids"] == ctx).sum()) == 4 * 9  # 4 slices x 9 tokens (tiny), one <img> block
        assert len(s["pixel_values"]) == 4 and s["item_kinds"] == ["meditk"] * 4
        assert int((s["input_ids"] == tokenizer.convert_tokens_to_ids("<img>")).sum()) == 1
        assert int((s["labels"] != -100).sum()) > 2  # the answers are trained


def test_meditk_is_an_alias_of_volume_for_other_encoders(tmp_path, tokenizer):
    """With a non-Brainfound 3D encoder, meditk refs go to the neuro volume reader unchanged."""
    import nibabel as nib
    from internvl.model.internvl_chat import InternVLChatConfig

    vol = synthetic_head(np.random.default_rng(3), depth=12, size=20, modality="T1")
    nib.save(nib.Nifti1Image(np.transpose(vol, (2, 1, 0)), np.eye(4)), str(tmp_path / "t1.nii.gz"))
    cfg = InternVLChatConfig.build(vision="brain3d_vit_tiny", vision_overrides={},
                                   llm_config=dict(LLM, vocab_size=len(tokenizer)), projector="spatial_pool_mlp")
    meditk = MEDIA_READERS.get("meditk")(cfg, {}).load(str(tmp_path / "t1.nii.gz"))
    volume = MEDIA_READERS.get("volume")(cfg, {}).load(str(tmp_path / "t1.nii.gz"))
    assert len(meditk) == len(volume) == 1 and torch.equal(meditk[0], volume[0])


def test_tiny_text_model_is_reproducible(tmp_path):
    from patches.brainfound.text import build_tiny_text_model, load_text_model

    corpus = ["normal brain . impression : normal .", "acute bleed . impression : hemorrhage .", "出血 CT."] * 3
    a = build_tiny_text_model(corpus, tmp_path / "a", hidden_size=16, num_layers=1, num_heads=2)
    b = build_tiny_text_model(list(reversed(corpus)), tmp_path / "b", hidden_size=16, num_layers=1, num_heads=2)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    tok, model = load_text_model(a)
    enc = tok(["impression : hemorrhage .", "出血"], padding=True, return_tensors="pt")
    assert tok.unk_token_id not in enc["input_ids"][0].tolist()
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert model(**enc).last_hidden_state.shape == (2, enc["input_ids"].shape[1], 16)


def test_volume_kind_feeds_brainfound_unet_ct(tmp_path, tokenizer):
    """The neuro ``volume`` reader, configured by the encoder's ``preprocess`` property, gives [3, D, H, W] CT items in
    [-1, 1] (the 160/40 window in every channel) that brainfound_unet encodes as num_slices x tokens-per-slice."""
    import nibabel as nib

    vol = synthetic_head(np.random.default_rng(4), depth=6, size=24, lesion="hemorrhage")
    nib.save(nib.Nifti1Image(np.transpose(vol, (2, 1, 0)), np.eye(4)), str(tmp_path / "ct.nii.gz"))
    cfg = _chat_config(tokenizer)
    (item,) = MEDIA_READERS.get("volume")(cfg, {}).load(str(tmp_path / "ct.nii.gz"))
    assert item.shape == (3, 6, 24, 24) and torch.equal(item[0], item[2])
    assert item.min() >= -1 - 1e-6 and item.max() <= 1 + 1e-6
    expect = (volume_to_unit_slices(vol, "CT", 0) - 0.5) / 0.5
    torch.testing.assert_close(item[0], expect, atol=2 / 255, rtol=0)  # the neuro reader keeps uint8 levels
    assert cfg.num_context_tokens(item) == 4 * 9

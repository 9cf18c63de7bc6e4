"""The neuro plugin inside the core: dataset rows -> collated batch -> InternVLChatModel loss/backward, and an
InternVL checkpoint holding a 3D encoder + Q-Former saved and reloaded with identical weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patches.neuro.synthetic import phantom, save_nifti, write_dicom_series

LLM = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=32, intermediate_size=64,
           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
           max_position_embeddings=512)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _config(tokenizer, projector="spatial_pool_mlp", projector_config=None, **vision):
    from internvl.model.internvl_chat import InternVLChatConfig

    return InternVLChatConfig.build(vision="brain3d_vit_tiny", vision_overrides=vision,
                                    llm_config=dict(LLM, vocab_size=len(tokenizer)), projector=projector,
                                    projector_config=projector_config or {}, template="internvl2_5")


def _model(config, tokenizer):
    from internvl.model.internvl_chat import InternVLChatModel

    torch.manual_seed(0)
    model = InternVLChatModel(config)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    return model


def test_rows_to_loss_and_gradients(tmp_path, tokenizer):
    from internvl.data.collate import DataCollator
    from internvl.train.dataset import SupervisedDataset
    from internvl.data.meta import load_meta

    save_nifti(phantom((30, 34, 28), lesion="left"), str(tmp_path / "t1.nii.gz"), axcodes="LPI")
    save_nifti(phantom((30, 34, 28), seed=2), str(tmp_path / "t2.nii.gz"))
    write_dicom_series(np.rint(phantom((30, 34, 12), lesion="right", modality="ct")), str(tmp_path / "ct"),
                       spacing=(1.0, 1.0, 2.5))
    turn = lambda q, a: [{"from": "human", "value": q}, {"from": "gpt", "value": a}]  # noqa: E731
    rows = [{"volume": "t1.nii.gz", "conversations": turn("Which side?", "left")},
            {"volume": {"path": "ct", "modality": "ct", "ct_windows": ["brain"]},
             "conversations": turn("<image>\nWhich side?", "right")},
            {"volume": {"paths": ["t1.nii.gz", "t2.nii.gz"]}, "conversations": turn("<image>\nReport.", "normal")},
            {"volume": ["t1.nii.gz", "t2.nii.gz"], "conversations": turn("<image> vs <image>: same?", "no")},
            {"conversations": turn("Hello", "hi")}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "meta.json").write_text(json.dumps({"d": {"root": str(tmp_path), "annotation": str(tmp_path / "train.jsonl"),
                                                          "volume_cache_dir": str(tmp_path / "cache")}}))
    config = _config(tokenizer, study_pooling="grid")
    ds = SupervisedDataset(load_meta(str(tmp_path / "meta.json"))[0], tokenizer, config, max_seq_length=256)
    samples = [ds[i] for i in range(len(rows))]
    ctx = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    # 32^3 at 1 mm, 8^3 patches -> 4^3 grid, pooled by 2 -> 8 tokens per placeholder
    assert [int((s["input_ids"] == ctx).sum()) for s in samples] == [8, 8, 8, 16, 0]
    assert [len(s["pixel_values"]) for s in samples] == [1, 1, 1, 2, 0]
    assert samples[2]["pixel_values"][0].shape == (2, 1, 32, 32, 32)  # the study, pooled by MIL in the encoder
    assert samples[4]["item_kinds"] == []  # text-only row: no item (the model runs a dummy volume while training)
    batch = DataCollator.from_tokenizer(tokenizer)(samples)
    model = _model(config, tokenizer).train()
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.vision_model.patch_embed.weight.grad.abs().sum() > 0
    assert model.vision_model.mil.attn_w.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("projector,opts", [("qformer", {"num_queries": 4, "hidden_size": 32, "num_layers": 2,
                                                          "num_heads": 4, "dropout": 0.0}),
                                             ("volume_perceiver", {"num_queries": 4, "num_heads": 4})])
def test_internvl_checkpoint_roundtrip(tmp_path, tokenizer, projector, opts):
    from internvl.model.internvl_chat import InternVLChatModel

    model = _model(_config(tokenizer, projector, opts, preprocess={"modality": "mri"}), tokenizer).eval()
    model.save_pretrained(tmp_path)
    again = InternVLChatModel.from_pretrained(tmp_path).eval()
    assert again.config.vision_config.encoder_name == "brain3d_vit_tiny"
    assert again.config.vision_config.preprocess == {"modality": "mri"}
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.extract_feature(x), again.extract_feature(x), rtol=0, atol=0)


def test_neurovfm_ragged_rows_through_the_core(tmp_path, tokenizer):
    """Background-removed, variable-length token sets per volume, one batch, through InternVLChatModel."""
    from internvl.model.internvl_chat import InternVLChatConfig
    from internvl.data.collate import DataCollator
    from internvl.train.dataset import SupervisedDataset
    from internvl.data.meta import load_meta

    save_nifti(phantom((30, 34, 28), lesion="left"), str(tmp_path / "a.nii.gz"))
    save_nifti(phantom((40, 30, 20), seed=4), str(tmp_path / "b.nii.gz"), axcodes="PSR")
    turn = [{"from": "human", "value": "<image>\nLesion?"}, {"from": "gpt", "value": "yes"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"volume": f, "conversations": turn}) + "\n"
                                              for f in ("a.nii.gz", "b.nii.gz")))
    (tmp_path / "m.json").write_text(json.dumps({"d": {"root": str(tmp_path), "annotation": str(tmp_path / "t.jsonl")}}))
    config = InternVLChatConfig.build(vision="neurovfm_tokens_tiny", vision_overrides={"preprocess": {"target_spacing": [2, 1, 1]}},
                                      llm_config=dict(LLM, vocab_size=len(tokenizer)), projector="mlp",
                                      template="internvl2_5")
    ds = SupervisedDataset(load_meta(str(tmp_path / "m.json"))[0], tokenizer, config, max_seq_length=4096)
    samples = [ds[0], ds[1]]
    ctx = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    counts = [int((s["input_ids"] == ctx).sum()) for s in samples]
    assert counts[0] != counts[1] and min(counts) > 0  # foreground token counts differ per volume
    assert [s["pixel_values"][0].shape[1:] for s in samples] == [(14, 34, 30), (10, 30, 40)]
    model = _model(config, tokenizer).train()
    out = model(**DataCollator.from_tokenizer(tokenizer)(samples))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.vision_model.token_embed.weight.grad.abs().sum() > 0

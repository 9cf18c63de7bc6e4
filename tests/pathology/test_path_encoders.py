"""Tile encoders: exact Virchow-2 architecture (meta device), the other presets, tiny forward passes, weights."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import SwiGLUPacked

from internvl.model.vision.base import create_vision_model, list_vision_models


def _meta(name: str, **overrides):
    with torch.device("meta"):
        return create_vision_model(name, **overrides)


def test_virchow2_matches_timm_reference_exactly():
    model = _meta("virchow2")
    assert sum(p.numel() for p in model.parameters()) == 631_239_424
    with torch.device("meta"):  # the construction Virchow-2's model card / TRIDENT give, written out by hand
        ref = timm.create_model("vit_huge_patch14_224", pretrained=False, img_size=224, init_values=1e-5,
                                num_classes=0, reg_tokens=4, mlp_ratio=5.3375, global_pool="",
                                dynamic_img_size=True, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
    ours = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours == theirs
    assert len(ours) == 455
    assert ours["reg_token"] == (1, 4, 1280) and ours["pos_embed"] == (1, 261, 1280)
    assert ours["blocks.0.mlp.fc1.weight"] == (6832, 1280) and ours["blocks.0.mlp.fc2.weight"] == (1280, 3416)
    cfg = model.config
    assert cfg.hidden_size == cfg.embedding_dim == 2560 and cfg.num_prefix_tokens == 5
    # normalisation pinned to ImageNet, not timm's fallback (0.5 / crop 0.9) for this arch
    assert cfg.image_mean == [0.485, 0.456, 0.406] and cfg.image_std == [0.229, 0.224, 0.225]
    assert cfg.crop_pct == 1.0
    assert model.model.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
    assert timm.data.resolve_data_config({}, model=model.model)["crop_pct"] == 1.0


@pytest.mark.parametrize("name,params,dim,prefix", [
    ("virchow", 631_229_184, 2560, 1),
    ("uni", 303_350_784, 1024, 1),
    ("uni2_h", 681_394_176, 1536, 9),
    ("h_optimus_0", 1_134_774_272, 1536, 5),
    ("prov_gigapath", 1_134_953_984, 1536, 1),
])
def test_other_presets_build_with_their_own_configs(name, params, dim, prefix):
    model = _meta(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.config.hidden_size == dim
    assert model.model.num_prefix_tokens == model.config.num_prefix_tokens == prefix
    assert type(model).__name__ == "TimmTileEncoder"  # one class, one registry line each
    assert name in list_vision_models()


def test_hoptimus_and_uni_normalisation_differ():
    assert _meta("h_optimus_0").config.image_mean == [0.707223, 0.578729, 0.703617]
    uni = _meta("uni").config
    assert uni.tile_size == 256 and abs(uni.crop_pct - 224 / 256) < 1e-9


def test_tiny_forward_embedding_is_cls_plus_mean_of_patch_tokens(tiny_encoder):
    tiles = torch.randint(0, 256, (3, 224, 224, 3), dtype=torch.uint8)
    x = tiny_encoder.preprocess(tiles)
    assert x.shape == (3, 3, 224, 224)
    expected = (tiles.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)
    with torch.no_grad():
        tokens = tiny_encoder.tokens(x)
        emb = tiny_encoder.embed(x)
    assert tokens.shape == (3, 5 + 256, 96)  # CLS, 4 registers, 16x16 patches
    torch.testing.assert_close(emb[:, :96], tokens[:, 0])
    torch.testing.assert_close(emb[:, 96:], tokens[:, 5:].mean(1))
    assert not torch.allclose(emb[:, 96:], tokens[:, 1:].mean(1))  # registers are excluded
    assert tiny_encoder(x).shape == (3, 1, 192)


def test_patch_token_output_for_use_as_internvl_vision_model():
    torch.manual_seed(0)
    enc = create_vision_model("virchow2_tiny", output="patch_tokens")
    item = enc.dummy_input(enc.config)
    assert enc.num_tokens(enc.config, item) == 256 and enc.config.hidden_size == 96
    with torch.no_grad():
        out = enc(item.unsqueeze(0))
    assert out.shape == (1, 256, 96)


def test_weights_round_trip_and_strict_mismatch(tmp_path, tiny_encoder):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_encoder.model.state_dict().items()}, str(path))
    torch.manual_seed(123)
    fresh = create_vision_model("virchow2_tiny", weights=str(tmp_path))  # HF snapshot folder layout
    for k, v in tiny_encoder.model.state_dict().items():
        torch.testing.assert_close(fresh.model.state_dict()[k], v)
    assert fresh.config.weights_source.startswith("model.safetensors sha256:")
    bin_path = tmp_path / "virchow_v1.bin"
    torch.save(create_vision_model("virchow2_tiny", timm_kwargs={"reg_tokens": 0}).model.state_dict(), bin_path)
    with pytest.raises(ValueError, match="weights do not match.*pos_embed"):  # registers missing: never partial
        create_vision_model("virchow2_tiny", weights=str(bin_path))
    state = dict(tiny_encoder.model.state_dict())
    state.pop("norm.weight")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="missing.*norm.weight"):
        create_vision_model("virchow2_tiny", weights=str(tmp_path / "partial.safetensors"))
    with pytest.raises(FileNotFoundError, match="no-such"):
        create_vision_model("virchow2_tiny", weights=str(tmp_path / "no-such.safetensors"))


def test_config_survives_internvl_config_round_trip():
    from internvl.model.internvl_chat import InternVLChatConfig

    llm = {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "intermediate_size": 32, "vocab_size": 64}
    cfg = InternVLChatConfig.build(vision="virchow2_tiny", llm_config=llm, projector="mlp")
    again = InternVLChatConfig(**cfg.to_dict())
    assert again.vision_config.preset == "virchow2_tiny" and again.vision_config.hidden_size == 192
    assert again.vision_config.timm_kwargs == cfg.vision_config.timm_kwargs
    with pytest.raises(ValueError, match="does not load weights"):
        InternVLChatConfig.build(vision="virchow2_tiny", vision_overrides={"weights": "x"}, llm_config=llm)


def test_hub_weights_offline_fail_with_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    from patches.pathology.encoders import resolve_weights

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OSError, match="paige-ai/Virchow2: model.safetensors is not in the local Hugging Face cache"):
        resolve_weights("hf-hub", "paige-ai/Virchow2")
    with pytest.raises(ValueError, match="no hub id"):
        create_vision_model("virchow2_tiny", weights="hf-hub")

"""brain3d_vit (3D, 4D, studies) and neurovfm_tokens: the encoder contract, remainder policies, ragged tokens,
and save_pretrained/from_pretrained round trips with identical weights."""
from __future__ import annotations

import pytest
import torch

from internvl.model.vision.base import VISION_MODELS, create_vision_model, create_vision_model_from_dict, encoder_class
from patches.neuro.encoders.brain3d_vit import Brain3DViT, Brain3DViTConfig
from patches.neuro.encoders.neurovfm_tokens import NeuroVFMTokens, NeuroVFMTokensConfig, token_layout

torch.manual_seed(0)


def _roundtrip(model, tmp_path, x):
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    again = type(model).from_pretrained(tmp_path).eval()
    sd1, sd2 = model.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    rebuilt = create_vision_model_from_dict(model.config.to_dict())
    bookkeeping = {"architectures", "_name_or_path", "transformers_version", "dtype"}
    strip = lambda d: {k: v for k, v in d.items() if k not in bookkeeping}  # noqa: E731
    assert type(rebuilt) is type(model) and strip(rebuilt.config.to_dict()) == strip(model.config.to_dict())
    with torch.no_grad():
        a, b = model(x), again(x)
    for u, v in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


@pytest.mark.parametrize("name,extra", [("brain3d_vit_tiny", {}), ("brain3d_vit_4d_tiny", {}),
                                        ("brain3d_vit_tiny", {"study_pooling": "grid", "use_cls_token": True}),
                                        ("neurovfm_tokens_tiny", {"study_pooling": "bag", "mil_heads": 2})])
def test_save_load_roundtrip_identical(tmp_path, name, extra):
    model = create_vision_model(name, **extra)
    x = torch.stack([model.dummy_input(model.config)] * 2)
    _roundtrip(model, tmp_path, x)


def test_brain3d_contract_3d():
    model = create_vision_model("brain3d_vit_tiny").eval()
    assert model.config.encoder_name == "brain3d_vit_tiny" and encoder_class("brain3d_vit_tiny") is Brain3DViT
    x = torch.randn(3, 1, 32, 32, 32)
    out = model(x)
    assert out.shape == (3, 64, 64) == (3, Brain3DViT.num_tokens(model.config, x[0]), model.config.hidden_size)
    d = Brain3DViT.dummy_input(model.config)
    assert d.shape == (1, 32, 32, 32) and model(d[None]).shape == (1, 64, 64)
    # a list of differently shaped items gives a list, each with its own token count
    items = [torch.randn(1, 32, 32, 32), torch.randn(1, 16, 32, 24)]
    outs = model(items)
    assert [o.shape[0] for o in outs] == [Brain3DViT.num_tokens(model.config, it) for it in items] == [64, 24]
    # batching does not mix items
    torch.testing.assert_close(model(x[:1])[0], out[0], atol=1e-5, rtol=1e-5)


def test_brain3d_defaults_match_brainvlm_sizes():
    cfg = Brain3DViTConfig()  # 128^3 / 16^3
    assert cfg.grid == (8, 8, 8)
    cfg4 = VISION_MODELS.get("brain3d_vit_4d").encoder_class.config_class(volume_shape=(96,) * 3, patch_size=16,
                                                                           num_frames=20, frame_patch=5)
    assert cfg4.grid == (4, 6, 6, 6) and cfg4.input_kinds == ("fmri",)  # 864 tokens


def test_brain3d_4d():
    model = create_vision_model("brain3d_vit_4d_tiny").eval()
    x = torch.randn(2, 1, 4, 16, 16, 16)
    out = model(x)
    assert out.shape == (2, 16, 64) and Brain3DViT.num_tokens(model.config, x[0]) == 16
    # time order matters (temporal position embedding + patches over time)
    assert not torch.allclose(model(x.flip(2)), out)


def test_remainder_policies():
    with pytest.raises(ValueError, match=r"not divisible by patch.*remainder='crop' \(drop 2 voxels\).*'pad'"):
        Brain3DViTConfig(volume_shape=(130, 128, 128), patch_size=16, depth=1, hidden_size=32, num_heads=2)
    crop = Brain3DViT(Brain3DViTConfig(volume_shape=(20, 20, 20), patch_size=8, remainder="crop", hidden_size=32,
                                       depth=1, num_heads=2)).eval()
    pad = Brain3DViT(Brain3DViTConfig(volume_shape=(20, 20, 20), patch_size=8, remainder="pad", hidden_size=32,
                                      depth=1, num_heads=2)).eval()
    x = torch.randn(1, 1, 20, 20, 20)
    assert crop.config.grid == (2, 2, 2) and crop(x).shape[1] == 8 == Brain3DViT.num_tokens(crop.config, x[0])
    assert pad.config.grid == (3, 3, 3) and pad(x).shape[1] == 27 == Brain3DViT.num_tokens(pad.config, x[0])
    # crop is centred: the 2 border voxels on each side do not matter
    y = x.clone()
    y[..., :2, :, :] = 100.0
    torch.testing.assert_close(crop(y), crop(x))


def test_study_pooling_grid_and_bag():
    grid = create_vision_model("brain3d_vit_tiny", study_pooling="grid").eval()
    study = torch.randn(2, 3, 1, 32, 32, 32)  # 2 studies x 3 series
    out = grid(study)
    assert out.shape == (2, 64, 64) and Brain3DViT.num_tokens(grid.config, study[0]) == 64
    # series order does not matter (attention pooling is permutation invariant)
    torch.testing.assert_close(grid(study[:, [2, 0, 1]]), out, atol=1e-5, rtol=1e-4)
    # a one-series study equals that series encoded alone
    torch.testing.assert_close(grid(study[:, :1]), grid(study[:, 0]), atol=1e-5, rtol=1e-4)
    bag = create_vision_model("brain3d_vit_tiny", study_pooling="bag", mil_heads=4).eval()
    assert bag(study).shape == (2, 4, 64) and Brain3DViT.num_tokens(bag.config, study[0]) == 4
    plain = create_vision_model("brain3d_vit_tiny")
    with pytest.raises(ValueError, match="study_pooling='none'"):
        Brain3DViT.num_tokens(plain.config, study[0])


def _volume_with_mask(shape, fg_slices, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(channels + 1, *shape)
    x[:channels] = torch.rand(channels, *shape, generator=g)
    x[-1][fg_slices] = 1.0
    return x


def test_neurovfm_background_removal_counts():
    cfg = NeuroVFMTokensConfig(token_size=(2, 8, 8), hidden_size=48, pe_dim=12, depth=1, num_heads=4)
    item = _volume_with_mask((4, 16, 16), (slice(0, 4), slice(0, 8), slice(0, 16)))  # top half of H
    raw, keep, grid = token_layout(cfg, item)
    assert grid == (2, 2, 2) and raw.shape == (8, 128) and int(keep.sum()) == 4
    # "any": a token with a single background voxel is dropped
    item2 = item.clone()
    item2[-1, 0, 0, 0] = 0
    assert int(token_layout(cfg, item2)[1].sum()) == 3
    all_rule = NeuroVFMTokensConfig(token_size=(2, 8, 8), hidden_size=48, pe_dim=12, background_rule="all")
    assert int(token_layout(all_rule, item2)[1].sum()) == 4
    empty = _volume_with_mask((4, 16, 16), (slice(0, 0),))
    with pytest.raises(ValueError, match="no foreground token"):
        NeuroVFMTokens.num_tokens(cfg, empty)


def test_neurovfm_defaults_are_neurovfm():
    cfg = NeuroVFMTokensConfig()
    assert cfg.token_size == (4, 16, 16) and cfg.in_channels * 4 * 16 * 16 == 1024
    assert cfg.hidden_size - cfg.pe_dim == 738 and cfg.preprocess["target_spacing"] == [4.0, 1.0, 1.0]
    assert cfg.append_foreground_mask


def test_neurovfm_ragged_forward_matches_num_tokens_and_is_unpadded():
    model = create_vision_model("neurovfm_tokens_tiny").eval()
    a = _volume_with_mask((4, 16, 16), (slice(None),) * 3, seed=1)  # 8 tokens
    b = _volume_with_mask((6, 24, 16), (slice(0, 4), slice(0, 16), slice(None)), seed=2)  # 3x3x2 grid, 2x2x2 kept
    c = _volume_with_mask((4, 16, 24), (slice(0, 2), slice(0, 8), slice(0, 8)), seed=3)  # 1 kept
    outs = model([a, b, c])
    assert [o.shape[0] for o in outs] == [NeuroVFMTokens.num_tokens(model.config, t) for t in (a, b, c)] == [8, 8, 1]
    # packed varlen attention: each item's output equals encoding it alone (no cross-item attention, no padding)
    for item, o in zip((a, b, c), outs):
        torch.testing.assert_close(model([item])[0], o, atol=1e-5, rtol=1e-4)
    # background content does not influence the output
    b2 = b.clone()
    b2[0, 4:] = 5.0
    torch.testing.assert_close(model([b2])[0], outs[1], atol=1e-5, rtol=1e-4)


def test_neurovfm_study_bag_and_gradients():
    model = create_vision_model("neurovfm_tokens_tiny", study_pooling="bag", mil_heads=3).train()
    study = torch.stack([_volume_with_mask((4, 16, 16), (slice(None),) * 3, seed=s) for s in range(2)])
    single = _volume_with_mask((4, 16, 16), (slice(0, 2),), seed=5)
    outs = model([study, single])
    assert outs[0].shape == (3, 48) and outs[1].shape == (4, 48)
    assert NeuroVFMTokens.num_tokens(model.config, study) == 3
    sum(o.sum() for o in outs).backward()
    assert model.token_embed.weight.grad is not None and model.mil.attn_w.weight.grad is not None
    with pytest.raises(ValueError, match="ragged"):
        NeuroVFMTokensConfig(study_pooling="grid")


def test_gradient_checkpointing_same_result():
    model = create_vision_model("brain3d_vit_tiny").train()
    x = torch.randn(1, 1, 32, 32, 32)
    ref = model(x)
    model.gradient_checkpointing = True
    torch.testing.assert_close(model(x), ref)


def test_position_embedding_init():
    sincos = create_vision_model("brain3d_vit_tiny")
    pe = sincos.pos_embed.detach().flatten(2)[0]  # [E, 64 positions]
    dist = torch.cdist(pe.T, pe.T) + torch.eye(64) * 1e3
    assert pe.std() > 0.3 and dist.min() > 0.1  # every grid cell has its own, clearly distinct code
    vit = create_vision_model("brain3d_vit_tiny", pos_embed_init="trunc_normal")
    assert vit.pos_embed.std() < 0.05
    four = create_vision_model("brain3d_vit_4d_tiny")
    assert not torch.allclose(four.time_embed[0, 0], four.time_embed[0, 1])

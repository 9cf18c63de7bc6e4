"""spatial_pool_mlp, volume_perceiver and qformer: token counts, pooling arithmetic, ragged inputs."""
from __future__ import annotations

import pytest
import torch

from internvl.model.projector import PROJECTORS, create_projector
from internvl.model.vision.base import create_vision_model
from patches.neuro.projectors import SpatialPoolMLP

QF = {"num_queries": 6, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "dropout": 0.0}


def test_spatial_pool_counts_and_values(make_chat_config):
    enc = create_vision_model("brain3d_vit_tiny", volume_shape=(40, 32, 24), use_cls_token=True)  # grid 5x4x3
    cfg = make_chat_config(enc.config, "spatial_pool_mlp")
    proj = create_projector(cfg).eval()
    n_in = 5 * 4 * 3 + 1
    assert PROJECTORS.get("spatial_pool_mlp").num_output_tokens(cfg, n_in) == 3 * 2 * 2 + 1  # ceil mode
    feats = torch.randn(2, n_in, 64)
    pooled = proj.pool(feats)
    assert pooled.shape == (2, 13, 64)
    torch.testing.assert_close(pooled[:, 0], feats[:, 0])  # the CLS prefix passes through
    grid = feats[:, 1:].reshape(2, 5, 4, 3, 64)
    torch.testing.assert_close(pooled[:, 1], grid[:, :2, :2, :2].mean(dim=(1, 2, 3)))
    torch.testing.assert_close(pooled[:, -1], grid[:, 4:, 2:, 2:].mean(dim=(1, 2, 3)))  # partial last window
    assert proj(feats).shape == (2, 13, 32)
    item = torch.randn(1, 40, 32, 24)
    assert cfg.num_context_tokens(item) == 13
    with pytest.raises(ValueError, match="grid"):
        PROJECTORS.get("spatial_pool_mlp").num_output_tokens(cfg, 50)


def test_spatial_pool_4d_time(make_chat_config):
    enc = create_vision_model("brain3d_vit_4d_tiny", volume_shape=(16, 16, 16), num_frames=8)  # grid 4x2x2x2
    cfg = make_chat_config(enc.config, "spatial_pool_mlp", {"pool": 2, "time_pool": 2})
    proj = create_projector(cfg)
    feats = torch.randn(1, 32, 64)
    pooled = proj.pool(feats)
    assert pooled.shape == (1, 2, 64) == (1, SpatialPoolMLP.num_output_tokens(cfg, 32), 64)
    torch.testing.assert_close(pooled[0, 1], feats[0, 16:].mean(0))  # frames 2-3, all space


def test_spatial_pool_refuses_gridless(make_chat_config):
    enc = create_vision_model("neurovfm_tokens_tiny")
    with pytest.raises(ValueError, match="token grid"):
        create_projector(make_chat_config(enc.config, "spatial_pool_mlp"))


@pytest.mark.parametrize("name,opts,k", [("volume_perceiver", {"num_queries": 5, "depth": 2, "num_heads": 4}, 5),
                                         ("qformer", QF, 6)])
def test_query_projectors_ragged_equals_single(make_chat_config, name, opts, k):
    enc = create_vision_model("neurovfm_tokens_tiny")
    cfg = make_chat_config(enc.config, name, opts)
    proj = create_projector(cfg).eval()
    assert PROJECTORS.get(name).num_output_tokens(cfg, 123) == k
    a, b = torch.randn(7, 48), torch.randn(3, 48)
    out = proj([a, b])
    assert [o.shape for o in out] == [(k, 32), (k, 32)]
    # padding the short bag to the long one's length must not change its result (key padding masks work)
    torch.testing.assert_close(out[1], proj([b])[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(proj(a[None])[0], out[0], atol=1e-5, rtol=1e-4)
    out[0].sum().backward()


def test_qformer_is_blip2(make_chat_config):
    enc = create_vision_model("brain3d_vit_tiny")
    proj = create_projector(make_chat_config(enc.config, "qformer", QF))
    from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel

    assert isinstance(proj.qformer, Blip2QFormerModel)
    assert proj.qformer.config.encoder_hidden_size == 64 and proj.query_tokens.shape == (1, 6, 32)
    assert proj(enc(torch.randn(2, 1, 32, 32, 32))).shape == (2, 6, 32)


def test_spatial_pool_position_codes(make_chat_config):
    enc = create_vision_model("brain3d_vit_tiny")
    plain = create_projector(make_chat_config(enc.config, "spatial_pool_mlp")).eval()
    coded = create_projector(make_chat_config(enc.config, "spatial_pool_mlp", {"pos_embed": True})).eval()
    assert plain.pos_embed is None and coded.pos_embed.shape == (1, 8, 64)
    same = torch.zeros(1, 64, 64)  # identical content everywhere: only the codes tell the 8 cells apart
    pooled = coded.pool(same)[0]
    assert torch.cdist(pooled, pooled).add(torch.eye(8) * 1e3).min() > 0.1
    assert torch.equal(plain.pool(same)[0], torch.zeros(8, 64))

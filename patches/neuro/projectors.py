"""Projectors for volume tokens (registered by name): 3D spatial pooling MLP, Perceiver resampler, BLIP-2 Q-Former.

All follow the core ``Projector`` contract (``internvl.model.projector``): built from the whole chat config,
options in ``config.projector_config``, ``forward`` maps ``[N, T, D_vis]`` or ``list[[T_i, D_vis]]`` to LLM
embeddings, ``num_output_tokens(config, n_in)`` says how many.

* ``spatial_pool_mlp`` (M3D-LaMed "spp"): average-pools the encoder's token grid by ``pool`` (default 2 per
  axis; a 4D grid pools time by ``time_pool``, default 1) with ceil mode (a remainder becomes a partial
  window, never dropped), optionally adds a learnable code per pooled cell (``pos_embed: true``; sin-cos
  initialised), then LayerNorm -> Linear -> GELU -> Linear. Needs grid tokens: the grid comes from
  ``config.vision_config.grid`` (brain3d_vit); prefix (CLS) tokens pass through unpooled.
* ``volume_perceiver``: Flamingo-style resampler, ``num_queries`` (64, as NeuroVFM's VLM) learned latents attend to
  [tokens ; latents] for ``depth`` layers; works on ragged token sets (key padding mask). Output K tokens.
* ``qformer``: BLIP-2 Q-Former (``transformers.Blip2QFormerModel``: self-attention among ``num_queries`` (32,
  BrainVLM) learned queries, cross-attention to the vision tokens every ``cross_attention_frequency`` layers),
  vision LayerNorm before it and a Linear to the LLM width after it (BLIP-2's language projection).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel

from internvl.model.projector import register_projector
from patches.neuro.encoders.common import grid_coords, sincos_embedding


def _opts(config) -> dict:
    return dict(getattr(config, "projector_config", None) or {})


def _pad(features) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor [N, T, D] or list -> (padded [N, T_max, D], valid mask [N, T_max])."""
    if not isinstance(features, (list, tuple)):
        return features, torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    lens = [f.shape[0] for f in features]
    x = nn.utils.rnn.pad_sequence(list(features), batch_first=True)
    valid = torch.arange(x.shape[1], device=x.device)[None] < torch.tensor(lens, device=x.device)[:, None]
    return x, valid


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


@register_projector("spatial_pool_mlp")
class SpatialPoolMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        vc = config.vision_config
        self.grid = self._grid(config)
        self.prefix = int(getattr(vc, "num_prefix_tokens", 0))
        self.kernel = self._kernel(config, len(self.grid))
        self.net = _mlp(vc.hidden_size, config.llm_config.hidden_size)
        pooled = tuple(math.ceil(g / k) for g, k in zip(self.grid, self.kernel))
        self.pos_embed = None
        if _opts(config).get("pos_embed", False):
            # a code per pooled cell, added before the MLP: the LLM's RoPE moves attention scores, not values, so
            # without it the place of a token reaches the LLM only through what the encoder put in its features
            code = sincos_embedding(grid_coords(*pooled), vc.hidden_size)
            self.pos_embed = nn.Parameter(code.unsqueeze(0))

    @staticmethod
    def _grid(config) -> tuple[int, ...]:
        vc = config.vision_config
        grid = getattr(vc, "grid", None)
        if grid is None:
            raise ValueError(f"spatial_pool_mlp needs an encoder with a token grid (brain3d_vit); "
                             f"{getattr(vc, 'encoder_name', '?')!r} has none: use 'volume_perceiver' or 'qformer'")
        if getattr(vc, "study_pooling", "none") == "bag":
            raise ValueError("spatial_pool_mlp needs grid tokens; study_pooling='bag' emits mil_heads tokens")
        return tuple(grid)

    @staticmethod
    def _kernel(config, ndim: int) -> tuple[int, ...]:
        o = _opts(config)
        pool = o.get("pool", 2)
        spatial = tuple(pool) if isinstance(pool, (list, tuple)) else (int(pool),) * 3
        return ((int(o.get("time_pool", 1)),) if ndim == 4 else ()) + spatial

    @classmethod
    def num_output_tokens(cls, config, n_in: int) -> int:
        grid = cls._grid(config)
        prefix = int(getattr(config.vision_config, "num_prefix_tokens", 0))
        if n_in != math.prod(grid) + prefix:
            raise ValueError(f"spatial_pool_mlp: encoder emits {n_in} tokens but its grid {grid} (+{prefix} prefix) "
                             f"has {math.prod(grid) + prefix}; items must match the configured volume_shape")
        kernel = cls._kernel(config, len(grid))
        return math.prod(math.ceil(g / k) for g, k in zip(grid, kernel)) + prefix

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        pre, body = x[:, :self.prefix], x[:, self.prefix:]
        grid = self.grid
        if body.shape[1] != math.prod(grid):
            raise ValueError(f"spatial_pool_mlp: {body.shape[1]} grid tokens, expected grid {grid}")
        g = body.transpose(1, 2).reshape(n, d, *grid)
        if len(grid) == 4:  # [N, D, t, z, y, x]: pool space per frame, then time
            kt, ks = self.kernel[0], self.kernel[1:]
            tt = grid[0]
            g = g.permute(0, 2, 1, 3, 4, 5).reshape(n * tt, d, *grid[1:])
            g = F.avg_pool3d(g, ks, ks, ceil_mode=True)
            sp = g.shape[-3:]
            g = g.reshape(n, tt, d, -1).permute(0, 3, 2, 1).reshape(-1, d, tt)
            g = F.avg_pool1d(g, kt, kt, ceil_mode=True)
            g = g.reshape(n, math.prod(sp), d, -1).permute(0, 3, 1, 2).reshape(n, -1, d)
        else:
            g = F.avg_pool3d(g, self.kernel, self.kernel, ceil_mode=True).flatten(2).transpose(1, 2)
        if self.pos_embed is not None:
            g = g + self.pos_embed.to(g.dtype)
        return torch.cat([pre, g], dim=1)

    def forward(self, features):
        if isinstance(features, (list, tuple)):
            return [self.forward(f.unsqueeze(0))[0] for f in features]
        return self.net(self.pool(features))


class _PerceiverLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_latents = nn.LayerNorm(dim)
        self.norm_media = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(),
                                nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, latents, media, media_valid):
        q = self.norm_latents(latents)
        kv = torch.cat([self.norm_media(media), q], dim=1)
        keep = torch.cat([media_valid, torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)], dim=1)
        latents = latents + self.attn(q, kv, kv, key_padding_mask=~keep, need_weights=False)[0]
        return latents + self.ff(latents)


@register_projector("volume_perceiver")
class PerceiverResampler(nn.Module):
    def __init__(self, config):
        super().__init__()
        o = _opts(config)
        d_vis = config.vision_config.hidden_size
        dim = int(o.get("hidden_size", d_vis))
        self.num_queries = int(o.get("num_queries", 64))
        self.input_proj = nn.Linear(d_vis, dim) if dim != d_vis else nn.Identity()
        self.latents = nn.Parameter(torch.randn(self.num_queries, dim) * 0.02)
        self.layers = nn.ModuleList(_PerceiverLayer(dim, int(o.get("num_heads", 8)), float(o.get("mlp_ratio", 4.0)))
                                    for _ in range(int(o.get("depth", 2))))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, config.llm_config.hidden_size))

    @classmethod
    def num_output_tokens(cls, config, n_in: int) -> int:
        return int(_opts(config).get("num_queries", 64))

    def forward(self, features):
        as_list = isinstance(features, (list, tuple))
        x, valid = _pad(features)
        x = self.input_proj(x.to(self.latents.dtype))
        lat = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for layer in self.layers:
            lat = layer(lat, x, valid)
        out = self.out(lat)
        return list(out) if as_list else out


@register_projector("qformer")
class QFormerProjector(nn.Module):
    def __init__(self, config):
        super().__init__()
        o = _opts(config)
        d_vis = config.vision_config.hidden_size
        hidden = int(o.get("hidden_size", 768))
        qcfg = Blip2QFormerConfig(hidden_size=hidden, num_hidden_layers=int(o.get("num_layers", 12)),
                                  num_attention_heads=int(o.get("num_heads", 12)),
                                  intermediate_size=int(o.get("intermediate_size", 4 * hidden)),
                                  cross_attention_frequency=int(o.get("cross_attention_frequency", 2)),
                                  encoder_hidden_size=d_vis, hidden_dropout_prob=float(o.get("dropout", 0.1)),
                                  attention_probs_dropout_prob=float(o.get("dropout", 0.1)))
        self.num_queries = int(o.get("num_queries", 32))
        self.vision_norm = nn.LayerNorm(d_vis)
        self.query_tokens = nn.Parameter(torch.randn(1, self.num_queries, hidden) * qcfg.initializer_range)
        self.qformer = Blip2QFormerModel(qcfg)
        self.language_projection = nn.Linear(hidden, config.llm_config.hidden_size)

    @classmethod
    def num_output_tokens(cls, config, n_in: int) -> int:
        return int(_opts(config).get("num_queries", 32))

    def forward(self, features):
        as_list = isinstance(features, (list, tuple))
        x, valid = _pad(features)
        x = self.vision_norm(x.to(self.query_tokens.dtype))
        q = self.query_tokens.expand(x.shape[0], -1, -1)
        out = self.qformer(query_embeds=q, encoder_hidden_states=x, encoder_attention_mask=valid.long())
        y = self.language_projection(out.last_hidden_state[:, :self.num_queries])
        return list(y) if as_list else y

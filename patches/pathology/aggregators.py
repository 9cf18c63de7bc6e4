"""Slide aggregators: projectors that turn a bag of N tile features into K LLM tokens (K fixed, N unbounded).

Both follow the core ``Projector`` contract (``internvl.model.projector``): built from the chat config, forward on a
list of bags ``[N_i, D_vis]`` (or a stacked ``[B, N, D_vis]``), output ``[K, D_llm]`` per bag, and
``num_output_tokens(config, n_in) == K`` whatever N is, which is the ``<IMG_CONTEXT>`` count for a slide.
Options come from ``config.projector_config``: ``num_tokens`` (K; ``num_latents`` is accepted for the resampler),
``dim`` (working width), ``heads``, ``depth``, ``dropout``.

* ``perceiver_resampler`` (PRISM-like): K learned latents; each layer = latents cross-attend to the tiles, then
  self-attend, then an MLP (pre-norm residual blocks). Cost is O(K * N) per layer, so 20k-tile slides are fine.
* ``abmil``: gated attention-MIL (Ilse et al. 2018) with K attention branches: branch k computes a softmax over
  tiles of ``w_k . (tanh(V h) * sigmoid(U h))`` and emits the attention-weighted mean of the tiles. In eval mode
  the attention of the last bag (``[N, K]``) is kept in ``last_attention`` for heat maps.

Bags are processed one at a time: no padding, no wasted attention on pad tokens.

The same classes also run inside the ``slide_features`` vision model (``build_aggregator``, from explicit widths
instead of a chat config), which is how ``--use_backbone_lora`` / ``--freeze_backbone`` reach the aggregator.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from internvl.model.projector import register_projector


def _options(config) -> dict:
    return dict(getattr(config, "projector_config", None) or {})


def _num_tokens(config, default: int = 64) -> int:
    opts = _options(config)
    k = int(opts.get("num_tokens", opts.get("num_latents", default)))
    if k < 1:
        raise ValueError(f"projector_config num_tokens must be >= 1, got {k}")
    return k


class _BagProjector(nn.Module):
    """Shared plumbing: input LayerNorm + Linear to the working width, output LayerNorm + Linear to the LLM."""

    def __init__(self, config, default_dim: int = 512):
        super().__init__()
        opts = _options(config)
        self.num_tokens = _num_tokens(config)
        self.dim = int(opts.get("dim", default_dim))
        d_in, d_out = config.vision_config.hidden_size, config.llm_config.hidden_size
        self.inp = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, self.dim), nn.GELU())
        self.out = nn.Sequential(nn.LayerNorm(self.dim), nn.Linear(self.dim, d_out), nn.GELU(),
                                 nn.Linear(d_out, d_out))

    @classmethod
    def num_output_tokens(cls, config, n_in: int) -> int:
        return _num_tokens(config)

    def pool(self, h: torch.Tensor) -> torch.Tensor:  # [N, dim] -> [K, dim]
        raise NotImplementedError

    def forward(self, features):
        if isinstance(features, torch.Tensor) and features.ndim == 3:
            return torch.stack([self.forward_bag(bag) for bag in features])
        if isinstance(features, torch.Tensor):
            raise ValueError(f"expected bags [N, D] in a list or [B, N, D]; got {tuple(features.shape)}")
        return [self.forward_bag(bag) for bag in features]

    def forward_bag(self, bag: torch.Tensor) -> torch.Tensor:
        if bag.ndim != 2 or bag.shape[0] == 0:
            raise ValueError(f"a slide bag must be [N_tiles >= 1, D]; got {tuple(bag.shape)}")
        return self.out(self.pool(self.inp(bag)))

    def linear_layer_names(self) -> list[str]:
        """Names of the ``nn.Linear`` layers LoRA can wrap (those inside ``nn.MultiheadAttention`` excluded:
        its forward reads ``out_proj.weight`` directly, so an adapter there would be bypassed)."""
        inside_mha = {f"{name}.{sub}" for name, m in self.named_modules() if isinstance(m, nn.MultiheadAttention)
                      for sub, _ in m.named_modules() if sub}
        return [name for name, m in self.named_modules() if isinstance(m, nn.Linear) and name not in inside_mha]


class _PerceiverLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, latents: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
        q, kv = self.norm_q(latents), self.norm_kv(tiles)
        latents = latents + self.cross(q, kv, kv, need_weights=False)[0]
        s = self.norm_self(latents)
        latents = latents + self.self_attn(s, s, s, need_weights=False)[0]
        return latents + self.mlp(self.norm_mlp(latents))


@register_projector("perceiver_resampler", aliases=("perceiver",))
class PerceiverResampler(_BagProjector):
    def __init__(self, config):
        super().__init__(config)
        opts = _options(config)
        heads, depth = int(opts.get("heads", 8)), int(opts.get("depth", 2))
        if self.dim % heads:
            raise ValueError(f"perceiver_resampler: dim {self.dim} is not divisible by heads {heads}")
        self.latents = nn.Parameter(torch.randn(self.num_tokens, self.dim) * 0.02)
        self.layers = nn.ModuleList(_PerceiverLayer(self.dim, heads, float(opts.get("dropout", 0.0)))
                                    for _ in range(depth))

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        latents, tiles = self.latents.unsqueeze(0).to(h.dtype), h.unsqueeze(0)
        for layer in self.layers:
            latents = layer(latents, tiles)
        return latents[0]


@register_projector("abmil", aliases=("attention_mil",))
class GatedAttentionMIL(_BagProjector):
    def __init__(self, config):
        super().__init__(config)
        opts = _options(config)
        hidden = int(opts.get("attn_dim", self.dim // 2))
        self.attn_v = nn.Linear(self.dim, hidden)
        self.attn_u = nn.Linear(self.dim, hidden)
        self.attn_w = nn.Linear(hidden, self.num_tokens)
        self.dropout = nn.Dropout(float(opts.get("dropout", 0.0)))
        self.token_embed = nn.Parameter(torch.zeros(self.num_tokens, self.dim))  # tells the K outputs apart
        self.last_attention: torch.Tensor | None = None

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        scores = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h)))  # [N, K]
        attn = F.softmax(scores, dim=0)
        if not self.training:
            self.last_attention = attn.detach()
        return attn.transpose(0, 1) @ self.dropout(h) + self.token_embed.to(h.dtype)  # [K, dim]


AGGREGATORS = {"perceiver_resampler": PerceiverResampler, "perceiver": PerceiverResampler,
               "abmil": GatedAttentionMIL, "attention_mil": GatedAttentionMIL}


def build_aggregator(name: str, d_in: int, d_out: int, options: dict | None = None) -> _BagProjector:
    """An aggregator from widths and options (``num_tokens``, ``dim``, ...), outside a chat config."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown slide aggregator {name!r}; one of {sorted(AGGREGATORS)}")
    shim = SimpleNamespace(projector_config=dict(options or {}), vision_config=SimpleNamespace(hidden_size=d_in),
                           llm_config=SimpleNamespace(hidden_size=d_out))
    return AGGREGATORS[name](shim)
